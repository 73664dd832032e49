"""Renderer speed next to a ResNet-50 forward, per image, measured in the same run.

    python benchmarks/bench_render.py [--batch 16] [--repeats 5] [--threads 2] [--device cpu]

Renders a FLAME-size mesh (the procedural FLAME model and its UV layout when the package
provides them, otherwise a closed sphere-like mesh of 5,002 vertices / 10,000 faces filling
~60 % of the 224 x 224 frame) with :class:`emoca_pipeline.render.MeshRenderer` (UV albedo
+ 9-band SH lighting, as in EMOCA's photometric loss), and prints:

- render forward (no grad) and forward + backward, ms per image;
- torchvision ResNet-50 (weights=None, eval) forward, ms per image;
- the ratio render_fwd_bwd / resnet_fwd (the CPU target is <= 0.5);
- where the render time goes (each stage of the forward timed alone, and the backward).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torchvision

from emoca_pipeline.render import (
    MeshRenderer,
    interpolate_vertex_attributes,
    orthographic_project,
    sample_texture,
    sh_shading,
    vertex_normals,
)


def sphere_mesh(n_lat: int = 50, n_lon: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed UV sphere of radius 1: ``n_lat * n_lon + 2`` vertices, ``2 n_lon n_lat`` faces."""
    lat = torch.linspace(0, math.pi, n_lat + 2)[1:-1]
    lon = torch.arange(n_lon) * 2 * math.pi / n_lon
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    ring = torch.stack([la.sin() * lo.sin(), la.cos(), la.sin() * lo.cos()], -1).reshape(-1, 3)
    verts = torch.cat([ring, torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])])
    i, j = torch.meshgrid(torch.arange(n_lat - 1), torch.arange(n_lon), indexing="ij")
    a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
    c, d = a + n_lon, b + n_lon
    quads = torch.stack([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)], 2)
    top, bottom, last = n_lat * n_lon, n_lat * n_lon + 1, (n_lat - 1) * n_lon
    ring_j = torch.arange(n_lon)
    caps = torch.cat([
        torch.stack([torch.full_like(ring_j, top), ring_j, (ring_j + 1) % n_lon], -1),
        torch.stack([torch.full_like(ring_j, bottom), last + (ring_j + 1) % n_lon,
                     last + ring_j], -1),
    ])
    return verts, torch.cat([quads.reshape(-1, 3), caps])


def benchmark_mesh() -> tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(description, vertices (V, 3) with xy in [-1, 1], faces (F, 3), uvs (T, 2),
    face_uvs (F, 3))."""
    try:
        from emoca_pipeline import flame
        from emoca_pipeline.assets import generate_procedural_assets
        from emoca_pipeline.io.obj import load_obj
    except ImportError as error:
        verts, faces = sphere_mesh()
        uvs = verts[:, :2] * 0.5 + 0.5  # front projection; the layout does not change the cost
        return f"sphere (procedural FLAME unavailable: {error})", verts, faces, uvs, faces
    with tempfile.TemporaryDirectory() as folder:
        generate_procedural_assets(folder, texture=False)
        layer = flame.create(folder)
        obj = load_obj(f"{folder}/head_template.obj")
    zeros = torch.zeros
    verts = layer(zeros(1, 100), zeros(1, 50), zeros(1, 6)).vertices[0].detach()
    verts = verts - (verts.amax(0) + verts.amin(0)) / 2
    verts = verts / verts[:, :2].abs().max()
    return ("procedural FLAME (emoca_pipeline.flame)", verts, layer.faces.long(),
            torch.from_numpy(obj.uvs).float(), torch.from_numpy(obj.face_uvs))


def timed_round_robin(
    fns: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """Median wall time (s) of each function, called in turn ``repeats`` times after a
    warm-up, so that load from other processes hits all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    batch = args.batch

    name, template, faces, uvs, face_uvs = benchmark_mesh()
    renderer = MeshRenderer(faces, uvs, face_uvs, image_size=args.image_size).to(device)
    # scale 0.874: a sphere then covers pi 0.874^2 / 4 = 60 % of the frame
    vertices = (template[None] + 0.005 * torch.randn(batch, *template.shape)).to(device)
    vertices.requires_grad_(True)
    cam = torch.tensor([[0.874, 0.0, 0.0]]).repeat(batch, 1).to(device)
    cam = (cam + 0.01 * torch.randn_like(cam)).requires_grad_(True)
    albedos = torch.nn.functional.interpolate(torch.rand(batch, 3, 16, 16), size=256,
                                              mode="bilinear").to(device)
    lights = (0.3 * torch.randn(batch, 9, 3)).to(device)
    lights[:, 0] += 2.0

    def render():
        return renderer(vertices, orthographic_project(vertices, cam), albedos, lights)

    def render_no_grad():
        with torch.no_grad():
            render()

    def render_fwd_bwd():
        vertices.grad = cam.grad = None
        render().images.abs().mean().backward()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def sync(fn):
        def run():
            fn()
            synchronize()
        return run

    coverage = render().alpha_images.mean().item()
    resnet = torchvision.models.resnet50(weights=None).eval().to(device)
    images = torch.rand(batch, 3, args.image_size, args.image_size, device=device)

    def resnet_fwd():
        with torch.no_grad():
            resnet(images)

    main_times = timed_round_robin(
        {"fwd": sync(render_no_grad), "fwd_bwd": sync(render_fwd_bwd),
         "resnet": sync(resnet_fwd)},
        args.repeats,
    )
    fwd, fwd_bwd, resnet_time = (main_times[k] / batch for k in ("fwd", "fwd_bwd", "resnet"))

    print(f"mesh: {name}: {template.shape[0]} vertices, {faces.shape[0]} faces, "
          f"{coverage:.0%} of the frame covered")
    print(f"device {device}, {torch.get_num_threads()} threads, batch {batch}, "
          f"{args.image_size}x{args.image_size}")
    print(f"render forward (no grad)     {fwd * 1e3:8.2f} ms/image")
    print(f"render forward + backward    {fwd_bwd * 1e3:8.2f} ms/image")
    print(f"ResNet-50 forward (no grad)  {resnet_time * 1e3:8.2f} ms/image")
    print(f"ratio render_fwd / resnet_fwd      {fwd / resnet_time:6.3f}")
    print(f"ratio render_fwd_bwd / resnet_fwd  {fwd_bwd / resnet_time:6.3f}  (target <= 0.5)")

    # Where the time goes: each stage of MeshRenderer.forward timed on its own (wall
    # clock, same inputs), and the backward pass alone.
    transformed = orthographic_project(vertices, cam)
    fragments = renderer.rasterize(transformed)
    normals = vertex_normals(vertices, renderer.faces)
    per_vertex = torch.cat([normals, normals[..., 2:]], dim=-1)
    pixel_values = interpolate_vertex_attributes(
        fragments.pix_to_face, fragments.bary_coords, per_vertex, renderer.faces
    )[:, :, :, 0].permute(0, 3, 1, 2)
    grid = renderer._uv_grid(fragments)
    albedo_images = sample_texture(albedos, grid)
    stages = {
        "rasterize (no grad)": lambda: renderer.rasterize(transformed.detach()),
        "rasterize (with autograd)": lambda: renderer.rasterize(transformed),
        "vertex normals (x2)": lambda: (vertex_normals(vertices, renderer.faces),
                                        vertex_normals(transformed, renderer.faces)),
        "interpolate normals + uv": lambda: (interpolate_vertex_attributes(
            fragments.pix_to_face, fragments.bary_coords, per_vertex, renderer.faces),
            renderer._uv_grid(fragments)),
        "albedo grid_sample": lambda: sample_texture(albedos, grid),
        "SH shading": lambda: albedo_images * sh_shading(pixel_values[:, :3], lights),
    }

    def backward_only() -> float:
        output = render().images.abs().mean()  # graph built outside the timed region
        synchronize()
        start = time.perf_counter()
        output.backward()
        synchronize()
        return time.perf_counter() - start

    stages["forward with autograd (total)"] = render
    stage_times = timed_round_robin({k: sync(v) for k, v in stages.items()}, args.repeats)
    backward_only()
    backward = statistics.median(backward_only() for _ in range(args.repeats)) / batch
    print("\nwhere the time goes (each stage timed alone, ms/image):")
    for name, seconds in stage_times.items():
        print(f"  {name:34s} {seconds / batch * 1e3:8.2f}")
    print(f"  {'backward (alone)':34s} {backward * 1e3:8.2f}")

if __name__ == "__main__":
    main()
