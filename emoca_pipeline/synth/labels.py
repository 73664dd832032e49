"""The emotion labels of the synthetic dataset: a fixed, documented function of the codes.

The procedural model's first expression components are named actions (see
``emoca_pipeline.assets.blendshapes.EXPRESSION_COMPONENTS``). Each AffectNet class but
Neutral has a prototype: a direction in the space ``z = [exp[:25], jaw_open]`` built from the
actions that make it (FACS-like), with ``jaw_open`` the jaw's rotation about x in units of
0.1 rad. The label of a face is

    score_k = <z, P_k> / |P_k|          (k = 1..7, unit prototypes)
    expression = argmax_k score_k   if max_k score_k >= NEUTRAL_THRESHOLD   else 0 (Neutral)
    valence = tanh(sum_k relu(score_k) * V_k / 2)
    arousal = tanh(sum_k relu(score_k) * A_k / 2)

with (V_k, A_k) each class's place on the circumplex. It is deterministic and piecewise
linear, so an emotion network can learn it exactly, and the expression of a rendered face
determines its label, as in real data.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "AFFECT_CIRCUMPLEX",
    "CLASS_PROTOTYPES",
    "JAW_UNIT",
    "NEUTRAL_THRESHOLD",
    "emotion_labels",
    "emotion_scores",
    "prototype_matrix",
]

NUM_NAMED = 25  # named expression actions of the procedural model
JAW_UNIT = 0.1  # radians of jaw opening per unit of the jaw coordinate
NEUTRAL_THRESHOLD = 1.0

# Indices into the named actions (blendshapes.EXPRESSION_COMPONENTS).
_ACTION = {name: i for i, name in enumerate((
    "jaw_drop", "smile", "mouth_stretch", "frown", "lip_pucker", "lip_press", "brow_raise",
    "brow_lower", "inner_brow_raise", "eyes_close", "cheek_raise", "nose_wrinkle",
    "upper_lip_raise", "lower_lip_depress", "smile_asymmetric", "eye_wink", "jaw_sideways",
    "cheek_puff", "mouth_sideways", "chin_raise", "lip_roll", "nostril_flare", "eyes_wide",
    "lip_corner_dimple", "brow_asymmetric",
))}
_JAW = "jaw_open"

#: AffectNet class -> {action: weight}; class 0 (Neutral) has none.
CLASS_PROTOTYPES: dict[int, dict[str, float]] = {
    1: {"smile": 1.0, "cheek_raise": 0.6},  # Happy
    2: {"frown": 1.0, "inner_brow_raise": 0.8, "lower_lip_depress": 0.3},  # Sad
    3: {"brow_raise": 1.0, "eyes_wide": 0.7, _JAW: 1.0},  # Surprise
    4: {"inner_brow_raise": 0.7, "brow_raise": 0.4, "mouth_stretch": 1.0, "eyes_wide": 0.6},
    5: {"nose_wrinkle": 1.0, "upper_lip_raise": 0.8, "brow_lower": 0.3},  # Disgust
    6: {"brow_lower": 1.0, "lip_press": 0.8, "eyes_wide": 0.3},  # Anger
    7: {"smile_asymmetric": 1.0, "lip_corner_dimple": 0.4},  # Contempt
}

#: (valence, arousal) of each class, from the affective circumplex.
AFFECT_CIRCUMPLEX: dict[int, tuple[float, float]] = {
    0: (0.0, 0.0), 1: (0.8, 0.4), 2: (-0.7, -0.4), 3: (0.2, 0.8), 4: (-0.6, 0.8),
    5: (-0.7, 0.3), 6: (-0.7, 0.7), 7: (-0.5, 0.2),
}


def prototype_matrix() -> np.ndarray:
    """(7, 26) unit prototypes of classes 1..7 over ``[exp[:25], jaw_open]``."""
    protos = np.zeros((7, NUM_NAMED + 1))
    for k, actions in CLASS_PROTOTYPES.items():
        for name, weight in actions.items():
            protos[k - 1, NUM_NAMED if name == _JAW else _ACTION[name]] = weight
    return protos / np.linalg.norm(protos, axis=1, keepdims=True)


def _features(expression: np.ndarray, jaw_pose: np.ndarray) -> np.ndarray:
    expression = np.asarray(expression, dtype=np.float64)
    jaw_pose = np.asarray(jaw_pose, dtype=np.float64)
    if expression.ndim != 2 or expression.shape[1] < NUM_NAMED:
        raise ValueError(f"expression: expected shape (N, >= {NUM_NAMED}), "
                         f"got {expression.shape}")
    if jaw_pose.shape != (expression.shape[0], 3):
        raise ValueError(f"jaw_pose: expected shape ({expression.shape[0]}, 3), "
                         f"got {jaw_pose.shape}")
    return np.concatenate([expression[:, :NUM_NAMED], jaw_pose[:, :1] / JAW_UNIT], axis=1)


def emotion_scores(expression: np.ndarray, jaw_pose: np.ndarray) -> np.ndarray:
    """(N, 7) scores of classes 1..7 from expression codes (N, >=25) and jaw poses (N, 3)."""
    return _features(expression, jaw_pose) @ prototype_matrix().T


def emotion_labels(
    expression: np.ndarray, jaw_pose: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AffectNet labels of the codes.

    Returns:
        expression class (N,) int64 in 0..7, valence (N,) and arousal (N,) float32 in (-1, 1).
    """
    scores = emotion_scores(expression, jaw_pose)
    best = scores.argmax(axis=1)
    classes = np.where(scores.max(axis=1) >= NEUTRAL_THRESHOLD, best + 1, 0).astype(np.int64)
    va = np.array([AFFECT_CIRCUMPLEX[k] for k in range(1, 8)])  # (7, 2)
    drive = np.maximum(scores, 0.0) @ va / 2.0
    return classes, np.tanh(drive[:, 0]).astype(np.float32), np.tanh(drive[:, 1]).astype(
        np.float32)
