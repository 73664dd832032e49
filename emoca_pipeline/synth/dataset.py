"""The synthetic labelled face dataset: FLAME faces rendered into larger "original" photos.

Each identity (shape and albedo codes) appears in several images; each image samples an
emotion class, an expression and jaw opening that express it, a head pose, a camera (the
face's size and place in the photo), SH lighting and a textured background. The face is
rendered straight into the original photo (orthographic, square), so the ground-truth 2D
landmarks are exact and detection and cropping have real work to do. Labels come from
:func:`emoca_pipeline.synth.labels.emotion_labels` of the sampled codes.

Output folder::

    images/000000.png ...     the original photos (RGB PNG)
    synthetic.parquet         one row per image, schema :data:`SYNTHETIC_SCHEMA`
    contact_sheet.png         the first images with their labels

``cam`` in the table is relative to the original photo: projected = s * (X_xy + t), then
y flipped, in [-1, 1] across the photo (pixel = (x + 1) / 2 * size - 0.5).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from scipy.spatial.transform import Rotation

from emoca_pipeline.data.affectnet import AFFECTNET_CLASSES
from emoca_pipeline.data.schema import SPLITS
from emoca_pipeline.flame.assets import FlameAssets, load_flame_assets, make_renderer
from emoca_pipeline.io.atomic import atomic_output, atomic_write_bytes
from emoca_pipeline.io.images import image_id
from emoca_pipeline.render import ndc_to_pixels, orthographic_project
from emoca_pipeline.synth.labels import JAW_UNIT, NUM_NAMED, emotion_labels, prototype_matrix

__all__ = ["SYNTHETIC_SCHEMA", "SynthSettings", "generate_synthetic_dataset"]

TABLE_FILE = "synthetic.parquet"
CONTACT_SHEET_FILE = "contact_sheet.png"
SCHEMA_VERSION = "2"
#: Intensity range of the wanted class's (unit) prototype.
CLASS_INTENSITY = (2.0, 4.0)
#: Chance that a face shows each action that is in no class prototype.
FREE_ACTION_RATE = 0.35
#: Peak vertex displacement (FLAME units, metres) of one standard deviation of a free action:
#: about 1.7 px in a 64 px crop.
VISIBLE_DISPLACEMENT = 0.006
#: Largest magnitude of a free action's coefficient (the eyelids close at 3).
MAX_FREE_ACTION = 3.0
#: Named actions that only go one way (jaw_drop, eyes_close, cheek_puff).
ONE_SIDED_ACTIONS = (0, 9, 17)


def _vec(n: int) -> pa.DataType:
    return pa.list_(pa.float32(), n)


SYNTHETIC_SCHEMA = pa.schema([
    ("path", pa.string()),
    ("image_id", pa.string()),
    ("identity", pa.int64()),
    ("split", pa.string()),
    ("expression", pa.int64()),
    ("valence", pa.float32()),
    ("arousal", pa.float32()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("landmarks", _vec(136)),
    ("bbox", _vec(4)),
    ("shape", _vec(100)),
    ("exp", _vec(50)),
    ("pose", _vec(6)),
    ("cam", _vec(3)),
    ("light", _vec(27)),
    ("tex", _vec(50)),
])


@dataclass(frozen=True)
class SynthSettings:
    """What :func:`generate_synthetic_dataset` makes.

    Attributes:
        n_images: number of photos.
        images_per_identity: photos of each identity (the detail stage exchanges codes
            between them).
        image_size: side of the square original photos.
        seed: everything is a deterministic function of it.
        split_fractions: train, val, test shares of the identities.
        batch_size: faces rendered at once.
        face_fraction: range of the face's width as a share of the photo width.
    """

    n_images: int = 200
    images_per_identity: int = 4
    image_size: int = 320
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    batch_size: int = 16
    face_fraction: tuple[float, float] = (0.3, 0.55)

    def __post_init__(self) -> None:
        if self.n_images < 1:
            raise ValueError(f"n_images: must be >= 1, got {self.n_images}")
        if self.images_per_identity < 1:
            raise ValueError(f"images_per_identity: must be >= 1, got {self.images_per_identity}")
        if self.image_size < 64:
            raise ValueError(f"image_size: must be >= 64, got {self.image_size}")
        if abs(sum(self.split_fractions) - 1.0) > 1e-6 or min(self.split_fractions) < 0:
            raise ValueError(f"split_fractions: must be >= 0 and sum to 1, "
                             f"got {self.split_fractions}")


def _identity_split(n_identities: int, settings: SynthSettings) -> np.ndarray:
    """Split name index (0 train, 1 val, 2 test) per identity, from a seeded permutation."""
    order = np.random.default_rng([settings.seed, 1]).permutation(n_identities)
    bounds = np.round(np.cumsum(settings.split_fractions) * n_identities).astype(int)
    split = np.empty(n_identities, dtype=np.int64)
    split[order] = np.searchsorted(bounds, np.arange(n_identities), side="right")
    return np.minimum(split, 2)


def expression_spread(exprdirs: np.ndarray) -> np.ndarray:
    """Standard deviation of each free action's coefficient: the one that moves its most
    displaced vertex by :data:`VISIBLE_DISPLACEMENT` (exprdirs: (V, 3, n_exp) -> (n_exp,))."""
    peak = np.linalg.norm(exprdirs, axis=1).max(axis=0)
    return VISIBLE_DISPLACEMENT / np.maximum(peak, 1e-9)


def _sample_codes(settings: SynthSettings, n_tex: int, spread: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """All sampled parameters of all images, (n_images, ...) float32 arrays.

    The expression is made of what a face shows: the wanted class's prototype at an intensity
    in :data:`CLASS_INTENSITY` (none for Neutral), and each action that is in no prototype,
    with probability :data:`FREE_ACTION_RATE`, at N(0, ``spread``) (one-sided actions take the
    absolute value). Components past the named actions stay 0: the procedural model's fine
    bumps there move the surface by under a pixel in a 64 px crop, so no image shows them.
    The label of every face is therefore its wanted class (free actions are in no prototype).
    """
    n = settings.n_images
    n_identities = -(-n // settings.images_per_identity)
    protos = prototype_matrix()
    free = np.flatnonzero(np.abs(protos[:, :NUM_NAMED]).sum(axis=0) == 0)
    shape = np.zeros((n, 100), np.float32)
    tex = np.zeros((n, 50), np.float32)
    for ident in range(n_identities):
        rng = np.random.default_rng([settings.seed, 2, ident])
        per = settings.images_per_identity
        rows = slice(ident * per, (ident + 1) * per)
        shape[rows] = rng.normal(0.0, 0.8, 100)
        tex[rows, :n_tex] = rng.normal(0.0, 0.5, n_tex)
    exp = np.zeros((n, 50), np.float32)
    pose = np.zeros((n, 6), np.float32)
    cam = np.zeros((n, 3), np.float32)
    light = np.zeros((n, 9, 3), np.float32)
    wanted = np.zeros(n, np.int64)
    for i in range(n):
        rng = np.random.default_rng([settings.seed, 3, i])
        wanted[i] = rng.integers(8)
        z = np.zeros(NUM_NAMED + 1)
        if wanted[i] > 0:
            z += rng.uniform(*CLASS_INTENSITY) * protos[wanted[i] - 1]
        exp[i, :NUM_NAMED] = z[:NUM_NAMED]
        shown = free[rng.random(free.size) < FREE_ACTION_RATE]
        values = rng.normal(0.0, spread[shown])
        one_sided = np.isin(shown, ONE_SIDED_ACTIONS)
        values[one_sided] = np.abs(values[one_sided])
        exp[i, shown] = np.clip(values, -MAX_FREE_ACTION, MAX_FREE_ACTION)
        jaw_open = max(0.0, z[NUM_NAMED] * JAW_UNIT + rng.normal(0.0, 0.03))
        yaw, pitch, roll = np.deg2rad([rng.uniform(-35, 35), rng.uniform(-15, 15),
                                       rng.uniform(-20, 20)])
        pose[i, :3] = Rotation.from_euler("YXZ", [yaw, pitch, roll]).as_rotvec()
        pose[i, 3:] = [jaw_open, rng.normal(0.0, 0.01), 0.0]
        # The head is about 0.16 m wide: s * 0.16 / 2 is its share of the photo width.
        fraction = rng.uniform(*settings.face_fraction)
        scale = 2.0 * fraction / 0.16
        centre = rng.uniform(-1.0, 1.0, 2) * (1.0 - fraction) * 0.8
        cam[i] = [scale, centre[0] / scale, -centre[1] / scale]
        light[i, 0] = rng.uniform(1.2, 1.7) * (1.0 + rng.normal(0.0, 0.05, 3))
        light[i, 1:4] = rng.normal(0.0, 0.2, (3, 1)) * (1.0 + rng.normal(0.0, 0.05, (3, 3)))
        light[i, 4:] = rng.normal(0.0, 0.08, (5, 3))
    return {"shape": shape, "exp": exp, "pose": pose, "cam": cam, "light": light, "tex": tex,
            "wanted": wanted}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random textured background, (size, size, 3) float32 in [0, 1]."""
    low = cv2.resize(rng.random((4, 4, 3)).astype(np.float32), (size, size),
                     interpolation=cv2.INTER_CUBIC)
    mid = cv2.resize(rng.random((size // 16, size // 16, 3)).astype(np.float32), (size, size),
                     interpolation=cv2.INTER_LINEAR)
    fine = rng.random((size, size, 1)).astype(np.float32)
    image = 0.6 * low + 0.25 * mid + 0.08 * fine
    if rng.random() < 0.5:  # stripes or tiles, like curtains, walls, shelves
        angle, freq = rng.uniform(0, np.pi), rng.uniform(4, 24)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        wave = np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)))
        image += 0.15 * (wave > 0)[..., None] * rng.random(3).astype(np.float32)
    grey = image.mean(axis=2, keepdims=True)
    return np.clip(0.5 * image + 0.5 * grey, 0.0, 1.0)  # muted, like real rooms


def _contact_sheet(images: list[np.ndarray], labels: list[str], columns: int = 6,
                   tile: int = 160) -> np.ndarray:
    rows = -(-len(images) // columns)
    sheet = np.full((rows * tile, columns * tile, 3), 255, np.uint8)
    for k, (image, label) in enumerate(zip(images, labels, strict=True)):
        small = cv2.resize(image, (tile, tile), interpolation=cv2.INTER_AREA)
        cv2.putText(small, label, (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255),
                    2, cv2.LINE_AA)
        cv2.putText(small, label, (4, tile - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
        r, c = divmod(k, columns)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = small
    return sheet


@torch.inference_mode()
def _render_batch(assets: FlameAssets, renderer, codes: dict[str, np.ndarray], rows: np.ndarray,
                  backgrounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Photos (B, S, S, 3) uint8 RGB and their 68 landmarks (B, 68, 2) in pixels."""
    take = {k: torch.from_numpy(v[rows]) for k, v in codes.items() if k != "wanted"}
    flame = assets.flame
    out = flame(take["shape"][:, :flame.n_shape], take["exp"][:, :flame.n_exp], take["pose"])
    trans_verts = orthographic_project(out.vertices, take["cam"])
    if assets.texture is not None:
        albedo = assets.texture(take["tex"][:, :assets.texture.n_tex])
    else:
        albedo = torch.full((len(rows), 3, 256, 256), 0.5)
    background = torch.from_numpy(backgrounds).permute(0, 3, 1, 2)
    render = renderer(out.vertices, trans_verts, albedo, take["light"], background=background)
    photos = (render.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    size = renderer.image_size
    landmarks = ndc_to_pixels(orthographic_project(out.landmarks2d, take["cam"])[..., :2], size)
    return photos.numpy(), landmarks.numpy()


def generate_synthetic_dataset(
    out_dir: str | os.PathLike,
    settings: SynthSettings | None = None,
    assets: str | os.PathLike | None = None,
) -> Path:
    """Render the synthetic dataset into ``out_dir`` (see the module docstring).

    Args:
        out_dir: output folder; a folder whose table was written with the same settings
            and assets is left as it is (a rerun skips finished work).
        settings: what to make (default :class:`SynthSettings`).
        assets: a FLAME asset folder; default: procedural assets made for ``settings.seed``
            under ``out_dir/assets``.

    Returns:
        ``out_dir``.
    """
    settings = settings or SynthSettings()
    out_dir = Path(out_dir)
    if assets is None:
        from emoca_pipeline.assets import generate_procedural_assets

        assets = generate_procedural_assets(out_dir / "assets", seed=settings.seed)
    stamp = json.dumps({"settings": asdict(settings), "assets": str(Path(assets).resolve()),
                        "schema_version": SCHEMA_VERSION}, sort_keys=True)
    table_path = out_dir / TABLE_FILE
    if table_path.is_file():
        metadata = pq.read_schema(table_path).metadata or {}
        if metadata.get(b"emoca.synth") == stamp.encode():
            return out_dir
    flame_assets = load_flame_assets(assets, n_shape=100, n_exp=50, n_tex=50)
    n_tex = flame_assets.texture.n_tex if flame_assets.texture is not None else 0
    size = settings.image_size
    renderer = make_renderer(flame_assets, image_size=size)
    flame = flame_assets.flame
    spread = expression_spread(flame.shapedirs[:, :, flame.n_shape:].double().numpy())
    codes = _sample_codes(settings, n_tex, spread)
    n = settings.n_images
    labels, valence, arousal = emotion_labels(codes["exp"], codes["pose"][:, 3:])
    identity = np.arange(n) // settings.images_per_identity
    split = _identity_split(int(identity.max()) + 1, settings)[identity]
    landmarks = np.zeros((n, 68, 2), np.float32)
    paths, ids, sheet_images = [], [], []
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    for start in range(0, n, settings.batch_size):
        rows = np.arange(start, min(n, start + settings.batch_size))
        backgrounds = np.stack([_background(np.random.default_rng([settings.seed, 4, i]), size)
                                for i in rows])
        photos, landmarks[rows] = _render_batch(flame_assets, renderer, codes, rows, backgrounds)
        for i, photo in zip(rows, photos, strict=True):
            ok, png = cv2.imencode(".png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError(f"PNG encoding of synthetic image {i} failed")
            rel = f"images/{i:06d}.png"
            atomic_write_bytes(out_dir / rel, png.tobytes())
            paths.append(rel)
            ids.append(image_id(png.tobytes()))
            if len(sheet_images) < 36:
                sheet_images.append(photo)
    bbox = np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1)
    columns = {
        "path": paths, "image_id": ids, "identity": identity, "split": np.array(SPLITS)[split],
        "expression": labels, "valence": valence, "arousal": arousal,
        "width": np.full(n, size, np.int32), "height": np.full(n, size, np.int32),
        "landmarks": landmarks.reshape(n, -1), "bbox": bbox,
        "shape": codes["shape"], "exp": codes["exp"], "pose": codes["pose"],
        "cam": codes["cam"], "light": codes["light"].reshape(n, -1), "tex": codes["tex"],
    }
    arrays = []
    for field in SYNTHETIC_SCHEMA:
        values = columns[field.name]
        if pa.types.is_fixed_size_list(field.type):
            flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1))
            arrays.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
        else:
            arrays.append(pa.array(values, type=field.type))
    schema = SYNTHETIC_SCHEMA.with_metadata({"emoca.synth": stamp,
                                             "emoca.schema_version": SCHEMA_VERSION})
    table = pa.Table.from_arrays(arrays, schema=schema)
    sheet = _contact_sheet(sheet_images, [AFFECTNET_CLASSES[k] for k in labels[:36]])
    with atomic_output(out_dir / CONTACT_SHEET_FILE) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    with atomic_output(table_path) as tmp:
        pq.write_table(table, tmp)
    return out_dir
