"""EMOCA's detail stage learns fine detail, measured on held-out identities.

The synthetic photos of ``emoca synth`` are rendered from the coarse FLAME mesh, so they
hold nothing for the detail branch to learn. Here the photos are given detail that only
the detail branch can explain: a frozen coarse model (FLAME assets, ResNet-18 encoders,
64 px, E_flame's head at the mean crop's camera as the deca stage starts it, plus a
directional SH light so that shading depends on the normals) renders every 64 px crop
with the detail shading of ONE fixed, smooth, left-right symmetric UV displacement map,
through the model's own detail path (``displacement2normal`` + SH shading + UV texture
sampling, with D_detail swapped for the fixed map). That render is composited over the
crop inside the rendered face mask; since E_flame sees the composite, the composite is
iterated to a fixed point, so the coarse geometry of the saved photo is the one its detail
was rendered on. The photos are saved as 64 px images with the landmarks moved into them
(the data module's crop is then the identity), so the ground truth is exactly "coarse
render + known detail".

The detail stage (E_detail and D_detail from scratch, the paper's detail loss weights, no
ID-MRF weights here) then trains a few dozen steps on the train identities; the same batch
of the val and test identities is measured in eval mode before and after.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from emoca_pipeline.data.crop import transform_points
from emoca_pipeline.losses.emoca import EmocaDetailLoss
from emoca_pipeline.models.emoca import EmocaModel, load_emoca_checkpoint, save_emoca_checkpoint
from emoca_pipeline.tracking import PARENT_RUN_ENV, WORKFLOW_ID_ENV
from emoca_pipeline.training.emoca_data import EmocaDataModule
from emoca_pipeline.training.emoca_job import build_model, prepare_model, train_emoca
from emoca_pipeline.training.emoca_module import EmocaModule
from emoca_pipeline.training.emoca_settings import load_emoca_settings

HELD_OUT = ("val", "test")
SPLITS = ("train", *HELD_OUT)
BASE = {"name": "detail-learning", "seed": 0,
        "model": {"image_size": 64, "encoder": "resnet18", "expression_backbone": "none"},
        "batch_size": 4, "k_per_identity": 2, "augment": False, "max_epochs": 1000,
        "val_every_n_epochs": 1000, "recalibrate_batchnorm": 2, "use_segmentation": False}
#: Linear SH bands (1, 2, 3) of the coarse model's light, every colour channel.
DIRECTIONAL_LIGHT = (0.4, 0.6, -0.4)
#: Peak of the fixed displacement (D_detail's outputs are bounded by tanh x 0.01) and the
#: Gaussian blur (UV texels, about 1 mm each on the procedural head) that makes it smooth.
DISPLACEMENT_PEAK = 0.009
DISPLACEMENT_SIGMA = 10.0
#: Seen at 1e-3: as good; at 2e-3 the z_sym sum (an L1 over the whole UV map) wins and
#: photometric_uv does not move in this many steps.
STEPS = 30
LEARNING_RATE = 7.0e-4


@pytest.fixture(autouse=True)
def no_inherited_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    monkeypatch.delenv(WORKFLOW_ID_ENV, raising=False)
    yield


class FixedDisplacement(nn.Module):
    """Stands in for D_detail: the same ``(1, 1, uv, uv)`` map for every latent."""

    def __init__(self, displacement: Tensor) -> None:
        super().__init__()
        self.register_buffer("displacement", displacement)

    def forward(self, latent: Tensor) -> Tensor:
        return self.displacement.expand(latent.shape[0], -1, -1, -1)


def smooth_symmetric_displacement(model: EmocaModel, seed: int = 1) -> Tensor:
    """``(1, 1, uv, uv)``: blurred Gaussian noise, mirrored left-right (DECA's z_sym term
    asks for symmetry), scaled to ``DISPLACEMENT_PEAK``, zero outside the UV face-eye mask."""
    size = model.settings.uv_size
    noise = torch.randn(1, 1, size, size, generator=torch.Generator().manual_seed(seed))
    radius = int(3 * DISPLACEMENT_SIGMA)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets ** 2 / (2 * DISPLACEMENT_SIGMA ** 2))
    kernel = kernel / kernel.sum()
    noise = F.pad(noise, (radius,) * 4, mode="reflect")
    noise = F.conv2d(F.conv2d(noise, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    noise = noise + noise.flip(-1)
    return DISPLACEMENT_PEAK * noise / noise.abs().max() * model.render.uv_face_eye_mask


def coarse_model(settings_file: Path, table: Path) -> EmocaModel:
    """The frozen coarse model: from the assets as the deca stage starts (E_flame's head at
    the mean crop's camera), with a directional light bias so shading sees the normals."""
    settings = load_emoca_settings(settings_file)
    data = EmocaDataModule(table, settings, "deca")
    torch.manual_seed(0)
    model = prepare_model(build_model(settings), settings, "deca", data)
    light = sum(width for name, width in model.settings.code_widths.items() if name != "light")
    head = model.E_flame.layers[-1]
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        for band, value in zip((1, 2, 3), DIRECTIONAL_LIGHT, strict=True):
            head.bias[light + 3 * band:light + 3 * band + 3] = value
    return model.set_stage("detail").eval()


def with_detail(render: EmocaModel, crop: Tensor, iterations: int = 10) -> Tensor:
    """``(1, 3, S, S)`` crop -> the crop with the fixed detail render composited inside the
    rendered face mask, iterated until the coarse codes of the composite reproduce it."""
    composite = crop
    for _ in range(iterations):
        with torch.no_grad():
            out = render(composite)
        assert out.detail is not None
        new = crop * (1 - out.coarse.masks) + out.detail.images
        moved = float((new - composite).abs().max())
        composite = new
        if moved < 1e-4:
            return composite
    raise AssertionError(f"composite did not settle: last move {moved}")


class DetailData(NamedTuple):
    table: Path
    config: Path
    coarse: Path
    displacement: Tensor


@pytest.fixture(scope="module")
def detail_data(procedural_assets: Path, synthetic_dataset: Path,
                tmp_path_factory: pytest.TempPathFactory) -> DetailData:
    folder = tmp_path_factory.mktemp("detail_learning")
    coarse_config = folder / "coarse.yaml"
    coarse_config.write_text(yaml.safe_dump({**BASE, "assets": str(procedural_assets)}))
    source = synthetic_dataset / "synthetic.parquet"
    model = coarse_model(coarse_config, source)
    coarse_path = save_emoca_checkpoint(folder / "coarse" / "model.pt", model)
    displacement = smooth_symmetric_displacement(model)
    render = copy.deepcopy(model)
    render.D_detail = FixedDisplacement(displacement)

    data = EmocaDataModule(source, load_emoca_settings(coarse_config), "detail")
    (folder / "photos" / "images").mkdir(parents=True)
    rows: dict[str, list] = {"path": [], "identity": [], "split": [], "landmarks": []}
    for split in SPLITS:
        dataset = data.dataset(split, augment=False)
        for item in range(len(dataset)):
            sample = dataset[item]
            photo = with_detail(render, sample["image"][None])[0]
            pixels = (photo.permute(1, 2, 0).numpy() * 255).round().clip(0, 255)
            relative = f"images/{split}-{item:03d}.png"
            assert cv2.imwrite(str(folder / "photos" / relative),
                               pixels.astype(np.uint8)[..., ::-1])
            transform = dataset.crop_transform(item, jitter=False)
            rows["path"].append(relative)
            rows["identity"].append(int(sample["identity"]))
            rows["split"].append(split)
            rows["landmarks"].append(
                transform_points(dataset.landmarks[item], transform).reshape(-1).tolist())
    table = folder / "photos" / "detail.parquet"
    pq.write_table(pa.table({
        "path": rows["path"], "identity": pa.array(rows["identity"], pa.int64()),
        "split": rows["split"], "landmarks": pa.array(rows["landmarks"],
                                                      pa.list_(pa.float32(), 136))}), table)
    config = folder / "detail.yaml"
    config.write_text(yaml.safe_dump({**BASE, "init": str(coarse_path), "max_steps": STEPS,
                                      "learning_rate": LEARNING_RATE}))
    return DetailData(table, config, coarse_path, displacement)


def _held_out(data: DetailData) -> dict[str, Tensor]:
    module = EmocaDataModule(data.table, load_emoca_settings(data.config), "detail")
    splits = [module.dataset(name, augment=False) for name in HELD_OUT]
    # The 64 px photos are their own crops: the data module cuts them out unchanged.
    np.testing.assert_allclose(splits[0].crop_transform(0, jitter=False), np.eye(3),
                               atol=1e-4)
    return torch.utils.data.default_collate(
        [split[i] for split in splits for i in range(len(split))])


def _photometric_uv(model: EmocaModel, data: DetailData, batch: dict[str, Tensor]) -> float:
    weights = load_emoca_settings(data.config).detail
    module = EmocaModule(copy.deepcopy(model), "detail", None, EmocaDetailLoss(weights),
                         LEARNING_RATE)
    module.model.eval()
    with torch.no_grad():
        _, metrics = module.losses(batch, training=False)
    return float(metrics["photometric_uv"])


def test_detail_stage_learns_fixed_detail_on_held_out_identities(
        detail_data: DetailData) -> None:
    batch = _held_out(detail_data)
    assert set(batch["identity"].tolist()).isdisjoint(
        EmocaDataModule(detail_data.table, load_emoca_settings(detail_data.config), "detail")
        .dataset("train", augment=False).identity.tolist())
    coarse = load_emoca_checkpoint(detail_data.coarse)
    before = _photometric_uv(coarse, detail_data, batch)
    # The photos hold detail that the detail branch explains: the generating map does
    # better than the untrained D_detail.
    ideal = copy.deepcopy(coarse)
    ideal.D_detail = FixedDisplacement(detail_data.displacement)
    reachable = _photometric_uv(ideal, detail_data, batch)
    assert reachable < 0.8 * before, (before, reachable)

    torch.manual_seed(0)
    result = train_emoca("detail", detail_data.config, detail_data.table,
                         detail_data.config.parent / "out",
                         results_dir=detail_data.config.parent / "results")
    trained = load_emoca_checkpoint(result.model_path)
    after = _photometric_uv(trained, detail_data, batch)
    # Seen: before 0.391, generating map 0.269, after 0.273 (ratio 0.70; 0.66 with seeds
    # 1 and 2 of the config and the map).
    assert after < 0.85 * before, (before, reachable, after)
    # Only the detail branch trained: E_flame is the coarse model's.
    for key, value in coarse.E_flame.state_dict().items():
        assert torch.equal(trained.E_flame.state_dict()[key], value), key
