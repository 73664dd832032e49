"""Converters from the original's weight files to this package's modules.

* ``resnet50_ft_weight.pkl`` (VGGFace2's face-recognition ResNet-50, converted from Caffe by
  cydonia999/VGGFace2-pytorch): a pickled dict of numpy arrays keyed like FRNet's state dict,
  ``fc.*`` included (8631 identities). Read with a restricted unpickler that resolves numpy
  array reconstruction only (the file is untrusted), as the original's ``load_state_dict``
  in ``gdl/layers/losses/FRNet.py`` expects it: every key must exist in the model.
* An original EmoCnn checkpoint (``gdl/models/EmoCnnModule.py``): a Lightning state dict with
  ``backbone.*`` (FRNet ResNet-50, its unused ``fc`` included) and ``linear.*`` (2048 -> 8
  expressions + valence + arousal), read with ``torch.load(weights_only=True)``.

Every mismatch is a ValueError naming the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from emoca_pipeline.flame.safe_pickle import UnsafePickleError, _RestrictedUnpickler
from emoca_pipeline.io.atomic import atomic_output
from emoca_pipeline.models.frnet import FRNetResNet50

__all__ = [
    "convert_emotion_weights",
    "emotion_state_from_emocnn",
    "frnet_state_from_vggface2",
    "load_frnet_weights",
    "load_vggface2_pickle",
]

# Globals a pickled dict of numpy arrays needs (protocol 2 from Python 2 or 3), nothing else.
_NUMPY_ONLY = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
               "numpy._core.numeric", "_codecs", "copyreg", "copy_reg", "__builtin__",
               "builtins", "collections")


class _NumpyOnlyUnpickler(_RestrictedUnpickler):
    """The FLAME allowlist narrowed to numpy arrays (no chumpy, scipy or torch objects)."""

    def find_class(self, module: str, name: str) -> Any:
        if module not in _NUMPY_ONLY and not module.startswith("numpy.dtypes"):
            raise UnsafePickleError(f"{self.source}: refusing to unpickle global "
                                    f"'{module}.{name}' (only numpy arrays are allowed)")
        return super().find_class(module, name)


def load_vggface2_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``resnet50_ft_weight.pkl``: {name: numpy array}.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the pickle names anything but numpy array machinery.
        ValueError: not a pickle of a dict of numpy arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VGGFace2 weights file not found")
    with open(path, "rb") as f:
        try:
            loaded = _NumpyOnlyUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as error:  # truncated or not a pickle: many exception types
            raise ValueError(f"{path}: not a readable pickle ({type(error).__name__}: "
                             f"{error})") from error
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: expected a pickled dict of numpy arrays, got "
                         f"{type(loaded).__name__}")
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: entry {key!r} is {type(value).__name__}, expected a "
                             "numpy array under a string key")
    return dict(loaded)


def _frnet_reference() -> dict[str, Tensor]:
    """Names, shapes and dtypes of an FRNetResNet50 state dict (built on the meta device)."""
    with torch.device("meta"):
        return FRNetResNet50().state_dict()


def _fit_frnet(trunk: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, Tensor]:
    """Check ``trunk`` (FRNet keys, no ``fc``) against FRNetResNet50, key for key and shape
    for shape; BatchNorm's ``num_batches_tracked`` (absent from Caffe conversions) is 0."""
    reference = _frnet_reference()
    state: dict[str, Tensor] = {}
    for key, value in trunk.items():
        if key not in reference:
            raise ValueError(f"{source}: unexpected key '{prefix}{key}' (not in the FRNet "
                             "ResNet-50)")
        tensor = torch.as_tensor(np.asarray(value)) if not isinstance(value, Tensor) else value
        if tuple(tensor.shape) != tuple(reference[key].shape):
            raise ValueError(f"{source}: key '{prefix}{key}' has shape {tuple(tensor.shape)}, "
                             f"the FRNet ResNet-50 needs {tuple(reference[key].shape)}")
        state[key] = tensor.to(reference[key].dtype).clone()
    for key, value in reference.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                state[key] = torch.zeros((), dtype=value.dtype)
            else:
                raise ValueError(f"{source}: missing key '{prefix}{key}' of the FRNet "
                                 "ResNet-50")
    return state


def frnet_state_from_vggface2(weights: Mapping[str, Any], source: str) -> dict[str, Tensor]:
    """VGGFace2 pickle entries -> an :class:`FRNetResNet50` state dict (``fc.*`` dropped)."""
    return _fit_frnet({k: v for k, v in weights.items() if not k.startswith("fc.")}, source)


def emotion_state_from_emocnn(state: Mapping[str, Tensor], source: str,
                              n_outputs: int | None = None) -> dict[str, Tensor]:
    """An original EmoCnn state dict -> an EmotionImageNet state dict.

    ``backbone.*`` -> ``trunk.*`` (``backbone.fc.*`` dropped), ``linear.*`` -> ``head.*``.
    n_outputs: the expected head width (expressions + 2), checked when given.
    """
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")
                and not k.startswith("backbone.fc.")}
    other = [k for k in state if not k.startswith(("backbone.", "linear."))]
    if other:
        raise ValueError(f"{source}: unexpected key '{other[0]}' in an EmoCnn checkpoint "
                         "(expected backbone.* and linear.*)")
    if not backbone:
        raise ValueError(f"{source}: no 'backbone.*' keys: not an EmoCnn ResNet-50 checkpoint")
    converted = {f"trunk.{k}": v for k, v in _fit_frnet(backbone, source, "backbone.").items()}
    for name in ("weight", "bias"):
        key = f"linear.{name}"
        if key not in state:
            raise ValueError(f"{source}: missing key '{key}' (the EmoCnn head)")
        converted[f"head.{name}"] = state[key].clone()
    width = converted["head.weight"].shape
    if len(width) != 2 or width[1] != FRNetResNet50.feature_dim:
        raise ValueError(f"{source}: key 'linear.weight' has shape {tuple(width)}, expected "
                         f"(outputs, {FRNetResNet50.feature_dim})")
    if n_outputs is not None and width[0] != n_outputs:
        raise ValueError(f"{source}: key 'linear.weight' has {width[0]} outputs, expected "
                         f"{n_outputs} (expressions + valence + arousal)")
    return converted


def _load_torch_state(path: Path) -> dict[str, Tensor]:
    from emoca_pipeline.models.emotion import load_state_dict_file

    return load_state_dict_file(path)


def load_frnet_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """FRNet ResNet-50 weights from a local file -> an :class:`FRNetResNet50` state dict.

    Accepts ``resnet50_ft_weight.pkl`` (by its ``.pkl`` suffix), or a torch file holding an
    FRNetResNet50 state dict, an EmotionImageNet one (``trunk.*``) or an EmoCnn checkpoint
    (``backbone.*``).
    """
    path = Path(path)
    if path.suffix == ".pkl":
        return frnet_state_from_vggface2(load_vggface2_pickle(path), str(path))
    state = _load_torch_state(path)
    for prefix in ("trunk.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            trunk = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)
                     and not k.startswith(f"{prefix}fc.")}
            return _fit_frnet(trunk, str(path), prefix)
    return _fit_frnet({k: v for k, v in state.items() if not k.startswith("fc.")}, str(path))


def convert_emotion_weights(source: str | os.PathLike, destination: str | os.PathLike,
                            n_expressions: int = 8) -> Path:
    """Write an EmotionImageNet weights file (``torch.save``, atomic) from an original file.

    source: an EmoCnn checkpoint (``backbone.*``/``linear.*``: trunk and head converted) or
    ``resnet50_ft_weight.pkl`` (trunk only; the head keeps a fresh initialisation, to be
    trained on AffectNet). Returns the destination path.
    """
    from emoca_pipeline.models.emotion import EmotionImageNet

    source, destination = Path(source), Path(destination)
    model = EmotionImageNet(n_expressions)
    if source.suffix == ".pkl":
        trunk = frnet_state_from_vggface2(load_vggface2_pickle(source), str(source))
        model.trunk.load_state_dict(trunk)
    else:
        state = _load_torch_state(source)
        model.load_state_dict(emotion_state_from_emocnn(state, str(source), n_expressions + 2))
    with atomic_output(destination) as tmp:
        torch.save(model.state_dict(), tmp)
    return destination
