"""EMOCA v2's MediaPipe landmark losses against hand computations on a tiny example."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emoca_pipeline.losses.emoca import CoarseLossWeights, EmocaCoarseLoss
from emoca_pipeline.losses.mediapipe import (
    MEDIAPIPE_EYELID_PAIRS,
    MEDIAPIPE_LIP_PAIRS,
    MEDIAPIPE_MOUTH_CORNER_PAIRS,
    check_mediapipe_inputs,
    mediapipe_eye_distance_loss,
    mediapipe_landmark_loss,
    mediapipe_lip_distance_loss,
    mediapipe_mouth_corner_loss,
    mediapipe_targets,
)

# gdl/layers/losses/MediaPipeLandmarkLosses.py:55 EMBEDDING_INDICES, copied as printed there.
ORIGINAL_EMBEDDING = [
    276, 282, 283, 285, 293, 295, 296, 300, 334, 336, 46, 52, 53,
    55, 63, 65, 66, 70, 105, 107, 249, 263, 362, 373, 374, 380,
    381, 382, 384, 385, 386, 387, 388, 390, 398, 466, 7, 33, 133,
    144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246,
    168, 6, 197, 195, 5, 4, 129, 98, 97, 2, 326, 327, 358,
    0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84,
    87, 88, 91, 95, 146, 178, 181, 185, 191, 267, 269, 270, 291,
    308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402, 405, 409,
    415]
# The pairs the original forms (sorted upper lids vs sorted lower lids, both eyes), by hand.
EYELID_MESH_PAIRS = [(157, 7), (158, 144), (159, 145), (160, 153), (161, 154), (173, 155),
                     (246, 163), (384, 249), (385, 373), (386, 374), (387, 380), (388, 381),
                     (398, 382), (466, 390)]
LIP_MESH_PAIRS = [(185, 146), (40, 91), (39, 181), (37, 84), (0, 17), (267, 314), (269, 405),
                  (270, 321), (409, 375), (191, 95), (80, 88), (81, 178), (82, 87), (13, 14),
                  (312, 317), (311, 402), (310, 318), (415, 324)]
CORNER_MESH_PAIRS = [(78, 308), (61, 291)]


def pos(mesh: int) -> int:
    return ORIGINAL_EMBEDDING.index(mesh)


def mesh_pairs(pairs) -> list[tuple[int, int]]:
    return [(ORIGINAL_EMBEDDING[a], ORIGINAL_EMBEDDING[b]) for a, b in pairs]


def test_index_lists_are_the_original_s() -> None:
    from emoca_pipeline.assets.landmarks import MEDIAPIPE_LANDMARK_INDICES

    assert MEDIAPIPE_LANDMARK_INDICES.tolist() == ORIGINAL_EMBEDDING
    assert mesh_pairs(MEDIAPIPE_EYELID_PAIRS) == EYELID_MESH_PAIRS
    assert mesh_pairs(MEDIAPIPE_LIP_PAIRS) == LIP_MESH_PAIRS
    assert mesh_pairs(MEDIAPIPE_MOUTH_CORNER_PAIRS) == CORNER_MESH_PAIRS


def test_targets_select_the_105_points_of_the_478_mesh() -> None:
    mesh = np.arange(2 * 478 * 2, dtype=np.float32).reshape(2, 478, 2)
    got = mediapipe_targets(mesh)
    assert got.shape == (2, 105, 2)
    assert got[1, 0].tolist() == mesh[1, 276].tolist()
    assert got[0, 104].tolist() == mesh[0, 415].tolist()
    flat = mediapipe_targets(mesh.reshape(2, 956))  # the manifest's interleaved column
    assert torch.equal(flat, got)
    with pytest.raises(ValueError, match=r"expected \(N, 478, 2\)"):
        mediapipe_targets(np.zeros((2, 468, 2)))


def tiny_example() -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted (1, 105, 2) and detected (1, 478, 2) points: zeros except a few."""
    pred = torch.zeros(1, 105, 2, dtype=torch.float64)
    mesh = torch.zeros(1, 478, 2, dtype=torch.float64)
    # Eyes: predicted pair (159, 145) 0.4 apart; detected pair (386, 374) at a 3-4-5 distance.
    pred[0, pos(159)] = torch.tensor([0.0, 0.3])
    pred[0, pos(145)] = torch.tensor([0.0, -0.1])
    mesh[0, 386] = torch.tensor([0.3, 0.4])
    # Lips: predicted (13, 14) 0.2 apart, detected 0.05 apart.
    pred[0, pos(13)] = torch.tensor([0.0, 0.1])
    pred[0, pos(14)] = torch.tensor([0.0, -0.1])
    mesh[0, 13] = torch.tensor([0.5, 0.0])
    mesh[0, 14] = torch.tensor([0.5, -0.05])
    # Mouth corners: outer predicted 1.0 wide, detected 0.6 wide.
    pred[0, pos(61)] = torch.tensor([-0.5, 0.0])
    pred[0, pos(291)] = torch.tensor([0.5, 0.0])
    mesh[0, 61] = torch.tensor([-0.3, 0.2])
    mesh[0, 291] = torch.tensor([0.3, 0.2])
    return pred, mesh


def test_relative_terms_by_hand() -> None:
    pred, mesh = tiny_example()
    target = mediapipe_targets(mesh)
    # 14 eyelid pairs: |0.4 - 0| on (159, 145), |0 - 0.5| on (386, 374), 0 elsewhere.
    assert mediapipe_eye_distance_loss(pred, target).item() == pytest.approx((0.4 + 0.5) / 14)
    # 18 lip pairs: |0.2 - 0.05| on (13, 14) only.
    assert mediapipe_lip_distance_loss(pred, target).item() == pytest.approx(0.15 / 18)
    # 2 corner pairs: inner (78, 308) 0 vs 0; outer |1.0 - 0.6|.
    assert mediapipe_mouth_corner_loss(pred, target).item() == pytest.approx(0.4 / 2)
    # Plain L1: the sum of |x| and |y| differences of the points that differ, / (105 * 2).
    per_point = {159: 0.0 + 0.3, 145: 0.0 + 0.1, 13: 0.5 + 0.1, 14: 0.5 + 0.05,
                 61: 0.2 + 0.2, 291: 0.2 + 0.2, 386: 0.3 + 0.4}
    expected = sum(per_point.values()) / 210
    assert mediapipe_landmark_loss(pred, target).item() == pytest.approx(expected)


def test_distances_ignore_translation_and_wrong_shapes_fail() -> None:
    pred, mesh = tiny_example()
    target = mediapipe_targets(mesh)
    shifted = mediapipe_eye_distance_loss(pred + 3.0, target - 1.0)
    assert shifted.item() == pytest.approx(mediapipe_eye_distance_loss(pred, target).item())
    with pytest.raises(ValueError, match=r"expected \(N, 105, 2\).*mediapipe_targets"):
        mediapipe_lip_distance_loss(pred, mesh)


def test_coarse_loss_uses_the_terms_and_fails_without_inputs() -> None:
    pred, mesh = tiny_example()
    weights = CoarseLossWeights(emotion=0.0, mediapipe_landmark=1.0,
                                mediapipe_eye_distance=0.5, mediapipe_lip_distance=0.5,
                                mediapipe_mouth_corner=0.5)
    loss = EmocaCoarseLoss(weights)
    images = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    lmk = torch.zeros(1, 68, 2, dtype=torch.float64)
    args = (images, lmk, torch.zeros(1, 50, dtype=torch.float64), images, lmk,
            torch.ones(1, 1, 8, 8, dtype=torch.float64))
    out = loss(*args, predicted_mediapipe=pred, mediapipe_landmarks=mesh)
    assert out.terms["mediapipe_eye_distance"].item() == pytest.approx(0.5 * 0.9 / 14)
    assert out.terms["mediapipe_mouth_corner"].item() == pytest.approx(0.5 * 0.2)
    with pytest.raises(ValueError, match="mediapipe_landmark = 1.0 needs the detected"):
        loss(*args, predicted_mediapipe=pred)
    with pytest.raises(ValueError, match="needs the projected MediaPipe points"):
        loss(*args, mediapipe_landmarks=mesh)
    # Weight 0 and no inputs: nothing to compute, no error.
    EmocaCoarseLoss(CoarseLossWeights(emotion=0.0))(*args)


def test_check_function_names_the_weight_and_the_input() -> None:
    weights = CoarseLossWeights(emotion=0.0, mediapipe_eye_distance=0.5)
    with pytest.raises(ValueError, match=r"m\.parquet: mediapipe_eye_distance = 0\.5 needs a "
                                         r"'mediapipe_landmarks' column"):
        check_mediapipe_inputs(weights, None, model_has_mediapipe=True, source="m.parquet")
    points = np.zeros((3, 956), np.float32)
    points[1] = math.nan  # a face the MediaPipe detector did not process
    with pytest.raises(ValueError, match="1 of 3 rows have none"):
        check_mediapipe_inputs(weights, points, model_has_mediapipe=True, source="m.parquet")
    with pytest.raises(ValueError, match="mediapipe_landmark_embedding.npz"):
        check_mediapipe_inputs(weights, np.zeros((3, 956)), model_has_mediapipe=False,
                               source="m.parquet")
    check_mediapipe_inputs(CoarseLossWeights(emotion=0.0), None, model_has_mediapipe=False,
                           source="m.parquet")
