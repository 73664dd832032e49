"""The detection stage: images in, Parquet shards of faces (landmarks + crop transform) out.

``emoca detect run INPUT OUT`` (or ``plan``, then ``shard`` K for each shard, then ``summary``,
as the Snakemake rules run it):

1. **Plan.** INPUT is listed and split into shards (:mod:`emoca_pipeline.data.plan`):
   ``OUT/plan.json`` and ``OUT/listing.parquet``.
2. **Shards.** Each chunk of images goes through :func:`~emoca_pipeline.data.chunk.process_chunk`
   (read once, hash, decode, landmarks, crop transform). An image without a face, or one
   that cannot be read, is one row whose ``status`` says why: rows out == images in. A shard
   is written atomically to ``OUT/shard-00000.parquet`` ... with
   :data:`~emoca_pipeline.data.schema.DETECTION_SCHEMA`.
3. **Resume.** A rerun skips every shard whose file exists and whose metadata records the
   same items and settings (a killed run loses only the shards it had not finished;
   changing the landmarker, a limit or the input list redoes the affected shards). Changed
   file contents under unchanged names are not noticed: delete the shard to redo it.
4. **Parallelism.** With ``workers > 1`` a Dask ``LocalCluster`` (one single-threaded
   process per worker) maps ``process_chunk`` over chunks of up to ``chunk_size`` images
   (never one task per image); each worker builds its landmarker once and keeps it. A
   cluster takes seconds to start, so inputs with fewer than :data:`MIN_IMAGES_PER_WORKER`
   images per worker (or a single chunk) run in-process, as ``workers == 1`` does. Chunks
   never straddle shards; the client assembles and writes each shard when its chunks are
   in, so shard contents do not depend on the number of workers.
5. **Summary.** Images, faces, faces dropped by ``max_faces``, images without a face and
   errors by status and reason are printed and written to ``OUT/summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emoca_pipeline.data.chunk import (
    LANDMARKERS,
    ChunkResult,
    LandmarkerSpec,
    cached_landmarker,
    process_chunk,
)
from emoca_pipeline.data.crop import CropSettings
from emoca_pipeline.data.plan import DetectionPlan, list_inputs, load_plan, shard_path, write_plan
from emoca_pipeline.data.schema import check_table_metadata, metadata_of, table_metadata
from emoca_pipeline.io.atomic import atomic_output, atomic_write_text
from emoca_pipeline.io.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS

__all__ = [
    "MIN_IMAGES_PER_WORKER",
    "SUMMARY_FILE",
    "DetectSettings",
    "DetectionSummary",
    "detect_shard",
    "plan_detection",
    "read_detections",
    "run_detection",
    "summarize_detections",
]

SUMMARY_FILE = "summary.json"

#: Fewer images than this per worker run in-process. A ``LocalCluster`` takes 4-6 s to start
#: (processes, imports, MediaPipe graphs) and the stage runs ~14 ms per image in-process
#: (benchmarks/bench_detect.py, 2 cores), so a second worker wins back its start only from
#: ~700 images; 400 per worker lets a 1000-image shard with 2 workers use the cluster.
MIN_IMAGES_PER_WORKER = 400

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


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
        max_bytes: files larger than this are rows with status ``too_large`` (not read).
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
    max_bytes: int = DEFAULT_MAX_BYTES
    shard_size: int = 1000
    chunk_size: int = 1000
    image_root: str | None = None
    crop: CropSettings = field(default_factory=CropSettings)

    def __post_init__(self) -> None:
        if self.landmarker not in LANDMARKERS:
            raise ValueError(f"--landmarker must be one of {', '.join(LANDMARKERS)}, "
                             f"got {self.landmarker!r}")
        for name in ("max_faces", "max_pixels", "max_bytes", "shard_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                                 f"got {getattr(self, name)}")
        labels = (self.labels,) if isinstance(self.labels, str | os.PathLike) else self.labels
        object.__setattr__(self, "labels", tuple(str(label) for label in labels))
        if self.labels and self.landmarker != "gt":
            raise ValueError(f"--labels {self.labels[0]} is only read with --landmarker gt")


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
    landmarker = cached_landmarker(spec)
    identity: dict[str, Any] = {
        "detector": landmarker.name, "detector_version": str(landmarker.version),
        "scheme": landmarker.scheme, "max_faces": settings.max_faces,
        "max_pixels": settings.max_pixels, "max_bytes": settings.max_bytes,
        "crop": asdict(settings.crop),
    }
    for label in spec.labels:
        stat = Path(label).stat()
        identity.setdefault("labels", []).append([label, stat.st_size, stat.st_mtime_ns])
    fingerprint = hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(),
                                  digest_size=16).hexdigest()
    return _Context(plan, out, spec, settings, landmarker.name, str(landmarker.version),
                    landmarker.scheme, fingerprint)


def _shard_metadata(context: _Context, shard: int, faces_dropped: int) -> dict[bytes, bytes]:
    plan = context.plan
    crop = context.settings.crop
    return table_metadata(
        "detections", landmark_scheme=context.scheme, detector=context.detector,
        detector_version=context.detector_version, shard=shard, num_shards=plan.num_shards,
        shard_size=plan.shard_size, items_hash=plan.items_hash(shard),
        settings_hash=context.fingerprint, input=plan.input, input_kind=plan.kind,
        root=plan.root, max_faces=context.settings.max_faces,
        max_pixels=context.settings.max_pixels, max_bytes=context.settings.max_bytes,
        crop_out_size=crop.out_size, crop_scale=crop.scale, faces_dropped=faces_dropped,
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


def _write_shard(context: _Context, shard: int, table: pa.Table, faces_dropped: int) -> None:
    expected = len(context.plan.shard_range(shard))
    images = _count_images(table.column("face_index"))
    if images != expected:  # the invariant rows out == images in; a bug if it fails
        raise RuntimeError(f"shard {shard}: {images} images in the table, {expected} listed")
    table = table.replace_schema_metadata(_shard_metadata(context, shard, faces_dropped))
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
    pending = sum(len(plan.shard_range(shard)) for shard in shards)
    if client is None and workers > 1 and pending < workers * MIN_IMAGES_PER_WORKER:
        log.info("%d images: fewer than %d per worker, running in-process", pending,
                 MIN_IMAGES_PER_WORKER)
        workers = 1
    chunks = _chunks(plan, shards, context.settings.chunk_size, workers)
    if client is None and len(chunks) < 2:
        workers = 1
    expected = Counter(chunk.shard for chunk in chunks)
    received: dict[int, dict[int, ChunkResult]] = defaultdict(dict)
    total = sum(len(chunk.indices) for chunk in chunks)

    from tqdm import tqdm

    with tqdm(total=total, unit="img", desc="detect", disable=not progress, mininterval=0.5,
              file=sys.stderr) as bar:

        def on_result(chunk: _Chunk, result: ChunkResult) -> None:
            parts = received[chunk.shard]
            parts[chunk.position] = result
            bar.update(len(chunk.indices))
            if len(parts) == expected[chunk.shard]:
                ordered = [parts[position] for position in range(len(parts))]
                _write_shard(context, chunk.shard,
                             pa.concat_tables([part.table for part in ordered]),
                             sum(part.faces_dropped for part in ordered))
                del received[chunk.shard]

        settings = context.settings
        args = (context.spec, settings.max_pixels, settings.crop, settings.max_bytes)
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
    workers: int, on_result: Callable[[_Chunk, ChunkResult], None],
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
        faces_dropped: faces found beyond ``max_faces`` (largest kept), not in the shards.
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
    faces_dropped: int = 0
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
        if self.faces_dropped:
            lines.append(f"  faces dropped: {self.faces_dropped} beyond --max-faces "
                         "(the largest faces of each image are kept)")
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
        summary.faces_dropped += int(meta.get("faces_dropped", 0))
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
            (one single-threaded process each) for the run, unless the input is too small
            to win back its start (see :data:`MIN_IMAGES_PER_WORKER`).
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
