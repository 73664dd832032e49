"""The NoW benchmark (Sanyal et al., CVPR 2019), as the official ``now_evaluation`` code runs it.

Dataset layout, as distributed (``NOW_ROOT``)::

    imagepathsvalidation.txt        lines ``<subject>/<challenge>/<image>.jpg``
    imagepathstest.txt
    scans/<subject>/*.obj           the ground-truth scan (mm); the first file in name order
    scans_lmks_onlypp/<subject>/*.pp  its 7 landmarks, MeshLab picked-points XML

Predictions, in the official layout (they can go to the challenge as they are)::

    <subject>/<challenge>/<image>.obj   the predicted mesh (expression and pose zeroed)
    <subject>/<challenge>/<image>.npy   (7, 3) its landmarks: FLAME static landmarks
                                        19, 22, 25, 28, 16, 31, 37 of the 51 set

The 7 landmarks are, in order: outer and inner corner of one eye, inner and outer corner of
the other, the nose bottom, the two mouth corners. Per image (``scan2mesh_computations.py``):
crop the scan to the ball around ``nose bottom + 0.3 (bridge - nose bottom)`` (bridge = mean
of the inner eye corners) of radius ``1.4 (outer-eye distance + |bridge - nose bottom|) / 2``;
align the prediction to the scan with Procrustes (with scale, reflection allowed) on the 7
landmarks, then refine a similarity minimising the sum of squared scan-to-mesh distances;
the errors are the exact distances of every cropped scan vertex to the aligned mesh, in the
scan's units (mm). Median, mean and std are taken over all images' errors pooled, and per
challenge (the list's middle component).

Per-image errors are kept in ``OUT/distances/<subject>/<challenge>/<image>.npz`` with a
key of the inputs, so a rerun recomputes only what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from emoca_pipeline.evaluation.geometry import (
    MeshDistance,
    Similarity,
    procrustes,
    refine_similarity,
)
from emoca_pipeline.evaluation.tables import TableFiles, write_tables
from emoca_pipeline.io.atomic import atomic_output, atomic_write_text
from emoca_pipeline.io.obj import load_obj, save_obj

__all__ = [
    "CHALLENGES",
    "IMAGE_LISTS",
    "NOW_STATIC_LANDMARKS",
    "NowAlignment",
    "NowEvaluation",
    "NowImage",
    "align_and_measure",
    "crop_scan",
    "evaluate_now",
    "now_landmarks",
    "read_image_list",
    "read_picked_points",
    "write_now_predictions",
]

log = logging.getLogger(__name__)

#: Indices into FLAME's 51 static landmarks of the 7 NoW points.
NOW_STATIC_LANDMARKS = (19, 22, 25, 28, 16, 31, 37)
#: The official challenges, in the official order.
CHALLENGES = ("multiview_neutral", "multiview_expressions", "multiview_occlusions", "selfie")
#: Image list file of each split.
IMAGE_LISTS = {"validation": "imagepathsvalidation.txt", "test": "imagepathstest.txt"}
TABLE_COLUMNS = ("Median (mm)", "Mean (mm)", "Std (mm)", "Images")


class NowImage(NamedTuple):
    """One line of a NoW image list: ``<subject>/<challenge>/<filename>``."""

    entry: str
    subject: str
    challenge: str
    filename: str

    @property
    def relative_stem(self) -> Path:
        """``<subject>/<challenge>/<image name without extension>``."""
        return Path(self.subject, self.challenge, Path(self.filename).stem)


def read_image_list(path: str | os.PathLike) -> list[NowImage]:
    """The entries of ``imagepathsvalidation.txt`` / ``imagepathstest.txt`` (blank lines
    skipped). Raises FileNotFoundError, or ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such NoW image list")
    images = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.replace("\\", "/").split("/")
        if len(parts) < 3 or not all(parts[-3:]):
            raise ValueError(f"{path}:{number}: expected <subject>/<challenge>/<image>, "
                             f"got {line!r}")
        images.append(NowImage(line, parts[-3], parts[-2], parts[-1]))
    if not images:
        raise ValueError(f"{path}: the image list is empty")
    return images


def read_picked_points(path: str | os.PathLike, expected: int = 7) -> np.ndarray:
    """The points of a MeshLab picked-points file (``<point x=".." y=".." z=".."/>``) ->
    (expected, 3) float64. Raises FileNotFoundError or ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such picked-points file")
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"{path}: not a MeshLab picked-points XML file ({error})") from None
    points = []
    for element in root.iter("point"):
        try:
            points.append([float(element.attrib[axis]) for axis in "xyz"])
        except (KeyError, ValueError):
            raise ValueError(f"{path}: a <point> without numeric x, y, z "
                             f"({element.attrib})") from None
    if len(points) != expected:
        raise ValueError(f"{path}: {len(points)} landmarks, NoW needs {expected}")
    array = np.asarray(points, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: landmarks contain NaN or infinite values")
    return array


def _first_file(folder: Path, pattern: str, what: str) -> Path:
    files = sorted(folder.glob(pattern))
    if not files:
        raise FileNotFoundError(f"{folder}: no {what} ({pattern}) for this subject")
    return files[0]


# ---------------------------------------------------------------------------------------
# Predictions


def now_landmarks(flame, shape: np.ndarray, batch_size: int = 64
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Neutral meshes and their 7 NoW landmarks from shape codes.

    Args:
        flame: a :class:`~emoca_pipeline.flame.FLAME` layer with its landmark embedding.
        shape: (N, n_shape) identity codes; expression and pose are zero.

    Returns:
        vertices (N, V, 3) and landmarks (N, 7, 3), float64, in FLAME's units.
    """
    import torch

    if not flame.has_landmarks:
        raise ValueError("flame: the layer has no landmark embedding")
    shape = np.asarray(shape, dtype=np.float32)
    if shape.ndim != 2 or shape.shape[1] != flame.n_shape:
        raise ValueError(f"shape: expected (N, {flame.n_shape}), got {shape.shape}")
    index = torch.as_tensor([17 + i for i in NOW_STATIC_LANDMARKS])  # after the contour
    vertices, landmarks = [], []
    with torch.no_grad():
        for start in range(0, shape.shape[0], batch_size):
            codes = torch.from_numpy(shape[start:start + batch_size])
            n = codes.shape[0]
            out = flame(codes, torch.zeros(n, flame.n_exp), torch.zeros(n, 6))
            vertices.append(out.vertices.double().numpy())
            landmarks.append(out.landmarks2d[:, index].double().numpy())
    return np.concatenate(vertices), np.concatenate(landmarks)


def _match_rows(table, images: Sequence[NowImage], source: Path) -> tuple[list[int | None], int]:
    """Row of ``table`` for each image: the ok face with the lowest face_index whose path
    ends in ``<subject>/<challenge>/<image>``."""
    paths = table.column("path").to_pylist()
    status = table.column("status").to_pylist()
    faces = table.column("face_index").to_pylist()
    by_key: dict[tuple[str, str, str], tuple[int, int]] = {}
    for row, (path, state, face) in enumerate(zip(paths, status, faces, strict=True)):
        if state != "ok" or path is None:
            continue
        parts = str(path).replace("\\", "/").split("/")
        if len(parts) < 3:
            continue
        key = (parts[-3], parts[-2], parts[-1])
        rank = face if face is not None else 0
        if key not in by_key or rank < by_key[key][0]:
            by_key[key] = (rank, row)
    rows = [by_key.get((im.subject, im.challenge, im.filename), (0, None))[1] for im in images]
    return rows, len(by_key)


def write_now_predictions(reconstructions: str | os.PathLike, flame, images: Sequence[NowImage],
                          out_dir: str | os.PathLike, allow_missing: bool = False
                          ) -> list[NowImage]:
    """Write ``OUT/<subject>/<challenge>/<image>.obj`` and ``.npy`` for each image.

    Args:
        reconstructions: an ``emoca reconstruct`` output folder run on the NoW images (its
            ``path`` column ends in ``<subject>/<challenge>/<image>``).
        flame: the model's FLAME layer (its ``n_shape`` fits the ``shape`` column).
        images: the image list. allow_missing: skip images without an ok reconstruction
            (else a ValueError names the first).

    Returns:
        The images written.
    """
    from emoca_pipeline.evaluation.affectnet import code_matrix, read_reconstruction_table

    source = Path(reconstructions)
    table = read_reconstruction_table(source, ["path", "status", "face_index", "shape"])
    rows, found = _match_rows(table, images, source)
    missing = [im for im, row in zip(images, rows, strict=True) if row is None]
    if missing and not allow_missing:
        raise ValueError(f"{source}: no ok reconstruction of {missing[0].entry} (and "
                         f"{len(missing) - 1} more of {len(images)} images; {found} NoW "
                         "images found); use --allow-missing to evaluate the rest")
    chosen = [(im, row) for im, row in zip(images, rows, strict=True) if row is not None]
    if not chosen:
        raise ValueError(f"{source}: none of the {len(images)} NoW images was reconstructed")
    shape = code_matrix(table.take([row for _, row in chosen]), "shape", source)
    vertices, landmarks = now_landmarks(flame, shape)
    faces = flame.faces.cpu().numpy()
    out = Path(out_dir)
    for (image, _), verts, points in zip(chosen, vertices, landmarks, strict=True):
        stem = out / image.relative_stem
        save_obj(stem.with_suffix(".obj"), verts, faces)
        with atomic_output(stem.with_suffix(".npy")) as tmp:
            np.save(tmp, points.astype(np.float64))
    return [image for image, _ in chosen]


def load_flame_for_now(model: str | os.PathLike, n_shape: int | None = None):
    """The FLAME layer a model reconstructs with: from an EMOCA checkpoint (``model.pt``,
    its own FLAME buffers) or a FLAME asset folder (``n_shape`` components)."""
    path = Path(model)
    if path.is_dir():
        from emoca_pipeline.flame import create

        return create(path, n_shape=n_shape or 100, n_exp=50)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such EMOCA checkpoint or FLAME asset folder")
    import torch

    from emoca_pipeline.models.emoca import CHECKPOINT_FORMAT, flame_from_buffers

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a weights-only torch file ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an emoca-pipeline EMOCA checkpoint")
    settings = payload.get("settings", {})
    try:
        return flame_from_buffers(payload["state_dict"], int(settings["n_shape"]),
                                  int(settings["n_exp"]), prefix="flame.")
    except (KeyError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


# ---------------------------------------------------------------------------------------
# Alignment and errors


def crop_scan(vertices: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                   float]:
    """NoW's face crop: (mask (V,) bool, centre (3,), radius) from the scan's 7 landmarks."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    nose_bottom = landmarks[4]
    nose_bridge = (landmarks[1] + landmarks[2]) / 2.0  # between the inner eye corners
    centre = nose_bottom + 0.3 * (nose_bridge - nose_bottom)
    outer_eye = float(np.linalg.norm(landmarks[0] - landmarks[3]))
    nose = float(np.linalg.norm(nose_bridge - nose_bottom))
    radius = 1.4 * (outer_eye + nose) / 2.0
    mask = np.linalg.norm(np.asarray(vertices) - centre, axis=1) <= radius
    return mask, centre, radius


class NowAlignment(NamedTuple):
    """Result of :func:`align_and_measure`.

    distances: (P,) errors of the P cropped scan vertices (scan units).
    transform: the similarity taking the prediction into the scan's frame.
    cropped: (P, 3) the cropped scan vertices.
    """

    distances: np.ndarray
    transform: Similarity
    cropped: np.ndarray


def align_and_measure(scan_vertices: np.ndarray, scan_landmarks: np.ndarray,
                      mesh_vertices: np.ndarray, mesh_faces: np.ndarray,
                      mesh_landmarks: np.ndarray) -> NowAlignment:
    """Crop, align (landmark Procrustes, then the scan-to-mesh refinement), measure."""
    mask, _, _ = crop_scan(scan_vertices, scan_landmarks)
    cropped = np.asarray(scan_vertices, dtype=np.float64)[mask]
    if cropped.shape[0] < 7:
        raise ValueError(f"the crop keeps {cropped.shape[0]} scan vertices; check that the "
                         "scan and its landmarks share one frame")
    initial = procrustes(mesh_landmarks, scan_landmarks, scaling=True, allow_reflection=True)
    placed = MeshDistance(initial.apply(mesh_vertices), mesh_faces)
    refined = refine_similarity(cropped, placed)
    return NowAlignment(refined.distances, refined.transform.compose(initial), cropped)


class _Subject(NamedTuple):
    vertices: np.ndarray
    landmarks: np.ndarray
    key: str


def _load_subject(root: Path, subject: str) -> _Subject:
    scan_path = _first_file(root / "scans" / subject, "*.obj", "scan")
    pp_path = _first_file(root / "scans_lmks_onlypp" / subject, "*.pp", "landmark file")
    scan = load_obj(scan_path)
    if scan.verts.shape[0] == 0:
        raise ValueError(f"{scan_path}: the scan has no vertices")
    landmarks = read_picked_points(pp_path)
    digest = hashlib.sha256()
    for path in (scan_path, pp_path):
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return _Subject(scan.verts, landmarks, digest.hexdigest())


def _load_prediction(stem: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    mesh_path, lmk_path = stem.with_suffix(".obj"), stem.with_suffix(".npy")
    for path in (mesh_path, lmk_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing prediction")
    mesh = load_obj(mesh_path)
    if mesh.faces.shape[0] == 0:
        raise ValueError(f"{mesh_path}: the predicted mesh has no faces")
    try:
        landmarks = np.load(lmk_path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{lmk_path}: not a numpy array file ({error})") from None
    if landmarks.shape == (1, 7, 3):
        landmarks = landmarks[0]
    if landmarks.shape != (7, 3):
        raise ValueError(f"{lmk_path}: landmarks of shape {landmarks.shape}, NoW needs (7, 3)")
    digest = hashlib.sha256(mesh_path.read_bytes() + lmk_path.read_bytes()).hexdigest()
    return mesh.verts, mesh.faces, landmarks.astype(np.float64), digest


# ---------------------------------------------------------------------------------------
# Evaluation


class NowEvaluation(NamedTuple):
    """Result of :func:`evaluate_now`: rows ("all" first, then challenges) -> statistics
    ``{"median", "mean", "std", "images", "points"}``; the files written."""

    stats: dict[str, dict[str, float]]
    tables: TableFiles
    json: Path
    plot: Path

    def metrics(self) -> dict[str, float]:
        """Median, mean and std (mm) of every row as MLflow metrics ``<row>/<statistic>``
        (``all/median``, ``multiview_neutral/mean``, ...)."""
        from emoca_pipeline.tracking import metric_key

        return {metric_key(row, statistic): values[statistic]
                for row, values in self.stats.items() for statistic in ("median", "mean", "std")}

    def files(self) -> list[Path]:
        """The files written (tables, JSON, cumulative error plot)."""
        return [*self.tables, self.json, self.plot]


def _stats(errors: np.ndarray, images: int) -> dict[str, float]:
    return {"median": float(np.median(errors)), "mean": float(np.mean(errors)),
            "std": float(np.std(errors)), "images": images, "points": int(errors.size)}


def _cumulative_plot(curves: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5), layout="constrained")
    ax = figure.subplots()
    top = max(float(np.quantile(e, 0.995)) for e in curves.values())
    limit = 8.0 if top <= 8.0 else top  # the official plots show 0..8 mm
    for name, errors in curves.items():
        values = np.sort(errors)
        ax.plot(values, 100.0 * np.arange(1, values.size + 1) / values.size, label=name)
    ax.set_xlim(0, limit)
    ax.set_ylim(0, 100)
    ax.set_xlabel("Error [mm]")
    ax.set_ylabel("Percentage of scan points")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def evaluate_now(predictions: str | os.PathLike, now_root: str | os.PathLike,
                 out_dir: str | os.PathLike, split: str = "validation",
                 images: Sequence[NowImage] | None = None, name: str = "model") -> NowEvaluation:
    """Errors of the predictions (official layout) against the scans; writes
    ``OUT/now_table.{csv,md,tex,json}`` and ``OUT/now_cumulative_error.png``.

    Args:
        predictions: folder of ``<subject>/<challenge>/<image>.obj`` and ``.npy``.
        now_root: the NoW dataset folder (see the module docstring).
        split: "validation" or "test" (picks the image list; test scans are not public).
        images: evaluate these instead of the split's list (e.g. those written).
        name: the method's name (JSON and plot).

    Raises:
        FileNotFoundError / ValueError naming the file: a missing scan, landmark file or
        prediction, a landmark count other than 7, a mesh without faces.
    """
    root, predictions, out = Path(now_root), Path(predictions), Path(out_dir)
    if split not in IMAGE_LISTS:
        raise ValueError(f"split: expected one of {', '.join(IMAGE_LISTS)}, got {split!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such NoW dataset folder")
    listed = read_image_list(root / IMAGE_LISTS[split])
    images = list(images) if images is not None else listed
    subjects: dict[str, _Subject] = {}
    errors: dict[NowImage, np.ndarray] = {}
    per_image = []
    for number, image in enumerate(images, start=1):
        if image.subject not in subjects:
            subjects[image.subject] = _load_subject(root, image.subject)
        subject = subjects[image.subject]
        stem = predictions / image.relative_stem
        verts, faces, landmarks, digest = _load_prediction(stem)
        key = f"{subject.key}|{digest}"
        cache = out / "distances" / image.relative_stem.with_suffix(".npz")
        distances = None
        if cache.is_file():
            with np.load(cache, allow_pickle=False) as stored:
                if str(stored["key"]) == key:
                    distances = stored["distances"]
        if distances is None:
            try:
                result = align_and_measure(subject.vertices, subject.landmarks, verts, faces,
                                           landmarks)
            except ValueError as error:
                raise ValueError(f"{stem.with_suffix('.obj')}: {error}") from error
            distances = result.distances
            with atomic_output(cache) as tmp:
                with open(tmp, "wb") as handle:
                    np.savez(handle, distances=distances.astype(np.float64), key=np.array(key))
        errors[image] = distances
        per_image.append({"image": image.entry, "points": int(distances.size),
                          "median": float(np.median(distances)),
                          "mean": float(np.mean(distances))})
        log.debug("NoW %d/%d %s: mean %.3f", number, len(images), image.entry,
                 float(np.mean(distances)))

    rows: dict[str, np.ndarray] = {"all": np.concatenate(list(errors.values()))}
    counts = {"all": len(errors)}
    present = {image.challenge for image in errors}
    for challenge in [c for c in CHALLENGES if c in present] + sorted(present - set(CHALLENGES)):
        chosen = [e for image, e in errors.items() if image.challenge == challenge]
        rows[challenge] = np.concatenate(chosen)
        counts[challenge] = len(chosen)
    stats = {row: _stats(values, counts[row]) for row, values in rows.items()}
    names = list(stats)
    values = [[stats[r]["median"], stats[r]["mean"], stats[r]["std"], stats[r]["images"]]
              for r in names]
    missing = len({im.entry for im in listed} - {im.entry for im in images})
    tables = write_tables(
        out, "now_table", names, TABLE_COLUMNS, values, label="Challenge", digits=(2, 2, 2, 0),
        notes=[f"NoW {split}: scan-to-mesh errors of every cropped scan vertex, pooled over "
               f"{len(errors)} images ({name}); {missing} listed images without a prediction."],
        comment=f"NoW {split} errors in mm", extra={"points": [stats[r]["points"] for r in names]})
    summary = {"method": name, "split": split, "now_root": str(root),
               "predictions": str(predictions), "listed_images": len(listed),
               "evaluated_images": len(errors), "missing_images": missing,
               "units": "scan units (mm for NoW)", "stats": stats, "images": per_image}
    json_path = out / "now_table.json"
    atomic_write_text(json_path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    plot = out / "now_cumulative_error.png"
    _cumulative_plot({f"{name} {row}" if row == "all" else row: v for row, v in rows.items()},
                     plot)
    if not all(math.isfinite(s["mean"]) for s in stats.values()):
        raise ValueError(f"{predictions}: non-finite errors")
    return NowEvaluation(stats, tables, json_path, plot)
