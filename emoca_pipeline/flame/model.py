"""The FLAME layer: shape, expression and pose to vertices and landmarks."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from emoca_pipeline.flame.io import (
    FLAME_N_EXP,
    FLAME_N_SHAPE,
    LANDMARK_FILE,
    MEDIAPIPE_FILE,
    MODEL_FILE,
    FlameModelData,
    LandmarkEmbedding,
    MediaPipeEmbedding,
    drop_leading_ones,
    load_flame_model,
    load_landmark_embedding,
    load_mediapipe_embedding,
)
from emoca_pipeline.flame.lbs import batch_rodrigues, lbs, rot_mat_to_euler_y, vertices2landmarks

__all__ = ["FLAME", "LANDMARK_BUFFER_NDIM", "FlameOutput", "create", "dynamic_contour_rows"]

NECK_JOINT = 1
MAX_CONTOUR_YAW = 39  # degrees; the dynamic contour table has 2 * 39 + 1 rows
#: Axes of the landmark buffers. The original's files and checkpoints may hold one more,
#: leading, of length 1 (DECA's full 68-point set is (1, 68) and (1, 68, 3)): accepted.
LANDMARK_BUFFER_NDIM: dict[str, int] = {
    "static_lmk_faces": 1, "static_lmk_bary": 2,
    "dynamic_lmk_faces": 2, "dynamic_lmk_bary": 3,
    "full_lmk_faces": 1, "full_lmk_bary": 2,
    "mp_lmk_faces": 1, "mp_lmk_bary": 2, "mp_landmark_indices": 1,
}


class FlameOutput(NamedTuple):
    """Output of :class:`FLAME`.

    Attributes:
        vertices: (N, V, 3).
        landmarks2d: (N, 68, 3) the 68 points for 2D supervision: the jaw contour 0-16 picked
            by head yaw (dynamic), then the 51 static points; project them with the camera.
        landmarks3d: (N, 68, 3) the full, fixed 68-point set on the surface.
        mediapipe_landmarks: (N, 105, 3) EMOCA v2's MediaPipe points, or None when the
            model was built without that embedding.
        joints: (N, J, 3) posed joints.
    """

    vertices: torch.Tensor
    landmarks2d: torch.Tensor | None
    landmarks3d: torch.Tensor | None
    mediapipe_landmarks: torch.Tensor | None
    joints: torch.Tensor


def dynamic_contour_rows(yaw: torch.Tensor) -> torch.Tensor:
    """Rows of the dynamic-contour table for head yaw angles, as DECA chooses them.

    Args:
        yaw: (N,) yaw in radians.

    Returns:
        (N,) long rows: round(min(yaw, 39 deg)) for yaw >= 0; 39 - round(yaw) for
        -39 <= round(yaw) < 0 (rows 40..78); 78 below -39 degrees.
    """
    deg = torch.round(torch.clamp(yaw * 180.0 / math.pi, max=MAX_CONTOUR_YAW)).long()
    beyond = deg < -MAX_CONTOUR_YAW
    negative_rows = torch.where(beyond, 2 * MAX_CONTOUR_YAW, MAX_CONTOUR_YAW - deg)
    return torch.where(deg < 0, negative_rows, deg)


def _check_input(name: str, value: torch.Tensor, width: int, batch: int) -> None:
    if value.dim() != 2 or value.shape[1] != width:
        raise ValueError(f"{name}: expected shape (N, {width}), got {tuple(value.shape)}")
    if value.shape[0] != batch:
        raise ValueError(f"{name}: batch size {value.shape[0]} differs from shape's {batch}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{name}: contains NaN or infinite values")


class FLAME(nn.Module):
    """FLAME with DECA's conventions: pose = [global 3, jaw 3]; neck and eyes optional.

    Args:
        model: arrays of a FLAME model file.
        landmarks: the landmark embedding; without it, no landmarks are returned. Its
            arrays may carry a leading axis of length 1 (DECA's full set is (1, 68)); the
            buffers drop it (:data:`LANDMARK_BUFFER_NDIM`).
        mediapipe: the MediaPipe embedding (EMOCA v2), optional (the same rule).
        n_shape: identity components used (<= 300).
        n_exp: expression components used (<= 100).
        dtype: float32 or float64 buffers.
    """

    def __init__(
        self,
        model: FlameModelData,
        landmarks: LandmarkEmbedding | None = None,
        mediapipe: MediaPipeEmbedding | None = None,
        n_shape: int = 100,
        n_exp: int = 50,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not 0 < n_shape <= FLAME_N_SHAPE:
            raise ValueError(f"n_shape: must be in 1..{FLAME_N_SHAPE}, got {n_shape}")
        if not 0 < n_exp <= FLAME_N_EXP:
            raise ValueError(f"n_exp: must be in 1..{FLAME_N_EXP}, got {n_exp}")
        self.n_shape = n_shape
        self.n_exp = n_exp
        self.source = model.source

        def buf(name: str, array: np.ndarray, kind: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array), dtype=kind))

        buf("v_template", model.v_template)
        buf("faces", model.faces, torch.long)
        buf("shapedirs", np.concatenate(
            [model.shapedirs[:, :, :n_shape], model.exprdirs[:, :, :n_exp]], axis=2))
        num_pose_basis = model.posedirs.shape[-1]
        buf("posedirs", model.posedirs.reshape(-1, num_pose_basis).T)
        buf("j_regressor", model.j_regressor)
        buf("lbs_weights", model.lbs_weights)
        buf("parents", model.parents, torch.long)
        self.num_joints = model.parents.shape[0]
        chain, joint = [], NECK_JOINT
        while joint != -1:
            chain.append(joint)
            joint = int(model.parents[joint])
        buf("neck_kin_chain", np.array(chain), torch.long)

        def landmarks_buf(faces_name: str, faces: np.ndarray, bary_name: str,
                          bary: np.ndarray) -> None:
            arrays = {}
            for name, array in ((faces_name, faces), (bary_name, bary)):
                ndim = LANDMARK_BUFFER_NDIM[name]
                arrays[name] = drop_leading_ones(np.asarray(array), ndim)
                if arrays[name].ndim != ndim:
                    raise ValueError(f"{name}: expected {ndim} axes (or a leading one of "
                                     f"length 1 more), got shape {np.shape(array)}")
            if arrays[bary_name].shape != (*arrays[faces_name].shape, 3):
                raise ValueError(f"{bary_name}: shape {arrays[bary_name].shape} does not fit "
                                 f"{faces_name} {arrays[faces_name].shape}")
            buf(faces_name, arrays[faces_name], torch.long)
            buf(bary_name, arrays[bary_name])

        self.has_landmarks = landmarks is not None
        if landmarks is not None:
            landmarks_buf("static_lmk_faces", landmarks.static_faces,
                          "static_lmk_bary", landmarks.static_bary)
            landmarks_buf("dynamic_lmk_faces", landmarks.dynamic_faces,
                          "dynamic_lmk_bary", landmarks.dynamic_bary)
            landmarks_buf("full_lmk_faces", landmarks.full_faces,
                          "full_lmk_bary", landmarks.full_bary)
            if self.dynamic_lmk_faces.shape[0] != 2 * MAX_CONTOUR_YAW + 1:
                raise ValueError(f"dynamic_lmk_faces: {self.dynamic_lmk_faces.shape[0]} yaw "
                                 f"rows, expected {2 * MAX_CONTOUR_YAW + 1}")
        self.has_mediapipe = mediapipe is not None
        if mediapipe is not None:
            landmarks_buf("mp_lmk_faces", mediapipe.faces, "mp_lmk_bary", mediapipe.bary)
            indices = drop_leading_ones(np.asarray(mediapipe.landmark_indices), 1)
            if indices.shape != tuple(self.mp_lmk_faces.shape):
                raise ValueError(f"mp_landmark_indices: shape {indices.shape}, expected "
                                 f"{tuple(self.mp_lmk_faces.shape)}")
            buf("mp_landmark_indices", indices, torch.long)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def head_yaw(self, full_pose: torch.Tensor) -> torch.Tensor:
        """Head yaw (radians) that picks the dynamic contour. full_pose (N, J*3) -> (N,).

        As in DECA and EMOCA: the y Euler angle of the neck's rotation composed with the
        global one, so that a global rotation of +a about y gives a yaw of +a. (smplx
        negates it and follows the global rotation only; its contour tables are ordered
        for that convention.)
        """
        batch = full_pose.shape[0]
        aa = full_pose.view(batch, -1, 3)[:, self.neck_kin_chain]
        rots = batch_rodrigues(aa.reshape(-1, 3)).view(batch, -1, 3, 3)
        rel = torch.eye(3, dtype=full_pose.dtype, device=full_pose.device).expand(batch, 3, 3)
        for i in range(rots.shape[1]):
            rel = torch.bmm(rots[:, i], rel)
        return rot_mat_to_euler_y(rel)

    def forward(
        self,
        shape: torch.Tensor,
        expression: torch.Tensor,
        pose: torch.Tensor,
        neck_pose: torch.Tensor | None = None,
        eye_pose: torch.Tensor | None = None,
    ) -> FlameOutput:
        """Vertices and landmarks.

        Args:
            shape: (N, n_shape) identity coefficients.
            expression: (N, n_exp) expression coefficients.
            pose: (N, 6) axis-angle global rotation then jaw rotation.
            neck_pose: (N, 3), zero when None.
            eye_pose: (N, 6) left then right eye, zero when None.
        """
        batch = shape.shape[0] if shape.dim() == 2 else -1
        dtype, device = self.v_template.dtype, self.v_template.device
        zeros = lambda n: torch.zeros(batch, n, dtype=dtype, device=device)  # noqa: E731
        _check_input("shape", shape, self.n_shape, batch)
        _check_input("expression", expression, self.n_exp, batch)
        _check_input("pose", pose, 6, batch)
        neck_pose = zeros(3) if neck_pose is None else neck_pose
        eye_pose = zeros(6) if eye_pose is None else eye_pose
        _check_input("neck_pose", neck_pose, 3, batch)
        _check_input("eye_pose", eye_pose, 6, batch)
        shape, expression, pose, neck_pose, eye_pose = (
            t.to(dtype=dtype, device=device) for t in (shape, expression, pose, neck_pose, eye_pose)
        )
        full_pose = torch.cat([pose[:, :3], neck_pose, pose[:, 3:], eye_pose], dim=1)
        betas = torch.cat([shape, expression], dim=1)
        vertices, joints = lbs(
            betas, full_pose, self.v_template, self.shapedirs, self.posedirs,
            self.j_regressor, self.parents, self.lbs_weights,
        )
        landmarks2d = landmarks3d = mp_landmarks = None
        if self.has_landmarks:
            rows = dynamic_contour_rows(self.head_yaw(full_pose))
            faces_idx = torch.cat(
                [self.dynamic_lmk_faces[rows], self.static_lmk_faces.expand(batch, -1)], dim=1)
            bary = torch.cat(
                [self.dynamic_lmk_bary[rows], self.static_lmk_bary.expand(batch, -1, -1)], dim=1)
            landmarks2d = vertices2landmarks(vertices, self.faces, faces_idx, bary)
            landmarks3d = vertices2landmarks(
                vertices, self.faces, self.full_lmk_faces.expand(batch, -1),
                self.full_lmk_bary.expand(batch, -1, -1))
        if self.has_mediapipe:
            mp_landmarks = vertices2landmarks(
                vertices, self.faces, self.mp_lmk_faces.expand(batch, -1),
                self.mp_lmk_bary.expand(batch, -1, -1))
        return FlameOutput(vertices, landmarks2d, landmarks3d, mp_landmarks, joints)


def create(
    model_path: str | os.PathLike,
    n_shape: int = 100,
    n_exp: int = 50,
    landmark_embedding: str | os.PathLike | None = None,
    mediapipe_embedding: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> FLAME:
    """Build a :class:`FLAME` layer from an asset folder or a model file.

    Args:
        model_path: a folder with ``generic_model.pkl`` (and, found there by default,
            ``landmark_embedding.npy`` and ``mediapipe_landmark_embedding.npz``), or the
            model file itself (``.pkl`` or ``.npz``).
        n_shape: identity components (<= 300).
        n_exp: expression components (<= 100).
        landmark_embedding: path of the landmark embedding; default: the folder's file.
            Required: a missing file is an error.
        mediapipe_embedding: path of the MediaPipe embedding; default: the folder's file
            when present (optional).
        dtype: float32 or float64.
        device: where the buffers live.
    """
    path = Path(model_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such FLAME asset folder or model file")
    if path.is_dir():
        folder, model_file = path, path / MODEL_FILE
    else:
        folder, model_file = path.parent, path
    model = load_flame_model(model_file)
    num_faces = model.faces.shape[0]
    landmarks = load_landmark_embedding(
        Path(landmark_embedding) if landmark_embedding else folder / LANDMARK_FILE, num_faces)
    mp_path = Path(mediapipe_embedding) if mediapipe_embedding else folder / MEDIAPIPE_FILE
    mediapipe = None
    if mediapipe_embedding is not None or mp_path.is_file():
        mediapipe = load_mediapipe_embedding(mp_path, num_faces)
    flame = FLAME(model, landmarks, mediapipe, n_shape=n_shape, n_exp=n_exp, dtype=dtype)
    return flame.to(device) if device is not None else flame
