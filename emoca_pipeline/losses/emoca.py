"""EMOCA's training losses: the coarse stage (emotion consistency, landmarks, photometric,
expression regulariser; EMOCA v2's MediaPipe landmark and lip-reading terms and DECA's
identity term as options) and the detail stage (UV photometric, ID-MRF, displacement
regularisers).

Constants are the original's (``gdl/layers/losses/DecaLosses.py``, ``gdl/models/DECA.py``);
landmark indices are 0-based in the 68-point scheme, coordinates in the crop's [-1, 1]
screen space.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EYE_PAIRS",
    "LIP_PAIRS",
    "MOUTH_CORNER_PAIRS",
    "CoarseLossWeights",
    "DetailLossWeights",
    "EmocaCoarseLoss",
    "EmocaDetailLoss",
    "EmotionConsistencyLoss",
    "IDMRFLoss",
    "LossTerms",
    "binary_erosion",
    "expression_regularizer",
    "ground_truth_code_loss",
    "light_regularizer",
    "landmark_weights",
    "photometric_loss",
    "relative_distance_loss",
    "shading_smoothness_loss",
    "weighted_landmark_loss",
]

log = logging.getLogger(__name__)

#: Upper/lower eyelid pairs (eye closure).
EYE_PAIRS: tuple[tuple[int, int], ...] = ((37, 41), (38, 40), (43, 47), (44, 46))
#: Inner-lip pairs (mouth opening).
LIP_PAIRS: tuple[tuple[int, int], ...] = ((61, 67), (62, 66), (63, 65))
#: Outer and inner mouth corners (mouth width).
MOUTH_CORNER_PAIRS: tuple[tuple[int, int], ...] = ((48, 54), (60, 64))
#: The detail stage's UV "face" patch (DECA's load_local_mask 'bbx', l r t b at 2048 px).
FACE_PATCH_2048 = (400, 1648, 400, 1648)


def landmark_weights(device: torch.device | None = None) -> Tensor:
    """The 68 weights of DECA's weighted landmark loss: 1, points 5-6 and 10-11 x2, nose
    27-35 x1.5 with 30, 31, 35 x3, mouth 48-67 x1.5 with 48, 54 x3. Returns (68,)."""
    w = torch.ones(68, device=device)
    w[5:7] = 2
    w[10:12] = 2
    w[27:36] = 1.5
    w[[30, 31, 35]] = 3
    w[48:68] = 1.5
    w[[48, 54]] = 3
    return w


def _check_landmarks(predicted: Tensor, target: Tensor, count: int = 68) -> None:
    if predicted.ndim != 3 or predicted.shape[1] != count or predicted.shape[2] < 2:
        raise ValueError(f"predicted landmarks: expected (N, {count}, 2), got "
                         f"{tuple(predicted.shape)}")
    if target.shape[:2] != predicted.shape[:2] or target.shape[2] < 2:
        raise ValueError(f"target landmarks: expected {tuple(predicted.shape[:2])} x 2, got "
                         f"{tuple(target.shape)}")


def weighted_landmark_loss(predicted: Tensor, target: Tensor, weights: Tensor | None = None
                           ) -> Tensor:
    """DECA's weighted 68-point L1: ``sum_n,i w_i (|dx| + |dy|) / (2 N sum_i w_i)``.

    Args:
        predicted: (N, 68, 2+) projected landmarks. target: (N, 68, 2+).
        weights: (68,), default :func:`landmark_weights`.
    """
    _check_landmarks(predicted, target)
    w = landmark_weights(predicted.device) if weights is None else weights
    diff = (predicted[..., :2] - target[..., :2]).abs().sum(-1)  # (N, 68)
    return (diff * w).sum() / (2.0 * predicted.shape[0] * w.sum())


def _pair_distances(points: Tensor, pairs: tuple[tuple[int, int], ...]) -> Tensor:
    first = points[:, [a for a, _ in pairs], :2]
    second = points[:, [b for _, b in pairs], :2]
    return torch.sqrt(((first - second) ** 2).sum(-1))


def relative_distance_loss(predicted: Tensor, target: Tensor,
                           pairs: tuple[tuple[int, int], ...]) -> Tensor:
    """Mean over images and pairs of ``| |p_a - p_b| - |t_a - t_b| |`` (DECA's eyed/lipd,
    EMOCA's mouth_corner; the MediaPipe versions in :mod:`emoca_pipeline.losses.mediapipe`).

    Args:
        predicted: (N, K, 2+), K points of one scheme (68, or the 105 MediaPipe points).
        target: (N, K, 2+). pairs: 0-based index pairs into the K points.
    """
    _check_landmarks(predicted, target, predicted.shape[1])
    if max(max(pair) for pair in pairs) >= predicted.shape[1]:
        raise ValueError(f"pairs index point {max(max(p) for p in pairs)}, the landmarks "
                         f"have {predicted.shape[1]}")
    return (_pair_distances(predicted, pairs) - _pair_distances(target, pairs)).abs().mean()


def photometric_loss(predicted: Tensor, images: Tensor, masks: Tensor) -> Tensor:
    """``mean(mask * |predicted - images|)`` over (N, 3, H, W) (mask (N, 1, H, W))."""
    if predicted.shape != images.shape:
        raise ValueError(f"predicted {tuple(predicted.shape)} and images "
                         f"{tuple(images.shape)} differ in shape")
    return (masks * (predicted - images).abs()).mean()


def expression_regularizer(exp: Tensor) -> Tensor:
    """``sum(exp ** 2) / 2`` over the batch (the original's, unnormalised)."""
    return (exp ** 2).sum() / 2


def light_regularizer(light: Tensor) -> Tensor:
    """DECA's white-light prior: mean squared deviation of each SH band's RGB values from
    their mean. light: (N, 9, 3)."""
    return ((light - light.mean(dim=2, keepdim=True)) ** 2).mean()


def ground_truth_code_loss(predicted: Tensor, target: Tensor) -> Tensor:
    """Mean squared error between predicted and ground-truth codes (N, K) (synthetic data
    only). Squared, not L1: L1 pulls each component to its conditional median, which is 0
    for an action that most faces do not show, so an L1-trained encoder learns to predict
    no expression at all."""
    if predicted.shape != target.shape:
        raise ValueError(f"ground-truth codes: predicted {tuple(predicted.shape)} and target "
                         f"{tuple(target.shape)} differ in shape")
    return (predicted - target).square().mean()


def shading_smoothness_loss(shading: Tensor) -> Tensor:
    """DECA's ``shading_smooth_loss``: mean squared x and y differences of (N, C, H, W)."""
    dx = shading[:, :, 1:-1, 1:] - shading[:, :, 1:-1, :-1]
    dy = shading[:, :, 1:, 1:-1] - shading[:, :, :-1, 1:-1]
    return (dx ** 2).mean() + (dy ** 2).mean()


def binary_erosion(mask: Tensor, kernel_size: int = 5) -> Tensor:
    """Binary erosion of (N, 1, H, W) masks with a square kernel (outside counts as 0).

    The mask is binarised first, every non-zero value counting as inside: the original
    (DECA/EMOCA ``util.binary_erosion``) hands the soft visibility mask to
    ``scipy.ndimage.binary_erosion``, which does exactly that. Returns 0/1 of mask's dtype.
    """
    binary = (mask != 0).to(mask.dtype)
    padded = F.pad(binary, [kernel_size // 2] * 4, value=0.0)
    return -F.max_pool2d(-padded, kernel_size, stride=1)


class EmotionConsistencyLoss(nn.Module):
    """MSE between a frozen emotion network's pooled features of the render and the input.

    The network is any module with ``features(images) -> (N, F)``
    (:class:`~emoca_pipeline.models.EmotionImageNet` gives the 2048-d ResNet-50 features);
    it is frozen and kept in eval mode; the input branch runs without grad.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        if not callable(getattr(network, "features", None)):
            raise ValueError("emotion network: needs a features(images) method")
        self.network = network.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> EmotionConsistencyLoss:
        super().train(False)  # never trained, BatchNorm statistics fixed
        return self

    def forward(self, rendered: Tensor, images: Tensor) -> Tensor:
        """rendered, images: (N, 3, H, W) in [0, 1] -> scalar."""
        with torch.no_grad():
            target = self.network.features(images)
        return F.mse_loss(self.network.features(rendered), target)


def _check_weights(weights: object) -> None:
    """Every loss weight of a settings object is >= 0 (one line naming the bad one)."""
    for name, value in vars(weights).items():
        if value < 0:
            raise ValueError(f"{name}: loss weight must be >= 0, got {value}")


@dataclass(frozen=True)
class CoarseLossWeights:
    """Weights of the coarse terms (defaults: EMOCA's final coarse stage).

    emotion: emotion consistency (0 disables). landmark: weighted 68-point L1 (0: logged
    only). eye_distance, lip_distance, mouth_corner: relative landmark losses.
    photometric: masked L1. expression_reg: x sum(exp^2)/2.
    mediapipe_landmark, mediapipe_eye_distance, mediapipe_lip_distance,
    mediapipe_mouth_corner: EMOCA v2's terms on the 105 MediaPipe points (the original's
    lmk_weight_mp, eyed_mp, lipd_mp, lipd_mp; see :mod:`emoca_pipeline.losses.mediapipe`).
    lip_reading: EMOCA v2's lip-reading feature loss (:mod:`emoca_pipeline.losses.lipreading`).
    identity: DECA's VGGFace2 identity loss (DECA's coarse stage: 0.2; 0 in EMOCA's).
    A term > 0 whose network or inputs are missing is an error.
    shape_reg, tex_reg: x sum(code^2)/2; light_reg: white-light prior (DECA's coarse
    pre-training: 1e-4, 1e-4, 1.0; 0 in EMOCA's stage, where E_flame is frozen).
    gt_shape, gt_exp, gt_pose, gt_cam: auxiliary mean-squared losses on ground-truth codes (the
    camera in the crop's frame). Not in the paper: synthetic data has ground truth, and on
    a CPU budget of a few minutes it is what makes a from-scratch E_flame usable. 0: off
    (the term is still logged when the batch has ground truth).
    """

    emotion: float = 1.0
    landmark: float = 0.0
    eye_distance: float = 0.5
    lip_distance: float = 0.5
    mouth_corner: float = 0.5
    photometric: float = 2.0
    expression_reg: float = 1e-4
    mediapipe_landmark: float = 0.0
    mediapipe_eye_distance: float = 0.0
    mediapipe_lip_distance: float = 0.0
    mediapipe_mouth_corner: float = 0.0
    lip_reading: float = 0.0
    identity: float = 0.0
    shape_reg: float = 0.0
    tex_reg: float = 0.0
    light_reg: float = 0.0
    gt_shape: float = 0.0
    gt_exp: float = 0.0
    gt_pose: float = 0.0
    gt_cam: float = 0.0

    def __post_init__(self) -> None:
        _check_weights(self)


@dataclass(frozen=True)
class DetailLossWeights:
    """Weights of the detail terms (defaults: DECA/EMOCA's detail stage).

    photometric_uv: L1 on the UV face patch (DECA's sfsw[0] = 5). idmrf: ID-MRF on the
    same patch (sfsw x mrfwr = 5 x 0.05). photometric: image-space detail L1 (logged
    only at 0). z_reg, z_diff, z_sym: displacement magnitude, shading smoothness, symmetry.
    """

    photometric_uv: float = 5.0
    idmrf: float = 0.25
    photometric: float = 0.0
    z_reg: float = 0.005
    z_diff: float = 0.005
    z_sym: float = 0.005

    def __post_init__(self) -> None:
        _check_weights(self)


class LossTerms(NamedTuple):
    """total: the weighted sum (scalar, with grad). terms: every term, weighted, detached
    (also the ones with weight 0, as metrics)."""

    total: Tensor
    terms: dict[str, Tensor]


def _sum(parts: dict[str, tuple[Tensor, float]]) -> LossTerms:
    total = None
    terms = {}
    for name, (value, weight) in parts.items():
        weighted = value * weight if weight > 0 else value.detach()
        terms[name] = weighted.detach()
        if weight > 0:
            total = weighted if total is None else total + weighted
    if total is None:
        raise ValueError("every loss weight is 0: nothing to train")
    return LossTerms(total, terms)


def _required(name: str, weight: float, module: nn.Module | None, what: str) -> None:
    if weight > 0 and module is None:
        raise ValueError(f"{name} = {weight} needs {what} (set {name} to 0 to train without "
                         "this term)")


class EmocaCoarseLoss(nn.Module):
    """The coarse-stage loss.

    Args:
        weights: :class:`CoarseLossWeights`.
        emotion_network: a frozen network with ``features``; required when
            ``weights.emotion > 0``.
        identity_loss: a :class:`~emoca_pipeline.losses.identity.VGGFace2IdentityLoss`;
            required when ``weights.identity > 0``.
        lip_reading_loss: a :class:`~emoca_pipeline.losses.lipreading.LipReadingLoss`;
            required when ``weights.lip_reading > 0``.

    Raises:
        ValueError: a weight > 0 whose network is missing.
    """

    def __init__(self, weights: CoarseLossWeights | None = None,
                 emotion_network: nn.Module | None = None,
                 identity_loss: nn.Module | None = None,
                 lip_reading_loss: nn.Module | None = None) -> None:
        super().__init__()
        self.weights = weights or CoarseLossWeights()
        w = self.weights
        _required("emotion", w.emotion, emotion_network,
                  "a trained emotion network (EmotionImageNet weights)")
        _required("identity", w.identity, identity_loss,
                  "the VGGFace2 face-recognition network (resnet50_ft_weight.pkl)")
        _required("lip_reading", w.lip_reading, lip_reading_loss,
                  "the lip-reading network's weights")
        self.emotion = EmotionConsistencyLoss(emotion_network) if emotion_network else None
        self.identity = identity_loss
        self.lip_reading = lip_reading_loss

    def forward(self, predicted_images: Tensor, predicted_landmarks: Tensor, exp: Tensor,
                images: Tensor, landmarks: Tensor, masks: Tensor,
                predicted_mediapipe: Tensor | None = None,
                mediapipe_landmarks: Tensor | None = None,
                codes: Mapping[str, Tensor] | None = None,
                ground_truth: Mapping[str, Tensor] | None = None,
                identity_images: Tensor | None = None) -> LossTerms:
        """Shapes: predicted_images, images (N, 3, H, W); predicted_landmarks, landmarks
        (N, 68, 2) in [-1, 1]; exp (N, n_exp); masks (N, 1, H, W).

        predicted_mediapipe: (N, 105, 2) projected MediaPipe points; mediapipe_landmarks:
        the detected ones, (N, 105, 2) or the full (N, 478, 2) mesh (the 105 are selected).
        Both are required when a ``mediapipe_*`` weight is > 0.
        codes: the other predicted codes by name (shape (N, n_shape), tex (N, n_tex), pose
        (N, 6), cam (N, 3), light (N, 9, 3)) for the regularisers and ground-truth terms.
        ground_truth: true codes by name (shape, exp, pose, cam), widths as predicted.
        identity_images: (N, 3, H, W) the identity loss's generated image (DECA: the
        render with detached albedo and light pasted over the input, ``albedo * shading *
        face_eye_mask + images * (1 - face_eye_mask)``); required when ``identity > 0``."""
        w = self.weights
        parts: dict[str, tuple[Tensor, float]] = {
            "landmark": (weighted_landmark_loss(predicted_landmarks, landmarks), w.landmark),
            "eye_distance": (relative_distance_loss(predicted_landmarks, landmarks, EYE_PAIRS),
                             w.eye_distance),
            "lip_distance": (relative_distance_loss(predicted_landmarks, landmarks, LIP_PAIRS),
                             w.lip_distance),
            "mouth_corner": (relative_distance_loss(predicted_landmarks, landmarks,
                                                    MOUTH_CORNER_PAIRS), w.mouth_corner),
            "photometric": (photometric_loss(predicted_images, images, masks), w.photometric),
            "expression_reg": (expression_regularizer(exp), w.expression_reg),
        }
        codes = dict(codes or {})
        for name, weight, term in (("shape", w.shape_reg, expression_regularizer),
                                   ("tex", w.tex_reg, expression_regularizer),
                                   ("light", w.light_reg, light_regularizer)):
            if name in codes:
                parts[f"{name}_reg"] = (term(codes[name]), weight)
            elif weight > 0:
                raise ValueError(f"{name}_reg > 0 needs the predicted {name} codes")
        predicted = {**codes, "exp": exp}
        for name in ("shape", "exp", "pose", "cam"):
            weight = getattr(w, f"gt_{name}")
            if ground_truth is not None and name in ground_truth and name in predicted:
                parts[f"gt_{name}"] = (ground_truth_code_loss(predicted[name],
                                                              ground_truth[name]), weight)
            elif weight > 0:
                raise ValueError(f"gt_{name} > 0 needs predicted and ground-truth {name} "
                                 "codes (a table with ground-truth columns)")
        if self.emotion is not None:
            parts["emotion"] = (self.emotion(predicted_images, images), w.emotion)
        parts.update(self._mediapipe_terms(predicted_mediapipe, mediapipe_landmarks))
        if self.identity is not None:
            if identity_images is None:
                raise ValueError("identity > 0 needs identity_images (the render over the "
                                 "input image)")
            parts["identity"] = (self.identity(identity_images, images), w.identity)
        if self.lip_reading is not None:
            parts["lip_reading"] = (self.lip_reading(images, predicted_images, landmarks,
                                                     predicted_landmarks), w.lip_reading)
        return _sum(parts)

    def _mediapipe_terms(self, predicted: Tensor | None, detected: Tensor | None
                         ) -> dict[str, tuple[Tensor, float]]:
        from emoca_pipeline.losses import mediapipe as mp

        w = self.weights
        terms = {"mediapipe_landmark": (mp.mediapipe_landmark_loss, w.mediapipe_landmark),
                 "mediapipe_eye_distance": (mp.mediapipe_eye_distance_loss,
                                            w.mediapipe_eye_distance),
                 "mediapipe_lip_distance": (mp.mediapipe_lip_distance_loss,
                                            w.mediapipe_lip_distance),
                 "mediapipe_mouth_corner": (mp.mediapipe_mouth_corner_loss,
                                            w.mediapipe_mouth_corner)}
        if predicted is None or detected is None:
            on = [f"{name} = {weight}" for name, (_, weight) in terms.items() if weight > 0]
            if on:
                missing = "projected" if predicted is None else "detected"
                raise ValueError(f"{on[0]} needs the {missing} MediaPipe points (a FLAME "
                                 "model with the MediaPipe embedding and a table with the "
                                 "'mediapipe_landmarks' column)")
            return {}
        if detected.shape[1] == mp.MEDIAPIPE_MESH_POINTS:
            detected = mp.mediapipe_targets(detected)
        return {name: (loss(predicted, detected), weight)
                for name, (loss, weight) in terms.items()}


class _VGG19Features(nn.Module):
    """VGG19 ``features`` up to relu4_1, ImageNet-normalised input (DECA's VGG19FeatLayer).

    The original names layers by counting convs and ReLUs together within a block (conv3_1,
    relu3_2, conv3_3, ...), so its "relu3_2" and "relu4_2" are the ReLUs after conv3_1 and
    conv4_1 (``features[11]``, ``features[20]``): those are the layers used here.
    """

    def __init__(self, weights: dict[str, Tensor]) -> None:
        super().__init__()
        import torchvision

        features = torchvision.models.vgg19(weights=None).features
        state = {k[len("features."):] if k.startswith("features.") else k: v
                 for k, v in weights.items() if not k.startswith("classifier.")}
        features.load_state_dict(state)
        self.features = features[:21]  # ... conv4_1 (19), relu4_1 (20)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        x = (images - self.mean) / self.std
        out = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index == 11:
                out["relu3_1"] = x
            elif index == 20:
                out["relu4_1"] = x
        return out


def mrf_loss(generated: Tensor, target: Tensor, bias: float = 1.0, sigma: float = 0.5
             ) -> Tensor:
    """The ID-MRF term of one feature layer (DECA's ``IDMRFLoss.mrf_loss``, 1x1 patches).

    generated, target: (N, C, H, W). Returns the sum over images of
    ``-log(mean_j max_i cs_ij)`` with ``cs`` the contextual similarity of cosine distances.
    """
    mean_t = target.mean(1, keepdim=True)
    gen = generated - mean_t
    tar = target - mean_t
    gen = gen / gen.norm(p=2, dim=1, keepdim=True)
    tar = tar / tar.norm(p=2, dim=1, keepdim=True)
    batch, channels = tar.shape[:2]
    # cosine[n, i, j]: target patch i vs generated position j (the original's conv2d).
    cosine = torch.bmm(tar.reshape(batch, channels, -1).transpose(1, 2),
                       gen.reshape(batch, channels, -1))
    distance = -(cosine - 1) / 2
    relative = distance / (distance.min(dim=1, keepdim=True)[0] + 1e-5)
    similarity = torch.exp((bias - relative) / sigma)
    similarity = similarity / similarity.sum(dim=1, keepdim=True)
    best = similarity.max(dim=2)[0]  # over generated positions, per target patch
    return -torch.log(best.mean(dim=1)).sum()


class IDMRFLoss(nn.Module):
    """DECA's ID-MRF loss on VGG19 relu3_1 and relu4_1 (style) + relu4_1 (content) (the
    original's "relu3_2"/"relu4_2", see :class:`_VGG19Features`).

    Args:
        vgg19_weights: local torchvision VGG19 state-dict file (``features.*`` keys; read
            with ``torch.load(weights_only=True)``). When None or missing, the loss is
            disabled: ``enabled`` is False, a warning is logged and forward returns 0.
    """

    def __init__(self, vgg19_weights: str | os.PathLike | None) -> None:
        super().__init__()
        self.enabled = False
        self.reason = ""
        self.vgg: _VGG19Features | None = None
        if vgg19_weights is None or not Path(vgg19_weights).is_file():
            self.reason = ("no VGG19 weights configured" if vgg19_weights is None
                           else f"{vgg19_weights}: VGG19 weights file not found")
            log.warning("ID-MRF loss disabled: %s", self.reason)
            return
        from emoca_pipeline.models.emotion import load_state_dict_file

        self.vgg = _VGG19Features(load_state_dict_file(vgg19_weights)).eval()
        self.vgg.requires_grad_(False)
        self.enabled = True

    def train(self, mode: bool = True) -> IDMRFLoss:
        super().train(False)
        return self

    def forward(self, generated: Tensor, target: Tensor) -> Tensor:
        """generated, target: (N, 3, H, W) RGB in [0, 1] -> scalar."""
        if not self.enabled or self.vgg is None:
            return generated.new_zeros(())
        gen, tar = self.vgg(generated), self.vgg(target)
        style = mrf_loss(gen["relu3_1"], tar["relu3_1"]) + mrf_loss(gen["relu4_1"],
                                                                     tar["relu4_1"])
        content = mrf_loss(gen["relu4_1"], tar["relu4_1"])
        return style + content


def face_patch(maps: Tensor, size: int = 256) -> Tensor:
    """DECA's UV face patch (rows/cols 400..1648 of 2048, scaled to the map) resized to
    ``size`` x ``size`` bilinearly. maps: (N, C, uv, uv)."""
    uv = maps.shape[-1]
    left, right, top, bottom = (int(v * uv / 2048) for v in FACE_PATCH_2048)
    patch = maps[:, :, top:bottom, left:right]
    return F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False)


class EmocaDetailLoss(nn.Module):
    """The detail-stage loss.

    Args:
        weights: :class:`DetailLossWeights`.
        vgg19_weights: local VGG19 weights for ID-MRF (see :class:`IDMRFLoss`).
        patch_size: side the UV face patch is resized to (DECA: 256).
    """

    def __init__(self, weights: DetailLossWeights | None = None,
                 vgg19_weights: str | os.PathLike | None = None, patch_size: int = 256) -> None:
        super().__init__()
        self.weights = weights or DetailLossWeights()
        self.patch_size = patch_size
        self.idmrf = IDMRFLoss(vgg19_weights if self.weights.idmrf > 0 else None)

    def forward(self, uv_texture: Tensor, uv_texture_gt: Tensor, uv_vis_mask: Tensor,
                uv_z: Tensor, uv_shading: Tensor, detail_images: Tensor, images: Tensor,
                masks: Tensor) -> LossTerms:
        """Shapes: uv_texture, uv_texture_gt, uv_shading (N, 3, uv, uv); uv_vis_mask, uv_z
        (N, 1, uv, uv); detail_images, images (N, 3, H, W); masks (N, 1, H, W)."""
        w = self.weights
        texture = face_patch(uv_texture, self.patch_size)
        target = face_patch(uv_texture_gt, self.patch_size)
        visible = face_patch(uv_vis_mask, self.patch_size)
        parts: dict[str, tuple[Tensor, float]] = {
            "photometric_uv": ((texture * visible - target * visible).abs().mean(),
                               w.photometric_uv),
            "photometric": (photometric_loss(detail_images, images, masks), w.photometric),
            "z_reg": (uv_z.abs().mean(), w.z_reg),
            "z_diff": (shading_smoothness_loss(uv_shading), w.z_diff),
            "z_sym": (((1 - binary_erosion(uv_vis_mask))
                       * (uv_z - torch.flip(uv_z, [-1]).detach()).abs()).sum(), w.z_sym),
        }
        if self.idmrf.enabled:
            parts["idmrf"] = (self.idmrf(texture * visible, target * visible), w.idmrf)
        return _sum(parts)
