"""Linear blend skinning for FLAME, batched and differentiable (smplx's formulation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "batch_rigid_transform",
    "batch_rodrigues",
    "blend_shapes",
    "lbs",
    "rot_mat_to_euler_y",
    "vertices2joints",
    "vertices2landmarks",
]


def batch_rodrigues(rot_vecs: torch.Tensor, epsilon: float = 1e-8) -> torch.Tensor:
    """Axis-angle vectors (N, 3) to rotation matrices (N, 3, 3).

    ``epsilon`` is added before the norm so that zero rotations stay differentiable.
    """
    angle = torch.norm(rot_vecs + epsilon, dim=1, keepdim=True)  # (N, 1)
    rot_dir = rot_vecs / angle
    cos = torch.cos(angle)[:, None]  # (N, 1, 1)
    sin = torch.sin(angle)[:, None]
    rx, ry, rz = rot_dir.unbind(dim=1)
    zeros = torch.zeros_like(rx)
    skew = torch.stack([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(-1, 3, 3)
    ident = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)[None]
    return ident + sin * skew + (1 - cos) * torch.bmm(skew, skew)


def rot_mat_to_euler_y(rot_mats: torch.Tensor) -> torch.Tensor:
    """Rotation about the y axis (yaw, radians) of rotation matrices (N, 3, 3) -> (N,)."""
    sy = torch.sqrt(rot_mats[:, 0, 0] ** 2 + rot_mats[:, 1, 0] ** 2)
    return torch.atan2(-rot_mats[:, 2, 0], sy)


def blend_shapes(coeffs: torch.Tensor, shape_disps: torch.Tensor) -> torch.Tensor:
    """Blend-shape offsets: coefficients (N, L) and directions (V, 3, L) -> (N, V, 3)."""
    return torch.einsum("bl,mkl->bmk", coeffs, shape_disps)


def vertices2joints(j_regressor: torch.Tensor, vertices: torch.Tensor) -> torch.Tensor:
    """Joint locations from vertices: regressor (J, V), vertices (N, V, 3) -> (N, J, 3)."""
    return torch.einsum("bik,ji->bjk", vertices, j_regressor)


def vertices2landmarks(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    lmk_faces_idx: torch.Tensor,
    lmk_bary_coords: torch.Tensor,
) -> torch.Tensor:
    """Points on the surface given by (face, barycentric) pairs.

    Args:
        vertices: (N, V, 3).
        faces: (F, 3) long.
        lmk_faces_idx: (N, L) long face indices.
        lmk_bary_coords: (N, L, 3) barycentric weights.

    Returns:
        (N, L, 3) landmark positions.
    """
    batch_size, num_verts = vertices.shape[:2]
    lmk_faces = faces[lmk_faces_idx.reshape(-1)].view(batch_size, -1, 3)
    offsets = torch.arange(batch_size, dtype=torch.long, device=vertices.device) * num_verts
    lmk_vertices = vertices.reshape(-1, 3)[lmk_faces + offsets[:, None, None]]  # (N, L, 3, 3)
    return torch.einsum("blfi,blf->bli", lmk_vertices, lmk_bary_coords)


def batch_rigid_transform(
    rot_mats: torch.Tensor, joints: torch.Tensor, parents: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a kinematic chain.

    Args:
        rot_mats: (N, J, 3, 3) local joint rotations.
        joints: (N, J, 3) rest joint locations.
        parents: (J,) parent index of each joint, -1 for the root; parents precede children.

    Returns:
        posed_joints (N, J, 3) and rel_transforms (N, J, 4, 4), the transforms that carry
        rest-pose points to posed points (the joint's rest location already removed).
    """
    joints = joints.unsqueeze(-1)  # (N, J, 3, 1)
    rel_joints = joints.clone()
    rel_joints[:, 1:] -= joints[:, parents[1:]]
    transforms_mat = torch.cat(
        [F.pad(rot_mats, [0, 0, 0, 1]), F.pad(rel_joints, [0, 0, 0, 1], value=1.0)], dim=3
    )  # (N, J, 4, 4)
    chain = [transforms_mat[:, 0]]
    for i in range(1, parents.shape[0]):
        chain.append(torch.matmul(chain[int(parents[i])], transforms_mat[:, i]))
    transforms = torch.stack(chain, dim=1)
    posed_joints = transforms[:, :, :3, 3]
    joints_homogen = F.pad(joints, [0, 0, 0, 1])
    rel_transforms = transforms - F.pad(torch.matmul(transforms, joints_homogen), [3, 0])
    return posed_joints, rel_transforms


def lbs(
    betas: torch.Tensor,
    pose: torch.Tensor,
    v_template: torch.Tensor,
    shapedirs: torch.Tensor,
    posedirs: torch.Tensor,
    j_regressor: torch.Tensor,
    parents: torch.Tensor,
    lbs_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape and expression blend shapes, pose correctives and skinning.

    Args:
        betas: (N, L) shape and expression coefficients, matching ``shapedirs``.
        pose: (N, J * 3) axis-angle rotation of every joint.
        v_template: (V, 3) or (N, V, 3) template vertices.
        shapedirs: (V, 3, L).
        posedirs: (P, V * 3) pose correctives, P = (J - 1) * 9.
        j_regressor: (J, V).
        parents: (J,) long.
        lbs_weights: (V, J).

    Returns:
        vertices (N, V, 3) and posed joints (N, J, 3).
    """
    batch_size = betas.shape[0]
    v_shaped = v_template + blend_shapes(betas, shapedirs)
    joints = vertices2joints(j_regressor, v_shaped)
    rot_mats = batch_rodrigues(pose.reshape(-1, 3)).view(batch_size, -1, 3, 3)
    ident = torch.eye(3, dtype=pose.dtype, device=pose.device)
    pose_feature = (rot_mats[:, 1:] - ident).view(batch_size, -1)
    v_posed = v_shaped + torch.matmul(pose_feature, posedirs).view(batch_size, -1, 3)
    posed_joints, transforms = batch_rigid_transform(rot_mats, joints, parents)
    num_joints = j_regressor.shape[0]
    skin = torch.matmul(lbs_weights, transforms.view(batch_size, num_joints, 16))
    skin = skin.view(batch_size, -1, 4, 4)
    vertices = torch.matmul(skin[..., :3, :3], v_posed.unsqueeze(-1)).squeeze(-1) + skin[..., :3, 3]
    return vertices, posed_joints
