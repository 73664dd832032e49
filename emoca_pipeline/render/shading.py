"""Mesh attributes, interpolation over fragments, and DECA's lighting models.

Everything here is plain differentiable torch. Shapes follow pytorch3d: ``N`` meshes,
``V`` vertices, ``F`` faces, images ``H x W`` with ``K = 1`` face per pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SH_CONSTANT_FACTORS",
    "directional_shading",
    "face_normals",
    "face_vertices",
    "interpolate_face_attributes",
    "interpolate_vertex_attributes",
    "point_shading",
    "sample_texture",
    "sh_basis",
    "sh_shading",
    "vertex_normals",
]


def _sh_constant_factors() -> tuple[float, ...]:
    pi = math.pi
    band1 = (2 * pi / 3) * math.sqrt(3 / (4 * pi))
    band2 = (pi / 4) * 3 * math.sqrt(5 / (12 * pi))
    return (
        1 / math.sqrt(4 * pi),
        band1,
        band1,
        band1,
        band2,
        band2,
        band2,
        (pi / 4) * (3 / 2) * math.sqrt(5 / (12 * pi)),
        (pi / 4) * (1 / 2) * math.sqrt(5 / (4 * pi)),
    )


#: DECA's ``constant_factor`` for the 9 SH bands (Lambertian kernel x basis normalisation),
#: in the order of :func:`sh_basis`.
SH_CONSTANT_FACTORS: tuple[float, ...] = _sh_constant_factors()


def _faces_for_batch(faces: Tensor, batch: int, device: torch.device) -> Tensor:
    """``(F, 3)`` or ``(N, F, 3)`` -> ``(N, F, 3)`` int64."""
    if faces.ndim == 2 and faces.shape[-1] == 3:
        faces = faces.unsqueeze(0).expand(batch, -1, -1)
    elif not (faces.ndim == 3 and faces.shape[-1] == 3 and faces.shape[0] == batch):
        raise ValueError(f"faces must be (F, 3) or ({batch}, F, 3), got {tuple(faces.shape)}")
    return faces.to(device=device, dtype=torch.int64)


def _gather_vertices(values: Tensor, faces: Tensor) -> Tensor:
    """``values (N, V, D)``, ``faces (N, F, 3)`` -> ``(N, F, 3, D)``."""
    batch, num_verts, dim = values.shape
    packed = faces + torch.arange(batch, device=values.device).view(-1, 1, 1) * num_verts
    flat = values.reshape(batch * num_verts, dim).index_select(0, packed.flatten())
    return flat.view(batch, faces.shape[1], 3, dim)


def face_vertices(values: Tensor, faces: Tensor) -> Tensor:
    """Per-face corner values (DECA's ``util.face_vertices``).

    Args:
        values: ``(N, V, D)`` per-vertex values (positions, colours, normals, ...).
        faces: ``(F, 3)`` or ``(N, F, 3)`` vertex indices.

    Returns:
        ``(N, F, 3, D)``.
    """
    if values.ndim != 3:
        raise ValueError(f"values must be (N, V, D), got {tuple(values.shape)}")
    return _gather_vertices(values, _faces_for_batch(faces, values.shape[0], values.device))


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Unit normals ``normalize((v1 - v0) x (v2 - v0))``.

    Args:
        vertices: ``(N, V, 3)``.
        faces: ``(F, 3)`` or ``(N, F, 3)``.

    Returns:
        ``(N, F, 3)``; zero-area faces get a zero vector.
    """
    v0, v1, v2 = face_vertices(vertices, faces).unbind(2)
    normals = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)
    return F.normalize(normals, dim=-1, eps=1e-6)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted vertex normals exactly as DECA's ``util.vertex_normals``.

    Each face adds its unnormalised cross product (twice its area times its unit normal)
    to its three vertices; the sums are normalised with ``F.normalize(eps=1e-6)``.

    Args:
        vertices: ``(N, V, 3)``.
        faces: ``(F, 3)`` or ``(N, F, 3)``.

    Returns:
        ``(N, V, 3)``; vertices used by no face get a zero vector.
    """
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must be (N, V, 3), got {tuple(vertices.shape)}")
    batch, num_verts, _ = vertices.shape
    faces = _faces_for_batch(faces, batch, vertices.device)
    v0, v1, v2 = _gather_vertices(vertices, faces).unbind(2)  # (N, F, 3) each
    cross = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1).reshape(-1, 3)
    packed = faces + torch.arange(batch, device=vertices.device).view(-1, 1, 1) * num_verts
    summed = torch.zeros(batch * num_verts, 3, dtype=vertices.dtype, device=vertices.device)
    for corner in packed.reshape(-1, 3).unbind(1):
        summed = summed.index_add(0, corner, cross)
    return F.normalize(summed, dim=-1, eps=1e-6).view(batch, num_verts, 3)


def _check_fragments(pix_to_face: Tensor, bary_coords: Tensor) -> None:
    if pix_to_face.ndim != 4:
        raise ValueError(f"pix_to_face must be (N, H, W, K), got {tuple(pix_to_face.shape)}")
    if bary_coords.shape != (*pix_to_face.shape, 3):
        raise ValueError(
            f"bary_coords must be {(*pix_to_face.shape, 3)}, got {tuple(bary_coords.shape)}"
        )


def _blend(bary: Tensor, corners: Tensor) -> Tensor:
    """``sum_k bary[:, k] * corners[:, k]`` for ``bary (P, 3)``, ``corners (P, 3, D)``.

    Spelled out: a tiny bmm or a strided ``sum(dim=1)`` is several times slower on CPU.
    """
    b0, b1, b2 = bary.unsqueeze(-1).unbind(1)
    c0, c1, c2 = corners.unbind(1)
    return b0 * c0 + b1 * c1 + b2 * c2


def interpolate_face_attributes(
    pix_to_face: Tensor, bary_coords: Tensor, face_attributes: Tensor
) -> Tensor:
    """pytorch3d's ``interpolate_face_attributes``: barycentric blend of per-corner values.

    Args:
        pix_to_face: ``(N, H, W, K)`` packed face index, -1 for background.
        bary_coords: ``(N, H, W, K, 3)``.
        face_attributes: ``(N * F, 3, D)`` values at each face's three corners.

    Returns:
        ``(N, H, W, K, D)``, zero at background pixels.
    """
    _check_fragments(pix_to_face, bary_coords)
    if face_attributes.ndim != 3 or face_attributes.shape[1] != 3:
        raise ValueError(
            f"face_attributes must be (N * F, 3, D), got {tuple(face_attributes.shape)}"
        )
    dim = face_attributes.shape[-1]
    flat_faces = pix_to_face.reshape(-1)
    pixel = torch.nonzero(flat_faces >= 0).squeeze(1)
    corners = face_attributes.index_select(0, flat_faces.index_select(0, pixel))  # (P, 3, D)
    bary = bary_coords.reshape(-1, 3).index_select(0, pixel).to(corners.dtype)
    values = _blend(bary, corners)
    out = torch.zeros(flat_faces.shape[0], dim, dtype=values.dtype, device=values.device)
    return out.index_copy(0, pixel, values).view(*pix_to_face.shape, dim)


def interpolate_vertex_attributes(
    pix_to_face: Tensor, bary_coords: Tensor, vertex_attributes: Tensor, faces: Tensor
) -> Tensor:
    """Barycentric blend of per-vertex values without building ``(N, F, 3, D)`` first.

    Equivalent to ``interpolate_face_attributes(pix_to_face, bary_coords,
    face_vertices(vertex_attributes, faces).flatten(0, 1))``.

    Args:
        pix_to_face: ``(N, H, W, K)`` packed index ``n * F + f``, -1 for background.
        bary_coords: ``(N, H, W, K, 3)``.
        vertex_attributes: ``(N, V, D)``.
        faces: ``(F, 3)`` or ``(N, F, 3)`` indices into the ``V`` vertices (for UV
            attributes: the per-face UV indices).

    Returns:
        ``(N, H, W, K, D)``, zero at background pixels.
    """
    _check_fragments(pix_to_face, bary_coords)
    if vertex_attributes.ndim != 3:
        raise ValueError(
            f"vertex_attributes must be (N, V, D), got {tuple(vertex_attributes.shape)}"
        )
    batch, num_verts, dim = vertex_attributes.shape
    if pix_to_face.shape[0] != batch:
        raise ValueError(
            f"pix_to_face has batch size {pix_to_face.shape[0]} "
            f"but vertex_attributes has {batch}"
        )
    faces = _faces_for_batch(faces, batch, vertex_attributes.device)
    num_faces = faces.shape[1]
    packed = (faces + torch.arange(batch, device=faces.device).view(-1, 1, 1) * num_verts)
    packed = packed.reshape(-1, 3)

    flat_faces = pix_to_face.reshape(-1)
    pixel = torch.nonzero(flat_faces >= 0).squeeze(1)
    face = flat_faces.index_select(0, pixel)
    if face.numel() and int(face.max()) >= batch * num_faces:
        raise ValueError(f"pix_to_face holds face {int(face.max())} >= N * F = {batch * num_faces}")
    corner_index = packed.index_select(0, face).flatten()
    corners = vertex_attributes.reshape(-1, dim).index_select(0, corner_index).view(-1, 3, dim)
    bary = bary_coords.reshape(-1, 3).index_select(0, pixel).to(corners.dtype)
    values = _blend(bary, corners)
    out = torch.zeros(flat_faces.shape[0], dim, dtype=values.dtype, device=values.device)
    return out.index_copy(0, pixel, values).view(*pix_to_face.shape, dim)


def sh_basis(normals: Tensor, dim: int = -1) -> Tensor:
    """DECA's 9 SH basis functions scaled by :data:`SH_CONSTANT_FACTORS`.

    ``[1, x, y, z, xy, xz, yz, x^2 - y^2, 3 z^2 - 1] * constant_factor``.

    Args:
        normals: tensor with 3 components along ``dim`` (e.g. ``(N, 3, H, W)`` with
            ``dim=1`` or ``(..., 3)``).
        dim: the axis of the 3 components.

    Returns:
        Same shape with 9 components along ``dim``.
    """
    if normals.shape[dim] != 3:
        raise ValueError(f"normals must have 3 components on dim {dim}, got {normals.shape}")
    x, y, z = normals.unbind(dim)
    basis = torch.stack(
        [torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1],
        dim=dim,
    )
    shape = [1] * basis.ndim
    shape[dim] = 9
    factors = torch.tensor(SH_CONSTANT_FACTORS, dtype=basis.dtype, device=basis.device)
    return basis * factors.view(shape)


def sh_shading(normal_images: Tensor, sh_coefficients: Tensor) -> Tensor:
    """DECA's ``add_SHlight``: RGB irradiance from 9 SH coefficients per channel.

    Args:
        normal_images: ``(N, 3, H, W)`` normals (not re-normalised, as in DECA).
        sh_coefficients: ``(N, 9, 3)`` SH coefficients (band, RGB).

    Returns:
        ``(N, 3, H, W)`` shading, ``sum_b coeff[b, c] * basis_b(n)``.
    """
    if normal_images.ndim != 4 or normal_images.shape[1] != 3:
        raise ValueError(f"normal_images must be (N, 3, H, W), got {tuple(normal_images.shape)}")
    if sh_coefficients.shape != (normal_images.shape[0], 9, 3):
        raise ValueError(
            f"sh_coefficients must be ({normal_images.shape[0]}, 9, 3), "
            f"got {tuple(sh_coefficients.shape)}"
        )
    batch, _, height, width = normal_images.shape
    x, y, z = normal_images.flatten(2).unbind(1)  # (N, H * W) each
    basis = torch.stack(
        [torch.ones_like(x), x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1], dim=1
    )  # (N, 9, H * W)
    # Fold DECA's constant factors into the (small) coefficients, not the (big) basis.
    factors = torch.tensor(SH_CONSTANT_FACTORS, dtype=basis.dtype, device=basis.device)
    weights = (sh_coefficients.to(basis.dtype) * factors[:, None]).transpose(1, 2)  # (N, 3, 9)
    return torch.bmm(weights, basis).view(batch, 3, height, width)


def _check_lights(lights: Tensor, batch: int) -> None:
    if lights.ndim != 3 or lights.shape[0] != batch or lights.shape[-1] != 6:
        raise ValueError(
            f"lights must be ({batch}, L, 6) = (x, y, z, r, g, b), got {tuple(lights.shape)}"
        )


def directional_shading(normals: Tensor, lights: Tensor) -> Tensor:
    """DECA's ``add_directionlight``: mean over lights of ``clamp(n . d, 0, 1) * rgb``.

    Args:
        normals: ``(N, P, 3)``.
        lights: ``(N, L, 6)``: direction (normalised here) and RGB intensity.

    Returns:
        ``(N, P, 3)``.
    """
    _check_lights(lights, normals.shape[0])
    directions = F.normalize(lights[..., :3], dim=-1)
    cosine = torch.einsum("npk,nlk->nlp", normals, directions).clamp(0.0, 1.0)
    return torch.einsum("nlp,nlc->npc", cosine, lights[..., 3:]) / lights.shape[1]


def point_shading(positions: Tensor, normals: Tensor, lights: Tensor) -> Tensor:
    """DECA's ``add_pointlight``: mean over lights of ``(n . normalize(l - p)) * rgb``.

    Not clamped, as in DECA.

    Args:
        positions: ``(N, P, 3)`` surface points.
        normals: ``(N, P, 3)``.
        lights: ``(N, L, 6)``: position and RGB intensity.

    Returns:
        ``(N, P, 3)``.
    """
    _check_lights(lights, normals.shape[0])
    to_light = F.normalize(lights[:, :, None, :3] - positions[:, None], dim=-1)  # (N,L,P,3)
    cosine = (normals[:, None] * to_light).sum(-1)
    return torch.einsum("nlp,nlc->npc", cosine, lights[..., 3:]) / lights.shape[1]


def sample_texture(texture: Tensor, grid: Tensor) -> Tensor:
    """Sample a UV texture: ``F.grid_sample(texture, grid, align_corners=False)`` (bilinear).

    Args:
        texture: ``(N, C, h, w)`` UV map (e.g. albedo ``(N, 3, 256, 256)``).
        grid: ``(N, H, W, 2)`` UV coordinates in [-1, 1] (x = u, y = v downwards).

    Returns:
        ``(N, C, H, W)``.
    """
    if texture.ndim != 4:
        raise ValueError(f"texture must be (N, C, h, w), got {tuple(texture.shape)}")
    if grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != texture.shape[0]:
        raise ValueError(
            f"grid must be ({texture.shape[0]}, H, W, 2), got {tuple(grid.shape)}"
        )
    return F.grid_sample(texture, grid.to(texture.dtype), align_corners=False)
