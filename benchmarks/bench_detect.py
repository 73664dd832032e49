"""Throughput of the detection stage and cost of building a large manifest.

Figures (each against a baseline measured in the same run):

1. faces/s of the whole stage (``run_detection``: listing, read + hash + decode, MediaPipe,
   crop transform, Parquet shards, summary) with one in-process worker, next to the bare
   ``MediaPipeLandmarker.detect`` call on images decoded beforehand. Target: >= 0.85.
2. 2 Dask workers vs 1: faces/s on warm clusters (workers started, MediaPipe imported and
   its graphs built: what a long run sees), and end to end in a fresh process (imports and
   cluster start-up included). Target: >= 1.7x on 2 cores. Also end to end on 20 images,
   which ``run_detection`` keeps in-process: 2 workers must not be slower than 1.
3. ``build_manifest`` on 1,000,000 generated detection rows (100 shards) joined with a
   1,000,000-row label table (synthetic format, and AffectNet CSV format), each in a fresh
   process: wall time and peak RSS. Targets: <= 60 s and <= 2 GiB.

Usage::

    python benchmarks/bench_detect.py [--images 240] [--rows 1000000] [--skip-detect]
        [--skip-manifest] [--workdir DIR]

The photos are scikit-image's astronaut, randomly cropped, scaled, flipped and brightened
(one face each), written as JPEG.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` 512 x 512 JPEG variants of the astronaut, one face each."""
    import cv2
    from skimage import data

    rng = np.random.default_rng(seed)
    astronaut = data.astronaut()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        scale = rng.uniform(0.7, 1.3)
        angle = rng.uniform(-10, 10)
        matrix = cv2.getRotationMatrix2D((256 + rng.uniform(-40, 40), 160 + rng.uniform(-40, 40)),
                                         angle, scale)
        image = cv2.warpAffine(astronaut, matrix, (512, 512), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        image = np.clip(image * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
        path = folder / f"{index:05d}.jpg"
        assert cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def bench_stage_vs_bare(paths: list[Path], work: Path) -> dict[str, float]:
    from emoca_pipeline.data.detect import DetectSettings, run_detection
    from emoca_pipeline.data.landmarks import MediaPipeLandmarker
    from emoca_pipeline.io.images import read_image

    images = [read_image(path).image for path in paths]
    landmarker = MediaPipeLandmarker()
    for image in images[:3]:
        landmarker.detect(image)  # build the graphs
    started, cpu = time.perf_counter(), _cpu_seconds()
    bare_faces = sum(len(landmarker.detect(image)) for image in images)
    bare_seconds, bare_cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    landmarker.close()

    settings = DetectSettings(shard_size=100)
    run_detection(paths[0].parent, work / "warmup", settings, progress=False)  # graphs built
    started, cpu = time.perf_counter(), _cpu_seconds()
    summary = run_detection(paths[0].parent, work / "stage", settings, progress=False)
    stage_seconds, stage_cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    bare = bare_faces / bare_seconds
    stage = summary.faces / stage_seconds
    print(f"[1] bare MediaPipe on decoded images: {bare_faces} faces in {bare_seconds:.2f} s = "
          f"{bare:.1f} faces/s ({1e3 * bare_cpu / bare_faces:.1f} ms CPU per face)")
    print(f"    whole stage, 1 worker:            {summary.faces} faces in {stage_seconds:.2f} s "
          f"= {stage:.1f} faces/s ({1e3 * stage_cpu / summary.faces:.1f} ms CPU per face)")
    print(f"    stage / bare = {stage / bare:.3f}   (target >= 0.85); in CPU time "
          f"{bare_cpu / bare_faces / (stage_cpu / summary.faces):.3f} (decoding runs in a "
          "second thread, so its CPU time overlaps)")
    return {"bare_faces_per_s": bare, "stage_faces_per_s": stage, "ratio": stage / bare}


def _cpu_seconds() -> float:
    """CPU time of this process, all threads."""
    times = os.times()
    return times.user + times.system


def _timed_run(folder: Path, out: Path, workers: int) -> tuple[float, int]:
    """Wall time of ``emoca detect`` in a fresh process (imports and cluster start included)."""
    code = (
        "import sys, time\n"
        "from emoca_pipeline.data.detect import DetectSettings, run_detection\n"
        "if __name__ == '__main__':\n"
        "    t = time.perf_counter()\n"
        "    s = run_detection(sys.argv[1], sys.argv[2], DetectSettings(shard_size=100),\n"
        "                      workers=int(sys.argv[3]), progress=False)\n"
        "    print(time.perf_counter() - t, s.faces)\n"
    )
    script = out.parent / f"run_{out.name}.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script), str(folder), str(out), str(workers)],
                            capture_output=True, text=True, check=True)
    seconds, faces = result.stdout.split()[-2:]
    return float(seconds), int(faces)


def _worker_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _cluster_cpu_seconds(client) -> float:
    """CPU time of every worker process and of this one."""
    return sum(client.run(_worker_cpu_seconds).values()) + _cpu_seconds()


def bench_workers(paths: list[Path], work: Path) -> dict[str, float]:
    """2 Dask workers vs 1: steady state (warm clusters) and end to end (fresh processes)."""
    import logging

    from distributed import Client, LocalCluster

    from emoca_pipeline.data.detect import DetectSettings, run_detection

    warm = work / "warm_photos"
    warm.mkdir()
    for path in paths[:8]:
        (warm / path.name).symlink_to(path)
    settings = DetectSettings(shard_size=100)
    rates, cpu_per_face = {}, {}
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client:
            # Every worker imports MediaPipe and builds its graphs before the clock starts.
            run_detection(warm, work / f"warm_{workers}", settings, progress=False,
                          client=client)
            started, cpu = time.perf_counter(), _cluster_cpu_seconds(client)
            summary = run_detection(paths[0].parent, work / f"dask_{workers}", settings,
                                    progress=False, client=client)
            rates[workers] = summary.faces / (time.perf_counter() - started)
            cpu_per_face[workers] = (_cluster_cpu_seconds(client) - cpu) / summary.faces
    print(f"[2] warm Dask clusters, {len(paths)} images: 1 worker {rates[1]:.1f} faces/s, "
          f"2 workers {rates[2]:.1f} faces/s ({rates[2] / 2:.1f} per worker) = "
          f"{rates[2] / rates[1]:.2f}x   (target >= 1.7x)")
    print(f"    CPU per face (workers + client): 1 worker {1e3 * cpu_per_face[1]:.1f} ms, "
          f"2 workers {1e3 * cpu_per_face[2]:.1f} ms: with 2 free cores the speedup would be "
          f"{2 * cpu_per_face[1] / cpu_per_face[2]:.2f}x")
    seconds = {workers: _timed_run(paths[0].parent, work / f"fresh_{workers}", workers)[0]
               for workers in (1, 2)}
    print(f"    end to end in a fresh process (imports, cluster start): 1 worker "
          f"{seconds[1]:.1f} s, 2 workers {seconds[2]:.1f} s = {seconds[1] / seconds[2]:.2f}x")
    small = work / "small_photos"
    small.mkdir()
    for path in paths[:20]:
        (small / path.name).symlink_to(path)
    small_seconds = {workers: _timed_run(small, work / f"small_{workers}", workers)[0]
                     for workers in (1, 2)}
    print(f"    20 images end to end: 1 worker {small_seconds[1]:.1f} s, 2 workers "
          f"{small_seconds[2]:.1f} s = {small_seconds[1] / small_seconds[2]:.2f}x   (target: "
          ">= 1.0x, no cluster started)")
    return {"warm_speedup": rates[2] / rates[1], "rate_1": rates[1], "rate_2": rates[2],
            "end_to_end_speedup": seconds[1] / seconds[2],
            "small_speedup": small_seconds[1] / small_seconds[2]}


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


def generate_detections(out: Path, rows: int, shard_rows: int = 10_000) -> list[str]:
    """``rows`` detection rows (one face per image, ground-truth style) in shards, with a plan;
    returns the keys."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from emoca_pipeline.data.plan import DetectionPlan, shard_path, write_plan
    from emoca_pipeline.data.schema import (
        DETECTION_SCHEMA,
        MEDIAPIPE_POINTS,
        fixed_list_array,
        table_metadata,
    )

    rng = np.random.default_rng(0)
    keys = [f"{index // 1000:04d}/{index:08d}.jpg" for index in range(rows)]
    plan = DetectionPlan(str(out / "generated"), "list", str(out / "images"), tuple(keys), None,
                         None, shard_rows)
    write_plan(plan, out)
    for shard in range(plan.num_shards):
        indices = plan.shard_range(shard)
        n = len(indices)
        landmarks = rng.uniform(50, 200, (n, 136)).astype(np.float32)
        transform = np.tile(np.array([1.5, 0, -40, 0, 1.5, -30, 0, 0, 1.0]), (n, 1))
        ids = [f"{rng.integers(0, 2**63):016x}{index:024x}" for index in indices]
        columns = {
            "image_id": pa.array(ids), "path": pa.array(keys[indices.start:indices.stop]),
            "frame": pa.nulls(n, pa.int32()), "width": pa.array(np.full(n, 256, np.int32)),
            "height": pa.array(np.full(n, 256, np.int32)),
            "face_index": pa.array(np.zeros(n, np.int16)),
            "bbox": fixed_list_array(rng.uniform(0, 256, (n, 4)), 4),
            "score": pa.array(np.ones(n, np.float32)),
            "landmarks": fixed_list_array(landmarks, 136),
            "mediapipe_landmarks": fixed_list_array(
                np.full((n, 2 * MEDIAPIPE_POINTS), np.nan, np.float32), 2 * MEDIAPIPE_POINTS),
            "crop_transform": fixed_list_array(transform, 9, pa.float64()),
            "status": pa.array(["ok"] * n), "reason": pa.array([""] * n),
            "detector": pa.array(["ground_truth"] * n), "detector_version": pa.array(["1"] * n),
        }
        table = pa.Table.from_arrays([columns[f.name] for f in DETECTION_SCHEMA],
                                     schema=DETECTION_SCHEMA)
        table = table.replace_schema_metadata(table_metadata(
            "detections", root=plan.root, shard=shard, landmark_scheme="fan68"))
        pq.write_table(table, shard_path(out, shard), compression="zstd",  # as the stage does
                       use_dictionary=["status", "reason", "detector", "detector_version"])
    return keys


def generate_labels(work: Path, keys: list[str]) -> tuple[Path, list[Path]]:
    """A synthetic-format table and AffectNet-format CSVs (90% training, 10% validation)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    n = len(keys)
    expression = rng.integers(0, 11, n)  # AffectNet: 8-10 are dropped
    valence = rng.uniform(-1, 1, n).astype(np.float32)
    arousal = rng.uniform(-1, 1, n).astype(np.float32)
    valence[rng.random(n) < 0.01] = -2.0
    splits = np.array(["train", "val", "test"])[rng.integers(0, 3, n)]
    synthetic = work / "synthetic.parquet"
    pq.write_table(pa.table({
        "path": pa.array(keys), "identity": pa.array(np.arange(n) // 4),
        "split": pa.array(splits), "expression": pa.array(np.minimum(expression, 7)),
        "valence": pa.array(np.clip(valence, -1, 1)), "arousal": pa.array(arousal),
    }), synthetic)
    header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
              "expression,valence,arousal\n")
    csvs = [work / "training.csv", work / "validation.csv"]
    cut = int(n * 0.9)
    for path, part in ((csvs[0], range(0, cut)), (csvs[1], range(cut, n))):
        with open(path, "w") as f:
            f.write(header)
            f.writelines(f"{keys[i]},10,10,100,100,,{expression[i]},{valence[i]:.4f},"
                         f"{arousal[i]:.4f}\n" for i in part)
    return synthetic, csvs


def _manifest_in_subprocess(detections: Path, out: Path, name: str, labels: list[Path]) -> dict:
    # Peak RSS from VmHWM: ru_maxrss survives exec on Linux, so a child forked from this big
    # process would report this process's size.
    code = (
        "import json, sys, time\n"
        "from emoca_pipeline.data.manifest import build_manifest\n"
        "t = time.perf_counter()\n"
        "s = build_manifest(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])\n"
        "seconds = time.perf_counter() - t\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "print(json.dumps({'seconds': seconds, 'rows': s.rows,\n"
        "                  'peak_rss_mib': int(hwm.split()[1]) / 1024}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(detections), str(out), name,
                             *map(str, labels)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_manifest(work: Path, rows: int) -> dict[str, dict]:
    started = time.perf_counter()
    keys = generate_detections(work / "detections", rows)
    synthetic, csvs = generate_labels(work, keys)
    print(f"[3] generated {rows} detection rows and labels in "
          f"{time.perf_counter() - started:.1f} s")
    figures = {}
    for name, labels in (("synthetic", [synthetic]), ("affectnet", csvs), ("plain", [])):
        figures[name] = _manifest_in_subprocess(work / "detections", work / "manifest", name,
                                                labels)
        f = figures[name]
        print(f"    {name:<9} labels: {f['rows']:>8} manifest rows in {f['seconds']:6.1f} s "
              f"({f['seconds'] / 60:.2f} of the 60 s target), peak RSS {f['peak_rss_mib']:7.0f} "
              f"MiB ({f['peak_rss_mib'] / 2048:.2f} of the 2 GiB target)")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240, help="photos for [1] and [2]")
    parser.add_argument("--rows", type=int, default=1_000_000, help="manifest rows for [3]")
    parser.add_argument("--skip-detect", action="store_true")
    parser.add_argument("--skip-manifest", action="store_true")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder)")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}, affinity: {len(os.sched_getaffinity(0))}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        work = Path(scratch)
        if not args.skip_detect:
            paths = make_photos(work / "photos", args.images)
            bench_stage_vs_bare(paths, work)
            bench_workers(paths, work)
        if not args.skip_manifest:
            bench_manifest(work, args.rows)


if __name__ == "__main__":
    main()
