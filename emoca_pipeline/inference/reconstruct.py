"""``emoca reconstruct``: apply an EMOCA model.pt to a manifest, detection shards, a table, an
image folder or a video, shard by shard, resumably.

Flow: :func:`~emoca_pipeline.inference.inputs.iter_items` streams the items of shard I of N
(item ``k`` with ``k mod N == I``) -> DataLoader workers decode, find faces (MediaPipe, for
folders and videos only), crop as DESIGN §4 (from the 68 landmarks when given, else the
detector box) -> the main process batches the crops, runs the encoders under
``torch.inference_mode`` (``torch.autocast`` for bf16/fp16, encoders in channels_last),
projects FLAME's 68 and 105 landmarks back to the original image through the inverse crop
transform -> Parquet (:mod:`emoca_pipeline.inference.schema`).

Resumption: the shard's items are cut into parts of ``part_size`` items (by their position
in the shard, so independent of batch size and worker count). Each finished part is written
atomically to ``OUT/.shard-I-of-N.parts/part-00000.parquet``; a rerun keeps the parts whose
metadata has this run's fingerprint (checkpoint sha256, input, settings) and starts at the
first missing one. Batches never straddle a part, so a resumed part is computed from the
same batches as in an uninterrupted run and has the same rows. The finished shard is
streamed part by part into ``OUT/shard-{I:05d}-of-{N:05d}.parquet`` (atomic rename), then the
parts are removed; a rerun with the same fingerprint skips it.

Faces fail alone: a data-stage status passes through as a row with NaN codes; a face whose
codes or landmarks are not finite becomes ``forward_error: non-finite ...``; an exception in
a batch's forward pass is retried face by face.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from emoca_pipeline.inference.inputs import InputSpec, open_input
from emoca_pipeline.inference.loader import CropStream, Face, Sample, identity, worker_init
from emoca_pipeline.inference.schema import (
    CODE_NAMES,
    MEDIAPIPE_POINTS,
    RECONSTRUCTION_TABLE,
    SCHEMA_VERSION,
    reconstruction_schema,
)
from emoca_pipeline.io.atomic import atomic_output

__all__ = [
    "SAVE_CHOICES",
    "LoadedModel",
    "ReconstructResult",
    "ReconstructSettings",
    "cpu_default_precision",
    "load_model",
    "read_reconstructions",
    "reconstruct",
    "shard_file",
]

log = logging.getLogger(__name__)

SAVE_CHOICES = ("obj", "renders", "overlays")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_default_precision() -> str:
    """``auto`` on a CPU: bf16 where oneDNN has native bf16 (AVX512-BF16/AMX), else fp32.

    From benchmarks/bench_infer.py on a 2-core AVX512-BF16 machine: E_flame + E_expression
    at 224 px take 0.26 s/image in bf16 (channels_last) against 0.41 s in fp32, and the
    codes differ from fp32 by at most 0.025 (0.4% of their range); without native bf16,
    autocast is slower than fp32.
    """
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


@dataclass(frozen=True)
class ReconstructSettings:
    """Settings of :func:`reconstruct`.

    shard, num_shards: this run writes shard ``shard`` of ``num_shards``.
    device: "auto" (cuda when available, else cpu), "cpu", "cuda" or "cuda:K".
    batch_size: faces per forward pass. precision: "auto" (bf16 on CUDA, and on CPUs with
    native bf16, else fp32; :func:`cpu_default_precision`), "fp32", "bf16" or "fp16"
    (torch.autocast of the encoders; FLAME and the renderer stay fp32). save: any of
    :data:`SAVE_CHOICES`.
    detail: run E_detail (and D_detail for saved outputs). workers: DataLoader workers (0:
    in-process). part_size: items per resumable part file. landmarker, max_faces: the face
    finder for folders and videos. split: keep only table rows of this split. max_pixels:
    larger images become ``too_large`` rows. channels_last: encoders in channels_last.
    """

    shard: int = 0
    num_shards: int = 1
    device: str = "auto"
    batch_size: int = 32
    precision: str = "auto"
    save: tuple[str, ...] = ()
    detail: bool = True
    workers: int = 2
    part_size: int = 256
    landmarker: str = "mediapipe"
    max_faces: int = 1
    split: str | None = None
    max_pixels: int = 64_000_000
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.num_shards < 1 or not 0 <= self.shard < self.num_shards:
            raise ValueError(f"--shard {self.shard}/{self.num_shards}: need 0 <= I < N")
        for name in ("batch_size", "part_size", "max_faces", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers: must be >= 0, got {self.workers}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, "
                             f"got {self.precision!r}")
        unknown = [s for s in self.save if s not in SAVE_CHOICES]
        if unknown:
            raise ValueError(f"--save: unknown item {unknown[0]!r}; choose from "
                             f"{', '.join(SAVE_CHOICES)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(f"device: expected auto, cpu, cuda or cuda:K, got {self.device!r}")


class ReconstructResult(NamedTuple):
    """path: the shard file. rows, faces_ok: its row count and ``ok`` rows. skipped: it was
    already finished. seconds: wall time of this call."""

    path: Path
    rows: int
    faces_ok: int
    skipped: bool
    seconds: float


def shard_file(out: str | os.PathLike, shard: int, num_shards: int) -> Path:
    """``OUT/shard-{I:05d}-of-{N:05d}.parquet``."""
    return Path(out) / f"shard-{shard:05d}-of-{num_shards:05d}.parquet"


def _parts_dir(out: Path, shard: int, num_shards: int) -> Path:
    return out / f".shard-{shard:05d}-of-{num_shards:05d}.parts"


# ------------------------------------------------------------------------------ the model


class LoadedModel(NamedTuple):
    model: Any  # EmocaModel
    model_id: str
    sha256: str


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(path: str | os.PathLike) -> LoadedModel:
    """An EMOCA model.pt (trained or imported), in eval mode, with its id and file sha256.

    The id is the training ``name-stage``, else the imported source's folder name, else the
    model file's folder name. A deca-stage model takes its expression from E_flame.
    """
    from emoca_pipeline.models.emoca import load_emoca_checkpoint

    path = Path(path)
    model = load_emoca_checkpoint(path)
    extra = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("extra", {})
    if extra.get("stage") == "deca":
        model.set_stage("deca")
    if extra.get("name") and extra.get("stage"):
        model_id = f"{extra['name']}-{extra['stage']}"
    elif extra.get("source"):
        model_id = Path(str(extra["source"])).name
    else:
        model_id = path.resolve().parent.name
    return LoadedModel(model.eval(), model_id, _sha256(path))


# ------------------------------------------------------------------------------ forward


class _Forward(NamedTuple):
    codes: dict[str, np.ndarray]  # name -> (n, width) float32
    landmarks: np.ndarray  # (n, 68, 2) crop pixels
    mediapipe: np.ndarray  # (n, 105, 2) crop pixels (NaN without the embedding)
    errors: list[str | None]


class _Runner:
    """The model on its device: uint8 crops -> codes and crop-pixel landmarks."""

    def __init__(self, model: Any, settings: ReconstructSettings) -> None:
        device = settings.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        self.device = torch.device(device)
        precision = settings.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else cpu_default_precision()
        self.precision = precision
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16,
                      "fp16": torch.float16}[precision]
        self.detail = settings.detail
        self.model = model.to(self.device).eval()
        self.memory_format = torch.channels_last if settings.channels_last \
            else torch.contiguous_format
        for encoder in (model.E_flame, model.E_expression, model.E_detail):
            if encoder is not None:
                encoder.to(memory_format=self.memory_format)
        self.size = model.settings.image_size
        self.widths = {**model.settings.code_widths, "detail": model.settings.n_detail}

    def images(self, crops: np.ndarray) -> torch.Tensor:
        """(n, S, S, 3) uint8 -> (n, 3, S, S) float in [0, 1] on the device."""
        tensor = torch.from_numpy(crops).to(self.device, non_blocking=True)
        tensor = tensor.permute(0, 3, 1, 2).float().div_(255.0)
        return tensor.contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> Any:
        with torch.autocast(self.device.type, dtype=self.dtype,
                            enabled=self.precision != "fp32"):
            codes = self.model.encode(images, with_detail=self.detail)
        return type(codes)(*(None if c is None else c.float() for c in codes))

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray) -> _Forward:
        from emoca_pipeline.render import ndc_to_pixels, project_landmarks

        n = len(crops)
        codes = self.encode(self.images(crops))
        # FLAME refuses non-finite codes: decode the finite faces only (the others become
        # status rows in run()).
        finite = torch.stack([torch.isfinite(c.reshape(n, -1)).all(dim=1)
                              for c in codes[:6]]).all(dim=0)
        lmk = torch.full((n, 68, 2), float("nan"), device=self.device)
        mp = torch.full((n, MEDIAPIPE_POINTS, 2), float("nan"), device=self.device)
        if finite.any():
            cam = codes.cam[finite]
            flame = self.model.flame(codes.shape[finite], codes.exp[finite], codes.pose[finite])
            lmk[finite] = ndc_to_pixels(project_landmarks(flame.landmarks2d, cam), self.size)
            if flame.mediapipe_landmarks is not None:
                mp[finite] = ndc_to_pixels(project_landmarks(flame.mediapipe_landmarks, cam),
                                           self.size)
        arrays = {name: getattr(codes, name).reshape(n, -1).cpu().numpy()
                  for name in CODE_NAMES if name != "detail"}
        arrays["detail"] = codes.detail.cpu().numpy() if codes.detail is not None \
            else np.full((n, self.widths["detail"]), np.nan, np.float32)
        return _Forward(arrays, lmk.cpu().numpy(), mp.cpu().numpy(), [None] * n)

    def run(self, crops: np.ndarray) -> _Forward:
        """:meth:`__call__`, face by face when the batch raises; per-face finiteness."""
        try:
            out = self(crops)
        except RuntimeError as error:
            if len(crops) == 1:
                return self._failed(1, f"forward_error: {error}".splitlines()[0][:200])
            log.warning("forward pass of %d faces failed (%s); retrying face by face",
                        len(crops), str(error).splitlines()[0])
            parts = [self.run(crops[i:i + 1]) for i in range(len(crops))]
            codes = {k: np.concatenate([p.codes[k] for p in parts]) for k in parts[0].codes}
            return _Forward(codes,
                            np.concatenate([p.landmarks for p in parts]),
                            np.concatenate([p.mediapipe for p in parts]),
                            [e for p in parts for e in p.errors])
        checks = [(name, out.codes[name]) for name in CODE_NAMES
                  if not (name == "detail" and not self.detail)]
        checks.append(("landmarks", out.landmarks.reshape(len(crops), -1)))
        errors = list(out.errors)
        for i in range(len(crops)):
            bad = [name for name, values in checks if not np.isfinite(values[i]).all()]
            if bad:
                errors[i] = f"forward_error: non-finite {', '.join(bad)}"
        return out._replace(errors=errors)

    def _failed(self, n: int, error: str) -> _Forward:
        codes = {name: np.full((n, w), np.nan, np.float32) for name, w in self.widths.items()}
        return _Forward(codes, np.full((n, 68, 2), np.nan, np.float32),
                        np.full((n, MEDIAPIPE_POINTS, 2), np.nan, np.float32), [error] * n)


# ------------------------------------------------------------------------------ rows


def _to_original(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """(P, 2) crop pixels -> original pixels through the inverse of ``transform``."""
    inverse = np.linalg.inv(transform)
    return points.astype(np.float64) @ inverse[:2, :2].T + inverse[:2, 2]


class _Rows:
    """Column buffers of one part."""

    def __init__(self, widths: dict[str, int], labels: Sequence[str]) -> None:
        self.widths, self.labels = widths, tuple(labels)
        self.clear()

    def clear(self) -> None:
        self.columns: dict[str, list] = {name: [] for name in (
            "image_id", "path", "frame", "width", "height", "face_index", "status",
            *CODE_NAMES, "crop_transform", "landmarks", "mediapipe_landmarks", *self.labels)}

    def __len__(self) -> int:
        return len(self.columns["path"])

    def add(self, sample: Sample, face: Face, status: str, codes: dict[str, np.ndarray] | None,
            landmarks: np.ndarray | None, mediapipe: np.ndarray | None) -> None:
        c, item = self.columns, sample.item
        c["image_id"].append(sample.image_id)
        c["path"].append(item.path)
        c["frame"].append(item.frame)
        c["width"].append(sample.width)
        c["height"].append(sample.height)
        c["face_index"].append(face.face_index)
        c["status"].append(status)
        for name in CODE_NAMES:
            c[name].append(codes[name] if codes is not None
                           else np.full(self.widths[name], np.nan, np.float32))
        c["crop_transform"].append(face.transform.reshape(9))
        for name, points, count in (("landmarks", landmarks, 68),
                                    ("mediapipe_landmarks", mediapipe, MEDIAPIPE_POINTS)):
            c[name].append(np.full(2 * count, np.nan, np.float32) if points is None
                           else points.reshape(-1).astype(np.float32))
        for name in self.labels:
            c[name].append(item.labels.get(name))

    def table(self, schema: pa.Schema) -> pa.Table:
        arrays = []
        for field in schema:
            values = self.columns[field.name]
            if pa.types.is_fixed_size_list(field.type):
                width = field.type.list_size
                dtype = np.float64 if field.type.value_type == pa.float64() else np.float32
                block = np.asarray(values, dtype=dtype).reshape(-1)
                arrays.append(pa.FixedSizeListArray.from_arrays(
                    pa.array(block, type=field.type.value_type), width))
            else:
                arrays.append(pa.array(values, type=field.type))
        return pa.Table.from_arrays(arrays, schema=schema)


# ------------------------------------------------------------------------------ the run


def _fingerprint(loaded: LoadedModel, spec: InputSpec, settings: ReconstructSettings,
                 precision: str) -> str:
    identity = {
        "checkpoint_sha256": loaded.sha256, "input": spec.fingerprint(),
        "num_shards": settings.num_shards, "shard": settings.shard,
        "part_size": settings.part_size, "detail": settings.detail, "precision": precision,
        "landmarker": settings.landmarker if spec.detects_faces else None,
        "max_faces": settings.max_faces if spec.detects_faces else None,
        "max_pixels": settings.max_pixels, "schema_version": SCHEMA_VERSION,
    }
    return hashlib.blake2b(json.dumps(identity, sort_keys=True).encode(),
                           digest_size=16).hexdigest()


def _meta_of(path: Path) -> dict[str, str]:
    try:
        raw = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError):
        return {}
    return {k.decode(): v.decode() for k, v in raw.items() if not k.startswith(b"ARROW")}


def _resume_point(parts: Path, fingerprint: str) -> int:
    """The number of leading finished parts in ``parts`` (a stale or broken folder is
    removed; parts after a gap are dropped)."""
    if not parts.is_dir():
        return 0
    files = sorted(parts.glob("part-*.parquet"))
    if any(_meta_of(f).get("fingerprint") != fingerprint for f in files):
        log.info("%s: parts from another model, input or settings; starting the shard over",
                 parts)
        shutil.rmtree(parts)
        return 0
    count = 0
    while (parts / f"part-{count:05d}.parquet").is_file():
        count += 1
    for f in files:
        if int(f.stem.removeprefix("part-")) >= count:
            f.unlink()
    return count


def _worker_context(workers: int) -> str | None:
    """DataLoader workers fork (fast) unless this process has already started MediaPipe:
    a fork copies its graph threads' locked state and the worker aborts (seen when a
    caller detected faces before reconstructing), so those workers come from a forkserver."""
    return "forkserver" if workers and "mediapipe" in sys.modules else None


def reconstruct(input_path: str | os.PathLike, out: str | os.PathLike,
                model: str | os.PathLike | LoadedModel,
                settings: ReconstructSettings | None = None) -> ReconstructResult:
    """Reconstruct shard ``settings.shard`` of ``settings.num_shards`` of INPUT into OUT.

    Args:
        input_path: a manifest or detection folder, a Parquet table, an image folder or a
            video (:func:`~emoca_pipeline.inference.inputs.open_input`).
        out: output folder (shards, and obj/, renders/, overlays/ by ``settings.save``).
        model: a model.pt path, or a :func:`load_model` result.
        settings: see :class:`ReconstructSettings`.

    Raises:
        FileNotFoundError: INPUT or the model does not exist.
        ValueError: a bad setting, or an input or model that cannot be read.
    """
    started = time.perf_counter()
    settings = settings or ReconstructSettings()
    out = Path(out)
    spec = open_input(input_path, settings.split)
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    runner = _Runner(loaded.model, settings)
    fingerprint = _fingerprint(loaded, spec, settings, runner.precision)
    target = shard_file(out, settings.shard, settings.num_shards)
    parts = _parts_dir(out, settings.shard, settings.num_shards)
    meta = _meta_of(target) if target.is_file() else {}
    if meta.get("fingerprint") == fingerprint:
        shutil.rmtree(parts, ignore_errors=True)
        rows = pq.ParquetFile(target).metadata.num_rows
        log.info("%s: finished earlier with this model and input; skipped", target)
        return ReconstructResult(target, rows, -1, True, time.perf_counter() - started)
    metadata = {
        "table": RECONSTRUCTION_TABLE, "schema_version": SCHEMA_VERSION,
        "model_id": loaded.model_id, "checkpoint_sha256": loaded.sha256,
        "image_size": str(runner.size), "precision": runner.precision,
        "detail": str(settings.detail).lower(), "shard": str(settings.shard),
        "num_shards": str(settings.num_shards), "input": str(spec.path),
        "input_kind": spec.kind, "fingerprint": fingerprint, "landmarks_scheme": "fan68",
    }
    schema = reconstruction_schema(runner.widths, spec.labels, metadata)
    done = _resume_point(parts, fingerprint)
    if done:
        log.info("%s: resuming after %d finished parts", parts, done)
    saver = None
    if settings.save:
        from emoca_pipeline.inference.outputs import OutputWriter

        saver = OutputWriter(loaded.model, out, settings.save, spec, settings)
    stream = CropStream(spec, settings, runner.size, done * settings.part_size,
                         keep_photo=saver is not None and saver.needs_photo)
    loader = DataLoader(stream, batch_size=None, collate_fn=identity,
                        num_workers=settings.workers, worker_init_fn=worker_init,
                        multiprocessing_context=_worker_context(settings.workers),
                        prefetch_factor=4 if settings.workers else None,
                        pin_memory=runner.device.type == "cuda")
    rows = _Rows(runner.widths, spec.labels)
    pending: list[Sample] = []
    part = done
    expected = done * settings.part_size
    ok_faces = 0

    def flush() -> None:
        nonlocal ok_faces
        ok_faces += _process(pending, runner, rows, saver)
        pending.clear()

    def write_part() -> None:
        table = rows.table(schema.with_metadata({**metadata, "part": str(part)}))
        parts.mkdir(parents=True, exist_ok=True)
        with atomic_output(parts / f"part-{part:05d}.parquet") as tmp:
            pq.write_table(table, tmp, compression="zstd")
        log.info("shard %d/%d: part %d written (%d rows)", settings.shard, settings.num_shards,
                 part, len(rows))
        rows.clear()

    for sample in loader:
        if sample.local != expected:  # the loader's order is the contract; a bug otherwise
            raise RuntimeError(f"item {sample.local} arrived, {expected} expected")
        expected += 1
        if sample.local // settings.part_size != part:
            flush()
            write_part()
            part = sample.local // settings.part_size
        pending.append(sample)
        if sum(len(s.faces) for s in pending) >= settings.batch_size:
            flush()
    flush()
    if len(rows):
        write_part()
    if saver is not None:
        saver.finish()
    total, ok_total = _finish_shard(target, parts, schema)
    seconds = time.perf_counter() - started
    log.info("%s: %d rows, %d faces ok, %.1f s", target, total, ok_total, seconds)
    return ReconstructResult(target, total, ok_total, False, seconds)


def _process(samples: Sequence[Sample], runner: _Runner, rows: _Rows, saver: Any) -> int:
    """Run the faces of ``samples`` through the model and append their rows."""
    if not samples:
        return 0
    faces = [(s, f) for s in samples for f in s.faces if f.crop is not None]
    forward = runner.run(np.stack([f.crop for _, f in faces])) if faces else None
    results: dict[int, tuple[str, dict | None, np.ndarray | None, np.ndarray | None]] = {}
    for i, (_, face) in enumerate(faces):
        assert forward is not None
        error = forward.errors[i]
        if error is not None:
            results[id(face)] = (error, None, None, None)
            continue
        codes = {name: forward.codes[name][i] for name in CODE_NAMES}
        lmk = _to_original(forward.landmarks[i], face.transform)
        mp = forward.mediapipe[i]
        mp = mp if not np.isfinite(mp).all() else _to_original(mp, face.transform)
        results[id(face)] = ("ok", codes, lmk, mp)
    ok = 0
    for sample in samples:
        for face in sample.faces:
            status, codes, lmk, mp = results.get(id(face), (face.status, None, None, None))
            rows.add(sample, face, status, codes, lmk, mp)
            ok += status == "ok"
    if saver is not None:
        saver.write(samples, faces, forward)
    return ok


def _finish_shard(target: Path, parts: Path, schema: pa.Schema) -> tuple[int, int]:
    """Stream the parts into the shard file (atomically), then remove them."""
    files = sorted(parts.glob("part-*.parquet")) if parts.is_dir() else []
    total = ok = 0
    with atomic_output(target) as tmp:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for file in files:
                table = pq.read_table(file).replace_schema_metadata(schema.metadata)
                writer.write_table(table)
                total += table.num_rows
                ok += int(np.sum(np.asarray(table.column("status").to_pylist()) == "ok"))
    shutil.rmtree(parts, ignore_errors=True)
    return total, ok


# ------------------------------------------------------------------------------ reading


def read_reconstructions(folder: str | os.PathLike, columns: Sequence[str] | None = None,
                         allow_missing: bool = False) -> pa.Table:
    """All finished shards of an ``emoca reconstruct`` output folder, in shard order, as one
    table (the metadata of the first shard).

    Raises:
        FileNotFoundError: no shard, or (unless ``allow_missing``) some of the N shards are
            not finished.
        ValueError: shards of different shard counts or checkpoints, or not reconstruction
            tables.
    """
    folder = Path(folder)
    files = sorted(folder.glob("shard-*-of-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no reconstruction shards (shard-*-of-*.parquet)")
    counts = {f.stem.rsplit("-of-", 1)[1] for f in files}
    if len(counts) != 1:
        raise ValueError(f"{folder}: shards of different shard counts ({', '.join(sorted(counts))})"
                         "; remove the stale ones")
    num_shards = int(counts.pop())
    if not allow_missing and len(files) != num_shards:
        done = {int(f.stem.split("-")[1]) for f in files}
        missing = sorted(set(range(num_shards)) - done)
        raise FileNotFoundError(f"{folder}: {len(missing)} of {num_shards} shards not finished "
                                f"(first: {missing[0]}); run `emoca reconstruct --shard "
                                f"{missing[0]}/{num_shards}`")
    tables, shas = [], set()
    for f in files:
        meta = _meta_of(f)
        if meta.get("table") != RECONSTRUCTION_TABLE:
            raise ValueError(f"{f}: not a reconstruction table")
        shas.add(meta.get("checkpoint_sha256"))
        tables.append(pq.read_table(f, columns=list(columns) if columns else None))
    if len(shas) > 1:
        raise ValueError(f"{folder}: shards from {len(shas)} different checkpoints")
    return pa.concat_tables(tables)
