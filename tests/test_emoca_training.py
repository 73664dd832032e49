"""EMOCA training on the synthetic data: camera conventions, learning, MLflow records.

The stages chain as in the workflow: deca (E_flame from scratch) -> coarse (E_expression,
E_flame frozen) -> detail. Learning is shown by overfitting 4 training photos: a few dozen
full-batch steps must cut the landmark and photometric losses and the expression error
against the ground truth, measured in eval mode before and after.
"""

from __future__ import annotations

import copy
import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from emoca_pipeline.data.crop import crop_transform, transform_points
from emoca_pipeline.losses.emoca import CoarseLossWeights, EmocaCoarseLoss
from emoca_pipeline.models.emoca import EmocaCodes, EmocaModel, load_emoca_checkpoint
from emoca_pipeline.render import ndc_to_pixels, project_landmarks
from emoca_pipeline.tracking import PARENT_RUN_ENV, WORKFLOW_ID_ENV, default_tracking_uri
from emoca_pipeline.training.emoca_data import EmocaDataModule, crop_camera
from emoca_pipeline.training.emoca_job import (
    EmocaTrainingResult,
    build_model,
    fit_camera,
    prepare_model,
    train_emoca,
)
from emoca_pipeline.training.emoca_module import EmocaModule, exchange_order
from emoca_pipeline.training.emoca_settings import load_emoca_settings

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"

IMAGE_SIZE = 64
N_TRAIN = 4


@pytest.fixture(autouse=True)
def no_inherited_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may run inside a workflow job: start without its parent-run variables."""
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    monkeypatch.delenv(WORKFLOW_ID_ENV, raising=False)


@pytest.fixture(scope="module")
def table(synthetic_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic table cut to 4 training photos (one full batch) and the val split."""
    data = pq.read_table(synthetic_dataset / "synthetic.parquet")
    split = np.asarray(data.column("split").to_pylist())
    rows = np.concatenate([np.flatnonzero(split == "train")[:N_TRAIN],
                           np.flatnonzero(split == "val")])
    data = data.take(pa.array(rows))
    paths = [str(synthetic_dataset / p) for p in data.column("path").to_pylist()]
    data = data.set_column(data.schema.get_field_index("path"), "path", pa.array(paths))
    out = tmp_path_factory.mktemp("table") / "train8.parquet"
    pq.write_table(data, out)
    return out


def _write_config(path: Path, **values: Any) -> Path:
    base = {"name": "test", "seed": 0, "model": {"image_size": IMAGE_SIZE}, "batch_size": N_TRAIN,
            "augment": False, "max_epochs": 1000, "patience": 5, "learning_rate": 1.0e-3,
            "recalibrate_batchnorm": 1}
    path.write_text(yaml.safe_dump({**base, **values}))
    return path


def _train_batch(table: Path, config: Path, stage: str) -> dict[str, torch.Tensor]:
    data = EmocaDataModule(table, load_emoca_settings(config), stage)  # type: ignore[arg-type]
    train = data.dataset("train", augment=False)
    return torch.utils.data.default_collate([train[i] for i in range(len(train))])


def _metrics(model: EmocaModel, stage: str, config: Path, batch: dict[str, torch.Tensor]
             ) -> dict[str, float]:
    settings = load_emoca_settings(config)
    weights = settings.deca if stage == "deca" else settings.coarse
    module = EmocaModule(copy.deepcopy(model), stage, EmocaCoarseLoss(weights), None,  # type: ignore[arg-type]
                         1e-3).eval()
    with torch.no_grad():
        _, metrics = module.losses(batch, training=False)
    return {k: float(v) for k, v in metrics.items()}


class Run(NamedTuple):
    before: EmocaModel
    result: EmocaTrainingResult
    config: Path
    results_dir: Path


DECA_WEIGHTS = {"emotion": 0.0, "landmark": 1.0, "eye_distance": 1.0, "lip_distance": 0.5,
                "photometric": 2.0, "expression_reg": 1.0e-4, "shape_reg": 1.0e-4,
                "tex_reg": 1.0e-4, "light_reg": 1.0, "gt_shape": 1.0, "gt_exp": 1.0,
                "gt_pose": 1.0, "gt_cam": 1.0}
DECA_STEPS = 40
COARSE_STEPS = 15


@pytest.fixture(scope="module")
def deca_run(table: Path, procedural_assets: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Run:
    """40 full-batch steps of the deca stage from the assets, tracked in the default sqlite
    store of a results folder."""
    folder = tmp_path_factory.mktemp("deca")
    config = _write_config(folder / "deca.yaml", assets=str(procedural_assets),
                           deca=DECA_WEIGHTS, max_steps=DECA_STEPS,
                           val_every_n_epochs=DECA_STEPS, synthetic_assist=True,
                           shape_consistency=False)
    settings = load_emoca_settings(config)
    data = EmocaDataModule(table, settings, "deca")
    torch.manual_seed(0)  # the init does not depend on the tests run before
    model = prepare_model(build_model(settings), settings, "deca", data)
    before = copy.deepcopy(model).eval()
    result = train_emoca("deca", config, table, folder / "out", results_dir=folder / "results",
                         model=model)
    return Run(before, result, config, folder / "results")


@pytest.fixture(scope="module")
def coarse_run(deca_run: Run, table: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The coarse stage from the deca model: E_expression cloned, E_flame frozen."""
    folder = tmp_path_factory.mktemp("coarse")
    config = _write_config(
        folder / "coarse.yaml", init=str(deca_run.result.model_path),
        clone_expression_trunk=True, max_steps=COARSE_STEPS, val_every_n_epochs=COARSE_STEPS,
        learning_rate=3.0e-4, coarse={"emotion": 0.0, "gt_exp": 1.0}, synthetic_assist=True)
    settings = load_emoca_settings(config)
    torch.manual_seed(0)
    model = prepare_model(build_model(settings), settings, "coarse")
    before = copy.deepcopy(model).eval()
    result = train_emoca("coarse", config, table, folder / "out",
                         results_dir=folder / "results", model=model)
    return Run(before, result, config, folder / "results")


# ------------------------------------------------------------------------ camera conventions


def test_crop_camera_moves_projections_with_the_crop(procedural_assets: Path) -> None:
    """Points projected with the photo's camera and mapped through the crop transform land
    where the crop's camera projects them, for shifted and scaled boxes."""
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.normal(0.0, 0.08, (1, 30, 3)).astype(np.float64))
    photo_size, crop_size = 320, 96
    for _ in range(5):
        cam = np.array([rng.uniform(3, 9), rng.uniform(-0.05, 0.05), rng.uniform(-0.05, 0.05)])
        transform = crop_transform(rng.uniform(80, 240, 2), rng.uniform(60, 200), crop_size)
        in_photo = ndc_to_pixels(project_landmarks(points, torch.from_numpy(cam)[None]),
                                 photo_size)[0].numpy()
        expected = transform_points(in_photo, transform)
        moved = crop_camera(cam, transform, photo_size, crop_size)
        got = ndc_to_pixels(project_landmarks(points, torch.from_numpy(moved)[None]),
                            crop_size)[0].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-9)
        assert moved[0] == pytest.approx(cam[0] * transform[0, 0] * photo_size / crop_size)
    batch = crop_camera(np.stack([cam, cam]), transform, photo_size, crop_size)
    np.testing.assert_allclose(batch, np.stack([moved, moved]))
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    with pytest.raises(ValueError, match="transform: expected a .* scale-and-shift"):
        crop_camera(cam, rotation, photo_size, crop_size)


def test_ground_truth_codes_render_onto_the_jittered_crop(table: Path, procedural_assets: Path,
                                                          tmp_path: Path) -> None:
    """The table's codes, camera moved into each (jittered) crop, decoded by the model: the
    landmarks are the crop's and the render matches the photo; the photo's own camera
    does not."""
    config = _write_config(tmp_path / "c.yaml", assets=str(procedural_assets), augment=True)
    data = EmocaDataModule(table, load_emoca_settings(config), "deca")
    train = data.dataset("train", augment=True)
    batch = torch.utils.data.default_collate([train[i] for i in range(4)])
    rows = pq.read_table(table).slice(0, 4)
    tex = torch.tensor(rows.column("tex").to_pylist())
    light = torch.tensor(rows.column("light").to_pylist()).reshape(-1, 9, 3)
    photo_cam = torch.tensor(rows.column("cam").to_pylist())
    model = EmocaModel.from_assets(procedural_assets, load_emoca_settings(config).model).eval()
    codes = EmocaCodes(batch["shape"], tex, batch["exp"], batch["pose"], batch["cam"], light,
                       None)
    with torch.no_grad():
        right = model.decode_coarse(codes)
        wrong = model.decode_coarse(codes._replace(cam=photo_cam))
    assert (right.landmarks2d - batch["landmarks"]).abs().max() < 1e-4
    assert (wrong.landmarks2d - batch["landmarks"]).abs().max() > 0.1
    # Per covered pixel (the crops also carry the augmentation's brightness jitter).
    error = [(out.masks * (out.images - batch["image"]).abs()).sum() / out.masks.sum()
             for out in (right, wrong)]
    assert right.masks.mean() > 0.2 and error[0] < 0.08 and error[0] < 0.5 * error[1], error


def test_fit_camera_recovers_a_known_camera() -> None:
    template = np.random.default_rng(1).normal(0.0, 0.05, (68, 2))
    cam = np.array([7.5, 0.02, -0.03])
    target = np.stack([cam[0] * (template[:, 0] + cam[1]),
                       cam[0] * (template[:, 1] - cam[2])], axis=1)  # y of (x, -y) flipped
    np.testing.assert_allclose(fit_camera(template, target), cam, atol=1e-12)


def test_deca_regularisers_and_ground_truth_terms_by_hand() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 3
    codes = {"shape": torch.randn(n, 100, generator=gen), "tex": torch.randn(n, 50, generator=gen),
             "pose": torch.randn(n, 6, generator=gen), "cam": torch.randn(n, 3, generator=gen),
             "light": torch.randn(n, 9, 3, generator=gen)}
    exp = torch.randn(n, 50, generator=gen)
    truth = {"shape": torch.randn(n, 100, generator=gen), "exp": torch.randn(n, 50, generator=gen),
             "pose": torch.randn(n, 6, generator=gen), "cam": torch.randn(n, 3, generator=gen)}
    images = torch.rand(n, 3, 8, 8, generator=gen)
    landmarks = torch.rand(n, 68, 2, generator=gen)
    weights = CoarseLossWeights(emotion=0.0, shape_reg=1e-4, tex_reg=2e-4, light_reg=1.0,
                                gt_shape=1.0, gt_exp=0.5, gt_pose=1.0, gt_cam=2.0)
    terms = EmocaCoarseLoss(weights)(images, landmarks, exp, images, landmarks,
                                     torch.ones(n, 1, 8, 8), codes=codes, ground_truth=truth)
    light = codes["light"].numpy()
    expected = {
        "shape_reg": 1e-4 * (codes["shape"].numpy() ** 2).sum() / 2,
        "tex_reg": 2e-4 * (codes["tex"].numpy() ** 2).sum() / 2,
        "light_reg": ((light - light.mean(axis=2, keepdims=True)) ** 2).mean(),
        "gt_shape": ((codes["shape"].numpy() - truth["shape"].numpy()) ** 2).mean(),
        "gt_exp": 0.5 * ((exp.numpy() - truth["exp"].numpy()) ** 2).mean(),
        "gt_pose": ((codes["pose"].numpy() - truth["pose"].numpy()) ** 2).mean(),
        "gt_cam": 2.0 * ((codes["cam"].numpy() - truth["cam"].numpy()) ** 2).mean(),
    }
    for name, value in expected.items():
        assert float(terms.terms[name]) == pytest.approx(value, rel=1e-5), name
    # Identical renders and landmarks: the total is the regularisers and ground-truth terms.
    rest = float(terms.terms["expression_reg"])
    assert float(terms.total) == pytest.approx(sum(expected.values()) + rest, rel=1e-5)
    with pytest.raises(ValueError, match="gt_shape > 0 needs predicted and ground-truth shape"):
        EmocaCoarseLoss(weights)(images, landmarks, exp, images, landmarks,
                                 torch.ones(n, 1, 8, 8), codes=codes)
    with pytest.raises(ValueError, match="light_reg > 0 needs the predicted light"):
        EmocaCoarseLoss(CoarseLossWeights(emotion=0.0, light_reg=1.0))(
            images, landmarks, exp, images, landmarks, torch.ones(n, 1, 8, 8))


def test_settings_errors_name_the_problem(tmp_path: Path, table: Path) -> None:
    config = _write_config(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="assets or init: one must be given"):
        build_model(load_emoca_settings(config))
    with pytest.raises(FileNotFoundError, match="init .*nothing.pt: no such file"):
        load_emoca_settings(config, init=tmp_path / "nothing.pt")
    bad = _write_config(tmp_path / "bad.yaml", recalibrate_batchnorm=-1)
    with pytest.raises(ValueError, match="bad.yaml: recalibrate_batchnorm: must be >= 0"):
        load_emoca_settings(bad)
    with pytest.raises(ValueError, match="stage: expected one of deca, coarse, detail"):
        train_emoca("fine", config, table, tmp_path / "out")  # type: ignore[arg-type]
    # A loss term on without its network: an error naming the file, before any MLflow run.
    emotion = _write_config(tmp_path / "emotion.yaml", coarse={"emotion": 1.0})
    with pytest.raises(ValueError, match=r"emotion\.yaml: coarse\.emotion = 1\.0 needs "):
        train_emoca("coarse", emotion, table, tmp_path / "out", results_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    rows = pq.read_table(table)
    wide = rows.set_column(rows.schema.get_field_index("width"), "width",
                           pa.array(np.full(rows.num_rows, 999, np.int32)))
    pq.write_table(wide, tmp_path / "wide.parquet")
    with pytest.raises(ValueError, match="wide.parquet: row 0 .* cam needs square photos"):
        EmocaDataModule(tmp_path / "wide.parquet", load_emoca_settings(config), "deca")


# ------------------------------------------------------------------------ settings of issue 11


def test_ground_truth_terms_need_synthetic_assist(tmp_path: Path) -> None:
    gt = _write_config(tmp_path / "gt.yaml", coarse={"emotion": 0.0, "gt_exp": 1.0})
    with pytest.raises(ValueError, match=r"gt\.yaml: coarse\.gt_exp = 1\.0: ground-truth terms "
                                         r"are not EMOCA; set synthetic_assist: true"):
        load_emoca_settings(gt)
    both = _write_config(tmp_path / "both.yaml", paper=True, synthetic_assist=True)
    with pytest.raises(ValueError, match="both.yaml: synthetic_assist: true is not allowed "
                                         "with paper: true"):
        load_emoca_settings(both)
    cloned = _write_config(tmp_path / "cloned.yaml", paper=True, clone_expression_head=True)
    with pytest.raises(ValueError, match="cloned.yaml: clone_expression_head: true is not "
                                         "allowed with paper: true"):
        load_emoca_settings(cloned)
    assisted = _write_config(tmp_path / "ok.yaml", synthetic_assist=True,
                             deca={"gt_cam": 1.0})
    assert load_emoca_settings(assisted).deca.gt_cam == 1.0


def test_paper_configs_refuse_what_switches_off_the_method(tmp_path: Path) -> None:
    """The paper configs load; each fails until its loss networks are given, then passes;
    the demo's coarse config has no ground-truth terms."""
    needs = {"deca": "deca.identity = 0.2 needs vggface2_weights",
             "coarse": "coarse.emotion = 1.0 needs emotion_network",
             "detail": "detail.idmrf = 0.25 needs vgg19_weights"}
    given = {"deca": "vggface2_weights", "coarse": "emotion_network", "detail": "vgg19_weights"}
    for stage, message in needs.items():
        settings = load_emoca_settings(CONFIG_DIR / f"emoca_paper_{stage}.yaml")
        assert settings.paper and not settings.synthetic_assist
        assert settings.stage_learning_rate(stage) == {"deca": 1e-4, "coarse": 5e-5,
                                                       "detail": 1e-4}[stage]
        with pytest.raises(ValueError, match=message):
            settings.check_stage(stage)  # type: ignore[arg-type]
        settings.model_copy(update={given[stage]: "w.pt"}).check_stage(stage)  # type: ignore[arg-type]
    deca = load_emoca_settings(CONFIG_DIR / "emoca_paper_deca.yaml").model_copy(
        update={"vggface2_weights": "w.pkl"})
    assert deca.shape_consistency and deca.k_per_identity == 4
    for change, message in (({"shape_consistency": False}, "shape_consistency: false"),
                            ({"use_segmentation": False}, "use_segmentation: false")):
        with pytest.raises(ValueError, match=message):
            deca.model_copy(update=change).check_stage("deca")
    # Outside paper configs ID-MRF without weights is off (logged), not an error.
    load_emoca_settings(CONFIG_DIR / "emoca_detail.yaml").check_stage("detail")
    coarse = load_emoca_settings(CONFIG_DIR / "emoca_coarse.yaml")
    assert not coarse.synthetic_assist and coarse.coarse.gt_exp == 0.0


def test_exchange_permutes_codes_within_each_identity() -> None:
    generator = torch.Generator().manual_seed(0)
    identity = torch.tensor([3, 3, 3, 3, 7, 7, 7, 7, 5])
    order = exchange_order(identity, generator)
    assert sorted(order.tolist()) == list(range(9))
    assert torch.equal(identity[order], identity)
    assert (order != torch.arange(9)).any()
    # The deca stage doubles the batch: the second half has the shapes exchanged.
    module = EmocaModule.__new__(EmocaModule)
    torch.nn.Module.__init__(module)
    module.stage, module.shape_consistency, module.generator = "deca", True, generator
    n = 4
    codes = EmocaCodes(torch.randn(n, 5), torch.randn(n, 2), torch.randn(n, 3), torch.randn(n, 6),
                       torch.randn(n, 3), torch.randn(n, 9, 3), None)
    batch = {"image": torch.rand(n, 3, 4, 4), "landmarks": torch.rand(n, 68, 2),
             "identity": torch.tensor([0, 0, 1, 1]), "exp": torch.randn(n, 3)}
    doubled, exchanged = module.exchanged(batch, codes, training=True)
    assert torch.equal(doubled["image"], torch.cat([batch["image"]] * 2))
    assert torch.equal(doubled["exp"], torch.cat([batch["exp"]] * 2))
    assert torch.equal(exchanged.exp, torch.cat([codes.exp] * 2))
    assert torch.equal(exchanged.shape[:n], codes.shape)
    rows = [int(torch.nonzero((codes.shape == row).all(1))[0]) for row in exchanged.shape[n:]]
    assert sorted(rows) == list(range(n))
    assert all(batch["identity"][r] == batch["identity"][i] for i, r in enumerate(rows))
    assert module.exchanged(batch, codes, training=False)[1] is codes


def test_manifest_crops_equal_the_table_crops_and_codes_join_on_image_id(
        synthetic_dataset: Path, tmp_path: Path) -> None:
    """`emoca manifest build` on the synthetic photos (ground-truth landmarker): the data
    module cuts the same crops from the manifest's crop_transform as from the table's
    landmarks, and joins the ground-truth codes on image_id."""
    from emoca_pipeline.data.detect import DetectSettings, run_detection
    from emoca_pipeline.data.manifest import build_manifest

    table = synthetic_dataset / "synthetic.parquet"
    run_detection(table, tmp_path / "det", DetectSettings(landmarker="gt", shard_size=7),
                  progress=False)
    build_manifest(tmp_path / "det", tmp_path / "manifest", "synthetic", [table])
    config = _write_config(tmp_path / "c.yaml", codes_table=str(table))
    settings = load_emoca_settings(config)
    for folder in (tmp_path / "manifest", tmp_path / "manifest" / "dataset=synthetic"):
        from_manifest = EmocaDataModule(folder, settings, "coarse").dataset("val", False)
        from_table = EmocaDataModule(table, settings, "coarse").dataset("val", False)
        order = {p: i for i, p in enumerate(from_table.paths)}
        assert sorted(order) == sorted(from_manifest.paths)
        for i, path in enumerate(from_manifest.paths):
            a, b = from_manifest[i], from_table[order[path]]
            assert set(a) == set(b) >= {"image", "landmarks", "exp", "cam", "shape", "pose"}
            for key in b:
                if key != "identity":
                    torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-5)
    other = _write_config(tmp_path / "d.yaml", datasets=["affectnet"])
    with pytest.raises(ValueError, match="no rows of datasets affectnet"):
        EmocaDataModule(tmp_path / "manifest", load_emoca_settings(other), "coarse")


def test_mediapipe_points_and_segmentation_masks_follow_the_crop(table: Path,
                                                                 tmp_path: Path) -> None:
    rows = pq.read_table(table)
    landmarks = np.asarray(rows.column("landmarks").to_pylist()).reshape(-1, 68, 2)
    rng = np.random.default_rng(0)
    mesh = rng.uniform(40, 120, (rows.num_rows, 478, 2))
    mesh[:, :68] = landmarks  # the 68 landmarks' crop frame is the reference
    masks = []
    for i in range(rows.num_rows):
        mask = np.zeros((160, 160), np.uint8)
        mask[50:110, 60:100] = 255
        name = tmp_path / f"mask{i}.png"
        cv2.imwrite(str(name), mask)
        masks.append(str(name))
    extra = rows.append_column("mediapipe_landmarks", pa.array(
        mesh.reshape(rows.num_rows, -1).tolist(), pa.list_(pa.float32(), 956)))
    extra = extra.append_column("seg_mask", pa.array(masks))
    pq.write_table(extra, tmp_path / "extra.parquet")
    config = _write_config(tmp_path / "c.yaml")
    data = EmocaDataModule(tmp_path / "extra.parquet", load_emoca_settings(config), "deca")
    train = data.dataset("train", augment=False)
    sample = train[0]
    torch.testing.assert_close(sample["mediapipe_landmarks"][:68], sample["landmarks"],
                               atol=1e-4, rtol=0)
    # Brute force: a crop pixel is inside when its photo point is in the rectangle.
    transform = np.linalg.inv(train.crop_transform(0, jitter=False))
    u, v = np.meshgrid(np.arange(IMAGE_SIZE), np.arange(IMAGE_SIZE))
    x, y = (transform @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)]))[:2]
    expected = ((x >= 59.5) & (x <= 99.5) & (y >= 49.5) & (y <= 109.5)).reshape(u.shape)
    got = sample["seg_mask"][0].numpy() > 0.5
    assert sample["seg_mask"].shape == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert expected.sum() > 100 and (got != expected).mean() < 0.02


def test_inputs_missing_for_a_term_fail_before_any_run(table: Path, procedural_assets: Path,
                                                       tmp_path: Path) -> None:
    mediapipe = _write_config(tmp_path / "mp.yaml", assets=str(procedural_assets),
                              coarse={"emotion": 0.0, "mediapipe_eye_distance": 0.5})
    with pytest.raises(ValueError, match=r"train8\.parquet.*mediapipe_eye_distance = 0\.5 "
                                         r"needs a 'mediapipe_landmarks' column"):
        train_emoca("coarse", mediapipe, table, tmp_path / "out", results_dir=tmp_path / "r")
    lips = _write_config(tmp_path / "lips.yaml", coarse={"emotion": 0.0, "lip_reading": 1.0})
    with pytest.raises(ValueError, match=r"lips\.yaml: coarse\.lip_reading = 1\.0 needs "
                                         "lipreading_weights"):
        train_emoca("coarse", lips, table, tmp_path / "out", results_dir=tmp_path / "r")
    paper = _write_config(tmp_path / "paper.yaml", paper=True, deca={"emotion": 0.0})
    with pytest.raises(ValueError, match=r"train8\.parquet: no seg_mask column; the deca stage "
                                         "of a config that mirrors the paper"):
        train_emoca("deca", paper, table, tmp_path / "out", results_dir=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_emotion_network_runs_at_its_own_size_and_normalisation(tmp_path: Path) -> None:
    import torch.nn.functional as F

    from emoca_pipeline.models.emotion import EmoMLP, EmotionImageNet, save_emotion_model
    from emoca_pipeline.training.emoca_job import load_emotion_network

    torch.manual_seed(0)
    network = EmotionImageNet(backbone="torchvision", input_normalization="imagenet").eval()
    save_emotion_model(tmp_path / "model.pt", network, "small", image_size=32)
    loaded = load_emotion_network(tmp_path / "model.pt")
    assert loaded.image_size == 32 and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    small = F.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = network.trunk((small - mean) / std)
        torch.testing.assert_close(loaded.features(images), expected)
    save_emotion_model(tmp_path / "mlp.pt", EmoMLP(), "codes")
    with pytest.raises(ValueError, match="a network on 3DMM codes"):
        load_emotion_network(tmp_path / "mlp.pt")


def test_identity_loss_and_shape_exchange_in_a_deca_step(table: Path, procedural_assets: Path,
                                                         tmp_path: Path) -> None:
    """DECA's identity term on the render pasted over the input (a saved FRNet), with the
    shape exchange: finite, and its gradient reaches E_flame."""
    from emoca_pipeline.models.frnet import FRNetResNet50
    from emoca_pipeline.training.emoca_job import build_coarse_loss

    torch.manual_seed(0)
    torch.save(FRNetResNet50().state_dict(), tmp_path / "frnet.pt")
    config = _write_config(tmp_path / "c.yaml", assets=str(procedural_assets),
                           vggface2_weights=str(tmp_path / "frnet.pt"), batch_size=2,
                           k_per_identity=2, model={"image_size": IMAGE_SIZE,
                                                    "encoder": "resnet18"},
                           deca={"emotion": 0.0, "identity": 0.2, "photometric": 2.0,
                                 "landmark": 1.0})
    settings = load_emoca_settings(config)
    data = EmocaDataModule(table, settings, "deca")
    batch = next(iter(data.train_dataloader()))
    assert batch["identity"][0] == batch["identity"][1]  # identities x K
    model = prepare_model(build_model(settings), settings, "deca", data)
    module = EmocaModule(model, "deca", build_coarse_loss(settings, settings.deca), None, 1e-4,
                         shape_consistency=True)
    module.model.train()
    loss, metrics = module.losses(batch, training=True)
    loss.backward()
    assert math.isfinite(float(metrics["identity"])) and float(metrics["identity"]) > 0
    grad = module.model.E_flame.layers[-1].weight.grad
    assert grad is not None and grad.abs().sum() > 0


# ------------------------------------------------------------------------ learning


def test_deca_stage_reduces_landmark_photometric_and_expression_error(
        deca_run: Run, table: Path) -> None:
    batch = _train_batch(table, deca_run.config, "deca")
    before = _metrics(deca_run.before, "deca", deca_run.config, batch)
    after = _metrics(load_emoca_checkpoint(deca_run.result.model_path), "deca",
                     deca_run.config, batch)
    # after / before seen over init seeds 0, 1, 2: landmark 0.42-0.82, photometric
    # 0.56-0.68, expression error 0.19-0.34, camera 0.13-0.18.
    assert after["landmark"] < 0.9 * before["landmark"], (before, after)
    assert after["photometric"] < 0.8 * before["photometric"], (before, after)
    assert after["exp_error"] < 0.6 * before["exp_error"], (before, after)
    assert after["gt_cam"] < 0.5 * before["gt_cam"], (before, after)


def test_coarse_stage_trains_only_the_expression_encoder(coarse_run: Run, deca_run: Run,
                                                         table: Path) -> None:
    deca = load_emoca_checkpoint(deca_run.result.model_path)
    coarse = load_emoca_checkpoint(coarse_run.result.model_path)
    for key, value in deca.E_flame.state_dict().items():  # frozen, statistics included
        assert torch.equal(coarse.E_flame.state_dict()[key], value), key
    # The clone copied the trained trunk before training (the head is fresh, as EMOCA's).
    before_trunk = coarse_run.before.E_expression.encoder.state_dict()  # type: ignore[union-attr]
    for key, value in deca.E_flame.encoder.state_dict().items():
        assert torch.equal(before_trunk[key], value), key
    after_trunk = coarse.E_expression.encoder.state_dict()  # type: ignore[union-attr]
    assert not torch.equal(after_trunk["conv1.weight"], before_trunk["conv1.weight"])
    batch = _train_batch(table, coarse_run.config, "coarse")
    before = _metrics(coarse_run.before, "coarse", coarse_run.config, batch)
    after = _metrics(coarse, "coarse", coarse_run.config, batch)
    # Seen: 0.34 -> 0.09 (the fresh head starts far off; E_flame's landmarks stay put).
    assert after["exp_error"] < 0.6 * before["exp_error"], (before, after)
    assert after["landmark"] == pytest.approx(before["landmark"], abs=0.02)


# ------------------------------------------------------------------------ MLflow


def _check_run(client: MlflowClient, run_id: str, stage: str, steps: int, out: Path) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["stage"] == stage
    assert run.data.params["model.image_size"] == str(IMAGE_SIZE)
    assert run.data.tags["emoca.job"] == f"train_{stage}"
    assert run.data.tags.get("mlflow.parentRunId")
    history = client.get_metric_history(run_id, "train/loss")
    assert len(history) == steps and all(math.isfinite(m.value) for m in history)
    assert math.isfinite(run.data.metrics["val/loss"])
    top = {a.path: a for a in client.list_artifacts(run_id)}
    # No Lightning checkpoint by default (log_best_checkpoint: false): 79 M parameters.
    assert set(top) == {"model.pt", "training.json"}
    assert top["model.pt"].file_size == (out / "model.pt").stat().st_size  # the checkpoint
    summary = json.loads(Path(client.download_artifacts(run_id, "training.json")).read_text())
    assert summary["stage"] == stage and summary["mlflow_run_id"] == run_id


def test_deca_run_is_in_the_default_sqlite_store(deca_run: Run) -> None:
    assert (deca_run.results_dir / "mlflow.db").is_file()
    client = MlflowClient(default_tracking_uri(deca_run.results_dir))
    _check_run(client, deca_run.result.run_id, "deca", DECA_STEPS,
               deca_run.result.model_path.parent)
    assert client.get_run(deca_run.result.run_id).data.params["deca.gt_cam"] == "1.0"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (free port), up to 90 s to start."""
    folder = tmp_path_factory.mktemp("server")
    port = _free_port()
    log = open(folder / "server.log", "wb")  # noqa: SIM115 - closed in teardown
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(folder / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not answer /health within 90 s")
            time.sleep(0.5)
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
        log.close()


def test_detail_stage_runs_with_finite_losses_tracked_on_a_server(
        coarse_run: Run, table: Path, mlflow_server: str, tmp_path: Path) -> None:
    steps = 3
    config = _write_config(tmp_path / "detail.yaml", init=str(coarse_run.result.model_path),
                           batch_size=2, k_per_identity=2, max_steps=steps,
                           val_every_n_epochs=steps, learning_rate=1.0e-4,
                           limit_val_batches=1)
    result = train_emoca("detail", config, table, tmp_path / "out",
                         tracking_uri=mlflow_server, results_dir=tmp_path / "results")
    assert not (tmp_path / "results" / "mlflow.db").exists()  # the server got the run
    for name in ("val/loss", "val/photometric_uv", "val/z_reg", "val/z_diff", "val/z_sym"):
        assert math.isfinite(result.val_metrics[name]), name
    client = MlflowClient(mlflow_server)
    _check_run(client, result.run_id, "detail", steps, result.model_path.parent)
    metrics = client.get_run(result.run_id).data.metrics
    assert all(math.isfinite(metrics[f"train/{k}"]) for k in ("photometric_uv", "z_sym"))
    # ID-MRF has no VGG19 weights here: disabled, and the run says so.
    assert "disabled" in client.get_run(result.run_id).data.tags["emoca.loss.idmrf"]
    coarse = load_emoca_checkpoint(coarse_run.result.model_path)
    detail = load_emoca_checkpoint(result.model_path)
    assert torch.equal(coarse.E_expression.layers[2].weight,  # type: ignore[union-attr]
                       detail.E_expression.layers[2].weight)  # type: ignore[union-attr]
    assert not torch.equal(coarse.D_detail.l1[0].weight, detail.D_detail.l1[0].weight)
