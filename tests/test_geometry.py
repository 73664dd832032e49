"""Exact point-to-triangle distances and similarity alignment, against independent references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.spatial.transform import Rotation

from emoca_pipeline.evaluation.geometry import (
    MeshDistance,
    Similarity,
    closest_points_on_triangles,
    procrustes,
    refine_similarity,
)


def reference_closest(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest point by another rule: the plane projection when its barycentrics are all
    >= 0 (solved with lstsq), else the nearest of the three clamped edge projections."""
    edges = []
    for s, e in ((a, b), (b, c), (c, a)):
        d = e - s
        t = 0.0 if d @ d == 0 else np.clip((p - s) @ d / (d @ d), 0.0, 1.0)
        edges.append(s + t * d)
    best = min(edges, key=lambda q: np.linalg.norm(p - q))
    normal = np.cross(b - a, c - a)
    if np.linalg.norm(normal) > 1e-9 * max(1.0, np.linalg.norm(b - a) * np.linalg.norm(c - a)):
        coeffs, *_ = np.linalg.lstsq(np.stack([b - a, c - a], axis=1), p - a, rcond=None)
        v, w = coeffs
        if v >= 0 and w >= 0 and v + w <= 1:
            return a + v * (b - a) + w * (c - a)
    return best


def random_triangles(rng: np.random.Generator, n: int) -> np.ndarray:
    tri = rng.normal(size=(n, 3, 3))
    # degenerate cases: collinear corners, two equal corners, all equal
    tri[0, 2] = tri[0, 0] + 0.3 * (tri[0, 1] - tri[0, 0])
    tri[1, 1] = tri[1, 0]
    tri[2, 1] = tri[2, 2] = tri[2, 0]
    tri[3, 2] = tri[3, 0] + 2.0 * (tri[3, 1] - tri[3, 0])  # collinear, c outside ab
    return tri


def test_closest_point_matches_reference_on_random_and_degenerate_triangles() -> None:
    rng = np.random.default_rng(0)
    tri = random_triangles(rng, 60)
    points = rng.normal(size=(60, 40, 3)) * 1.5
    got = closest_points_on_triangles(points, tri[:, None, 0], tri[:, None, 1], tri[:, None, 2])
    for i in range(60):
        for j in range(40):
            want = reference_closest(points[i, j], *tri[i])
            assert np.linalg.norm(points[i, j] - got[i, j]) == pytest.approx(
                np.linalg.norm(points[i, j] - want), abs=1e-9)


def test_closest_point_matches_a_numerical_minimisation() -> None:
    """A second reference: minimise |p - (a + v ab + w ac)|^2 over the simplex (SLSQP)."""
    rng = np.random.default_rng(1)
    for _ in range(25):
        a, b, c = rng.normal(size=(3, 3))
        p = rng.normal(size=3) * 2
        def squared(x: np.ndarray, p=p, a=a, b=b, c=c) -> float:
            return float(np.sum((p - a - x[0] * (b - a) - x[1] * (c - a)) ** 2))

        result = minimize(squared,
                          x0=[1 / 3, 1 / 3], method="SLSQP", bounds=[(0, 1), (0, 1)],
                          constraints=[{"type": "ineq", "fun": lambda x: 1 - x[0] - x[1]}],
                          options={"ftol": 1e-14, "maxiter": 200})
        got = closest_points_on_triangles(p, a, b, c)
        assert np.linalg.norm(p - got) == pytest.approx(np.sqrt(result.fun), abs=1e-6)


@pytest.mark.parametrize("k", [1, 4, 16])
def test_mesh_distance_is_exact_against_brute_force(k: int) -> None:
    rng = np.random.default_rng(2)
    # a bumpy sheet of small triangles plus a few large and degenerate ones
    n = 20
    u, v = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    verts = np.stack([u.ravel(), v.ravel(), 0.05 * np.sin(6 * u.ravel()) * v.ravel()], axis=1)
    quads = [(i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1)
             for i in range(n - 1) for j in range(n - 1)]
    faces = [f for a, b, c, d in quads for f in ((a, b, c), (b, d, c))]
    extra = rng.normal(size=(9, 3)) * 2
    base = len(verts)
    verts = np.concatenate([verts, extra])
    faces += [(base, base + 1, base + 2), (base + 3, base + 3, base + 4),
              (base + 5, base + 6, base + 6), (base + 7, base + 8, base + 7)]
    faces = np.array(faces)
    points = np.concatenate([rng.uniform(-0.5, 1.5, size=(400, 3)),
                             verts[rng.integers(0, base, 100)] + rng.normal(size=(100, 3)) * 1e-3])
    got = MeshDistance(verts, faces, k=k).query(points)
    tri = verts[faces]
    brute = np.linalg.norm(points[:, None] - closest_points_on_triangles(
        points[:, None], tri[None, :, 0], tri[None, :, 1], tri[None, :, 2]), axis=2)
    want = np.array([min(np.linalg.norm(p - reference_closest(p, *t)) for t in tri)
                     for p in points[:60]])
    np.testing.assert_allclose(brute[:60].min(axis=1), want, atol=1e-9)
    np.testing.assert_allclose(got.distances, brute.min(axis=1), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(points - got.points, axis=1), got.distances,
                               atol=1e-12)
    np.testing.assert_allclose(brute[np.arange(len(points)), got.faces], got.distances,
                               atol=1e-12)


def test_mesh_distance_rejects_bad_meshes() -> None:
    with pytest.raises(ValueError, match="F >= 1"):
        MeshDistance(np.zeros((3, 3)), np.zeros((0, 3), dtype=int))
    with pytest.raises(ValueError, match="indices"):
        MeshDistance(np.zeros((3, 3)), np.array([[0, 1, 3]]))


def known_similarity(reflect: bool) -> Similarity:
    rotation = Rotation.from_rotvec([0.3, -1.1, 0.7]).as_matrix()
    if reflect:
        rotation = rotation @ np.diag([1.0, 1.0, -1.0])
    return Similarity(1234.5, rotation, np.array([10.0, -20.0, 5.0]))


@pytest.mark.parametrize("reflect", [False, True])
def test_procrustes_recovers_a_known_similarity(reflect: bool) -> None:
    rng = np.random.default_rng(3)
    source = rng.normal(size=(7, 3))
    truth = known_similarity(reflect)
    found = procrustes(source, truth.apply(source))
    assert found.scale == pytest.approx(truth.scale, rel=1e-10)
    np.testing.assert_allclose(found.rotation, truth.rotation, atol=1e-10)
    np.testing.assert_allclose(found.translation, truth.translation, atol=1e-7)
    np.testing.assert_allclose(found.inverse().apply(truth.apply(source)), source, atol=1e-9)
    proper = procrustes(source, truth.apply(source), allow_reflection=False)
    assert np.linalg.det(proper.rotation) == pytest.approx(1.0)
    if reflect:  # a proper rotation cannot fit a reflected set exactly
        assert not np.allclose(proper.apply(source), truth.apply(source), atol=1e-3)


def test_refinement_recovers_a_perturbed_placement() -> None:
    """Points on a closed surface, the mesh moved by a small similarity: refinement finds the
    inverse move, and the distances drop to zero."""
    rng = np.random.default_rng(4)
    # an ellipsoid-like closed mesh (a subdivided octahedron pushed onto an ellipsoid)
    verts = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1.0]])
    faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5],
                      [3, 1, 5], [0, 3, 5]])
    for _ in range(4):
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]),
                        axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        mid = len(verts) + inverse.reshape(3, -1).T
        verts = np.concatenate([verts, verts[unique].mean(axis=1)])
        a, b, c = faces.T
        ab, bc, ca = mid.T
        faces = np.concatenate([np.stack(x, axis=1) for x in
                                ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    verts = verts / np.linalg.norm(verts, axis=1, keepdims=True) * [1.0, 0.7, 0.5]
    scan = verts[rng.choice(len(verts), 800, replace=False)] * 1.0
    move = Similarity(1.02, Rotation.from_rotvec([0.02, -0.03, 0.01]).as_matrix(),
                      np.array([0.01, -0.02, 0.015]))
    mesh = MeshDistance(move.apply(verts), faces)
    before = mesh.distances(scan)
    result = refine_similarity(scan, mesh)
    assert before.mean() > 5e-3
    assert result.distances.max() < 1e-6
    recovered = result.transform.compose(move)
    assert recovered.scale == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(recovered.rotation, np.eye(3), atol=1e-6)
