"""Write a procedural FLAME-format asset folder: a plausible head in the official file formats.

The licensed FLAME files cannot be shipped, so every test and the demo use this generated
model. Each file has the official name, container format, keys, shapes and dtypes, so the
real files drop in by path:

==================================  ===========================================================
``generic_model.pkl``               protocol-2 pickle of a dict; ``v_template`` and
                                    ``shapedirs`` as chumpy ``Ch`` objects, ``J_regressor`` a
                                    scipy CSC matrix; 300 identity + 100 expression components,
                                    5 joints (root, neck, jaw, left eye, right eye).
``landmark_embedding.npy``          a pickled dict: 51 static points, the 17-point jaw contour
                                    for 79 yaw rows (torch tensors, as in the released file),
                                    the full 68 points.
``mediapipe_landmark_embedding.npz``  EMOCA v2's 105 MediaPipe points.
``head_template.obj``               the template with UVs (``f v/vt``).
``uv_face_mask.png``,               512x512 8-bit masks in the OBJ's UV layout.
``uv_face_eye_mask.png``
``fixed_displacement_256.npy``      (256, 256) float32 fixed detail displacement.
``FLAME_texture.npz``               ``mean`` (512, 512, 3) and ``tex_dir`` (512, 512, 3, 200)
                                    float32 in 0..255, BGR, as DECA's ``FLAMETex`` reads them.
==================================  ===========================================================

What the model is (see the modules of :mod:`emoca_pipeline.assets`): an analytic head
(no scanned data), about 5,000 vertices and 10,000 faces, closed and outward-oriented, with
eyeballs; named identity and expression components first, then smooth random ones; a jaw
that opens the mouth; landmarks at their anatomical places. The eyelid expression component
``eyes_close`` (index 9) closes the eyes at coefficient 3.

Output is deterministic for a seed: the same seed gives byte-identical files (all random
draws come from the seed; no time stamps in the zip, pickle or PNG files). The seed changes
the template (a random identity of 0.6 standard deviations), the random components, the
skin-tone noise and the texture basis; the named components do not change.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from emoca_pipeline.assets.blendshapes import expression_basis, identity_basis
from emoca_pipeline.assets.head import HeadMesh, build_head_mesh
from emoca_pipeline.assets.landmarks import MEDIAPIPE_LANDMARK_INDICES, build_landmarks
from emoca_pipeline.assets.rig import KINTREE_TABLE, build_rig
from emoca_pipeline.assets.uv_maps import AlbedoBasis, build_uv_maps
from emoca_pipeline.flame.io import (
    DISPLACEMENT_FILE,
    FACE_EYE_MASK_FILE,
    FACE_MASK_FILE,
    LANDMARK_FILE,
    MEDIAPIPE_FILE,
    MODEL_FILE,
    TEMPLATE_FILE,
    TEXTURE_FILE,
)
from emoca_pipeline.io.atomic import atomic_output
from emoca_pipeline.io.obj import save_obj

__all__ = ["ASSET_FILES", "TEXTURE_FILE", "generate_procedural_assets"]

ASSET_FILES = (MODEL_FILE, LANDMARK_FILE, MEDIAPIPE_FILE, TEMPLATE_FILE, FACE_MASK_FILE,
               FACE_EYE_MASK_FILE, DISPLACEMENT_FILE, TEXTURE_FILE)

TEMPLATE_IDENTITY_STD = 0.6  # the seed's template is a random identity of this spread
TEMPLATE_IDENTITY_COMPONENTS = 30
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed zip time stamps: byte-identical reruns
_BAND_ROWS = 16  # image rows of the texture basis written at a time (20 MB)


# ----------------------------------------------------------------------------- writers


def _write_npz(path: Path, arrays: dict[str, np.ndarray | AlbedoBasis],
               compresslevel: int | None) -> None:
    """An ``.npz`` like ``np.savez(_compressed)``'s, without time stamps; written atomically.

    ``compresslevel`` None stores the members uncompressed. An :class:`AlbedoBasis` member is
    streamed band by band (never whole in memory).
    """
    compression = zipfile.ZIP_STORED if compresslevel is None else zipfile.ZIP_DEFLATED
    with atomic_output(path) as tmp, zipfile.ZipFile(tmp, "w", compression, allowZip64=True) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = compression
            info.external_attr = 0o644 << 16
            # ZipFile.open(ZipInfo) takes the level from the ZipInfo (no public setter)
            info._compresslevel = compresslevel  # type: ignore[attr-defined]
            with zf.open(info, "w", force_zip64=True) as f:
                if isinstance(array, AlbedoBasis):
                    header = {"descr": np.lib.format.dtype_to_descr(array.dtype),
                              "fortran_order": False, "shape": array.shape}
                    np.lib.format.write_array_header_1_0(f, header)
                    for start in range(0, array.shape[0], _BAND_ROWS):
                        stop = min(start + _BAND_ROWS, array.shape[0])
                        f.write(array.rows(start, stop).tobytes())
                else:
                    np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


class _StablePickler(pickle.Pickler):
    """Pickles torch tensors as ``pickle``/``np.save`` do, but reproducibly.

    A storage pickles itself as a legacy ``torch.save`` blob whose storage key is the
    storage's memory address; the key only has to be consistent within the blob, so it is
    replaced by ``"0"``.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.storage.TypedStorage):
            rebuild, (blob,) = obj.__reduce__()
            key = str(obj._untyped_storage._cdata).encode()
            old = b"X" + struct.pack("<I", len(key)) + key  # BINUNICODE of the key
            if blob.count(old) != 2:
                raise RuntimeError("unexpected layout of torch's legacy storage pickle")
            return rebuild, (blob.replace(old, b"X" + struct.pack("<I", 1) + b"0"),)
        return NotImplemented


def _write_pickled_npy(path: Path, value: Any) -> None:
    """``np.save(path, value, allow_pickle=True)`` with reproducible bytes, atomically."""
    array = np.empty((), dtype=object)
    array[()] = value
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
    _StablePickler(buffer, protocol=3).dump(array)
    with atomic_output(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array(f, array, allow_pickle=False)


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_output(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"{path}: cv2 could not write the PNG")


def _write_model(path: Path, model: dict[str, Any]) -> None:
    try:
        from emoca_pipeline.flame.safe_pickle import dump_chumpy_style_pickle
    except ImportError:  # the FLAME package is optional for the generator
        with atomic_output(path) as tmp, open(tmp, "wb") as f:
            pickle.dump(model, f, protocol=2)
        return
    dump_chumpy_style_pickle(model, path, chumpy_keys=("v_template", "shapedirs"))


# ----------------------------------------------------------------------------- generation


def _template(mesh: HeadMesh, identity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    coeffs = np.zeros(identity.shape[-1])
    coeffs[:TEMPLATE_IDENTITY_COMPONENTS] = rng.normal(
        scale=TEMPLATE_IDENTITY_STD, size=TEMPLATE_IDENTITY_COMPONENTS)
    return mesh.verts + identity @ coeffs


def generate_procedural_assets(
    out_dir: str | os.PathLike, seed: int = 0, *, texture: bool = True
) -> Path:
    """Write the procedural FLAME asset folder (see the module docstring).

    Args:
        out_dir: the folder; created if missing. Existing asset files are replaced, each one
            atomically; other files are left alone.
        seed: the random seed; the same seed gives byte-identical files.
        texture: also write ``FLAME_texture.npz`` (about 10 MB, 200 components at 512x512,
            the slowest file); the model, landmarks, masks and OBJ do not depend on it.

    Returns:
        ``out_dir`` as a Path.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be a non-negative integer, got {seed!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    streams = np.random.SeedSequence(int(seed)).spawn(5)
    rng_identity, rng_expression, rng_template, rng_albedo, rng_displacement = (
        np.random.default_rng(s) for s in streams)

    mesh = build_head_mesh()
    rig = build_rig(mesh)
    identity = identity_basis(mesh, rig, rng_identity)
    expression = expression_basis(mesh, rig, rng_expression)
    v_template = _template(mesh, identity, rng_template)
    posed_mesh = mesh._replace(verts=v_template)
    landmarks = build_landmarks(posed_mesh)
    joints = rig.j_regressor @ v_template

    model = {
        "f": mesh.faces.astype(np.uint32),
        "J_regressor": rig.j_regressor,
        "kintree_table": KINTREE_TABLE.copy(),
        "J": joints,
        "bs_style": "lbs",
        "weights": rig.weights,
        "posedirs": rig.posedirs,
        "v_template": v_template,
        "shapedirs": np.concatenate([identity, expression], axis=2),
        "bs_type": "lrotmin",
    }
    _write_model(out / MODEL_FILE, model)
    _write_pickled_npy(out / LANDMARK_FILE, {
        "static_lmk_faces_idx": landmarks.static_faces.astype(np.int64),
        "static_lmk_bary_coords": landmarks.static_bary.astype(np.float64),
        "dynamic_lmk_faces_idx": torch.from_numpy(landmarks.dynamic_faces.astype(np.int64)),
        "dynamic_lmk_bary_coords": torch.from_numpy(landmarks.dynamic_bary.astype(np.float32)),
        "full_lmk_faces_idx": landmarks.full_faces.astype(np.int64)[None],
        "full_lmk_bary_coords": landmarks.full_bary.astype(np.float64)[None],
    })
    _write_npz(out / MEDIAPIPE_FILE, {
        "lmk_face_idx": landmarks.mediapipe_faces.astype(np.int64),
        "lmk_b_coords": landmarks.mediapipe_bary.astype(np.float64),
        "landmark_indices": MEDIAPIPE_LANDMARK_INDICES.copy(),
    }, compresslevel=None)
    save_obj(out / TEMPLATE_FILE, v_template, mesh.faces, mesh.uvs, mesh.face_uvs)

    maps = build_uv_maps(mesh.layout, rng_albedo, rng_displacement, albedo=texture)
    _write_png(out / FACE_MASK_FILE, maps.face_mask)
    _write_png(out / FACE_EYE_MASK_FILE, maps.face_eye_mask)
    _write_npy(out / DISPLACEMENT_FILE, maps.displacement)
    if maps.albedo_mean is not None and maps.albedo_basis is not None:
        _write_npz(out / TEXTURE_FILE, {"mean": maps.albedo_mean, "tex_dir": maps.albedo_basis},
                   compresslevel=1)
    return out
