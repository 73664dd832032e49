"""Tests of the pure-PyTorch renderer against brute-force references and DECA's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emoca_pipeline.render import (
    DECA_SHAPE_LIGHTS,
    SH_CONSTANT_FACTORS,
    MeshRenderer,
    RasterSettings,
    batch_orth_proj,
    dense_grid_faces,
    directional_shading,
    face_vertices,
    interpolate_face_attributes,
    interpolate_vertex_attributes,
    ndc_to_pixels,
    orthographic_project,
    overlay_on_image,
    pixel_centers,
    pixels_to_ndc,
    point_shading,
    project_landmarks,
    pytorch3d_available,
    rasterize_meshes,
    sh_shading,
    vertex_normals,
)
from emoca_pipeline.render import rasterizer as rasterizer_module

# --------------------------------------------------------------------------------------
# references and fixtures
# --------------------------------------------------------------------------------------


def pytorch3d_reference(verts: torch.Tensor, faces: torch.Tensor, height: int, width: int):
    """pytorch3d's ``rasterize_meshes_python`` (faces_per_pixel 1, blur 0, no culling, not
    perspective correct), written from its source, on DECA's flip of ``verts`` into
    pytorch3d's NDC. Independent of the rasteriser under test: pytorch3d's own pixel loop
    and axes (+x left, +y up, the longer side spanning more than [-1, 1]), per pixel and per
    face, in the input's float precision as pytorch3d (float32) does.

    Per face: skipped when ``|edge(v0, v1, v2)| <= 1e-8`` (the C++ kernels' zero-area test)
    or when its smallest vertex z is < 1e-8 (kEpsilon: "faces with at least one vertex
    behind the camera"), or when the pixel is outside its bounding box grown by kEpsilon.
    Per pixel: ``w_i = edge_i(p) / (edge(v2, v0, v1) + 1e-8)``, inside when all w_i > 0,
    ``pz = sum w_i z_i`` dropped when < 0; the smallest (pz, face) pair wins.

    Returns:
        pix_to_face ``(N, H, W)`` (packed ``n * F + f``, -1 background), zbuf ``(N, H, W)``
        and bary ``(N, H, W, 3)`` (-1 background).
    """
    k_epsilon = 1e-8
    real = np.float64 if verts.dtype == torch.float64 else np.float32
    scale = np.array([-1.0, -1.0, 1.0])
    if height > width:
        scale[1] *= height / width
    elif width > height:
        scale[0] *= width / height
    face_verts = verts.detach().numpy().astype(real)[:, faces.numpy()] * scale.astype(real)
    batch, num_faces = face_verts.shape[:2]

    def edge_function(p, v0, v1):  # pytorch3d: (p - v0) x (v1 - v0)
        return (p[0] - v0[0]) * (v1[1] - v0[1]) - (p[1] - v0[1]) * (v1[0] - v0[0])

    def pix_to_non_square_ndc(i, s1, s2):
        ndc_range = 2.0 * s1 / s2 if s1 > s2 else 2.0
        offset = ndc_range / 2.0
        return -offset + (ndc_range * i + offset) / s1

    pix_to_face = np.full((batch, height, width), -1, dtype=np.int64)
    zbuf = np.full((batch, height, width), -1.0, dtype=real)
    bary = np.full((batch, height, width, 3), -1.0, dtype=real)
    face_index = np.arange(num_faces)
    for n in range(batch):
        v0, v1, v2 = (face_verts[n, :, i].T for i in range(3))  # each (3, F): x, y, z
        face_area = edge_function(v0, v1, v2)
        x_min = face_verts[n, :, :, 0].min(1) - k_epsilon
        x_max = face_verts[n, :, :, 0].max(1) + k_epsilon
        y_min = face_verts[n, :, :, 1].min(1) - k_epsilon
        y_max = face_verts[n, :, :, 1].max(1) + k_epsilon
        z_min = face_verts[n, :, :, 2].min(1)
        candidate = (np.abs(face_area) > k_epsilon) & ~(z_min < k_epsilon)
        area = edge_function(v2, v0, v1) + real(k_epsilon)
        for yi in range(height):
            yf = real(pix_to_non_square_ndc(height - 1 - yi, height, width))
            for xi in range(width):
                xf = real(pix_to_non_square_ndc(width - 1 - xi, width, height))
                p = (xf, yf)
                w = np.stack([edge_function(p, v1, v2), edge_function(p, v2, v0),
                              edge_function(p, v0, v1)]) / area  # (3, F)
                pz = w[0] * v0[2] + w[1] * v1[2] + w[2] * v2[2]
                in_box = (xf >= x_min) & (xf <= x_max) & (yf >= y_min) & (yf <= y_max)
                hit = candidate & in_box & (w > 0).all(0) & ~(pz < 0)
                if not hit.any():
                    continue
                best = min(zip(pz[hit].tolist(), face_index[hit].tolist(), strict=True))[1]
                pix_to_face[n, yi, xi] = n * num_faces + best
                zbuf[n, yi, xi] = pz[best]
                bary[n, yi, xi] = w[:, best]
    return (torch.from_numpy(pix_to_face), torch.from_numpy(zbuf).to(verts.dtype),
            torch.from_numpy(bary).to(verts.dtype))


def random_triangles(batch: int, num_faces: int, seed: int, dtype=torch.float32):
    """Independent triangles of mixed sizes and both windings, some partly outside the
    frame or behind z = 0, every 7th one degenerate (a repeated vertex: zero area)."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.rand(batch, num_faces, 1, 2, generator=gen) * 2.6 - 1.3
    sizes = 0.02 + 0.6 * torch.rand(batch, num_faces, 1, 1, generator=gen) ** 3
    xy = centers + sizes * (torch.rand(batch, num_faces, 3, 2, generator=gen) * 2 - 1)
    z = torch.rand(batch, num_faces, 3, 1, generator=gen) * 2.0 - 0.2
    corners = torch.cat([xy, z], dim=-1)
    corners[:, ::7, 2] = corners[:, ::7, 0]
    verts = corners.reshape(batch, num_faces * 3, 3).to(dtype)
    faces = torch.arange(num_faces * 3).reshape(num_faces, 3)
    return verts, faces


def uv_sphere(n_lat: int, n_lon: int, radius: float = 1.0):
    """Closed UV sphere: vertices (V, 3), faces (F, 3) outward-wound, per-vertex uvs (V, 2)."""
    lat = torch.linspace(0, math.pi, n_lat + 2, dtype=torch.float64)[1:-1]
    lon = torch.arange(n_lon, dtype=torch.float64) * 2 * math.pi / n_lon
    la, lo = torch.meshgrid(lat, lon, indexing="ij")
    ring = torch.stack([la.sin() * lo.sin(), la.cos(), la.sin() * lo.cos()], -1).reshape(-1, 3)
    verts = torch.cat([ring, torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]],
                                          dtype=torch.float64)]) * radius
    faces = []
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            faces += [[a, c, b], [b, c, d]]
    top, bottom = n_lat * n_lon, n_lat * n_lon + 1
    last = (n_lat - 1) * n_lon
    for j in range(n_lon):
        faces += [[top, j, (j + 1) % n_lon], [bottom, last + (j + 1) % n_lon, last + j]]
    uvs = torch.stack([verts[:, 0] * 0.4 + 0.5, verts[:, 1] * 0.4 + 0.5], dim=-1)
    return verts.float(), torch.tensor(faces), uvs.float()


# --------------------------------------------------------------------------------------
# rasteriser vs pytorch3d's rule (brute force)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_faces", "height", "width", "seed"),
    [(12, 16, 16, 0), (150, 40, 56, 1), (600, 64, 48, 2)],
)
def test_rasterize_matches_pytorch3d_reference(num_faces, height, width, seed):
    verts, faces = random_triangles(2, num_faces, seed)
    fragments = rasterize_meshes(verts, faces, (height, width))
    ref_faces, ref_z, ref_bary = pytorch3d_reference(verts, faces, height, width)

    got = fragments.pix_to_face[..., 0]
    assert not torch.any((got >= 0) & (got % num_faces % 7 == 0))  # degenerate faces
    same = got == ref_faces
    assert same.float().mean() >= 0.999
    assert (ref_faces >= 0).any() and (ref_faces < 0).any()  # the scene is not trivial
    # Non-square images: pytorch3d sees one axis stretched by H/W in float32, a rounding
    # that moves the barycentrics of the smallest triangles by up to ~1e-5.
    atol = 1e-5 if height == width else 5e-5
    torch.testing.assert_close(fragments.bary_coords[..., 0, :][same], ref_bary[same],
                               atol=atol, rtol=0)
    torch.testing.assert_close(fragments.zbuf[..., 0][same], ref_z[same], atol=atol, rtol=0)
    assert torch.all(fragments.bary_coords[got < 0] == -1)
    assert fragments.dists is None


@pytest.mark.parametrize("min_window_cells", [0, 1 << 40])
def test_window_and_exact_paths_match_pytorch3d_reference(monkeypatch, min_window_cells):
    # Face groups go through broadcast windows or exact bounding-box enumeration depending
    # on their size; force each path for every face.
    monkeypatch.setattr(rasterizer_module, "_MIN_WINDOW_CELLS", min_window_cells)
    verts, faces = random_triangles(2, 300, seed=9)
    fragments = rasterize_meshes(verts, faces, (48, 40))
    ref_faces, _, ref_bary = pytorch3d_reference(verts, faces, 48, 40)
    assert torch.equal(fragments.pix_to_face[..., 0], ref_faces)
    torch.testing.assert_close(fragments.bary_coords[..., 0, :], ref_bary, atol=1e-5, rtol=0)


def test_float64_path_matches_pytorch3d_reference():
    verts, faces = random_triangles(2, 200, seed=3, dtype=torch.float64)
    fragments = rasterize_meshes(verts, faces, (40, 40))
    ref_faces, ref_z, ref_bary = pytorch3d_reference(verts, faces, 40, 40)
    assert torch.equal(fragments.pix_to_face[..., 0], ref_faces)
    torch.testing.assert_close(fragments.zbuf[..., 0], ref_z, atol=1e-12, rtol=0)
    torch.testing.assert_close(fragments.bary_coords[..., 0, :], ref_bary, atol=1e-12, rtol=0)


def test_chunking_does_not_change_the_result():
    verts, faces = random_triangles(2, 300, seed=4)
    whole = rasterize_meshes(verts, faces, 48)
    tiny = rasterize_meshes(verts, faces, 48,
                            RasterSettings(faces_per_chunk=7, candidates_per_chunk=50))
    assert torch.equal(whole.pix_to_face, tiny.pix_to_face)
    assert torch.equal(whole.bary_coords, tiny.bary_coords)


def test_per_mesh_faces_and_packed_indices():
    verts, faces = random_triangles(2, 40, seed=5)
    flipped = torch.stack([faces, faces.flip(0)])  # mesh 1 lists its faces in reverse
    fragments = rasterize_meshes(verts, flipped, 32)
    shared = rasterize_meshes(verts, faces, 32)
    assert torch.equal(fragments.pix_to_face[0], shared.pix_to_face[0])
    covered = shared.pix_to_face[1] >= 0
    # packed index n * F + f with the reversed order in mesh 1
    expected = 40 + (39 - (shared.pix_to_face[1][covered] - 40))
    assert torch.equal(fragments.pix_to_face[1][covered], expected)


# --------------------------------------------------------------------------------------
# conventions and edge cases
# --------------------------------------------------------------------------------------


def _triangle_around(x: float, y: float, z: float, radius: float) -> torch.Tensor:
    angles = torch.tensor([0.0, 2.0944, 4.1888])
    return torch.stack([x + radius * angles.cos(), y + radius * angles.sin(),
                        torch.full((3,), z)], dim=-1)


@pytest.mark.parametrize(("height", "width"), [(20, 20), (12, 30), (33, 17)])
def test_pixel_convention_any_aspect_ratio(height, width):
    # A point at x lands on column (x + 1) / 2 * W - 0.5 and +y goes down the rows.
    row, col = 3, width - 4
    x = (col + 0.5) * 2 / width - 1
    y = (row + 0.5) * 2 / height - 1
    radius = 0.4 / max(height, width)  # well inside one pixel
    verts = _triangle_around(x, y, 1.0, radius)[None]
    fragments = rasterize_meshes(verts, torch.tensor([[0, 1, 2]]), (height, width))
    covered = (fragments.pix_to_face[0, ..., 0] >= 0).nonzero().tolist()
    assert covered == [[row, col]]
    pixel = ndc_to_pixels(torch.tensor([[x, y]]), (height, width))
    torch.testing.assert_close(pixel, torch.tensor([[float(col), float(row)]]))


def test_ndc_pixel_round_trip():
    points = torch.rand(5, 3) * 2 - 1
    back = pixels_to_ndc(ndc_to_pixels(points, (30, 50)), (30, 50))
    torch.testing.assert_close(back, points)


def test_nearer_face_occludes_in_any_order():
    far = _triangle_around(0.0, 0.0, 2.0, 0.9)
    near = _triangle_around(0.1, 0.0, 1.0, 0.5)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    for verts, near_index in ((torch.cat([far, near]), 1), (torch.cat([near, far]), 0)):
        fragments = rasterize_meshes(verts[None], faces, 32)
        assert fragments.pix_to_face[0, 16, 17, 0] == near_index
        torch.testing.assert_close(fragments.zbuf[0, 16, 17, 0], torch.tensor(1.0))
    # exact ties (a face listed twice: the same depth bit for bit): the lower face index wins
    # wherever they overlap, in either order, on the float32 and the float64 paths
    copy = _triangle_around(0.1, 0.0, 1.0, 0.5)
    for dtype in (torch.float32, torch.float64):
        verts = torch.cat([far, near, copy]).to(dtype)[None]
        for tie in ([[3, 4, 5], [6, 7, 8]], [[6, 7, 8], [3, 4, 5]]):
            fragments = rasterize_meshes(verts, torch.tensor(tie), 32)
            covered = fragments.pix_to_face >= 0
            assert covered.sum() > 50
            assert torch.all(fragments.pix_to_face[covered] == 0), dtype


def test_faces_with_a_vertex_behind_the_image_plane_are_skipped_whole():
    # pytorch3d skips a face whose smallest vertex z is < 1e-8, even where its interpolated
    # depth is positive and nearer than everything else (old rule: drawn where z >= 0).
    far = _triangle_around(0.0, 0.0, 2.0, 0.9)
    crossing = _triangle_around(0.0, 0.0, 1.0, 0.9)
    crossing[2, 2] = -0.5
    touching = _triangle_around(0.0, 0.0, 1.0, 0.9)
    touching[0, 2] = 0.0
    just_in_front = _triangle_around(0.0, 0.0, 1.0, 0.9)
    just_in_front[1, 2] = 2e-8
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    alone = rasterize_meshes(far[None], faces[:1], 32).pix_to_face
    assert (alone >= 0).sum() > 200
    for blocked in (crossing, touching):
        for dtype in (torch.float32, torch.float64):
            fragments = rasterize_meshes(torch.cat([blocked, far]).to(dtype)[None], faces, 32)
            assert torch.equal(fragments.pix_to_face >= 0, alone >= 0)
            assert torch.all(fragments.pix_to_face[alone >= 0] == 1)
            torch.testing.assert_close(fragments.zbuf[alone >= 0],
                                       torch.full_like(fragments.zbuf[alone >= 0], 2.0))
            ref_faces, _, _ = pytorch3d_reference(torch.cat([blocked, far])[None], faces, 32, 32)
            assert torch.equal(fragments.pix_to_face[..., 0], ref_faces)
    front = rasterize_meshes(torch.cat([just_in_front, far])[None], faces, 32).pix_to_face
    assert (front == 0).sum() > 200  # every vertex at z >= 1e-8: drawn, and nearer


def test_empty_scenes_are_background_everywhere():
    verts = torch.rand(2, 6, 3)
    scenes = {
        "no faces": (verts, torch.zeros(0, 3, dtype=torch.int64)),
        "off screen": (torch.cat([_triangle_around(3.0, 0.0, 1.0, 0.5),
                                  _triangle_around(0.0, -2.5, 1.0, 0.5)])[None],
                       torch.tensor([[0, 1, 2], [3, 4, 5]])),
        "behind the image plane": (_triangle_around(0.0, 0.0, -1.0, 0.9)[None],
                                   torch.tensor([[0, 1, 2]])),
        "zero area": (torch.tensor([[[-0.5, -0.5, 1.0], [0.5, 0.5, 1.0], [0.0, 0.0, 1.0]]]),
                      torch.tensor([[0, 1, 2]])),
    }
    for name, (v, f) in scenes.items():
        fragments = rasterize_meshes(v, f, (10, 14))
        assert fragments.pix_to_face.shape == (v.shape[0], 10, 14, 1), name
        assert torch.all(fragments.pix_to_face == -1), name
        assert torch.all(fragments.zbuf == -1), name
        assert torch.all(fragments.bary_coords == -1), name


def test_both_windings_are_drawn():
    triangle = _triangle_around(0.0, 0.0, 1.0, 0.8)
    front = rasterize_meshes(triangle[None], torch.tensor([[0, 1, 2]]), 24)
    back = rasterize_meshes(triangle[None], torch.tensor([[0, 2, 1]]), 24)
    assert (front.pix_to_face >= 0).sum() > 50
    assert torch.equal(front.pix_to_face >= 0, back.pix_to_face >= 0)
    covered = front.pix_to_face[..., 0] >= 0
    torch.testing.assert_close(front.bary_coords[..., 0, :][covered][:, [0, 2, 1]],
                               back.bary_coords[..., 0, :][covered])


@pytest.mark.parametrize("rotation", [0, 1, 2])
def test_mesh_larger_than_the_frame(rotation):
    # Two triangles covering [-2, 2]^2 cover every pixel except those whose centre lies
    # exactly on their shared diagonal y = x: a barycentric of exactly 0 is outside.
    # Rotating the corners puts the diagonal on each of the three barycentrics in turn.
    verts = torch.tensor([[[-2.0, -2.0, 1.0], [2.0, -2.0, 1.0], [2.0, 2.0, 1.0],
                           [-2.0, 2.0, 1.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]]).roll(rotation, dims=1)
    fragments = rasterize_meshes(verts, faces, (16, 16))
    pix = fragments.pix_to_face[0, ..., 0]
    on_diagonal = torch.eye(16, dtype=torch.bool)
    assert torch.all(pix[on_diagonal] == -1)
    assert torch.all(pix[~on_diagonal] >= 0)
    ref_faces, _, _ = pytorch3d_reference(verts, faces, 16, 16)
    assert torch.equal(pix, ref_faces[0])


def test_dists_are_negative_squared_distance_to_the_boundary():
    verts = torch.tensor([[[-0.5, -0.5, 1.0], [0.5, -0.5, 1.0], [-0.5, 0.5, 1.0]]])
    fragments = rasterize_meshes(verts, torch.tensor([[0, 1, 2]]), 8,
                                 RasterSettings(compute_dists=True))
    # pixel (row 3, col 3) has centre (-0.125, -0.125): nearest edge is the hypotenuse
    centre = pixel_centers(8)[3]
    expected = -((0.0 - (centre + centre)) ** 2) / 2  # distance to x + y = 0
    torch.testing.assert_close(fragments.dists[0, 3, 3, 0], expected)
    assert fragments.dists[0, 0, 7, 0] == -1


def test_input_errors_are_clear():
    verts, faces = random_triangles(1, 3, seed=0)
    with pytest.raises(ValueError, match="verts must be a"):
        rasterize_meshes(verts[0], faces, 8)
    with pytest.raises(ValueError, match="faces index vertices"):
        rasterize_meshes(verts, faces + 100, 8)
    with pytest.raises(ValueError, match="faces must hold integer"):
        rasterize_meshes(verts, faces.float(), 8)
    with pytest.raises(ValueError, match="image_size"):
        rasterize_meshes(verts, faces, (8, 0))
    with pytest.raises(ValueError, match="backend"):
        RasterSettings(backend="opengl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch size"):
        rasterize_meshes(verts, faces[None].repeat(2, 1, 1), 8)


# --------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------


def test_barycentric_gradients_match_finite_differences():
    verts, faces = random_triangles(1, 20, seed=6, dtype=torch.float64)
    weights = torch.rand(1, 12, 12, 1, 3, dtype=torch.float64,
                         generator=torch.Generator().manual_seed(0))

    def loss(v):
        fragments = rasterize_meshes(v, faces, 12)
        covered = (fragments.pix_to_face >= 0).to(v.dtype)
        return ((fragments.bary_coords * weights).sum(-1) * covered).sum() \
            + (fragments.zbuf * covered).sum()

    verts.requires_grad_(True)
    assert torch.autograd.gradcheck(loss, (verts,), eps=1e-7, atol=1e-6, rtol=1e-4)


@pytest.fixture(scope="module")
def small_renderer():
    verts, faces, uvs = uv_sphere(7, 10, radius=0.9)
    return MeshRenderer(faces, uvs, faces, image_size=(18, 20), uv_size=16), verts


def test_shaded_render_gradients_wrt_vertices_and_camera(small_renderer):
    renderer, sphere = small_renderer
    gen = torch.Generator().manual_seed(1)
    # a smooth albedo so that bilinear texel kinks stay away from the sampled points
    ramp = torch.linspace(0.2, 0.9, 8, dtype=torch.float64)
    albedo = torch.stack([ramp[None, :].expand(8, 8), ramp[:, None].expand(8, 8),
                          torch.full((8, 8), 0.5, dtype=torch.float64)])[None]
    lights = torch.randn(1, 9, 3, dtype=torch.float64, generator=gen) * 0.2
    lights[:, 0] += 1.5
    verts = (sphere.double() + 0.02 * torch.randn(sphere.shape, dtype=torch.float64,
                                                  generator=gen))[None].requires_grad_(True)
    cam = torch.tensor([[1.0, 0.03, -0.02]], dtype=torch.float64, requires_grad=True)
    weights = torch.rand(1, 3, 18, 20, dtype=torch.float64, generator=gen)

    def loss(v, c):
        out = renderer(v, orthographic_project(v, c), albedo, lights)
        return (out.images * weights).sum()

    assert torch.autograd.gradcheck(loss, (verts, cam), eps=1e-6, atol=1e-5, rtol=1e-3)
    value = loss(verts, cam)
    grad_v, grad_c = torch.autograd.grad(value, (verts, cam))
    assert grad_v.abs().sum() > 0 and torch.all(grad_c != 0)


# --------------------------------------------------------------------------------------
# shading, normals, camera
# --------------------------------------------------------------------------------------


def test_sh_constant_factors_are_decas():
    pi = math.pi
    expected = [1 / math.sqrt(4 * pi)] + [2 * pi / 3 * math.sqrt(3 / (4 * pi))] * 3 \
        + [pi / 4 * 3 * math.sqrt(5 / (12 * pi))] * 3 \
        + [pi / 4 * 1.5 * math.sqrt(5 / (12 * pi)), pi / 4 * 0.5 * math.sqrt(5 / (4 * pi))]
    np.testing.assert_allclose(SH_CONSTANT_FACTORS, expected, rtol=1e-12)
    np.testing.assert_allclose(
        SH_CONSTANT_FACTORS,
        [0.2820947918] + [1.0233267079] * 3 + [0.8580855308] * 3 + [0.4290427654, 0.2477079561],
        rtol=1e-9,
    )


def test_sh_shading_matches_direct_formula():
    gen = torch.Generator().manual_seed(2)
    normals = torch.nn.functional.normalize(torch.randn(2, 3, 5, 6, generator=gen), dim=1)
    coeffs = torch.randn(2, 9, 3, generator=gen)
    got = sh_shading(normals, coeffs)
    expected = torch.zeros(2, 3, 5, 6)
    for n in range(2):
        for i in range(5):
            for j in range(6):
                x, y, z = normals[n, :, i, j].tolist()
                basis = [1, x, y, z, x * y, x * z, y * z, x * x - y * y, 3 * z * z - 1]
                for c in range(3):
                    expected[n, c, i, j] = sum(
                        coeffs[n, b, c].item() * SH_CONSTANT_FACTORS[b] * basis[b]
                        for b in range(9)
                    )
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_point_and_directional_lights_match_decas_formulas():
    gen = torch.Generator().manual_seed(5)
    positions = torch.randn(2, 7, 3, generator=gen)
    normals = torch.nn.functional.normalize(torch.randn(2, 7, 3, generator=gen), dim=-1)
    lights = torch.randn(2, 4, 6, generator=gen)
    point = point_shading(positions, normals, lights)
    directional = directional_shading(normals, lights)
    for n in range(2):
        for p in range(7):
            point_sum = torch.zeros(3)
            directional_sum = torch.zeros(3)
            for light in lights[n]:
                to_light = light[:3] - positions[n, p]
                point_sum += (normals[n, p] @ (to_light / to_light.norm())) * light[3:]
                cosine = (normals[n, p] @ (light[:3] / light[:3].norm())).clamp(0, 1)
                directional_sum += cosine * light[3:]
            torch.testing.assert_close(point[n, p], point_sum / 4)  # not clamped (DECA)
            torch.testing.assert_close(directional[n, p], directional_sum / 4)


def test_vertex_normals_match_decas_corner_formula():
    verts, faces, _ = uv_sphere(5, 7)
    verts = verts + 0.05 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(3))
    v, f = verts.double().numpy(), faces.numpy()
    summed = np.zeros_like(v)
    # DECA adds cross(v2 - v1, v0 - v1) to v1, cross(v0 - v2, v1 - v2) to v2, ...
    np.add.at(summed, f[:, 1], np.cross(v[f[:, 2]] - v[f[:, 1]], v[f[:, 0]] - v[f[:, 1]]))
    np.add.at(summed, f[:, 2], np.cross(v[f[:, 0]] - v[f[:, 2]], v[f[:, 1]] - v[f[:, 2]]))
    np.add.at(summed, f[:, 0], np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]))
    expected = summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-6)
    got = vertex_normals(verts[None].double(), faces)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # outward on the sphere
    assert np.all((got * v).sum(1) > 0)


def test_vertex_and_face_attribute_interpolation_agree():
    verts, faces, _ = uv_sphere(6, 9, radius=0.8)
    batch_verts = torch.stack([verts, verts * 0.7]) + torch.tensor([0.0, 0.0, 2.0])
    fragments = rasterize_meshes(batch_verts, faces, 24)
    colors = torch.rand(2, verts.shape[0], 4)
    by_face = interpolate_face_attributes(
        fragments.pix_to_face, fragments.bary_coords,
        face_vertices(colors, faces).flatten(0, 1),
    )
    by_vertex = interpolate_vertex_attributes(fragments.pix_to_face, fragments.bary_coords,
                                              colors, faces)
    torch.testing.assert_close(by_face, by_vertex)
    assert torch.all(by_face[fragments.pix_to_face[..., 0] < 0] == 0)
    # interpolating the screen positions gives back the pixel centres
    position = interpolate_vertex_attributes(fragments.pix_to_face, fragments.bary_coords,
                                             batch_verts, faces)[..., 0, :]
    covered = fragments.pix_to_face[..., 0] >= 0
    py, px = torch.meshgrid(pixel_centers(24), pixel_centers(24), indexing="ij")
    torch.testing.assert_close(position[..., 0][covered], px.expand(2, -1, -1)[covered],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(position[..., 1][covered], py.expand(2, -1, -1)[covered],
                               atol=1e-5, rtol=0)


def test_orthographic_projection_is_decas():
    points = torch.randn(2, 5, 3)
    cam = torch.tensor([[2.0, 0.1, -0.2], [0.5, 0.0, 0.3]])
    expected = cam[:, None, :1] * torch.cat([points[..., :2] + cam[:, None, 1:],
                                             points[..., 2:]], -1)
    torch.testing.assert_close(batch_orth_proj(points, cam), expected)
    flipped = expected * torch.tensor([1.0, -1.0, -1.0])
    torch.testing.assert_close(orthographic_project(points, cam), flipped)
    torch.testing.assert_close(project_landmarks(points, cam), flipped[..., :2])
    torch.testing.assert_close(project_landmarks(points, cam, keep_depth=True), flipped)
    with pytest.raises(ValueError, match="cam must be"):
        batch_orth_proj(points, cam[:, :2])


# --------------------------------------------------------------------------------------
# MeshRenderer
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sphere_renderer():
    verts, faces, uvs = uv_sphere(16, 24)
    return MeshRenderer(faces, uvs, faces, image_size=48, uv_size=32), verts


def test_render_outputs_follow_decas_formulas(sphere_renderer):
    renderer, sphere = sphere_renderer
    verts = sphere[None].repeat(2, 1, 1)
    cam = torch.tensor([[0.8, 0.0, 0.0], [0.5, 0.2, 0.1]])
    transformed = orthographic_project(verts, cam)
    before = transformed.clone()
    albedo = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    lights = torch.zeros(2, 9, 3)
    lights[:, 0] = torch.tensor([1.0, 2.0, 3.0])  # ambient only
    out = renderer(verts, transformed, albedo, lights)

    assert torch.equal(transformed, before)  # unlike DECA, the input is not shifted in place
    fragments = rasterize_meshes(transformed + torch.tensor([0, 0, 10.0]), renderer.faces, 48)
    alpha = (fragments.pix_to_face[..., 0] >= 0).float()
    torch.testing.assert_close(out.alpha_images[:, 0], alpha)
    ambient = torch.tensor([1.0, 2.0, 3.0]) * SH_CONSTANT_FACTORS[0]
    torch.testing.assert_close(out.shading_images, ambient.view(1, 3, 1, 1).expand(2, 3, 48, 48))
    expected_albedo = torch.nn.functional.grid_sample(albedo, out.grid, align_corners=False)
    torch.testing.assert_close(out.albedo_images, expected_albedo * alpha[:, None])
    torch.testing.assert_close(out.images, expected_albedo * ambient.view(1, 3, 1, 1)
                               * alpha[:, None])
    # coverage of a sphere of radius s: area fraction pi s^2 / 4 in [-1, 1]^2 (+ tx, ty)
    np.testing.assert_allclose(alpha[0].mean().item(), math.pi * 0.8**2 / 4, atol=0.02)
    # visible side faces the viewer: screen normal z < -0.05 on most covered pixels
    assert out.pos_mask[0, 0][alpha[0] > 0].mean() > 0.9
    torch.testing.assert_close(out.normals, vertex_normals(verts, renderer.faces))
    assert out.images.shape == (2, 3, 48, 48) and out.grid.shape == (2, 48, 48, 2)
    # no lights: albedo only, zero shading
    plain = renderer(verts, transformed, albedo)
    torch.testing.assert_close(plain.images, out.albedo_images)
    assert torch.all(plain.shading_images == 0)


def test_render_shape_lights_a_front_facing_point(sphere_renderer):
    renderer, sphere = sphere_renderer
    verts = sphere[None]
    out = renderer.render_shape(verts, orthographic_project(verts, torch.tensor([[0.8, 0, 0]])))
    # centre pixel: world normal ~ (0, 0, 1) (FLAME looks along +z); five lights of 1.7
    directions = torch.nn.functional.normalize(torch.tensor(DECA_SHAPE_LIGHTS)[:, :3], dim=1)
    shade = directions[:, 2].clamp(0, 1).mean() * 1.7
    centre = out.images[0, :, 23:25, 23:25].mean(dim=(1, 2))
    torch.testing.assert_close(centre, torch.full((3,), 180 / 255 * shade.item()),
                               atol=0.02, rtol=0)
    assert torch.all(out.images[0][:, out.alpha_images[0, 0] == 0] == 0)
    # the shape render sees the viewer-facing half
    assert out.pos_mask[0, 0][out.alpha_images[0, 0] > 0].mean() > 0.9


def test_world2uv_rasterises_vertex_values_in_uv_space():
    # A flat grid whose uvs equal its xy (scaled to [0, 1]): world2uv of the vertex
    # positions must reproduce the linear map uv -> xyz at every covered texel. (7 quads
    # over 16 texels: no quad edge passes through a texel centre, which would leave the
    # texel uncovered; only the anti-diagonal u + v = 1 does.)
    size = 8
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size),
                            indexing="ij")
    uvs = torch.stack([xs.flatten(), ys.flatten()], -1)
    faces = dense_grid_faces(size, size, margin_x=0, margin_y=0)
    renderer = MeshRenderer(faces, uvs, faces, image_size=16, uv_size=16)
    verts = torch.stack([uvs[:, 0] * 3, uvs[:, 1] * 2 - 1, uvs[:, 0] + uvs[:, 1]], -1)[None]
    uv_map = renderer.world2uv(verts.repeat(2, 1, 1))
    assert uv_map.shape == (2, 3, 16, 16)
    covered = renderer.uv_pix_to_face[0, ..., 0] >= 0
    # u + v = 1 is the image diagonal row == col; rounding decides those centres
    assert torch.all(covered[~torch.eye(16, dtype=torch.bool)])
    centres = pixel_centers(16, torch.float32)
    u = ((centres + 1) / 2)[None, :].expand(16, 16)  # column -> u
    v = ((1 - centres) / 2)[:, None].expand(16, 16)  # row -> v (v is up in the UV image)
    expected = torch.stack([u * 3, v * 2 - 1, u + v])
    torch.testing.assert_close(uv_map[1][:, covered], expected[:, covered], atol=1e-5, rtol=0)
    assert torch.all(uv_map[:, :, ~covered] == 0)


def test_dense_grid_faces_match_decas_loop():
    h, w = 12, 10
    expected = []
    for x in range(2, w - 1 - 2):
        for y in range(5, h - 1 - 5):
            expected.append([y * w + x, y * w + x + 1, (y + 1) * w + x])
            expected.append([y * w + x + 1, (y + 1) * w + x + 1, (y + 1) * w + x])
    expected = np.array(expected)[:, [0, 2, 1]]
    np.testing.assert_array_equal(dense_grid_faces(h, w).numpy(), expected)


def test_renderer_from_deca_state_dict_and_masks():
    verts, faces, uvs = uv_sphere(4, 6)
    state = {"deca.render.faces": faces[None], "deca.render.raw_uvcoords": uvs[None],
             "deca.render.uvfaces": faces[None]}
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[:32] = 255
    renderer = MeshRenderer.from_deca_state_dict(state, image_size=16, uv_size=8,
                                                 uv_face_eye_mask=mask)
    assert torch.equal(renderer.faces, faces)
    assert renderer.uv_face_eye_mask.shape == (1, 1, 8, 8)
    assert torch.all(renderer.uv_face_eye_mask[0, 0, :4] == 1)
    assert torch.all(renderer.uv_face_eye_mask[0, 0, 4:] == 0)
    with pytest.raises(ValueError, match="lacks renderer buffers"):
        MeshRenderer.from_deca_state_dict({})
    with pytest.raises(ValueError, match="face_uvs must"):
        MeshRenderer(faces, uvs[:3], faces)
    with pytest.raises(ValueError, match="vertices must be"):
        renderer(verts, verts, torch.rand(1, 3, 8, 8))


# --------------------------------------------------------------------------------------
# overlay
# --------------------------------------------------------------------------------------


def test_overlay_warps_the_crop_back_onto_the_photo():
    image = np.full((60, 80, 3), 40, np.uint8)
    # original -> crop: scale 0.5 about the origin, then shift by (-5, -10)
    transform = np.array([[0.5, 0.0, -5.0], [0.0, 0.5, -10.0], [0.0, 0.0, 1.0]])
    render = np.zeros((20, 20, 3), np.float32)
    render[..., 0] = 1.0
    alpha = np.zeros((20, 20), np.float32)
    alpha[5:15, 5:15] = 1.0  # crop pixels 5..14 -> original 20..38 (x), 30..48 (y)
    out = overlay_on_image(torch.from_numpy(render).permute(2, 0, 1), alpha, image, transform)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[32:47, 22:37], np.array([255, 0, 0], np.uint8)
                                  .reshape(1, 1, 3).repeat(15, 0).repeat(15, 1))
    np.testing.assert_array_equal(out[:25], image[:25])
    np.testing.assert_array_equal(out[:, 45:], image[:, 45:])
    # identity transform: a plain alpha blend
    half = overlay_on_image(np.full((60, 80, 3), 200, np.uint8), np.full((60, 80), 0.5),
                            image, np.eye(3))
    np.testing.assert_array_equal(half, np.full_like(image, 120))
    with pytest.raises(ValueError, match="crop_transform"):
        overlay_on_image(render, alpha, image, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="image must be"):
        overlay_on_image(render, alpha, image[..., 0], transform)


# --------------------------------------------------------------------------------------
# other backends / devices
# --------------------------------------------------------------------------------------


@pytest.mark.skipif(not pytorch3d_available(), reason="pytorch3d is not installed")
def test_pytorch3d_backend_agrees():
    verts, faces = random_triangles(2, 300, seed=7)
    ours = rasterize_meshes(verts, faces, (40, 56))
    theirs = rasterize_meshes(verts, faces, (40, 56), RasterSettings(backend="pytorch3d"))
    same = ours.pix_to_face == theirs.pix_to_face
    assert same.float().mean() >= 0.999
    torch.testing.assert_close(ours.bary_coords[same], theirs.bary_coords[same], atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(ours.zbuf[same], theirs.zbuf[same], atol=1e-5, rtol=0)


@pytest.mark.skipif(pytorch3d_available(), reason="pytorch3d is installed")
def test_pytorch3d_backend_without_pytorch3d_is_a_clear_error():
    verts, faces = random_triangles(1, 3, seed=0)
    with pytest.raises(ValueError, match="needs pytorch3d"):
        rasterize_meshes(verts, faces, 8, RasterSettings(backend="pytorch3d"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_cuda_matches_cpu():
    verts, faces = random_triangles(2, 2000, seed=8)
    cpu = rasterize_meshes(verts, faces, (96, 80))
    gpu = rasterize_meshes(verts.cuda(), faces.cuda(), (96, 80))
    same = cpu.pix_to_face == gpu.pix_to_face.cpu()
    assert same.float().mean() >= 0.999
    torch.testing.assert_close(cpu.bary_coords[same], gpu.bary_coords.cpu()[same], atol=1e-5,
                               rtol=0)
    sphere, sphere_faces, uvs = uv_sphere(20, 30)
    renderer = MeshRenderer(sphere_faces, uvs, sphere_faces, image_size=64, uv_size=32)
    inputs = (sphere[None].repeat(2, 1, 1), torch.tensor([[0.8, 0.0, 0.1], [0.6, 0.1, 0.0]]),
              torch.rand(2, 3, 32, 32), torch.rand(2, 9, 3))
    grads = []
    for device in ("cpu", "cuda"):
        v, c, a, light = (t.detach().to(device).requires_grad_(i < 2)
                          for i, t in enumerate(inputs))
        out = renderer.to(device)(v, orthographic_project(v, c), a, light)
        out.images.sum().backward()
        grads.append((out.images.detach().cpu(), v.grad.cpu(), c.grad.cpu()))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-4, rtol=1e-4)
    for cpu_grad, gpu_grad in zip(grads[0][1:], grads[1][1:], strict=True):
        assert (cpu_grad - gpu_grad).norm() <= 1e-3 * cpu_grad.norm()
