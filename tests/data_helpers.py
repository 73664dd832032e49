"""Small datasets for the data-stage tests: the synthetic table format and AffectNet CSVs.

Not a test module (no ``test_`` prefix); test files import it by name (pytest puts ``tests/``
on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: Ground-truth FLAME parameter columns of the synthetic table and their sizes.
FLAME_COLUMNS = {"shape": 100, "exp": 50, "pose": 6, "cam": 3, "light": 27, "tex": 50}


def face_landmarks(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(68, 2)`` float32 points of a plausible face layout inside a ``size`` image: jaw on
    the lower half of an ellipse, brows, nose, eyes and mouth inside it, jittered."""
    center = rng.uniform(0.4, 0.6, 2) * size
    radius = rng.uniform(0.22, 0.3) * size
    angles = np.linspace(np.pi, 0, 17)
    jaw = np.stack([np.cos(angles), 0.2 + 0.9 * np.sin(angles)], axis=1)
    brows = np.stack([np.linspace(-0.75, 0.75, 10), np.full(10, -0.55)], axis=1)
    nose = np.stack([np.r_[np.zeros(4), np.linspace(-0.2, 0.2, 5)],
                     np.r_[np.linspace(-0.35, 0.1, 4), np.full(5, 0.18)]], axis=1)
    eye = np.stack([np.cos(np.linspace(np.pi, -np.pi, 7)[:6]) * 0.18,
                    np.sin(np.linspace(np.pi, -np.pi, 7)[:6]) * 0.07 - 0.3], axis=1)
    eyes = np.concatenate([eye - [0.4, 0], eye + [0.4, 0]])
    outer = np.stack([np.cos(np.linspace(np.pi, -np.pi, 13)[:12]) * 0.4,
                      np.sin(np.linspace(np.pi, -np.pi, 13)[:12]) * 0.15 + 0.5], axis=1)
    inner = np.stack([np.cos(np.linspace(np.pi, -np.pi, 9)[:8]) * 0.28,
                      np.sin(np.linspace(np.pi, -np.pi, 9)[:8]) * 0.06 + 0.5], axis=1)
    unit = np.concatenate([jaw, brows, nose, eyes, outer, inner])
    assert unit.shape == (68, 2)
    points = center + radius * unit + rng.normal(0, 0.01 * size, unit.shape)
    return points.astype(np.float32)


def write_synthetic_dataset(
    root: Path, count: int = 8, size: int = 96, seed: int = 0, identities: int = 3,
) -> Path:
    """A folder in the format of ``emoca synth``: ``images/*.png`` and ``synthetic.parquet``.

    Returns:
        the table's path.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    splits = ["train", "val", "test"]
    rows: dict[str, list] = {name: [] for name in (
        "path", "image_id", "identity", "split", "expression", "valence", "arousal", "width",
        "height", "landmarks", "bbox", *FLAME_COLUMNS)}
    for index in range(count):
        points = face_landmarks(rng, size)
        image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        cv2.fillPoly(image, [points[:17].round().astype(np.int32)], (200, 170, 150))
        relative = f"images/{index:05d}.png"
        assert cv2.imwrite(str(root / relative), image[..., ::-1])
        from emoca_pipeline.io.images import image_id

        rows["path"].append(relative)
        rows["image_id"].append(image_id(root / relative))
        rows["identity"].append(index % identities)
        rows["split"].append(splits[index % 3])
        rows["expression"].append(index % 8)
        rows["valence"].append(float(rng.uniform(-1, 1)))
        rows["arousal"].append(float(rng.uniform(-1, 1)))
        rows["width"].append(size)
        rows["height"].append(size)
        rows["landmarks"].append(points.reshape(-1).tolist())
        rows["bbox"].append([*points.min(0).tolist(), *points.max(0).tolist()])
        for name, width in FLAME_COLUMNS.items():
            rows[name].append(rng.normal(0, 0.1, width).astype(np.float32).tolist())
    types = {"path": pa.string(), "image_id": pa.string(), "identity": pa.int64(),
             "split": pa.string(), "expression": pa.int64(), "valence": pa.float32(),
             "arousal": pa.float32(), "width": pa.int32(), "height": pa.int32(),
             "landmarks": pa.list_(pa.float32(), 136), "bbox": pa.list_(pa.float32(), 4)}
    types.update({name: pa.list_(pa.float32(), width) for name, width in FLAME_COLUMNS.items()})
    table = pa.table({name: pa.array(values, types[name]) for name, values in rows.items()})
    path = root / "synthetic.parquet"
    pq.write_table(table, path)
    return path


def affectnet_line(path: str, points: np.ndarray | None, expression: int, valence: float,
                   arousal: float) -> str:
    """One row of AffectNet's training.csv / validation.csv."""
    if points is None:
        box, landmarks = (0, 0, 0, 0), ""
    else:
        x0, y0 = points.min(0)
        x1, y1 = points.max(0)
        box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
        landmarks = ";".join(f"{value:.2f}" for value in points.reshape(-1))
    return f"{path},{box[0]},{box[1]},{box[2]},{box[3]},{landmarks},{expression},{valence}," \
           f"{arousal}"
