"""The procedural head surface: a closed, UV-mapped triangle mesh in FLAME's frame.

Geometry. The head is a star-shaped surface seen from ``HeadLayout.centre``: a smooth union
of ellipsoids (cranium, mid-face, jaw) and a capped neck, found by bisection along rays,
plus radial offsets for the face (brow ridge, eye sockets and eyeballs, nose, cheekbones,
lips, chin, ears). Metres, y up, the face looks toward +z; the subject's left is +x.

Parameterisation. A vertex sits at a *row coordinate* ``s`` (0..num_rows-1, top to bottom;
-1 and num_rows are the two poles) and an azimuth ``phi`` (0 = front, +90 deg = +x). Each
row has a polar angle ``theta`` (from +y) that depends on the azimuth near the eyes and the
mouth: there, groups of rows ("bundles") are pulled onto the eyelid margins and the lips, and
pinched together at the eye and mouth corners. So an eyelid margin or a lip edge is a row of
the grid, and a landmark is a point ``(s, phi)`` located exactly in one grid cell.

- Eye bundle (4 rows per eye, shared by both eyes): upper lid margin, two rows across the
  visible eyeball, lower lid margin.
- Mouth bundle (8 rows): upper vermilion border, mid upper lip, upper inner lip, two rows of
  the mouth cavity (pushed ``mouth_depth`` into the head; closed when the mouth is closed,
  opened by the jaw), lower inner lip, mid lower lip, lower vermilion border.

Columns are spaced densely at the front and sparsely at the back (``column_warp``); the mesh
is mirror-symmetric (column ``j`` mirrors ``num_cols - j``). Two small closed eyeball meshes sit
behind the eye openings, as in FLAME, and are rotated by the eye joints.

UV layout. u follows the column index (the back of the head is the seam at u = 0 and 1; the
face is in the middle), v follows the row index over ``v in [0, HEAD_V_TOP]`` (v = 1 is the top
row of the images, as in OBJ files); the eyeballs have their own strip above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "EYE_ROWS",
    "HEAD_V_TOP",
    "MOUTH_ROWS",
    "NOMINAL_ROW_THETA",
    "NUM_ROWS",
    "HeadLayout",
    "HeadMesh",
    "build_head_mesh",
    "column_coordinate",
    "column_phi",
    "locate_on_grid",
    "row_thetas",
    "surface_points",
    "theta_at",
]

# Polar angle (degrees from +y) of every row away from the eyes and mouth; dense over the face.
NOMINAL_ROW_THETA = np.array(
    [8, 14, 20, 26, 32, 38, 43, 48]  # cranium
    + [50, 52, 54, 56, 58, 60, 62, 64, 66]  # forehead, brows
    + [68, 70, 72, 74]  # eye bundle
    + list(range(76, 107, 2))  # cheeks, nose
    + [109, 111, 113, 114.3, 115.7, 117, 119, 121]  # mouth bundle
    + [123, 125.2, 127.4, 129.6, 131.8, 134, 136.2, 138.4, 140.6]  # chin
    + [145, 150, 155, 161, 168, 175],  # under the jaw, neck, neck stump
    dtype=np.float64,
)
NUM_ROWS = NOMINAL_ROW_THETA.shape[0]
# Row indices of the bundles (see the module docstring).
EYE_ROWS = (17, 18, 19, 20)  # upper margin, eyeball, eyeball, lower margin
MOUTH_ROWS = (37, 38, 39, 40, 41, 42, 43, 44)  # ub, um, u (inner), p1, p2 (cavity), l, lm, lb
HEAD_V_TOP = 0.9  # the head grid fills v in [0, 0.9]; the eyeballs use v in [0.91, 1]
EYEBALL_RINGS = 8
EYEBALL_SEGMENTS = 10


@dataclass(frozen=True)
class HeadLayout:
    """Proportions of the procedural head (angles in degrees, lengths in metres).

    Attributes:
        num_cols: vertices per row (even, for mirror symmetry).
        column_warp: in [0, 1); column density at the front is ``(1 + w) / (1 - w)`` times that
            at the back.
        centre: centre of the star-shaped parameterisation.
        eye_theta, eye_phi: centre of each eye opening (eyes at azimuth +-eye_phi).
        eye_half_width: azimuth from an eye's centre to its corners.
        eye_tilt: how much higher (in theta) the outer corner is than the inner one, halved.
        upper_lid, lower_lid: lid margin heights above/below the corner line, mid-eye.
        mouth_theta: the mouth line at the centre.
        mouth_half_width: azimuth of the mouth corners.
        upper_lip, lower_lip: vermilion heights at the centre.
        lip_gap: half the closed-mouth gap between the inner lip rows.
        mouth_depth: depth of the mouth cavity rows (m).
        pinch: half the spread of a bundle's rows at the eye and mouth corners.
        eyeball_radius: radius of the eyeball meshes (m).
        eyeball_clearance: gap between an eyeball and the surface in front of it (m).
    """

    num_cols: int = 80
    column_warp: float = 0.55
    centre: tuple[float, float, float] = (0.0, -0.005, 0.0)
    eye_theta: float = 71.0
    eye_phi: float = 21.0
    eye_half_width: float = 9.0
    eye_tilt: float = 0.8
    upper_lid: float = 3.3
    lower_lid: float = 2.5
    mouth_theta: float = 115.0
    mouth_half_width: float = 16.0
    upper_lip: float = 4.0
    lower_lip: float = 5.0
    lip_gap: float = 0.12
    mouth_depth: float = 0.014
    pinch: float = 0.35
    eyeball_radius: float = 0.0115
    eyeball_clearance: float = 0.003

    def __post_init__(self) -> None:
        if self.num_cols < 16 or self.num_cols % 2:
            raise ValueError(f"num_cols: must be an even number >= 16, got {self.num_cols}")
        if not 0.0 <= self.column_warp < 1.0:
            raise ValueError(f"column_warp: must be in [0, 1), got {self.column_warp}")


class HeadMesh(NamedTuple):
    """The template mesh and everything later stages need to know about its layout.

    Attributes:
        verts: (V, 3) float64 template vertices (head grid, then left and right eyeball).
        faces: (F, 3) int64 triangles, counter-clockwise seen from outside.
        uvs: (T, 2) float64 texture coordinates.
        face_uvs: (F, 3) int64 indices into ``uvs``.
        grid_index: (num_rows, num_cols) int64 vertex index of each grid node.
        row_s: (V,) float64 row coordinate of each head vertex (NaN on the eyeballs).
        phi: (V,) float64 azimuth in degrees of each head vertex (NaN on the eyeballs).
        theta: (V,) float64 polar angle in degrees of each head vertex (NaN on the eyeballs).
        radial: (V, 3) unit direction from ``centre`` (the eyeballs: from their centre).
        features: name -> (V,) float64 radial offsets of the face features (m), for the
            identity components that scale them.
        eyeball_verts: (2,) slices of the left (+x) and right eyeball vertices.
        eyeball_centres: (2, 3) float64 eyeball centres, left then right.
        top_pole, bottom_pole: vertex indices of the poles.
        layout: the proportions used.
    """

    verts: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    face_uvs: np.ndarray
    grid_index: np.ndarray
    row_s: np.ndarray
    phi: np.ndarray
    theta: np.ndarray
    radial: np.ndarray
    features: dict[str, np.ndarray]
    eyeball_verts: tuple[slice, slice]
    eyeball_centres: np.ndarray
    top_pole: int
    bottom_pole: int
    layout: HeadLayout


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _gauss(x: np.ndarray, sigma: float | np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * (x / sigma) ** 2)


# ----------------------------------------------------------------------------- columns


def column_phi(t: np.ndarray | float, layout: HeadLayout) -> np.ndarray:
    """Azimuth (degrees) of a fractional column coordinate ``t`` in [0, num_cols]."""
    tau = 2.0 * np.pi * np.asarray(t, dtype=np.float64) / layout.num_cols - np.pi
    return np.degrees(tau - layout.column_warp * np.sin(tau))


def column_coordinate(phi: np.ndarray | float, layout: HeadLayout) -> np.ndarray:
    """Inverse of :func:`column_phi`: fractional column in [0, num_cols) of an azimuth."""
    target = np.radians(np.asarray(phi, dtype=np.float64))
    target = (target + np.pi) % (2.0 * np.pi) - np.pi
    tau = target.copy()
    for _ in range(30):  # Newton on tau - w sin(tau) = target; the map is monotone
        tau -= (tau - layout.column_warp * np.sin(tau) - target) / (
            1.0 - layout.column_warp * np.cos(tau))
    return (tau + np.pi) * layout.num_cols / (2.0 * np.pi)


# ----------------------------------------------------------------------------- rows


def _mouth_shape(m: np.ndarray, layout: HeadLayout) -> tuple[np.ndarray, ...]:
    """Mouth line, vermilion heights and inner gap at normalised azimuth m (|m| <= 1)."""
    inside = np.clip(1.0 - m * m, 0.0, 1.0)
    line = layout.mouth_theta + 0.3 * m * m
    # cupid's bow: two peaks at |m| ~ 0.3 and a dip at the centre
    bow = 1.0 + 0.12 * _gauss(np.abs(m) - 0.32, 0.12) - 0.12 * _gauss(m, 0.1)
    upper = layout.upper_lip * bow * inside**0.5
    lower = layout.lower_lip * inside**0.6
    gap = layout.lip_gap * inside**0.5
    return line, upper, lower, gap


def row_thetas(phi: np.ndarray, layout: HeadLayout) -> np.ndarray:
    """Polar angle (degrees) of every row at azimuths ``phi`` (degrees): (N,) -> (N, R)."""
    phi = np.asarray(phi, dtype=np.float64)
    theta = np.broadcast_to(NOMINAL_ROW_THETA, phi.shape + (NUM_ROWS,)).copy()

    # eyes: rows a..b onto the lid margins, pinched at the corners
    eye_rows = np.array(EYE_ROWS)
    side = np.where(phi >= 0.0, 1.0, -1.0)
    e_out = (phi - side * layout.eye_phi) / layout.eye_half_width * side  # +1: outer corner
    e_in = np.clip(e_out, -1.0, 1.0)
    inside = 1.0 - e_in**2
    corner = layout.eye_theta - layout.eye_tilt * e_in
    up = np.sqrt((layout.upper_lid * inside**0.7) ** 2 + layout.pinch**2)
    lo = np.sqrt((layout.lower_lid * inside**0.8) ** 2 + layout.pinch**2)
    frac = np.linspace(0.0, 1.0, len(eye_rows))
    warped = (corner - up)[..., None] + (up + lo)[..., None] * frac
    blend = _smoothstep((np.abs(e_out) - 1.0) / 0.6)[..., None]
    theta[..., eye_rows] = (1.0 - blend) * warped + blend * theta[..., eye_rows]

    # mouth: rows onto the lips and the cavity, pinched at the corners
    mouth_rows = np.array(MOUTH_ROWS)
    m = phi / layout.mouth_half_width
    line, upper, lower, gap = _mouth_shape(np.clip(m, -1.0, 1.0), layout)
    inner = np.stack(
        [-upper, -0.55 * upper, -gap, -gap / 3.0, gap / 3.0, gap, 0.5 * lower, lower], axis=-1)
    pinched = layout.pinch * np.array([-1.0, -0.7, -0.4, -0.15, 0.15, 0.4, 0.7, 1.0])
    warped = line[..., None] + inner + pinched
    blend = _smoothstep((np.abs(m) - 1.0) / 0.5)[..., None]
    theta[..., mouth_rows] = (1.0 - blend) * warped + blend * theta[..., mouth_rows]
    return theta


def theta_at(s: np.ndarray, phi: np.ndarray, layout: HeadLayout) -> np.ndarray:
    """Polar angle (degrees) at fractional row coordinates ``s`` in [-1, num_rows]."""
    rows = row_thetas(phi, layout)
    padded = np.concatenate(
        [np.zeros(phi.shape + (1,)), rows, np.full(phi.shape + (1,), 180.0)], axis=-1)
    pos = np.clip(np.asarray(s, dtype=np.float64) + 1.0, 0.0, NUM_ROWS + 1.0)
    lo = np.minimum(np.floor(pos).astype(np.int64), NUM_ROWS)
    w = pos - lo
    t0 = np.take_along_axis(padded, lo[..., None], axis=-1)[..., 0]
    t1 = np.take_along_axis(padded, (lo + 1)[..., None], axis=-1)[..., 0]
    return (1.0 - w) * t0 + w * t1


def _cavity_weight(s: np.ndarray) -> np.ndarray:
    """1 on the mouth-cavity rows, 0 on the lips, linear between (as the mesh is)."""
    p1, p2 = MOUTH_ROWS[3], MOUTH_ROWS[4]
    s = np.asarray(s, dtype=np.float64)
    return np.clip(np.minimum(s - (p1 - 1), (p2 + 1) - s), 0.0, 1.0)


# ----------------------------------------------------------------------------- surface


def _ellipsoid(p: np.ndarray, centre: tuple[float, ...], radii: tuple[float, ...],
               power: float = 2.0) -> np.ndarray:
    """Approximate signed distance to a (super)ellipsoid; power > 2 flattens its sides."""
    q = np.abs((p - np.asarray(centre)) / np.asarray(radii))
    return ((q**power).sum(-1) ** (1.0 / power) - 1.0) * min(radii)


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(k - np.abs(a - b), 0.0, None) / k
    return np.minimum(a, b) - h * h * k / 4.0


def _head_field(p: np.ndarray) -> np.ndarray:
    """Approximate signed distance (m) of the base head: negative inside."""
    cranium = _ellipsoid(p, (0.0, 0.03, -0.012), (0.076, 0.093, 0.098))
    midface = _ellipsoid(p, (0.0, -0.016, 0.012), (0.067, 0.072, 0.072))
    jaw = _ellipsoid(p, (0.0, -0.05, 0.016), (0.052, 0.038, 0.064), power=2.2)
    radial = np.hypot(p[..., 0] / 0.050, (p[..., 2] + 0.018) / 0.054)
    neck_side = (radial - 1.0) * 0.050
    neck_ends = np.maximum(-0.130 - p[..., 1], p[..., 1] - 0.0)
    neck = -_smin(-neck_side, -neck_ends, 0.006)  # smooth max: a capped, rounded cylinder
    head = _smin(_smin(cranium, midface, 0.02), jaw, 0.02)
    blend = 0.012 + 0.02 * np.clip(-p[..., 2] / 0.05, 0.0, 1.0)  # a soft nape, a crisp jaw
    return _smin(head, neck, blend)


def _directions(theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    t, p = np.radians(theta), np.radians(phi)
    return np.stack([np.sin(t) * np.sin(p), np.cos(t), np.sin(t) * np.cos(p)], axis=-1)


def _base_radius(dirs: np.ndarray, centre: np.ndarray) -> np.ndarray:
    lo = np.full(dirs.shape[:-1], 0.005)
    hi = np.full(dirs.shape[:-1], 0.3)
    for _ in range(42):
        mid = 0.5 * (lo + hi)
        outside = _head_field(centre + mid[..., None] * dirs) > 0.0
        hi = np.where(outside, mid, hi)
        lo = np.where(outside, lo, mid)
    return 0.5 * (lo + hi)


def _feature_offsets(
    theta: np.ndarray, phi: np.ndarray, layout: HeadLayout
) -> dict[str, np.ndarray]:
    """Radial offsets (m) of the face features at (theta, phi) in degrees."""
    th, ph, aph = theta, phi, np.abs(phi)
    front = _smoothstep((100.0 - aph) / 30.0)
    out: dict[str, np.ndarray] = {}

    brow_line = 60.5 + 0.0035 * (aph - 18.0) ** 2
    out["brow"] = 0.0050 * _gauss(th - brow_line, 3.4) * _smoothstep((44.0 - aph) / 10.0)

    eye_c = np.where(ph >= 0.0, layout.eye_phi, -layout.eye_phi)
    socket = _gauss(ph - eye_c, 9.0) * _gauss(th - layout.eye_theta, 5.5)
    bulge = _gauss(ph - eye_c, 6.0) * _gauss(th - layout.eye_theta, 3.2)
    crease = _gauss(ph - eye_c, 8.0) * _gauss(th - (layout.eye_theta - layout.upper_lid - 2.2), 1.1)
    out["eyes"] = -0.0105 * socket + 0.0068 * bulge - 0.0012 * crease

    height = np.interp(th, [62.0, 67.0, 75.0, 82.0, 89.0, 93.5, 95.5, 97.5, 99.5, 102.0],
                       [0.0, 0.0015, 0.0055, 0.0098, 0.0158, 0.0212, 0.0185, 0.0105, 0.002, 0.0])
    width = np.interp(th, [64.0, 76.0, 89.0, 94.0, 100.0], [4.0, 4.2, 5.2, 6.2, 7.5])
    alae = 0.0072 * _gauss(aph - 8.8, 2.6) * _gauss(th - 96.8, 2.4)
    out["nose"] = height * np.exp(-0.5 * (ph / width) ** 2) ** 1.3 + alae

    out["cheeks"] = 0.0045 * _gauss(aph - 42.0, 11.0) * _gauss(th - 86.0, 8.0)

    m = ph / layout.mouth_half_width
    line, upper, lower, _ = _mouth_shape(np.clip(m, -1.0, 1.0), layout)
    envelope = np.clip(1.0 - m * m, 0.0, 1.0) ** 0.4
    t_up = np.clip(line - th, 0.0, None) / np.maximum(upper, 1e-3)
    t_lo = np.clip(th - line, 0.0, None) / np.maximum(lower, 1e-3)
    lip_up = 0.0050 * np.exp(-(((t_up - 0.5) / 0.62) ** 2))
    lip_lo = 0.0058 * np.exp(-(((t_lo - 0.45) / 0.62) ** 2))
    muzzle = 0.0045 * _gauss(th - layout.mouth_theta, 11.0) * _gauss(ph, 20.0)
    out["lips"] = envelope * np.where(th <= line, lip_up, lip_lo) + muzzle

    sulcus = -0.0025 * _gauss(th - (layout.mouth_theta + layout.lower_lip + 3.6), 2.2)
    mentum = 0.0045 * _gauss(th - 139.0, 4.0) * _gauss(ph, 16.0)  # the chin is the lowest
    out["chin"] = (0.0068 * _gauss(th - 131.0, 5.0) + sulcus) * _gauss(ph, 12.0) + mentum

    out["ears"] = 0.0085 * _gauss(aph - 91.0, 4.5) * _gauss(th - 84.0, 10.0)
    out["temples"] = -0.0025 * _gauss(aph - 62.0, 9.0) * _gauss(th - 60.0, 9.0) * front
    return out


def surface_points(
    s: np.ndarray, phi: np.ndarray, layout: HeadLayout
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Points of the head surface at row coordinates ``s`` and azimuths ``phi`` (degrees).

    Args:
        s: (N,) fractional row coordinates in [-1, num_rows].
        phi: (N,) azimuths in degrees.

    Returns:
        points (N, 3), feature offsets name -> (N,), polar angles (N,), unit rays (N, 3).
    """
    s = np.asarray(s, dtype=np.float64)
    phi = np.asarray(phi, dtype=np.float64)
    theta = theta_at(s, phi, layout)
    dirs = _directions(theta, phi)
    centre = np.asarray(layout.centre)
    radius = _base_radius(dirs, centre)
    features = _feature_offsets(theta, phi, layout)
    m = np.clip(phi / layout.mouth_half_width, -1.0, 1.0)
    cavity = _cavity_weight(s) * layout.mouth_depth * np.clip(1.0 - m * m, 0.0, 1.0) ** 0.5
    features["cavity"] = -cavity
    radius = radius + sum(features.values())
    return centre + radius[..., None] * dirs, features, theta, dirs


# ----------------------------------------------------------------------------- mesh


def _quad_faces(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray,
                backslash: np.ndarray) -> np.ndarray:
    """Two triangles per quad A=(i,j) B=(i+1,j) C=(i+1,j+1) D=(i,j+1), outward."""
    t1 = np.where(backslash[:, None], np.stack([a, b, c], 1), np.stack([a, b, d], 1))
    t2 = np.where(backslash[:, None], np.stack([a, c, d], 1), np.stack([b, c, d], 1))
    return np.stack([t1, t2], axis=1).reshape(-1, 3)


def _uv_sphere(rings: int, segments: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                   np.ndarray, np.ndarray]:
    """A unit sphere with poles on +-z: verts, faces, uvs (unit square), face_uvs, normals."""
    polar = np.linspace(0.0, np.pi, rings + 2)[1:-1]
    azim = np.linspace(0.0, 2.0 * np.pi, segments, endpoint=False)
    pol, az = np.meshgrid(polar, azim, indexing="ij")
    ring_verts = np.stack(
        [np.sin(pol) * np.cos(az), np.sin(pol) * np.sin(az), np.cos(pol)], -1).reshape(-1, 3)
    verts = np.concatenate([[[0.0, 0.0, 1.0]], ring_verts, [[0.0, 0.0, -1.0]]])
    idx = 1 + np.arange(rings * segments).reshape(rings, segments)
    south = verts.shape[0] - 1
    faces = []
    for j in range(segments):
        k = (j + 1) % segments
        faces.append([0, idx[0, j], idx[0, k]])
        for i in range(rings - 1):
            faces.append([idx[i, j], idx[i + 1, j], idx[i + 1, k]])
            faces.append([idx[i, j], idx[i + 1, k], idx[i, k]])
        faces.append([south, idx[-1, k], idx[-1, j]])
    faces = np.array(faces, dtype=np.int64)
    # uv: a grid over (azimuth, polar) with a seam column and one pole uv per segment
    uu, vv = np.meshgrid(np.arange(segments + 1) / segments,
                         1.0 - (np.arange(rings) + 1) / (rings + 1), indexing="xy")
    grid_uv = np.stack([uu, vv], -1).reshape(-1, 2)
    uv_idx = np.arange(rings * (segments + 1)).reshape(rings, segments + 1)
    north_uv = np.stack([(np.arange(segments) + 0.5) / segments, np.ones(segments)], 1)
    south_uv = np.stack([(np.arange(segments) + 0.5) / segments, np.zeros(segments)], 1)
    uvs = np.concatenate([grid_uv, north_uv, south_uv])
    n0, s0 = grid_uv.shape[0], grid_uv.shape[0] + segments
    face_uvs = []
    for j in range(segments):
        face_uvs.append([n0 + j, uv_idx[0, j], uv_idx[0, j + 1]])
        for i in range(rings - 1):
            face_uvs.append([uv_idx[i, j], uv_idx[i + 1, j], uv_idx[i + 1, j + 1]])
            face_uvs.append([uv_idx[i, j], uv_idx[i + 1, j + 1], uv_idx[i, j + 1]])
        face_uvs.append([s0 + j, uv_idx[-1, j + 1], uv_idx[-1, j]])
    return verts, faces, uvs, np.array(face_uvs, dtype=np.int64), verts.copy()


def _backslash_columns(layout: HeadLayout) -> np.ndarray:
    """Quads starting at columns >= num_cols/2 split along A-C, the others along B-D (mirror)."""
    return np.arange(layout.num_cols) >= layout.num_cols // 2


def build_head_mesh(layout: HeadLayout | None = None) -> HeadMesh:
    """Build the template head mesh (deterministic: no randomness)."""
    layout = layout or HeadLayout()
    nc, nr = layout.num_cols, NUM_ROWS
    phi_cols = column_phi(np.arange(nc), layout)
    s_grid, phi_grid = np.meshgrid(np.arange(nr, dtype=np.float64), phi_cols, indexing="ij")
    grid_pts, grid_feat, grid_theta, grid_dirs = surface_points(
        s_grid.ravel(), phi_grid.ravel(), layout)

    top = surface_points(np.array([-1.0]), np.array([0.0]), layout)
    bottom = surface_points(np.array([float(nr)]), np.array([0.0]), layout)
    head_verts = np.concatenate([top[0], grid_pts, bottom[0]])
    num_head = head_verts.shape[0]
    grid_index = 1 + np.arange(nr * nc).reshape(nr, nc)
    top_pole, bottom_pole = 0, num_head - 1

    # faces of the grid, then the two pole fans
    ii, jj = np.meshgrid(np.arange(nr - 1), np.arange(nc), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    j1 = (jj + 1) % nc
    backslash = _backslash_columns(layout)[jj]
    grid_faces = _quad_faces(grid_index[ii, jj], grid_index[ii + 1, jj], grid_index[ii + 1, j1],
                             grid_index[ii, j1], backslash)
    cols = np.arange(nc)
    top_fan = np.stack([np.full(nc, top_pole), grid_index[0, cols],
                        grid_index[0, (cols + 1) % nc]], 1)
    bottom_fan = np.stack([np.full(nc, bottom_pole), grid_index[-1, (cols + 1) % nc],
                           grid_index[-1, cols]], 1)
    head_faces = np.concatenate([top_fan, grid_faces, bottom_fan])

    # uvs of the grid: (num_rows, num_cols + 1) with a seam column, then one per pole triangle
    u = np.arange(nc + 1) / nc
    v = HEAD_V_TOP * (1.0 - (np.arange(nr) + 1.0) / (nr + 1.0))
    uu, vv = np.meshgrid(u, v, indexing="xy")
    grid_uv = np.stack([uu, vv], -1).reshape(-1, 2)
    uv_index = np.arange(nr * (nc + 1)).reshape(nr, nc + 1)
    top_uv = np.stack([(cols + 0.5) / nc, np.full(nc, HEAD_V_TOP)], 1)
    bottom_uv = np.stack([(cols + 0.5) / nc, np.zeros(nc)], 1)
    t0, b0 = grid_uv.shape[0], grid_uv.shape[0] + nc
    grid_face_uvs = _quad_faces(uv_index[ii, jj], uv_index[ii + 1, jj], uv_index[ii + 1, jj + 1],
                                uv_index[ii, jj + 1], backslash)
    top_fan_uv = np.stack([t0 + cols, uv_index[0, cols], uv_index[0, cols + 1]], 1)
    bottom_fan_uv = np.stack([b0 + cols, uv_index[-1, cols + 1], uv_index[-1, cols]], 1)
    head_uvs = np.concatenate([grid_uv, top_uv, bottom_uv])
    head_face_uvs = np.concatenate([top_fan_uv, grid_face_uvs, bottom_fan_uv])

    # per-vertex layout attributes of the head
    row_s = np.concatenate([[-1.0], s_grid.ravel(), [float(nr)]])
    phi = np.concatenate([[0.0], phi_grid.ravel(), [0.0]])
    theta = np.concatenate([[0.0], grid_theta, [180.0]])
    radial = np.concatenate([[[0.0, 1.0, 0.0]], grid_dirs, [[0.0, -1.0, 0.0]]])
    features = {k: np.concatenate([top[1][k], grid_feat[k], bottom[1][k]]) for k in grid_feat}

    # eyeballs: behind the centre of each eye opening, left (+x) first as FLAME's eye joints
    sph_v, sph_f, sph_uv, sph_fuv, sph_n = _uv_sphere(EYEBALL_RINGS, EYEBALL_SEGMENTS)
    opening_s = np.full(2, 0.5 * (EYE_ROWS[0] + EYE_ROWS[-1]))
    opening_phi = np.array([layout.eye_phi, -layout.eye_phi])
    opening, _, _, opening_dir = surface_points(opening_s, opening_phi, layout)
    centres = opening - (layout.eyeball_radius + layout.eyeball_clearance) * opening_dir
    verts, faces, uvs, face_uvs = [head_verts], [head_faces], [head_uvs], [head_face_uvs]
    radial_parts = [radial]
    eyeball_slices = []
    start, uv_start = num_head, head_uvs.shape[0]
    for k in range(2):
        verts.append(centres[k] + layout.eyeball_radius * sph_v)
        faces.append(sph_f + start)
        # the eyeball strip above the head: left eye in the left half
        uvs.append(np.stack([0.5 * k + 0.5 * sph_uv[:, 0],
                             HEAD_V_TOP + 0.01 + (1.0 - HEAD_V_TOP - 0.01) * sph_uv[:, 1]], 1))
        face_uvs.append(sph_fuv + uv_start)
        radial_parts.append(sph_n)
        eyeball_slices.append(slice(start, start + sph_v.shape[0]))
        start += sph_v.shape[0]
        uv_start += sph_uv.shape[0]
    num_eye = start - num_head
    nan = np.full(num_eye, np.nan)
    return HeadMesh(
        verts=np.concatenate(verts),
        faces=np.concatenate(faces).astype(np.int64),
        uvs=np.concatenate(uvs),
        face_uvs=np.concatenate(face_uvs).astype(np.int64),
        grid_index=grid_index,
        row_s=np.concatenate([row_s, nan]),
        phi=np.concatenate([phi, nan]),
        theta=np.concatenate([theta, nan]),
        radial=np.concatenate(radial_parts),
        features={k: np.concatenate([f, np.zeros(num_eye)]) for k, f in features.items()},
        eyeball_verts=(eyeball_slices[0], eyeball_slices[1]),
        eyeball_centres=centres,
        top_pole=top_pole,
        bottom_pole=bottom_pole,
        layout=layout,
    )


def locate_on_grid(
    s: np.ndarray, phi: np.ndarray, layout: HeadLayout
) -> tuple[np.ndarray, np.ndarray]:
    """(face index, barycentric) of grid points: the embedding of a landmark at (s, phi).

    Args:
        s: (N,) row coordinates in [0, num_rows - 1].
        phi: (N,) azimuths in degrees.

    Returns:
        faces (N,) int64 indices into :func:`build_head_mesh`'s faces, bary (N, 3) float64
        weights of those faces' three vertices (in the faces' vertex order).
    """
    s = np.asarray(s, dtype=np.float64)
    if np.any(s < 0.0) or np.any(s > NUM_ROWS - 1):
        raise ValueError(f"s: row coordinates must be in [0, {NUM_ROWS - 1}]")
    nc = layout.num_cols
    t = column_coordinate(phi, layout)
    i = np.minimum(np.floor(s).astype(np.int64), NUM_ROWS - 2)
    j = np.floor(t).astype(np.int64) % nc
    fs, ft = s - i, t - np.floor(t)
    backslash = _backslash_columns(layout)[j]
    quad = i * nc + j
    # grid faces follow the nc pole-fan faces; two per quad in _quad_faces order
    first = nc + 2 * quad
    lower = np.where(backslash, fs >= ft, fs + ft <= 1.0)  # the quad's first triangle
    bary = np.where(
        backslash[:, None],
        np.where(lower[:, None], np.stack([1 - fs, fs - ft, ft], 1),  # (A, B, C)
                 np.stack([1 - ft, fs, ft - fs], 1)),  # (A, C, D)
        np.where(lower[:, None], np.stack([1 - fs - ft, fs, ft], 1),  # (A, B, D)
                 np.stack([1 - ft, fs + ft - 1, 1 - fs], 1)),  # (B, C, D)
    )
    faces = np.where(lower, first, first + 1)
    return faces.astype(np.int64), bary

