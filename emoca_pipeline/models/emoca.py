"""The EMOCA model: DECA's coarse encoder, EMOCA's expression encoder, the detail branch,
decoded through FLAME and :class:`~emoca_pipeline.render.MeshRenderer`.

Module names follow the original (``E_flame``, ``E_expression``, ``E_detail``, ``D_detail``,
``flame``, ``flametex``, ``render``), so a released checkpoint maps onto this model by
stripping ``deca.`` and renaming FLAME's and the renderer's buffers
(:mod:`emoca_pipeline.models.checkpoint_import`). FLAME's buffers belong to the state dict:
a checkpoint, not the asset folder, defines the geometry a model was trained with.

Stages: ``"deca"`` trains E_flame alone (DECA's coarse pre-training; the expression comes
from E_flame, E_expression is not used), ``"coarse"`` trains E_expression (EMOCA; E_flame for
DECA, ``expression_backbone: none``) and ``"detail"`` trains E_detail and D_detail. Outside
the deca stage, with an expression encoder, E_flame is frozen and always in eval mode
(:meth:`EmocaModel.train` keeps it there), so shape, pose, camera, texture and light come
from DECA.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoca_pipeline.flame.io import FlameModelData, LandmarkEmbedding, MediaPipeEmbedding
from emoca_pipeline.flame.model import FLAME
from emoca_pipeline.flame.texture import FlameTexture
from emoca_pipeline.models.decoders import DetailGenerator
from emoca_pipeline.models.encoders import FLAME_CODE_ORDER, ResnetEncoder, split_flame_code
from emoca_pipeline.render import (
    MeshRenderer,
    orthographic_project,
    project_landmarks,
    sh_shading,
    vertex_normals,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CoarseOutput",
    "DetailOutput",
    "EmocaCodes",
    "EmocaModel",
    "EmocaModelSettings",
    "EmocaOutput",
    "UvTargets",
    "flame_from_buffers",
    "load_emoca_checkpoint",
    "save_emoca_checkpoint",
]

#: ``format`` entry of the checkpoints written by :func:`save_emoca_checkpoint`.
CHECKPOINT_FORMAT = "emoca-pipeline/emoca-model"
CHECKPOINT_VERSION = 1
Stage = Literal["deca", "coarse", "detail"]


@dataclass(frozen=True)
class EmocaModelSettings:
    """Dimensions and options of :class:`EmocaModel` (defaults: the released EMOCA).

    n_shape, n_tex, n_exp, n_pose, n_cam, n_light: widths of E_flame's output parts, in
        this order (236 in all).
    n_detail: width of the detail code.
    image_size: rendered image side (the 224 px input crop).
    uv_size: side of UV maps (the detail decoder makes 256).
    expression_backbone: "deca_clone" (EMOCA: E_expression cloned from E_flame's trunk,
        replacing DECA's expression) or "none" (plain DECA).
    encoder: the encoders' trunk, "resnet50" (EMOCA, released checkpoints) or "resnet18"
        (a lighter option for CPU demos; not EMOCA's).
    """

    n_shape: int = 100
    n_tex: int = 50
    n_exp: int = 50
    n_pose: int = 6
    n_cam: int = 3
    n_light: int = 27
    n_detail: int = 128
    image_size: int = 224
    uv_size: int = 256
    expression_backbone: Literal["deca_clone", "none"] = "deca_clone"
    encoder: Literal["resnet50", "resnet18"] = "resnet50"

    def __post_init__(self) -> None:
        for name in ("n_shape", "n_tex", "n_exp", "n_detail", "image_size", "uv_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        fixed = {"n_pose": 6, "n_cam": 3, "n_light": 27}
        for name, value in fixed.items():
            if getattr(self, name) != value:
                raise ValueError(f"{name}: must be {value}, got {getattr(self, name)}")
        if self.expression_backbone not in ("deca_clone", "none"):
            raise ValueError(f"expression_backbone: expected 'deca_clone' or 'none', got "
                             f"{self.expression_backbone!r}")

    @property
    def code_widths(self) -> dict[str, int]:
        return {"shape": self.n_shape, "tex": self.n_tex, "exp": self.n_exp,
                "pose": self.n_pose, "cam": self.n_cam, "light": self.n_light}

    @property
    def n_flame_code(self) -> int:
        return sum(self.code_widths.values())


class EmocaCodes(NamedTuple):
    """Encoder outputs for N images.

    shape: (N, n_shape). tex: (N, n_tex). exp: (N, n_exp) (E_expression's for EMOCA).
    pose: (N, 6) global 3 + jaw 3 (axis-angle). cam: (N, 3) = (s, tx, ty).
    light: (N, 9, 3) SH coefficients. detail: (N, n_detail), or None without the detail branch.
    """

    shape: Tensor
    tex: Tensor
    exp: Tensor
    pose: Tensor
    cam: Tensor
    light: Tensor
    detail: Tensor | None


class CoarseOutput(NamedTuple):
    """Coarse geometry and render.

    vertices: (N, V, 3) world space. trans_vertices: (N, V, 3) screen space ([-1, 1], y down).
    landmarks2d: (N, 68, 2) projected 68 points (dynamic contour), screen space.
    landmarks3d: (N, 68, 3) world-space full 68-point set.
    mediapipe_landmarks: (N, 105, 2) projected MediaPipe points, or None.
    albedo: (N, 3, uv, uv). images: (N, 3, H, W) render x mask (black background).
    masks: (N, 1, H, W) rendered face-eye mask x coverage (no grad).
    grid: (N, H, W, 2) UV coordinates of each pixel. normals: (N, V, 3) world normals.
    """

    vertices: Tensor
    trans_vertices: Tensor
    landmarks2d: Tensor
    landmarks3d: Tensor
    mediapipe_landmarks: Tensor | None
    albedo: Tensor
    images: Tensor
    masks: Tensor
    grid: Tensor
    normals: Tensor


class DetailOutput(NamedTuple):
    """Detail branch.

    uv_z: (N, 1, uv, uv) predicted displacement. displacement_map: (N, 1, uv, uv) uv_z +
    the fixed displacement (what the original exports). uv_detail_normals: (N, 3, uv, uv).
    uv_shading: (N, 3, uv, uv) SH shading of the detail normals. uv_texture: (N, 3, uv, uv)
    albedo x shading. images: (N, 3, H, W) detail render x mask (black background).
    uv_coarse_vertices: (N, 3, uv, uv).
    """

    uv_z: Tensor
    displacement_map: Tensor
    uv_detail_normals: Tensor
    uv_shading: Tensor
    uv_texture: Tensor
    images: Tensor
    uv_coarse_vertices: Tensor


class EmocaOutput(NamedTuple):
    """codes: :class:`EmocaCodes`; coarse: :class:`CoarseOutput`; detail:
    :class:`DetailOutput` or None."""

    codes: EmocaCodes
    coarse: CoarseOutput
    detail: DetailOutput | None


class UvTargets(NamedTuple):
    """The input image unwrapped into UV space, for the detail losses.

    uv_texture_gt: (N, 3, uv, uv). uv_vis_mask: (N, 1, uv, uv) visible (mask x front-facing x
    UV face-eye mask). All without grad.
    """

    uv_texture_gt: Tensor
    uv_vis_mask: Tensor


def _array(value: Tensor | np.ndarray) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def flame_from_buffers(buffers: Mapping[str, Tensor], n_shape: int, n_exp: int,
                       prefix: str = "flame.") -> FLAME:
    """Rebuild a :class:`FLAME` layer from its own state-dict buffers (``prefix`` + name).

    ``shapedirs`` must hold exactly ``n_shape + n_exp`` components (the layer's cut).

    Raises:
        ValueError: a buffer is missing or its shape does not fit.
    """
    need = ("v_template", "faces", "shapedirs", "posedirs", "j_regressor", "lbs_weights",
            "parents", "static_lmk_faces", "static_lmk_bary", "dynamic_lmk_faces",
            "dynamic_lmk_bary", "full_lmk_faces", "full_lmk_bary")
    missing = [prefix + name for name in need if prefix + name not in buffers]
    if missing:
        raise ValueError(f"FLAME buffers missing: {', '.join(missing)}")
    b = {name: _array(buffers[prefix + name]) for name in need}
    shapedirs = b["shapedirs"]
    if shapedirs.ndim != 3 or shapedirs.shape[2] != n_shape + n_exp:
        raise ValueError(f"{prefix}shapedirs: shape {shapedirs.shape}, expected "
                         f"(V, 3, {n_shape + n_exp}) for n_shape={n_shape}, n_exp={n_exp}")
    num_verts = b["v_template"].shape[0]
    posedirs = b["posedirs"]  # (P, V*3) -> (V, 3, P)
    posedirs = posedirs.T.reshape(num_verts, 3, posedirs.shape[0])
    model = FlameModelData(
        v_template=b["v_template"], faces=b["faces"], shapedirs=shapedirs[:, :, :n_shape],
        exprdirs=shapedirs[:, :, n_shape:], posedirs=posedirs, j_regressor=b["j_regressor"],
        lbs_weights=b["lbs_weights"], parents=b["parents"], source="state dict")
    landmarks = LandmarkEmbedding(
        static_faces=b["static_lmk_faces"].reshape(-1),
        static_bary=b["static_lmk_bary"].reshape(-1, 3),
        dynamic_faces=b["dynamic_lmk_faces"], dynamic_bary=b["dynamic_lmk_bary"],
        full_faces=b["full_lmk_faces"].reshape(-1), full_bary=b["full_lmk_bary"].reshape(-1, 3))
    mediapipe = None
    if prefix + "mp_lmk_faces" in buffers:
        mediapipe = MediaPipeEmbedding(
            faces=_array(buffers[prefix + "mp_lmk_faces"]),
            bary=_array(buffers[prefix + "mp_lmk_bary"]),
            landmark_indices=_array(buffers[prefix + "mp_landmark_indices"]))
    return FLAME(model, landmarks, mediapipe, n_shape=n_shape, n_exp=n_exp)


class EmocaModel(nn.Module):
    """DECA/EMOCA: images -> codes -> FLAME geometry, renders, detail.

    Args:
        flame: the FLAME layer (``n_shape``/``n_exp`` as in ``settings``).
        renderer: a :class:`MeshRenderer` of FLAME's topology at ``settings.image_size``.
        fixed_displacement: (uv, uv) fixed UV displacement added to the detail map.
        texture: the albedo model, or None for the released checkpoints' constant 0.5.
        settings: dimensions and the expression backbone.
        flame_weights: optional local file with E_flame's initial weights (a torchvision
            ResNet-50 for ImageNet, or a ResnetEncoder state dict such as DECA's E_flame);
            E_expression's trunk is cloned from E_flame after loading.
        detail_weights: optional local file with E_detail's initial weights (the same kinds).
    """

    fixed_uv_dis: Tensor

    def __init__(
        self,
        flame: FLAME,
        renderer: MeshRenderer,
        fixed_displacement: Tensor | np.ndarray,
        texture: FlameTexture | None = None,
        settings: EmocaModelSettings | None = None,
        flame_weights: str | os.PathLike | None = None,
        detail_weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        settings = settings or EmocaModelSettings()
        self.settings = settings
        if flame.n_shape != settings.n_shape or flame.n_exp != settings.n_exp:
            raise ValueError(f"flame: built with n_shape={flame.n_shape}, n_exp={flame.n_exp}; "
                             f"settings ask for {settings.n_shape}, {settings.n_exp}")
        if texture is not None and texture.n_tex != settings.n_tex:
            raise ValueError(f"texture: {texture.n_tex} components, settings ask for "
                             f"{settings.n_tex}")
        if renderer.uv_size != settings.uv_size:
            raise ValueError(f"renderer: uv_size {renderer.uv_size}, settings ask for "
                             f"{settings.uv_size}")
        self.E_flame = ResnetEncoder(settings.n_flame_code, flame_weights, settings.encoder)
        self.E_expression: ResnetEncoder | None = None
        if settings.expression_backbone == "deca_clone":
            self.E_expression = ResnetEncoder(settings.n_exp, backbone=settings.encoder)
            self.clone_expression_trunk()
            self.E_flame.requires_grad_(False)
        self.E_detail = ResnetEncoder(settings.n_detail, detail_weights, settings.encoder)
        self.D_detail = DetailGenerator(3 + settings.n_exp + settings.n_detail)
        self.flame = flame
        self.flametex = texture
        self.render = renderer
        displacement = torch.as_tensor(_array(fixed_displacement), dtype=torch.float32)
        if displacement.shape != (settings.uv_size, settings.uv_size):
            raise ValueError(f"fixed_displacement: shape {tuple(displacement.shape)}, expected "
                             f"({settings.uv_size}, {settings.uv_size})")
        self.register_buffer("fixed_uv_dis", displacement)
        self.stage: Stage = "coarse"

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_assets(cls, folder: str | os.PathLike, settings: EmocaModelSettings | None = None,
                    use_texture: bool = True, **kwargs: Any) -> EmocaModel:
        """Build from a FLAME asset folder (official file names); ``kwargs`` go to the
        constructor (``flame_weights``, ``detail_weights``)."""
        from emoca_pipeline.flame.assets import load_flame_assets, make_renderer

        settings = settings or EmocaModelSettings()
        assets = load_flame_assets(folder, n_shape=settings.n_shape, n_exp=settings.n_exp,
                                   n_tex=settings.n_tex)
        renderer = make_renderer(assets, image_size=settings.image_size,
                                 uv_size=settings.uv_size)
        displacement = torch.from_numpy(assets.fixed_displacement)
        if displacement.shape[-1] != settings.uv_size:
            displacement = F.interpolate(displacement[None, None], size=settings.uv_size,
                                         mode="bilinear", align_corners=False)[0, 0]
        texture = assets.texture if use_texture else None
        return cls(assets.flame, renderer, displacement, texture, settings, **kwargs)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor], settings: EmocaModelSettings
                        ) -> EmocaModel:
        """Build from one of this class's state dicts alone: FLAME, the renderer's topology
        and masks, and the texture space (when present) come from its buffers."""
        flame = flame_from_buffers(state, settings.n_shape, settings.n_exp, prefix="flame.")
        needed = ("render.faces", "render.uvs", "render.face_uvs")
        missing = [key for key in needed if key not in state]
        if missing:
            raise ValueError(f"state dict lacks renderer buffers: {', '.join(missing)}")
        renderer = MeshRenderer(
            state["render.faces"], state["render.uvs"], state["render.face_uvs"],
            image_size=settings.image_size, uv_size=settings.uv_size,
            uv_face_eye_mask=state.get("render.uv_face_eye_mask", torch.ones(1, 1, 2, 2))[0, 0],
            uv_face_mask=state.get("render.uv_face_mask", torch.ones(1, 1, 2, 2))[0, 0])
        texture = None
        if "flametex.mean" in state:
            mean, basis = state["flametex.mean"], state["flametex.basis"]  # (1, P), (K, P)
            side = int(round((mean.shape[-1] / 3) ** 0.5))
            texture = FlameTexture(_array(mean), _array(basis).T[None], map_size=side,
                                   uv_size=settings.uv_size)
        model = cls(flame, renderer, state["fixed_uv_dis"], texture, settings)
        model.load_state_dict(state, strict=True)
        return model

    def clone_expression_trunk(self) -> None:
        """Copy E_flame's ResNet trunk into E_expression (EMOCA's ``deca_clone``)."""
        if self.E_expression is not None:
            self.E_expression.encoder.load_state_dict(self.E_flame.encoder.state_dict())

    def clone_expression_head(self) -> None:
        """Copy E_flame's head into E_expression's: the hidden layer whole, and of the output
        layer the rows (and biases) of the expression code, so that E_expression starts out
        predicting exactly E_flame's expression (with the trunk cloned too).

        Not EMOCA: its E_expression head starts fresh, which works from a DECA trained for
        days; a short CPU run starts its expression at DECA's instead of at random."""
        if self.E_expression is None:
            raise ValueError("clone_expression_head: the model has no E_expression "
                             "(expression_backbone: none)")
        widths = self.settings.code_widths
        start = sum(widths[name] for name in FLAME_CODE_ORDER[:FLAME_CODE_ORDER.index("exp")])
        rows = slice(start, start + widths["exp"])
        source, target = self.E_flame.layers, self.E_expression.layers
        with torch.no_grad():
            target[0].weight.copy_(source[0].weight)
            target[0].bias.copy_(source[0].bias)
            target[2].weight.copy_(source[2].weight[rows])
            target[2].bias.copy_(source[2].bias[rows])

    # ---------------------------------------------------------------- modes

    def set_stage(self, stage: Stage) -> EmocaModel:
        """Select the trained part: "deca" (E_flame), "coarse" (E_expression, or E_flame
        without one) or "detail" (E_detail, D_detail); sets ``requires_grad`` of E_flame
        and re-applies :meth:`train`."""
        if stage not in ("deca", "coarse", "detail"):
            raise ValueError(f"stage: expected 'deca', 'coarse' or 'detail', got {stage!r}")
        self.stage = stage
        self.E_flame.requires_grad_(self.flame_encoder_trains)
        return self.train(self.training)

    @property
    def flame_encoder_trains(self) -> bool:
        """Whether the current stage trains E_flame (deca; coarse without E_expression)."""
        return self.stage == "deca" or (self.stage == "coarse" and self.E_expression is None)

    @property
    def uses_expression_encoder(self) -> bool:
        """Whether the expression comes from E_expression (not in the deca stage)."""
        return self.E_expression is not None and self.stage != "deca"

    def coarse_parameters(self) -> list[nn.Parameter]:
        """What the coarse-like stages train: E_flame (deca stage, or DECA without an
        expression encoder) or E_expression (EMOCA's coarse stage)."""
        encoder = self.E_flame if self.flame_encoder_trains else self.E_expression
        assert encoder is not None
        return list(encoder.parameters())

    def detail_parameters(self) -> list[nn.Parameter]:
        """What the detail stage trains: E_detail and D_detail."""
        return list(self.E_detail.parameters()) + list(self.D_detail.parameters())

    def init_flame_head(self, cam: Tensor | np.ndarray, ambient: float = 1.5,
                        weight_scale: float = 0.01) -> None:
        """Start E_flame's head at a face in view: output layer weights x ``weight_scale``,
        biases 0 except the camera ``cam`` ``(3,)`` = (s, tx, ty) and the ambient (first)
        SH band ``ambient`` in every channel.

        A freshly initialised head outputs a camera scale near 0 (the face is a dot) and
        random poses, which gives the landmark and photometric losses nothing to work with;
        DECA itself never starts from scratch (it uses pretrained weights)."""
        cam = torch.as_tensor(_array(cam), dtype=torch.float32).reshape(-1)
        if cam.shape != (3,) or not torch.isfinite(cam).all() or cam[0] <= 0:
            raise ValueError(f"cam: expected 3 finite values (s > 0, tx, ty), got "
                             f"{cam.tolist()}")
        widths = self.settings.code_widths
        start = {}
        offset = 0
        for name in ("shape", "tex", "exp", "pose", "cam", "light"):
            start[name] = offset
            offset += widths[name]
        last = self.E_flame.layers[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(weight_scale)
            last.bias.zero_()
            last.bias[start["cam"]:start["cam"] + 3] = cam
            last.bias[start["light"]:start["light"] + 3] = ambient  # light is (9, 3)

    def train(self, mode: bool = True) -> EmocaModel:
        """Train mode for the parts the current stage trains; everything else stays in eval
        mode (BatchNorm statistics of frozen encoders must not move), E_flame always so
        when the stage does not train it."""
        super().train(mode)
        if not mode:
            return self
        if not self.flame_encoder_trains:
            self.E_flame.eval()
        if self.E_expression is not None and self.stage != "coarse":
            self.E_expression.eval()
        if self.stage in ("deca", "coarse"):
            self.E_detail.eval()
            self.D_detail.eval()
        return self

    # ---------------------------------------------------------------- forward

    def encode(self, images: Tensor, with_detail: bool = True) -> EmocaCodes:
        """Images ``(N, 3, H, W)`` in [0, 1] -> :class:`EmocaCodes`.

        E_flame runs without grad when it is frozen (EMOCA's coarse stage, any detail stage);
        in the deca stage the expression is E_flame's and E_expression is not run."""
        coarse_grad = torch.is_grad_enabled() and self.stage in ("deca", "coarse")
        with torch.set_grad_enabled(coarse_grad and self.flame_encoder_trains):
            parts = split_flame_code(self.E_flame(images), self.settings.code_widths)
        if self.uses_expression_encoder:
            assert self.E_expression is not None
            with torch.set_grad_enabled(coarse_grad):
                parts["exp"] = self.E_expression(images)
        detail = self.E_detail(images) if with_detail else None
        return EmocaCodes(parts["shape"], parts["tex"], parts["exp"], parts["pose"],
                          parts["cam"], parts["light"], detail)

    def albedo(self, tex: Tensor) -> Tensor:
        """Texture codes ``(N, n_tex)`` -> albedo ``(N, 3, uv, uv)`` (0.5 without a texture
        space, as the released checkpoints)."""
        if self.flametex is None:
            size = self.settings.uv_size
            return torch.full((tex.shape[0], 3, size, size), 0.5, dtype=tex.dtype,
                              device=tex.device)
        return self.flametex(tex)

    def decode_coarse(self, codes: EmocaCodes) -> CoarseOutput:
        """FLAME + orthographic camera + SH render of :class:`EmocaCodes`."""
        flame_out = self.flame(codes.shape, codes.exp, codes.pose)
        verts = flame_out.vertices
        trans_verts = orthographic_project(verts, codes.cam)
        landmarks2d = project_landmarks(flame_out.landmarks2d, codes.cam)
        mp = None
        if flame_out.mediapipe_landmarks is not None:
            mp = project_landmarks(flame_out.mediapipe_landmarks, codes.cam)
        albedo = self.albedo(codes.tex)
        ops = self.render(verts, trans_verts, albedo, codes.light)
        batch = verts.shape[0]
        face_eye = self.render.uv_face_eye_mask.expand(batch, -1, -1, -1).to(verts.dtype)
        mask_face_eye = F.grid_sample(face_eye, ops.grid.detach(), align_corners=False)
        masks = (mask_face_eye * ops.alpha_images).detach()
        return CoarseOutput(
            vertices=verts, trans_vertices=trans_verts, landmarks2d=landmarks2d,
            landmarks3d=flame_out.landmarks3d, mediapipe_landmarks=mp, albedo=albedo,
            images=ops.images * masks, masks=masks, grid=ops.grid, normals=ops.normals)

    def displacement2normal(self, uv_z: Tensor, coarse_verts: Tensor, coarse_normals: Tensor
                            ) -> tuple[Tensor, Tensor]:
        """DECA's ``displacement2normal``: normals of the dense UV-grid mesh displaced by
        ``uv_z`` (masked by the UV face-eye mask) plus the fixed displacement.

        Args:
            uv_z: (N, 1, uv, uv). coarse_verts: (N, V, 3). coarse_normals: (N, V, 3).

        Returns:
            uv_detail_normals (N, 3, uv, uv) and uv_coarse_vertices (N, 3, uv, uv).
        """
        batch = uv_z.shape[0]
        uv_coarse_vertices = self.render.world2uv(coarse_verts).detach()
        uv_coarse_normals = self.render.world2uv(coarse_normals).detach()
        uv_z = uv_z * self.render.uv_face_eye_mask
        uv_detail_vertices = (uv_coarse_vertices + uv_z * uv_coarse_normals
                              + self.fixed_uv_dis[None, None] * uv_coarse_normals)
        dense = uv_detail_vertices.permute(0, 2, 3, 1).reshape(batch, -1, 3)
        normals = vertex_normals(dense, self.render.dense_faces)
        size = uv_coarse_vertices.shape[-2:]
        normals = normals.reshape(batch, *size, 3).permute(0, 3, 1, 2)
        return normals, uv_coarse_vertices

    def decode_detail(self, codes: EmocaCodes, coarse: CoarseOutput) -> DetailOutput:
        """The detail branch on top of a coarse decode (needs ``codes.detail``)."""
        if codes.detail is None:
            raise ValueError("codes.detail is None: encode with with_detail=True")
        latent = torch.cat([codes.pose[:, 3:], codes.exp, codes.detail], dim=1)
        uv_z = self.D_detail(latent)
        uv_detail_normals, uv_coarse_vertices = self.displacement2normal(
            uv_z, coarse.vertices, coarse.normals)
        uv_shading = sh_shading(uv_detail_normals, codes.light.detach())
        uv_texture = coarse.albedo.detach() * uv_shading
        images = F.grid_sample(uv_texture, coarse.grid.detach(), align_corners=False)
        return DetailOutput(
            uv_z=uv_z, displacement_map=uv_z + self.fixed_uv_dis[None, None],
            uv_detail_normals=uv_detail_normals, uv_shading=uv_shading, uv_texture=uv_texture,
            images=images * coarse.masks, uv_coarse_vertices=uv_coarse_vertices)

    def decode(self, codes: EmocaCodes) -> EmocaOutput:
        """Coarse decode, plus the detail branch when ``codes.detail`` is given."""
        coarse_grad = torch.is_grad_enabled() and self.stage in ("deca", "coarse")
        with torch.set_grad_enabled(coarse_grad):
            coarse = self.decode_coarse(codes)
        detail = self.decode_detail(codes, coarse) if codes.detail is not None else None
        return EmocaOutput(codes, coarse, detail)

    def forward(self, images: Tensor, with_detail: bool = True) -> EmocaOutput:
        """Images ``(N, 3, H, W)`` RGB in [0, 1] (224 px) -> :class:`EmocaOutput`."""
        return self.decode(self.encode(images, with_detail=with_detail))

    def uv_targets(self, images: Tensor, coarse: CoarseOutput) -> UvTargets:
        """Unwrap the input images into UV space with the coarse geometry (no grad)."""
        with torch.no_grad():
            uv_pverts = self.render.world2uv(coarse.trans_vertices)
            grid = uv_pverts.permute(0, 2, 3, 1)[..., :2]
            uv_gt = F.grid_sample(torch.cat([images, coarse.masks], dim=1), grid,
                                  mode="bilinear", align_corners=False)
            normals = vertex_normals(coarse.trans_vertices, self.render.faces)
            uv_pnorm = self.render.world2uv(normals)
            front = (uv_pnorm[:, 2:3] < -0.05).to(images.dtype)
            vis = uv_gt[:, 3:] * front * self.render.uv_face_eye_mask
            return UvTargets(uv_gt[:, :3], vis)


# ------------------------------------------------------------------------------ files


def save_emoca_checkpoint(path: str | os.PathLike, model: EmocaModel,
                          extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (settings + full state dict, FLAME and renderer buffers included)
    atomically to ``path``; ``extra`` (plain values) is stored under ``"extra"``."""
    from emoca_pipeline.io.atomic import atomic_output

    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "settings": dataclasses.asdict(model.settings),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_emoca_checkpoint(path: str | os.PathLike) -> EmocaModel:
    """Read a checkpoint written by :func:`save_emoca_checkpoint` (weights-only unpickling);
    the model is returned in eval mode.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not such a checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such EMOCA checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a weights-only torch file ({error})") from error
    if not isinstance(payload, Mapping) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an emoca-pipeline EMOCA checkpoint (no format "
                         f"{CHECKPOINT_FORMAT!r}); import released models with "
                         "'emoca import-checkpoint'")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {payload.get('version')}, this code "
                         f"reads {CHECKPOINT_VERSION}")
    settings = EmocaModelSettings(**payload["settings"])
    return EmocaModel.from_state_dict(payload["state_dict"], settings).eval()
