"""Wavefront OBJ meshes with texture coordinates, as FLAME's ``head_template.obj`` is written.

Only what meshes with UVs need: ``v x y z``, ``vt u v`` and triangles ``f v/vt v/vt v/vt``
(1-based; ``f v v v``, ``f v//vn`` and ``f v/vt/vn`` are read too, normals ignored; polygons
are split into fans; negative, relative indices are resolved). Other statements (``vn``,
``o``, ``g``, ``s``, ``usemtl``, ``mtllib``, comments) are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from emoca_pipeline.io.atomic import atomic_output

__all__ = ["ObjFormatError", "ObjMesh", "load_obj", "save_obj"]


class ObjFormatError(ValueError):
    """An OBJ file that cannot be read: the message names the file and the line."""


class ObjMesh(NamedTuple):
    """A triangle mesh read from an OBJ file.

    Attributes:
        verts: (V, 3) float64 positions.
        faces: (F, 3) int64 vertex indices (0-based).
        uvs: (T, 2) float64 texture coordinates, or None when the file has none.
        face_uvs: (F, 3) int64 indices into ``uvs`` (0-based), or None when the faces carry
            none.
    """

    verts: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray | None
    face_uvs: np.ndarray | None


def _check_indices(name: str, index: np.ndarray, count: int) -> None:
    if index.size and (index.min() < 0 or index.max() >= count):
        raise ValueError(f"{name}: indices must be in 0..{count - 1}")


def save_obj(
    path: str | os.PathLike,
    verts: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray | None = None,
    face_uvs: np.ndarray | None = None,
    material: str | None = None,
) -> None:
    """Write a triangle mesh, atomically.

    Args:
        path: the output file.
        verts: (V, 3) positions.
        faces: (F, 3) 0-based vertex indices.
        uvs: (T, 2) texture coordinates, or None.
        face_uvs: (F, 3) 0-based indices into ``uvs``; required with ``uvs``.
        material: optional name of an MTL file beside ``path`` (without ``.mtl``), written as
            ``mtllib <material>.mtl`` and ``usemtl FaceTexture`` (DECA's textured OBJ); the
            caller writes the MTL file and its texture.
    """
    verts = np.asarray(verts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    if verts.ndim != 2 or verts.shape[1] != 3:
        raise ValueError(f"verts: expected shape (V, 3), got {verts.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces: expected shape (F, 3), got {faces.shape}")
    _check_indices("faces", faces, verts.shape[0])
    if (uvs is None) != (face_uvs is None):
        raise ValueError("uvs and face_uvs: give both or neither")
    lines = [f"mtllib {material}.mtl", "usemtl FaceTexture"] if material else []
    lines += [f"v {x:.8f} {y:.8f} {z:.8f}" for x, y, z in verts.tolist()]
    if uvs is not None and face_uvs is not None:
        uvs = np.asarray(uvs, dtype=np.float64)
        face_uvs = np.asarray(face_uvs, dtype=np.int64)
        if uvs.ndim != 2 or uvs.shape[1] != 2:
            raise ValueError(f"uvs: expected shape (T, 2), got {uvs.shape}")
        if face_uvs.shape != faces.shape:
            raise ValueError(f"face_uvs: expected shape {faces.shape}, got {face_uvs.shape}")
        _check_indices("face_uvs", face_uvs, uvs.shape[0])
        lines += [f"vt {u:.8f} {v:.8f}" for u, v in uvs.tolist()]
        pairs = np.stack([faces + 1, face_uvs + 1], axis=-1).reshape(-1, 6).tolist()
        lines += [f"f {a}/{ta} {b}/{tb} {c}/{tc}" for a, ta, b, tb, c, tc in pairs]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in (faces + 1).tolist()]
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="ascii")


def _index(token: str, count: int, path: Path, line_no: int) -> int:
    try:
        value = int(token)
    except ValueError:
        raise ObjFormatError(f"{path}:{line_no}: bad index {token!r}") from None
    if value == 0:
        raise ObjFormatError(f"{path}:{line_no}: OBJ indices start at 1, found 0")
    resolved = value - 1 if value > 0 else count + value
    if not 0 <= resolved < count:
        raise ObjFormatError(f"{path}:{line_no}: index {value} refers to an element not "
                             f"defined yet ({count} so far)")
    return resolved


def load_obj(path: str | os.PathLike) -> ObjMesh:
    """Read an OBJ mesh (see the module docstring for what is understood).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ObjFormatError: a malformed line (the message gives file and line number), or faces
            of which only some carry texture coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such OBJ file")
    verts: list[list[float]] = []
    uvs: list[list[float]] = []
    faces: list[list[int]] = []
    face_uvs: list[list[int]] = []
    with_uv = without_uv = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, raw in enumerate(f, start=1):
            parts = raw.split("#", 1)[0].split()
            if not parts:
                continue
            key, args = parts[0], parts[1:]
            try:
                if key == "v":
                    if len(args) < 3:
                        raise ValueError
                    verts.append([float(a) for a in args[:3]])
                elif key == "vt":
                    if len(args) < 2:
                        raise ValueError
                    uvs.append([float(a) for a in args[:2]])
                elif key == "f":
                    if len(args) < 3:
                        raise ObjFormatError(f"{path}:{line_no}: a face needs 3 or more corners")
                    corners = [a.split("/") for a in args]
                    vi = [_index(c[0], len(verts), path, line_no) for c in corners]
                    has_uv = [len(c) > 1 and c[1] != "" for c in corners]
                    if any(has_uv) and not all(has_uv):
                        raise ObjFormatError(f"{path}:{line_no}: some corners lack a texture index")
                    ti = ([_index(c[1], len(uvs), path, line_no) for c in corners]
                          if all(has_uv) else None)
                    for k in range(1, len(vi) - 1):  # fan triangulation
                        faces.append([vi[0], vi[k], vi[k + 1]])
                        if ti is not None:
                            face_uvs.append([ti[0], ti[k], ti[k + 1]])
                            with_uv += 1
                        else:
                            without_uv += 1
            except ValueError as err:
                if isinstance(err, ObjFormatError):
                    raise
                raise ObjFormatError(f"{path}:{line_no}: cannot parse {raw.strip()!r}") from None
    if with_uv and without_uv:
        raise ObjFormatError(f"{path}: {without_uv} faces have no texture indices, "
                             f"{with_uv} have them")
    return ObjMesh(
        verts=np.array(verts, dtype=np.float64).reshape(-1, 3),
        faces=np.array(faces, dtype=np.int64).reshape(-1, 3),
        uvs=np.array(uvs, dtype=np.float64).reshape(-1, 2) if uvs else None,
        face_uvs=np.array(face_uvs, dtype=np.int64).reshape(-1, 3) if with_uv else None,
    )
