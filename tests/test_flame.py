"""The FLAME layer: against smplx, the safe loader, errors, and the dynamic contour."""

from __future__ import annotations

import math
import pickle
import pickletools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emoca_pipeline import flame
from emoca_pipeline.flame.lbs import vertices2landmarks
from emoca_pipeline.flame.safe_pickle import safe_load_npy, safe_load_pickle, to_numpy


def _plain_model_dict(assets: Path) -> dict:
    """The model file's dict with every chumpy / sparse value made a plain numpy array."""
    data = safe_load_pickle(assets / "generic_model.pkl")
    return {k: v if isinstance(v, str) else to_numpy(v) for k, v in data.items()}


def _random_inputs(batch: int, n_shape: int, n_exp: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "shape": torch.randn(batch, n_shape, generator=gen, dtype=torch.float64),
        "expression": torch.randn(batch, n_exp, generator=gen, dtype=torch.float64),
        "pose": torch.randn(batch, 6, generator=gen, dtype=torch.float64) * 0.4,
        "neck_pose": torch.randn(batch, 3, generator=gen, dtype=torch.float64) * 0.2,
        "eye_pose": torch.randn(batch, 6, generator=gen, dtype=torch.float64) * 0.2,
    }


@pytest.fixture(scope="module")
def smplx_folder(procedural_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The procedural model in smplx's FLAME layout (plain pickles, its own file names)."""
    folder = tmp_path_factory.mktemp("smplx")
    (folder / "flame").mkdir()
    with open(folder / "flame" / "FLAME_NEUTRAL.pkl", "wb") as f:
        pickle.dump(_plain_model_dict(procedural_assets), f, protocol=2)
    emb = safe_load_npy(procedural_assets / "landmark_embedding.npy")
    with open(folder / "flame" / "flame_static_embedding.pkl", "wb") as f:
        pickle.dump({"lmk_face_idx": to_numpy(emb["static_lmk_faces_idx"]),
                     "lmk_b_coords": to_numpy(emb["static_lmk_bary_coords"])}, f)
    # smplx negates DECA's yaw, so its table holds DECA's row for yaw y at its row for -y.
    order = np.r_[0, 40:79, 1:40]
    np.save(folder / "flame" / "flame_dynamic_embedding.npy",
            {"lmk_face_idx": to_numpy(emb["dynamic_lmk_faces_idx"])[order],
             "lmk_b_coords": to_numpy(emb["dynamic_lmk_bary_coords"])[order]}, allow_pickle=True)
    return folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_vertices_match_smplx(procedural_assets: Path, smplx_folder: Path, dtype) -> None:
    smplx = pytest.importorskip("smplx")
    batch = 8
    ours = flame.create(procedural_assets, n_shape=300, n_exp=100, dtype=dtype)
    ref = smplx.create(str(smplx_folder), model_type="flame", num_betas=300,
                       num_expression_coeffs=100, use_face_contour=True,
                       dtype=torch.float64, batch_size=batch)
    x = _random_inputs(batch, 300, 100)
    out = ours(**{k: v.to(dtype) for k, v in x.items()})
    expected = ref(betas=x["shape"], expression=x["expression"],
                   global_orient=x["pose"][:, :3], jaw_pose=x["pose"][:, 3:],
                   neck_pose=x["neck_pose"], leye_pose=x["eye_pose"][:, :3],
                   reye_pose=x["eye_pose"][:, 3:])
    assert out.vertices.dtype == dtype
    torch.testing.assert_close(out.vertices.double(), expected.vertices, atol=1e-5, rtol=0)
    # Landmarks too: smplx puts the 51 static points first, then the 17 contour points.
    # Its contour follows the global rotation only, DECA's also the neck: compare at neck 0.
    x["neck_pose"].zero_()
    out = ours(**{k: v.to(dtype) for k, v in x.items()})
    expected = ref(betas=x["shape"], expression=x["expression"],
                   global_orient=x["pose"][:, :3], jaw_pose=x["pose"][:, 3:],
                   neck_pose=x["neck_pose"], leye_pose=x["eye_pose"][:, :3],
                   reye_pose=x["eye_pose"][:, 3:])
    lmk = expected.joints[:, ours.num_joints:]
    torch.testing.assert_close(out.landmarks2d[:, 17:].double(), lmk[:, :51], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.landmarks2d[:, :17].double(), lmk[:, 51:], atol=1e-5, rtol=0)


def test_reduced_components_are_the_leading_ones(procedural_assets: Path) -> None:
    full = flame.create(procedural_assets, n_shape=300, n_exp=100, dtype=torch.float64)
    small = flame.create(procedural_assets, n_shape=20, n_exp=10, dtype=torch.float64)
    x = _random_inputs(3, 20, 10, seed=1)
    padded = dict(x, shape=torch.nn.functional.pad(x["shape"], [0, 280]),
                  expression=torch.nn.functional.pad(x["expression"], [0, 90]))
    torch.testing.assert_close(small(**x).vertices, full(**padded).vertices)


def test_official_file_is_chumpy_style_and_loads_like_a_plain_pickle(
    procedural_assets: Path, tmp_path: Path
) -> None:
    raw = (procedural_assets / "generic_model.pkl").read_bytes()
    globals_named = {arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"}
    assert "chumpy.ch Ch" in globals_named
    with pytest.raises(ModuleNotFoundError):
        import chumpy  # noqa: F401  (the loader must not need it)

    plain = _plain_model_dict(procedural_assets)
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump(plain, f, protocol=4)
    np.savez(tmp_path / "model.npz", **{k: v for k, v in plain.items() if k != "bs_style"
                                        and k != "bs_type"})
    a = flame.load_flame_model(procedural_assets / "generic_model.pkl")
    for other in (tmp_path / "plain.pkl", tmp_path / "model.npz"):
        b = flame.load_flame_model(other)
        for field in ("v_template", "faces", "shapedirs", "exprdirs", "posedirs",
                      "j_regressor", "lbs_weights", "parents"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def test_landmark_embedding_with_numpy_arrays_loads_the_same(
    procedural_assets: Path, tmp_path: Path
) -> None:
    emb = safe_load_npy(procedural_assets / "landmark_embedding.npy")
    assert isinstance(emb["dynamic_lmk_faces_idx"], torch.Tensor)
    np.save(tmp_path / "lmk.npy", {k: to_numpy(v) for k, v in emb.items()}, allow_pickle=True)
    num_faces = flame.load_flame_model(procedural_assets / "generic_model.pkl").faces.shape[0]
    a = flame.load_landmark_embedding(procedural_assets / "landmark_embedding.npy", num_faces)
    b = flame.load_landmark_embedding(tmp_path / "lmk.npy", num_faces)
    for field in a.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_landmark_arrays_load_with_or_without_a_leading_axis(
    procedural_assets: Path, tmp_path: Path
) -> None:
    # DECA's file stores the full 68-point set as (1, 68) / (1, 68, 3); either shape loads the
    # same, any other extra axis is an error naming the key.
    emb = {k: to_numpy(v) for k, v in
           safe_load_npy(procedural_assets / "landmark_embedding.npy").items()}
    assert emb["full_lmk_faces_idx"].shape == (1, 68)
    num_faces = flame.load_flame_model(procedural_assets / "generic_model.pkl").faces.shape[0]
    variants = {"flat": {k: v[0] if k.startswith("full") else v for k, v in emb.items()},
                "batched": {k: v[None] if k.startswith("static") else v for k, v in emb.items()},
                "split": dict(emb, full_lmk_faces_idx=emb["full_lmk_faces_idx"].reshape(2, 34))}
    loaded = {}
    for name, arrays in variants.items():
        np.save(tmp_path / f"{name}.npy", arrays, allow_pickle=True)
        if name == "split":
            with pytest.raises(flame.FlameAssetError, match="'full_lmk_faces_idx' has shape"):
                flame.load_landmark_embedding(tmp_path / f"{name}.npy", num_faces)
        else:
            loaded[name] = flame.load_landmark_embedding(tmp_path / f"{name}.npy", num_faces)
    reference = flame.load_landmark_embedding(procedural_assets / "landmark_embedding.npy",
                                              num_faces)
    assert reference.full_faces.shape == (68,) and reference.full_bary.shape == (68, 3)
    for emb_loaded in loaded.values():
        for field in reference.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(emb_loaded, field), getattr(reference, field))


class _Exploit:
    def __init__(self, func, arg) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "in_npy"])
def test_malicious_pickle_is_refused_without_side_effect(tmp_path: Path, kind: str) -> None:
    import os

    marker = tmp_path / "pwned"
    if kind == "os.system":
        payload = {"v_template": _Exploit(os.system, f"touch '{marker}'")}
    else:
        payload = {"v_template": _Exploit(eval, f"open({str(marker)!r}, 'w').close()")}
    path = tmp_path / ("evil.npy" if kind == "in_npy" else "generic_model.pkl")
    if kind == "in_npy":
        np.save(path, payload, allow_pickle=True)
        with pytest.raises(flame.UnsafePickleError, match="evil.npy.*builtins.eval"):
            flame.load_landmark_embedding(path, num_faces=10)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
        expected = "posix.system" if kind == "os.system" else "builtins.eval"
        with pytest.raises(flame.UnsafePickleError, match=f"generic_model.pkl.*{expected}"):
            flame.load_flame_model(path)
    assert not marker.exists()


def test_truncated_file_names_the_file(procedural_assets: Path, tmp_path: Path) -> None:
    raw = (procedural_assets / "generic_model.pkl").read_bytes()
    path = tmp_path / "generic_model.pkl"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(pickle.UnpicklingError, match="generic_model.pkl.*truncated"):
        flame.load_flame_model(path)
    lmk = tmp_path / "landmark_embedding.npy"
    lmk.write_bytes((procedural_assets / "landmark_embedding.npy").read_bytes()[:300])
    with pytest.raises(pickle.UnpicklingError, match="landmark_embedding.npy"):
        flame.load_landmark_embedding(lmk, num_faces=10)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("posedirs"), "missing key 'posedirs'"),
        (lambda d: d.update(shapedirs=d["shapedirs"][:, :, :350]), "'shapedirs' has shape"),
        (lambda d: d.update(weights=d["weights"][:, :4]), "'weights' has shape"),
        (lambda d: d.update(v_template=d["v_template"][:, :2]), "'v_template' has shape"),
        (lambda d: d["v_template"].__setitem__((0, 0), np.nan), "'v_template' holds NaN"),
    ],
)
def test_bad_model_file_errors_name_file_and_key(
    procedural_assets: Path, tmp_path: Path, change, message: str
) -> None:
    data = _plain_model_dict(procedural_assets)
    change(data)
    path = tmp_path / "broken_model.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(flame.FlameAssetError, match=f"broken_model.pkl.*{message}"):
        flame.load_flame_model(path)


def test_missing_files_and_bad_arguments(procedural_assets: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        flame.create(tmp_path / "no_such_dir")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(procedural_assets / "generic_model.pkl", partial)
    with pytest.raises(FileNotFoundError, match="landmark_embedding.npy"):
        flame.create(partial)
    with pytest.raises(ValueError, match="n_shape"):
        flame.create(procedural_assets, n_shape=301)
    with pytest.raises(ValueError, match="n_exp"):
        flame.create(procedural_assets, n_exp=101)
    layer = flame.create(procedural_assets, n_shape=10, n_exp=5)
    good = {"shape": torch.zeros(2, 10), "expression": torch.zeros(2, 5), "pose": torch.zeros(2, 6)}
    layer(**good)
    nan_expression = torch.zeros(2, 5)
    nan_expression[1, 3] = float("nan")
    with pytest.raises(ValueError, match="expression: contains NaN"):
        layer(**dict(good, expression=nan_expression))
    with pytest.raises(ValueError, match=r"pose: expected shape \(N, 6\)"):
        layer(**dict(good, pose=torch.zeros(2, 3)))
    with pytest.raises(ValueError, match="eye_pose: batch size 3"):
        layer(**good, eye_pose=torch.zeros(3, 6))


@pytest.mark.parametrize(
    ("yaw_deg", "row"),
    [(0.0, 0), (0.49, 0), (0.51, 1), (9.6, 10), (38.6, 39), (39.4, 39), (60.0, 39),
     (-0.49, 0), (-0.51, 40), (-1.0, 40), (-10.4, 49), (-38.6, 78), (-39.4, 78), (-70.0, 78)],
)
def test_dynamic_contour_rows_at_thresholds(yaw_deg: float, row: int) -> None:
    rows = flame.dynamic_contour_rows(torch.tensor([math.radians(yaw_deg)], dtype=torch.float64))
    assert rows.tolist() == [row]


def test_forward_picks_the_contour_of_the_head_yaw(procedural_assets: Path) -> None:
    layer = flame.create(procedural_assets, dtype=torch.float64)
    batch = 4
    # Global rotations about y; DECA's yaw is the same angle.
    angles = torch.tensor([9.6, 9.4, -0.6, -45.0], dtype=torch.float64)
    pose = torch.zeros(batch, 6, dtype=torch.float64)
    pose[:, 1] = torch.deg2rad(angles)
    out = layer(torch.zeros(batch, 100, dtype=torch.float64),
                torch.zeros(batch, 50, dtype=torch.float64), pose)
    for i, row in enumerate([10, 9, 40, 78]):
        expected = vertices2landmarks(
            out.vertices[i:i + 1], layer.faces, layer.dynamic_lmk_faces[row][None],
            layer.dynamic_lmk_bary[row][None])
        torch.testing.assert_close(out.landmarks2d[i:i + 1, :17], expected)
    # Turning the neck instead of the whole head picks the same contour row.
    neck = torch.zeros(1, 3, dtype=torch.float64)
    neck[0, 1] = math.radians(9.6)
    zeros = torch.zeros(1, 6, dtype=torch.float64)
    by_neck = layer(torch.zeros(1, 100, dtype=torch.float64),
                    torch.zeros(1, 50, dtype=torch.float64), zeros, neck_pose=neck)
    rows = flame.dynamic_contour_rows(layer.head_yaw(torch.cat(
        [zeros[:, :3], neck, torch.zeros(1, 9, dtype=torch.float64)], dim=1)))
    assert rows.tolist() == [10]
    assert by_neck.landmarks2d.shape == (1, 68, 3)


def test_outputs_shapes_dtypes_and_gradients(procedural_assets: Path) -> None:
    layer = flame.create(procedural_assets, n_shape=100, n_exp=50)
    x = {k: v.float().requires_grad_() for k, v in _random_inputs(2, 100, 50).items()}
    out = layer(**x)
    num_verts = layer.num_vertices
    assert out.vertices.shape == (2, num_verts, 3)
    assert out.landmarks2d.shape == (2, 68, 3) and out.landmarks3d.shape == (2, 68, 3)
    assert out.mediapipe_landmarks.shape == (2, 105, 3)
    (out.vertices.square().sum() + out.landmarks2d.sum()).backward()
    for name, value in x.items():
        assert value.grad is not None and torch.isfinite(value.grad).all(), name
        assert value.grad.abs().sum() > 0, name


def test_gradcheck_float64(procedural_assets: Path) -> None:
    layer = flame.create(procedural_assets, n_shape=4, n_exp=4, dtype=torch.float64)
    x = _random_inputs(1, 4, 4, seed=3)
    inputs = tuple(v.requires_grad_() for v in x.values())

    def landmarks(*args):
        return layer(*args).landmarks3d

    assert torch.autograd.gradcheck(landmarks, inputs, eps=1e-6, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(procedural_assets: Path) -> None:
    cpu = flame.create(procedural_assets, dtype=torch.float64)
    gpu = flame.create(procedural_assets, dtype=torch.float64, device="cuda")
    x = _random_inputs(4, 100, 50)
    torch.testing.assert_close(
        gpu(**{k: v.cuda() for k, v in x.items()}).vertices.cpu(), cpu(**x).vertices)
