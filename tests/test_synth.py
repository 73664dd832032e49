"""The synthetic labelled dataset: determinism, geometry, labels, splits, resumption."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from emoca_pipeline.synth import SYNTHETIC_SCHEMA, SynthSettings, generate_synthetic_dataset
from emoca_pipeline.synth.dataset import (
    FREE_ACTION_RATE,
    VISIBLE_DISPLACEMENT,
    _background,
    _sample_codes,
    expression_spread,
)
from emoca_pipeline.synth.labels import (
    JAW_UNIT,
    NEUTRAL_THRESHOLD,
    emotion_labels,
    prototype_matrix,
)


def _table(folder: Path):
    return pq.read_table(folder / "synthetic.parquet")


def _column(table, name: str) -> np.ndarray:
    values = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(values.type):
        return values.flatten().to_numpy().reshape(len(values), -1)
    return values.to_numpy(zero_copy_only=False)


def _photo(folder: Path, rel: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(folder / rel)), cv2.COLOR_BGR2RGB)


def test_table_schema_and_files(synthetic_dataset: Path) -> None:
    table = _table(synthetic_dataset)
    assert table.schema.remove_metadata() == SYNTHETIC_SCHEMA
    assert table.num_rows == 32
    assert table.schema.metadata[b"emoca.schema_version"] == b"2"
    for rel in table.column("path").to_pylist():
        assert _photo(synthetic_dataset, rel).shape == (160, 160, 3)
    assert len(set(table.column("image_id").to_pylist())) == 32
    assert (synthetic_dataset / "contact_sheet.png").is_file()


def test_landmarks_lie_on_the_rendered_face(synthetic_dataset: Path) -> None:
    table = _table(synthetic_dataset)
    landmarks = _column(table, "landmarks").reshape(-1, 68, 2)
    bbox = _column(table, "bbox")
    on_face = []
    for i, rel in enumerate(table.column("path").to_pylist()):
        photo = _photo(synthetic_dataset, rel).astype(np.float32) / 255
        background = _background(np.random.default_rng([0, 4, i]), 160)
        face = np.abs(photo - background).max(axis=2) > 0.02
        pts = np.round(landmarks[i, 17:]).astype(int)  # the 51 inner points
        inside = (pts >= 0).all(1) & (pts < 160).all(1)
        on_face.append(face[pts[inside, 1], pts[inside, 0]].mean())
        np.testing.assert_allclose(bbox[i, :2], landmarks[i].min(0), atol=1e-4)
        np.testing.assert_allclose(bbox[i, 2:], landmarks[i].max(0), atol=1e-4)
        # anatomy in the image: eyes above the mouth in the head's own frame is rotated by
        # roll, but the eye-to-mouth vector always points "down" within 60 degrees
        eyes, mouth = landmarks[i, 36:48].mean(0), landmarks[i, 48:68].mean(0)
        assert mouth[1] - eyes[1] > 0.5 * np.linalg.norm(mouth - eyes)
    assert np.mean(on_face) > 0.97


def test_labels_follow_the_documented_function(synthetic_dataset: Path) -> None:
    table = _table(synthetic_dataset)
    exp, pose = _column(table, "exp"), _column(table, "pose")
    classes, valence, arousal = emotion_labels(exp, pose[:, 3:])
    np.testing.assert_array_equal(classes, _column(table, "expression"))
    np.testing.assert_allclose(valence, _column(table, "valence"))
    np.testing.assert_allclose(arousal, _column(table, "arousal"))
    assert (np.abs(valence) < 1).all() and (np.abs(arousal) < 1).all()
    # The sampler aims at a class, and the free actions are in no prototype: the label is
    # always the aim.
    wanted = _sample_codes(SynthSettings(n_images=32, image_size=160), 50, np.ones(50))["wanted"]
    np.testing.assert_array_equal(wanted, classes)
    assert len(set(classes)) >= 6


def test_every_expression_the_faces_show_is_visible(procedural_assets: Path) -> None:
    import torch

    from emoca_pipeline.flame.assets import load_flame_assets

    flame = load_flame_assets(procedural_assets, n_shape=100, n_exp=50).flame
    spread = expression_spread(flame.shapedirs[:, :, 100:].double().numpy())
    exp = _sample_codes(SynthSettings(n_images=400), 50, spread)["exp"]
    protos = prototype_matrix()[:, :25]
    free = np.flatnonzero(np.abs(protos).sum(axis=0) == 0)
    assert free.size == 11
    assert (exp[:, 25:] == 0).all()  # the fine bumps no 64 px crop shows
    assert (exp[:, :25].std(axis=0) > 0.2).all()  # every named action varies
    shown = (exp[:, free] != 0).mean(axis=0)
    np.testing.assert_allclose(shown, FREE_ACTION_RATE, atol=0.08)
    # One standard deviation of each free action moves the surface by the visible amount,
    # measured through the FLAME layer (not the blend-shape columns the spread is made of).
    with torch.no_grad():
        zeros = torch.zeros(len(free), 100, dtype=torch.float32)
        codes = torch.zeros(len(free), 50)
        codes[torch.arange(len(free)), torch.as_tensor(free)] = torch.as_tensor(
            spread[free], dtype=torch.float32)
        moved = flame(zeros, codes, torch.zeros(len(free), 6)).vertices
        rest = flame(zeros, torch.zeros(len(free), 50), torch.zeros(len(free), 6)).vertices
    peak = (moved - rest).norm(dim=2).max(dim=1).values.numpy()
    np.testing.assert_allclose(peak, VISIBLE_DISPLACEMENT, rtol=1e-3)


def test_label_function_by_hand() -> None:
    protos = prototype_matrix()
    np.testing.assert_allclose(np.linalg.norm(protos, axis=1), 1.0)
    exp = np.zeros((4, 50))
    jaw = np.zeros((4, 3))
    exp[1, 1], exp[1, 10] = 2.0, 1.2  # smile + cheek raise: Happy
    exp[2, 3], exp[2, 8] = 0.5, 0.4  # a faint frown: below the threshold, Neutral
    exp[3, 6], exp[3, 22], jaw[3, 0] = 2.0, 1.4, 2.0 * JAW_UNIT  # brows up, eyes wide, jaw open
    classes, valence, arousal = emotion_labels(exp, jaw)
    assert classes.tolist() == [0, 1, 0, 3]
    assert valence[0] == 0 and arousal[0] == 0
    assert valence[1] > 0.3 and arousal[3] > 0.3
    assert (exp[2] @ np.r_[protos[1, :25], np.zeros(25)]) < NEUTRAL_THRESHOLD
    with pytest.raises(ValueError, match="jaw_pose"):
        emotion_labels(exp, jaw[:2])
    with pytest.raises(ValueError, match="expression"):
        emotion_labels(exp[:, :10], jaw)


def test_splits_are_by_identity(synthetic_dataset: Path) -> None:
    table = _table(synthetic_dataset).to_pandas()
    per_identity = table.groupby("identity")["split"].nunique()
    assert (per_identity == 1).all()
    assert (table.groupby("identity").size() == 4).all()
    assert set(table["split"]) == {"train", "val", "test"}


def test_deterministic_and_resumable(procedural_assets: Path, tmp_path: Path) -> None:
    settings = SynthSettings(n_images=6, image_size=96, seed=3, images_per_identity=2)
    a = generate_synthetic_dataset(tmp_path / "a", settings, assets=procedural_assets)
    b = generate_synthetic_dataset(tmp_path / "b", settings, assets=procedural_assets)
    for rel in _table(a).column("path").to_pylist():
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert _table(a).equals(_table(b))
    stamp = (a / "synthetic.parquet").stat().st_mtime_ns
    generate_synthetic_dataset(tmp_path / "a", settings, assets=procedural_assets)
    assert (a / "synthetic.parquet").stat().st_mtime_ns == stamp  # finished: skipped
    other = generate_synthetic_dataset(
        tmp_path / "c", SynthSettings(n_images=6, image_size=96, seed=4, images_per_identity=2),
        assets=procedural_assets)
    assert not np.array_equal(_column(_table(a), "exp"), _column(_table(other), "exp"))


def test_bad_settings_are_clear() -> None:
    with pytest.raises(ValueError, match="n_images"):
        SynthSettings(n_images=0)
    with pytest.raises(ValueError, match="split_fractions"):
        SynthSettings(split_fractions=(0.5, 0.5, 0.5))
