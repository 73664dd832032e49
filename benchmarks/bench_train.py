"""Training-step speed of the CPU demo's networks: encoder trunk x precision.

    python benchmarks/bench_train.py [--image-size 64] [--batch 8] [--threads N] [--repeats 3]
                                     [--clock wall|cpu]

On the procedural FLAME assets (generated into a temporary folder), times one whole
training step (forward, loss, backward, Adam), as the Lightning module runs it, of:

- the deca stage (E_flame trains, through FLAME, the renderer and DECA's losses),
- EMOCA's coarse stage (E_flame frozen forward, E_expression forward + backward),
- the image emotion network (a ResNet trunk -> 8 logits + valence + arousal, NLL + MSE),

for each trunk (``resnet50``: EMOCA's; ``resnet18``: the CPU-demo option,
``model.encoder``) in float32 and under bfloat16 autocast (what Lightning's
``precision: bf16-mixed`` does on a CPU). Prints ms per image and the speed-up against
float32 ResNet-50 measured in the same run. Each figure is the best of ``--repeats`` steps
after a warm-up; the variants are interleaved so that all see the same machine load.
On a machine shared with other jobs, ``--clock cpu --threads 1`` times the process's CPU
time instead of wall time, which other jobs' load barely moves.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from emoca_pipeline.losses.emoca import EmocaCoarseLoss
from emoca_pipeline.models.emoca import EmocaModel, EmocaModelSettings
from emoca_pipeline.models.encoders import ENCODER_BACKBONES
from emoca_pipeline.training.emoca_settings import DECA_LOSS_WEIGHTS

PRECISIONS = ("32-true", "bf16-mixed")


def autocast(precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def emoca_step(model: EmocaModel, stage: str, precision: str, images: torch.Tensor,
               landmarks: torch.Tensor) -> Callable[[], None]:
    """One training step of the deca or coarse stage (regularisers and landmark terms on,
    no emotion network: its cost is the emotion net's forward, timed separately)."""
    model.set_stage(stage).train()
    weights = DECA_LOSS_WEIGHTS if stage == "deca" else DECA_LOSS_WEIGHTS.__class__(emotion=0.0)
    loss_fn = EmocaCoarseLoss(weights)
    optimizer = torch.optim.Adam(model.coarse_parameters(), lr=1e-4)

    def step() -> None:
        with autocast(precision):
            out = model(images, with_detail=False)
            c = out.codes
            terms = loss_fn(out.coarse.images, out.coarse.landmarks2d, c.exp, images, landmarks,
                            out.coarse.masks, codes={"shape": c.shape, "tex": c.tex,
                                                     "pose": c.pose, "cam": c.cam,
                                                     "light": c.light})
        optimizer.zero_grad()
        terms.total.backward()
        optimizer.step()

    return step


class EmotionNet(nn.Module):
    """The image emotion network's layout on a chosen trunk (trunk -> Linear(F, 10))."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        self.trunk = getattr(torchvision.models, backbone)(weights=None)
        self.trunk.fc = nn.Identity()
        self.head = nn.Linear(ENCODER_BACKBONES[backbone], 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(images))


def emotion_step(net: EmotionNet, precision: str, images: torch.Tensor,
                 labels: torch.Tensor) -> Callable[[], None]:
    net.train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)

    def step() -> None:
        with autocast(precision):
            out = net(images)
            loss = F.cross_entropy(out[:, :8].float(), labels) + out[:, 8:].float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="EMOCA stages' batch")
    parser.add_argument("--emotion-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or the process's CPU time (for loaded machines)")
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = args.image_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {size} px, "
          f"EMOCA batch {args.batch}, emotion batch {args.emotion_batch}, "
          f"best of {args.repeats}, {args.clock} clock")

    from emoca_pipeline.assets import generate_procedural_assets

    images = torch.rand(args.batch, 3, size, size)
    landmarks = torch.rand(args.batch, 68, 2) * 1.2 - 0.6
    emo_images = torch.rand(args.emotion_batch, 3, size, size)
    labels = torch.randint(0, 8, (args.emotion_batch,))
    steps: dict[tuple[str, str, str], Callable[[], None]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        assets = generate_procedural_assets(Path(tmp) / "assets", seed=0)
        for backbone in ENCODER_BACKBONES:
            settings = EmocaModelSettings(image_size=size, encoder=backbone)
            for stage in ("deca", "coarse"):
                # One model per stage: the stage's modes and trained encoder stay fixed.
                model = EmocaModel.from_assets(assets, settings)
                model.init_flame_head(torch.tensor([8.0, 0.0, 0.0]))
                for precision in PRECISIONS:
                    steps[stage, backbone, precision] = emoca_step(
                        model, stage, precision, images, landmarks)
            for precision in PRECISIONS:
                steps["emotion", backbone, precision] = emotion_step(
                    EmotionNet(backbone), precision, emo_images, labels)

    best = {key: float("inf") for key in steps}
    for fn in steps.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for key, fn in steps.items():
            start = clock()
            fn()
            best[key] = min(best[key], clock() - start)

    for stage, batch in (("deca", args.batch), ("coarse", args.batch),
                         ("emotion", args.emotion_batch)):
        base = best[stage, "resnet50", "32-true"]
        print(f"\n{stage} training step, ms per image (speed-up vs resnet50 32-true):")
        for backbone in ENCODER_BACKBONES:
            for precision in PRECISIONS:
                seconds = best[stage, backbone, precision]
                print(f"  {backbone:9s} {precision:10s} {seconds / batch * 1e3:8.1f}   "
                      f"x{base / seconds:5.2f}")


if __name__ == "__main__":
    main()
