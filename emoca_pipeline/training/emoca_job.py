"""One EMOCA training stage (``emoca train deca|coarse|detail``).

:func:`train_emoca` runs one stage from a YAML config
(:class:`~emoca_pipeline.training.emoca_settings.EmocaTrainingSettings`) on a Parquet table
(:class:`~emoca_pipeline.training.emoca_data.EmocaDataModule`) through the shared fit job
(:mod:`emoca_pipeline.training.fit`: early stopping, checkpoints in ``OUT/checkpoints``, an
MLflow child run); the best weights go to ``OUT/model.pt``
(:func:`~emoca_pipeline.models.emoca.save_emoca_checkpoint`), a summary to
``OUT/training.json``.

The stages chain through ``init``: ``deca`` starts from the FLAME assets (E_flame's head set
to the mean face of the training crops, :func:`prepare_model`), ``coarse`` from the deca
model (``clone_expression_trunk: true`` copies the trained trunk into E_expression), and
``detail`` from the coarse model.

The loss networks are frozen and run on the input each was trained for
(:class:`ResizedInput`): the emotion network at the image size its model.pt records (with
its own input normalisation), the VGGFace2 identity and lip-reading networks at 224 px.
Settings that switch off part of the method fail before any MLflow run
(:meth:`~emoca_pipeline.training.emoca_settings.EmocaTrainingSettings.check_stage`, the
MediaPipe inputs, the segmentation masks of configs that mirror the paper); the terms whose
weight is 0 are listed in the run's ``emoca.losses_off`` tag and in training.json.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emoca_pipeline.losses.emoca import (
    CoarseLossWeights,
    EmocaCoarseLoss,
    EmocaDetailLoss,
)
from emoca_pipeline.losses.mediapipe import check_mediapipe_inputs
from emoca_pipeline.models.emoca import (
    EmocaModel,
    Stage,
    load_emoca_checkpoint,
    save_emoca_checkpoint,
)
from emoca_pipeline.models.emotion import EmotionImageNet, load_emotion_model
from emoca_pipeline.tracking import input_tags
from emoca_pipeline.training.emoca_data import EmocaDataModule
from emoca_pipeline.training.emoca_module import EmocaModule
from emoca_pipeline.training.emoca_settings import (
    STAGES,
    EmocaTrainingSettings,
    load_emoca_settings,
)
from emoca_pipeline.training.fit import finish_job, fit, tracked_run

__all__ = ["EmocaTrainingResult", "ResizedInput", "build_coarse_loss", "build_model",
           "fit_camera", "load_emotion_network", "prepare_model", "train_emoca"]

log = logging.getLogger(__name__)

#: Metrics in the line logged after each validation (those a stage has).
LOG_KEYS = ("val/loss", "val/landmark_l1", "val/photometric", "val/exp_error",
            "val/photometric_uv")


#: The image side the VGGFace2 identity and lip-reading networks were trained at.
LOSS_NETWORK_SIZE = 224


class ResizedInput(nn.Module):
    """A frozen loss network fed at its own image size: every (N, 3, H, W) tensor argument
    of ``forward`` and ``features`` is resized (bilinear, antialiased when shrinking) to
    ``image_size`` first; other arguments (landmarks in [-1, 1]) pass unchanged.

    Args:
        network: the frozen network or loss (kept in eval mode, no grad to its weights).
        image_size: the side it expects.
    """

    def __init__(self, network: nn.Module, image_size: int) -> None:
        super().__init__()
        self.network = network.requires_grad_(False)
        self.image_size = int(image_size)
        self.train(False)

    def train(self, mode: bool = True) -> ResizedInput:
        super().train(False)
        return self

    def resize(self, value: object) -> object:
        if not (isinstance(value, Tensor) and value.ndim == 4 and value.shape[1] == 3):
            return value
        if value.shape[-2:] == (self.image_size, self.image_size):
            return value
        return F.interpolate(value, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False, antialias=value.shape[-1] > self.image_size)

    def features(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> the network's features of the resized images."""
        return self.network.features(self.resize(images))

    def forward(self, *args: object) -> Tensor:
        return self.network(*(self.resize(value) for value in args))


def load_emotion_network(path: str | os.PathLike) -> ResizedInput:
    """The frozen image emotion network of the emotion-consistency loss, at its own input.

    ``path``: a model.pt of ``emoca train emotion`` (:func:`load_emotion_model`; its spec
    gives the image size, backbone and input normalisation), or a state dict that
    :class:`EmotionImageNet` reads (an original EmoCnn checkpoint: FRNet backbone, 224 px,
    no normalisation).

    Raises:
        FileNotFoundError: no such file. ValueError: a network on codes, or not a network.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"emotion_network {path}: no such file (a model.pt of "
                                "'emoca train emotion')")
    try:
        network, spec = load_emotion_model(path)
    except ValueError as error:
        if "not an emotion model file" not in str(error):
            raise
        try:  # an original EmoCnn checkpoint or a bare EmotionImageNet state dict
            network = EmotionImageNet(weights_path=path)
        except ValueError as second:
            raise ValueError(f"emotion_network {path}: neither a model.pt of 'emoca train "
                             f"emotion' nor EmotionImageNet/EmoCnn weights ({second})"
                             ) from None
        spec = {"input": "images", "image_size": LOSS_NETWORK_SIZE}
    if spec["input"] != "images":
        raise ValueError(f"emotion_network {path}: a network on 3DMM codes (EmoMLP); the "
                         "emotion-consistency loss needs an image network (input: images)")
    wrapped = ResizedInput(network, int(spec.get("image_size", LOSS_NETWORK_SIZE)))
    log.info("emotion network %s: %s backbone, %d px, input normalisation %s", path,
             getattr(network, "backbone", "?"), wrapped.image_size,
             getattr(network, "input_normalization", "?"))
    return wrapped


def build_coarse_loss(settings: EmocaTrainingSettings, weights: CoarseLossWeights
                      ) -> EmocaCoarseLoss:
    """The deca/coarse loss with the networks its terms > 0 need, loaded from the settings'
    local files (frozen, each at its own input size)."""
    emotion = identity = lip_reading = None
    if weights.emotion > 0 and settings.emotion_network is not None:
        emotion = load_emotion_network(settings.emotion_network)
    if weights.identity > 0 and settings.vggface2_weights is not None:
        from emoca_pipeline.losses.identity import VGGFace2IdentityLoss

        identity = ResizedInput(VGGFace2IdentityLoss(settings.vggface2_weights),
                                LOSS_NETWORK_SIZE)
    if weights.lip_reading > 0 and settings.lipreading_weights is not None:
        from emoca_pipeline.losses.lipreading import LipReadingLoss, load_lipreading_frontend

        lip_reading = ResizedInput(
            LipReadingLoss(load_lipreading_frontend(settings.lipreading_weights)),
            LOSS_NETWORK_SIZE)
    return EmocaCoarseLoss(weights, emotion, identity_loss=identity,
                           lip_reading_loss=lip_reading)


def losses_off(settings: EmocaTrainingSettings, stage: Stage) -> list[str]:
    """The stage's loss terms with weight 0 (off; logged as metrics where computed)."""
    weights = settings.stage_weights(stage)
    return [f"{stage}.{name}" for name, value in vars(weights).items() if value == 0]


class EmocaTrainingResult(NamedTuple):
    """model_path: best weights (our checkpoint); summary_path: training.json;
    run_id: the MLflow child run; val_metrics: the last validation metrics."""

    model_path: Path
    summary_path: Path
    run_id: str
    val_metrics: dict[str, float]


def fit_camera(template: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The orthographic camera (s, tx, ty) that best maps FLAME landmarks onto ``target``.

    Least squares over s and t of ``s * (P + t)`` with y flipped against the target.

    Args:
        template: (L, 2) landmarks projected with the unit camera (1, 0, 0), i.e. (x, -y).
        target: (L, 2) in the same screen space.
    """
    p = np.asarray(template, dtype=np.float64)
    q = np.asarray(target, dtype=np.float64)
    p_c, q_c = p - p.mean(0), q - q.mean(0)
    scale = float((p_c * q_c).sum() / (p_c ** 2).sum())
    if not scale > 0:
        raise ValueError("fit_camera: the target landmarks do not fit FLAME's (scale <= 0)")
    offset = q.mean(0) - scale * p.mean(0)  # = (s tx, -s ty)
    return np.array([scale, offset[0] / scale, -offset[1] / scale])


def prepare_model(model: EmocaModel, settings: EmocaTrainingSettings, stage: Stage,
                  data: EmocaDataModule | None = None) -> EmocaModel:
    """Stage set-up: the deca stage from assets starts E_flame's head at the camera of the
    mean training crop (``init_flame_head``, needs ``data``); the coarse stage clones
    E_flame's trunk into E_expression (``clone_expression_trunk``) and its expression head
    (``clone_expression_head``)."""
    if stage == "deca" and settings.init is None and settings.init_flame_head:
        if data is None:
            raise ValueError("prepare_model: init_flame_head needs the data module")
        from emoca_pipeline.render import project_landmarks

        zeros = torch.zeros(1, 1)
        with torch.no_grad():
            out = model.flame(zeros.new_zeros(1, model.settings.n_shape),
                              zeros.new_zeros(1, model.settings.n_exp), zeros.new_zeros(1, 6))
            template = project_landmarks(out.landmarks2d, torch.tensor([[1.0, 0.0, 0.0]]))
        cam = fit_camera(template[0].numpy(), data.mean_crop_landmarks())
        model.init_flame_head(cam)
        log.info("E_flame head initialised at camera %s", np.round(cam, 4).tolist())
    if stage == "coarse" and settings.clone_expression_trunk:
        if model.E_expression is None:
            raise ValueError("clone_expression_trunk: the model has no E_expression "
                             "(expression_backbone: none)")
        model.clone_expression_trunk()
    if stage == "coarse" and settings.clone_expression_head:
        model.clone_expression_head()
    return model


def build_model(settings: EmocaTrainingSettings) -> EmocaModel:
    """The model a stage starts from: ``init`` (our checkpoint) or fresh from ``assets``."""
    if settings.init is not None:
        model = load_emoca_checkpoint(settings.init)
        if model.settings != settings.model:
            raise ValueError(f"init {settings.init}: model settings {model.settings} differ "
                             f"from the config's {settings.model}")
        return model
    if settings.assets is None:
        raise ValueError("assets or init: one must be given (a FLAME asset folder or a "
                         "checkpoint to start from), in the config or as arguments")
    return EmocaModel.from_assets(settings.assets, settings.model,
                                  flame_weights=settings.flame_weights)


def train_emoca(
    stage: Stage,
    config_file: str | os.PathLike,
    table: str | os.PathLike,
    out_dir: str | os.PathLike,
    tracking_uri: str | None = None,
    results_dir: str | os.PathLike = "results",
    parent_run_id: str | None = None,
    model: EmocaModel | None = None,
    init: str | os.PathLike | None = None,
    assets: str | os.PathLike | None = None,
    experiment: str | None = None,
    emotion_network: str | os.PathLike | None = None,
    codes_table: str | os.PathLike | None = None,
) -> EmocaTrainingResult:
    """Train one stage; write ``OUT/model.pt``, ``OUT/training.json``, ``OUT/checkpoints/``.

    Args:
        stage: "deca", "coarse" or "detail".
        config_file: YAML :class:`EmocaTrainingSettings`.
        table: Parquet table (see :class:`EmocaDataModule`).
        out_dir: output folder.
        tracking_uri: MLflow URI (default ``sqlite:///<results_dir>/mlflow.db``).
        results_dir: the workflow's results folder.
        parent_run_id: MLflow parent (default ``$EMOCA_MLFLOW_PARENT_RUN`` or on demand).
        model: start from this model, as it is, instead of ``init``/``assets`` and
            :func:`prepare_model` (tests, notebooks).
        init, assets: override the config's ``init`` / ``assets`` (the workflow passes the
            previous stage's model.pt and the FLAME asset folder).
        experiment: MLflow experiment (default: the config's ``experiment``).
        emotion_network: overrides the config's ``emotion_network`` (a model.pt of ``emoca
            train emotion``).
        codes_table: overrides the config's ``codes_table`` (ground-truth codes joined on
            ``image_id`` when ``table`` is a manifest).
    """
    if stage not in STAGES:
        raise ValueError(f"stage: expected one of {', '.join(STAGES)}, got {stage!r}")
    started = time.perf_counter()
    settings = load_emoca_settings(config_file, init=init, assets=assets,
                                   emotion_network=emotion_network, codes_table=codes_table)
    try:
        settings.check_stage(stage)
    except ValueError as error:
        raise ValueError(f"{config_file}: {error}") from None
    out = Path(out_dir)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    data = EmocaDataModule(table, settings, stage)
    use_segmentation = settings.use_segmentation and stage != "coarse"
    if settings.paper and use_segmentation and not data.has_seg_mask:
        raise ValueError(f"{table}: no seg_mask column; the {stage} stage of a config that "
                         f"mirrors the paper ({config_file}: paper: true) uses segmentation "
                         "masks as the photometric mask")
    coarse_loss = detail_loss = None
    if stage == "detail":
        detail_loss = EmocaDetailLoss(settings.detail, settings.vgg19_weights)
    else:
        weights = settings.deca if stage == "deca" else settings.coarse
        try:
            coarse_loss = build_coarse_loss(settings, weights)
        except ValueError as error:  # a network file that does not fit
            raise ValueError(f"{config_file}: {error}") from None
    if model is None:
        model = prepare_model(build_model(settings), settings, stage, data)
    if stage != "detail":
        check_mediapipe_inputs(settings.stage_weights(stage), data.mediapipe,
                               model_has_mediapipe=model.flame.has_mediapipe,
                               source=f"{table} ({config_file})")
    lr = settings.stage_learning_rate(stage)
    module = EmocaModule(model, stage, coarse_loss, detail_loss, lr, settings.seed,
                         recalibration_batches=settings.recalibrate_batchnorm,
                         shape_consistency=settings.shape_consistency,
                         use_segmentation=use_segmentation)

    disabled = {}
    if detail_loss is not None and not detail_loss.idmrf.enabled and settings.detail.idmrf > 0:
        disabled["emoca.loss.idmrf"] = f"disabled: {detail_loss.idmrf.reason}"
    off = losses_off(settings, stage)
    if off:
        log.info("loss terms off (weight 0): %s", ", ".join(off))
    tags = {**disabled, "emoca.losses_off": ",".join(off) or "none",
            **input_tags(table=table)}
    params = {"stage": stage, "table": str(Path(table).resolve()), **settings.model_dump(),
              "learning_rate_used": lr}
    with tracked_run(settings, f"train_{stage}", params, tags,
                     tracking_uri, results_dir, parent_run_id, experiment,
                     f"{settings.name}-{stage}") as logger:
        result = fit(module, data, settings, out, logger, LOG_KEYS)
        if result.best_checkpoint is None and settings.recalibrate_batchnorm > 0:
            # No validation ran: calibrate the last weights' statistics.
            module.recalibrate_batchnorm(itertools.islice(data.train_dataloader(),
                                                          settings.recalibrate_batchnorm))
        model_path = save_emoca_checkpoint(out / "model.pt", module.model.eval(),
                                           extra={"stage": stage, "name": settings.name})
        summary = {"stage": stage, "name": settings.name, "disabled_losses": disabled,
                   "losses_off": off, "paper": settings.paper,
                   "synthetic_assist": settings.synthetic_assist,
                   "seconds": round(time.perf_counter() - started, 2)}
        summary_path = finish_job(logger, out, summary, [model_path], result, settings)
    return EmocaTrainingResult(model_path, summary_path, logger.run_id, result.val_metrics)
