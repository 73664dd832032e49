"""EMOCA model speed: training step split by part, inference throughput, achieved GFLOP/s.

    python benchmarks/bench_model.py [--batch 32] [--train-batch 8] [--image-size 224]
                                     [--threads N] [--repeats 3]

On the procedural FLAME assets (generated into a temporary folder), prints:

- a coarse training step of EMOCA (E_flame frozen forward, E_expression forward +
  backward) per image, split into encoders, FLAME, render and losses (each part timed
  alone, forward + backward, on inputs detached from the part before) next to the whole
  step (forward, backward, Adam) timed end to end;
- inference images/s for coarse and coarse + detail at ``--batch`` (``torch.inference_mode``,
  encoders in ``channels_last``);
- the FLOPs of one coarse + detail inference (``torch.utils.flop_counter.FlopCounterMode``)
  over its time = achieved GFLOP/s, next to a 2048 x 2048 float32 matmul measured in the
  same run (the CPU target is >= 0.5 of it).

Every figure is the best of ``--repeats`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from timing import best_time

from emoca_pipeline.losses.emoca import CoarseLossWeights, EmocaCoarseLoss
from emoca_pipeline.models.emoca import EmocaModel, EmocaModelSettings
from emoca_pipeline.render import orthographic_project, project_landmarks


def matmul_gflops(repeats: int, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = best_time(lambda: torch.mm(a, b), repeats + 2)
    return 2 * n ** 3 / seconds / 1e9


def training_split(model: EmocaModel, images: torch.Tensor, landmarks: torch.Tensor,
                   repeats: int) -> dict[str, float]:
    """Seconds per step of each part of a coarse training step, and of the whole step."""
    model.set_stage("coarse").train()
    loss_fn = EmocaCoarseLoss(CoarseLossWeights(emotion=0.0, landmark=1.0))
    optimizer = torch.optim.Adam(model.coarse_parameters(), lr=5e-5)
    with torch.no_grad():
        codes = model.encode(images, with_detail=False)
        flame_out = model.flame(codes.shape, codes.exp, codes.pose)
        coarse = model.decode_coarse(codes)

    def encoders() -> None:
        out = model.encode(images, with_detail=False)
        out.exp.sum().backward()

    exp = codes.exp.clone().requires_grad_(True)

    def flame() -> None:
        out = model.flame(codes.shape, exp, codes.pose)
        verts = orthographic_project(out.vertices, codes.cam)
        lmk = project_landmarks(out.landmarks2d, codes.cam)
        (verts.sum() + lmk.sum()).backward()

    verts = flame_out.vertices.clone().requires_grad_(True)
    light = codes.light.clone().requires_grad_(True)

    def render() -> None:
        trans = orthographic_project(verts, codes.cam)
        albedo = model.albedo(codes.tex)
        ops = model.render(verts, trans, albedo, light)
        ops.images.sum().backward()

    rendered = coarse.images.clone().requires_grad_(True)
    lmk2d = coarse.landmarks2d.clone().requires_grad_(True)

    def losses() -> None:
        terms = loss_fn(rendered, lmk2d, exp, images, landmarks, coarse.masks)
        terms.total.backward()

    def step() -> None:
        out = model(images, with_detail=False)
        terms = loss_fn(out.coarse.images, out.coarse.landmarks2d, out.codes.exp, images,
                        landmarks, out.coarse.masks)
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()

    parts = {"encoders": encoders, "flame": flame, "render": render, "losses": losses,
             "step": step}
    return {name: best_time(fn, repeats) for name, fn in parts.items()}


def training_figures(model: EmocaModel, args: argparse.Namespace) -> None:
    """Print the coarse training step split (ms per image)."""
    size = args.image_size
    images = torch.rand(args.train_batch, 3, size, size)
    landmarks = torch.rand(args.train_batch, 68, 2) * 1.2 - 0.6
    split = training_split(model, images, landmarks, args.repeats)
    n = args.train_batch
    parts_sum = sum(v for k, v in split.items() if k != "step")
    print(f"\ncoarse training step, batch {n}, ms per image (each part fwd + bwd):")
    for name in ("encoders", "flame", "render", "losses"):
        print(f"  {name:9s} {split[name] / n * 1e3:8.1f}   {split[name] / parts_sum:5.1%}")
    print(f"  {'sum':9s} {parts_sum / n * 1e3:8.1f}")
    print(f"  {'step':9s} {split['step'] / n * 1e3:8.1f}   (whole step incl. Adam; "
          f"step / sum = {split['step'] / parts_sum:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, usually the core count)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-train", action="store_true", help="inference figures only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"image {args.image_size} px")

    from emoca_pipeline.assets import generate_procedural_assets

    with tempfile.TemporaryDirectory() as tmp:
        assets = generate_procedural_assets(Path(tmp) / "assets", seed=0)
        settings = EmocaModelSettings(image_size=args.image_size)
        model = EmocaModel.from_assets(assets, settings)
    # A face in view, as a trained E_flame gives (a fresh head puts it at a point).
    model.init_flame_head(torch.tensor([8.0, 0.0, 0.0]))

    reference = matmul_gflops(args.repeats)
    print(f"reference: 2048x2048 float32 matmul {reference:.1f} GFLOP/s (before)")

    size = args.image_size
    if not args.no_train:
        training_figures(model, args)

    # ---- inference
    model.eval()
    for network in (model.E_flame, model.E_expression, model.E_detail, model.D_detail):
        if network is not None:  # convolutions only: other buffers are not images
            network.to(memory_format=torch.channels_last)
    batch = torch.rand(args.batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    def coarse() -> None:
        with torch.inference_mode():
            model(batch, with_detail=False)

    def full() -> None:
        with torch.inference_mode():
            model(batch, with_detail=True)

    # Interleaved with the matmul reference, so that both see the same machine load.
    n_mm = 2048
    a, b = torch.randn(n_mm, n_mm), torch.randn(n_mm, n_mm)
    coarse(), full(), torch.mm(a, b)  # warm-up
    t_coarse = t_full = t_mm = float("inf")
    for _ in range(args.repeats):
        for fn, kind in ((coarse, "coarse"), (full, "full"), (lambda: torch.mm(a, b), "mm")):
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if kind == "coarse":
                t_coarse = min(t_coarse, elapsed)
            elif kind == "full":
                t_full = min(t_full, elapsed)
            else:
                t_mm = min(t_mm, elapsed)
    reference = max(reference, 2 * n_mm ** 3 / t_mm / 1e9)
    print(f"\ninference, batch {args.batch} (inference_mode, channels_last), matmul "
          f"reference (best before / interleaved) {reference:.1f} GFLOP/s:")
    print(f"  coarse          {args.batch / t_coarse:7.2f} images/s")
    print(f"  coarse + detail {args.batch / t_full:7.2f} images/s")

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(batch, with_detail=True)
    flops = counter.get_total_flops()
    achieved = flops / t_full / 1e9
    print(f"  coarse + detail: {flops / args.batch / 1e9:.2f} GFLOP per image (counted), "
          f"{achieved:.1f} GFLOP/s = {achieved / reference:.2f} x matmul (target >= 0.5)")
    counter_small = FlopCounterMode(display=False)
    with counter_small, torch.inference_mode():
        model.E_flame(batch[:1])
    print(f"  one ResNet-50 at {size} px: "
          f"{counter_small.get_total_flops() / 1e9:.2f} GFLOP per image")


if __name__ == "__main__":
    main()
