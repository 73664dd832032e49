"""Skeleton, skinning weights, joint regressor and pose correctives of the procedural head.

FLAME's five joints, in its order: 0 root (at the neck base), 1 neck, 2 jaw, 3 left eye (+x),
4 right eye. The jaw joint sits on the mid-plane between the two jaw hinges, below and in front
of the ears, so a positive rotation about x opens the mouth: the lower lip, chin and jaw are
skinned to it, the upper lip and everything above are not (a sharp split along the mouth, a
smooth one over the cheeks). The neck joint carries the whole head over the neck; the root the
neck stump. Each eyeball follows its eye joint.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse

from emoca_pipeline.assets.head import MOUTH_ROWS, HeadMesh

__all__ = [
    "JOINT_NAMES",
    "KINTREE_TABLE",
    "Rig",
    "build_rig",
    "jaw_weight",
    "pose_feature_index",
]

JOINT_NAMES = ("root", "neck", "jaw", "left_eye", "right_eye")
ROOT, NECK, JAW, LEFT_EYE, RIGHT_EYE = range(5)
# FLAME stores the root's parent as uint32(-1)
KINTREE_TABLE = np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)


class Rig(NamedTuple):
    """Skinning data in FLAME's layout.

    Attributes:
        weights: (V, 5) float64 LBS weights, rows sum to 1.
        j_regressor: (5, V) scipy.sparse.csc_matrix float64, rows sum to 1.
        joints: (5, 3) float64 joint locations of the template (``j_regressor @ verts``).
        posedirs: (V, 3, 36) float64 pose correctives; entry k multiplies pose feature k
            (see :func:`pose_feature_index`).
        jaw_fraction: (V,) float64 share of the head (non-root) weight that goes to the jaw.
    """

    weights: np.ndarray
    j_regressor: scipy.sparse.csc_matrix
    joints: np.ndarray
    posedirs: np.ndarray
    jaw_fraction: np.ndarray


def pose_feature_index(joint: int, row: int, col: int) -> int:
    """Index into FLAME's 36 pose features of entry (row, col) of ``R - I`` of a joint.

    smplx's lbs: ``pose_feature = (rot_mats[:, 1:] - I).view(N, -1)`` for joints 1..4.
    """
    if not 1 <= joint <= 4:
        raise ValueError(f"joint: pose features exist for joints 1..4, got {joint}")
    return (joint - 1) * 9 + 3 * row + col


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def jaw_weight(s: np.ndarray, phi: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Share of a head vertex that follows the jaw, from its layout coordinates.

    Along the mouth the split falls between the two cavity rows (the upper inner lip stays,
    the lower one goes); beyond the corners it rises over the cheek to the jaw hinge and
    widens; it fades behind the ears and down the neck.
    """
    aphi = np.abs(phi)
    split = 0.5 * (MOUTH_ROWS[3] + MOUTH_ROWS[4])
    line = np.interp(aphi, [0.0, 16.0, 24.0, 40.0, 60.0, 75.0, 90.0],
                     [split, split, split - 0.5, split - 4.5, 31.0, 28.0, 27.0])
    width = np.interp(aphi, [0.0, 15.0, 20.0, 30.0, 45.0, 90.0], [0.35, 0.35, 1.0, 2.5, 3.5, 4.0])
    w = _smoothstep((s - line) / (2.0 * width) + 0.5)
    w = w * _smoothstep((100.0 - aphi) / 15.0)  # nothing behind the ears
    w = w * (1.0 - _smoothstep((theta - 146.0) / 10.0))  # hand over to the neck under the jaw
    return np.nan_to_num(w)


def _regressor_row(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        raise RuntimeError("joint regressor: no vertices selected")
    return mask / mask.sum()


def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * (x / sigma) ** 2)


def build_rig(mesh: HeadMesh) -> Rig:
    """Skinning weights, joint regressor, joints and pose correctives for ``mesh``."""
    verts = mesh.verts
    num_verts = verts.shape[0]
    head = ~np.isnan(mesh.row_s)
    s, phi, theta = mesh.row_s, mesh.phi, mesh.theta
    x, y, z = verts.T

    # joint regressor: uniform averages of vertex sets around each joint
    neck_axis = np.hypot(x, z + 0.018)
    rows = [
        head & (y < -0.125),  # the neck stump's end: root at the neck base
        head & (y > -0.092) & (y < -0.07) & (neck_axis > 0.035) & (neck_axis < 0.064),
        head & (np.abs(phi) > 68.0) & (np.abs(phi) < 84.0) & (theta > 86.0) & (theta < 96.0),
        np.zeros(num_verts, bool),
        np.zeros(num_verts, bool),
    ]
    rows[LEFT_EYE][mesh.eyeball_verts[0]] = True
    rows[RIGHT_EYE][mesh.eyeball_verts[1]] = True
    regressor = np.stack([_regressor_row(r.astype(np.float64)) for r in rows])
    j_regressor = scipy.sparse.csc_matrix(regressor)
    joints = regressor @ verts

    # skinning weights
    jaw_fraction = np.where(head, jaw_weight(np.nan_to_num(s), np.nan_to_num(phi),
                                             np.nan_to_num(theta)), 0.0)
    on_head = np.where(head, _smoothstep((163.0 - np.nan_to_num(theta)) / 14.0), 1.0)
    weights = np.zeros((num_verts, len(JOINT_NAMES)))
    weights[:, ROOT] = np.where(head, 1.0 - on_head, 0.0)
    weights[:, NECK] = np.where(head, on_head * (1.0 - jaw_fraction), 0.0)
    weights[:, JAW] = np.where(head, on_head * jaw_fraction, 0.0)
    weights[mesh.eyeball_verts[0], LEFT_EYE] = 1.0
    weights[mesh.eyeball_verts[1], RIGHT_EYE] = 1.0

    # pose correctives: small smooth fields near the jaw and the neck, mm per unit of R - I
    posedirs = np.zeros((num_verts, 3, 36))
    radial = mesh.radial
    aphi, th = np.abs(np.nan_to_num(phi)), np.nan_to_num(theta)
    submental = np.where(head, _gauss(th - 143.0, 6.0) * _gauss(aphi, 25.0), 0.0)
    cheeks = np.where(head, _gauss(th - 112.0, 8.0) * _gauss(aphi - 30.0, 10.0), 0.0)
    throat = np.where(head, _gauss(th - 150.0, 7.0) * _gauss(aphi, 35.0), 0.0)
    neck_sides = np.where(head, _gauss(th - 152.0, 8.0) * _gauss(aphi - 90.0, 30.0), 0.0)
    # jaw opening (sin of the x rotation sits at R[2, 1]): the skin under the chin bunches
    # out, the cheeks by the mouth corners pull in
    posedirs[:, :, pose_feature_index(JAW, 2, 1)] = (0.006 * submental - 0.003 * cheeks)[
        :, None] * radial
    posedirs[:, :, pose_feature_index(JAW, 1, 2)] = -0.002 * submental[:, None] * radial
    # nodding the head bunches the throat; turning it folds the side of the neck it turns to
    posedirs[:, :, pose_feature_index(NECK, 2, 1)] = 0.004 * throat[:, None] * radial
    side = np.sign(x)[:, None]
    posedirs[:, :, pose_feature_index(NECK, 0, 2)] = 0.003 * (neck_sides[:, None] * side * radial)
    posedirs[:, :, pose_feature_index(NECK, 2, 0)] = -0.003 * (neck_sides[:, None] * side * radial)
    return Rig(weights, j_regressor, joints, posedirs, jaw_fraction)
