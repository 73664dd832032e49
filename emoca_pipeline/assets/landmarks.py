"""Landmark embeddings of the procedural head: where each landmark lies on the surface.

Each landmark is a point ``(s, phi)`` of the head's grid parameterisation (see
:mod:`emoca_pipeline.assets.head`), placed at its anatomical place: eyelid landmarks on the
lid-margin rows, lip landmarks on the lip rows, brows along the brow ridge, the nose on the
midline and the alae. :func:`~emoca_pipeline.assets.head.locate_on_grid` turns it into
FLAME's (face index, barycentric) form.

- 68-point iBUG scheme (0-indexed): the jaw contour 0-16 is *dynamic*: for each head yaw it is
  the outline of the lower face seen by an orthographic camera, sampled along 17 rays from the
  middle of the face (left, down, right); so the contour of the side turned away slides onto
  its silhouette. Points 17-67 are static.
- The 105 MediaPipe FaceMesh points that EMOCA v2 uses (brows, eyelids, nose, lips), in the
  official file's order.

Dynamic-contour rows follow DECA's table layout: row r holds yaw ``r`` degrees for
r <= 39 and yaw ``39 - r`` for r >= 40, where the yaw of a head rotation by ``a`` degrees
about +y is ``a`` (DECA's and EMOCA's convention, which this project's FLAME layer uses).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from emoca_pipeline.assets.head import (
    EYE_ROWS,
    MOUTH_ROWS,
    HeadMesh,
    locate_on_grid,
    row_thetas,
    surface_points,
)

__all__ = [
    "MEDIAPIPE_LANDMARK_INDICES",
    "NUM_YAW_ROWS",
    "LandmarkEmbedding",
    "build_landmarks",
    "contour_row_yaw",
]

NUM_YAW_ROWS = 79

# MediaPipe FaceMesh vertices of EMOCA v2's mediapipe_landmark_embedding.npz (the file's
# ``landmark_indices``): sorted left brow, right brow, left eye, right eye; the nose; the lips.
MEDIAPIPE_LANDMARK_INDICES = np.array([
    276, 282, 283, 285, 293, 295, 296, 300, 334, 336,
    46, 52, 53, 55, 63, 65, 66, 70, 105, 107,
    249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466,
    7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246,
    168, 6, 197, 195, 5, 4, 129, 98, 97, 2, 326, 327, 358,
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181, 185,
    191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409,
    415,
], dtype=np.int64)


class LandmarkEmbedding(NamedTuple):
    """Landmarks as (face index, barycentric) pairs on the template mesh.

    Attributes:
        static_faces: (51,) int64, points 17..67.
        static_bary: (51, 3) float64.
        dynamic_faces: (79, 17) int64, the jaw contour per yaw row.
        dynamic_bary: (79, 17, 3) float64.
        full_faces: (68,) int64, the fixed 68 points (contour at yaw 0).
        full_bary: (68, 3) float64.
        mediapipe_faces: (105,) int64 in the order of :data:`MEDIAPIPE_LANDMARK_INDICES`.
        mediapipe_bary: (105, 3) float64.
    """

    static_faces: np.ndarray
    static_bary: np.ndarray
    dynamic_faces: np.ndarray
    dynamic_bary: np.ndarray
    full_faces: np.ndarray
    full_bary: np.ndarray
    mediapipe_faces: np.ndarray
    mediapipe_bary: np.ndarray


def contour_row_yaw(row: int) -> int:
    """Yaw in degrees that DECA maps to a row of the dynamic-contour table."""
    if not 0 <= row < NUM_YAW_ROWS:
        raise ValueError(f"row: must be in 0..{NUM_YAW_ROWS - 1}, got {row}")
    return row if row <= 39 else 39 - row


def _s_at_theta(theta: np.ndarray, phi: np.ndarray, mesh: HeadMesh) -> np.ndarray:
    """Row coordinate where the rows at azimuth ``phi`` reach polar angle ``theta``."""
    rows = row_thetas(np.asarray(phi, dtype=np.float64), mesh.layout)
    index = np.arange(rows.shape[-1], dtype=np.float64)
    return np.array([np.interp(t, r, index) for t, r in zip(np.atleast_1d(theta), rows,
                                                            strict=True)])


def _brow_theta(phi: np.ndarray) -> np.ndarray:
    return 60.5 + 0.0035 * (np.abs(phi) - 18.0) ** 2


class _Places:
    """Named places on the face in (s, phi) grid coordinates."""

    def __init__(self, mesh: HeadMesh) -> None:
        lay = mesh.layout
        self.mesh = mesh
        self.upper_lid, self.lower_lid = float(EYE_ROWS[0]), float(EYE_ROWS[-1])
        self.eye_corner_row = 0.5 * (self.upper_lid + self.lower_lid)
        ub, _, u, p1, p2, lo, _, lb = (float(r) for r in MOUTH_ROWS)
        self.vermilion_up, self.vermilion_lo = ub, lb
        self.inner_up, self.inner_lo = u, lo
        self.mouth_corner_row = 0.5 * (p1 + p2)
        self.mouth_phi = lay.mouth_half_width
        # the nose tip: the most forward point of the midline
        theta = np.linspace(85.0, 100.0, 301)
        s = _s_at_theta(theta, np.zeros_like(theta), mesh)
        pts, _, _, _ = surface_points(s, np.zeros_like(s), lay)
        self.nose_tip_s = float(s[np.argmax(pts[:, 2])])
        self.nose_tip_theta = float(theta[np.argmax(pts[:, 2])])

    def eye(self, side: float, lid: str, e_out: float) -> tuple[float, float]:
        """A point of an eye: lid in {'upper', 'lower', 'corner'}, e_out=+1 the outer corner."""
        lay = self.mesh.layout
        phi = side * (lay.eye_phi + lay.eye_half_width * e_out)
        s = {"upper": self.upper_lid, "lower": self.lower_lid, "corner": self.eye_corner_row}
        return s[lid], phi

    def at_theta(self, theta: float, phi: float) -> tuple[float, float]:
        return float(_s_at_theta(np.array([theta]), np.array([phi]), self.mesh)[0]), phi

    def brow(self, phi: float, offset: float = 0.0) -> tuple[float, float]:
        return self.at_theta(float(_brow_theta(np.array(phi))) + offset, phi)


def _static_68(p: _Places) -> list[tuple[float, float]]:
    """Points 17..67 of the iBUG scheme."""
    pts: list[tuple[float, float]] = []
    pts += [p.brow(phi, -1.0) for phi in (-36.0, -29.5, -23.0, -16.5, -10.0)]  # 17-21
    pts += [p.brow(phi, -1.0) for phi in (10.0, 16.5, 23.0, 29.5, 36.0)]  # 22-26
    pts += [p.at_theta(t, 0.0) for t in (68.0, 75.0, 83.0)]  # 27-29 bridge
    pts += [(p.nose_tip_s, 0.0)]  # 30 tip
    pts += [p.at_theta(98.5, -8.5), p.at_theta(99.4, -4.2), p.at_theta(100.0, 0.0),
            p.at_theta(99.4, 4.2), p.at_theta(98.5, 8.5)]  # 31-35 nose base
    third = 1.0 / 3.0
    pts += [p.eye(-1, "corner", 1.0), p.eye(-1, "upper", third), p.eye(-1, "upper", -third),
            p.eye(-1, "corner", -1.0), p.eye(-1, "lower", -third),
            p.eye(-1, "lower", third)]  # 36-41 right eye
    pts += [p.eye(1, "corner", -1.0), p.eye(1, "upper", -third), p.eye(1, "upper", third),
            p.eye(1, "corner", 1.0), p.eye(1, "lower", third),
            p.eye(1, "lower", -third)]  # 42-47 left eye
    mp = p.mouth_phi
    pts += [(p.mouth_corner_row, -mp)]  # 48
    pts += [(p.vermilion_up, f * mp) for f in (-0.62, -0.3, 0.0, 0.3, 0.62)]  # 49-53
    pts += [(p.mouth_corner_row, mp)]  # 54
    pts += [(p.vermilion_lo, f * mp) for f in (0.62, 0.3, 0.0, -0.3, -0.62)]  # 55-59
    pts += [(p.inner_up, -0.9 * mp)]  # 60
    pts += [(p.inner_up, f * mp) for f in (-0.4, 0.0, 0.4)]  # 61-63
    pts += [(p.inner_up, 0.9 * mp)]  # 64
    pts += [(p.inner_lo, f * mp) for f in (0.4, 0.0, -0.4)]  # 65-67
    assert len(pts) == 51
    return pts


def _mediapipe_places(p: _Places) -> dict[int, tuple[float, float]]:
    """(s, phi) of each of EMOCA's 105 MediaPipe points, from its place in a contour."""
    places: dict[int, tuple[float, float]] = {}

    def chain(ids: list[int], points: list[tuple[float, float]]) -> None:
        for i, pt in zip(ids, points, strict=True):
            places.setdefault(i, pt)

    # brows, outer to inner: an upper and a lower chain each
    for side, upper, lower in ((1.0, [300, 293, 334, 296, 336], [276, 283, 282, 295, 285]),
                               (-1.0, [70, 63, 105, 66, 107], [46, 53, 52, 65, 55])):
        chain(upper, [p.brow(side * a, -1.8) for a in (37.0, 31.0, 25.0, 18.0, 11.0)])
        chain(lower, [p.brow(side * a, 1.6) for a in (38.0, 32.0, 25.0, 18.0, 12.0)])
    # eyelids, outer corner to inner corner
    for side, upper, lower in (
        (1.0, [263, 466, 388, 387, 386, 385, 384, 398, 362],
         [263, 249, 390, 373, 374, 380, 381, 382, 362]),
        (-1.0, [33, 246, 161, 160, 159, 158, 157, 173, 133],
         [33, 7, 163, 144, 145, 153, 154, 155, 133]),
    ):
        e = np.linspace(1.0, -1.0, 9)
        chain(upper[:1] + upper[-1:], [p.eye(side, "corner", 1.0), p.eye(side, "corner", -1.0)])
        chain(upper[1:-1], [p.eye(side, "upper", float(v)) for v in e[1:-1]])
        chain(lower[1:-1], [p.eye(side, "lower", float(v)) for v in e[1:-1]])
    # nose: the bridge down to just above the tip, then the base from right to left
    chain([168, 6, 197, 195, 5], [p.at_theta(t, 0.0) for t in (65.0, 70.0, 76.0, 82.0, 88.0)])
    chain([4], [p.at_theta(p.nose_tip_theta - 1.5, 0.0)])
    chain([129, 98, 97, 2, 326, 327, 358],
          [p.at_theta(t, a) for t, a in ((97.0, -10.5), (98.5, -8.0), (99.6, -3.5), (100.0, 0.0),
                                          (99.6, 3.5), (98.5, 8.0), (97.0, 10.5))])
    # lips, right corner to left corner
    frac = np.linspace(-1.0, 1.0, 11)
    mp = p.mouth_phi
    chain([61, 291], [(p.mouth_corner_row, -mp), (p.mouth_corner_row, mp)])
    chain([185, 40, 39, 37, 0, 267, 269, 270, 409],
          [(p.vermilion_up, float(f) * mp) for f in frac[1:-1]])
    chain([146, 91, 181, 84, 17, 314, 405, 321, 375],
          [(p.vermilion_lo, float(f) * mp) for f in frac[1:-1]])
    chain([78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308],
          [(p.inner_up, 0.9 * float(f) * mp) for f in frac])
    chain([95, 88, 178, 87, 14, 317, 402, 318, 324],
          [(p.inner_lo, 0.9 * float(f) * mp) for f in frac[1:-1]])
    return places


def _rot_y(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _vertex_faces(faces: np.ndarray, num_verts: int) -> tuple[np.ndarray, np.ndarray]:
    """For each vertex the lowest-index face that contains it, and its slot in that face."""
    flat = faces.ravel()
    order = np.argsort(flat, kind="stable")
    verts, first = np.unique(flat[order], return_index=True)
    if verts.shape[0] != num_verts:
        raise RuntimeError("landmarks: some vertices belong to no face")
    return order[first] // 3, order[first] % 3


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) unit area-weighted vertex normals."""
    edge1, edge2 = verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]]
    face_n = np.cross(edge1, edge2)
    normals = np.zeros_like(verts)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-20)


def jaw_edge_theta(phi: np.ndarray) -> np.ndarray:
    """Polar angle (degrees) of the lower edge of the jaw at azimuth ``phi``: the line where
    the face and the sides of the jaw turn into its underside."""
    return np.interp(np.abs(phi), [0.0, 15.0, 30.0, 45.0, 60.0, 90.0],
                     [139.0, 138.5, 137.0, 135.5, 134.5, 134.0])


def _lower_face(mesh: HeadMesh) -> np.ndarray:
    """(V,) bool: the lower face down to the jaw edge, without nose, ears and mouth cavity."""
    head = ~np.isnan(mesh.row_s)
    phi, theta = np.nan_to_num(mesh.phi), np.nan_to_num(mesh.theta)
    return (head & (np.abs(phi) < 84.0) & (theta > 72.0) & (theta <= jaw_edge_theta(phi))
            & (mesh.features["nose"] < 0.001) & (mesh.features["cavity"] > -1e-4))


def _contour_vertices(mesh: HeadMesh, normals: np.ndarray, rotation_deg: float) -> np.ndarray:
    """17 vertices on the outline of the lower face, head rotated about +y, orthographic.

    The outline is the farthest camera-facing vertex of the lower face (no nose, ears or
    mouth cavity) along each of 17 rays in the image plane from the middle of the face,
    from the subject's right (image left) down to the chin and up to the left.
    """
    rot = _rot_y(rotation_deg)
    facing = (normals @ rot.T)[:, 2] > 0.0
    candidates = _lower_face(mesh) & facing
    idx = np.flatnonzero(candidates)
    pts = mesh.verts[idx] @ rot.T
    origin = np.array([0.0, -0.006, 0.02]) @ rot.T
    offset = pts[:, :2] - origin[:2]
    angle = np.degrees(np.arctan2(offset[:, 1], offset[:, 0]))
    out = np.empty(17, dtype=np.int64)
    for k, beta in enumerate(np.linspace(170.0, 370.0, 17)):
        delta = (angle - beta + 180.0) % 360.0 - 180.0
        reach = offset @ np.array([np.cos(np.radians(beta)), np.sin(np.radians(beta))])
        reach = np.where(np.abs(delta) < 6.0, reach, -np.inf)
        out[k] = idx[int(np.argmax(reach))]
    return out


def build_landmarks(mesh: HeadMesh) -> LandmarkEmbedding:
    """Embed the 68 iBUG points (static, dynamic contour, full) and the MediaPipe points."""
    places = _Places(mesh)
    static = np.array(_static_68(places))
    static_faces, static_bary = locate_on_grid(static[:, 0], static[:, 1], mesh.layout)

    mp_places = _mediapipe_places(places)
    missing = set(MEDIAPIPE_LANDMARK_INDICES.tolist()) - set(mp_places)
    if missing:
        raise RuntimeError(f"MediaPipe points without a place: {sorted(missing)}")
    mp = np.array([mp_places[i] for i in MEDIAPIPE_LANDMARK_INDICES.tolist()])
    mp_faces, mp_bary = locate_on_grid(mp[:, 0], mp[:, 1], mesh.layout)

    face_of, slot_of = _vertex_faces(mesh.faces, mesh.verts.shape[0])
    normals = vertex_normals(mesh.verts, mesh.faces)
    dyn_faces = np.empty((NUM_YAW_ROWS, 17), dtype=np.int64)
    dyn_bary = np.zeros((NUM_YAW_ROWS, 17, 3))
    for row in range(NUM_YAW_ROWS):
        verts = _contour_vertices(mesh, normals, contour_row_yaw(row))
        dyn_faces[row] = face_of[verts]
        dyn_bary[row, np.arange(17), slot_of[verts]] = 1.0

    full_faces = np.concatenate([dyn_faces[0], static_faces])
    full_bary = np.concatenate([dyn_bary[0], static_bary])
    return LandmarkEmbedding(static_faces, static_bary, dyn_faces, dyn_bary, full_faces,
                             full_bary, mp_faces, mp_bary)
