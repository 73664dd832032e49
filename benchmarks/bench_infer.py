"""``emoca reconstruct`` speed and memory, as ratios measured in one run.

    python benchmarks/bench_infer.py [--images 64] [--image-size 224] [--batch 16]
        [--threads 2] [--workers 1] [--repeats 1] [--rss-sizes 1000,10000]
        [--rss-image-size 32] [--gpu-batch 256]

On the procedural FLAME assets (generated into a temporary folder) with a freshly built
EMOCA (two ResNet-50 for the coarse codes; the detail branch is off, as the target is
"EMOCA coarse"):

1. end to end on a folder of JPEG copies of scikit-image's astronaut: decode -> MediaPipe
   detect + landmarks -> crop -> E_flame + E_expression -> FLAME landmarks -> Parquet, the
   whole :func:`reconstruct` call (model already loaded; precision ``auto``), against the bare
   model (:class:`_Runner` on in-memory crops, same batches): ratio bare / end to end
   (target >= 0.8), and seconds per image (target <= 0.2 s on 2 cores);
2. the encoders on a CPU in fp32 and bf16 autocast, with and without channels_last:
   seconds per image and the largest code difference from fp32;
3. peak RSS of a reconstruct process during the run (sampled; the model load's own peak is
   not the run's) and of its worker, for two table sizes (rows repeat one photo; a tiny
   ResNet-18 model at ``--rss-image-size``), ratio large / small (target <= 1.1; the issue's
   sizes are ``--rss-sizes 2000,20000``, about 8 minutes here);
4. with CUDA: images/s at ``--gpu-batch``, bf16, and the card's name.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from timing import best_time

from emoca_pipeline.inference.reconstruct import (
    LoadedModel,
    ReconstructSettings,
    _Runner,
    reconstruct,
)
from emoca_pipeline.models.emoca import EmocaModel, EmocaModelSettings, save_emoca_checkpoint


def build_model(assets: Path, image_size: int, encoder: str | None = None) -> EmocaModel:
    torch.manual_seed(0)
    fields = EmocaModelSettings.__dataclass_fields__
    extra = {"encoder": encoder} if encoder and "encoder" in fields else {}
    model = EmocaModel.from_assets(assets, EmocaModelSettings(image_size=image_size, **extra),
                                   use_texture=False)
    model.init_flame_head([7.0, 0.0, 0.0])
    return model.eval()


def astronaut_folder(folder: Path, count: int) -> Path:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert ok
    for i in range(count):  # distinct files (a changed byte), the same face
        (folder / f"img{i:05d}.jpg").write_bytes(jpeg.tobytes() + bytes([i % 256]))
    return folder


def end_to_end(args: argparse.Namespace, loaded: LoadedModel, work: Path) -> None:
    folder = astronaut_folder(work / "photos", args.images)
    settings = ReconstructSettings(batch_size=args.batch, detail=False, workers=args.workers,
                                   precision=args.precision, part_size=1 << 20)
    runs = []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        result = reconstruct(folder, work / f"out{repeat}", loaded, settings)
        runs.append(time.perf_counter() - started)
        assert result.faces_ok == args.images, result
    e2e = min(runs)
    runner = _Runner(loaded.model, settings)
    crops = np.random.default_rng(0).integers(0, 255, (args.images, args.image_size,
                                                        args.image_size, 3), dtype=np.uint8)

    def bare() -> None:
        for start in range(0, args.images, args.batch):
            runner.run(crops[start:start + args.batch])

    model_time = best_time(bare, args.repeats)
    print(f"\n1. end to end, {args.images} astronaut JPEGs, {args.image_size} px, batch "
          f"{args.batch}, {args.workers} worker(s), {torch.get_num_threads()} threads, "
          f"precision {runner.precision}, coarse only")
    print(f"   end to end {e2e / args.images:.3f} s/image, bare model "
          f"{model_time / args.images:.3f} s/image; ratio bare/e2e {model_time / e2e:.2f} "
          "(target >= 0.8)")


def precisions(args: argparse.Namespace, loaded: LoadedModel) -> None:
    print(f"\n2. encoders (E_flame + E_expression) on CPU, batch {args.batch}, "
          f"{args.image_size} px, {torch.get_num_threads()} threads")
    crops = np.stack([cv2.resize(_astronaut_crop(), (args.image_size, args.image_size))]
                     * args.batch)
    reference = None
    for precision in ("fp32", "bf16"):
        for channels_last in (False, True):
            runner = _Runner(loaded.model, ReconstructSettings(
                device="cpu", precision=precision, detail=False, channels_last=channels_last))
            images = runner.images(crops)
            seconds = best_time(lambda runner=runner, images=images: runner.encode(images),
                                args.repeats)
            codes = runner.encode(images)
            flat = torch.cat([c.reshape(len(crops), -1) for c in codes if c is not None], 1)
            if reference is None:
                reference = flat
            diff = float((flat - reference).abs().max())
            scale = float(reference.abs().max())
            print(f"   {precision:4s} channels_last={str(channels_last):5s} "
                  f"{seconds / args.batch:.3f} s/image, max |code - fp32| {diff:.2e} "
                  f"(codes up to {scale:.2f})")


def _astronaut_crop() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[20:240, 140:360])


def rss_child(rows: int, image_size: int, assets: Path, work: Path) -> None:
    """One reconstruct run over ``rows`` rows of one photo; prints peak RSS (MiB)."""
    from emoca_pipeline.inference.reconstruct import load_model

    photo = work / "photo.png"
    if not photo.exists():
        cv2.imwrite(str(photo), cv2.cvtColor(cv2.resize(_astronaut_crop(), (160, 160)),
                                             cv2.COLOR_RGB2BGR))
    points = np.random.default_rng(0).uniform(40, 120, (68, 2)).astype(np.float32)
    table = work / f"rows{rows}.parquet"
    with pq.ParquetWriter(table, pa.schema([("path", pa.string()),
                                            ("landmarks", pa.list_(pa.float32(), 136))])) as w:
        for start in range(0, rows, 1000):
            n = min(1000, rows - start)
            flat = pa.array(np.tile(points.reshape(-1), n))
            w.write_table(pa.table({"path": [str(photo)] * n,
                                    "landmarks": pa.FixedSizeListArray.from_arrays(flat, 136)}))
    loaded = load_model(work / "tiny.pt")
    base = _rss_mib()
    samples = [base]
    running = threading.Event()
    running.set()

    def sample() -> None:  # ru_maxrss would be the model load's peak: sample the run itself
        while running.is_set():
            samples.append(_rss_mib())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = reconstruct(table, work / f"out{rows}", loaded, ReconstructSettings(
        batch_size=64, detail=False, workers=1, part_size=1000))
    seconds = time.perf_counter() - started
    running.clear()
    sampler.join()
    worker = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"rows": result.rows, "after_load_mib": base, "peak_mib": max(samples),
                      "worker_peak_mib": worker, "seconds": seconds}))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def rss(args: argparse.Namespace, assets: Path, work: Path) -> None:
    save_emoca_checkpoint(work / "tiny.pt", build_model(assets, args.rss_image_size, "resnet18"))
    sizes = [int(s) for s in args.rss_sizes.split(",")]
    results = []
    for rows in sizes:
        out = subprocess.run([sys.executable, __file__, "--rss-child", str(rows),
                              "--rss-image-size", str(args.rss_image_size),
                              "--assets", str(assets), "--work", str(work)],
                             check=True, capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\n3. peak RSS of a reconstruct process ({args.rss_image_size} px model, 1 worker)")
    for r in results:
        print(f"   {r['rows']:6d} rows: main {r['peak_mib']:.0f} MiB during the run (after "
              f"model load {r['after_load_mib']:.0f}), worker {r['worker_peak_mib']:.0f} MiB, "
              f"{r['seconds']:.0f} s")
    small, large = results[0], results[-1]
    print(f"   ratio {large['rows']} / {small['rows']} rows: main "
          f"{large['peak_mib'] / small['peak_mib']:.3f}, worker "
          f"{large['worker_peak_mib'] / small['worker_peak_mib']:.3f} (target <= 1.1)")


def gpu(args: argparse.Namespace, loaded: LoadedModel) -> None:
    if not torch.cuda.is_available():
        print("\n4. GPU: CUDA not available, skipped")
        return
    runner = _Runner(loaded.model, ReconstructSettings(device="cuda", precision="bf16",
                                                       detail=False))
    crops = np.random.default_rng(0).integers(0, 255, (args.gpu_batch, args.image_size,
                                                        args.image_size, 3), dtype=np.uint8)

    def step() -> None:
        runner.run(crops)
        torch.cuda.synchronize()

    seconds = best_time(step, args.repeats)
    print(f"\n4. GPU {torch.cuda.get_device_name()}: {args.gpu_batch / seconds:.0f} images/s at "
          f"batch {args.gpu_batch}, bf16, coarse + FLAME landmarks")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64,
                        help="photos of the end-to-end run (fixed costs such as starting the "
                             "worker and MediaPipe's graphs are amortised over them)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--rss-sizes", default="1000,10000",
                        help="table sizes for the RSS ratio (the issue's: 2000,20000)")
    parser.add_argument("--rss-image-size", type=int, default=32)
    parser.add_argument("--gpu-batch", type=int, default=256)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: "
                        "e2e,precision,rss,gpu")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--assets", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child, args.rss_image_size, args.assets, args.work)
        return
    skip = set(args.skip.split(","))
    from emoca_pipeline.assets import generate_procedural_assets

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        assets = generate_procedural_assets(work / "assets", seed=0)
        model = build_model(assets, args.image_size)
        loaded = LoadedModel(model, "bench", "0" * 64)
        if "e2e" not in skip:
            end_to_end(args, loaded, work)
        if "precision" not in skip:
            precisions(args, loaded)
        if "gpu" not in skip:
            gpu(args, loaded)
        if "rss" not in skip:
            rss(args, assets, work)


if __name__ == "__main__":
    main()
