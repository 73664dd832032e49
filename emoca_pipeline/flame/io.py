"""Readers for the official FLAME asset files, validated with errors that name the file.

- ``generic_model.pkl`` (FLAME 2020 / 2023): a chumpy pickle, or a plain-numpy pickle, or an
  ``.npz`` with the same keys;
- ``landmark_embedding.npy``: a pickled dict (static 51 points, dynamic 17-point contour per
  yaw bin, full 68 points), numpy arrays or torch tensors inside;
- ``mediapipe_landmark_embedding.npz``: 105 MediaPipe points (EMOCA v2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emoca_pipeline.flame.safe_pickle import safe_load_npy, safe_load_pickle, to_numpy

__all__ = [
    "FLAME_N_EXP",
    "FLAME_N_SHAPE",
    "FlameAssetError",
    "FlameModelData",
    "LandmarkEmbedding",
    "MediaPipeEmbedding",
    "drop_leading_ones",
    "load_flame_model",
    "load_landmark_embedding",
    "load_mediapipe_embedding",
]

FLAME_N_SHAPE = 300
FLAME_N_EXP = 100

# The official file names of a FLAME asset folder (as DECA and EMOCA read them).
MODEL_FILE = "generic_model.pkl"
LANDMARK_FILE = "landmark_embedding.npy"
MEDIAPIPE_FILE = "mediapipe_landmark_embedding.npz"
TEMPLATE_FILE = "head_template.obj"
FACE_MASK_FILE = "uv_face_mask.png"
FACE_EYE_MASK_FILE = "uv_face_eye_mask.png"
DISPLACEMENT_FILE = "fixed_displacement_256.npy"
TEXTURE_FILE = "FLAME_texture.npz"
BFM_TEXTURE_FILE = "FLAME_albedo_from_BFM.npz"


class FlameAssetError(ValueError):
    """A FLAME asset file is missing a key or holds arrays of the wrong shape."""


@dataclass(frozen=True)
class FlameModelData:
    """Arrays of a FLAME model file.

    Attributes:
        v_template: (V, 3) float64 template vertices.
        faces: (F, 3) int64 triangles.
        shapedirs: (V, 3, 300) identity blend shapes.
        exprdirs: (V, 3, 100) expression blend shapes.
        posedirs: (V, 3, (J - 1) * 9) pose-corrective blend shapes.
        j_regressor: (J, V) dense joint regressor.
        lbs_weights: (V, J) skinning weights.
        parents: (J,) int64 parent of each joint, -1 for the root.
        source: the file the arrays came from.
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    lbs_weights: np.ndarray
    parents: np.ndarray
    source: str = ""


@dataclass(frozen=True)
class LandmarkEmbedding:
    """Landmarks as (face index, barycentric) pairs on the FLAME surface.

    Attributes:
        static_faces: (51,) faces of the 68-point scheme's points 17..67.
        static_bary: (51, 3).
        dynamic_faces: (79, 17) jaw-contour faces per yaw bin (0..39 deg, then -1..-39 deg).
        dynamic_bary: (79, 17, 3).
        full_faces: (68,) faces of all 68 points (for 3D landmarks).
        full_bary: (68, 3).
    """

    static_faces: np.ndarray
    static_bary: np.ndarray
    dynamic_faces: np.ndarray
    dynamic_bary: np.ndarray
    full_faces: np.ndarray
    full_bary: np.ndarray


@dataclass(frozen=True)
class MediaPipeEmbedding:
    """EMOCA v2's 105 MediaPipe points on the FLAME surface.

    Attributes:
        faces: (105,) face indices.
        bary: (105, 3) barycentric weights.
        landmark_indices: (105,) the MediaPipe FaceMesh vertex each point corresponds to.
    """

    faces: np.ndarray
    bary: np.ndarray
    landmark_indices: np.ndarray


def drop_leading_ones(array: Any, ndim: int) -> Any:
    """``array`` (numpy or torch) with leading axes of length 1 dropped down to ``ndim`` axes.

    DECA's ``landmark_embedding.npy`` stores the full 68-point set as (1, 68) and
    (1, 68, 3), and the original FLAME layer registers them so (the released checkpoints
    hold those shapes); this code keeps (68,) and (68, 3). Any other extra axis stays, for
    the caller's shape check to report.
    """
    while array.ndim > ndim and array.shape[0] == 1:
        array = array[0]
    return array


def _load_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FLAME model file not found")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (ValueError, OSError, EOFError) as err:
            raise FlameAssetError(f"{path}: not a readable .npz file: {err}") from err
    data = safe_load_pickle(path)
    if not isinstance(data, dict):
        raise FlameAssetError(f"{path}: expected a pickled dict, found {type(data).__name__}")
    return data


def _array(data: dict[str, Any], key: str, path: Path, dtype: Any) -> np.ndarray:
    if key not in data:
        raise FlameAssetError(f"{path}: missing key '{key}'")
    try:
        return to_numpy(data[key], dtype)
    except (ValueError, TypeError) as err:
        raise FlameAssetError(f"{path}: key '{key}' is not an array: {err}") from err


def _check_shape(array: np.ndarray, expected: tuple[int | None, ...], what: str) -> None:
    ok = array.ndim == len(expected) and all(
        e is None or e == s for s, e in zip(array.shape, expected, strict=True)
    )
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise FlameAssetError(f"{what} has shape {tuple(array.shape)}, expected {want}")


def load_flame_model(path: str | os.PathLike) -> FlameModelData:
    """Read ``generic_model.pkl`` (chumpy or plain pickle) or an ``.npz`` with its keys.

    Raises:
        FileNotFoundError: no such file.
        FlameAssetError: a key is missing or an array has the wrong shape.
        pickle.UnpicklingError: truncated or corrupt file, or a global outside the allowlist.
    """
    path = Path(path)
    data = _load_mapping(path)
    v_template = _array(data, "v_template", path, np.float64)
    _check_shape(v_template, (None, 3), f"{path}: 'v_template'")
    num_verts = v_template.shape[0]
    faces = _array(data, "f", path, np.int64)
    _check_shape(faces, (None, 3), f"{path}: 'f'")
    if faces.size and (faces.min() < 0 or faces.max() >= num_verts):
        raise FlameAssetError(f"{path}: 'f' indexes vertices outside 0..{num_verts - 1}")
    shapedirs = _array(data, "shapedirs", path, np.float64)
    _check_shape(shapedirs, (num_verts, 3, FLAME_N_SHAPE + FLAME_N_EXP), f"{path}: 'shapedirs'")
    kintree = _array(data, "kintree_table", path, np.int64)
    _check_shape(kintree, (2, None), f"{path}: 'kintree_table'")
    num_joints = kintree.shape[1]
    parents = kintree[0].copy()
    parents[0] = -1  # the root's parent is stored as uint32(-1)
    if np.any(parents[1:] >= np.arange(1, num_joints)) or np.any(parents[1:] < 0):
        raise FlameAssetError(f"{path}: 'kintree_table' parents must precede their children")
    j_regressor = _array(data, "J_regressor", path, np.float64)
    _check_shape(j_regressor, (num_joints, num_verts), f"{path}: 'J_regressor'")
    weights = _array(data, "weights", path, np.float64)
    _check_shape(weights, (num_verts, num_joints), f"{path}: 'weights'")
    posedirs = _array(data, "posedirs", path, np.float64)
    _check_shape(posedirs, (num_verts, 3, (num_joints - 1) * 9), f"{path}: 'posedirs'")
    arrays = {"v_template": v_template, "shapedirs": shapedirs, "posedirs": posedirs,
              "J_regressor": j_regressor, "weights": weights}
    for key, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise FlameAssetError(f"{path}: '{key}' holds NaN or infinite values")
    return FlameModelData(
        v_template=v_template,
        faces=faces,
        shapedirs=shapedirs[:, :, :FLAME_N_SHAPE],
        exprdirs=shapedirs[:, :, FLAME_N_SHAPE:],
        posedirs=posedirs,
        j_regressor=j_regressor,
        lbs_weights=weights,
        parents=parents,
        source=str(path),
    )


def load_landmark_embedding(path: str | os.PathLike, num_faces: int) -> LandmarkEmbedding:
    """Read ``landmark_embedding.npy`` (numpy arrays or torch tensors inside the dict).

    Each array may carry a leading axis of length 1 (DECA's file stores the full 68-point
    set as (1, 68) and (1, 68, 3)).

    Args:
        path: the file.
        num_faces: F of the model, to check the face indices.
    """
    path = Path(path)
    data = safe_load_npy(path)
    if not isinstance(data, dict):
        raise FlameAssetError(f"{path}: expected a pickled dict, found {type(data).__name__}")
    def get(key: str, dtype: Any, ndim: int) -> np.ndarray:
        return drop_leading_ones(_array(data, key, path, dtype), ndim)

    emb = LandmarkEmbedding(
        static_faces=get("static_lmk_faces_idx", np.int64, 1),
        static_bary=get("static_lmk_bary_coords", np.float64, 2),
        dynamic_faces=get("dynamic_lmk_faces_idx", np.int64, 2),
        dynamic_bary=get("dynamic_lmk_bary_coords", np.float64, 3),
        full_faces=get("full_lmk_faces_idx", np.int64, 1),
        full_bary=get("full_lmk_bary_coords", np.float64, 2),
    )
    _check_shape(emb.static_faces, (51,), f"{path}: 'static_lmk_faces_idx'")
    _check_shape(emb.static_bary, (51, 3), f"{path}: 'static_lmk_bary_coords'")
    _check_shape(emb.dynamic_faces, (79, 17), f"{path}: 'dynamic_lmk_faces_idx'")
    _check_shape(emb.dynamic_bary, (79, 17, 3), f"{path}: 'dynamic_lmk_bary_coords'")
    _check_shape(emb.full_faces, (68,), f"{path}: 'full_lmk_faces_idx'")
    _check_shape(emb.full_bary, (68, 3), f"{path}: 'full_lmk_bary_coords'")
    for name, idx in (("static", emb.static_faces), ("dynamic", emb.dynamic_faces),
                      ("full", emb.full_faces)):
        if idx.min() < 0 or idx.max() >= num_faces:
            raise FlameAssetError(f"{path}: {name} landmark faces outside 0..{num_faces - 1}")
    return emb


def load_mediapipe_embedding(path: str | os.PathLike, num_faces: int) -> MediaPipeEmbedding:
    """Read ``mediapipe_landmark_embedding.npz`` (lmk_face_idx, lmk_b_coords, landmark_indices).

    A leading axis of length 1 is accepted on each array; without ``landmark_indices`` the
    MediaPipe mesh indices are -1.
    """
    path = Path(path)
    data = _load_mapping(path)
    faces = drop_leading_ones(_array(data, "lmk_face_idx", path, np.int64), 1)
    _check_shape(faces, (None,), f"{path}: 'lmk_face_idx'")
    bary = drop_leading_ones(_array(data, "lmk_b_coords", path, np.float64), 2)
    _check_shape(bary, (faces.shape[0], 3), f"{path}: 'lmk_b_coords'")
    if "landmark_indices" in data:
        indices = drop_leading_ones(_array(data, "landmark_indices", path, np.int64), 1)
        _check_shape(indices, (faces.shape[0],), f"{path}: 'landmark_indices'")
    else:
        indices = np.full(faces.shape[0], -1, dtype=np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= num_faces):
        raise FlameAssetError(f"{path}: 'lmk_face_idx' outside 0..{num_faces - 1}")
    return MediaPipeEmbedding(faces=faces, bary=bary, landmark_indices=indices)
