"""EMOCA learns what the paper trains it for, measured on held-out images.

The stages chain as in the workflow, at 64 px with ResNet-18 encoders (CPU budget): a
short deca stage (E_flame from the FLAME assets, with the synthetic-assist terms, which the
demo's DECA stage may use) gives the frozen E_flame; then

* EMOCA's coarse stage with a FROZEN image emotion network (a randomly initialised
  EmotionImageNet saved as the model.pt ``emoca train emotion`` writes), E_expression
  starting at DECA's expression (``clone_expression_head``, as the demo config) and NO
  ground-truth terms must lower the emotion-consistency and photometric losses.

The detail stage's counterpart is tests/test_detail_learning.py: the synthetic photos are
rendered from the coarse mesh (12 steps moved ``photometric_uv`` on them by 0.1 %), so it
renders photos that hold a known displacement first.

"Held out" is every image of the val and test splits (identities never seen in training,
8 photos); the same batch is measured before and after, in eval mode, with the same loss.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import yaml

from emoca_pipeline.models.emoca import EmocaModel, load_emoca_checkpoint
from emoca_pipeline.models.emotion import EmotionImageNet, save_emotion_model
from emoca_pipeline.tracking import PARENT_RUN_ENV, WORKFLOW_ID_ENV
from emoca_pipeline.training.emoca_data import EmocaDataModule
from emoca_pipeline.training.emoca_job import (
    build_coarse_loss,
    build_model,
    prepare_model,
    train_emoca,
)
from emoca_pipeline.training.emoca_module import EmocaModule
from emoca_pipeline.training.emoca_settings import EmocaTrainingSettings, load_emoca_settings

HELD_OUT = ("val", "test")
BASE = {"name": "learn", "seed": 0, "model": {"image_size": 64, "encoder": "resnet18"},
        "batch_size": 8, "augment": False, "max_epochs": 1000, "val_every_n_epochs": 1000,
        "learning_rate": 1.0e-3, "recalibrate_batchnorm": 2}


@pytest.fixture(autouse=True)
def no_inherited_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    monkeypatch.delenv(WORKFLOW_ID_ENV, raising=False)
    yield


def _config(path: Path, **values: Any) -> Path:
    path.write_text(yaml.safe_dump({**BASE, **values}))
    return path


def _held_out(table: Path, settings: EmocaTrainingSettings, stage: str
              ) -> dict[str, torch.Tensor]:
    data = EmocaDataModule(table, settings, stage)  # type: ignore[arg-type]
    samples = [split[i] for split in (data.dataset(name, augment=False) for name in HELD_OUT)
               for i in range(len(split))]
    return torch.utils.data.default_collate(samples)


def _measure(module: EmocaModule, model: EmocaModel, batch: dict[str, torch.Tensor]
             ) -> dict[str, float]:
    module = copy.copy(module)
    module.model = copy.deepcopy(model).set_stage(module.stage).eval()
    with torch.no_grad():
        _, metrics = module.losses(batch, training=False)
    return {name: float(value) for name, value in metrics.items()}


class Stage(NamedTuple):
    config: Path
    model_path: Path
    before: dict[str, float]
    after: dict[str, float]


@pytest.fixture(scope="module")
def deca_model(synthetic_dataset: Path, procedural_assets: Path,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 steps of the deca stage with the synthetic-assist terms: the frozen E_flame."""
    folder = tmp_path_factory.mktemp("deca")
    config = _config(folder / "deca.yaml", assets=str(procedural_assets), max_steps=40,
                     synthetic_assist=True, shape_consistency=False, deca={
                         "emotion": 0.0, "landmark": 1.0, "eye_distance": 1.0,
                         "lip_distance": 0.5, "photometric": 2.0, "expression_reg": 1.0e-4,
                         "shape_reg": 1.0e-4, "tex_reg": 1.0e-4, "light_reg": 1.0,
                         "gt_shape": 1.0, "gt_exp": 1.0, "gt_pose": 1.0, "gt_cam": 1.0})
    torch.manual_seed(0)
    result = train_emoca("deca", config, synthetic_dataset / "synthetic.parquet",
                         folder / "out", results_dir=folder / "results")
    return result.model_path


@pytest.fixture(scope="module")
def coarse_stage(deca_model: Path, synthetic_dataset: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Stage:
    folder = tmp_path_factory.mktemp("coarse")
    torch.manual_seed(0)
    emotion = save_emotion_model(folder / "emotion" / "model.pt",
                                 EmotionImageNet(backbone="frnet"), "random", image_size=64)
    # EMOCA's coarse weights, no ground-truth terms; the emotion weight is scaled to the
    # feature scale of a random network (its MSE is ~3x a trained one's relative to the
    # other terms at 64 px; at 1.0 it pulls the expression away from the landmarks).
    config = _config(folder / "coarse.yaml", init=str(deca_model), clone_expression_trunk=True,
                     clone_expression_head=True,
                     max_steps=40, synthetic_assist=False,
                     coarse={"emotion": 0.3, "eye_distance": 0.5, "lip_distance": 0.5,
                             "mouth_corner": 0.5, "photometric": 2.0, "expression_reg": 1e-4})
    table = synthetic_dataset / "synthetic.parquet"
    settings = load_emoca_settings(config, emotion_network=emotion)
    model = prepare_model(build_model(settings), settings, "coarse")
    module = EmocaModule(model, "coarse", build_coarse_loss(settings, settings.coarse), None,
                         1e-3)
    batch = _held_out(table, settings, "coarse")
    before = _measure(module, model, batch)
    result = train_emoca("coarse", config, table, folder / "out",
                         results_dir=folder / "results", emotion_network=emotion)
    after = _measure(module, load_emoca_checkpoint(result.model_path), batch)
    return Stage(config, result.model_path, before, after)


def test_coarse_stage_with_a_frozen_emotion_network_learns_on_held_out_images(
        coarse_stage: Stage, deca_model: Path) -> None:
    before, after = coarse_stage.before, coarse_stage.after
    weights = load_emoca_settings(coarse_stage.config).coarse
    assert all(getattr(weights, f"gt_{name}") == 0 for name in ("shape", "exp", "pose", "cam"))
    # Seen (seed 0, E_expression's head cloned from DECA's): emotion 0.0428 -> 0.0416,
    # photometric 0.0727 -> 0.0715. The random emotion network pulls the expression away
    # from the landmarks (eye 0.0146 -> 0.0152, lip 0.0212 -> 0.0212, mouth corner
    # 0.0288 -> 0.0379): not asserted; a trained network is what the DAG uses.
    assert after["emotion"] < 0.99 * before["emotion"], (before, after)
    assert after["photometric"] < 0.995 * before["photometric"], (before, after)
    # E_flame stayed DECA's (frozen), so shape, pose and camera did not move.
    deca = load_emoca_checkpoint(deca_model)
    coarse = load_emoca_checkpoint(coarse_stage.model_path)
    for key, value in deca.E_flame.state_dict().items():
        assert torch.equal(coarse.E_flame.state_dict()[key], value), key
