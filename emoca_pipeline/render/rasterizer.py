"""Pure-PyTorch mesh rasteriser with pytorch3d's semantics (one face per pixel, no blur).

Screen convention (the one DECA/EMOCA use after their axis flips)
-----------------------------------------------------------------
Vertices come in an NDC-like screen space: a point at ``x`` in [-1, 1] lands at pixel
column ``(x + 1) / 2 * W - 0.5`` and a point at ``y`` lands at pixel row
``(y + 1) / 2 * H - 0.5``; +x points right and +y points *down* the image, for any aspect
ratio (x is scaled by W, y by H). Integer pixel coordinates are pixel centres, as in
OpenCV and scikit-image, so pixel ``(row, col)`` samples the point
``x = (2 col + 1) / W - 1``, ``y = (2 row + 1) / H - 1``. ``z`` is depth: smaller is nearer.

pytorch3d's own NDC has +x left and +y up; DECA negates x and y before calling it (and
rescales the longer side of non-square images), which gives exactly the convention above.
The ``backend="pytorch3d"`` switch applies those flips and calls pytorch3d itself.

Coverage and visibility rules (pytorch3d's, with blur_radius 0 and faces_per_pixel 1)
------------------------------------------------------------------------------------
- Barycentrics are plain screen-space ones (not perspective-correct), computed as
  pytorch3d does: ``w_i = edge_i(p) / (A + 1e-8)`` with ``A`` twice the signed area.
- A pixel is covered by a face when all three barycentrics are > 0; faces of either
  winding are drawn (no back-face culling); faces with ``|A| <= 1e-8`` (in the [-1, 1]
  units) are skipped.
- A face with any vertex at ``z < 1e-8`` is skipped whole: pytorch3d's ``kEpsilon`` test
  on the smallest vertex ``z`` of the screen-space input ("faces with at least one vertex
  behind the camera won't render correctly", ``CheckPointOutsideBoundingBox`` in
  ``csrc/rasterize_meshes/rasterize_meshes_cpu.cpp`` and ``.cu``, and
  ``rasterize_meshes_python``), made, as there, on the float value against the double
  ``1e-8``. The interpolated depth ``z = sum_i w_i z_i`` must also be >= 0 (pytorch3d's
  ``pz < 0`` test; it cannot fail once every vertex has ``z >= 1e-8``). Among the covering
  faces the smallest ``z`` wins and an exact tie goes to the lower (packed) face index.

Visibility is not differentiable. Gradients reach the vertex positions through the
barycentric coordinates and the depth, recomputed with autograd from the vertices of the
winning face of each pixel (what pytorch3d's backward pass computes).

Algorithm
---------
Faces are grouped by the size of their (clipped) pixel bounding box, rounded up to a
ladder 1, 2, 3, 4, 6, 8, 12, ... per axis. A group of ``M`` faces with ``h x w`` windows is
tested as one ``(M, h, w)`` block: the edge functions are separable,
``e(row, col) = U[col] - V[row]``, so each costs one broadcast subtraction, with no
per-pixel gathers. The depth test is a ``scatter_reduce(amin)`` of a packed 64-bit
``(z, face)`` key per pixel (float32; float64 input takes an exact two-pass variant). The
work is proportional to the summed bounding-box areas (about 1.15x of them), not to
pixels x faces, and the same code runs on CPU and CUDA.
"""

from __future__ import annotations

import bisect
import importlib.util
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor
from torch.profiler import record_function

__all__ = [
    "Fragments",
    "RasterSettings",
    "pixel_centers",
    "pytorch3d_available",
    "rasterize_meshes",
]

# pytorch3d's kEpsilon, for the zero-area test and the barycentric denominator.
_AREA_EPS = 1e-8
# pytorch3d's kEpsilon again: a face with a vertex nearer than this is skipped whole.
_MIN_VERTEX_Z = 1e-8
# Slack (in pixels) added to face bounding boxes so that rounding in the bbox arithmetic
# can never drop a pixel centre that the exact barycentric test would accept.
_BBOX_SLACK_PX = 1e-3
_SENTINEL = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


@dataclass(frozen=True)
class RasterSettings:
    """Settings of :func:`rasterize_meshes`.

    Attributes:
        image_size: output size, an int for square images or ``(H, W)``.
        backend: ``"torch"`` (this module's rasteriser, CPU and CUDA) or ``"pytorch3d"``
            (``pytorch3d.renderer.mesh.rasterize_meshes`` with DECA's flips; needs pytorch3d).
        faces_per_chunk: most faces tested together (bounds the per-chunk bookkeeping).
        candidates_per_chunk: most (face, pixel) candidates tested together; peak memory
            is about 100 bytes per candidate (~100 MB by default). A single face whose
            bounding-box window is larger still goes in a chunk of its own.
        compute_dists: also return ``dists`` (pytorch3d's signed squared distance from the
            pixel centre to the winning face's boundary, negative inside). Off by default.
    """

    image_size: int | tuple[int, int] = 224
    backend: Literal["torch", "pytorch3d"] = "torch"
    faces_per_chunk: int = 1 << 16
    candidates_per_chunk: int = 1 << 20
    compute_dists: bool = False

    def __post_init__(self) -> None:
        _parse_image_size(self.image_size)
        if self.backend not in ("torch", "pytorch3d"):
            raise ValueError(
                f"RasterSettings.backend must be 'torch' or 'pytorch3d', got {self.backend!r}"
            )
        if int(self.faces_per_chunk) < 1:
            raise ValueError(
                f"RasterSettings.faces_per_chunk must be >= 1, got {self.faces_per_chunk}"
            )
        if int(self.candidates_per_chunk) < 1:
            raise ValueError(
                "RasterSettings.candidates_per_chunk must be >= 1, "
                f"got {self.candidates_per_chunk}"
            )


class Fragments(NamedTuple):
    """Rasteriser output (pytorch3d's layout with ``K = faces_per_pixel = 1``).

    Attributes:
        pix_to_face: ``(N, H, W, 1)`` int64, packed index ``n * F + f`` of the face seen at
            each pixel, -1 for background.
        zbuf: ``(N, H, W, 1)`` interpolated depth of that face, -1 for background.
        bary_coords: ``(N, H, W, 1, 3)`` screen-space barycentrics, -1 for background.
        dists: ``(N, H, W, 1)`` signed squared distance to the face boundary (negative
            inside), -1 for background; ``None`` unless requested.
    """

    pix_to_face: Tensor
    zbuf: Tensor
    bary_coords: Tensor
    dists: Tensor | None


def pytorch3d_available() -> bool:
    """Whether the optional pytorch3d backend can be imported."""
    return importlib.util.find_spec("pytorch3d") is not None


def pixel_centers(
    size: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Screen coordinates of the ``size`` pixel centres along one axis: ``(2 i + 1)/size - 1``.

    Returns:
        ``(size,)`` tensor.
    """
    idx = torch.arange(size, dtype=torch.float64, device=device)
    return ((2.0 * idx + 1.0) / size - 1.0).to(dtype)


def _parse_image_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(image_size, bool):
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
    if isinstance(image_size, int):
        height = width = image_size
    elif isinstance(image_size, tuple | list) and len(image_size) == 2:
        height, width = image_size
    else:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in (height, width)):
        raise ValueError(f"image_size must hold ints, got {image_size!r}")
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return int(height), int(width)


def _check_inputs(verts: Tensor, faces: Tensor) -> Tensor:
    """Validate shapes and return faces as ``(N, F, 3)`` int64 on the vertices' device."""
    if not isinstance(verts, Tensor) or verts.ndim != 3 or verts.shape[-1] != 3:
        shape = tuple(verts.shape) if isinstance(verts, Tensor) else type(verts).__name__
        raise ValueError(f"verts must be a (N, V, 3) tensor, got {shape}")
    if not verts.is_floating_point():
        raise ValueError(f"verts must be floating point, got {verts.dtype}")
    if not isinstance(faces, Tensor):
        raise ValueError(f"faces must be a tensor, got {type(faces).__name__}")
    if faces.is_floating_point() or faces.dtype == torch.bool:
        raise ValueError(f"faces must hold integer vertex indices, got {faces.dtype}")
    batch, num_verts = verts.shape[:2]
    if faces.ndim == 2 and faces.shape[-1] == 3:
        faces = faces.unsqueeze(0).expand(batch, -1, -1)
    elif faces.ndim == 3 and faces.shape[-1] == 3:
        if faces.shape[0] != batch:
            raise ValueError(
                f"faces has batch size {faces.shape[0]} but verts has batch size {batch}"
            )
    else:
        raise ValueError(f"faces must be (F, 3) or (N, F, 3), got {tuple(faces.shape)}")
    faces = faces.to(device=verts.device, dtype=torch.int64)
    if faces.numel() > 0:
        lo, hi = int(faces.min()), int(faces.max())
        if lo < 0 or hi >= num_verts:
            raise ValueError(
                f"faces index vertices in [{lo}, {hi}] but verts has {num_verts} vertices"
            )
    return faces


def rasterize_meshes(
    verts: Tensor,
    faces: Tensor,
    image_size: int | tuple[int, int] | None = None,
    settings: RasterSettings | None = None,
) -> Fragments:
    """Rasterise a batch of meshes that share a face count (see the module docstring).

    Args:
        verts: ``(N, V, 3)`` vertices in screen space (x right, y down, in [-1, 1] across
            the image; z depth, nearer is smaller: a face is drawn only when all three of
            its vertices have ``z >= 1e-8``).
        faces: ``(F, 3)`` (shared by the batch) or ``(N, F, 3)`` integer vertex indices.
        image_size: int or ``(H, W)``; overrides ``settings.image_size`` when given.
        settings: :class:`RasterSettings` (default: ``RasterSettings()``).

    Returns:
        :class:`Fragments` with ``pix_to_face`` ``(N, H, W, 1)`` (packed ``n * F + f``),
        ``zbuf`` ``(N, H, W, 1)``, ``bary_coords`` ``(N, H, W, 1, 3)`` and ``dists``.
        ``zbuf``/``bary_coords``/``dists`` carry gradients to ``verts``.
    """
    settings = settings or RasterSettings()
    height, width = _parse_image_size(settings.image_size if image_size is None else image_size)
    faces = _check_inputs(verts, faces)
    if settings.backend == "pytorch3d":
        return _rasterize_pytorch3d(verts, faces, height, width, settings.compute_dists)
    return _rasterize_torch(verts, faces, height, width, settings)


# --------------------------------------------------------------------------------------
# torch backend
# --------------------------------------------------------------------------------------


def _edge(px: Tensor, py: Tensor, ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    """pytorch3d's EdgeFunctionForward(p, a, b) = (p - a) x (b - a) (2-D cross product)."""
    return (px - ax) * (by - ay) - (py - ay) * (bx - ax)


def _barycentrics(px: Tensor, py: Tensor, tri: Tensor) -> Tensor:
    """Barycentrics of points ``(P,)`` in triangles ``(P, 3, >=2)``, as pytorch3d computes them.

    Returns:
        ``(P, 3)``.
    """
    # unbind (not indexing): its backward is one stack instead of a zero-filled
    # (P, 3, 3) gradient per selected entry
    xs, ys = tri.unbind(-1)[:2]
    x0, x1, x2 = xs.unbind(-1)
    y0, y1, y2 = ys.unbind(-1)
    area = _edge(x2, y2, x0, y0, x1, y1) + _AREA_EPS
    w0 = _edge(px, py, x1, y1, x2, y2) / area
    w1 = _edge(px, py, x2, y2, x0, y0) / area
    w2 = _edge(px, py, x0, y0, x1, y1) / area
    return torch.stack([w0, w1, w2], dim=-1)


def _squared_distance_to_boundary(px: Tensor, py: Tensor, tri: Tensor) -> Tensor:
    """Squared distance ``(P,)`` from points to the nearest edge of triangles ``(P, 3, >=2)``."""
    point = torch.stack([px, py], dim=-1)
    best = None
    for a, b in ((0, 1), (1, 2), (2, 0)):
        va, vb = tri[:, a, :2], tri[:, b, :2]
        edge = vb - va
        length2 = (edge * edge).sum(-1)
        t = ((point - va) * edge).sum(-1) / length2.clamp_min(1e-30)
        closest = va + t.clamp(0.0, 1.0).unsqueeze(-1) * edge
        d2 = ((point - closest) ** 2).sum(-1)
        best = d2 if best is None else torch.minimum(best, d2)
    assert best is not None
    return best


# Groups of faces whose windows hold fewer cells than this are rasterised by exact
# bounding-box enumeration instead (one pass for all of them): a window pass costs a fixed
# ~50 tensor operations, which small groups do not amortise.
_MIN_WINDOW_CELLS = 1 << 15
# pytorch3d's pairs of corners per edge: w0 uses edge v1 -> v2, w1 v2 -> v0, w2 v0 -> v1.
_EDGES = ((1, 2), (2, 0), (0, 1))


class _FaceTable(NamedTuple):
    """Per-face data for the coverage test, for the ``M = N * F`` packed faces (no grad)."""

    coeffs: Tensor  # (M, 16): per edge (ax, ay, by - ay, bx - ax) x 3, z0, z1, z2, area
    ints: Tensor  # (M, 3) int64: first column, first row, flat index n * H * W of the image
    box_w: Tensor  # (M,) int64 bounding-box width in pixels, 0 when the face is skipped
    box_h: Tensor  # (M,) int64


def _face_table(
    face_verts: Tensor, batch: int, height: int, width: int, dtype: torch.dtype
) -> _FaceTable:
    fv = face_verts.to(dtype)
    xs, ys, zs = fv.unbind(-1)
    (x0, x1, x2), (y0, y1, y2) = xs.unbind(1), ys.unbind(1)
    # pytorch3d tests EdgeFunction(v0, v1, v2) for zero area and divides by
    # EdgeFunction(v2, v0, v1) + eps: the same value up to rounding.
    face_area = _edge(x0, y0, x1, y1, x2, y2)
    area = _edge(x2, y2, x0, y0, x1, y1) + _AREA_EPS
    finite = torch.isfinite(fv.sum(dim=(1, 2)))  # a NaN or inf anywhere spoils the sum
    # pytorch3d compares the float z with the double kEpsilon: compare in float64.
    in_front = zs.amin(dim=1).double() >= _MIN_VERTEX_Z
    drawable = finite & (face_area.abs() > _AREA_EPS) & in_front
    columns = []
    for a, b in _EDGES:
        ax, ay = xs[:, a], ys[:, a]
        columns += [ax, ay, ys[:, b] - ay, xs[:, b] - ax]
    coeffs = torch.stack([*columns, zs[:, 0], zs[:, 1], zs[:, 2], area], dim=1)

    # Integer pixel i has its centre at (x + 1) / 2 * size - 0.5 (module docstring).
    def pixel_range(coords: Tensor, size: int) -> tuple[Tensor, Tensor]:
        lo = (coords.amin(dim=1).double() + 1.0) * (size / 2.0) - 0.5
        hi = (coords.amax(dim=1).double() + 1.0) * (size / 2.0) - 0.5
        first = torch.ceil(torch.nan_to_num(lo, nan=2.0 * size) - _BBOX_SLACK_PX)
        last = torch.floor(torch.nan_to_num(hi, nan=-2.0 * size) + _BBOX_SLACK_PX)
        first = first.clamp(0, size).long()
        last = last.clamp(-1, size - 1).long()
        return first, (last - first + 1).clamp_min(0)

    col0, box_w = pixel_range(xs, width)
    row0, box_h = pixel_range(ys, height)
    drawn = drawable & (box_w > 0) & (box_h > 0)
    zero = torch.zeros_like(box_w)
    num_faces = fv.shape[0] // max(batch, 1)
    image = torch.arange(batch, device=fv.device).repeat_interleave(num_faces)
    ints = torch.stack([col0, row0, image * (height * width)], dim=1)
    box_w, box_h = torch.where(drawn, box_w, zero), torch.where(drawn, box_h, zero)
    return _FaceTable(coeffs, ints, box_w, box_h)


def _window_ladder(limit: int) -> list[int]:
    """Window sizes 1, 2, 3, 4, 6, 8, 12, ... up to ``limit``: at most 4/3 wasted per axis."""
    sizes = {1}
    k = 1
    while k < limit:
        sizes.update({2 * k, 3 * k})
        k *= 2
    return sorted(s for s in sizes if s < limit) + [limit]


def _plan_chunks(
    table: _FaceTable, height: int, width: int, settings: RasterSettings
) -> list[tuple[Tensor, tuple[int, int] | None]]:
    """Split the drawn faces into chunks bounded by the settings.

    Faces are grouped by window size (bounding box rounded up on the ladder); big groups
    become window chunks ``(faces, (h, w))``, the faces of small groups are pooled into
    exact-enumeration chunks ``(faces, None)``.
    """
    device = table.box_w.device
    drawn = table.box_w > 0
    ladder_w, ladder_h = _window_ladder(width), _window_ladder(height)
    win_w = torch.searchsorted(torch.tensor(ladder_w, device=device), table.box_w)
    win_h = torch.searchsorted(torch.tensor(ladder_h, device=device), table.box_h)
    group = torch.where(drawn, win_h * len(ladder_w) + win_w, -1)
    order = torch.argsort(group, stable=True)
    groups, counts = torch.unique_consecutive(group.index_select(0, order), return_counts=True)

    chunks: list[tuple[Tensor, tuple[int, int] | None]] = []
    pooled: list[Tensor] = []
    start = 0
    for g, count in zip(groups.tolist(), counts.tolist(), strict=True):
        faces = order[start:start + count]
        start += count
        if g < 0:
            continue
        window = (ladder_h[g // len(ladder_w)], ladder_w[g % len(ladder_w)])
        cells = window[0] * window[1]
        if count * cells < _MIN_WINDOW_CELLS:
            pooled.append(faces)
            continue
        step = max(1, min(settings.faces_per_chunk, settings.candidates_per_chunk // cells))
        chunks += [(faces[s:s + step], window) for s in range(0, count, step)]

    if pooled:
        faces = torch.cat(pooled)
        cumsum = torch.cumsum(table.box_w[faces] * table.box_h[faces], 0).tolist()
        start = 0
        while start < len(cumsum):
            before = cumsum[start - 1] if start > 0 else 0
            stop = bisect.bisect_right(cumsum, before + settings.candidates_per_chunk, lo=start)
            stop = min(max(stop, start + 1), start + settings.faces_per_chunk)
            chunks.append((faces[start:stop], None))
            start = stop
    return chunks


def _coverage(
    coeffs: Tensor, px: Tensor, py: Tensor, col_axis: int, row_axis: int
) -> tuple[Tensor, Tensor]:
    """Barycentric test for pixel centres ``px``/``py``; returns depth ``z`` and ``covered``.

    The edge function is separable, ``e = (px - ax)(by - ay) - (py - ay)(bx - ax)``: the
    two products are formed on ``px`` and ``py`` and combined by one (broadcast)
    subtraction. ``col_axis``/``row_axis`` insert the broadcast axes of the window path
    (-1 for none). Pixels with a NaN centre (beyond the image) are never covered.
    """
    c = coeffs.unbind(1)
    bary = []
    for edge in range(3):
        ax, ay, dy, dx = (t.unsqueeze(1) if col_axis >= 0 else t
                          for t in c[4 * edge:4 * edge + 4])
        col_part = (px - ax) * dy
        row_part = (py - ay) * dx
        if col_axis >= 0:
            col_part, row_part = col_part.unsqueeze(col_axis), row_part.unsqueeze(row_axis)
        bary.append(col_part - row_part)
    z0, z1, z2, area = (t.view(-1, *([1] * (bary[0].ndim - 1))) for t in c[12:])
    w0, w1, w2 = (e / area for e in bary)
    z = w0 * z0 + w1 * z1
    z += w2 * z2
    # z >= 0 is pytorch3d's pz test; with every vertex at z >= 1e-8 it holds (and keeps
    # the float bit pattern of z ordered like its value, which the packed key needs).
    covered = (w0 > 0) & (w1 > 0) & (w2 > 0) & (z >= 0)
    return z, covered


def _window_candidates(
    table: _FaceTable, faces: Tensor, window: tuple[int, int], x_lut: Tensor, y_lut: Tensor,
    height: int, width: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Test the ``h x w`` window of pixels from each face's bounding-box corner at once.

    Window pixels outside the bounding box fail the exact test on their own; those beyond
    the image read a NaN centre from the padded lookup tables.

    Returns:
        ``face (M_c, 1, 1)`` packed index, ``pixel (M_c, h, w)`` flat pixel index,
        ``z (M_c, h, w)`` and ``covered (M_c, h, w)``.
    """
    window_h, window_w = window
    device = faces.device
    ints = table.ints.index_select(0, faces)
    cols = ints[:, 0:1] + torch.arange(window_w, device=device)  # (M_c, w)
    rows = ints[:, 1:2] + torch.arange(window_h, device=device)  # (M_c, h)
    z, covered = _coverage(
        table.coeffs.index_select(0, faces), x_lut[cols], y_lut[rows], col_axis=1, row_axis=2
    )
    row_start = ints[:, 2:3] + rows.clamp_max(height - 1) * width
    pixel = row_start.unsqueeze(2) + cols.clamp_max(width - 1).unsqueeze(1)
    return faces.view(-1, 1, 1), pixel, z, covered


def _exact_candidates(
    table: _FaceTable, faces: Tensor, x_lut: Tensor, y_lut: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Test exactly the bounding-box pixels of each face, laid out flat.

    Returns:
        ``face``, ``pixel``, ``z`` and ``covered``, each ``(C,)``.
    """
    device = faces.device
    box_w = table.box_w.index_select(0, faces)
    counts = box_w * table.box_h.index_select(0, faces)
    total = int(counts.sum())
    local = torch.repeat_interleave(torch.arange(faces.shape[0], device=device), counts,
                                    output_size=total)
    offset = torch.arange(total, device=device) - (torch.cumsum(counts, 0) - counts)[local]
    width_of = box_w.index_select(0, local)
    dy = torch.div(offset, width_of, rounding_mode="floor")
    face = faces.index_select(0, local)
    ints = table.ints.index_select(0, face)
    col = ints[:, 0] + (offset - dy * width_of)
    row = ints[:, 1] + dy
    z, covered = _coverage(
        table.coeffs.index_select(0, face), x_lut[col], y_lut[row], col_axis=-1, row_axis=-1
    )
    return face, ints[:, 2] + row * width + col, z, covered


def _visible_faces(
    face_verts: Tensor, batch: int, height: int, width: int, settings: RasterSettings
) -> Tensor:
    """Depth test. Returns ``(N * H * W,)`` int64 packed face index per pixel, -1 if none."""
    device = face_verts.device
    # float32 visibility for float32/16 inputs (packed 64-bit key); exact float64 otherwise.
    dtype = torch.float64 if face_verts.dtype == torch.float64 else torch.float32
    table = _face_table(face_verts, batch, height, width, dtype)
    plan = _plan_chunks(table, height, width, settings)
    # Pixel-centre lookup tables, NaN past the image: windows may hang over its edge.
    nan = float("nan")
    x_lut = torch.cat([pixel_centers(width, dtype, device),
                       torch.full((width,), nan, dtype=dtype, device=device)])
    y_lut = torch.cat([pixel_centers(height, dtype, device),
                       torch.full((height,), nan, dtype=dtype, device=device)])
    num_pixels = batch * height * width

    def chunks():
        for faces, window in plan:
            if window is None:
                yield _exact_candidates(table, faces, x_lut, y_lut, height, width)
            else:
                yield _window_candidates(table, faces, window, x_lut, y_lut, height, width)

    best = torch.full((num_pixels,), _SENTINEL, dtype=torch.int64, device=device)
    if dtype == torch.float32:
        # One pass: amin over key = (float bits of z) << 32 | face. For z >= 0 the IEEE bit
        # pattern orders like the value, and equal z falls back to the lower face index.
        for face, pixel, z, covered in chunks():
            z_bits = (z + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into +0.0
            key = torch.where(covered, (z_bits << 32) | face, _SENTINEL)
            best.scatter_reduce_(0, pixel.flatten(), key.flatten(), reduce="amin")
        return torch.where(best == _SENTINEL, -1, best & _LOW32)

    # Two passes in float64: nearest depth per pixel, then the lowest face at that depth.
    inf = torch.tensor(float("inf"), dtype=dtype, device=device)
    zmin = torch.full((num_pixels,), float("inf"), dtype=dtype, device=device)
    for _face, pixel, z, covered in chunks():
        zmin.scatter_reduce_(
            0, pixel.flatten(), torch.where(covered, z, inf).flatten(), reduce="amin"
        )
    for face, pixel, z, covered in chunks():
        winner = covered & (z == zmin[pixel])
        key = torch.where(winner, face, _SENTINEL)
        best.scatter_reduce_(0, pixel.flatten(), key.flatten(), reduce="amin")
    return torch.where(best == _SENTINEL, -1, best)


def _rasterize_torch(
    verts: Tensor, faces: Tensor, height: int, width: int, settings: RasterSettings
) -> Fragments:
    batch, num_verts = verts.shape[:2]
    device = verts.device
    num_pixels = batch * height * width

    # Packed vertex indices (N * F, 3) into verts viewed as (N * V, 3).
    packed_faces = (faces + torch.arange(batch, device=device).view(-1, 1, 1) * num_verts)
    packed_faces = packed_faces.reshape(-1, 3)
    flat_verts = verts.reshape(-1, 3)

    if packed_faces.shape[0] == 0 or num_pixels == 0:
        face_of_pixel = torch.full((num_pixels,), -1, dtype=torch.int64, device=device)
    else:
        with torch.no_grad(), record_function("rasterize.visibility"):
            face_verts = flat_verts.detach().index_select(0, packed_faces.flatten())
            face_verts = face_verts.view(-1, 3, 3)  # (N * F, 3, 3)
            face_of_pixel = _visible_faces(face_verts, batch, height, width, settings)

    with record_function("rasterize.barycentrics"):
        return _fragments_for(
            verts, flat_verts, packed_faces, face_of_pixel, batch, height, width, settings
        )


def _fragments_for(
    verts: Tensor, flat_verts: Tensor, packed_faces: Tensor, face_of_pixel: Tensor,
    batch: int, height: int, width: int, settings: RasterSettings,
) -> Fragments:
    """Differentiable barycentrics and depth of each pixel's winning face.

    Computed for the covered pixels only: background pixels never touch a face, so no
    0 * inf from a degenerate face can leak into the gradients.
    """
    device, dtype = verts.device, verts.dtype
    num_pixels = batch * height * width
    pixel = torch.nonzero(face_of_pixel >= 0).squeeze(1)
    face = face_of_pixel.index_select(0, pixel)
    tri = flat_verts.index_select(0, packed_faces.index_select(0, face).flatten())
    tri = tri.view(-1, 3, 3)  # (P, 3, 3)
    px = pixel_centers(width, dtype, device).index_select(0, pixel % width)
    py = pixel_centers(height, dtype, device).index_select(0, (pixel // width) % height)
    bary = _barycentrics(px, py, tri)
    depth = (bary * tri.unbind(-1)[2]).sum(-1)

    # index_copy rather than index_put: its backward is a plain index_select
    bary_full = torch.full((num_pixels, 3), -1.0, dtype=dtype, device=device)
    bary_full = bary_full.index_copy(0, pixel, bary)
    zbuf = torch.full((num_pixels,), -1.0, dtype=dtype, device=device).index_copy(0, pixel, depth)
    dists = None
    if settings.compute_dists:
        inside = -_squared_distance_to_boundary(px, py, tri)
        dists = torch.full((num_pixels,), -1.0, dtype=dtype, device=device)
        dists = dists.index_copy(0, pixel, inside).view(batch, height, width, 1)
    return Fragments(
        pix_to_face=face_of_pixel.view(batch, height, width, 1),
        zbuf=zbuf.view(batch, height, width, 1),
        bary_coords=bary_full.view(batch, height, width, 1, 3),
        dists=dists,
    )


# --------------------------------------------------------------------------------------
# pytorch3d backend
# --------------------------------------------------------------------------------------


def _rasterize_pytorch3d(
    verts: Tensor, faces: Tensor, height: int, width: int, compute_dists: bool
) -> Fragments:
    if not pytorch3d_available():
        raise ValueError(
            "RasterSettings.backend='pytorch3d' needs pytorch3d, which is not installed"
        )
    from pytorch3d.renderer.mesh import rasterize_meshes as p3d_rasterize_meshes
    from pytorch3d.structures import Meshes

    # DECA's Pytorch3dRasterizer: negate x and y into pytorch3d's NDC (+x left, +y up) and
    # stretch the longer image side, whose NDC range pytorch3d makes larger than [-1, 1].
    scale = [-1.0, -1.0, 1.0]
    if height > width:
        scale[1] *= height / width
    elif width > height:
        scale[0] *= width / height
    fixed = verts * torch.tensor(scale, dtype=verts.dtype, device=verts.device)
    meshes = Meshes(verts=fixed.float(), faces=faces)
    pix_to_face, zbuf, bary_coords, dists = p3d_rasterize_meshes(
        meshes,
        image_size=(height, width),
        blur_radius=0.0,
        faces_per_pixel=1,
        bin_size=None,
        max_faces_per_bin=None,
        perspective_correct=False,
    )
    return Fragments(
        pix_to_face=pix_to_face,
        zbuf=zbuf.to(verts.dtype),
        bary_coords=bary_coords.to(verts.dtype),
        dists=dists.to(verts.dtype) if compute_dists else None,
    )
