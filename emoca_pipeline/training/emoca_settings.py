"""Settings of one EMOCA training stage (``emoca train deca|coarse|detail --config FILE``)."""

from __future__ import annotations

import os
import typing
from pathlib import Path

from pydantic import Field, model_validator

from emoca_pipeline.losses.emoca import CoarseLossWeights, DetailLossWeights
from emoca_pipeline.models.emoca import EmocaModelSettings, Stage
from emoca_pipeline.training.fit import FitSettings
from emoca_pipeline.training.settings import load_settings, relative_to_file

__all__ = ["DECA_LOSS_WEIGHTS", "GROUND_TRUTH_TERMS", "PAPER_LEARNING_RATES", "STAGES",
           "EmocaTrainingSettings", "load_emoca_settings"]

#: The stages, in training order.
STAGES: tuple[str, ...] = typing.get_args(Stage)

#: DECA's coarse pre-training weights (lmk 1, eyed 1, lipd 0.5, photo 2, regularisers).
DECA_LOSS_WEIGHTS = CoarseLossWeights(
    emotion=0.0, landmark=1.0, eye_distance=1.0, lip_distance=0.5, mouth_corner=0.0,
    photometric=2.0, expression_reg=1e-4, shape_reg=1e-4, tex_reg=1e-4, light_reg=1.0)

#: Settings holding file paths, relative to the config file's folder.
PATH_SETTINGS = ("assets", "init", "flame_weights", "emotion_network", "vgg19_weights",
                 "vggface2_weights", "lipreading_weights", "codes_table")

#: The ground-truth (synthetic-assist) loss terms: not EMOCA, only with ``synthetic_assist``.
GROUND_TRUTH_TERMS = ("gt_shape", "gt_exp", "gt_pose", "gt_cam")

#: The papers' learning rates: DECA's coarse stage (decalib/utils/config.py:75), EMOCA's
#: coarse (emoca.yaml:120) and detail (emoca.yaml:277) stages.
PAPER_LEARNING_RATES: dict[str, float] = {"deca": 1e-4, "coarse": 5e-5, "detail": 1e-4}


class EmocaTrainingSettings(FitSettings):
    """One EMOCA training stage (defaults: the paper's where it has one), on top of the fit
    loop's (:class:`~emoca_pipeline.training.fit.FitSettings`).

    assets: FLAME asset folder (relative to the config file), used when ``init`` is null.
    init: our checkpoint to start from (e.g. an imported DECA/EMOCA, or the coarse stage's
        model.pt for the detail stage); relative to the config file.
    flame_weights: local ResNet-50 weights for E_flame when starting from assets.
    emotion_network: the frozen image emotion network of the emotion-consistency loss: a
        model.pt of ``emoca train emotion`` (its own image size and input normalisation
        are used), or an original EmoCnn / EmotionImageNet state dict (224 px). A stage
        with an emotion weight > 0 and no network is an error (``--emotion-network``
        replaces this setting).
    vgg19_weights: local torchvision VGG19 weights for ID-MRF (null: the term is off and
        logged as disabled; an error with ``paper: true``).
    vggface2_weights: ``resnet50_ft_weight.pkl`` (VGGFace2 ResNet-50) for the identity
        loss (DECA stage, weight ``deca.identity``; > 0 without it is an error).
    lipreading_weights: the lip-reading network's ``model.pth`` (EMOCA v2's lip-reading
        loss, weight ``lip_reading``; > 0 without it is an error).
    codes_table: a table with ground-truth codes (``synthetic.parquet``) joined on
        ``image_id`` when training from a manifest (``--codes`` replaces it): for the
        synthetic-assist terms and the ``exp_error`` metric.
    synthetic_assist: allow the ground-truth terms ``gt_*`` (not EMOCA: the synthetic data
        have true codes). False: any ``gt_*`` weight > 0 is an error.
    paper: the config mirrors the paper: everything that would switch off part of the
        method is an error (``synthetic_assist``, ID-MRF without VGG19 weights, the DECA
        stage without the shape-consistency exchange or without segmentation masks, a
        coarse stage without E_expression). A term whose weight is 0 is off either way
        (listed in the run's ``emoca.losses_off`` tag).
    shape_consistency: deca stage: DECA's shape-consistency exchange (shape codes swapped
        among the K images of one identity, losses on the exchanged renders too); training
        batches are then identities x ``k_per_identity`` images.
    use_segmentation: deca and detail stages: when the table has a ``seg_mask`` column
        (face-segmentation images, relative to the table's root), use it as the
        photometric mask (DECA ``useSeg: True``, EMOCA detail ``useSeg: gt``) instead of
        the rendered mask. EMOCA's coarse stage always uses the rendered mask (``rend``).
    datasets: the manifest's datasets to train on (empty: all of the folder).
    model: dimensions (image_size 224 in the paper; smaller is faster on CPUs).
    deca, coarse, detail: loss weights of each stage (deca: DECA's coarse pre-training,
        with optional ground-truth terms gt_*). learning_rate: deca 1e-4, coarse 5e-5,
        detail 1e-4 in the papers (null: the stage's).
    init_flame_head: deca stage from assets: start E_flame's head at the camera that fits
        FLAME's mean landmarks to the mean training-crop landmarks (see
        :meth:`EmocaModel.init_flame_head`).
    clone_expression_trunk: coarse stage: copy E_flame's trunk into E_expression first
        (EMOCA's ``deca_clone`` on a freshly trained DECA).
    clone_expression_head: coarse stage: also copy E_flame's head (hidden layer, expression
        rows) into E_expression's, so that EMOCA starts at DECA's expression. Not EMOCA (its
        head starts fresh from a DECA trained for days); for short CPU runs. Refused with
        ``paper: true``.
    batch_size, k_per_identity: identities x images per batch (the detail stage
        exchanges detail codes, the deca stage shape codes, among the K images of one
        identity; papers: DECA K=4, EMOCA detail K=3).
    recalibrate_batchnorm: before each validation, recompute the BatchNorm statistics of
        the trained modules as exact averages over this many training batches (0: off;
        "precise BN"). A from-scratch E_flame's running averages lag far behind its
        weights within a short run, so eval-mode outputs would not show what it learned.
    augment: scale/shift jitter of the crop and brightness jitter (train split only).

    Checkpoints are weights only by default (the model is 79 M parameters; no exact resume)
    and not uploaded to MLflow (``log_best_checkpoint``; the run always holds ``model.pt``,
    our checkpoint of the best weights, and training.json).
    """

    name: str = Field("emoca", pattern=r"^[^/\\\n]+$")
    patience: int = Field(5, ge=1)
    checkpoint_weights_only: bool = True
    log_best_checkpoint: bool = False
    assets: str | None = None
    init: str | None = None
    flame_weights: str | None = None
    emotion_network: str | None = None
    vgg19_weights: str | None = None
    vggface2_weights: str | None = None
    lipreading_weights: str | None = None
    codes_table: str | None = None
    synthetic_assist: bool = False
    paper: bool = False
    shape_consistency: bool = True
    use_segmentation: bool = True
    datasets: tuple[str, ...] = ()
    model: EmocaModelSettings = Field(default_factory=EmocaModelSettings)
    deca: CoarseLossWeights = DECA_LOSS_WEIGHTS
    coarse: CoarseLossWeights = Field(default_factory=CoarseLossWeights)
    detail: DetailLossWeights = Field(default_factory=DetailLossWeights)
    learning_rate: float | None = Field(None, gt=0.0)
    init_flame_head: bool = True
    clone_expression_trunk: bool = False
    clone_expression_head: bool = False
    batch_size: int = Field(8, ge=1)
    k_per_identity: int = Field(4, ge=1)
    recalibrate_batchnorm: int = Field(0, ge=0)
    augment: bool = True

    @model_validator(mode="after")
    def _assist(self) -> EmocaTrainingSettings:
        if self.paper and self.clone_expression_head:
            raise ValueError("clone_expression_head: true is not allowed with paper: true "
                             "(EMOCA's expression head starts fresh)")
        if self.paper and self.synthetic_assist:
            raise ValueError("synthetic_assist: true is not allowed with paper: true (the "
                             "ground-truth terms are not EMOCA)")
        if not self.synthetic_assist:
            for section in ("deca", "coarse"):
                weights = getattr(self, section)
                for term in GROUND_TRUTH_TERMS:
                    value = getattr(weights, term)
                    if value > 0:
                        raise ValueError(
                            f"{section}.{term} = {value}: ground-truth terms are not EMOCA; "
                            "set synthetic_assist: true to use them (never in configs that "
                            "mirror the paper) or the weight to 0")
        return self

    def stage_learning_rate(self, stage: Stage) -> float:
        """``learning_rate``, or the papers' rate of ``stage`` when it is null."""
        return self.learning_rate or PAPER_LEARNING_RATES[stage]

    def stage_weights(self, stage: Stage) -> CoarseLossWeights | DetailLossWeights:
        """The loss weights ``stage`` trains with (its section of the settings)."""
        return {"deca": self.deca, "coarse": self.coarse, "detail": self.detail}[stage]

    def check_stage(self, stage: Stage) -> None:
        """Refuse settings that switch off part of ``stage``'s method: a term > 0 without
        its network (always), and with ``paper: true`` everything listed in the class
        docstring. Data-dependent checks (MediaPipe points, segmentation masks) are the
        data module's.

        Raises:
            ValueError: one line naming the key (the caller adds the file).
        """
        weights = self.stage_weights(stage)
        if isinstance(weights, CoarseLossWeights):
            needs = (("emotion", "emotion_network", "a trained image emotion network (a "
                      "model.pt of 'emoca train emotion'; --emotion-network)"),
                     ("identity", "vggface2_weights", "the VGGFace2 face-recognition weights "
                      "(resnet50_ft_weight.pkl)"),
                     ("lip_reading", "lipreading_weights", "the lip-reading network's "
                      "weights (model.pth)"))
            for term, setting, what in needs:
                value = getattr(weights, term)
                if value > 0 and getattr(self, setting) is None:
                    raise ValueError(f"{stage}.{term} = {value} needs {setting}: {what} (set "
                                     f"{stage}.{term} to 0 to train without this term)")
        if not self.paper:
            return
        if stage == "detail" and self.detail.idmrf > 0 and self.vgg19_weights is None:
            raise ValueError(f"detail.idmrf = {self.detail.idmrf} needs vgg19_weights (local "
                             "torchvision VGG19 weights): configs that mirror the paper "
                             "(paper: true) train with ID-MRF")
        if stage == "deca" and not self.shape_consistency:
            raise ValueError("shape_consistency: false switches off DECA's shape-consistency "
                             "exchange; not allowed with paper: true")
        if stage in ("deca", "detail") and not self.use_segmentation:
            raise ValueError(f"use_segmentation: false trains the {stage} stage with the "
                             "rendered mask; not allowed with paper: true")
        if stage == "coarse" and self.model.expression_backbone == "none":
            raise ValueError("model.expression_backbone: none has no E_expression (DECA, not "
                             "EMOCA); not allowed with paper: true")


def load_emoca_settings(path: str | os.PathLike, init: str | os.PathLike | None = None,
                        assets: str | os.PathLike | None = None,
                        emotion_network: str | os.PathLike | None = None,
                        codes_table: str | os.PathLike | None = None) -> EmocaTrainingSettings:
    """:func:`~emoca_pipeline.training.settings.load_settings` for
    :class:`EmocaTrainingSettings`; relative file settings are made relative to the config
    file's folder. ``init``, ``assets``, ``emotion_network`` and ``codes_table``, when given,
    replace the file's (as given: relative to the working directory).

    Raises:
        FileNotFoundError: an override given but missing.
    """
    settings = relative_to_file(load_settings(path, EmocaTrainingSettings), path,
                                PATH_SETTINGS)
    changes = {}
    for name, override in (("init", init), ("assets", assets),
                           ("emotion_network", emotion_network), ("codes_table", codes_table)):
        if override is not None:
            if not Path(override).exists():
                raise FileNotFoundError(f"{name} {override}: no such file or folder")
            changes[name] = str(Path(override).resolve())
    return settings.model_copy(update=changes)
