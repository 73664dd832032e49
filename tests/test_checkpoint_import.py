"""Import of a released EMOCA folder whose checkpoint is written by hand, not by our exporter.

The state dict has the original's key names and buffer shapes (DESIGN.md, "Released
checkpoints"; gdl/models/DecaFLAME.py, Renderer.py, DecaEncoder.py, DecaDecoder.py): the
ResNet-50 trunks under torchvision's names without ``fc``, DECA's FLAME buffers as DecaFLAME
registers them (``full_lmk_faces_idx`` (1, 68), ``full_lmk_bary_coords`` (1, 68, 3)),
FLAME_mediapipe's two buffers, SRenderY's buffers, the masks, and loss networks to ignore;
it is saved as a Lightning 1.4 checkpoint in the released folder layout. The imported model
must equal one whose weights were set directly from the same tensors, and its landmarks
must be the original's formula applied to the checkpoint's own buffers.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
import yaml
from smplx.lbs import vertices2landmarks

from emoca_pipeline.cli import main
from emoca_pipeline.flame import (
    FLAME,
    LandmarkEmbedding,
    MediaPipeEmbedding,
    load_flame_model,
)
from emoca_pipeline.flame.safe_pickle import safe_load_npy, to_numpy
from emoca_pipeline.io.obj import load_obj
from emoca_pipeline.models.checkpoint_import import import_checkpoint
from emoca_pipeline.models.emoca import EmocaModel, EmocaModelSettings, load_emoca_checkpoint
from emoca_pipeline.render import MeshRenderer

SETTINGS = EmocaModelSettings(image_size=64)
N_SHAPE, N_TEX, N_EXP, N_DETAIL = 100, 50, 50, 128
NETWORKS = ("E_flame", "E_expression", "E_detail", "D_detail")


def _encoder(out: int, seed: int, head_bias: torch.Tensor | None = None
             ) -> dict[str, torch.Tensor]:
    """DECA's ResnetEncoder: ``encoder.*`` = torchvision's ResNet-50 names without ``fc``
    (gdl/models/ResNet.py), ``layers.0`` Linear(2048, 1024), ``layers.2`` Linear(1024, out)."""
    torch.manual_seed(seed)
    trunk = torchvision.models.resnet50(weights=None).state_dict()
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in trunk.items():
        if key.startswith("fc."):
            continue
        if key.endswith("running_mean"):
            value = torch.rand(value.shape, generator=gen) * 0.2 - 0.1
        elif key.endswith("running_var"):
            value = torch.rand(value.shape, generator=gen) + 0.5
        elif key.endswith("num_batches_tracked"):
            value = torch.tensor(1000)
        state["encoder." + key] = value
    state["layers.0.weight"] = torch.randn(1024, 2048, generator=gen) * 0.02
    state["layers.0.bias"] = torch.randn(1024, generator=gen) * 0.01
    state["layers.2.weight"] = torch.randn(out, 1024, generator=gen) * 1e-4
    state["layers.2.bias"] = torch.zeros(out) if head_bias is None else head_bias
    return state


def _detail_decoder(seed: int) -> dict[str, torch.Tensor]:
    """DECA's Generator(latent_dim=181): l1.0 Linear(181, 128*8*8), then conv_blocks with
    BatchNorm at 0, 3, 7, 11, 15, 19 and Conv2d at 2, 6, 10, 14, 18, 21."""
    gen = torch.Generator().manual_seed(seed)
    state = {"l1.0.weight": torch.randn(128 * 64, 3 + N_EXP + N_DETAIL, generator=gen) * 0.05,
             "l1.0.bias": torch.randn(128 * 64, generator=gen) * 0.05}
    for index, channels in ((0, 128), (3, 128), (7, 64), (11, 64), (15, 32), (19, 16)):
        state[f"conv_blocks.{index}.weight"] = 1 + 0.1 * torch.randn(channels, generator=gen)
        state[f"conv_blocks.{index}.bias"] = 0.1 * torch.randn(channels, generator=gen)
        state[f"conv_blocks.{index}.running_mean"] = 0.1 * torch.randn(channels, generator=gen)
        state[f"conv_blocks.{index}.running_var"] = torch.rand(channels, generator=gen) + 0.5
        state[f"conv_blocks.{index}.num_batches_tracked"] = torch.tensor(1000)
    for index, (cin, cout) in ((2, (128, 128)), (6, (128, 64)), (10, (64, 64)),
                               (14, (64, 32)), (18, (32, 16)), (21, (16, 1))):
        state[f"conv_blocks.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * 0.05
        state[f"conv_blocks.{index}.bias"] = torch.randn(cout, generator=gen) * 0.01
    return state


class Original:
    """The tensors of a released checkpoint, built from the asset files as the original's
    constructors build them (values from the procedural assets, layout from the original)."""

    def __init__(self, assets: Path) -> None:
        model = load_flame_model(assets / "generic_model.pkl")
        lmk = {k: to_numpy(v) for k, v in safe_load_npy(assets / "landmark_embedding.npy").items()}
        mp = dict(np.load(assets / "mediapipe_landmark_embedding.npz"))
        template = load_obj(assets / "head_template.obj")
        self.mediapipe_indices = mp["landmark_indices"]
        self.model, self.template = model, template
        # DecaFLAME.__init__
        self.flame = {
            "faces_tensor": torch.tensor(model.faces, dtype=torch.long),
            "v_template": torch.tensor(model.v_template, dtype=torch.float32),
            "shapedirs": torch.cat([torch.tensor(model.shapedirs[:, :, :N_SHAPE]),
                                    torch.tensor(model.exprdirs[:, :, :N_EXP])], 2).float(),
            "posedirs": torch.tensor(
                model.posedirs.reshape(-1, model.posedirs.shape[-1]).T, dtype=torch.float32),
            "J_regressor": torch.tensor(model.j_regressor, dtype=torch.float32),
            "parents": torch.tensor(model.parents, dtype=torch.long),
            "lbs_weights": torch.tensor(model.lbs_weights, dtype=torch.float32),
            "eye_pose": torch.zeros(1, 6),
            "neck_pose": torch.zeros(1, 3),
            "lmk_faces_idx": torch.tensor(lmk["static_lmk_faces_idx"], dtype=torch.long),
            "lmk_bary_coords": torch.tensor(lmk["static_lmk_bary_coords"], dtype=torch.float32),
            "dynamic_lmk_faces_idx": torch.tensor(lmk["dynamic_lmk_faces_idx"], dtype=torch.long),
            "dynamic_lmk_bary_coords": torch.tensor(lmk["dynamic_lmk_bary_coords"],
                                                    dtype=torch.float32),
            "full_lmk_faces_idx": torch.tensor(lmk["full_lmk_faces_idx"], dtype=torch.long),
            "full_lmk_bary_coords": torch.tensor(lmk["full_lmk_bary_coords"],
                                                 dtype=torch.float32),
            "neck_kin_chain": torch.tensor([1, 0]),
            # FLAME_mediapipe.__init__
            "lmk_faces_idx_mediapipe": torch.tensor(mp["lmk_face_idx"].astype(np.int64)),
            "lmk_bary_coords_mediapipe": torch.tensor(mp["lmk_b_coords"], dtype=torch.float32),
        }
        # SRenderY.__init__
        faces = torch.tensor(template.faces, dtype=torch.long)[None]
        uvfaces = torch.tensor(template.face_uvs, dtype=torch.long)[None]
        raw_uv = torch.tensor(template.uvs, dtype=torch.float32)[None]
        uvcoords = torch.cat([raw_uv, raw_uv[:, :, :1] * 0 + 1], -1) * 2 - 1
        uvcoords[..., 1] = -uvcoords[..., 1]
        grey = torch.full((1, faces.shape[1], 3, 3), 180 / 255)
        self.render = {
            "dense_faces": torch.zeros(1, 2 * 255 * 255, 3, dtype=torch.long),
            "faces": faces, "raw_uvcoords": raw_uv, "uvcoords": uvcoords, "uvfaces": uvfaces,
            "face_uvcoords": uvcoords[0][uvfaces[0]][None], "face_colors": grey,
            "constant_factor": torch.rand(9),
        }
        # DECA._setup_renderer: the mask image resized to uv_size
        mask = cv2.imread(str(assets / "uv_face_eye_mask.png"))[:, :, 0] / 255.0
        self.uv_face_eye_mask = torch.nn.functional.interpolate(
            torch.tensor(mask, dtype=torch.float32)[None, None], [256, 256])
        self.fixed_uv_dis = torch.tensor(np.load(assets / "fixed_displacement_256.npy")).float()
        cam_bias = torch.zeros(N_SHAPE + N_TEX + N_EXP + 6 + 3 + 27)
        cam_bias[N_SHAPE + N_TEX + N_EXP + 6] = 7.0  # scale: the face fills the crop
        cam_bias[N_SHAPE + N_TEX + N_EXP + 9] = 3.0  # ambient light
        self.networks = {
            "E_flame": _encoder(236, 1, cam_bias),
            "E_expression": _encoder(N_EXP, 2),  # its own trunk, not E_flame's
            "E_detail": _encoder(N_DETAIL, 3),
            "D_detail": _detail_decoder(4),
        }

    def state_dict(self, mediapipe: bool = True, networks: bool = True
                   ) -> dict[str, torch.Tensor]:
        state = {}
        if networks:
            for net, weights in self.networks.items():
                state.update({f"deca.{net}.{k}": v for k, v in weights.items()})
        for key, value in self.flame.items():
            if mediapipe or not key.endswith("_mediapipe"):
                state[f"deca.flame.{key}"] = value
        state.update({f"deca.render.{k}": v for k, v in self.render.items()})
        state["deca.uv_face_eye_mask"] = self.uv_face_eye_mask
        state["deca.fixed_uv_dis"] = self.fixed_uv_dis
        state["deca.id_loss.reg_model.conv1.weight"] = torch.zeros(64, 3, 7, 7)
        state["deca.perceptual_loss.featlayer.0.weight"] = torch.zeros(64, 3, 3, 3)
        return state

    def reference_model(self) -> EmocaModel:
        """EmocaModel with every weight and buffer set directly from the same tensors."""
        f = self.flame
        landmarks = LandmarkEmbedding(
            static_faces=f["lmk_faces_idx"].numpy(), static_bary=f["lmk_bary_coords"].numpy(),
            dynamic_faces=f["dynamic_lmk_faces_idx"].numpy(),
            dynamic_bary=f["dynamic_lmk_bary_coords"].numpy(),
            full_faces=f["full_lmk_faces_idx"][0].numpy(),
            full_bary=f["full_lmk_bary_coords"][0].numpy())
        mediapipe = MediaPipeEmbedding(
            faces=f["lmk_faces_idx_mediapipe"].numpy(),
            bary=f["lmk_bary_coords_mediapipe"].numpy(), landmark_indices=self.mediapipe_indices)
        flame = FLAME(self.model, landmarks, mediapipe, n_shape=N_SHAPE, n_exp=N_EXP)
        mask = self.uv_face_eye_mask[0, 0]
        renderer = MeshRenderer(self.render["faces"][0], self.render["raw_uvcoords"][0],
                                self.render["uvfaces"][0], image_size=SETTINGS.image_size,
                                uv_size=SETTINGS.uv_size, uv_face_eye_mask=mask,
                                uv_face_mask=mask)
        model = EmocaModel(flame, renderer, self.fixed_uv_dis, None, SETTINGS)
        for net, weights in self.networks.items():
            getattr(model, net).load_state_dict(weights, strict=True)
        return model.eval()


def _lightning_checkpoint(state: dict[str, torch.Tensor], epoch: int) -> dict:
    return {"epoch": epoch, "global_step": 1000 * epoch, "pytorch-lightning_version": "1.4.9",
            "state_dict": state, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": {"model_params": {"n_exp": N_EXP, "deca_class": "ExpDECA"},
                                 "learning_params": {"learning_rate": 5e-5}}}


def _write_released_folder(root: Path, state: dict[str, torch.Tensor]) -> Path:
    """cfg.yaml with coarse:/detail: sections and detail/checkpoints/<metric sub-folder>/
    <name>=<score>.ckpt, a worse one, and a ``last.ckpt`` that must be skipped."""
    folder = root / "EMOCA_v2_lr_mse_20"
    model_cfg = {"n_shape": N_SHAPE, "n_tex": N_TEX, "n_exp": N_EXP, "n_pose": 6, "n_cam": 3,
                 "n_light": 27, "n_detail": N_DETAIL, "image_size": SETTINGS.image_size,
                 "uv_size": 256, "expression_backbone": "deca_clone", "deca_class": "ExpDECA",
                 "use_texture": False}
    cfg = {stage: {"model": dict(model_cfg, mode=stage), "learning": {"batch_size_train": 4},
                   "inout": {"name": folder.name}, "data": {"image_size": 224}}
           for stage in ("coarse", "detail")}
    folder.mkdir()
    (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    checkpoints = folder / "detail" / "checkpoints"
    best = checkpoints / "deca-epoch=03-val_loss"
    worse = checkpoints / "deca-epoch=01-val_loss"
    best.mkdir(parents=True)
    worse.mkdir(parents=True)
    torch.save(_lightning_checkpoint(state, 3), best / "dataloader_idx_0=1.27607644.ckpt")
    torch.save(_lightning_checkpoint({"deca.E_flame.layers.0.bias": torch.zeros(3)}, 1),
               worse / "dataloader_idx_0=1.90000000.ckpt")
    (checkpoints / "last.ckpt").write_bytes(b"not a checkpoint: must be skipped")
    return folder


def _original_landmarks(vertices: torch.Tensor, faces: torch.Tensor, lmk_faces: torch.Tensor,
                        lmk_bary: torch.Tensor, cam: torch.Tensor) -> torch.Tensor:
    """DecaFLAME's ``vertices2landmarks(..., idx.repeat(bz, 1), bary.repeat(bz, 1, 1))`` on
    the checkpoint's buffers, then DECA's batch_orth_proj and y flip."""
    batch = vertices.shape[0]
    if lmk_faces.ndim == 1:
        lmk_faces, lmk_bary = lmk_faces[None], lmk_bary[None]
    points = vertices2landmarks(vertices, faces, lmk_faces.repeat(batch, 1),
                                lmk_bary.repeat(batch, 1, 1))
    xy = cam[:, None, :1] * (points[..., :2] + cam[:, None, 1:])
    return xy * torch.tensor([1.0, -1.0])


@pytest.fixture(scope="module")
def original(procedural_assets: Path) -> Original:
    return Original(procedural_assets)


def test_a_released_folder_imports_as_released(original: Original, tmp_path: Path) -> None:
    state = original.state_dict()
    assert state["deca.flame.full_lmk_faces_idx"].shape == (1, 68)
    assert state["deca.flame.full_lmk_bary_coords"].shape == (1, 68, 3)
    assert state["deca.flame.lmk_faces_idx_mediapipe"].shape == (105,)
    folder = _write_released_folder(tmp_path, state)

    report = import_checkpoint(folder, tmp_path / "model.pt")
    assert report.source.name == "dataloader_idx_0=1.27607644.ckpt"
    assert report.missing == [] and report.unexpected == []
    # renderer buffers (8), eye and neck pose, two loss-network keys
    assert report.ignored == len(original.render) + 2 + 2
    assert len(report.notes) == 1 and "EMOCA's own list" in report.notes[0]
    assert "mediapipe_landmark_embedding.npz" in report.notes[0]

    imported = load_emoca_checkpoint(report.out).eval()
    reference = original.reference_model()
    assert imported.settings == SETTINGS
    torch.testing.assert_close(imported.flame.mp_landmark_indices,
                               torch.from_numpy(original.mediapipe_indices))
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = imported(images), reference(images)
    for name in ("shape", "tex", "exp", "pose", "cam", "light", "detail"):
        assert torch.equal(getattr(got.codes, name), getattr(want.codes, name)), name
    assert not torch.equal(got.codes.exp, torch.zeros_like(got.codes.exp))
    for name in ("vertices", "landmarks2d", "landmarks3d", "mediapipe_landmarks", "images"):
        assert torch.equal(getattr(got.coarse, name), getattr(want.coarse, name)), name
    assert got.coarse.landmarks3d.shape == (2, 68, 3)
    assert got.coarse.mediapipe_landmarks.shape == (2, 105, 2)
    assert got.coarse.masks.sum() > 100  # the face is in view: the render is compared
    assert torch.equal(got.detail.displacement_map, want.detail.displacement_map)

    # The original's own landmark formula on the checkpoint's (1, 68) and (105,) buffers.
    f = original.flame
    verts, cam = got.coarse.vertices, got.codes.cam
    full = vertices2landmarks(verts, f["faces_tensor"], f["full_lmk_faces_idx"].repeat(2, 1),
                              f["full_lmk_bary_coords"].repeat(2, 1, 1))
    torch.testing.assert_close(got.coarse.landmarks3d, full, rtol=0, atol=1e-6)
    mp = _original_landmarks(verts, f["faces_tensor"], f["lmk_faces_idx_mediapipe"],
                             f["lmk_bary_coords_mediapipe"], cam)
    torch.testing.assert_close(got.coarse.mediapipe_landmarks, mp, rtol=0, atol=1e-6)


def test_mediapipe_indices_come_from_the_assets_and_v1_gets_them_added(
    original: Original, procedural_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # Geometry only (no networks: small files); the report lists the networks as missing.
    npz = procedural_assets / "mediapipe_landmark_embedding.npz"
    (tmp_path / "v2").mkdir()
    v2 = _write_released_folder(tmp_path / "v2", original.state_dict(networks=False))
    report = import_checkpoint(v2, tmp_path / "v2.pt", assets=procedural_assets)
    assert report.missing and all(k.split(".")[0] in NETWORKS for k in report.missing)
    assert report.notes == [f"MediaPipe landmark indices from {npz}"]
    model = load_emoca_checkpoint(report.out)
    assert torch.equal(model.flame.mp_landmark_indices,
                       torch.from_numpy(original.mediapipe_indices))

    (tmp_path / "v1").mkdir()
    v1 = _write_released_folder(tmp_path / "v1",
                                original.state_dict(mediapipe=False, networks=False))
    report = import_checkpoint(v1, tmp_path / "v1.pt")
    assert report.notes[0].startswith("no MediaPipe landmarks: the checkpoint has none")
    assert not load_emoca_checkpoint(report.out).flame.has_mediapipe
    # The command says what is missing, and adds the embedding from --assets.
    assert main(["import-checkpoint", str(v1), str(tmp_path / "v1-cli.pt")]) == 0
    out = capsys.readouterr().out
    assert "note: no MediaPipe landmarks" in out, out[-400:]
    assert main(["import-checkpoint", str(v1), str(tmp_path / "v1-assets.pt"),
                 "--assets", str(procedural_assets)]) == 0
    assert f"added the 105 points of {npz}" in capsys.readouterr().out
    with_mp = load_emoca_checkpoint(tmp_path / "v1-assets.pt").flame
    assert torch.equal(with_mp.mp_lmk_faces, original.flame["lmk_faces_idx_mediapipe"])


def test_help_says_what_out_is(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["import-checkpoint", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "model.pt" in text and "reconstruct INPUT DIR --model OUT" in text
    assert "--init OUT" in text and "mediapipe_landmark_embedding.npz" in text


def test_flame_accepts_either_landmark_shape(original: Original) -> None:
    f = original.flame
    common = dict(static_faces=f["lmk_faces_idx"].numpy(),
                  static_bary=f["lmk_bary_coords"].numpy(),
                  dynamic_faces=f["dynamic_lmk_faces_idx"].numpy(),
                  dynamic_bary=f["dynamic_lmk_bary_coords"].numpy())
    batched = FLAME(original.model, LandmarkEmbedding(
        **common, full_faces=f["full_lmk_faces_idx"].numpy(),
        full_bary=f["full_lmk_bary_coords"].numpy()))
    flat = FLAME(original.model, LandmarkEmbedding(
        **common, full_faces=f["full_lmk_faces_idx"][0].numpy(),
        full_bary=f["full_lmk_bary_coords"][0].numpy()))
    assert batched.full_lmk_faces.shape == (68,) and batched.full_lmk_bary.shape == (68, 3)
    args = (torch.randn(1, 100) * 0.5, torch.randn(1, 50) * 0.5,
            torch.tensor([[0.0, math.radians(20), 0.0, 0.1, 0.0, 0.0]]))
    assert torch.equal(batched(*args).landmarks3d, flat(*args).landmarks3d)
    with pytest.raises(ValueError, match="full_lmk_faces: expected 1 axes"):
        FLAME(original.model, LandmarkEmbedding(
            **common, full_faces=f["full_lmk_faces_idx"].reshape(2, 34).numpy(),
            full_bary=f["full_lmk_bary_coords"][0].numpy()))
