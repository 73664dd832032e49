"""The procedural FLAME-format assets: formats, determinism, geometry, rig, landmarks, UVs."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph
import scipy.spatial
import torch
from smplx.lbs import lbs as smplx_lbs

from emoca_pipeline.assets import ASSET_FILES, TEXTURE_FILE, generate_procedural_assets
from emoca_pipeline.assets.blendshapes import (
    EXPRESSION_COMPONENTS,
    EYELID_CLOSED_AT,
    IDENTITY_COMPONENTS,
)
from emoca_pipeline.assets.head import (
    NUM_ROWS,
    HeadLayout,
    build_head_mesh,
    column_coordinate,
    column_phi,
    locate_on_grid,
)
from emoca_pipeline.assets.landmarks import (
    MEDIAPIPE_LANDMARK_INDICES,
    contour_row_yaw,
)
from emoca_pipeline.flame.safe_pickle import safe_load_pickle, to_numpy
from emoca_pipeline.io.obj import ObjFormatError, load_obj, save_obj

NUM_IDENTITY, NUM_EXPRESSION = 300, 100


@pytest.fixture(scope="module")
def assets(procedural_assets: Path) -> Path:
    """The session's seed-0 asset folder (tests/conftest.py), with the texture."""
    return procedural_assets


@pytest.fixture(scope="module")
def model(assets: Path) -> dict:
    raw = safe_load_pickle(assets / "generic_model.pkl")
    out = {k: (v if isinstance(v, str) else to_numpy(v)) for k, v in raw.items()}
    out["raw"] = raw
    return out


@pytest.fixture(scope="module")
def embedding(assets: Path) -> dict:
    return np.load(assets / "landmark_embedding.npy", allow_pickle=True, encoding="latin1")[()]


def _points(verts: np.ndarray, faces: np.ndarray, face_idx, bary) -> np.ndarray:
    """Barycentric points: verts (V, 3) or (N, V, 3) -> (L, 3) or (N, L, 3)."""
    face_idx, bary = np.asarray(face_idx).reshape(-1), np.asarray(bary).reshape(-1, 3)
    corners = verts[..., faces[face_idx], :]  # (..., L, 3, 3)
    return np.einsum("lk,...lkd->...ld", bary, corners)


def _landmarks68(model: dict, embedding: dict, verts: np.ndarray | None = None) -> np.ndarray:
    verts = model["v_template"] if verts is None else verts
    return _points(verts, model["f"].astype(np.int64), embedding["full_lmk_faces_idx"],
                   embedding["full_lmk_bary_coords"])


def _posed(model: dict, exp: np.ndarray | None = None, jaw: float = 0.0,
           shape: np.ndarray | None = None) -> np.ndarray:
    """Vertices of the model through smplx's lbs (float64)."""
    betas = np.zeros(NUM_IDENTITY + NUM_EXPRESSION)
    if shape is not None:
        betas[: shape.shape[0]] = shape
    if exp is not None:
        betas[NUM_IDENTITY: NUM_IDENTITY + exp.shape[0]] = exp
    pose = np.zeros(15)
    pose[6] = jaw
    parents = model["kintree_table"][0].astype(np.int64)
    parents[0] = -1
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)  # noqa: E731
    verts, _ = smplx_lbs(
        t(betas)[None], t(pose)[None], t(model["v_template"])[None], t(model["shapedirs"]),
        t(model["posedirs"].reshape(-1, 36).T), t(model["J_regressor"]),
        torch.as_tensor(parents), t(model["weights"]))
    return verts[0].numpy()


def _edges(faces: np.ndarray) -> np.ndarray:
    return np.unique(np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]],
                                             faces[:, [2, 0]]]), axis=1), axis=0)


# ----------------------------------------------------------------------------- files


def _digests(folder: Path, names) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def test_same_seed_gives_identical_files_and_another_seed_differs(assets, tmp_path):
    names = [n for n in ASSET_FILES if n != TEXTURE_FILE]
    again = generate_procedural_assets(tmp_path / "again", seed=0, texture=False)
    assert not (again / TEXTURE_FILE).exists()
    assert _digests(again, names) == _digests(assets, names)
    other = generate_procedural_assets(tmp_path / "other", seed=1, texture=False)
    first, second = _digests(assets, names), _digests(other, names)
    # the seed moves the template (so the dynamic contour) and draws the random components;
    # the MediaPipe embedding and the masks follow the fixed parameterisation
    for name in ("generic_model.pkl", "landmark_embedding.npy", "head_template.obj",
                 "fixed_displacement_256.npy"):
        assert first[name] != second[name], name


@pytest.mark.slow
def test_same_seed_gives_an_identical_texture_file(assets, tmp_path):
    again = generate_procedural_assets(tmp_path / "again", seed=0)
    assert _digests(again, ASSET_FILES) == _digests(assets, ASSET_FILES)


def test_bad_arguments_are_reported(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        generate_procedural_assets(a_file)
    with pytest.raises(ValueError, match="seed"):
        generate_procedural_assets(tmp_path / "x", seed=-1)


def test_model_pickle_has_flame_keys_shapes_and_types(assets, model):
    data = (assets / "generic_model.pkl").read_bytes()
    assert data[:2] == b"\x80\x02"  # protocol 2, like the official Python 2 file
    assert b"chumpy.ch\nCh\n" in data  # v_template and shapedirs are chumpy objects
    raw = model["raw"]
    assert type(raw["v_template"]).__name__ != "ndarray"
    assert type(raw["shapedirs"]).__name__ != "ndarray"
    v, f = model["v_template"], model["f"]
    num_v = v.shape[0]
    assert 4500 < num_v < 5500 and 9000 < f.shape[0] < 11000
    assert v.dtype == np.float64 and f.dtype == np.uint32
    assert model["shapedirs"].shape == (num_v, 3, 400)
    assert model["posedirs"].shape == (num_v, 3, 36)
    assert model["weights"].shape == (num_v, 5)
    np.testing.assert_allclose(model["weights"].sum(1), 1.0, atol=1e-12)
    assert model["J_regressor"].shape == (5, num_v)
    np.testing.assert_allclose(model["J_regressor"].sum(1), 1.0, atol=1e-12)
    assert "csc" in type(raw["J_regressor"]).__name__.lower() or scipy.sparse.isspmatrix_csc(
        raw["J_regressor"])
    np.testing.assert_array_equal(model["kintree_table"],
                                  [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]])
    np.testing.assert_allclose(model["J"], model["J_regressor"] @ v, atol=1e-12)
    assert (model["bs_style"], model["bs_type"]) == ("lbs", "lrotmin")
    # FLAME's frame: metres, y up, looking along +z, origin inside the head
    extent = v.max(0) - v.min(0)
    assert 0.13 < extent[0] < 0.19 and 0.22 < extent[1] < 0.29 and 0.17 < extent[2] < 0.25
    assert np.all(v.min(0) < 0) and np.all(v.max(0) > 0)


def test_landmark_embedding_layout(embedding, model):
    num_f = model["f"].shape[0]
    assert set(embedding) == {"static_lmk_faces_idx", "static_lmk_bary_coords",
                              "dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords",
                              "full_lmk_faces_idx", "full_lmk_bary_coords"}
    dyn_f, dyn_b = embedding["dynamic_lmk_faces_idx"], embedding["dynamic_lmk_bary_coords"]
    assert isinstance(dyn_f, torch.Tensor) and dyn_f.dtype == torch.int64
    assert isinstance(dyn_b, torch.Tensor) and dyn_b.dtype == torch.float32
    assert tuple(dyn_f.shape) == (79, 17) and tuple(dyn_b.shape) == (79, 17, 3)
    shapes = {"static_lmk_faces_idx": (51,), "static_lmk_bary_coords": (51, 3),
              "full_lmk_faces_idx": (1, 68), "full_lmk_bary_coords": (1, 68, 3)}
    for key, shape in shapes.items():
        assert isinstance(embedding[key], np.ndarray) and embedding[key].shape == shape, key
    for faces, bary in ((embedding["static_lmk_faces_idx"], embedding["static_lmk_bary_coords"]),
                        (dyn_f.numpy(), dyn_b.numpy()),
                        (embedding["full_lmk_faces_idx"], embedding["full_lmk_bary_coords"])):
        assert faces.min() >= 0 and faces.max() < num_f
        assert bary.min() >= -1e-9
        np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-6)
    # the full set is the yaw-0 contour followed by the static points
    np.testing.assert_array_equal(embedding["full_lmk_faces_idx"][0, :17], dyn_f[0].numpy())
    np.testing.assert_array_equal(embedding["full_lmk_faces_idx"][0, 17:],
                                  embedding["static_lmk_faces_idx"])


def _mediapipe_connections():
    """mediapipe's face_mesh_connections module, loaded without importing mediapipe."""
    spec = importlib.util.find_spec("mediapipe")
    path = Path(spec.origin).parent / "python" / "solutions" / "face_mesh_connections.py"
    module_spec = importlib.util.spec_from_file_location("_face_mesh_connections", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_mediapipe_embedding_lists_emoca_points(assets, model):
    data = np.load(assets / "mediapipe_landmark_embedding.npz")
    assert set(data.files) == {"lmk_face_idx", "lmk_b_coords", "landmark_indices"}
    assert data["lmk_face_idx"].shape == (105,) and data["lmk_face_idx"].dtype == np.int64
    assert data["lmk_b_coords"].shape == (105, 3) and data["lmk_b_coords"].dtype == np.float64
    assert data["landmark_indices"].dtype == np.int64
    # EMOCA v2 / inferno: sorted vertex sets of the brows, eyes, then the nose line, the lips
    c = _mediapipe_connections()
    vertex_set = lambda edges: sorted({i for edge in edges for i in edge})  # noqa: E731
    expected = (vertex_set(c.FACEMESH_LEFT_EYEBROW) + vertex_set(c.FACEMESH_RIGHT_EYEBROW)
                + vertex_set(c.FACEMESH_LEFT_EYE) + vertex_set(c.FACEMESH_RIGHT_EYE)
                + [168, 6, 197, 195, 5, 4, 129, 98, 97, 2, 326, 327, 358]
                + vertex_set(c.FACEMESH_LIPS))
    np.testing.assert_array_equal(data["landmark_indices"], expected)
    np.testing.assert_array_equal(MEDIAPIPE_LANDMARK_INDICES, expected)
    assert data["lmk_face_idx"].max() < model["f"].shape[0]
    np.testing.assert_allclose(data["lmk_b_coords"].sum(1), 1.0, atol=1e-9)


def test_obj_template_masks_displacement_and_texture_files(assets, model):
    obj = load_obj(assets / "head_template.obj")
    np.testing.assert_allclose(obj.verts, model["v_template"], atol=1e-7)
    np.testing.assert_array_equal(obj.faces, model["f"].astype(np.int64))
    assert obj.uvs is not None and obj.face_uvs is not None
    assert obj.uvs.min() >= 0.0 and obj.uvs.max() <= 1.0
    masks = {}
    for name in ("uv_face_mask.png", "uv_face_eye_mask.png"):
        image = cv2.imread(str(assets / name), cv2.IMREAD_UNCHANGED)
        assert image.shape == (512, 512) and image.dtype == np.uint8, name
        assert set(np.unique(image)) == {0, 255}, name
        masks[name] = image > 0
    face, face_eye = masks["uv_face_mask.png"], masks["uv_face_eye_mask.png"]
    assert np.all(face_eye[face]) and face_eye.sum() > face.sum()
    assert 0.05 < face.mean() < 0.5
    disp = np.load(assets / "fixed_displacement_256.npy")
    assert disp.shape == (256, 256) and disp.dtype == np.float32
    assert 1e-5 < np.abs(disp).max() < 1e-3
    with np.load(assets / TEXTURE_FILE) as tex:
        mean, tex_dir = tex["mean"], tex["tex_dir"]  # each access decompresses: read once
    assert mean.shape == (512, 512, 3) and mean.dtype == np.float32
    assert tex_dir.shape == (512, 512, 3, 200) and tex_dir.dtype == np.float32
    # DECA's FLAMETex recipe gives an RGB image in [0, 1] for codes of a couple of std
    code = np.random.default_rng(0).normal(size=200).astype(np.float32)  # float64: +1.2 GB
    change = (tex_dir.reshape(-1, 200) @ code) / 255.0
    texture = (mean.reshape(1, -1) / 255.0 + change).reshape(1, 512, 512, 3)[..., [2, 1, 0]]
    assert texture.min() > -0.05 and texture.max() < 1.05
    assert np.abs(change).max() > 0.01  # the basis does something


# ----------------------------------------------------------------------------- geometry


def test_surface_is_closed_outward_and_not_degenerate(model):
    verts, faces = model["v_template"], model["f"].astype(np.int64)
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert np.all(counts == 2)
    # consistently oriented: each directed edge appears once
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    assert np.unique(directed, axis=0).shape[0] == directed.shape[0]
    # per connected component (head, two eyeballs), the signed volume is positive
    graph = scipy.sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])),
                                    shape=(len(verts),) * 2)
    count, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    assert count == 3
    volume = np.einsum("ij,ij->i", verts[faces[:, 0]],
                       np.cross(verts[faces[:, 1]], verts[faces[:, 2]])) / 6.0
    per_component = np.bincount(labels[faces[:, 0]], weights=volume)
    assert np.all(per_component > 0)
    assert 0.003 < per_component.max() < 0.006  # a head of 3 to 6 litres
    area = 0.5 * np.linalg.norm(np.cross(verts[faces[:, 1]] - verts[faces[:, 0]],
                                         verts[faces[:, 2]] - verts[faces[:, 0]]), axis=1)
    assert area.min() > 1e-8


def _winding_number(verts: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Generalised winding number of a closed surface at points (Van Oosterom-Strackee)."""
    a, b, c = (verts[faces[:, k]][None] - points[:, None] for k in range(3))
    la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
    det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
    denom = (la * lb * lc + np.einsum("pfi,pfi->pf", a, b) * lc
             + np.einsum("pfi,pfi->pf", b, c) * la + np.einsum("pfi,pfi->pf", c, a) * lb)
    return np.arctan2(det, denom).sum(1) / (2.0 * np.pi)


def test_eyeballs_sit_inside_the_head(model):
    verts, faces = model["v_template"], model["f"].astype(np.int64)
    weights = model["weights"]
    eyeballs = np.flatnonzero(weights[:, 3:].sum(1) > 0.5)
    head_faces = faces[np.all(weights[faces][:, :, 3:].sum(-1) < 0.5, axis=1)]
    inside = _winding_number(verts, head_faces, verts[eyeballs])
    np.testing.assert_allclose(inside, 1.0, atol=1e-6)
    outside = _winding_number(verts, head_faces, np.array([[0.0, 0.0, 0.3], [0.2, 0.0, 0.0]]))
    np.testing.assert_allclose(outside, 0.0, atol=1e-6)


def test_landmarks_are_at_their_anatomical_places(model, embedding):
    lmk = _landmarks68(model, embedding)
    x, y, z = lmk.T
    assert np.argmax(z) == 30  # the nose tip is the most forward
    assert np.argmin(y) == 8  # the chin is the lowest
    assert lmk[36:48, 1].mean() > lmk[27:36, 1].mean() > lmk[48:68, 1].mean()
    assert lmk[17:27, 1].min() > lmk[36:48, 1].max()  # brows above the eyes
    assert x[0] < -0.05 and x[16] > 0.05  # jaw contour from ear to ear
    assert np.all(x[36:42] < 0) and np.all(x[42:48] > 0)  # the right eye is the subject's
    assert x[36] < x[39] < 0 < x[42] < x[45]  # outer/inner corners
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46), (61, 67), (62, 66), (63, 65)):
        assert y[upper] > y[lower], (upper, lower)
    assert 0.09 < z[30] < 0.12  # nose tip near FLAME's


def test_mediapipe_points_agree_with_ibug_points(assets, model, embedding):
    data = np.load(assets / "mediapipe_landmark_embedding.npz")
    faces = model["f"].astype(np.int64)
    mp = _points(model["v_template"], faces, data["lmk_face_idx"], data["lmk_b_coords"])
    where = {int(i): k for k, i in enumerate(data["landmark_indices"])}
    lmk = _landmarks68(model, embedding)
    same_place = {33: 36, 133: 39, 362: 42, 263: 45, 61: 48, 291: 54, 0: 51, 17: 57, 13: 62,
                  14: 66, 2: 33}
    for mp_index, ibug in same_place.items():
        assert np.linalg.norm(mp[where[mp_index]] - lmk[ibug]) < 0.0025, (mp_index, ibug)
    assert mp[where[159], 1] > mp[where[145], 1]  # right upper lid above lower lid
    assert mp[where[386], 1] > mp[where[374], 1]
    assert mp[where[168], 1] > mp[where[4], 1]  # nose bridge top to bottom
    assert mp[where[70], 0] < mp[where[107], 0] < 0 < mp[where[336], 0] < mp[where[300], 0]


def _rot_y(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    face_n = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]],
                      verts[faces[:, 2]] - verts[faces[:, 0]])
    normals = np.zeros_like(verts)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


@pytest.mark.parametrize("row", [0, 30, 69])
def test_dynamic_contour_follows_the_silhouette_of_the_turned_away_side(model, embedding, row):
    verts, faces = model["v_template"], model["f"].astype(np.int64)
    rot = _rot_y(contour_row_yaw(row))
    dyn_faces = embedding["dynamic_lmk_faces_idx"][row].numpy()
    dyn_bary = embedding["dynamic_lmk_bary_coords"][row].numpy()
    contour = _points(verts, faces, dyn_faces, dyn_bary) @ rot.T
    normals = _points(_vertex_normals(verts, faces), faces, dyn_faces, dyn_bary) @ rot.T
    projected = verts[verts[:, 2] > 0.0] @ rot.T  # the face half: no ears, no back
    # which side turns away: the one that moves back (+x when +x gets a negative z); at yaw 0
    # both
    away = -np.sign((rot @ np.array([1.0, 0.0, 0.0]))[2])
    sides = {-1.0: (2, 3, 4), 1.0: (12, 13, 14)}
    if row:
        sides = {away: sides[away]}
    for sign, ks in sides.items():
        for k in ks:  # points on the side of the face: the horizontal extreme at their height
            band = np.abs(projected[:, 1] - contour[k, 1]) < 0.003
            outline = (sign * projected[band, 0]).max()
            assert sign * contour[k, 0] > outline - 0.004, (row, k)
        lower = range(2, 7) if sign < 0 else range(10, 15)
        # on a silhouette the surface turns away from the camera: grazing normals
        assert np.all(normals[list(lower), 2] < 0.6), (row, normals[list(lower), 2])
    if row:  # the turned-away side slid toward the middle of the face, on the template
        at_zero = _points(verts, faces, embedding["dynamic_lmk_faces_idx"][0].numpy(),
                          embedding["dynamic_lmk_bary_coords"][0].numpy())
        at_row = contour @ rot
        sign, ks = next(iter(sides.items()))
        assert np.all(sign * at_row[list(ks), 0] < sign * at_zero[list(ks), 0] - 0.002)


# ----------------------------------------------------------------------------- deformations


def test_eyelid_component_closes_the_eyes(model, embedding):
    k = EXPRESSION_COMPONENTS.index("eyes_close")
    pairs = np.array([(37, 41), (38, 40), (43, 47), (44, 46)])

    def gaps(coeff: float) -> np.ndarray:
        exp = np.zeros(NUM_EXPRESSION)
        exp[k] = coeff
        lmk = _landmarks68(model, embedding, _posed(model, exp))
        return np.linalg.norm(lmk[pairs[:, 0]] - lmk[pairs[:, 1]], axis=1), lmk

    open_gap, neutral = gaps(0.0)
    closed_gap, closed = gaps(EYELID_CLOSED_AT)
    half_gap, _ = gaps(1.0)
    assert np.all(open_gap > 0.004)
    assert np.all(closed_gap < 0.15 * open_gap)
    assert np.all((half_gap > 0.5 * open_gap) & (half_gap < 0.8 * open_gap))
    mouth_and_nose = list(range(27, 36)) + list(range(48, 68))
    assert np.abs(closed[mouth_and_nose] - neutral[mouth_and_nose]).max() < 1e-4


def test_jaw_rotation_opens_the_mouth_and_nothing_above(model, embedding):
    neutral = _landmarks68(model, embedding, _posed(model))
    opened = _landmarks68(model, embedding, _posed(model, jaw=0.3))
    for upper, lower in ((61, 67), (62, 66), (63, 65)):
        before = np.linalg.norm(neutral[upper] - neutral[lower])
        after = np.linalg.norm(opened[upper] - opened[lower])
        assert after > before + 0.008, (upper, lower)
    assert opened[8, 1] < neutral[8, 1] - 0.01  # the chin drops
    still = list(range(17, 48)) + [49, 50, 51, 52, 53, 61, 62, 63]
    assert np.abs(opened[still] - neutral[still]).max() < 0.001


def test_identity_components_are_smooth_orthogonal_and_decaying(model):
    verts, faces = model["v_template"], model["f"].astype(np.int64)
    head = model["weights"][:, 3:].sum(1) < 0.5
    edges = _edges(faces)
    edges = edges[head[edges[:, 0]] & head[edges[:, 1]]]
    length = np.linalg.norm(verts[edges[:, 0]] - verts[edges[:, 1]], axis=1)

    def roughness(fields: np.ndarray) -> np.ndarray:
        """Median |change across an edge| / edge length, over the field's RMS (1/m)."""
        diff = np.linalg.norm(fields[edges[:, 0]] - fields[edges[:, 1]], axis=1)
        rms = np.sqrt((np.linalg.norm(fields[head], axis=1) ** 2).mean(0))
        return np.median(diff / length[:, None], axis=0) / rms

    dirs = model["shapedirs"][:, :, :NUM_IDENTITY]
    rough = roughness(dirs)
    noise = roughness(np.random.default_rng(0).normal(size=(verts.shape[0], 3, 1)))[0]
    assert noise > 150.0  # independent values per vertex
    assert np.all(rough < 90.0)  # length scales of 1.5 cm and more
    assert np.all(rough[: len(IDENTITY_COMPONENTS)] < 20.0)  # the named, global ones
    flat = dirs.reshape(-1, NUM_IDENTITY)
    gram = flat.T @ flat
    off = gram - np.diag(np.diag(gram))
    assert np.abs(off).max() < 1e-9 * np.diag(gram).max()
    peak = np.linalg.norm(dirs, axis=1).max(0)
    assert 0.001 < peak[: len(IDENTITY_COMPONENTS)].min() and peak.max() < 0.006
    assert peak[-100:].max() < peak[: len(IDENTITY_COMPONENTS)].min()
    # a random identity of one std stays a head: no vertex moves more than 2 cm
    coeffs = np.random.default_rng(0).normal(size=NUM_IDENTITY)
    assert np.linalg.norm(dirs @ coeffs, axis=1).max() < 0.02


def test_expression_components_are_localised_on_the_face(model):
    verts = model["v_template"]
    dirs = model["shapedirs"][:, :, NUM_IDENTITY:]
    far = (verts[:, 2] < -0.03) | (verts[:, 1] > 0.085) | (verts[:, 1] < -0.105)
    eyeballs = model["weights"][:, 3:].sum(1) > 0.5
    magnitude = np.linalg.norm(dirs, axis=1)  # (V, 100)
    peak = magnitude.max(0)
    assert np.all(peak > 1e-4) and peak.max() < 0.008
    assert np.all(magnitude[far].max(0) < 0.01 * peak)
    assert np.all(magnitude[eyeballs] == 0.0)


def test_pose_correctives_are_small_and_only_for_neck_and_jaw(model):
    posedirs = model["posedirs"]
    magnitude = np.linalg.norm(posedirs, axis=1).max(0)  # (36,)
    assert 0 < magnitude.max() < 0.01
    assert np.all(magnitude[18:] == 0.0)  # the eye joints have none


# ----------------------------------------------------------------------------- UV layout


def _uv_of(obj, face_idx, bary) -> np.ndarray:
    return _points(obj.uvs, obj.face_uvs, face_idx, bary)


def _sample(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    cols = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
    rows = np.clip(((1.0 - uv[:, 1]) * h).astype(int), 0, h - 1)
    return image[rows, cols]


def test_masks_and_albedo_match_the_obj_uv_layout(assets, model, embedding):
    obj = load_obj(assets / "head_template.obj")
    face = cv2.imread(str(assets / "uv_face_mask.png"), cv2.IMREAD_UNCHANGED)
    face_eye = cv2.imread(str(assets / "uv_face_eye_mask.png"), cv2.IMREAD_UNCHANGED)
    uv = _uv_of(obj, embedding["full_lmk_faces_idx"], embedding["full_lmk_bary_coords"])
    skin_points = [30, 29, 33]  # nose
    assert np.all(_sample(face, uv[skin_points]) == 255)
    eye_centres = 0.5 * (uv[[37, 38, 43, 44]] + uv[[41, 40, 47, 46]])  # between the lids
    assert np.all(_sample(face_eye, eye_centres) == 255)
    assert np.all(_sample(face, eye_centres) == 0)
    back = np.argmin(model["v_template"][:, 2])  # the back of the head
    back_uv = obj.uvs[obj.face_uvs[np.nonzero(obj.faces == back)]]
    assert np.all(_sample(face_eye, back_uv) == 0)
    albedo = np.load(assets / TEXTURE_FILE)["mean"][..., ::-1]  # RGB
    lips = _sample(albedo, 0.5 * (uv[[50, 51, 52, 56, 57, 58]] + uv[[61, 62, 63, 67, 66, 65]]))
    cheeks = _sample(albedo, 0.5 * (uv[[2, 14]] + uv[[31, 35]]))
    redness = lambda rgb: rgb[:, 0] / rgb[:, 1]  # noqa: E731
    assert redness(lips).min() > redness(cheeks).max() + 0.2
    sclera = _sample(albedo, 0.5 * (eye_centres + uv[[36, 39, 42, 45]]))
    assert sclera.mean() > albedo[face > 0].mean() + 30


# ----------------------------------------------------------------------------- OBJ I/O


def test_obj_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    verts = rng.normal(size=(7, 3))
    faces = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 0, 3]])
    uvs = rng.random((9, 2))
    face_uvs = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [8, 0, 4]])
    save_obj(tmp_path / "a.obj", verts, faces, uvs, face_uvs)
    mesh = load_obj(tmp_path / "a.obj")
    np.testing.assert_allclose(mesh.verts, verts, atol=1e-8)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_allclose(mesh.uvs, uvs, atol=1e-8)
    np.testing.assert_array_equal(mesh.face_uvs, face_uvs)
    save_obj(tmp_path / "b.obj", verts, faces)
    plain = load_obj(tmp_path / "b.obj")
    assert plain.uvs is None and plain.face_uvs is None
    np.testing.assert_array_equal(plain.faces, faces)


def test_obj_reader_handles_polygons_relative_indices_and_normals(tmp_path):
    path = tmp_path / "quad.obj"
    path.write_text("# a quad\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 1 1\n"
                    "vt 0 1\nvn 0 0 1\ng part\nf -4/-4/1 -3/-3/1 -2/-2/1 -1/-1/1\n")
    mesh = load_obj(path)
    np.testing.assert_array_equal(mesh.faces, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_array_equal(mesh.face_uvs, [[0, 1, 2], [0, 2, 3]])


def test_obj_reader_errors_name_the_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.obj"):
        load_obj(tmp_path / "missing.obj")
    bad = tmp_path / "bad.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 7\n")
    with pytest.raises(ObjFormatError, match=r"bad.obj:4: index 7"):
        load_obj(bad)
    bad.write_text("v 0 0 zero\n")
    with pytest.raises(ObjFormatError, match=r"bad.obj:1: cannot parse"):
        load_obj(bad)
    with pytest.raises(ValueError, match="face_uvs"):
        save_obj(tmp_path / "c.obj", np.zeros((3, 3)), np.array([[0, 1, 2]]), np.zeros((3, 2)))


def test_template_mesh_is_mirror_symmetric_before_the_random_identity():
    mesh = build_head_mesh()
    mirrored = mesh.verts * np.array([-1.0, 1.0, 1.0])
    distance, _ = scipy.spatial.cKDTree(mesh.verts).query(mirrored)
    assert distance.max() < 1e-9


def test_locate_on_grid_reproduces_grid_coordinates():
    """Barycentric weights of a located point, applied to its face's (row, column)
    coordinates, give back the point's own coordinates, across the seam and the midline."""
    layout = HeadLayout()
    mesh = build_head_mesh(layout)
    rng = np.random.default_rng(7)
    s = np.concatenate([rng.uniform(0.0, NUM_ROWS - 1.0, 200), [0.0, NUM_ROWS - 1.0, 18.5]])
    t = np.concatenate([rng.uniform(0.0, layout.num_cols, 200), [0.0, 79.999, 40.0]])
    faces, bary = locate_on_grid(s, column_phi(t, layout), layout)
    corners = mesh.faces[faces]
    rows = mesh.row_s[corners]
    cols = column_coordinate(mesh.phi[corners], layout)
    # unwrap the seam: columns near 0 next to columns near num_cols
    cols = np.where(cols - cols.min(1, keepdims=True) > layout.num_cols / 2,
                    cols - layout.num_cols, cols)
    assert np.all(bary >= -1e-12) and np.allclose(bary.sum(1), 1.0)
    np.testing.assert_allclose((bary * rows).sum(1), s, atol=1e-9)
    got_t = (bary * cols).sum(1) % layout.num_cols
    diff = (got_t - t + layout.num_cols / 2) % layout.num_cols - layout.num_cols / 2
    np.testing.assert_allclose(diff, 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="row coordinates"):
        locate_on_grid(np.array([-0.5]), np.array([0.0]), layout)


def test_project_flame_layer_reads_the_folder(assets, model, embedding):
    """The files drop into this project's FLAME layer; its dynamic contour rows match ours."""
    flame = pytest.importorskip("emoca_pipeline.flame")
    layer = flame.create(assets, n_shape=NUM_IDENTITY, n_exp=NUM_EXPRESSION,
                         dtype=torch.float64)
    zeros = lambda n: torch.zeros(1, n, dtype=torch.float64)  # noqa: E731
    out = layer(zeros(NUM_IDENTITY), zeros(NUM_EXPRESSION), zeros(6))
    np.testing.assert_allclose(out.vertices[0].numpy(), model["v_template"], atol=1e-10)
    np.testing.assert_allclose(out.landmarks3d[0].numpy(), _landmarks68(model, embedding),
                               atol=1e-10)
    assert out.mediapipe_landmarks is not None and out.mediapipe_landmarks.shape[1] == 105
    # a head turned by +30 degrees about y picks the row built for that rotation
    pose = zeros(6)
    pose[0, 1] = np.radians(30.0)
    turned = layer(zeros(NUM_IDENTITY), zeros(NUM_EXPRESSION), pose)
    row = next(r for r in range(79)
               if np.isclose(contour_row_yaw(r), 30.0))
    expected = _points(turned.vertices[0].numpy(), model["f"].astype(np.int64),
                       embedding["dynamic_lmk_faces_idx"][row].numpy(),
                       embedding["dynamic_lmk_bary_coords"][row].numpy())
    np.testing.assert_allclose(turned.landmarks2d[0, :17].numpy(), expected, atol=1e-6)
