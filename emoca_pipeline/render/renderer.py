"""DECA's ``SRenderY`` rebuilt on the pure-PyTorch rasteriser.

:class:`MeshRenderer` renders FLAME meshes the way DECA/EMOCA train with: albedo from a UV
map, 9-band SH shading from world-space normals, orthographic screen space from
:func:`~emoca_pipeline.render.camera.orthographic_project`. It also renders grey shape
images (:meth:`MeshRenderer.render_shape`), rasterises per-vertex values into UV space
(:meth:`MeshRenderer.world2uv`), and :func:`overlay_on_image` pastes a crop-space render
back onto the original photograph.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from emoca_pipeline.render.rasterizer import (
    Fragments,
    RasterSettings,
    _parse_image_size,
    rasterize_meshes,
)
from emoca_pipeline.render.shading import (
    directional_shading,
    interpolate_vertex_attributes,
    point_shading,
    sample_texture,
    sh_shading,
    vertex_normals,
)

__all__ = [
    "DECA_SHAPE_LIGHTS",
    "MeshRenderer",
    "RenderOutput",
    "ShapeRenderOutput",
    "dense_grid_faces",
    "overlay_on_image",
]

#: DECA's fixed lights for shape images: five directions, RGB intensity 1.7 each.
DECA_SHAPE_LIGHTS: tuple[tuple[float, ...], ...] = tuple(
    (*direction, 1.7, 1.7, 1.7)
    for direction in ((-1, 1, 1), (1, 1, 1), (-1, -1, 1), (1, -1, 1), (0, 0, 1))
)
#: Grey of DECA's shape images.
SHAPE_GREY = 180.0 / 255.0
#: DECA moves meshes this far along z before rasterising so that every depth is positive.
_DEPTH_OFFSET = 10.0


class RenderOutput(NamedTuple):
    """Output of :meth:`MeshRenderer.forward` (DECA's ``SRenderY.forward`` dict).

    Attributes:
        images: ``(N, 3, H, W)`` albedo x shading, over ``background`` (black by default).
        alpha_images: ``(N, 1, H, W)`` 1 where a face covers the pixel (no grad).
        albedo_images: ``(N, 3, H, W)`` albedo sampled from the UV map, masked by alpha.
        normal_images: ``(N, 3, H, W)`` interpolated world-space vertex normals (0 outside).
        shading_images: ``(N, 3, H, W)`` shading (zeros when no lights were given).
        grid: ``(N, H, W, 2)`` UV coordinates in [-1, 1] used to sample the albedo.
        normals: ``(N, V, 3)`` world-space vertex normals.
        transformed_normals: ``(N, V, 3)`` screen-space vertex normals.
        pos_mask: ``(N, 1, H, W)`` 1 where the screen-space normal faces the viewer
            (interpolated z < -0.05, DECA's rule; no grad).
    """

    images: Tensor
    alpha_images: Tensor
    albedo_images: Tensor
    normal_images: Tensor
    shading_images: Tensor
    grid: Tensor
    normals: Tensor
    transformed_normals: Tensor
    pos_mask: Tensor


class ShapeRenderOutput(NamedTuple):
    """Output of :meth:`MeshRenderer.render_shape`.

    Attributes:
        images: ``(N, 3, H, W)`` grey shaded geometry over ``images`` (or black).
        alpha_images: ``(N, 1, H, W)`` coverage.
        normal_images: ``(N, 3, H, W)`` normals used for shading (no grad).
        grid: ``(N, H, W, 2)`` UV coordinates in [-1, 1].
        pos_mask: ``(N, 1, H, W)`` 1 where the screen-space normal has z < 0 (EMOCA's rule).
    """

    images: Tensor
    alpha_images: Tensor
    normal_images: Tensor
    grid: Tensor
    pos_mask: Tensor


def dense_grid_faces(height: int, width: int, margin_x: int = 2, margin_y: int = 5) -> Tensor:
    """DECA's ``generate_triangles``: two triangles per quad of an ``H x W`` vertex grid.

    Vertex ``(y, x)`` has index ``y * width + x``; quads within the margins are skipped,
    and the faces come in DECA's order (x outer, y inner) and winding.

    Returns:
        ``(2 * (W - 1 - 2 mx) * (H - 1 - 2 my), 3)`` int64 (no faces when the grid is
        smaller than the margins).
    """
    xs = torch.arange(margin_x, max(margin_x, width - 1 - margin_x))
    ys = torch.arange(margin_y, max(margin_y, height - 1 - margin_y))
    grid_x, grid_y = torch.meshgrid(xs, ys, indexing="ij")  # x outer, y inner
    top_left = (grid_y * width + grid_x).reshape(-1)
    top_right, bottom_left = top_left + 1, top_left + width
    bottom_right = bottom_left + 1
    # DECA builds [tl, tr, bl] and [tr, br, bl], then reorders the corners to [0, 2, 1].
    first = torch.stack([top_left, bottom_left, top_right], dim=-1)
    second = torch.stack([top_right, bottom_left, bottom_right], dim=-1)
    return torch.stack([first, second], dim=1).reshape(-1, 3)


def _as_tensor(value: Tensor | np.ndarray, name: str, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to("cpu", dtype)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).to(dtype)
    raise ValueError(f"{name} must be a tensor or numpy array, got {type(value).__name__}")


def _uv_mask(mask: Tensor | np.ndarray | None, name: str, uv_size: int) -> Tensor:
    """A UV mask image ``(h, w)`` / ``(h, w, C)`` -> ``(1, 1, uv, uv)`` float in [0, 1]."""
    if mask is None:
        return torch.ones(1, 1, uv_size, uv_size)
    raw_dtype = mask.dtype
    mask_t = _as_tensor(mask, name, torch.float32)
    if mask_t.ndim == 3:
        mask_t = mask_t[..., 0]  # DECA reads the first channel of the PNG
    if mask_t.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) or (H, W, C) image, got {tuple(mask.shape)}")
    if raw_dtype in (np.uint8, torch.uint8):
        mask_t = mask_t / 255.0
    if float(mask_t.min()) < 0 or float(mask_t.max()) > 1:
        raise ValueError(f"{name} values must lie in [0, 1] (or be uint8 0..255)")
    # DECA: F.interpolate(mask, [uv_size, uv_size]) with the default nearest mode.
    return F.interpolate(mask_t[None, None], size=(uv_size, uv_size), mode="nearest")


class MeshRenderer(nn.Module):
    """DECA's ``SRenderY`` on :func:`~emoca_pipeline.render.rasterizer.rasterize_meshes`.

    Args:
        faces: ``(F, 3)`` vertex indices of the template (FLAME: 9976 faces).
        uvs: ``(T, 2)`` UV coordinates in [0, 1] (v up, OBJ convention).
        face_uvs: ``(F, 3)`` per-face indices into ``uvs``.
        image_size: rendered image size, int or ``(H, W)`` (224 in DECA/EMOCA).
        uv_size: side of UV-space maps (256).
        uv_face_eye_mask: optional ``(h, w)``/``(h, w, C)`` image (uint8 or [0, 1]),
            resized to ``uv_size`` with nearest sampling (DECA's ``uv_face_eye_mask``).
        uv_face_mask: optional, as ``uv_face_eye_mask`` (DECA's ``uv_face_mask``).
        backend: rasteriser backend, ``"torch"`` or ``"pytorch3d"``.
        candidates_per_chunk: memory bound of the torch rasteriser (see RasterSettings).

    Buffers: ``faces`` (F, 3), ``face_uvs`` (F, 3), ``uvs`` (T, 2), ``uv_screen`` (T, 3)
    (DECA's ``uvcoords``: ``(2u - 1, 1 - 2v, 1)``), ``dense_faces`` (DECA's dense UV grid
    triangles), ``uv_face_eye_mask`` and ``uv_face_mask`` (1, 1, uv, uv); not saved in the
    state dict: ``uv_pix_to_face`` (1, uv, uv, 1) and ``uv_bary_coords`` (1, uv, uv, 1, 3),
    the UV layout rasterised once at construction.
    """

    faces: Tensor
    face_uvs: Tensor
    uvs: Tensor
    uv_screen: Tensor
    dense_faces: Tensor
    uv_face_eye_mask: Tensor
    uv_face_mask: Tensor
    uv_pix_to_face: Tensor
    uv_bary_coords: Tensor

    def __init__(
        self,
        faces: Tensor | np.ndarray,
        uvs: Tensor | np.ndarray,
        face_uvs: Tensor | np.ndarray,
        image_size: int | tuple[int, int] = 224,
        uv_size: int = 256,
        uv_face_eye_mask: Tensor | np.ndarray | None = None,
        uv_face_mask: Tensor | np.ndarray | None = None,
        backend: Literal["torch", "pytorch3d"] = "torch",
        candidates_per_chunk: int = 1 << 20,
    ) -> None:
        super().__init__()
        faces_t = _as_tensor(faces, "faces", torch.int64)
        uvs_t = _as_tensor(uvs, "uvs", torch.float32)
        face_uvs_t = _as_tensor(face_uvs, "face_uvs", torch.int64)
        if faces_t.ndim != 2 or faces_t.shape[1] != 3 or faces_t.shape[0] == 0:
            raise ValueError(f"faces must be a non-empty (F, 3) array, got {tuple(faces_t.shape)}")
        if int(faces_t.min()) < 0:
            raise ValueError("faces holds negative vertex indices")
        if uvs_t.ndim != 2 or uvs_t.shape[1] != 2:
            raise ValueError(f"uvs must be (T, 2), got {tuple(uvs_t.shape)}")
        if face_uvs_t.shape != faces_t.shape:
            raise ValueError(
                f"face_uvs must have the shape of faces {tuple(faces_t.shape)}, "
                f"got {tuple(face_uvs_t.shape)}"
            )
        if int(face_uvs_t.min()) < 0 or int(face_uvs_t.max()) >= uvs_t.shape[0]:
            raise ValueError(f"face_uvs must index the {uvs_t.shape[0]} uvs, some are out of range")
        if not isinstance(uv_size, int) or uv_size < 2:
            raise ValueError(f"uv_size must be an int >= 2, got {uv_size!r}")
        self.image_size = _parse_image_size(image_size)
        self.uv_size = uv_size
        self.num_verts = int(faces_t.max()) + 1
        self.raster_settings = RasterSettings(
            image_size=self.image_size, backend=backend, candidates_per_chunk=candidates_per_chunk
        )

        uv_screen = torch.cat([uvs_t * 2 - 1, torch.ones_like(uvs_t[:, :1])], dim=-1)
        uv_screen[:, 1] = -uv_screen[:, 1]
        self.register_buffer("faces", faces_t)
        self.register_buffer("face_uvs", face_uvs_t)
        self.register_buffer("uvs", uvs_t)
        self.register_buffer("uv_screen", uv_screen)
        self.register_buffer("dense_faces", dense_grid_faces(uv_size, uv_size))
        self.register_buffer("uv_face_eye_mask", _uv_mask(uv_face_eye_mask, "uv_face_eye_mask",
                                                          uv_size))
        self.register_buffer("uv_face_mask", _uv_mask(uv_face_mask, "uv_face_mask", uv_size))

        # The UV layout never changes: rasterise it once (DECA redoes it every call).
        uv_fragments = rasterize_meshes(
            uv_screen[None], face_uvs_t, (uv_size, uv_size),
            RasterSettings(image_size=uv_size, candidates_per_chunk=candidates_per_chunk),
        )
        self.register_buffer("uv_pix_to_face", uv_fragments.pix_to_face, persistent=False)
        self.register_buffer("uv_bary_coords", uv_fragments.bary_coords, persistent=False)

    @classmethod
    def from_deca_state_dict(
        cls, state_dict: Mapping[str, Tensor], prefix: str = "deca.render.", **kwargs
    ) -> MeshRenderer:
        """Build from the ``render`` buffers of a DECA/EMOCA checkpoint.

        Reads ``{prefix}faces`` (1, F, 3), ``{prefix}raw_uvcoords`` (1, T, 2) and
        ``{prefix}uvfaces`` (1, F, 3); ``kwargs`` go to the constructor.
        """
        keys = ("faces", "raw_uvcoords", "uvfaces")
        missing = [prefix + k for k in keys if prefix + k not in state_dict]
        if missing:
            raise ValueError(f"state dict lacks renderer buffers: {', '.join(missing)}")
        faces, uvs, face_uvs = (torch.as_tensor(state_dict[prefix + k]) for k in keys)
        return cls(faces.reshape(-1, 3), uvs.reshape(-1, 2), face_uvs.reshape(-1, 3), **kwargs)

    # ----------------------------------------------------------------------------------

    def _check_vertices(self, vertices: Tensor, name: str) -> None:
        if vertices.ndim != 3 or vertices.shape[-1] != 3:
            raise ValueError(f"{name} must be (N, V, 3), got {tuple(vertices.shape)}")
        if vertices.shape[1] < self.num_verts:
            raise ValueError(
                f"{name} has {vertices.shape[1]} vertices but the faces use {self.num_verts}"
            )

    def rasterize(
        self, transformed_vertices: Tensor, image_size: int | tuple[int, int] | None = None
    ) -> Fragments:
        """Rasterise screen-space vertices ``(N, V, 3)`` (DECA's +10 depth offset applied)."""
        self._check_vertices(transformed_vertices, "transformed_vertices")
        offset = torch.tensor([0.0, 0.0, _DEPTH_OFFSET], dtype=transformed_vertices.dtype,
                              device=transformed_vertices.device)
        return rasterize_meshes(
            transformed_vertices + offset, self.faces, image_size or self.image_size,
            self.raster_settings,
        )

    def _uv_grid(self, fragments: Fragments) -> Tensor:
        batch = fragments.pix_to_face.shape[0]
        uv = self.uv_screen[None, :, :2].expand(batch, -1, -1).to(fragments.bary_coords.dtype)
        return interpolate_vertex_attributes(
            fragments.pix_to_face, fragments.bary_coords, uv, self.face_uvs
        )[:, :, :, 0]  # (N, H, W, 2)

    def forward(
        self,
        vertices: Tensor,
        transformed_vertices: Tensor,
        albedos: Tensor,
        lights: Tensor | None = None,
        light_type: Literal["point", "directional"] = "point",
        background: Tensor | None = None,
        image_size: int | tuple[int, int] | None = None,
    ) -> RenderOutput:
        """Render textured, shaded images (DECA's ``SRenderY.forward``).

        Args:
            vertices: ``(N, V, 3)`` world-space vertices (for normals and shading).
            transformed_vertices: ``(N, V, 3)`` screen-space vertices from
                :func:`~emoca_pipeline.render.camera.orthographic_project`; not modified.
            albedos: ``(N, 3, h, w)`` UV albedo maps.
            lights: ``(N, 9, 3)`` SH coefficients, or ``(N, L, 6)`` point/directional
                lights (xyz, rgb), or None (albedo only, zero shading).
            light_type: for ``(N, L, 6)`` lights: ``"point"`` or ``"directional"``.
            background: optional ``(N, 3, H, W)`` (or broadcastable) image behind the mesh.
            image_size: override the renderer's image size.

        Returns:
            :class:`RenderOutput`.
        """
        self._check_vertices(vertices, "vertices")
        if transformed_vertices.shape != vertices.shape:
            raise ValueError(
                f"transformed_vertices must match vertices {tuple(vertices.shape)}, "
                f"got {tuple(transformed_vertices.shape)}"
            )
        batch = vertices.shape[0]
        if albedos.ndim != 4 or albedos.shape[:2] != (batch, 3):
            raise ValueError(f"albedos must be ({batch}, 3, h, w), got {tuple(albedos.shape)}")

        fragments = self.rasterize(transformed_vertices, image_size)
        pix_to_face, bary = fragments.pix_to_face, fragments.bary_coords
        alpha_images = (pix_to_face[..., 0] >= 0).to(vertices.dtype)[:, None]

        with record_function("render.normals"):
            normals = vertex_normals(vertices, self.faces)
            transformed_normals = vertex_normals(transformed_vertices, self.faces)
        with record_function("render.interpolate"):
            # One interpolation for everything indexed by vertex: world normals (with grad)
            # and the screen-space normal's z (detached, only for the visibility mask).
            per_vertex = [normals, transformed_normals[..., 2:].detach()]
            point_lights = (lights is not None and lights.shape[-1] == 6
                            and light_type == "point")
            if point_lights:
                per_vertex.append(vertices.detach())
            pixel_values = interpolate_vertex_attributes(
                pix_to_face, bary, torch.cat(per_vertex, dim=-1), self.faces
            )[:, :, :, 0].permute(0, 3, 1, 2)  # (N, C, H, W)
            normal_images = pixel_values[:, :3]
            pos_mask = (pixel_values[:, 3:4].detach() < -0.05).to(vertices.dtype)
            grid = self._uv_grid(fragments)

        with record_function("render.texture"):
            albedo_images = sample_texture(albedos, grid)

        with record_function("render.shading"):
            if lights is None:
                shading_images = torch.zeros_like(albedo_images)
                images = albedo_images
            else:
                shading_images = self._shade(normal_images, lights, light_type,
                                             pixel_values[:, 4:7] if point_lights else None)
                images = albedo_images * shading_images

        if background is not None:
            images = images * alpha_images + background * (1 - alpha_images)
            albedo_images = albedo_images * alpha_images + background * (1 - alpha_images)
        else:
            images = images * alpha_images
            albedo_images = albedo_images * alpha_images
        return RenderOutput(
            images=images,
            alpha_images=alpha_images,
            albedo_images=albedo_images,
            normal_images=normal_images * alpha_images,
            shading_images=shading_images,
            grid=grid,
            normals=normals,
            transformed_normals=transformed_normals,
            pos_mask=pos_mask,
        )

    @staticmethod
    def _shade(
        normal_images: Tensor, lights: Tensor, light_type: str, position_images: Tensor | None
    ) -> Tensor:
        batch, _, height, width = normal_images.shape
        if lights.ndim == 3 and lights.shape[1:] == (9, 3):
            return sh_shading(normal_images, lights)
        if lights.ndim != 3 or lights.shape[-1] != 6:
            raise ValueError(
                f"lights must be ({batch}, 9, 3) SH or ({batch}, L, 6), got {tuple(lights.shape)}"
            )
        normals = normal_images.permute(0, 2, 3, 1).reshape(batch, -1, 3)
        if light_type == "point":
            assert position_images is not None
            positions = position_images.permute(0, 2, 3, 1).reshape(batch, -1, 3)
            shading = point_shading(positions, normals, lights)
        elif light_type == "directional":
            shading = directional_shading(normals, lights)
        else:
            raise ValueError(f"light_type must be 'point' or 'directional', got {light_type!r}")
        return shading.reshape(batch, height, width, 3).permute(0, 3, 1, 2)

    def render_shape(
        self,
        vertices: Tensor,
        transformed_vertices: Tensor,
        colors: Tensor | None = None,
        images: Tensor | None = None,
        detail_normal_images: Tensor | None = None,
        lights: Tensor | None = None,
        image_size: int | tuple[int, int] | None = None,
    ) -> ShapeRenderOutput:
        """Grey shaded geometry (EMOCA's ``SRenderY.render_shape``).

        Args:
            vertices: ``(N, V, 3)`` world-space vertices.
            transformed_vertices: ``(N, V, 3)`` screen-space vertices.
            colors: optional ``(N, V, 3)`` vertex colours (default: DECA's grey 180/255).
            images: optional ``(N, 3, H, W)`` background (default black).
            detail_normal_images: optional ``(N, 3, H, W)`` normals replacing the
                interpolated ones (detail rendering).
            lights: ``(N, L, 6)`` directional lights (default :data:`DECA_SHAPE_LIGHTS`).
            image_size: override the renderer's image size.

        Returns:
            :class:`ShapeRenderOutput`.
        """
        self._check_vertices(vertices, "vertices")
        batch = vertices.shape[0]
        dtype, device = vertices.dtype, vertices.device
        if lights is None:
            lights = torch.tensor(DECA_SHAPE_LIGHTS, dtype=dtype, device=device)
            lights = lights[None].expand(batch, -1, -1)
        if colors is None:
            colors = torch.full((batch, vertices.shape[1], 3), SHAPE_GREY, dtype=dtype,
                                device=device)
        elif colors.shape != vertices.shape:
            raise ValueError(f"colors must be {tuple(vertices.shape)}, got {tuple(colors.shape)}")

        fragments = self.rasterize(transformed_vertices, image_size)
        pix_to_face, bary = fragments.pix_to_face, fragments.bary_coords
        alpha_images = (pix_to_face[..., 0] >= 0).to(dtype)[:, None]
        normals = vertex_normals(vertices, self.faces)
        transformed_normals = vertex_normals(transformed_vertices, self.faces)
        pixel_values = interpolate_vertex_attributes(
            pix_to_face, bary,
            torch.cat([colors, normals.detach(), transformed_normals[..., 2:].detach()], -1),
            self.faces,
        )[:, :, :, 0].permute(0, 3, 1, 2)
        albedo_images = pixel_values[:, :3]
        normal_images = pixel_values[:, 3:6] if detail_normal_images is None \
            else detail_normal_images
        pos_mask = (pixel_values[:, 6:7] < 0).to(dtype)

        _, _, height, width = albedo_images.shape
        shading = directional_shading(normal_images.permute(0, 2, 3, 1).reshape(batch, -1, 3),
                                      lights)
        shading_images = shading.reshape(batch, height, width, 3).permute(0, 3, 1, 2)
        shaded = albedo_images * shading_images
        background = torch.zeros_like(shaded) if images is None else images
        shape_images = shaded * alpha_images + background * (1 - alpha_images)
        return ShapeRenderOutput(
            images=shape_images,
            alpha_images=alpha_images,
            normal_images=normal_images,
            grid=self._uv_grid(fragments),
            pos_mask=pos_mask,
        )

    def world2uv(self, vertex_values: Tensor) -> Tensor:
        """Rasterise per-vertex values into UV space (DECA's ``world2uv``).

        Args:
            vertex_values: ``(N, V, D)`` (e.g. vertices or normals).

        Returns:
            ``(N, D, uv_size, uv_size)``, zero outside the UV charts.
        """
        if vertex_values.ndim != 3 or vertex_values.shape[1] < self.num_verts:
            raise ValueError(
                f"vertex_values must be (N, V >= {self.num_verts}, D), "
                f"got {tuple(vertex_values.shape)}"
            )
        batch = vertex_values.shape[0]
        num_faces = self.faces.shape[0]
        uv_faces = self.uv_pix_to_face  # (1, uv, uv, 1) face index f (batch of one)
        offsets = torch.arange(batch, device=uv_faces.device).view(-1, 1, 1, 1) * num_faces
        pix_to_face = torch.where(uv_faces >= 0, uv_faces + offsets, -1)
        bary = self.uv_bary_coords.expand(batch, -1, -1, -1, -1)
        values = interpolate_vertex_attributes(pix_to_face, bary, vertex_values, self.faces)
        return values[:, :, :, 0].permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------
# Overlay on the original photograph
# --------------------------------------------------------------------------------------


def _to_hwc_float(array: Tensor | np.ndarray, name: str, channels: tuple[int, ...]) -> np.ndarray:
    if isinstance(array, Tensor):
        array = array.detach().cpu().numpy()
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} must be a tensor or numpy array, got {type(array).__name__}")
    scale = 1.0 / 255.0 if array.dtype == np.uint8 else 1.0
    out = array.astype(np.float32) * scale
    if out.ndim == 2:
        out = out[..., None]
    if out.ndim != 3:
        raise ValueError(f"{name} must be 2-D or 3-D, got shape {array.shape}")
    if out.shape[0] in channels and out.shape[-1] not in channels:
        out = out.transpose(1, 2, 0)  # (C, h, w) -> (h, w, C)
    if out.shape[-1] not in channels:
        raise ValueError(f"{name} must have {channels} channels, got shape {array.shape}")
    return np.ascontiguousarray(out)


def overlay_on_image(
    render: Tensor | np.ndarray,
    alpha: Tensor | np.ndarray,
    image: np.ndarray,
    crop_transform: np.ndarray | Tensor,
) -> np.ndarray:
    """Paste a crop-space render onto the original photograph.

    The render and its alpha are warped from the crop back to the photo with
    ``cv2.warpAffine`` (bilinear) of the inverse of ``crop_transform``, then alpha-blended.

    Args:
        render: ``(3, h, w)`` or ``(h, w, 3)``, float in [0, 1] or uint8, in the same
            channel order as ``image``.
        alpha: ``(h, w)``, ``(1, h, w)`` or ``(h, w, 1)`` coverage in [0, 1].
        image: ``(H, W, 3)`` uint8 original photograph.
        crop_transform: ``(3, 3)`` similarity mapping original pixel coordinates to crop
            pixel coordinates (pixel centres at integers, as OpenCV).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    transform = np.asarray(
        crop_transform.detach().cpu().numpy() if isinstance(crop_transform, Tensor)
        else crop_transform, dtype=np.float64,
    )
    if transform.shape != (3, 3) or not np.all(np.isfinite(transform)):
        raise ValueError(f"crop_transform must be a finite (3, 3) matrix, got {transform.shape}")
    if not np.allclose(transform[2], [0.0, 0.0, 1.0]) or abs(np.linalg.det(transform)) < 1e-12:
        raise ValueError("crop_transform must be an invertible affine matrix (last row 0, 0, 1)")
    render_hwc = _to_hwc_float(render, "render", (3,))
    alpha_hwc = _to_hwc_float(alpha, "alpha", (1,))
    if render_hwc.shape[:2] != alpha_hwc.shape[:2]:
        raise ValueError(
            f"render {render_hwc.shape[:2]} and alpha {alpha_hwc.shape[:2]} differ in size"
        )
    height, width = image.shape[:2]
    # WARP_INVERSE_MAP: dst(p) = src(crop_transform @ p), i.e. the inverse warp crop->photo.
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(render_hwc, transform[:2], (width, height), flags=flags,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    warped_alpha = cv2.warpAffine(alpha_hwc[..., 0], transform[:2], (width, height),
                                  flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    warped_alpha = np.clip(warped_alpha, 0.0, 1.0)[..., None]
    blended = warped_alpha * np.clip(warped, 0.0, 1.0) * 255.0
    blended += (1.0 - warped_alpha) * image.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
