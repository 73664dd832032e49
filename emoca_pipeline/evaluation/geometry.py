"""Exact point-to-surface distances and similarity alignment, for the NoW protocol.

* :func:`closest_points_on_triangles`: the closest point of each triangle to each point,
  Ericson's region test ("Real-Time Collision Detection", 5.1.5) vectorised in numpy;
  degenerate triangles (zero area) fall back to their three edges.
* :class:`MeshDistance`: exact closest points on a triangle mesh for many query points.
  Triangles are grouped by size; a k-d tree over each group's centroids proposes the ``k``
  nearest triangles, and a point is settled when no triangle outside them can be nearer
  (centroid distance - triangle radius > best distance). The few unsettled points get
  every triangle of a ball query around them. Exact, unlike trimesh's ``closest_point``.
* :func:`procrustes`: the similarity (scale, rotation, translation) that best maps one
  point set onto another in the least-squares sense (Umeyama); by default a reflection is
  allowed, as in the NoW code (``reflection='best'``).
* :func:`refine_similarity`: a similarity applied to a mesh that minimises the sum of
  squared scan-to-mesh distances (NoW's rigid refinement), by Gauss-Newton / trust region
  (:func:`scipy.optimize.least_squares`) with the exact distances recomputed every step.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import least_squares
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

__all__ = [
    "ClosestPoints",
    "MeshDistance",
    "Similarity",
    "closest_points_on_triangles",
    "procrustes",
    "refine_similarity",
]

_DEGENERATE = 1e-12  # |ab x ac|^2 below this share of (longest edge)^4: a degenerate triangle
_PAIRS_PER_CHUNK = 1 << 18  # point-triangle pairs evaluated at once (bounds the temporaries)


# ---------------------------------------------------------------------------------------
# Closest point on a triangle


def _dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("...i,...i->...", u, v)


def _closest_on_segments(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Closest points of segments ab to points p, all (..., 3); a zero-length segment is a."""
    ab = b - a
    length2 = _dot(ab, ab)
    t = np.clip(_dot(p - a, ab) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    return a + t[..., None] * ab


def closest_points_on_triangles(points: np.ndarray, a: np.ndarray, b: np.ndarray,
                                c: np.ndarray) -> np.ndarray:
    """The point of each triangle (a, b, c) nearest to each point (Ericson's region test).

    Args:
        points, a, b, c: (..., 3) float arrays of broadcastable shapes.

    Returns:
        (..., 3) closest points (float64). A degenerate triangle (collinear or repeated
        corners) is treated as its three edges.
    """
    p = np.asarray(points, dtype=np.float64)
    a, b, c = (np.asarray(x, dtype=np.float64) for x in (a, b, c))
    p, a, b, c = np.broadcast_arrays(p, a, b, c)
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    bp = p - b
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    cp = p - c
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    def safe(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
        ok = denominator != 0
        return np.where(ok, numerator / np.where(ok, denominator, 1.0), 0.0)

    # Ericson's tests in order; the first that holds wins, so assign in reverse order.
    total = va + vb + vc
    v, w = safe(vb, total), safe(vc, total)
    result = a + v[..., None] * ab + w[..., None] * ac  # inside the face
    bc_w = safe(d4 - d3, (d4 - d3) + (d5 - d6))
    on_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    result = np.where(on_bc[..., None], b + bc_w[..., None] * (c - b), result)
    on_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    result = np.where(on_ac[..., None], a + safe(d2, d2 - d6)[..., None] * ac, result)
    at_c = (d6 >= 0) & (d5 <= d6)
    result = np.where(at_c[..., None], c, result)
    on_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    result = np.where(on_ab[..., None], a + safe(d1, d1 - d3)[..., None] * ab, result)
    at_b = (d3 >= 0) & (d4 <= d3)
    result = np.where(at_b[..., None], b, result)
    at_a = (d1 <= 0) & (d2 <= 0)
    result = np.where(at_a[..., None], a, result)

    normal = np.cross(ab, ac)
    longest = np.maximum(np.maximum(_dot(ab, ab), _dot(ac, ac)), _dot(c - b, c - b))
    degenerate = _dot(normal, normal) <= _DEGENERATE * longest * longest
    if degenerate.any():
        pd, ad, bd, cd = p[degenerate], a[degenerate], b[degenerate], c[degenerate]
        candidates = np.stack([_closest_on_segments(pd, ad, bd),
                               _closest_on_segments(pd, bd, cd),
                               _closest_on_segments(pd, cd, ad)], axis=-2)
        nearest = _dot(candidates - pd[..., None, :], candidates - pd[..., None, :]).argmin(-1)
        result[degenerate] = np.take_along_axis(candidates, nearest[..., None, None],
                                                axis=-2)[..., 0, :]
    return result


# ---------------------------------------------------------------------------------------
# Closest point on a mesh


class ClosestPoints(NamedTuple):
    """Closest points of P query points on a mesh.

    distances: (P,) Euclidean distances. points: (P, 3) the closest surface points.
    faces: (P,) int64 index of a triangle that holds the closest point.
    """

    distances: np.ndarray
    points: np.ndarray
    faces: np.ndarray


class _Group(NamedTuple):
    faces: np.ndarray  # (G,) triangle indices
    tree: cKDTree  # over their centroids
    radius: float  # the largest centroid-to-corner distance in the group


class MeshDistance:
    """Exact unsigned distances from points to a triangle mesh (see the module docstring).

    Args:
        vertices: (V, 3) positions. faces: (F, 3) vertex indices, F >= 1.
        k: triangles proposed per point and size group by the k-d trees.

    Raises:
        ValueError: no faces, bad shapes, face indices out of range, non-finite vertices.
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, k: int = 4) -> None:
        vertices = np.asarray(vertices, dtype=np.float64)
        faces = np.asarray(faces)
        if vertices.ndim != 2 or vertices.shape[1] != 3:
            raise ValueError(f"vertices: expected shape (V, 3), got {vertices.shape}")
        if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
            raise ValueError(f"faces: expected shape (F, 3) with F >= 1, got {faces.shape}")
        faces = faces.astype(np.int64)
        if faces.min() < 0 or faces.max() >= vertices.shape[0]:
            raise ValueError(f"faces: indices must be in 0..{vertices.shape[0] - 1}")
        if not np.isfinite(vertices).all():
            raise ValueError("vertices: contain NaN or infinite values")
        if k < 1:
            raise ValueError(f"k: must be >= 1, got {k}")
        self.vertices, self.faces, self.k = vertices, faces, k
        corners = vertices[faces]  # (F, 3, 3)
        self._a, self._b, self._c = corners[:, 0], corners[:, 1], corners[:, 2]
        centroids = corners.mean(axis=1)
        radii = np.linalg.norm(corners - centroids[:, None], axis=2).max(axis=1)
        # Size groups by powers of 2 of the median radius r0 (<= r0/8, <= r0/4, ..., <= r0,
        # <= 2 r0, ...), so that larger triangles do not widen the search for the smaller.
        r0 = max(float(np.median(radii)), 1e-12 * max(1.0, float(np.abs(vertices).max())))
        band = np.ceil(np.log2(np.maximum(radii / r0, 0.125))).astype(np.int64)
        self._groups = []
        for value in np.unique(band):
            members = np.flatnonzero(band == value)
            self._groups.append(_Group(members, cKDTree(centroids[members]),
                                       float(radii[members].max())))
        self._slack = 1e-9 * max(1.0, float(np.ptp(vertices, axis=0).max()))

    def _pairs(self, points: np.ndarray, point_index: np.ndarray, face_index: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray]:
        """Squared distances and closest points of (point, face) pairs, in chunks."""
        n = point_index.shape[0]
        d2 = np.empty(n)
        closest = np.empty((n, 3))
        for start in range(0, n, _PAIRS_PER_CHUNK):
            sl = slice(start, start + _PAIRS_PER_CHUNK)
            f = face_index[sl]
            p = points[point_index[sl]]
            q = closest_points_on_triangles(p, self._a[f], self._b[f], self._c[f])
            closest[sl] = q
            d2[sl] = _dot(p - q, p - q)
        return d2, closest

    def query(self, points: np.ndarray) -> ClosestPoints:
        """Closest points of ``points`` (P, 3) on the mesh -> :class:`ClosestPoints`."""
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 3:
            raise ValueError(f"points: expected shape (P, 3), got {points.shape}")
        if not np.isfinite(points).all():
            raise ValueError("points: contain NaN or infinite values")
        n = points.shape[0]
        best_d2 = np.full(n, np.inf)
        best_point = np.zeros((n, 3))
        best_face = np.zeros(n, dtype=np.int64)
        bounds = []  # per group: distance below which no unproposed triangle can lie

        def update(point_index: np.ndarray, face_index: np.ndarray, k: int = 0) -> None:
            """Keep the nearest of the given (point, face) pairs; k > 0: the pairs come as
            k consecutive faces per point."""
            d2, closest = self._pairs(points, point_index, face_index)
            if k:
                chosen = d2.reshape(-1, k).argmin(axis=1) + np.arange(0, d2.shape[0], k)
            else:  # the nearest pair per point: sort by (point, distance), keep the first
                order = np.lexsort((d2, point_index))
                first = np.ones(order.shape[0], dtype=bool)
                first[1:] = point_index[order][1:] != point_index[order][:-1]
                chosen = order[first]
            rows = point_index[chosen]
            better = d2[chosen] < best_d2[rows]
            rows, chosen = rows[better], chosen[better]
            best_d2[rows] = d2[chosen]
            best_point[rows] = closest[chosen]
            best_face[rows] = face_index[chosen]

        chunk = max(1, _PAIRS_PER_CHUNK // self.k)
        for group in self._groups:
            k = min(self.k, group.faces.shape[0])
            bound = np.full(n, np.inf)
            for start in range(0, n, chunk):
                sl = slice(start, min(n, start + chunk))
                dist, idx = group.tree.query(points[sl], k=k)
                dist, idx = dist.reshape(-1, k), idx.reshape(-1, k)
                rows = np.repeat(np.arange(sl.start, sl.stop), k)
                update(rows, group.faces[idx.reshape(-1)], k)
                if k < group.faces.shape[0]:
                    bound[sl] = dist[:, -1] - group.radius
            bounds.append(bound)

        best = np.sqrt(best_d2)
        for group, bound in zip(self._groups, bounds, strict=True):
            unsettled = np.flatnonzero(best > bound - self._slack)
            if unsettled.size == 0:
                continue
            balls = group.tree.query_ball_point(
                points[unsettled], best[unsettled] + group.radius + self._slack)
            counts = np.fromiter((len(ball) for ball in balls), dtype=np.int64,
                                 count=len(balls))
            if counts.sum() == 0:
                continue
            rows = np.repeat(unsettled, counts)
            faces = group.faces[np.concatenate([np.asarray(b, dtype=np.int64) for b in balls])]
            update(rows, faces)
            best = np.sqrt(best_d2)
        return ClosestPoints(best, best_point, best_face)

    def distances(self, points: np.ndarray) -> np.ndarray:
        """(P,) distances of ``points`` (P, 3) to the mesh."""
        return self.query(points).distances


# ---------------------------------------------------------------------------------------
# Similarity transforms


class Similarity(NamedTuple):
    """x -> scale * rotation @ x + translation.

    scale: float > 0. rotation: (3, 3) orthogonal (determinant -1 when it reflects).
    translation: (3,).
    """

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def identity(cls) -> Similarity:
        return cls(1.0, np.eye(3), np.zeros(3))

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform (..., 3) points."""
        return self.scale * np.asarray(points, dtype=np.float64) @ self.rotation.T \
            + self.translation

    def inverse(self) -> Similarity:
        rotation = self.rotation.T
        return Similarity(1.0 / self.scale, rotation,
                          -(rotation @ self.translation) / self.scale)

    def compose(self, first: Similarity) -> Similarity:
        """The transform that applies ``first``, then ``self``."""
        return Similarity(self.scale * first.scale, self.rotation @ first.rotation,
                          self.scale * self.rotation @ first.translation + self.translation)


def procrustes(source: np.ndarray, target: np.ndarray, scaling: bool = True,
               allow_reflection: bool = True) -> Similarity:
    """The similarity minimising sum |target - T(source)|^2 (Umeyama 1991).

    Args:
        source, target: (N, 3) corresponding points, N >= 3 (not all on one line).
        scaling: fit the scale (else 1).
        allow_reflection: take the orthogonal matrix from the SVD as it is, which may
            reflect (the NoW code's ``reflection='best'``); else force a proper rotation.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.ndim != 2 or source.shape[1] != 3 or source.shape != target.shape:
        raise ValueError(f"source and target: expected two (N, 3) arrays, got {source.shape} "
                         f"and {target.shape}")
    if source.shape[0] < 3:
        raise ValueError(f"source: at least 3 points are needed, got {source.shape[0]}")
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    s0, t0 = source - mean_s, target - mean_t
    variance = float((s0 ** 2).sum())
    if variance <= 0.0:
        raise ValueError("source: all points coincide")
    u, singular, vt = np.linalg.svd(t0.T @ s0)
    signs = np.ones(3)
    if not allow_reflection and np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[-1] = -1.0
    rotation = (u * signs) @ vt
    scale = float((singular * signs).sum() / variance) if scaling else 1.0
    return Similarity(scale, rotation, mean_t - scale * rotation @ mean_s)


def _right_jacobian(r: np.ndarray) -> np.ndarray:
    """SO(3) right Jacobian J_r(r): R(r + d) ~ R(r) exp([J_r(r) d]x)."""
    theta = float(np.linalg.norm(r))
    k = np.array([[0.0, -r[2], r[1]], [r[2], 0.0, -r[0]], [-r[1], r[0], 0.0]])
    if theta < 1e-6:
        return np.eye(3) - 0.5 * k + k @ k / 6.0
    return (np.eye(3) - (1.0 - np.cos(theta)) / theta ** 2 * k
            + (theta - np.sin(theta)) / theta ** 3 * k @ k)


class RefinementResult(NamedTuple):
    """transform: the refinement, to apply after the mesh's current placement.
    distances: (P,) final scan-to-mesh distances. iterations: function evaluations."""

    transform: Similarity
    distances: np.ndarray
    iterations: int


def refine_similarity(scan_points: np.ndarray, mesh: MeshDistance, max_evaluations: int = 100,
                      tolerance: float = 1e-8) -> RefinementResult:
    """The similarity T minimising sum_i dist(p_i, T(mesh))^2 (NoW's rigid refinement).

    Starts from the identity; parameters are the scale, an axis-angle rotation and a
    translation. ``dist(p, T(M)) = s * dist(T^-1 p, M)``, so the mesh's search structure
    is built once. The Jacobian of a distance is ``-u . dT(q)/dx`` with ``q`` the
    closest point held fixed and ``u`` the unit vector from the surface to the point
    (exact wherever the closest point is unique).

    Args:
        scan_points: (P, 3) the points whose distances are minimised.
        mesh: the mesh in its current placement.
    """
    points = np.asarray(scan_points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] < 7:
        raise ValueError(f"scan_points: expected shape (P, 3) with P >= 7, got {points.shape}")
    cache: dict[str, np.ndarray] = {}

    def transform(x: np.ndarray) -> Similarity:
        return Similarity(float(x[0]), Rotation.from_rotvec(x[1:4]).as_matrix(), x[4:7])

    def evaluate(x: np.ndarray) -> dict[str, np.ndarray]:
        if "x" in cache and np.array_equal(cache["x"], x):
            return cache
        t = transform(x)
        found = mesh.query(t.inverse().apply(points))
        cache.update(x=x.copy(), q=found.points, d=t.scale * found.distances)
        return cache

    def residuals(x: np.ndarray) -> np.ndarray:
        return evaluate(x)["d"]

    def jacobian(x: np.ndarray) -> np.ndarray:
        state = evaluate(x)
        t = transform(x)
        q, d = state["q"], state["d"]
        rq = q @ t.rotation.T  # R q
        closest = t.scale * rq + t.translation
        u = np.divide(points - closest, d[:, None], out=np.zeros_like(points),
                      where=d[:, None] > 0)
        # d(R q)/dr = -R [q]x J_r(r), so u . d(R q)/dr = (q x R^T u)^T J_r(r)
        ru = u @ t.rotation  # R^T u
        jac = np.empty((points.shape[0], 7))
        jac[:, 0] = -_dot(u, rq)
        jac[:, 1:4] = -t.scale * (np.cross(q, ru) @ _right_jacobian(x[1:4]))
        jac[:, 4:7] = -u
        return jac

    x0 = np.array([1.0, 0, 0, 0, 0, 0, 0])
    lower = np.array([1e-6, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf, -np.inf])
    result = least_squares(residuals, x0, jac=jacobian, bounds=(lower, np.inf), method="trf",
                           x_scale="jac", ftol=tolerance, xtol=tolerance, gtol=tolerance,
                           max_nfev=max_evaluations)
    best = transform(result.x)
    return RefinementResult(best, evaluate(result.x)["d"], int(result.nfev))
