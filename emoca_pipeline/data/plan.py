"""The input plan of the detection stage: what INPUT holds, in which order, in which shard.

INPUT is a folder tree of images, a file list (``.txt``/``.lst`` with one path per line,
``.csv`` or ``.parquet`` with a ``path`` or AffectNet ``subDirectory_filePath`` column), or
a video (frames read with OpenCV). Items are sorted by their key (the path relative to the
input root, in code-point order; frame order for a video), so the listing does not depend
on the file system's order. In a folder, hidden files and files without an image extension
are skipped (and counted).

Shard ``k`` holds items ``[k*S, (k+1)*S)`` of the sorted listing. The plan is stored in
``OUT/plan.json`` (counts, settings) and ``OUT/listing.parquet`` (the keys); one-job-per-shard
runs (``emoca detect shard``, the Snakemake rules) read it instead of listing the input again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from emoca_pipeline.data.affectnet import csv_header, read_csv_columns
from emoca_pipeline.data.schema import table_metadata
from emoca_pipeline.io.atomic import atomic_output, atomic_write_text

__all__ = [
    "IMAGE_EXTENSIONS",
    "LISTING_FILE",
    "PLAN_FILE",
    "VIDEO_EXTENSIONS",
    "DetectionPlan",
    "InputItem",
    "list_inputs",
    "load_plan",
    "shard_path",
    "write_plan",
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

PLAN_FILE = "plan.json"
LISTING_FILE = "listing.parquet"
_FRAME_SEPARATOR = "#frame="


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
                                "run `emoca detect plan INPUT OUT` first")
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
