"""What ``emoca reconstruct`` reads, streamed item by item in a fixed order.

INPUT kinds (:func:`open_input` tells them apart):

- ``manifest``: a folder written by ``emoca manifest`` (hive folders ``dataset=NAME/split=S/``;
  files with metadata ``emoca.table=manifest``); ``dataset`` and ``split`` come from the folder
  names, ``root`` + ``path`` name the image;
- ``detections``: a folder of ``emoca detect`` shards (``shard-00000.parquet`` ..., metadata
  ``emoca.table=detections``); images are under the ``emoca.root`` of the metadata; rows
  whose ``status`` is not ``ok`` pass through as status rows;
- ``table``: one Parquet file with ``path`` and ``landmarks`` and/or ``bbox`` (the synthetic
  dataset's ``synthetic.parquet``); relative paths are relative to the file's folder (or a
  ``root`` column);
- ``folder``: a folder tree of images (hidden files and other extensions skipped), sorted by
  relative path, directory by directory (one directory's listing is held at a time);
- ``video``: a video file; frame ``k`` is item ``k`` (OpenCV).

An item is one row of a table (one face) or one image / frame of a folder or video (the
landmarker finds its faces later). Item ``k`` (the position in the stream, after the
optional split filter) belongs to shard ``k mod N``: deterministic, independent of worker
counts, and it needs no count of the input. Nothing holds the whole input: tables are read
in record batches of the needed columns.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from emoca_pipeline.data.plan import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

__all__ = [
    "LABEL_COLUMNS",
    "InputItem",
    "InputSpec",
    "iter_items",
    "open_input",
]

#: Label columns passed through to the output when the input has them, with their type there.
LABEL_COLUMNS: dict[str, pa.DataType] = {
    "dataset": pa.string(), "split": pa.string(), "identity": pa.string(),
    "expression": pa.int16(), "valence": pa.float32(), "arousal": pa.float32(),
}
FRAME_SEPARATOR = "#frame="
InputKind = Literal["manifest", "detections", "table", "folder", "video"]
_BATCH_ROWS = 1024


class InputItem(NamedTuple):
    """One item of the input.

    index: position ``k`` in the stream. path: the output's ``path`` (the input's key).
    source: the file to decode (the video for frames). frame: frame index or None.
    image_id: content hash when the input gives it (else computed on decode). face_index:
    from a table, else None (the landmarker numbers faces). status: ``ok`` or the data
    stage's status line (then nothing is decoded). landmarks: ``(68, 2)`` float32 or None.
    bbox: ``(4,)`` float32 or None. labels: pass-through label values.
    """

    index: int
    path: str
    source: str
    frame: int | None
    image_id: str | None
    face_index: int | None
    status: str
    landmarks: np.ndarray | None
    bbox: np.ndarray | None
    labels: dict[str, Any]


@dataclass(frozen=True)
class InputSpec:
    """A classified INPUT: ``kind``, the resolved ``path``, the folder relative image paths
    start from (``root``), the Parquet ``files`` in read order, the ``labels`` it passes
    through and the ``split`` filter."""

    path: Path
    kind: InputKind
    root: Path
    files: tuple[Path, ...] = ()
    labels: tuple[str, ...] = ()
    split: str | None = None
    hive: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def detects_faces(self) -> bool:
        """Folders and videos need the landmarker; tables bring landmarks or boxes."""
        return self.kind in ("folder", "video")

    def fingerprint(self) -> str:
        """What identifies this input for resumption: kind, path, split and, for files, their
        sizes and modification times (a folder's listing is not hashed: that needs a pass)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{self.kind}\n{self.path}\n{self.split}\n".encode())
        for path in self.files or ((self.path,) if self.path.is_file() else ()):
            stat = path.stat()
            digest.update(f"{path}\n{stat.st_size}\n{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def _table_of(path: Path) -> str | None:
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError):
        return None
    value = meta.get(b"emoca.table")
    return value.decode() if value else None


def _hive_values(path: Path, base: Path) -> dict[str, str]:
    values = {}
    for part in path.relative_to(base).parts[:-1]:
        key, sep, value = part.partition("=")
        if sep:
            values[key] = value
    return values


def open_input(path: str | os.PathLike, split: str | None = None) -> InputSpec:
    """Classify INPUT (see the module docstring).

    Raises:
        FileNotFoundError: INPUT does not exist.
        ValueError: INPUT is none of the kinds, or a table lacks the needed columns.
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such input (a manifest or detection folder, a "
                                "Parquet table, an image folder or a video)")
    suffix = path.suffix.lower()
    if path.is_file() and suffix in VIDEO_EXTENSIONS:
        return InputSpec(path, "video", path.parent, split=split)
    if path.is_file() and suffix == ".parquet":
        return _table_spec(path, "table", (path,), path.parent, split)
    if path.is_file():
        videos = ", ".join(sorted(VIDEO_EXTENSIONS))
        raise ValueError(f"{path}: not a Parquet table or a video ({videos}); put single "
                         "images in a folder")
    shards = sorted(path.glob("shard-*.parquet"))
    if shards and _table_of(shards[0]) == "detections":
        meta = pq.read_schema(shards[0]).metadata or {}
        root = Path(meta.get(b"emoca.root", str(path).encode()).decode())
        return _table_spec(path, "detections", tuple(shards), root, split)
    parquet = sorted(p for p in path.rglob("*.parquet")
                     if not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))
    if parquet and _table_of(parquet[0]) == "manifest":
        return _table_spec(path, "manifest", tuple(parquet), path, split)
    return InputSpec(path, "folder", path, split=split)


def _table_spec(path: Path, kind: InputKind, files: tuple[Path, ...], root: Path,
                split: str | None) -> InputSpec:
    names = set(pq.read_schema(files[0]).names)
    base = path.parent if "=" in path.name else path  # INPUT may be OUT/dataset=NAME itself
    hive = {str(f): _hive_values(f, base) for f in files} if kind == "manifest" else {}
    names |= {key for values in hive.values() for key in values}
    if "path" not in names:
        raise ValueError(f"{files[0]}: no 'path' column")
    if "landmarks" not in names and "bbox" not in names:
        raise ValueError(f"{files[0]}: no 'landmarks' or 'bbox' column to crop the faces from")
    if split is not None and "split" not in names:
        raise ValueError(f"{path}: --split {split} given, but the input has no 'split' column")
    labels = tuple(name for name in LABEL_COLUMNS if name in names)
    return InputSpec(path, kind, root, files, labels, split, hive)


def _points(column: pa.Array, rows: int, width: int) -> np.ndarray:
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    if len(values) != rows * width:  # null lists (old writers): NaN rows
        out = np.full((rows, width), np.nan, np.float32)
        valid = np.asarray(column.is_valid())
        out[valid] = values.reshape(-1, width)
        return out
    return values.reshape(rows, width)


def _table_items(spec: InputSpec, keep: Callable[[int], bool]) -> Iterator[
        tuple[InputItem, np.ndarray | None]]:
    index = -1
    wanted = ("path", "root", "frame", "image_id", "face_index", "status", "reason",
              "landmarks", "bbox", *LABEL_COLUMNS)
    for file in spec.files:
        handle = pq.ParquetFile(file)
        columns = [name for name in wanted if name in handle.schema_arrow.names]
        hive = spec.hive.get(str(file), {})
        for batch in handle.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            rows = batch.num_rows
            data = {name: batch.column(name) for name in columns}
            py = {name: data[name].to_pylist() for name in columns
                  if name not in ("landmarks", "bbox")}
            for key, value in hive.items():
                py.setdefault(key, [value] * rows)
            if spec.split is not None:
                chosen = [s == spec.split for s in py["split"]]
            else:
                chosen = [True] * rows
            landmarks = _points(data["landmarks"], rows, 136).reshape(rows, 68, 2) \
                if "landmarks" in data else None
            bbox = _points(data["bbox"], rows, 4) if "bbox" in data else None
            for row in range(rows):
                if not chosen[row]:
                    continue
                index += 1
                if not keep(index):
                    continue
                yield _table_item(spec, index, row, py, landmarks, bbox), None


def _table_item(spec: InputSpec, index: int, row: int, py: dict[str, list],
                landmarks: np.ndarray | None, bbox: np.ndarray | None) -> InputItem:
    key = str(py["path"][row])
    root = Path(py["root"][row]) if py.get("root") and py["root"][row] else spec.root
    frame = py["frame"][row] if "frame" in py else None
    source = key.split(FRAME_SEPARATOR)[0] if frame is not None else key
    source = str(source if Path(source).is_absolute() else root / source)
    status = str(py["status"][row]) if "status" in py and py["status"][row] else "ok"
    if status != "ok" and py.get("reason") and py["reason"][row]:
        status = f"{status}: {py['reason'][row]}"
    labels = {}
    for name in spec.labels:
        value = py[name][row]
        labels[name] = None if value is None else (str(value) if name == "identity" else value)
    face = py["face_index"][row] if "face_index" in py else 0
    return InputItem(index, key, source, frame, py.get("image_id", [None] * (row + 1))[row],
                     face, status, None if landmarks is None else landmarks[row],
                     None if bbox is None else bbox[row], labels)


def _folder_items(spec: InputSpec, keep: Callable[[int], bool]) -> Iterator[
        tuple[InputItem, np.ndarray | None]]:
    index = -1
    for folder, dirnames, filenames in os.walk(spec.path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        relative = Path(folder).relative_to(spec.path)
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            index += 1
            if keep(index):
                key = (relative / name).as_posix()
                yield InputItem(index, key, str(Path(folder, name)), None, None, None, "ok",
                                None, None, {}), None


def _video_items(spec: InputSpec, keep: Callable[[int], bool]) -> Iterator[
        tuple[InputItem, np.ndarray | None]]:
    """Frames in order; frames of other shards/workers are grabbed, not converted."""
    import cv2

    capture = cv2.VideoCapture(str(spec.path))
    if not capture.isOpened():
        raise ValueError(f"{spec.path}: OpenCV cannot open this video")
    try:
        index = -1
        while True:
            index += 1
            if not keep(index):
                if not capture.grab():
                    return
                continue
            ok, bgr = capture.read()
            if not ok or bgr is None:
                return
            item = InputItem(index, f"{spec.path.name}{FRAME_SEPARATOR}{index}", str(spec.path),
                             index, None, None, "ok", None, None, {})
            yield item, np.ascontiguousarray(bgr[..., ::-1])
    finally:
        capture.release()


def iter_items(spec: InputSpec, keep: Callable[[int], bool] | None = None) -> Iterator[
        tuple[InputItem, np.ndarray | None]]:
    """The items ``k`` of INPUT with ``keep(k)``, in order, each with the decoded RGB frame
    for a video (``(H, W, 3)`` uint8) or None (files are decoded by the caller)."""
    keep = keep or (lambda _: True)
    if spec.kind == "video":
        return _video_items(spec, keep)
    if spec.kind == "folder":
        return _folder_items(spec, keep)
    return _table_items(spec, keep)
