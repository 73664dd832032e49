"""Training losses."""

from emoca_pipeline.losses.emoca import (
    CoarseLossWeights,
    DetailLossWeights,
    EmocaCoarseLoss,
    EmocaDetailLoss,
    IDMRFLoss,
)
from emoca_pipeline.losses.emotion import (
    ORIGINAL_VA_LOSS_WEIGHTS,
    SIX_TERM_VA_LOSS_WEIGHTS,
    VA_LOSS_TERMS,
    EmotionLoss,
    EmotionLossOutput,
    VALoss,
    VALossOutput,
    VALossSettings,
    batch_ccc,
    batch_pcc,
    class_balanced_weights,
    expression_nll,
)
from emoca_pipeline.losses.identity import VGGFace2IdentityLoss
from emoca_pipeline.losses.lipreading import LipReadingLoss, load_lipreading_frontend
from emoca_pipeline.losses.mediapipe import check_mediapipe_inputs, mediapipe_targets

__all__ = [
    "CoarseLossWeights",
    "DetailLossWeights",
    "EmocaCoarseLoss",
    "EmocaDetailLoss",
    "IDMRFLoss",
    "LipReadingLoss",
    "VGGFace2IdentityLoss",
    "check_mediapipe_inputs",
    "load_lipreading_frontend",
    "mediapipe_targets",
    "ORIGINAL_VA_LOSS_WEIGHTS",
    "SIX_TERM_VA_LOSS_WEIGHTS",
    "VA_LOSS_TERMS",
    "EmotionLoss",
    "EmotionLossOutput",
    "VALoss",
    "VALossOutput",
    "VALossSettings",
    "batch_ccc",
    "batch_pcc",
    "class_balanced_weights",
    "expression_nll",
]
