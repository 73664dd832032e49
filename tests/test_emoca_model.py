"""EMOCA model: layout of the original's modules, frozen coarse encoder, checkpoint import."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

from emoca_pipeline.models.checkpoint_import import (
    CheckpointImportError,
    best_checkpoint,
    import_checkpoint,
    to_original_state_dict,
)
from emoca_pipeline.models.decoders import DetailGenerator
from emoca_pipeline.models.emoca import (
    EmocaModel,
    EmocaModelSettings,
    load_emoca_checkpoint,
    save_emoca_checkpoint,
)
from emoca_pipeline.models.encoders import ResnetEncoder, split_flame_code

SMALL = EmocaModelSettings(image_size=64)


@pytest.fixture(scope="module")
def model(procedural_assets: Path) -> EmocaModel:
    torch.manual_seed(0)
    m = EmocaModel.from_assets(procedural_assets, SMALL, use_texture=False)
    # Make eval-mode BatchNorm non-trivial, so that a lost running statistic shows.
    for module in m.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    # A head that puts the face in view: scale 7, no shift, small codes.
    with torch.no_grad():
        m.E_flame.layers[2].weight.mul_(0.01)
        m.E_flame.layers[2].bias.zero_()
        m.E_flame.layers[2].bias[SMALL.n_shape + SMALL.n_tex + SMALL.n_exp + 6] = 7.0
        m.E_flame.layers[2].bias[-27] = 3.0  # ambient light
    return m.eval()


def test_detail_decoder_has_the_original_layout_and_eps_quirk() -> None:
    decoder = DetailGenerator(181)
    expected = {"l1.0.weight", "l1.0.bias"}
    bn = [0, 3, 7, 11, 15, 19]
    conv = [2, 6, 10, 14, 18, 21]
    for i in bn:
        expected |= {f"conv_blocks.{i}.{n}" for n in
                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    for i in conv:
        expected |= {f"conv_blocks.{i}.weight", f"conv_blocks.{i}.bias"}
    assert set(decoder.state_dict()) == expected
    epsilons = [decoder.conv_blocks[i].eps for i in bn]
    assert epsilons == [1e-5] + [0.8] * 5
    ups = [m for m in decoder.conv_blocks if isinstance(m, torch.nn.Upsample)]
    assert len(ups) == 5 and all(u.mode == "bilinear" and not u.align_corners for u in ups)
    out = decoder.eval()(torch.randn(3, 181))
    assert out.shape == (3, 1, 256, 256) and out.abs().max() <= 0.01
    with pytest.raises(ValueError, match=r"latent: expected shape \(N, 181\)"):
        decoder(torch.randn(3, 180))


def test_flame_code_split_in_the_original_order() -> None:
    widths = SMALL.code_widths
    code = torch.arange(236, dtype=torch.float32)[None].repeat(2, 1)
    parts = split_flame_code(code, widths)
    assert parts["shape"][0, 0] == 0 and parts["tex"][0, 0] == 100
    assert parts["exp"][0, 0] == 150 and parts["pose"][0, 0] == 200
    assert parts["cam"][0].tolist() == [206, 207, 208]
    assert parts["light"].shape == (2, 9, 3) and parts["light"][0, 0].tolist() == [209, 210, 211]


def test_encoder_loads_a_local_torchvision_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet50(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet50.pth")
    encoder = ResnetEncoder(50, tmp_path / "resnet50.pth")
    assert torch.equal(encoder.encoder.conv1.weight, reference.conv1.weight)
    assert torch.equal(encoder.encoder.layer4[2].bn3.running_var,
                       reference.layer4[2].bn3.running_var)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        ResnetEncoder(50, tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ResnetEncoder(50, tmp_path / "missing.pth")


def test_resnet18_encoder_option_is_torchvisions_trunk_and_round_trips(
        procedural_assets: Path, tmp_path: Path) -> None:
    torch.manual_seed(2)
    reference = torchvision.models.resnet18(weights=None).eval()
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    encoder = ResnetEncoder(50, tmp_path / "resnet18.pth", backbone="resnet18").eval()
    images = torch.rand(2, 3, 64, 64)
    reference.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(encoder.features(images), reference(images))
    assert encoder.layers[0].in_features == 512
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match="r50.pth.*resnet18"):
        ResnetEncoder(50, tmp_path / "r50.pth", backbone="resnet18")
    with pytest.raises(ValueError, match="backbone"):
        ResnetEncoder(50, backbone="vgg16")
    settings = EmocaModelSettings(image_size=64, encoder="resnet18")
    light = EmocaModel.from_assets(procedural_assets, settings, use_texture=False).eval()
    assert light.E_expression is not None and light.E_expression.feature_dim == 512
    loaded = load_emoca_checkpoint(save_emoca_checkpoint(tmp_path / "m.pt", light))
    assert loaded.settings.encoder == "resnet18"
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(images, with_detail=False).exp,
                                   light.encode(images, with_detail=False).exp)


def test_cloned_expression_head_starts_at_flame_encoders_expression(
        procedural_assets: Path) -> None:
    torch.manual_seed(3)
    m = EmocaModel.from_assets(procedural_assets, SMALL, use_texture=False).eval()
    images = torch.rand(2, 3, 64, 64)
    start = SMALL.n_shape + SMALL.n_tex  # E_flame's code: shape, tex, exp, pose, cam, light
    with torch.no_grad():
        flame_exp = m.E_flame(images)[:, start:start + SMALL.n_exp]
        assert not torch.allclose(m.set_stage("coarse").encode(images, False).exp, flame_exp)
        m.clone_expression_trunk()
        m.clone_expression_head()
        torch.testing.assert_close(m.encode(images, with_detail=False).exp, flame_exp)
    no_expression = EmocaModel.from_assets(
        procedural_assets, dataclasses.replace(SMALL, expression_backbone="none"),
        use_texture=False)
    with pytest.raises(ValueError, match="no E_expression"):
        no_expression.clone_expression_head()


def test_flame_encoder_is_frozen_and_stays_in_eval_mode(model: EmocaModel) -> None:
    assert torch.equal(model.E_expression.encoder.conv1.weight, model.E_flame.encoder.conv1.weight)
    model.set_stage("coarse").train()
    try:
        assert not model.E_flame.training and model.E_expression.training
        assert not model.E_detail.training and not model.D_detail.training
        assert not any(p.requires_grad for p in model.E_flame.parameters())
        mean_before = model.E_flame.encoder.bn1.running_mean.clone()
        images = torch.rand(2, 3, 64, 64)
        out = model(images, with_detail=False)
        (out.coarse.landmarks2d.sum() + out.codes.exp.sum()).backward()
        assert torch.equal(model.E_flame.encoder.bn1.running_mean, mean_before)
        assert model.E_expression.layers[2].weight.grad is not None
        assert all(p.grad is None for p in model.E_flame.parameters())
        model.set_stage("detail")
        assert model.E_detail.training and not model.E_expression.training
    finally:
        model.zero_grad(set_to_none=True)
        model.set_stage("coarse").eval()


def test_decode_shapes_and_detail_normals(model: EmocaModel) -> None:
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    coarse, detail = out.coarse, out.detail
    assert coarse.images.shape == (2, 3, 64, 64) and coarse.landmarks2d.shape == (2, 68, 2)
    assert coarse.masks.sum() > 50  # the face is in view
    assert detail.uv_detail_normals.shape == (2, 3, 256, 256)
    inside = model.render.world2uv(coarse.vertices).abs().sum(1) > 0
    lengths = detail.uv_detail_normals.norm(dim=1)
    # Unit normals on the UV charts (DECA's vertex_normals normalises every dense vertex).
    assert ((lengths[inside] - 1).abs() < 1e-3).float().mean() > 0.95
    # With no displacement at all, detail normals are those of the dense coarse surface:
    # close to the interpolated coarse normals.
    zero = torch.zeros(2, 1, 256, 256)
    saved = model.fixed_uv_dis.clone()
    model.fixed_uv_dis.zero_()
    try:
        normals, _ = model.displacement2normal(zero, coarse.vertices, coarse.normals)
    finally:
        model.fixed_uv_dis.copy_(saved)
    coarse_uv = torch.nn.functional.normalize(model.render.world2uv(coarse.normals), dim=1)
    valid = (normals.norm(dim=1) > 0.5) & (coarse_uv.norm(dim=1) > 0.5)
    cosine = (normals * coarse_uv).sum(1)[valid]
    assert cosine.median() > 0.99


class FakeHyperParameters(dict):
    """Stands for the OmegaConf objects a Lightning 1.4 checkpoint carries."""


def _write_released_folder(model: EmocaModel, root: Path, settings: EmocaModelSettings) -> Path:
    folder = root / "EMOCA v2 ü"
    ckpt_dir = folder / "detail" / "checkpoints" / "deca-epoch=03-val_loss"
    ckpt_dir.mkdir(parents=True)
    model_cfg = {k: v for k, v in dataclasses.asdict(settings).items()}
    model_cfg["deca_class"] = "ExpDECA"
    cfg = {"coarse": {"model": dict(model_cfg, mode="coarse")},
           "detail": {"model": dict(model_cfg, mode="detail"), "learning": {"lr": 1e-4}}}
    (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    original = to_original_state_dict(model)
    assert original["deca.flame.full_lmk_faces_idx"].shape == (1, 68)  # the original's shape
    original["deca.perceptual_loss.featlayer.vgg19.0.weight"] = torch.zeros(3)
    original["deca.something_new"] = torch.zeros(1)
    good = {"state_dict": original, "epoch": 3, "pytorch-lightning_version": "1.4.9",
            "hyper_parameters": FakeHyperParameters(lr=1e-4)}
    # Worse-scored files are small (writing three full models was most of this file's run
    # time): importing one of them instead would leave every key missing.
    worse = {"state_dict": {"deca.E_flame.layers.0.bias": torch.zeros(1024)}, "epoch": 1}
    torch.save(good, ckpt_dir / "dummy=0.0412.ckpt")
    torch.save(worse, ckpt_dir / "dummy=0.0900.ckpt")
    torch.save(worse, ckpt_dir / "last.ckpt")
    return folder


def test_released_layout_imports_and_reproduces_outputs(model: EmocaModel, tmp_path: Path
                                                        ) -> None:
    folder = _write_released_folder(model, tmp_path, SMALL)
    assert best_checkpoint(folder / "detail" / "checkpoints").name == "dummy=0.0412.ckpt"
    report = import_checkpoint(folder, tmp_path / "out" / "emoca.pt")
    assert report.source.name == "dummy=0.0412.ckpt"
    assert report.unexpected == ["deca.something_new"]
    assert report.missing == [] and report.ignored >= 3  # loss net, eye/neck pose, renderer
    imported = load_emoca_checkpoint(report.out)
    assert imported.settings == SMALL
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, actual = model(images), imported(images)
    for name in ("shape", "exp", "pose", "cam", "light", "detail"):
        assert torch.equal(getattr(expected.codes, name), getattr(actual.codes, name)), name
    assert torch.equal(expected.coarse.vertices, actual.coarse.vertices)
    assert torch.equal(expected.coarse.landmarks2d, actual.coarse.landmarks2d)
    assert torch.equal(expected.coarse.landmarks3d, actual.coarse.landmarks3d)
    assert expected.coarse.mediapipe_landmarks.shape == (2, 105, 2)
    assert torch.equal(expected.coarse.mediapipe_landmarks, actual.coarse.mediapipe_landmarks)
    assert torch.equal(model.flame.mp_landmark_indices, imported.flame.mp_landmark_indices)
    assert torch.equal(expected.coarse.images, actual.coarse.images)
    assert torch.equal(expected.detail.images, actual.detail.images)
    assert torch.equal(expected.detail.displacement_map, actual.detail.displacement_map)


def test_import_errors_name_the_problem(tmp_path: Path, model: EmocaModel) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        import_checkpoint(tmp_path / "nowhere", tmp_path / "x.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointImportError, match="neither a released EMOCA folder"):
        import_checkpoint(tmp_path / "empty", tmp_path / "x.pt")
    folder = tmp_path / "nockpt"
    (folder / "detail" / "checkpoints").mkdir(parents=True)
    (folder / "cfg.yaml").write_text("detail:\n  model:\n    n_exp: 50\n", encoding="utf-8")
    with pytest.raises(CheckpointImportError, match="no detail/checkpoints"):
        import_checkpoint(folder, tmp_path / "x.pt")
    torch.save({}, folder / "detail" / "checkpoints" / "noscore.ckpt")
    with pytest.raises(CheckpointImportError, match="noscore.ckpt: no score"):
        best_checkpoint(folder / "detail" / "checkpoints")
    with pytest.raises(ValueError, match="not an emoca-pipeline EMOCA checkpoint"):
        load_emoca_checkpoint(folder / "detail" / "checkpoints" / "noscore.ckpt")


def test_deca_tar_needs_assets_and_imports_with_them(model: EmocaModel, tmp_path: Path,
                                                     procedural_assets: Path) -> None:
    tar = {net: getattr(model, net).state_dict() for net in ("E_flame", "E_detail", "D_detail")}
    torch.save(tar, tmp_path / "deca_model.tar")
    with pytest.raises(CheckpointImportError, match="pass the FLAME asset folder"):
        import_checkpoint(tmp_path / "deca_model.tar", tmp_path / "deca.pt")
    report = import_checkpoint(tmp_path, tmp_path / "deca.pt", assets=procedural_assets)
    assert report.missing == [] and report.unexpected == []
    deca = load_emoca_checkpoint(report.out)
    assert deca.E_expression is None and deca.settings.expression_backbone == "none"
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours = split_flame_code(model.E_flame(images), SMALL.code_widths)
        theirs = deca.encode(images)
    assert torch.equal(ours["shape"], theirs.shape) and torch.equal(ours["exp"], theirs.exp)
