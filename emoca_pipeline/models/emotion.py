"""Emotion recognition networks: an image network and an MLP on 3DMM codes (EmoMLP).

Both predict AffectNet's 8 expression classes plus valence and arousal and return an
:class:`EmotionOutput`. The image network's pooled 2048-d ResNet-50 features are what the
EMOCA emotion-consistency loss compares between the input and the rendered image
(the original's ``emo_feat_2``).

Facts matched from the original EMOCA code (``gdl/models/EmoCnnModule.py``,
``EmoMLP.py``, ``MLP.py``, ``EmotionRecognitionModuleBase.py``):

* image network: ResNet-50 trunk -> one Linear(2048, 8 + 1 + 1); expression outputs go
  through log-softmax, valence and arousal have no activation. The trunk is the original's
  VGGFace2 ResNet-50 (:class:`~emoca_pipeline.models.frnet.FRNetResNet50`); original
  EmoCnn checkpoints and ``resnet50_ft_weight.pkl`` load through
  :mod:`emoca_pipeline.models.converters`.
* EmoMLP: input cat[shape 100, exp 50, jaw 3], 4 x [Linear 2048, BatchNorm1d, LeakyReLU
  0.2], Linear -> 8 + 1 + 1, log-softmax on the expression part.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from emoca_pipeline.data.affectnet import (
    AFFECTNET_CLASSES,
    filter_affectnet_labels,
)

__all__ = [
    "AFFECTNET_CLASSES",
    "EmoMLP",
    "EmoMLPSettings",
    "EmotionImageNet",
    "EmotionOutput",
    "filter_affectnet_labels",
    "load_state_dict_file",
    "EMOTION_MODEL_FORMAT",
    "INPUT_KINDS",
    "build_emotion_model",
    "load_emotion_model",
    "save_emotion_model",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EmotionOutput(NamedTuple):
    """Predictions of an emotion network for a batch of N samples.

    expr_logits: (N, C) log-probabilities of the C expression classes (log-softmax applied,
        so ``exp`` sums to 1 per row; still valid logits for ``softmax``/``argmax``).
    valence: (N,) predicted valence (no activation; AffectNet's range is [-1, 1]).
    arousal: (N,) predicted arousal (no activation).
    features: (N, F) the last hidden representation: pooled trunk features for
        :class:`EmotionImageNet` (2048; 512 with ResNet-18), (N, hidden_dim) for
        :class:`EmoMLP`.
    """

    expr_logits: torch.Tensor
    valence: torch.Tensor
    arousal: torch.Tensor
    features: torch.Tensor


def _split_head(output: torch.Tensor, n_expressions: int) -> tuple[torch.Tensor, ...]:
    """(N, C + 2) head output -> log-probabilities (N, C), valence (N,), arousal (N,), all
    float32: under bf16 autocast the head's output is bf16, whose log-softmax rows are
    normalised only to ~1e-2."""
    output = output.float()
    expr_log_probs = F.log_softmax(output[:, :n_expressions], dim=1)
    return expr_log_probs, output[:, n_expressions], output[:, n_expressions + 1]


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save`` using the safe weights-only unpickler.

    A Lightning-style checkpoint (a dict with a ``state_dict`` entry) is unwrapped.
    Raises FileNotFoundError when ``path`` does not exist and ValueError when the file does
    not hold a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a weights-only torch file ({error})") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in loaded.items()
    ):
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors)")
    return dict(loaded)


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images: expected a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images: expected shape (N, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images: expected a float tensor in [0, 1], got dtype {images.dtype}")


class EmotionImageNet(nn.Module):
    """ResNet emotion network: images -> 8 expression log-probabilities, valence, arousal.

    Args:
        n_expressions: number of expression classes (AffectNet: 8).
        weights_path: optional local file, never downloaded (see :meth:`load_weights`).
        backbone: ``"frnet"`` (default, the original EmoCnn's VGGFace2 ResNet-50: stride on
            the first 1x1 conv of a downsampling block, ``MaxPool2d(3, 2, 0,
            ceil_mode=True)``), ``"torchvision"`` (torchvision's ResNet-50: the same
            parameter names and shapes, different features; for networks trained with it)
            or ``"resnet18"`` (torchvision's ResNet-18, 512-d features: a lighter option for
            CPU demos, 2.8x faster per float32 training step than a ResNet-50 at 64 px,
            benchmarks/bench_train.py; not EMOCA's).
        input_normalization: ``"none"`` (EMOCA's convention: the network sees [0, 1] RGB as
            is) or ``"imagenet"`` (subtract ImageNet mean, divide by std inside the model,
            for trunks pretrained that way).

    Input images are (N, 3, H, W) float RGB, nominally in [0, 1] and 224x224; the adaptive
    pooling of ResNet accepts other sizes (>= 32 px). Values are not range-checked
    because rendered images with SH shading may slightly exceed 1.
    """

    def __init__(
        self,
        n_expressions: int = len(AFFECTNET_CLASSES),
        weights_path: str | os.PathLike | None = None,
        input_normalization: Literal["none", "imagenet"] = "none",
        backbone: Literal["frnet", "torchvision", "resnet18"] = "frnet",
    ) -> None:
        super().__init__()
        if backbone not in ("frnet", "torchvision", "resnet18"):
            raise ValueError(f"backbone: expected 'frnet', 'torchvision' or 'resnet18', got "
                             f"{backbone!r}")
        if n_expressions < 1:
            raise ValueError(f"n_expressions: must be >= 1, got {n_expressions}")
        if input_normalization not in ("none", "imagenet"):
            raise ValueError(
                f"input_normalization: expected 'none' or 'imagenet', got {input_normalization!r}"
            )
        self.n_expressions = n_expressions
        self.input_normalization = input_normalization
        self.backbone = backbone
        if backbone == "frnet":
            from emoca_pipeline.models.frnet import FRNetResNet50

            self.trunk: nn.Module = FRNetResNet50()
            self.feature_dim = FRNetResNet50.feature_dim
        else:
            trunk = getattr(torchvision.models,
                            "resnet18" if backbone == "resnet18" else "resnet50")(weights=None)
            self.feature_dim = trunk.fc.in_features  # 512 or 2048
            trunk.fc = nn.Identity()  # the trunk ends at the average-pooled features
            self.trunk = trunk
        self.head = nn.Linear(self.feature_dim, n_expressions + 2)
        self.register_buffer(
            "mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights_path is not None:
            self.load_weights(weights_path)

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load weights from a local file (torch files with ``torch.load(weights_only=True)``).

        Accepted: this module's state dict (``trunk.*`` and ``head.*``, loaded strictly); an
        original EmoCnn checkpoint (``backbone.*``/``linear.*``, converted); VGGFace2's
        ``resnet50_ft_weight.pkl`` (numpy-only unpickler; trunk only); a plain ResNet-50
        state dict (``conv1.weight`` ...; its ``fc.*`` ignored). The last two leave the head
        freshly initialised. The original's files need ``backbone="frnet"``.
        """
        from emoca_pipeline.models import converters

        is_pickle = Path(path).suffix == ".pkl"
        state = {} if is_pickle else load_state_dict_file(path)
        if (is_pickle or any(k.startswith("backbone.") for k in state)) \
                and self.backbone != "frnet":
            raise ValueError(f"{path}: original EmoCnn/VGGFace2 weights need "
                             f"backbone='frnet', this network has {self.backbone!r}")
        if is_pickle:
            self.trunk.load_state_dict(converters.frnet_state_from_vggface2(
                converters.load_vggface2_pickle(path), str(path)))
            return
        if any(key.startswith("backbone.") for key in state):
            state = converters.emotion_state_from_emocnn(state, str(path), self.n_expressions + 2)
        try:
            if any(key.startswith(("trunk.", "head.")) for key in state):
                result = self.load_state_dict(state, strict=False)
            else:
                trunk_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
                result = self.trunk.load_state_dict(trunk_state, strict=False)
        except RuntimeError as error:  # tensor shape mismatches
            first_line = str(error).strip().splitlines()[-1].strip()
            raise ValueError(f"{path}: state dict does not fit EmotionImageNet: {first_line}") \
                from error
        problems = []
        if result.missing_keys:
            problems.append(f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[0]})")
        if result.unexpected_keys:
            problems.append(
                f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})"
            )
        if problems:
            raise ValueError(f"{path}: state dict does not match EmotionImageNet: "
                             + ", ".join(problems))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features, the input of EMOCA's emotion-consistency loss.

        images: (N, 3, H, W) float RGB in [0, 1]. Returns (N, F): F = 2048 (512 for the
        ``resnet18`` backbone). For that loss the
        network is trained beforehand and frozen: ``.eval().requires_grad_(False)``.
        """
        _check_images(images)
        if self.input_normalization == "imagenet":
            images = (images - self.mean) / self.std
        return self.trunk(images)

    def forward(self, images: torch.Tensor) -> EmotionOutput:
        """images: (N, 3, H, W) float RGB in [0, 1] -> EmotionOutput (features (N, F))."""
        features = self.features(images)
        expr, valence, arousal = _split_head(self.head(features), self.n_expressions)
        return EmotionOutput(expr, valence, arousal, features)


@dataclass(frozen=True)
class EmoMLPSettings:
    """Architecture of :class:`EmoMLP` (defaults: the EMOCA paper's EmoMLP).

    shape_dim / exp_dim / jaw_dim: sizes of the FLAME shape, expression and jaw-pose codes.
    use_shape / use_expression / use_jaw: which codes form the input (concatenated in this
        order); at least one must be on.
    hidden_dim, n_hidden_layers: width and number of the [Linear, BatchNorm1d, LeakyReLU]
        blocks.
    n_expressions: number of expression classes.
    negative_slope: LeakyReLU slope.
    """

    shape_dim: int = 100
    exp_dim: int = 50
    jaw_dim: int = 3
    use_shape: bool = True
    use_expression: bool = True
    use_jaw: bool = True
    hidden_dim: int = 2048
    n_hidden_layers: int = 4
    n_expressions: int = len(AFFECTNET_CLASSES)
    negative_slope: float = 0.2

    def __post_init__(self) -> None:
        if not (self.use_shape or self.use_expression or self.use_jaw):
            raise ValueError("EmoMLPSettings: at least one of use_shape, use_expression, "
                             "use_jaw must be True")
        for name in ("shape_dim", "exp_dim", "jaw_dim", "hidden_dim", "n_expressions"):
            if getattr(self, name) < 1:
                raise ValueError(f"EmoMLPSettings.{name}: must be >= 1, got {getattr(self, name)}")
        if self.n_hidden_layers < 0:
            raise ValueError(
                f"EmoMLPSettings.n_hidden_layers: must be >= 0, got {self.n_hidden_layers}"
            )

    @property
    def parts(self) -> tuple[tuple[str, int], ...]:
        """(name, size) of the enabled input codes, in concatenation order."""
        enabled = (
            ("shape", self.shape_dim, self.use_shape),
            ("expression", self.exp_dim, self.use_expression),
            ("jaw", self.jaw_dim, self.use_jaw),
        )
        return tuple((name, size) for name, size, used in enabled if used)

    @property
    def input_dim(self) -> int:
        """Length of the concatenated input code (153 by default)."""
        return sum(size for _, size in self.parts)


class EmoMLP(nn.Module):
    """MLP on reconstructed 3DMM codes -> expression log-probabilities, valence, arousal.

    ``forward(shape=(N, 100), expression=(N, 50), jaw=(N, 3))``; a code switched off in the
    settings must be left as None. BatchNorm1d needs N >= 2 in training mode.
    """

    def __init__(self, settings: EmoMLPSettings | None = None) -> None:
        super().__init__()
        self.settings = settings or EmoMLPSettings()
        s = self.settings
        layers: list[nn.Module] = []
        width = s.input_dim
        for _ in range(s.n_hidden_layers):
            layers += [
                nn.Linear(width, s.hidden_dim),
                nn.BatchNorm1d(s.hidden_dim),
                nn.LeakyReLU(s.negative_slope),
            ]
            width = s.hidden_dim
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, s.n_expressions + 2)

    def concat_inputs(
        self,
        shape: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        jaw: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Check the codes against the settings and concatenate them -> (N, input_dim)."""
        given = {"shape": shape, "expression": expression, "jaw": jaw}
        enabled = dict(self.settings.parts)
        codes = []
        batch = None
        for name, code in given.items():
            if name not in enabled:
                if code is not None:
                    raise ValueError(
                        f"{name}: this EmoMLP is built with use_{name}=False; pass None"
                    )
                continue
            if code is None:
                raise ValueError(f"{name}: required by this EmoMLP, got None")
            if code.ndim != 2 or code.shape[1] != enabled[name]:
                raise ValueError(
                    f"{name}: expected shape (N, {enabled[name]}), got {tuple(code.shape)}"
                )
            if batch is not None and code.shape[0] != batch:
                raise ValueError(f"{name}: batch size {code.shape[0]} differs from {batch}")
            batch = code.shape[0]
            codes.append(code)
        return torch.cat(codes, dim=1)

    def forward(
        self,
        shape: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        jaw: torch.Tensor | None = None,
    ) -> EmotionOutput:
        """Codes (N, 100) / (N, 50) / (N, 3) -> EmotionOutput (features (N, hidden_dim))."""
        features = self.hidden(self.concat_inputs(shape, expression, jaw))
        expr, valence, arousal = _split_head(self.head(features), self.settings.n_expressions)
        return EmotionOutput(expr, valence, arousal, features)


# ---------------------------------------------------------------------------------------
# Saved models (``model.pt``)

#: The two kinds of input an emotion network can take.
INPUT_KINDS: tuple[str, ...] = ("codes", "images")

#: Format tag of emotion ``model.pt`` files.
EMOTION_MODEL_FORMAT = "emoca-emotion-model/1"


def build_emotion_model(
    input: Literal["codes", "images"],
    mlp: EmoMLPSettings | None = None,
    weights_path: str | os.PathLike | None = None,
    input_normalization: Literal["none", "imagenet"] = "none",
    backbone: Literal["frnet", "torchvision", "resnet18"] = "frnet",
) -> EmoMLP | EmotionImageNet:
    """A fresh network for ``input``: :class:`EmoMLP` (``mlp`` settings) on codes, the
    :class:`EmotionImageNet` (``backbone``, optional local ``weights_path``) on
    images."""
    if input == "codes":
        return EmoMLP(mlp or EmoMLPSettings())
    if input == "images":
        return EmotionImageNet(len(AFFECTNET_CLASSES), weights_path=weights_path,
                               input_normalization=input_normalization, backbone=backbone)
    raise ValueError(f"input: expected 'codes' or 'images', got {input!r}")


def save_emotion_model(path: str | os.PathLike, model: EmoMLP | EmotionImageNet, name: str,
                       image_size: int = 224) -> Path:
    """Write ``model.pt`` atomically: ``{"state_dict": ..., "emoca_emotion": spec}``, the
    weights and how to rebuild the network (``image_size``: the crop side an image network
    was trained on). Its state dict is what :class:`EmotionImageNet`'s ``weights_path``
    accepts, which is how EMOCA's emotion-consistency loss gets its frozen network."""
    from emoca_pipeline.io.atomic import atomic_output

    if isinstance(model, EmoMLP):
        spec: dict[str, Any] = {"input": "codes", "mlp": asdict(model.settings)}
    else:
        spec = {"input": "images", "image_size": int(image_size),
                "input_normalization": model.input_normalization, "backbone": model.backbone}
    spec.update(format=EMOTION_MODEL_FORMAT, name=name, classes=list(AFFECTNET_CLASSES))
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        torch.save({"state_dict": state, "emoca_emotion": spec}, tmp)
    return path


def load_emotion_model(path: str | os.PathLike) -> tuple[EmoMLP | EmotionImageNet, dict]:
    """Read a ``model.pt`` of :func:`save_emotion_model` (weights-only unpickler) ->
    (network in eval mode, its spec: input, name, classes, mlp or image_size and backbone).

    Raises:
        FileNotFoundError: no such file. ValueError: not a model.pt of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a weights-only torch file ({error})") from error
    spec = content.get("emoca_emotion") if isinstance(content, Mapping) else None
    if not isinstance(spec, Mapping) or spec.get("format") != EMOTION_MODEL_FORMAT:
        raise ValueError(f"{path}: not an emotion model file (expected format "
                         f"{EMOTION_MODEL_FORMAT})")
    try:
        if spec["input"] == "codes":
            model: EmoMLP | EmotionImageNet = EmoMLP(EmoMLPSettings(**spec["mlp"]))
        else:
            # Files written before the backbone was recorded hold torchvision trunks.
            model = EmotionImageNet(len(spec["classes"]),
                                    input_normalization=spec["input_normalization"],
                                    backbone=spec.get("backbone", "torchvision"))
        model.load_state_dict(content["state_dict"])
    except (KeyError, TypeError, RuntimeError) as error:
        message = " ".join(str(error).split())[:300]
        raise ValueError(f"{path}: cannot rebuild the network ({message})") from error
    return model.eval(), dict(spec)
