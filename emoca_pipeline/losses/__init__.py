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

__all__ = [
    "CoarseLossWeights",
    "DetailLossWeights",
    "EmocaCoarseLoss",
    "EmocaDetailLoss",
    "IDMRFLoss",
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
