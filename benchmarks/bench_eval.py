"""Scan-to-mesh distances for NoW: exact closest points of a 100k-point scan on a FLAME mesh.

Baseline measured in the same run: brute force in numpy (every point against every
triangle with the same closest-point kernel), timed on a subset of the points and
extrapolated per point; the accelerated result is checked against it on that subset.

    python benchmarks/bench_eval.py [--assets DIR] [--points 100000] [--subset 200]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from timing import best_time


def flame_mesh(assets: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """A FLAME-size mesh (about 5k vertices, 10k faces): the neutral procedural head."""
    import torch

    from emoca_pipeline.assets import generate_procedural_assets
    from emoca_pipeline.flame import create

    if assets is None:
        assets = generate_procedural_assets(Path(tempfile.mkdtemp()) / "procedural", seed=0)
    flame = create(assets)
    with torch.no_grad():
        out = flame(torch.zeros(1, 100), torch.zeros(1, 50), torch.zeros(1, 6))
    return out.vertices[0].double().numpy() * 1000.0, flame.faces.numpy()  # mm


def main() -> None:
    from emoca_pipeline.evaluation.geometry import MeshDistance, closest_points_on_triangles

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=Path, help="FLAME asset folder (default: procedural)")
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--subset", type=int, default=200)
    parser.add_argument("--noise", type=float, default=1.0, help="scan noise, mm (default 1)")
    args = parser.parse_args()

    verts, faces = flame_mesh(args.assets)
    rng = np.random.default_rng(0)
    # a scan: points on the surface (area-weighted) displaced by noise
    corners = verts[faces]
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0],
                                   corners[:, 2] - corners[:, 0]), axis=1)
    chosen = rng.choice(len(faces), args.points, p=area / area.sum())
    weights = rng.dirichlet([1, 1, 1], args.points)
    scan = (corners[chosen] * weights[:, :, None]).sum(axis=1)
    scan += rng.normal(size=scan.shape) * args.noise

    def brute(points: np.ndarray) -> np.ndarray:
        out = np.empty(len(points))
        for start in range(0, len(points), 20):
            p = points[start:start + 20, None]
            q = closest_points_on_triangles(p, corners[None, :, 0], corners[None, :, 1],
                                            corners[None, :, 2])
            out[start:start + 20] = np.linalg.norm(p - q, axis=2).min(axis=1)
        return out

    subset = scan[:args.subset]
    brute_s = best_time(lambda: brute(subset), repeats=1) / len(subset)
    mesh_s = best_time(lambda: MeshDistance(verts, faces), repeats=2)
    mesh = MeshDistance(verts, faces)
    query_s = best_time(lambda: mesh.query(scan), repeats=2)
    error = np.abs(mesh.query(subset).distances - brute(subset)).max()
    print(f"mesh: {len(verts)} vertices, {len(faces)} faces; scan: {len(scan)} points, "
          f"noise {args.noise} mm")
    print(f"brute force (numpy, all triangles): {1 / brute_s:10.0f} points/s "
          f"({args.subset}-point subset)")
    print(f"MeshDistance (k-d tree + exact):    {len(scan) / query_s:10.0f} points/s "
          f"(+ {mesh_s * 1000:.0f} ms to build)")
    print(f"speed-up: {brute_s * len(scan) / query_s:.0f}x; max |difference| on the subset "
          f"{error:.2e} mm")


if __name__ == "__main__":
    main()
