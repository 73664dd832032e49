"""EMOCA's Lightning module: the model of one stage with its losses and optimiser.

The ``deca`` stage trains E_flame alone (with DECA's shape-consistency exchange among the
images of one identity), ``coarse`` trains E_expression (E_flame frozen and in eval mode),
``detail`` trains E_detail and D_detail with the detail-code exchange among images of one
identity. An exchange doubles the batch as the originals do (DECA ``trainer.py``
``training_step``): the codes as predicted, then the same codes with the shape (deca) or
detail (detail) codes permuted within each identity, every loss applied to both halves
against the same images. Every loss term, ``landmark_l1`` and (with ground truth in the
batch) ``exp_error`` are logged as ``train/...`` and ``val/...``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping

import pytorch_lightning as pl
import torch

from emoca_pipeline.losses.emoca import EmocaCoarseLoss, EmocaDetailLoss, weighted_landmark_loss
from emoca_pipeline.models.emoca import CoarseOutput, EmocaCodes, EmocaModel, Stage
from emoca_pipeline.training.emoca_data import GROUND_TRUTH_COLUMNS

__all__ = ["EmocaModule", "exchange_order"]

#: Per-image batch entries repeated when an exchange doubles the batch.
_DOUBLED = ("image", "landmarks", "mediapipe_landmarks", "seg_mask", *GROUND_TRUTH_COLUMNS)


def exchange_order(identity: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A permutation within each identity (the originals' per-identity ``new_order``).

    identity: (N,) identity codes. Returns (N,) int64 indices: row i takes the code of
    row ``order[i]``, an image of the same identity."""
    order = torch.arange(identity.shape[0])
    for value in identity.unique():
        members = torch.nonzero(identity == value).flatten()
        order[members] = members[torch.randperm(members.numel(), generator=generator)]
    return order


class EmocaModule(pl.LightningModule):
    """Model + losses + metrics of one stage (no data, no files).

    Args:
        model: the model; put in ``stage``'s mode.
        stage: "deca", "coarse" or "detail".
        coarse_loss: the deca and coarse stages' loss (None for the detail stage).
        detail_loss: the detail stage's loss (None for the deca and coarse stages).
        learning_rate: Adam's.
        seed: seed of the code exchanges.
        recalibration_batches: before each validation, recompute the trained modules'
            BatchNorm statistics over this many training batches (0: off).
        shape_consistency: deca stage: DECA's shape-code exchange in training steps.
        use_segmentation: use the batch's ``seg_mask`` (when it has one) as the photometric
            mask (deca stage) and the UV visibility mask (detail stage) instead of the
            rendered mask.
    """

    def __init__(self, model: EmocaModel, stage: Stage, coarse_loss: EmocaCoarseLoss | None,
                 detail_loss: EmocaDetailLoss | None, learning_rate: float, seed: int = 0,
                 recalibration_batches: int = 0, shape_consistency: bool = False,
                 use_segmentation: bool = False) -> None:
        super().__init__()
        self.recalibration_batches = recalibration_batches
        self.shape_consistency = shape_consistency
        self.use_segmentation = use_segmentation
        self.model = model.set_stage(stage)
        self.stage = stage
        self.coarse_loss = coarse_loss
        self.detail_loss = detail_loss
        self.learning_rate = learning_rate
        self.generator = torch.Generator().manual_seed(seed)

    def exchanged(self, batch: Mapping[str, torch.Tensor], codes: EmocaCodes, training: bool
                  ) -> tuple[dict[str, torch.Tensor], EmocaCodes]:
        """The batch and codes after the stage's exchange (training steps of the detail
        stage, and of the deca stage with ``shape_consistency``): 2N rows, the second half
        with the shape or detail codes permuted within each identity; otherwise as given."""
        exchanged = {"deca": "shape" if self.shape_consistency else None,
                     "detail": "detail"}.get(self.stage)
        if not training or exchanged is None or getattr(codes, exchanged) is None:
            return dict(batch), codes
        order = exchange_order(batch["identity"].cpu(), self.generator)
        order = order.to(codes.shape.device)
        values = {name: None if value is None else torch.cat([value, value], 0)
                  for name, value in codes._asdict().items()}
        code = getattr(codes, exchanged)
        values[exchanged] = torch.cat([code, code[order]], 0)
        doubled = {name: torch.cat([value, value], 0) if name in _DOUBLED else value
                   for name, value in batch.items()}
        return doubled, EmocaCodes(**values)

    def losses(self, batch: Mapping[str, torch.Tensor], training: bool
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The stage's total loss and its metrics (every term, ``landmark_l1``, and
        ``exp_error`` = mean |exp - ground truth| when the batch has it) on one batch;
        ``training`` enables the stage's code exchange."""
        codes = self.model.encode(batch["image"], with_detail=self.stage == "detail")
        batch, codes = self.exchanged(batch, codes, training)
        images, landmarks = batch["image"], batch["landmarks"]
        seg = batch.get("seg_mask") if self.use_segmentation else None
        out = self.model.decode(codes)
        coarse = out.coarse
        metrics: dict[str, torch.Tensor] = {}
        if self.stage in ("deca", "coarse"):
            assert self.coarse_loss is not None
            truth = {k: batch[k] for k in GROUND_TRUTH_COLUMNS if k in batch}
            identity_images = None
            if self.coarse_loss.identity is not None:
                identity_images = self.identity_images(codes, coarse, images)
            terms = self.coarse_loss(
                coarse.images, coarse.landmarks2d, codes.exp, images, landmarks,
                coarse.masks if seg is None else seg,
                predicted_mediapipe=coarse.mediapipe_landmarks,
                mediapipe_landmarks=batch.get("mediapipe_landmarks"),
                codes={"shape": codes.shape, "tex": codes.tex, "pose": codes.pose,
                       "cam": codes.cam, "light": codes.light},
                ground_truth=truth or None, identity_images=identity_images)
        else:
            assert out.detail is not None and self.detail_loss is not None
            targets = self.model.uv_targets(
                images, coarse if seg is None else coarse._replace(masks=seg))
            terms = self.detail_loss(out.detail.uv_texture, targets.uv_texture_gt,
                                     targets.uv_vis_mask, out.detail.uv_z, out.detail.uv_shading,
                                     out.detail.images, images, coarse.masks)
            metrics["photometric_coarse"] = (coarse.masks * (coarse.images - images).abs()
                                             ).mean().detach()
        metrics.update(terms.terms)
        metrics["landmark_l1"] = weighted_landmark_loss(coarse.landmarks2d, landmarks).detach()
        if "exp" in batch:
            metrics["exp_error"] = (codes.exp - batch["exp"]).abs().mean().detach()
        return terms.total, metrics

    def identity_images(self, codes: EmocaCodes, coarse: CoarseOutput, images: torch.Tensor
                        ) -> torch.Tensor:
        """DECA's input to the identity loss: the render with detached albedo and light
        over the input, ``albedo * shading * face_eye_mask + images * (1 - face_eye_mask)``.
        Returns (N, 3, H, W)."""
        ops = self.model.render(coarse.vertices, coarse.trans_vertices, coarse.albedo.detach(),
                                codes.light.detach())
        return ops.images * coarse.masks + images * (1 - coarse.masks)

    def trained_modules(self) -> list[torch.nn.Module]:
        """The modules this stage trains (their BatchNorm statistics move)."""
        m = self.model
        if self.stage == "detail":
            return [m.E_detail, m.D_detail]
        if m.flame_encoder_trains:
            return [m.E_flame]
        assert m.E_expression is not None
        return [m.E_expression]

    @torch.no_grad()
    def recalibrate_batchnorm(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> int:
        """Reset the trained modules' BatchNorm statistics and recompute them as exact
        averages over ``batches`` (forward passes in train mode, no grad); returns the
        number of batches used (0: statistics left as they were)."""
        norms = [module for part in self.trained_modules() for module in part.modules()
                 if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
        saved = [(n.momentum, n.running_mean.clone(), n.running_var.clone()) for n in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average
        was_training = self.model.training
        self.model.train()
        used = 0
        try:
            for batch in batches:
                self.model(batch["image"].to(self.device), with_detail=self.stage == "detail")
                used += 1
        finally:
            for norm, (momentum, mean, var) in zip(norms, saved, strict=True):
                norm.momentum = momentum
                if used == 0:
                    norm.running_mean.copy_(mean)
                    norm.running_var.copy_(var)
            self.model.train(was_training)
        return used

    def on_train_start(self) -> None:
        # Lightning keeps the modes modules come in with, and a loaded checkpoint comes in
        # eval mode: put the stage's trained parts in train mode (frozen ones stay in eval).
        self.model.train()

    def on_validation_epoch_start(self) -> None:
        count = self.recalibration_batches
        if count > 0 and not self.trainer.sanity_checking:
            loader = self.trainer.datamodule.train_dataloader()
            self.recalibrate_batchnorm(itertools.islice(loader, count))

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self.losses(batch, training=True)
        size = batch["image"].shape[0]
        self.log("train/loss", loss.detach(), batch_size=size)
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, batch_size=size)
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        loss, metrics = self.losses(batch, training=False)
        size = batch["image"].shape[0]
        self.log("val/loss", loss, batch_size=size, sync_dist=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items()}, batch_size=size,
                      sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = (self.model.detail_parameters() if self.stage == "detail"
                  else self.model.coarse_parameters())
        return torch.optim.Adam(params, lr=self.learning_rate)
