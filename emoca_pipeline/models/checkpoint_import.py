"""Import the released EMOCA models and DECA's ``deca_model.tar`` into this code.

``emoca import-checkpoint MODEL_DIR OUT`` calls :func:`import_checkpoint`. What it reads:

* an EMOCA model folder: ``cfg.yaml`` (sections ``coarse:`` / ``detail:``, each with a
  ``model:`` mapping of n_shape, n_exp, ...; the ``detail`` one is used when present) and
  ``detail/checkpoints/**/*.ckpt`` (Lightning 1.4 checkpoints; ``last`` is skipped and the
  lowest number after the last "=" in the file stem wins, as the original loader picks it).
  FLAME's buffers (``deca.flame.*``), the renderer's topology (``deca.render.faces``,
  ``raw_uvcoords``, ``uvfaces``), the UV face-eye mask and the fixed displacement come from
  the checkpoint: they define the geometry the model was trained with. The buffers keep the
  shapes of the files they came from (``full_lmk_faces_idx`` (1, 68), ``full_lmk_bary_coords``
  (1, 68, 3)); EMOCA v2's ``FLAME_mediapipe`` adds ``lmk_faces_idx_mediapipe`` (105,) and
  ``lmk_bary_coords_mediapipe`` (105, 3). The 105 MediaPipe-mesh vertex indices are not in
  the checkpoint: they come from ``mediapipe_landmark_embedding.npz`` (``landmark_indices``)
  in the asset folder when one is given, else from the original's own list (the
  ``EMBEDDING_INDICES`` its MediaPipe losses index with), and the report says which.
* DECA's ``deca_model.tar`` (a dict of ``E_flame``, ``E_detail``, ``D_detail`` state dicts):
  it has no FLAME buffers, so a FLAME asset folder must be given.

Every file goes through ``torch.load(weights_only=True)``. Lightning checkpoints may also
hold hyper-parameter objects (OmegaConf containers...); each class such a file names is
rebuilt as an inert stand-in (never imported or called), the same rule as the FLAME loader's
chumpy shim. Keys are mapped onto :class:`~emoca_pipeline.models.emoca.EmocaModel`;
missing and unexpected keys are reported (the original loads with ``strict=False`` and says
nothing), loss networks (``deca.id_loss.``, ``deca.perceptual_loss.``, ...) are ignored.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
import yaml

from emoca_pipeline.assets.landmarks import MEDIAPIPE_LANDMARK_INDICES
from emoca_pipeline.flame import FLAME, drop_leading_ones
from emoca_pipeline.flame.io import MEDIAPIPE_FILE
from emoca_pipeline.flame.model import LANDMARK_BUFFER_NDIM
from emoca_pipeline.models.emoca import (
    EmocaModel,
    EmocaModelSettings,
    flame_from_buffers,
    save_emoca_checkpoint,
)
from emoca_pipeline.render import MeshRenderer

__all__ = [
    "CheckpointImportError",
    "ImportReport",
    "best_checkpoint",
    "import_checkpoint",
    "map_original_state_dict",
    "read_released_settings",
    "to_original_state_dict",
]

log = logging.getLogger(__name__)

#: The original FLAME layer's buffer names -> ours.
FLAME_BUFFERS: dict[str, str] = {
    "faces_tensor": "faces",
    "v_template": "v_template",
    "shapedirs": "shapedirs",
    "posedirs": "posedirs",
    "J_regressor": "j_regressor",
    "parents": "parents",
    "lbs_weights": "lbs_weights",
    "lmk_faces_idx": "static_lmk_faces",
    "lmk_bary_coords": "static_lmk_bary",
    "dynamic_lmk_faces_idx": "dynamic_lmk_faces",
    "dynamic_lmk_bary_coords": "dynamic_lmk_bary",
    "full_lmk_faces_idx": "full_lmk_faces",
    "full_lmk_bary_coords": "full_lmk_bary",
    "neck_kin_chain": "neck_kin_chain",
    "lmk_faces_idx_mediapipe": "mp_lmk_faces",
    "lmk_bary_coords_mediapipe": "mp_lmk_bary",
}
#: Our buffers that the original registers with a leading axis of length 1 (DECA's
#: landmark_embedding.npy stores the full 68-point set so).
_ORIGINAL_LEADING_ONE = ("full_lmk_faces", "full_lmk_bary")
_NETWORKS = ("E_flame", "E_expression", "E_detail", "D_detail")
#: Prefixes of loss networks and training-only state, dropped without comment.
IGNORED_PREFIXES = ("deca.id_loss.", "deca.perceptual_loss.", "deca.vgg_loss.", "emonet_loss.",
                    "emotion_mlp.", "au_loss.", "lipread_loss.", "deca.render.")
_MAX_SHIMS = 200


class CheckpointImportError(ValueError):
    """A released model folder or file that cannot be imported (the message names it)."""


class ImportReport(NamedTuple):
    """What :func:`import_checkpoint` did.

    out: the written checkpoint. source: the file the weights came from.
    settings: the model's settings. missing: our keys the source did not fill.
    unexpected: source keys that map to nothing. ignored: how many loss-network and
    renderer-internal keys were dropped on purpose. notes: what was taken from elsewhere
    or is absent (where the MediaPipe landmark indices came from, or why there are none).
    """

    out: Path
    source: Path
    settings: EmocaModelSettings
    missing: list[str]
    unexpected: list[str]
    ignored: int
    notes: list[str]


# ------------------------------------------------------------------------- reading


class _InertObject:
    """Stand-in for any non-tensor class a checkpoint names (hyper-parameter containers)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses are built this way
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:  # list subclasses
        self.__dict__.setdefault("values", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("values", []).extend(values)


def _shim_class(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")
    return type(name or full_name, (_InertObject,), {"__module__": module or "shim"})


def load_untrusted_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)``, with inert stand-ins for non-tensor classes.

    Raises:
        FileNotFoundError: no such file.
        CheckpointImportError: not a readable torch file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    shims: list[tuple[type, str]] = []
    for _ in range(_MAX_SHIMS):
        try:
            with torch.serialization.safe_globals(shims):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            message = str(error)
            container = next((kind for word, kind in (("SETITEM", dict), ("APPEND", list),
                                                      ("EXTEND", list)) if
                              f"Can only {word}" in message), None)
            if container is not None and shims and shims[-1][0] is not container:
                # A dict/list subclass: rebuild it as the plain container it extends.
                shims[-1] = (container, shims[-1][1])
                continue
            found = re.search(r"GLOBAL ([\w.]+)", message)
            if found is None or found.group(1).startswith("torch."):
                raise CheckpointImportError(f"{path}: refused by the weights-only loader: "
                                            f"{str(error).splitlines()[0]}") from error
            name = found.group(1)
            if any(known == name for _, known in shims):
                raise CheckpointImportError(f"{path}: cannot rebuild {name} safely") from error
            shims.append((_shim_class(name), name))
        except (RuntimeError, OSError, EOFError) as error:
            raise CheckpointImportError(f"{path}: not a readable torch checkpoint "
                                        f"({str(error).splitlines()[0]})") from error
    raise CheckpointImportError(f"{path}: names more than {_MAX_SHIMS} non-tensor classes")


def best_checkpoint(folder: str | os.PathLike) -> Path:
    """The checkpoint the original loader picks in ``folder`` (searched recursively):
    ``last*`` skipped, lowest number after the last "=" in the file stem.

    Raises:
        CheckpointImportError: no candidate, or a stem without a number after "=".
    """
    folder = Path(folder)
    candidates = [p for p in sorted(folder.rglob("*.ckpt")) if not p.stem.startswith("last")]
    if not candidates:
        raise CheckpointImportError(f"{folder}: no *.ckpt file other than 'last'")
    scored = []
    for path in candidates:
        try:
            scored.append((float(path.stem.split("=")[-1]), str(path), path))
        except ValueError:
            raise CheckpointImportError(f"{path}: no score after the last '=' in the file "
                                        "name") from None
    return min(scored)[2]


def read_released_settings(cfg_path: str | os.PathLike) -> EmocaModelSettings:
    """Model settings from a released ``cfg.yaml`` (``detail:`` section, else ``coarse:``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointImportError: not YAML, or neither section has a ``model`` mapping.
    """
    cfg_path = Path(cfg_path)
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: no such file (a released EMOCA folder has one)")
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise CheckpointImportError(f"{cfg_path}: not valid YAML "
                                    f"({' '.join(str(error).split())})") from error
    section = None
    for name in ("detail", "coarse"):
        if isinstance(cfg, Mapping) and isinstance(cfg.get(name), Mapping) \
                and isinstance(cfg[name].get("model"), Mapping):
            section = cfg[name]["model"]
            break
    if section is None:
        raise CheckpointImportError(f"{cfg_path}: expected a 'detail:' or 'coarse:' section "
                                    "with a 'model:' mapping")
    defaults = EmocaModelSettings()
    values: dict[str, Any] = {}
    for field in ("n_shape", "n_tex", "n_exp", "n_pose", "n_cam", "n_light", "n_detail",
                  "image_size", "uv_size"):
        values[field] = int(section.get(field, getattr(defaults, field)))
    backbone = section.get("expression_backbone")
    deca_class = str(section.get("deca_class", ""))
    values["expression_backbone"] = (
        "deca_clone" if backbone == "deca_clone" or (backbone is None and deca_class == "ExpDECA")
        else "none")
    if backbone not in (None, "deca_clone"):
        raise CheckpointImportError(f"{cfg_path}: expression_backbone {backbone!r} is not "
                                    "supported (only 'deca_clone')")
    try:
        return EmocaModelSettings(**values)
    except ValueError as error:
        raise CheckpointImportError(f"{cfg_path}: {error}") from error


# ------------------------------------------------------------------------- mapping


def map_original_state_dict(state: Mapping[str, torch.Tensor]
                            ) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Original keys -> ours. Returns (mapped, unmapped keys, count of ignored keys).

    ``deca.<net>.*`` -> ``<net>.*``; ``deca.flame.<buffer>`` -> ``flame.<ours>`` (landmark
    buffers without the original's leading axis of length 1); ``deca.uv_face_eye_mask`` ->
    ``render.uv_face_eye_mask``; ``deca.fixed_uv_dis`` -> ``fixed_uv_dis``;
    ``deca.flametex.*`` -> ``flametex.mean``/``basis``. The renderer's own buffers are read
    separately (:func:`_renderer_from_original`).
    """
    mapped: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    ignored = 0
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            unmapped.append(key)
            continue
        net = next((n for n in _NETWORKS if key.startswith(f"deca.{n}.")), None)
        if net is not None:
            mapped[key[len("deca."):]] = value
        elif key.startswith("deca.flame."):
            name = key[len("deca.flame."):]
            if name in FLAME_BUFFERS:
                ours = FLAME_BUFFERS[name]
                if ours in LANDMARK_BUFFER_NDIM:
                    value = drop_leading_ones(value, LANDMARK_BUFFER_NDIM[ours])
                mapped["flame." + ours] = value
            elif name in ("eye_pose", "neck_pose"):
                ignored += 1
                if value.abs().max() > 0:
                    log.warning("%s is not zero; this code poses eyes and neck at zero", key)
            else:
                unmapped.append(key)
        elif key == "deca.uv_face_eye_mask":
            mapped["render.uv_face_eye_mask"] = value
        elif key == "deca.fixed_uv_dis":
            mapped["fixed_uv_dis"] = value
        elif key in ("deca.flametex.texture_mean", "deca.flametex.MU"):
            mapped["flametex.mean"] = value.reshape(1, -1)
        elif key in ("deca.flametex.texture_basis", "deca.flametex.PC"):
            mapped["flametex.basis"] = value.reshape(-1, value.shape[-1]).T.contiguous()
        elif key.startswith(IGNORED_PREFIXES):
            ignored += 1
        else:
            unmapped.append(key)
    return mapped, unmapped, ignored


def to_original_state_dict(model: EmocaModel) -> dict[str, torch.Tensor]:
    """The inverse mapping: ``model`` in the released checkpoints' key layout (``deca.*``)
    and buffer shapes, renderer topology included (no MediaPipe mesh indices: the original
    does not store them). :func:`import_checkpoint` of the result reproduces ``model`` when
    those indices are EMOCA's."""
    inverse = {ours: orig for orig, ours in FLAME_BUFFERS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        head, _, rest = key.partition(".")
        if head in _NETWORKS:
            out["deca." + key] = value.clone()
        elif head == "flame" and rest in inverse:
            out["deca.flame." + inverse[rest]] = (
                value[None].clone() if rest in _ORIGINAL_LEADING_ONE else value.clone())
        elif key == "render.uv_face_eye_mask":
            out["deca.uv_face_eye_mask"] = value.clone()
        elif key == "fixed_uv_dis":
            out["deca.fixed_uv_dis"] = value.clone()
        elif key == "flametex.mean":
            out["deca.flametex.texture_mean"] = value.clone()
        elif key == "flametex.basis":
            out["deca.flametex.texture_basis"] = value.T.contiguous()[None]
    out["deca.flame.eye_pose"] = torch.zeros(1, 6)
    out["deca.flame.neck_pose"] = torch.zeros(1, 3)
    render = model.render
    out["deca.render.faces"] = render.faces[None].clone()
    out["deca.render.raw_uvcoords"] = render.uvs[None].clone()
    out["deca.render.uvfaces"] = render.face_uvs[None].clone()
    return out


def _renderer_from_original(state: Mapping[str, torch.Tensor], mapped: Mapping[str, Any],
                            settings: EmocaModelSettings, face_mask: Any, source: Path
                            ) -> MeshRenderer:
    eye_mask = mapped.get("render.uv_face_eye_mask")
    eye = eye_mask.reshape(eye_mask.shape[-2:]) if eye_mask is not None else None
    try:
        return MeshRenderer.from_deca_state_dict(
            state, prefix="deca.render.", image_size=settings.image_size,
            uv_size=settings.uv_size, uv_face_eye_mask=eye,
            uv_face_mask=face_mask if face_mask is not None else eye)
    except ValueError as error:
        raise CheckpointImportError(f"{source}: {error}") from error


def _fixed_displacement(value: torch.Tensor | None, size: int) -> torch.Tensor:
    if value is None:
        return torch.zeros(size, size)
    value = value.reshape(value.shape[-2:]).float()
    if value.shape != (size, size):  # the original falls back to zeros of 512 x 512
        value = F.interpolate(value[None, None], size=(size, size), mode="bilinear",
                              align_corners=False)[0, 0]
    return value


def _complete_mediapipe(mapped: dict[str, Any], assets_flame: FLAME | None,
                        assets_folder: Path | None, source: Path) -> str:
    """Give the mapped FLAME buffers their MediaPipe mesh indices (the original does not
    store them), or the whole MediaPipe embedding from the assets when the checkpoint has
    none (EMOCA v1). Returns one line saying where they came from, or why there are none.
    """
    given = assets_flame if assets_flame is not None and assets_flame.has_mediapipe else None
    npz = f"{assets_folder / MEDIAPIPE_FILE}" if given is not None and assets_folder else None
    names = ("flame.mp_lmk_faces", "flame.mp_lmk_bary")
    if (names[0] in mapped) != (names[1] in mapped):
        raise CheckpointImportError(f"{source}: holds only one of deca.flame."
                                    "lmk_faces_idx_mediapipe and lmk_bary_coords_mediapipe")
    if names[0] not in mapped:
        if given is None:
            return ("no MediaPipe landmarks: the checkpoint has none (EMOCA v1) and no "
                    f"{MEDIAPIPE_FILE} was given (--assets DIR)")
        for name in ("mp_lmk_faces", "mp_lmk_bary", "mp_landmark_indices"):
            mapped["flame." + name] = getattr(given, name).clone()
        return (f"MediaPipe landmarks: the checkpoint has none (EMOCA v1); added the "
                f"{given.mp_lmk_faces.shape[0]} points of {npz}")
    faces = mapped[names[0]]
    count = faces.shape[0]
    if given is not None and given.mp_landmark_indices.shape == (count,) \
            and bool((given.mp_landmark_indices >= 0).all()):
        mapped["flame.mp_landmark_indices"] = given.mp_landmark_indices.clone()
        note = f"MediaPipe landmark indices from {npz}"
        if not torch.equal(given.mp_lmk_faces.cpu(), faces.long()):
            note += " (its landmark faces differ from the checkpoint's; the checkpoint's are kept)"
        return note
    why = (f"no {MEDIAPIPE_FILE} was given (--assets DIR)" if given is None
           else f"{npz} has no landmark_indices for {count} points")
    if count == len(MEDIAPIPE_LANDMARK_INDICES):
        mapped["flame.mp_landmark_indices"] = torch.from_numpy(MEDIAPIPE_LANDMARK_INDICES.copy())
        return (f"MediaPipe landmark indices: EMOCA's own list (the EMBEDDING_INDICES of its "
                f"MediaPipe losses), since {why}")
    mapped["flame.mp_landmark_indices"] = torch.full((count,), -1, dtype=torch.long)
    return f"MediaPipe landmark indices unknown (-1) for the {count} points: {why}"


# ------------------------------------------------------------------------- import


def _emoca_source(model_dir: Path) -> tuple[Path, EmocaModelSettings]:
    settings = read_released_settings(model_dir / "cfg.yaml")
    for stage in ("detail", "coarse"):
        folder = model_dir / stage / "checkpoints"
        if folder.is_dir() and any(folder.rglob("*.ckpt")):
            return best_checkpoint(folder), settings
    raise CheckpointImportError(f"{model_dir}: no detail/checkpoints/**/*.ckpt (nor "
                                "coarse/checkpoints)")


def import_checkpoint(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    assets: str | os.PathLike | None = None,
) -> ImportReport:
    """Convert a released EMOCA folder or a DECA ``deca_model.tar`` into our checkpoint.

    Args:
        model_dir: an EMOCA model folder (``cfg.yaml`` + ``detail/checkpoints``), a
            ``deca_model.tar`` file, or a folder holding ``deca_model.tar``.
        out: the model file to write (atomically): a ``model.pt`` that
            :func:`~emoca_pipeline.models.emoca.load_emoca_checkpoint` reads, as
            ``emoca reconstruct --model OUT`` and ``emoca train coarse --init OUT`` do.
        assets: a FLAME asset folder: required for DECA's tar (it has no FLAME buffers);
            for EMOCA it supplies ``uv_face_mask.png`` and the MediaPipe mesh indices of
            ``mediapipe_landmark_embedding.npz`` (neither is in the checkpoint).

    Raises:
        FileNotFoundError: ``model_dir`` (or a file it must hold) does not exist.
        CheckpointImportError: the folder or file does not fit (one line naming it).
    """
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(f"{model_dir}: no such model folder or file")
    deca_tar = model_dir if model_dir.is_file() else model_dir / "deca_model.tar"
    face_mask = None
    flame_assets = None
    if (model_dir / "cfg.yaml").is_file():
        source, settings = _emoca_source(model_dir)
        loaded = load_untrusted_checkpoint(source)
        state = loaded.get("state_dict") if isinstance(loaded, Mapping) else None
        if not isinstance(state, Mapping):
            raise CheckpointImportError(f"{source}: no 'state_dict' in the checkpoint")
    elif deca_tar.is_file():
        source, settings = deca_tar, EmocaModelSettings(expression_backbone="none")
        loaded = load_untrusted_checkpoint(source)
        if not isinstance(loaded, Mapping) or "E_flame" not in loaded:
            raise CheckpointImportError(f"{source}: expected DECA's dict of E_flame, E_detail "
                                        "and D_detail state dicts")
        state = {f"deca.{net}.{k}": v for net in ("E_flame", "E_detail", "D_detail")
                 for k, v in (loaded.get(net) or {}).items()}
        if assets is None:
            raise CheckpointImportError(f"{source}: DECA's checkpoint has no FLAME buffers; "
                                        "pass the FLAME asset folder (assets=...)")
    else:
        raise CheckpointImportError(f"{model_dir}: neither a released EMOCA folder (cfg.yaml) "
                                    "nor DECA's deca_model.tar")

    mapped, unexpected, ignored = map_original_state_dict(state)
    notes: list[str] = []
    if assets is not None:
        from emoca_pipeline.flame.assets import load_flame_assets

        flame_assets = load_flame_assets(assets, n_shape=settings.n_shape, n_exp=settings.n_exp,
                                         n_tex=settings.n_tex)
        face_mask = flame_assets.uv_face_mask
    if any(key.startswith("flame.") for key in mapped):
        notes.append(_complete_mediapipe(
            mapped, flame_assets.flame if flame_assets is not None else None,
            flame_assets.folder if flame_assets is not None else None, source))
        try:
            flame = flame_from_buffers(mapped, settings.n_shape, settings.n_exp)
        except ValueError as error:
            raise CheckpointImportError(f"{source}: {error}") from error
        renderer = _renderer_from_original(state, mapped, settings, face_mask, source)
    else:  # DECA's tar: geometry from the asset folder
        from emoca_pipeline.flame.assets import make_renderer

        assert flame_assets is not None
        flame = flame_assets.flame
        if not flame.has_mediapipe:
            notes.append(f"no MediaPipe landmarks: {flame_assets.folder} has no "
                         f"{MEDIAPIPE_FILE}")
        for key, value in flame.state_dict().items():
            mapped["flame." + key] = value
        if flame_assets.texture is not None:
            mapped["flametex.mean"] = flame_assets.texture.mean
            mapped["flametex.basis"] = flame_assets.texture.basis
        renderer = make_renderer(flame_assets, settings.image_size, settings.uv_size)
        mapped.setdefault("fixed_uv_dis", torch.from_numpy(flame_assets.fixed_displacement))
    # The renderer was built from the source's topology (or the assets): its buffers are set.
    for key, value in renderer.state_dict().items():
        mapped["render." + key] = value
    displacement = _fixed_displacement(mapped.get("fixed_uv_dis"), settings.uv_size)
    mapped["fixed_uv_dis"] = displacement
    texture = None
    if "flametex.mean" in mapped:
        from emoca_pipeline.flame.texture import FlameTexture

        mean, basis = mapped["flametex.mean"], mapped["flametex.basis"]
        side = int(round((mean.shape[-1] / 3) ** 0.5))
        texture = FlameTexture(mean.numpy(), basis.T[None].numpy(), map_size=side,
                               uv_size=settings.uv_size)
    model = EmocaModel(flame, renderer, displacement, texture, settings)
    own = model.state_dict()
    for key, value in mapped.items():
        if key in own and own[key].shape != value.shape:
            raise CheckpointImportError(f"{source}: {key} has shape {tuple(value.shape)}, "
                                        f"the model expects {tuple(own[key].shape)}")
    result = model.load_state_dict(mapped, strict=False)
    missing = sorted(result.missing_keys)
    unexpected = sorted(set(unexpected) | set(result.unexpected_keys))
    if missing:
        log.warning("%s: %d keys not in the source (kept at initial values), e.g. %s",
                    source, len(missing), missing[0])
    if unexpected:
        log.warning("%s: %d source keys map to nothing, e.g. %s", source, len(unexpected),
                    unexpected[0])
    for note in notes:
        log.info("%s: %s", source, note)
    out = save_emoca_checkpoint(out, model, extra={
        "source": str(source.resolve()), "missing_keys": missing,
        "unexpected_keys": unexpected, "ignored_keys": ignored, "notes": notes})
    return ImportReport(out, source, settings, missing, unexpected, ignored, notes)
