"""The detection stage: images in, Parquet shards of faces (landmarks + crop transform) out.

Flow of ``emoca detect INPUT OUT``:

1. **Listing.** INPUT is a folder tree of images, a file list (``.txt``/``.lst`` with one
   path per line, ``.csv`` or ``.parquet`` with a ``path`` or AffectNet
   ``subDirectory_filePath`` column), or a video (frames read with OpenCV). Items are sorted
   by their key (the path relative to the input root, in code-point order; frame order for
   a video), so the listing does not depend on the file system's order. In a folder, hidden
   files and files without an image extension are skipped (and counted).
2. **Plan.** Shard ``k`` holds items ``[k*S, (k+1)*S)`` of the sorted listing. The plan is
   stored in ``OUT/plan.json`` (counts, settings) and ``OUT/listing.parquet`` (the keys);
   one-job-per-shard runs (``--shard K``, the Snakemake rules) read it instead of listing
   the input again.
3. **Shards.** Each image is read once (bytes -> content hash and decode), faces are found
   by the landmarker, and each face gets its 68 points, bbox, score and the crop transform
   (DESIGN.md section 4; crops are warped at load time from the stored transform). An image
   without a face, or one that cannot be read, is one row whose ``status`` says why: rows
   out == images in. A shard is written atomically to ``OUT/shard-00000.parquet`` ...
   with :data:`~emoca_pipeline.data.schema.DETECTION_SCHEMA`.
4. **Resume.** A rerun skips every shard whose file exists and whose metadata records the
   same items and settings (a killed run loses only the shards it had not finished;
   changing the landmarker, a limit or the input list redoes the affected shards). Changed
   file contents under unchanged names are not noticed: delete the shard to redo it.
5. **Parallelism.** With ``workers > 1`` a Dask ``LocalCluster`` (one single-threaded
   process per worker) maps :func:`process_chunk` over chunks of up to ``chunk_size``
   images (never one task per image); each worker builds its landmarker once and keeps it.
   ``workers == 1`` runs in-process. Chunks never straddle shards; the client assembles
   and writes each shard when its chunks are in, so shard contents do not depend on the
   number of workers.
6. **Summary.** Images, faces, images without a face and errors by status and reason are
   printed and written to ``OUT/summary.json``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emoca_pipeline.data.crop import CropSettings, crop_box_from_landmarks, crop_transform
from emoca_pipeline.data.schema import (
    DETECTION_SCHEMA,
    MEDIAPIPE_POINTS,
    check_table_metadata,
    fixed_list_array,
    metadata_of,
    table_metadata,
)
from emoca_pipeline.io.atomic import atomic_output, atomic_write_text
from emoca_pipeline.io.images import DEFAULT_MAX_PIXELS, image_id, read_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "LANDMARKERS",
    "VIDEO_EXTENSIONS",
    "DetectSettings",
    "DetectionPlan",
    "DetectionSummary",
    "InputItem",
    "LandmarkerSpec",
    "detect_shard",
    "list_inputs",
    "load_ground_truth_landmarks",
    "load_plan",
    "plan_detection",
    "process_chunk",
    "read_detections",
    "run_detection",
    "shard_path",
    "summarize_detections",
    "write_plan",
    "write_sample_photos",
]

#: File extensions listed from a folder (lower case).
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".dib", ".tif", ".tiff",
    ".gif", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".j2k", ".avif",
})
#: Extensions read as videos when INPUT is a file.
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
})
_LIST_EXTENSIONS = frozenset({".txt", ".lst", ".csv", ".parquet"})
#: ``--landmarker`` choices.
LANDMARKERS = ("mediapipe", "fan", "gt")

PLAN_FILE = "plan.json"
LISTING_FILE = "listing.parquet"
SUMMARY_FILE = "summary.json"
_FRAME_SEPARATOR = "#frame="


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LandmarkerSpec:
    """What a worker needs to build its landmarker (hashable, cheap to ship).

    Attributes:
        name: ``"mediapipe"``, ``"fan"`` or ``"gt"``.
        max_faces: faces kept per image, largest first.
        labels: for ``gt``: the tables with the landmarks (see
            :func:`load_ground_truth_landmarks`), absolute paths.
    """

    name: str = "mediapipe"
    max_faces: int = 1
    labels: tuple[str, ...] = ()

    def build(self) -> Any:
        """A new landmarker (see :mod:`emoca_pipeline.data.landmarks`)."""
        from emoca_pipeline.data.landmarks import GroundTruthLandmarker, make_landmarker

        if self.name == "gt":
            if not self.labels:
                raise ValueError("--landmarker gt needs --labels FILE (a synthetic.parquet "
                                 "table or an AffectNet CSV with facial_landmarks)")
            landmarks: dict[str, np.ndarray] = {}
            for labels in self.labels:
                landmarks.update(load_ground_truth_landmarks(labels))
            return GroundTruthLandmarker(landmarks, scheme="fan68", max_faces=self.max_faces,
                                         allow_missing=True)
        return make_landmarker(self.name, max_faces=self.max_faces)


@dataclass(frozen=True)
class DetectSettings:
    """Settings of the detection stage (CLI flags of ``emoca detect``).

    Attributes:
        landmarker: ``"mediapipe"`` (default), ``"fan"`` or ``"gt"`` (given landmarks).
        labels: for ``gt``, the landmark tables (AffectNet's training.csv and validation.csv,
            or one synthetic table); default: INPUT itself when it is a Parquet list with a
            ``landmarks`` column (the synthetic dataset's ``synthetic.parquet``).
        max_faces: faces kept per image, largest first.
        max_pixels: images declaring more pixels are rows with status ``too_large``.
        shard_size: images per shard (S).
        chunk_size: images per Dask task, at most; smaller when there are few images, so
            that every worker gets several tasks.
        image_root: folder that relative entries of a file list are relative to (default:
            the list file's folder).
        crop: crop constants (EMOCA's by default).
    """

    landmarker: str = "mediapipe"
    labels: tuple[str, ...] = ()
    max_faces: int = 1
    max_pixels: int = DEFAULT_MAX_PIXELS
    shard_size: int = 1000
    chunk_size: int = 1000
    image_root: str | None = None
    crop: CropSettings = field(default_factory=CropSettings)

    def __post_init__(self) -> None:
        if self.landmarker not in LANDMARKERS:
            raise ValueError(f"--landmarker must be one of {', '.join(LANDMARKERS)}, "
                             f"got {self.landmarker!r}")
        for name in ("max_faces", "max_pixels", "shard_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        labels = (self.labels,) if isinstance(self.labels, str | os.PathLike) else self.labels
        object.__setattr__(self, "labels", tuple(str(label) for label in labels))
        if self.labels and self.landmarker != "gt":
            raise ValueError(f"--labels {self.labels[0]} is only read with --landmarker gt")


# --------------------------------------------------------------------------------------------
# Listing and plan
# --------------------------------------------------------------------------------------------


class InputItem(NamedTuple):
    """One image to process.

    Attributes:
        key: path relative to the input root (POSIX separators), the entry as written in a
            file list, or ``"VIDEO#frame=N"``; stored as the ``path`` column.
        source: the file to read (the video file for frames).
        frame: frame index for video frames, else -1.
    """

    key: str
    source: str
    frame: int


@dataclass(frozen=True)
class DetectionPlan:
    """The sorted listing of an input and its split into shards.

    Attributes:
        input: the input (folder, list file or video), absolute.
        kind: ``"folder"``, ``"list"`` or ``"video"``.
        root: folder that keys are relative to, absolute.
        keys: item keys in processing order.
        frames: frame index per item for a video, else None.
        video: the video file (absolute) for ``kind == "video"``.
        shard_size: images per shard.
        skipped_files: files in a folder input that were not listed (hidden, other types).
    """

    input: str
    kind: str
    root: str
    keys: tuple[str, ...]
    frames: tuple[int, ...] | None
    video: str | None
    shard_size: int
    skipped_files: int = 0

    @property
    def num_images(self) -> int:
        return len(self.keys)

    @property
    def num_shards(self) -> int:
        return math.ceil(len(self.keys) / self.shard_size)

    def shard_range(self, shard: int) -> range:
        """Indices of the items of ``shard`` in the listing."""
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"--shard {shard} is out of range: {self.input} has "
                             f"{self.num_shards} shards (0-{self.num_shards - 1})")
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, len(self.keys)))

    def item(self, index: int) -> InputItem:
        key = self.keys[index]
        if self.frames is not None:
            return InputItem(key, str(self.video), self.frames[index])
        return InputItem(key, str(Path(self.root, key)), -1)

    def items(self, indices: Sequence[int] | range) -> list[InputItem]:
        return [self.item(i) for i in indices]

    def items_hash(self, shard: int) -> str:
        """Hash of the shard's item keys and sources: a finished shard is reused only if equal."""
        digest = hashlib.blake2b(digest_size=16)
        for item in self.items(self.shard_range(shard)):
            digest.update(f"{item.key}\0{item.source}\0{item.frame}\n".encode())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        """The plan without its keys (``plan.json``)."""
        return {
            "input": self.input, "kind": self.kind, "root": self.root, "video": self.video,
            "images": self.num_images, "shard_size": self.shard_size,
            "shards": self.num_shards, "skipped_files": self.skipped_files,
            "listing_hash": self.listing_hash(),
        }

    def listing_hash(self) -> str:
        digest = hashlib.blake2b(digest_size=16)
        for index, key in enumerate(self.keys):
            frame = -1 if self.frames is None else self.frames[index]
            digest.update(f"{key}\0{frame}\n".encode())
        return digest.hexdigest()


def list_inputs(
    input_path: str | os.PathLike, shard_size: int = 1000, image_root: str | None = None
) -> DetectionPlan:
    """Sorted listing of a folder, file list or video, split into shards of ``shard_size``.

    Raises:
        FileNotFoundError: ``input_path`` (or ``image_root``) does not exist.
        ValueError: an unsupported file type, a list without a path column, a video that
            OpenCV cannot open, or no images at all; one line naming the file.
    """
    path = Path(input_path).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such input folder, file list or video")
    if path.is_dir():
        if image_root is not None:
            raise ValueError(f"--image-root applies to file lists only; {path} is a folder")
        keys, skipped = _list_folder(path)
        plan = DetectionPlan(str(path), "folder", str(path), tuple(keys), None, None,
                             shard_size, skipped)
    else:
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            count = _count_video_frames(path)
            frames = tuple(range(count))
            keys = tuple(f"{path.name}{_FRAME_SEPARATOR}{frame}" for frame in frames)
            plan = DetectionPlan(str(path), "video", str(path.parent), keys, frames, str(path),
                                 shard_size)
        elif suffix in _LIST_EXTENSIONS:
            root = path.parent if image_root is None else Path(image_root).expanduser().absolute()
            if not root.is_dir():
                raise FileNotFoundError(f"--image-root {root}: no such folder")
            keys = sorted(_read_file_list(path))
            plan = DetectionPlan(str(path), "list", str(root), tuple(keys), None, None,
                                 shard_size)
        elif suffix in IMAGE_EXTENSIONS:
            raise ValueError(f"{path}: INPUT must be a folder, a file list or a video; "
                             "put single images in a folder")
        else:
            raise ValueError(
                f"{path}: unsupported input type {suffix or '(no extension)'}: give a folder, a "
                f"file list ({', '.join(sorted(_LIST_EXTENSIONS))}) or a video "
                f"({', '.join(sorted(VIDEO_EXTENSIONS))})"
            )
    if plan.num_images == 0:
        raise ValueError(f"{path}: no images found" + (
            f" ({plan.skipped_files} files without an image extension skipped)"
            if plan.skipped_files else ""))
    return plan


def _list_folder(root: Path) -> tuple[list[str], int]:
    keys: list[str] = []
    skipped = 0
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        relative = Path(folder).relative_to(root)
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                skipped += 1
                continue
            keys.append((relative / name).as_posix())
    keys.sort()
    return keys, skipped


def _read_file_list(path: Path) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in (".txt", ".lst"):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as error:
            raise ValueError(f"{path}: file list is not UTF-8 text ({error.reason})") from None
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if suffix == ".parquet":
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as error:
            raise ValueError(f"{path}: cannot read Parquet file list: {error}") from None
        column = _path_column(names, path)
        values = pq.read_table(path, columns=[column]).column(column)
    else:
        from emoca_pipeline.data.manifest import csv_header, read_csv_columns

        names = csv_header(path)
        column = _path_column(names, path)
        values = read_csv_columns(path, [column]).column(column)
    if values.null_count:
        raise ValueError(f"{path}: column {column!r} has {values.null_count} empty entries")
    return [str(value) for value in values.to_pylist() if str(value).strip()]


def _path_column(names: Sequence[str], path: Path) -> str:
    for candidate in ("path", "subDirectory_filePath", "image_path", "file"):
        if candidate in names:
            return candidate
    raise ValueError(f"{path}: no path column: expected 'path' or 'subDirectory_filePath', "
                     f"found {', '.join(names) or 'no columns'}")


def _count_video_frames(path: Path) -> int:
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"{path}: OpenCV cannot open this video")
        # Counting by grabbing is exact; the container's frame count property often is not.
        count = 0
        while capture.grab():
            count += 1
        return count
    finally:
        capture.release()


def shard_path(out: str | os.PathLike, shard: int) -> Path:
    """``OUT/shard-00000.parquet`` for shard 0, and so on."""
    return Path(out) / f"shard-{shard:05d}.parquet"


def plan_detection(
    input_path: str | os.PathLike, out: str | os.PathLike, settings: DetectSettings | None = None
) -> DetectionPlan:
    """List INPUT, and write ``OUT/plan.json`` and ``OUT/listing.parquet`` if they changed.

    The files are left untouched when the stored plan is identical, so that a workflow
    manager comparing modification times does not see a new plan.
    """
    settings = settings or DetectSettings()
    plan = list_inputs(input_path, settings.shard_size, settings.image_root)
    write_plan(plan, out)
    return plan


def write_plan(plan: DetectionPlan, out: str | os.PathLike) -> bool:
    """Write ``OUT/plan.json`` and ``OUT/listing.parquet`` unless OUT holds this plan.

    Returns:
        whether the files were written.
    """
    out = Path(out)
    stored = _read_plan_file(out)
    if stored is not None and stored == plan.describe() and (out / LISTING_FILE).is_file():
        return False
    listing = pa.table({
        "path": pa.array(plan.keys, pa.string()),
        "frame": pa.array(plan.frames if plan.frames is not None else [None] * plan.num_images,
                          pa.int32()),
    })
    listing = listing.replace_schema_metadata(table_metadata("listing", **{
        key: "" if value is None else value for key, value in plan.describe().items()}))
    with atomic_output(out / LISTING_FILE) as tmp:
        pq.write_table(listing, tmp)
    atomic_write_text(out / PLAN_FILE, json.dumps(plan.describe(), indent=2) + "\n")
    return True


def _read_plan_file(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_plan(out: str | os.PathLike) -> DetectionPlan:
    """The plan stored in OUT by :func:`plan_detection`.

    Raises:
        FileNotFoundError: no plan in OUT.
        ValueError: the plan and listing files disagree.
    """
    out = Path(out)
    described = _read_plan_file(out)
    if described is None or not (out / LISTING_FILE).is_file():
        raise FileNotFoundError(f"{out}: no detection plan ({PLAN_FILE}, {LISTING_FILE}); "
                                "run `emoca detect INPUT OUT` (or with --plan-only) first")
    listing = pq.read_table(out / LISTING_FILE)
    frames = listing.column("frame")
    plan = DetectionPlan(
        described["input"], described["kind"], described["root"],
        tuple(listing.column("path").to_pylist()),
        tuple(frames.to_pylist()) if described["kind"] == "video" else None,
        described["video"], int(described["shard_size"]), int(described["skipped_files"]),
    )
    if plan.describe() != described:
        raise ValueError(f"{out}: {PLAN_FILE} and {LISTING_FILE} disagree; delete both and rerun")
    return plan


# --------------------------------------------------------------------------------------------
# Ground-truth landmarks
# --------------------------------------------------------------------------------------------


def load_ground_truth_landmarks(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Per-image 68-point landmarks from a dataset's annotations.

    Args:
        path: a Parquet table with ``path`` and ``landmarks`` (fixed_size_list<float32>[136],
            the synthetic dataset's ``synthetic.parquet``), or an AffectNet CSV with
            ``subDirectory_filePath`` and ``facial_landmarks`` (``"x0;y0;x1;y1;..."``).

    Returns:
        key (the path column's value) -> ``(68, 2)`` float32 pixel coordinates.

    Raises:
        FileNotFoundError / ValueError: one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such landmark table")
    if path.suffix.lower() == ".parquet":
        try:
            names = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as error:
            raise ValueError(f"{path}: cannot read Parquet table: {error}") from None
        missing = [name for name in ("path", "landmarks") if name not in names]
        if missing:
            raise ValueError(f"{path}: landmark table lacks column(s) {', '.join(missing)}")
        table = pq.read_table(path, columns=["path", "landmarks"])
        keys = table.column("path").to_pylist()
        column = table.column("landmarks").combine_chunks()
        if column.null_count:
            raise ValueError(f"{path}: column 'landmarks' has {column.null_count} null rows")
        is_list = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
        if is_list and len(column) and pc.min_max(pc.list_value_length(column)).as_py() == {
                "min": 136, "max": 136}:
            column = column.cast(pa.list_(column.type.value_type, 136))
        if not pa.types.is_fixed_size_list(column.type) or column.type.list_size != 136:
            raise ValueError(f"{path}: column 'landmarks' must hold 136 numbers per row "
                             f"(68 x, y), got {column.type}")
        values = column.flatten().to_numpy(zero_copy_only=False)
        points = values.astype(np.float32).reshape(-1, 68, 2)
    elif path.suffix.lower() == ".csv":
        from emoca_pipeline.data.manifest import read_csv_columns

        table = read_csv_columns(path, ["subDirectory_filePath", "facial_landmarks"])
        keys = table.column("subDirectory_filePath").to_pylist()
        points = _parse_affectnet_landmarks(table.column("facial_landmarks").to_pylist(), path)
    else:
        raise ValueError(f"{path}: landmark table must be .parquet (synthetic) or .csv "
                         "(AffectNet)")
    return {str(key): points[index] for index, key in enumerate(keys)}


def _parse_affectnet_landmarks(texts: list[str | None], path: Path) -> np.ndarray:
    points = np.full((len(texts), 68, 2), np.nan, dtype=np.float32)
    for index, text in enumerate(texts):
        if not text:
            continue  # no annotation: the image becomes a no_face row
        values = text.split(";")
        if len(values) != 136:
            raise ValueError(f"{path}: row {index + 1}: facial_landmarks has {len(values)} "
                             "values, expected 136 (68 x;y pairs)")
        try:
            points[index] = np.asarray(values, dtype=np.float32).reshape(68, 2)
        except ValueError:
            raise ValueError(f"{path}: row {index + 1}: facial_landmarks is not numbers: "
                             f"{text[:40]!r}") from None
    return points


# --------------------------------------------------------------------------------------------
# Processing one chunk (runs on the workers)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _cached_landmarker(spec: LandmarkerSpec) -> Any:
    """One landmarker per process and spec: MediaPipe graphs and label tables load once."""
    return spec.build()


class _Rows:
    """Column buffers for detection rows of one chunk."""

    def __init__(self) -> None:
        self.columns: dict[str, list[Any]] = defaultdict(list)
        self.bbox: list[np.ndarray] = []
        self.landmarks: list[np.ndarray] = []
        self.mediapipe: list[np.ndarray | None] = []
        self.transform: list[np.ndarray] = []

    def add(
        self, item: InputItem, identifier: str | None, width: int, height: int, status: str,
        reason: str, face_index: int | None = None, score: float | None = None,
        bbox: np.ndarray | None = None, landmarks: np.ndarray | None = None,
        mediapipe: np.ndarray | None = None, transform: np.ndarray | None = None,
    ) -> None:
        c = self.columns
        c["image_id"].append(identifier)
        c["path"].append(item.key)
        c["frame"].append(item.frame if item.frame >= 0 else None)
        c["width"].append(width)
        c["height"].append(height)
        c["face_index"].append(face_index)
        c["score"].append(score)
        c["status"].append(status)
        c["reason"].append(" ".join(reason.split()))
        self.bbox.append(np.full(4, np.nan, np.float32) if bbox is None else bbox)
        self.landmarks.append(np.full(136, np.nan, np.float32) if landmarks is None
                              else landmarks.reshape(-1))
        self.mediapipe.append(None if mediapipe is None else mediapipe.reshape(-1))
        self.transform.append(np.full(9, np.nan) if transform is None else transform.reshape(-1))

    def table(self, detector: str, version: str) -> pa.Table:
        rows = len(self.bbox)
        c = self.columns
        mediapipe = np.full((rows, 2 * MEDIAPIPE_POINTS), np.nan, np.float32)
        for row, points in enumerate(self.mediapipe):
            if points is not None:
                mediapipe[row] = points

        def block(values: list[np.ndarray], width: int) -> np.ndarray:
            return np.stack(values) if values else np.zeros((0, width))

        arrays = {
            "image_id": pa.array(c["image_id"], pa.string()),
            "path": pa.array(c["path"], pa.string()),
            "frame": pa.array(c["frame"], pa.int32()),
            "width": pa.array(c["width"], pa.int32()),
            "height": pa.array(c["height"], pa.int32()),
            "face_index": pa.array(c["face_index"], pa.int16()),
            "bbox": fixed_list_array(block(self.bbox, 4), 4),
            "score": pa.array(c["score"], pa.float32()),
            "landmarks": fixed_list_array(block(self.landmarks, 136), 136),
            "mediapipe_landmarks": fixed_list_array(mediapipe, 2 * MEDIAPIPE_POINTS),
            "crop_transform": fixed_list_array(block(self.transform, 9), 9, pa.float64()),
            "status": pa.array(c["status"], pa.string()),
            "reason": pa.array(c["reason"], pa.string()),
            "detector": pa.array([detector] * rows, pa.string()),
            "detector_version": pa.array([version] * rows, pa.string()),
        }
        return pa.Table.from_arrays([arrays[f.name] for f in DETECTION_SCHEMA],
                                    schema=DETECTION_SCHEMA)


def _read_items(items: Sequence[InputItem], max_pixels: int) -> Iterator[
        tuple[InputItem, str | None, Any]]:
    """(item, image_id, DecodedImage) for each item, in order; never raises for a bad file."""
    frames = [item for item in items if item.frame >= 0]
    if frames:
        yield from _read_video_frames(frames, max_pixels)
        return
    for item in items:
        try:
            data = Path(item.source).read_bytes()
        except OSError:
            yield item, None, read_image(item.source, max_pixels)  # its 'missing' status line
            continue
        yield item, image_id(data), read_image(data, max_pixels)


def _read_video_frames(
    items: Sequence[InputItem], max_pixels: int
) -> Iterator[tuple[InputItem, str | None, Any]]:
    import cv2

    from emoca_pipeline.io.images import DecodedImage

    capture = cv2.VideoCapture(items[0].source)
    position = -1
    try:
        for item in items:
            if position != item.frame:
                capture.set(cv2.CAP_PROP_POS_FRAMES, item.frame)
            ok, bgr = capture.read() if capture.isOpened() else (False, None)
            position = item.frame + 1
            if not ok or bgr is None or bgr.size == 0:
                empty = np.zeros((0, 0, 3), np.uint8)
                yield item, None, DecodedImage(empty, "decode_error",
                                               f"video frame {item.frame} could not be read",
                                               0, 0, "")
                continue
            height, width = bgr.shape[:2]
            if width * height > max_pixels:
                empty = np.zeros((0, 0, 3), np.uint8)
                yield item, None, DecodedImage(
                    empty, "too_large", f"{width}x{height} = {width * height} pixels exceeds "
                    f"max_pixels={max_pixels}", width, height, "")
                continue
            rgb = np.ascontiguousarray(bgr[..., ::-1])
            identifier = image_id(f"{height}x{width}\n".encode() + rgb.tobytes())
            yield item, identifier, DecodedImage(rgb, "ok", "", width, height, "video")
    finally:
        capture.release()


_T = TypeVar("_T")


def _prefetch(iterator: Iterator[_T], depth: int = 1) -> Iterator[_T]:
    """Run ``iterator`` in a background thread, ``depth`` items ahead of the consumer.

    Reading, hashing and decoding the next image (Pillow and hashlib release the GIL) then
    overlaps with the landmarker on the current one (MediaPipe's graph calls release it
    too). Items come out in order; an exception in the iterator is raised here.
    """
    buffer: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(kind: str, value: Any) -> bool:
        while not stop.is_set():
            try:
                buffer.put((kind, value), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer is gone

    def produce() -> None:
        try:
            for value in iterator:
                if not put("item", value):
                    return
            put("end", None)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer
            put("error", error)

    thread = threading.Thread(target=produce, name="emoca-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()  # the producer gives up within 0.1 s, even with a full buffer
        thread.join()


def process_chunk(
    items: Sequence[InputItem], spec: LandmarkerSpec, max_pixels: int = DEFAULT_MAX_PIXELS,
    crop: CropSettings | None = None,
) -> pa.Table:
    """Decode, detect and compute crop transforms for a chunk of images.

    Never raises for a bad file: every item gives at least one row (see
    :data:`~emoca_pipeline.data.schema.DETECTION_STATUSES`). The landmarker is built once
    per process and spec.

    Returns:
        a table with :data:`~emoca_pipeline.data.schema.DETECTION_SCHEMA`, rows in item
        order, faces of an image largest first.
    """
    from emoca_pipeline.data.landmarks import mediapipe_to_68

    crop = crop or CropSettings()
    landmarker = _cached_landmarker(spec)
    rows = _Rows()
    for item, identifier, decoded in _prefetch(_read_items(items, max_pixels)):
        if not decoded.ok:
            rows.add(item, identifier, decoded.width, decoded.height, decoded.status,
                     decoded.reason)
            continue
        try:
            faces = landmarker.detect(decoded.image, image_key=item.key)
        except Exception as error:  # noqa: BLE001 - one image must not stop the run
            rows.add(item, identifier, decoded.width, decoded.height, "detect_error",
                     f"{type(error).__name__}: {error}"[:200])
            continue
        if not faces:
            reason = ("no annotated landmarks for this image" if spec.name == "gt"
                      else "the landmarker found no face")
            rows.add(item, identifier, decoded.width, decoded.height, "no_face", reason)
            continue
        for face_index, face in enumerate(faces):
            points = np.asarray(face.landmarks, dtype=np.float32)
            mediapipe = None
            if face.scheme == "mediapipe478" and points.shape[0] == MEDIAPIPE_POINTS:
                mediapipe, points = points, mediapipe_to_68(points)
            common = dict(face_index=face_index, score=float(face.score),
                          bbox=np.asarray(face.bbox, dtype=np.float32).reshape(4))
            if points.shape != (68, 2):
                rows.add(item, identifier, decoded.width, decoded.height, "crop_error",
                         f"landmarks of scheme {face.scheme!r} have shape {points.shape}, "
                         "expected 68 points", **common)
                continue
            try:
                box = crop_box_from_landmarks(points, crop)
                transform = crop_transform(box.center, box.size, crop.out_size)
            except ValueError as error:
                rows.add(item, identifier, decoded.width, decoded.height, "crop_error",
                         str(error), landmarks=points, mediapipe=mediapipe, **common)
                continue
            rows.add(item, identifier, decoded.width, decoded.height, "ok", "",
                     landmarks=points, mediapipe=mediapipe, transform=transform, **common)
    return rows.table(landmarker.name, str(landmarker.version))


# --------------------------------------------------------------------------------------------
# Running shards
# --------------------------------------------------------------------------------------------


class _Context(NamedTuple):
    """What every shard of one run shares."""

    plan: DetectionPlan
    out: Path
    spec: LandmarkerSpec
    settings: DetectSettings
    detector: str
    detector_version: str
    scheme: str
    fingerprint: str


def _prepare(plan: DetectionPlan, out: Path, settings: DetectSettings) -> _Context:
    labels = tuple(settings.labels)
    if settings.landmarker == "gt" and not labels:
        if plan.kind == "list" and plan.input.endswith(".parquet") and \
                "landmarks" in pq.read_schema(plan.input).names:
            labels = (plan.input,)
        else:
            raise ValueError(f"--landmarker gt needs --labels FILE for {plan.input} (a "
                             "synthetic.parquet table or an AffectNet CSV)")
    resolved = []
    for label in labels:
        label_path = Path(label).expanduser().absolute()
        if not label_path.is_file():
            raise FileNotFoundError(f"--labels {label_path}: no such file")
        resolved.append(str(label_path))
    spec = LandmarkerSpec(settings.landmarker, settings.max_faces, tuple(resolved))
    # Build once here: a missing model or a bad label table fails before any work starts.
    landmarker = _cached_landmarker(spec)
    identity: dict[str, Any] = {
        "detector": landmarker.name, "detector_version": str(landmarker.version),
        "scheme": landmarker.scheme, "max_faces": settings.max_faces,
        "max_pixels": settings.max_pixels, "crop": asdict(settings.crop),
    }
    for label in spec.labels:
        stat = Path(label).stat()
        identity.setdefault("labels", []).append([label, stat.st_size, stat.st_mtime_ns])
    fingerprint = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(),
                                  digest_size=16).hexdigest()
    return _Context(plan, out, spec, settings, landmarker.name, str(landmarker.version),
                    landmarker.scheme, fingerprint)


def _shard_metadata(context: _Context, shard: int) -> dict[bytes, bytes]:
    plan = context.plan
    crop = context.settings.crop
    return table_metadata(
        "detections", landmark_scheme=context.scheme, detector=context.detector,
        detector_version=context.detector_version, shard=shard, num_shards=plan.num_shards,
        shard_size=plan.shard_size, items_hash=plan.items_hash(shard),
        settings_hash=context.fingerprint, input=plan.input, input_kind=plan.kind,
        root=plan.root, max_faces=context.settings.max_faces,
        max_pixels=context.settings.max_pixels, crop_out_size=crop.out_size,
        crop_scale=crop.scale,
    )


def _shard_is_done(context: _Context, shard: int) -> bool:
    path = shard_path(context.out, shard)
    if not path.is_file():
        return False
    try:
        meta = metadata_of(pq.read_schema(path))
    except (pa.ArrowInvalid, OSError):
        return False  # unreadable: redo it
    return (meta.get("items_hash") == context.plan.items_hash(shard)
            and meta.get("settings_hash") == context.fingerprint
            and meta.get("shard_size") == str(context.plan.shard_size))


def _write_shard(context: _Context, shard: int, table: pa.Table) -> None:
    expected = len(context.plan.shard_range(shard))
    images = _count_images(table.column("face_index"))
    if images != expected:  # the invariant rows out == images in; a bug if it fails
        raise RuntimeError(f"shard {shard}: {images} images in the table, {expected} listed")
    table = table.replace_schema_metadata(_shard_metadata(context, shard))
    with atomic_output(shard_path(context.out, shard)) as tmp:
        # Dictionary encoding only where values repeat (on float lists it fails and falls
        # back, at 3x the write and 2x the read time).
        pq.write_table(table, tmp, compression="zstd",
                       use_dictionary=["status", "reason", "detector", "detector_version"])


def _count_images(face_index: pa.ChunkedArray | pa.Array) -> int:
    """Each image has exactly one row with face_index null (no face) or 0 (its first face)."""
    first = pc.fill_null(pc.equal(face_index, 0), True)
    return int(pc.sum(first).as_py() or 0)


class _Chunk(NamedTuple):
    shard: int
    position: int  # chunk number within the shard
    indices: range


def _chunks(plan: DetectionPlan, shards: Sequence[int], chunk_size: int,
            workers: int) -> list[_Chunk]:
    pending = sum(len(plan.shard_range(shard)) for shard in shards)
    # Several tasks per worker keep them all busy to the end; never more than chunk_size.
    size = max(1, min(chunk_size, math.ceil(pending / (4 * workers)) if workers > 1
                      else chunk_size))
    chunks = []
    for shard in shards:
        indices = plan.shard_range(shard)
        for position, start in enumerate(range(indices.start, indices.stop, size)):
            chunks.append(_Chunk(shard, position, range(start, min(start + size, indices.stop))))
    return chunks


def _run_shards(
    context: _Context, shards: Sequence[int], workers: int, progress: bool,
    client: Any = None,
) -> None:
    plan = context.plan
    if client is not None:
        workers = max(len(client.scheduler_info(n_workers=-1)["workers"]), 1)
    chunks = _chunks(plan, shards, context.settings.chunk_size, workers)
    expected = Counter(chunk.shard for chunk in chunks)
    received: dict[int, dict[int, pa.Table]] = defaultdict(dict)
    total = sum(len(chunk.indices) for chunk in chunks)

    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc="detect", disable=not progress, mininterval=0.5,
              file=sys.stderr) as bar:

        def on_result(chunk: _Chunk, table: pa.Table) -> None:
            parts = received[chunk.shard]
            parts[chunk.position] = table
            bar.update(len(chunk.indices))
            if len(parts) == expected[chunk.shard]:
                tables = [parts[position] for position in range(len(parts))]
                _write_shard(context, chunk.shard, pa.concat_tables(tables))
                del received[chunk.shard]

        args = (context.spec, context.settings.max_pixels, context.settings.crop)
        if client is not None:
            _map_with_dask(client, plan, chunks, args, workers, on_result)
        elif workers == 1:
            for chunk in chunks:
                on_result(chunk, process_chunk(plan.items(chunk.indices), *args))
        else:
            from distributed import Client, LocalCluster

            single_thread = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                     "OPENBLAS_NUM_THREADS")}
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                              dashboard_address=None, silence_logs=logging.ERROR,
                              env=single_thread) as cluster, Client(cluster) as own_client:
                _map_with_dask(own_client, plan, chunks, args, workers, on_result)


def _map_with_dask(
    client: Any, plan: DetectionPlan, chunks: Sequence[_Chunk], args: tuple[Any, ...],
    workers: int, on_result: Callable[[_Chunk, pa.Table], None],
) -> None:
    """Submit the chunks in order, at most ``2 * workers`` in flight (bounds the client's
    memory), and hand each result to ``on_result`` as it completes."""
    from distributed import as_completed

    waiting = list(reversed(chunks))
    futures: dict[Any, _Chunk] = {}
    completed = as_completed()

    def submit() -> None:
        chunk = waiting.pop()
        future = client.submit(process_chunk, plan.items(chunk.indices), *args, pure=False)
        futures[future] = chunk
        completed.add(future)

    while waiting and len(futures) < 2 * workers:
        submit()
    for future in completed:
        chunk = futures.pop(future)
        on_result(chunk, future.result())
        future.release()
        if waiting:
            submit()


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


@dataclass
class DetectionSummary:
    """What a detection run produced (``OUT/summary.json``).

    Attributes:
        images: images listed (= images with a row).
        rows: rows in the shards (one per face, one per image without a face).
        faces: rows with status ``ok``.
        images_with_faces: images with at least one ``ok`` face.
        no_face: images decoded but without a face.
        errors: status -> number of images (every status other than ``ok``/``no_face``).
        reasons: ``"status: reason head"`` -> count, where the head is the reason up to its
            first colon (file-specific details cut off).
        examples: status -> up to 3 ``[path, reason]`` pairs.
        shards, shards_run, shards_skipped: shard counts of this run.
        skipped_files: files in a folder input that are not images (not listed).
        detector, detector_version, landmark_scheme: from the shards' metadata.
        seconds: wall time of the run.
    """

    images: int = 0
    rows: int = 0
    faces: int = 0
    images_with_faces: int = 0
    no_face: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[list[str]]] = field(default_factory=dict)
    shards: int = 0
    shards_run: int = 0
    shards_skipped: int = 0
    skipped_files: int = 0
    detector: str = ""
    detector_version: str = ""
    landmark_scheme: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """Lines for a person: totals, then errors by status and reason."""
        error_total = sum(self.errors.values())
        lines = [
            f"detect: {self.images} images in {self.shards} shard(s) ({self.shards_run} run, "
            f"{self.shards_skipped} already done) with {self.detector} "
            f"{self.detector_version}",
            f"  faces: {self.faces} on {self.images_with_faces} images; no face: "
            f"{self.no_face}; errors: {error_total}; rows: {self.rows}",
        ]
        for status, count in sorted(self.errors.items()):
            lines.append(f"  {status}: {count}")
            for reason, reason_count in sorted(self.reasons.items()):
                if reason.startswith(f"{status}: "):
                    lines.append(f"    {reason_count:>6}  {reason[len(status) + 2:]}")
        if self.skipped_files:
            lines.append(f"  not listed: {self.skipped_files} files without an image extension")
        lines.append(f"  time: {self.seconds:.1f} s")
        return "\n".join(lines)


def summarize_detections(
    out: str | os.PathLike, shards: Sequence[int] | None = None
) -> DetectionSummary:
    """Count images, faces and errors in OUT's shards (all of the plan's, or ``shards``)."""
    out = Path(out)
    if shards is None:
        shards = range(load_plan(out).num_shards)
    summary = DetectionSummary()
    examples: dict[str, list[list[str]]] = defaultdict(list)
    for shard in shards:
        path = shard_path(out, shard)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard not written yet")
        table = pq.read_table(path, columns=["path", "face_index", "status", "reason"])
        meta = metadata_of(pq.read_schema(path))
        summary.detector = meta.get("detector", "")
        summary.detector_version = meta.get("detector_version", "")
        summary.landmark_scheme = meta.get("landmark_scheme", "")
        face_index = table.column("face_index").to_pylist()
        status = table.column("status").to_pylist()
        for row, (index, state) in enumerate(zip(face_index, status, strict=True)):
            summary.rows += 1
            if state == "ok":
                summary.faces += 1
                summary.images_with_faces += int(index == 0)
            if index is not None and index != 0:
                continue  # a second face of an image counted already
            summary.images += 1
            if state == "no_face":
                summary.no_face += 1
            elif index is None and state != "ok":
                summary.errors[state] = summary.errors.get(state, 0) + 1
                reason = table.column("reason")[row].as_py()
                head = reason.split(":")[0].strip() or "(no reason)"
                key = f"{state}: {head}"
                summary.reasons[key] = summary.reasons.get(key, 0) + 1
                if len(examples[state]) < 3:
                    examples[state].append([table.column("path")[row].as_py(), reason])
    summary.examples = dict(examples)
    summary.shards = len(shards)
    return summary


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def run_detection(
    input_path: str | os.PathLike, out: str | os.PathLike, settings: DetectSettings | None = None,
    *, workers: int = 1, progress: bool = True, client: Any = None,
) -> DetectionSummary:
    """Detect faces in every image of INPUT; write shards, ``plan.json`` and ``summary.json``.

    Args:
        input_path: a folder, a file list or a video (see the module docstring).
        out: output folder (created).
        settings: stage settings.
        workers: processes; 1 runs in this process, more start a Dask ``LocalCluster``
            (one single-threaded process each) for the run.
        progress: show a tqdm progress bar on stderr.
        client: a ``distributed.Client`` to use instead (``workers`` is then ignored); its
            workers keep their landmarkers between runs.

    Returns:
        the summary of all shards (also written to ``OUT/summary.json``).
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    started = time.perf_counter()
    settings = settings or DetectSettings()
    out = Path(out)
    plan = plan_detection(input_path, out, settings)
    context = _prepare(plan, out, settings)
    _remove_stale_files(out, plan.num_shards)
    pending = [shard for shard in range(plan.num_shards) if not _shard_is_done(context, shard)]
    if pending:
        _run_shards(context, pending, workers, progress, client)
    summary = summarize_detections(out, range(plan.num_shards))
    if summary.images != plan.num_images:
        raise RuntimeError(f"{out}: {summary.images} images in the shards, "
                           f"{plan.num_images} listed")
    summary.shards_run = len(pending)
    summary.shards_skipped = plan.num_shards - len(pending)
    summary.skipped_files = plan.skipped_files
    summary.seconds = round(time.perf_counter() - started, 3)
    atomic_write_text(out / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def detect_shard(
    out: str | os.PathLike, shard: int, settings: DetectSettings | None = None,
    input_path: str | os.PathLike | None = None, *, workers: int = 1, progress: bool = False,
) -> DetectionSummary:
    """Process one shard (one Snakemake job per shard); in this process, or on a Dask
    ``LocalCluster`` of ``workers`` processes when ``workers > 1``.

    Uses the plan in OUT (:func:`plan_detection`); when there is none, or it was made with
    another shard size, lists ``input_path`` and writes it first. A finished shard with the
    same items and settings is kept.

    Returns:
        the summary of this shard alone.
    """
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    started = time.perf_counter()
    settings = settings or DetectSettings()
    out = Path(out)
    try:
        plan = load_plan(out)
    except FileNotFoundError:
        if input_path is None:
            raise
        plan = plan_detection(input_path, out, settings)
    if input_path is not None and (
            plan.input != str(Path(input_path).expanduser().absolute())
            or plan.shard_size != settings.shard_size):
        plan = plan_detection(input_path, out, settings)
    plan.shard_range(shard)  # range check
    context = _prepare(plan, out, settings)
    done = _shard_is_done(context, shard)
    if not done:
        _run_shards(context, [shard], workers, progress)
    summary = summarize_detections(out, [shard])
    summary.shards_run, summary.shards_skipped = (0, 1) if done else (1, 0)
    summary.seconds = round(time.perf_counter() - started, 3)
    return summary


def _remove_stale_files(out: Path, num_shards: int) -> None:
    """Temp files of killed runs, and shards beyond the plan (the input shrank).

    Only a whole-input run does this: one-shard jobs may run side by side in OUT.
    """
    for path in out.glob(".tmp-shard-*"):
        path.unlink(missing_ok=True)
    for path in out.glob("shard-*.parquet"):
        number = path.stem.removeprefix("shard-")
        if number.isdigit() and int(number) >= num_shards:
            path.unlink(missing_ok=True)


def read_detections(out: str | os.PathLike, columns: Sequence[str] | None = None) -> pa.Table:
    """All shards of OUT in order, as one table (metadata of shard 0).

    Raises:
        FileNotFoundError: no plan, or a shard is missing.
        ValueError: a shard is not a detection table of this schema version.
    """
    out = Path(out)
    plan = load_plan(out)
    tables = []
    for shard in range(plan.num_shards):
        path = shard_path(out, shard)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard missing; rerun `emoca detect`")
        check_table_metadata(pq.read_schema(path), "detections", str(path))
        tables.append(pq.read_table(path, columns=list(columns) if columns else None))
    return pa.concat_tables(tables)


def write_sample_photos(out_dir: str | os.PathLike) -> list[Path]:
    """Real photos that scikit-image ships, for the MediaPipe path of the default DAG.

    Writes ``astronaut.jpg`` (one face), ``camera.png`` (one face, grayscale) and
    ``coffee.jpg`` (no face) to ``out_dir``, each atomically.
    """
    from PIL import Image
    from skimage import data

    out = Path(out_dir)
    photos = {"astronaut.jpg": data.astronaut(), "camera.png": data.camera(),
              "coffee.jpg": data.coffee()}
    written = []
    for name, pixels in photos.items():
        target = out / name
        with atomic_output(target) as tmp:
            options = {"quality": 95} if name.endswith(".jpg") else {}
            Image.fromarray(pixels).save(tmp, format="JPEG" if name.endswith(".jpg") else "PNG",
                                         **options)
        written.append(target)
    return written
