"""The synthetic benchmark: reconstructions against the synthetic dataset's ground truth.

On the test split (identities no training image shows), for each reconstruction model
NAME=DIR (an ``emoca reconstruct`` output folder run on ``synthetic.parquet``), plus two
reference rows:

* ``mean code``: every test face gets the train split's mean ground-truth codes (shape,
  expression, pose, camera): what a model that learnt nothing about the image scores;
* ``ground truth``: the true codes (the ceiling).

Columns (means over the test images the models all reconstructed):

* ``V-err``: mean per-vertex distance between the predicted and the true FLAME mesh in the
  model's canonical frame (global rotation zeroed, jaw kept; identity + expression + jaw),
  in FLAME units; ``V-err (mm)`` the same x 1000 (FLAME units are metres; the procedural
  model keeps that scale: its head is about 0.17 x 0.25 x 0.22 units);
* ``NME-68``: mean distance of the 68 landmarks in the original photo, normalised by the
  true inter-ocular distance (outer eye corners, points 36 and 45); models: the ``landmarks``
  column of the reconstruction; reference rows: projected with their codes' camera;
* ``Exp-PCC``: Pearson correlation of each expression component over the test images,
  averaged over the components where it is defined: a component constant in the ground
  truth (the synthetic data hold components 25-49 at 0) or in the prediction has none ("--"
  for a constant prediction); the table's note says how many components vary; the
  per-component values are in the JSON;
* ``Jaw (deg)``, ``Pose (deg)``: mean geodesic angle between predicted and true jaw and
  global rotations;
* ``E-ACC``, ``V-CCC``, ``A-CCC``: emotion recovered from the codes: an EmoMLP trained on
  the row's codes of the train split (early-stopped on val), evaluated on the test split
  with whole-set metrics (:mod:`emoca_pipeline.evaluation.affectnet`).

Outputs in OUT: ``synthetic_table.{csv,md,tex,json}``, ``synthetic_metrics.png``, and under
``emotion/`` the emotion table and the EmoMLPs.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emoca_pipeline.evaluation.affectnet import (
    code_matrix,
    first_faces,
    read_reconstruction_table,
    train_emotion_on_codes,
)
from emoca_pipeline.evaluation.metrics import pcc
from emoca_pipeline.evaluation.tables import TableFiles, write_tables
from emoca_pipeline.io.atomic import atomic_output, atomic_write_text

__all__ = ["TABLE_COLUMNS", "SyntheticEvaluation", "evaluate_synthetic"]

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("V-err", "V-err (mm)", "NME-68", "Exp-PCC", "Jaw (deg)", "Pose (deg)",
                 "E-ACC", "V-CCC", "A-CCC")
DIGITS = (4, 2, 4, 3, 2, 2, 3, 3, 3)
MEAN_ROW = "mean code"
TRUTH_ROW = "ground truth"
UNITS_TO_MM = 1000.0  # FLAME units are metres
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 36, 45
_GT_COLUMNS = ("image_id", "split", "width", "height", "expression", "valence", "arousal",
               "landmarks", "shape", "exp", "pose", "cam")
_REC_COLUMNS = ("image_id", "status", "face_index", "shape", "exp", "pose", "cam", "landmarks")


class SyntheticEvaluation(NamedTuple):
    """rows: row name -> {column: value} (nan = undefined); the files written."""

    rows: dict[str, dict[str, float]]
    tables: TableFiles
    json: Path
    plot: Path

    def metrics(self) -> dict[str, float]:
        """Every cell as an MLflow metric ``<row>/<column>`` (e.g. ``emoca/exp_pcc``,
        ``mean_code/v_err_mm``, ``ground_truth/e_acc``)."""
        from emoca_pipeline.tracking import metric_key

        return {metric_key(row, column): value for row, values in self.rows.items()
                for column, value in values.items()}

    def files(self) -> list[Path]:
        """The files written (tables, JSON, plot)."""
        return [*self.tables, self.json, self.plot]


class _Codes(NamedTuple):
    shape: np.ndarray  # (N, n_shape)
    exp: np.ndarray  # (N, n_exp)
    pose: np.ndarray  # (N, 6)
    cam: np.ndarray  # (N, 3)


def _rotation_angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angles (degrees) between axis-angle rotations a (N, 3) and b (N, 3)."""
    from scipy.spatial.transform import Rotation

    relative = Rotation.from_rotvec(a).inv() * Rotation.from_rotvec(b)
    return np.degrees(relative.magnitude())


def _flame_outputs(flame, codes: _Codes, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Canonical vertices (N, V, 3) (global rotation zeroed) and posed 68 landmarks (N, 68, 3)."""
    import torch

    vertices, landmarks = [], []
    with torch.no_grad():
        for start in range(0, codes.shape.shape[0], batch):
            sl = slice(start, start + batch)
            shape = torch.as_tensor(codes.shape[sl], dtype=torch.float32)
            exp = torch.as_tensor(codes.exp[sl], dtype=torch.float32)
            pose = torch.as_tensor(codes.pose[sl], dtype=torch.float32)
            canonical = pose.clone()
            canonical[:, :3] = 0
            vertices.append(flame(shape, exp, canonical).vertices.double().numpy())
            landmarks.append(flame(shape, exp, pose).landmarks2d.double().numpy())
    return np.concatenate(vertices), np.concatenate(landmarks)


def _project(landmarks: np.ndarray, cam: np.ndarray, width: np.ndarray) -> np.ndarray:
    """68 landmarks (N, 68, 3) -> photo pixels (N, 68, 2), as the synthetic data renders."""
    import torch

    from emoca_pipeline.render import ndc_to_pixels, orthographic_project

    out = np.empty(landmarks.shape[:2] + (2,))
    for size in np.unique(width):
        rows = np.flatnonzero(width == size)
        projected = orthographic_project(torch.as_tensor(landmarks[rows]),
                                         torch.as_tensor(cam[rows], dtype=torch.float64))
        out[rows] = ndc_to_pixels(projected[..., :2], int(size)).numpy()
    return out


def _geometry_metrics(flame, predicted: _Codes, truth: _Codes, true_vertices: np.ndarray,
                      pixels: np.ndarray, true_pixels: np.ndarray) -> dict[str, object]:
    vertices, _ = _flame_outputs(flame, predicted)
    vertex_error = np.linalg.norm(vertices - true_vertices, axis=2).mean(axis=1)
    inter_ocular = np.linalg.norm(true_pixels[:, RIGHT_EYE_OUTER] - true_pixels[:, LEFT_EYE_OUTER],
                                  axis=1)
    nme = np.linalg.norm(pixels - true_pixels, axis=2).mean(axis=1) / inter_ocular
    # a constant prediction has no correlation (rounding in a mean could fake a tiny one)
    per_component = np.array([pcc(predicted.exp[:, i], truth.exp[:, i])
                              if np.ptp(predicted.exp[:, i]) > 0 else math.nan
                              for i in range(truth.exp.shape[1])])
    finite = per_component[np.isfinite(per_component)]
    return {
        "V-err": float(vertex_error.mean()),
        "V-err (mm)": float(vertex_error.mean() * UNITS_TO_MM),
        "NME-68": float(nme.mean()),
        "Exp-PCC": float(finite.mean()) if finite.size else math.nan,
        "Jaw (deg)": float(_rotation_angles(predicted.pose[:, 3:], truth.pose[:, 3:]).mean()),
        "Pose (deg)": float(_rotation_angles(predicted.pose[:, :3], truth.pose[:, :3]).mean()),
        "_exp_pcc_per_component": [float(x) if math.isfinite(x) else None
                                   for x in per_component],
    }


def _codes_of(table: pa.Table, source: Path | str) -> _Codes:
    return _Codes(*(code_matrix(table, name, source) for name in ("shape", "exp", "pose", "cam")))


def _take(codes: _Codes, rows: np.ndarray) -> _Codes:
    return _Codes(*(array[rows] for array in codes))


def _plot(rows: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    panels = ("V-err (mm)", "NME-68", "Exp-PCC", "E-ACC")
    figure = Figure(figsize=(3.2 * len(panels), 3.4), layout="constrained")
    names = list(rows)
    for ax, column in zip(figure.subplots(1, len(panels)), panels, strict=True):
        values = [rows[n][column] for n in names]
        ax.bar(range(len(names)), [v if math.isfinite(v) else 0.0 for v in values],
               color=["C0" if n not in (MEAN_ROW, TRUTH_ROW) else "0.6" for n in names])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(column)
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def evaluate_synthetic(reconstructions: Mapping[str, str | os.PathLike],
                       table: str | os.PathLike, assets: str | os.PathLike,
                       out_dir: str | os.PathLike, emotion_config: str | os.PathLike | None,
                       tracking_uri: str | None = None,
                       results_dir: str | os.PathLike = "results",
                       experiment: str | None = None,
                       parent_run_id: str | None = None) -> SyntheticEvaluation:
    """The synthetic table (see the module docstring).

    Args:
        reconstructions: row name -> reconstruction folder.
        table: the synthetic dataset's ``synthetic.parquet``.
        assets: the FLAME asset folder the dataset was rendered with.
        emotion_config: EmoMLP training settings; None leaves the emotion columns out
            (shown as "--", and said so in the table's note).
        tracking_uri, results_dir, experiment, parent_run_id: the MLflow runs of the
            EmoMLPs (:func:`~emoca_pipeline.evaluation.affectnet.train_emotion_on_codes`).
    """
    from emoca_pipeline.evaluation.emotion_table import evaluate_emotion
    from emoca_pipeline.flame import create

    if not reconstructions:
        raise ValueError("reconstructions: give at least one NAME=DIR")
    for name in reconstructions:
        if name in (MEAN_ROW, TRUTH_ROW):
            raise ValueError(f"reconstructions: {name!r} is the name of a reference row")
    table_path, out = Path(table), Path(out_dir)
    if not table_path.is_file():
        raise FileNotFoundError(f"{table_path}: no such synthetic table")
    try:
        names = pq.read_schema(table_path).names
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"{table_path}: not a Parquet file ({error})") from error
    missing = [c for c in _GT_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{table_path}: not a synthetic table (missing {', '.join(missing)})")
    truth_table = pq.read_table(table_path, columns=list(_GT_COLUMNS))
    ids = np.asarray(truth_table.column("image_id").to_pylist(), dtype=object)
    splits = np.asarray(truth_table.column("split").to_pylist(), dtype=object)
    truth = _codes_of(truth_table, table_path)
    flame = create(assets, n_shape=truth.shape.shape[1], n_exp=truth.exp.shape[1])
    index = {key: i for i, key in enumerate(ids)}

    recs: dict[str, tuple[np.ndarray, _Codes, np.ndarray]] = {}
    for name, folder in reconstructions.items():
        rec = first_faces(read_reconstruction_table(folder, _REC_COLUMNS))
        keys = rec.column("image_id").to_pylist()
        known = np.array([key in index for key in keys])
        if not known.any():
            raise ValueError(f"{folder}: no image_id of {table_path} among the reconstructions")
        rec = rec.filter(pa.array(known))
        rows = np.array([index[key] for key in rec.column("image_id").to_pylist()])
        codes = _codes_of(rec, folder)
        if codes.shape.shape[1] != truth.shape.shape[1] or codes.exp.shape[1] != \
                truth.exp.shape[1]:
            raise ValueError(f"{folder}: codes of {codes.shape.shape[1]} shape / "
                             f"{codes.exp.shape[1]} expression components; the table has "
                             f"{truth.shape.shape[1]} / {truth.exp.shape[1]}")
        pixels = code_matrix(rec, "landmarks", folder).reshape(-1, 68, 2)
        recs[name] = (rows, codes, pixels)

    test = np.flatnonzero(splits == "test")
    for rows, _, _ in recs.values():
        test = np.intersect1d(test, rows)
    if test.size < 2:
        raise ValueError(f"{table_path}: {test.size} test image(s) reconstructed by every "
                         "model; the table needs at least 2")
    train = np.flatnonzero(splits == "train")
    if train.size == 0:
        raise ValueError(f"{table_path}: no train split (the mean-code baseline needs it)")

    widths = truth_table.column("width").to_numpy()
    true_pixels = code_matrix(truth_table, "landmarks", table_path).reshape(-1, 68, 2)
    truth_test = _take(truth, test)
    true_vertices, _ = _flame_outputs(flame, truth_test)
    mean = _Codes(*(np.repeat(a[train].mean(axis=0, keepdims=True), len(ids), axis=0)
                    for a in truth))

    results: dict[str, dict[str, object]] = {}
    predictions: dict[str, tuple[_Codes, np.ndarray]] = {}
    for name, (rows, codes, pixels) in recs.items():
        position = {row: i for i, row in enumerate(rows)}
        take = np.array([position[row] for row in test])
        predictions[name] = (_take(codes, take), pixels[take])
    for name, codes in ((MEAN_ROW, mean), (TRUTH_ROW, truth)):
        chosen = _take(codes, test)
        _, landmarks = _flame_outputs(flame, chosen)
        predictions[name] = (chosen, _project(landmarks, chosen.cam, widths[test]))
    for name, (codes, pixels) in predictions.items():
        results[name] = _geometry_metrics(flame, codes, truth_test, true_vertices, pixels,
                                          true_pixels[test])

    emotion_note = "emotion not evaluated (no EmoMLP settings given)"
    if emotion_config is not None:
        labels = {k: truth_table.column(k).cast(pa.float64()).to_numpy()
                  for k in ("expression", "valence", "arousal")}
        files = []
        sources = {name: (rows, codes) for name, (rows, codes, _) in recs.items()}
        sources[MEAN_ROW] = (np.arange(len(ids)), mean)
        sources[TRUTH_ROW] = (np.arange(len(ids)), truth)
        test_set = set(test.tolist())
        for name, (rows, codes) in sources.items():
            keep = np.array([splits[r] in ("train", "val") or r in test_set for r in rows])
            rows_kept = rows[keep]
            files.append(train_emotion_on_codes(
                name, ids[rows_kept].tolist(), splits[rows_kept].tolist(),
                {k: v[rows_kept] for k, v in labels.items()},
                {"shape": codes.shape[keep], "exp": codes.exp[keep], "pose": codes.pose[keep]},
                emotion_config, out / "emotion", tracking_uri=tracking_uri,
                results_dir=results_dir, experiment=experiment, parent_run_id=parent_run_id))
        emotion = evaluate_emotion(files, out / "emotion")
        for metrics in emotion.models:
            results[metrics.model].update({"E-ACC": metrics.expression.accuracy,
                                           "V-CCC": metrics.valence.ccc,
                                           "A-CCC": metrics.arousal.ccc})
        emotion_note = (f"emotion: EmoMLP per row on its train-split codes ({emotion_config}); "
                        f"full table in {emotion.markdown.name} under emotion/")
    varying = int((np.ptp(truth_test.exp, axis=0) > 0).sum())
    rows_out = {name: {c: float(r.get(c, math.nan)) for c in TABLE_COLUMNS}
                for name, r in results.items()}
    tables = write_tables(
        out, "synthetic_table", list(rows_out), TABLE_COLUMNS,
        [list(r.values()) for r in rows_out.values()], digits=DIGITS,
        notes=[f"Synthetic test split: {test.size} images of unseen identities. V-err in "
               f"FLAME units (metres; mm = x{UNITS_TO_MM:g}); NME normalised by the "
               f"inter-ocular distance (points 36-45); Exp-PCC: mean over the "
               f"{varying} expression components that vary in the test split's ground truth "
               f"(a constant has no correlation); {emotion_note}."],
        comment="synthetic benchmark, test split", extra={"n": [int(test.size)] * len(rows_out)})

    def plain(value: object) -> object:
        return None if isinstance(value, float) and not math.isfinite(value) else value

    summary = {"table": str(table_path), "test_images": int(test.size),
               "units_to_mm": UNITS_TO_MM, "nme_normaliser": "inter-ocular (36-45)",
               "rows": {name: {k: plain(v) for k, v in r.items()} for name, r in
                        results.items()}}
    json_path = out / "synthetic_table.json"
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    plot = out / "synthetic_metrics.png"
    _plot(rows_out, plot)
    return SyntheticEvaluation(rows_out, tables, json_path, plot)
