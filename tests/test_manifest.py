"""The manifest: joins with AffectNet CSVs and the synthetic table, splits, stats, errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from data_helpers import affectnet_line, face_landmarks, write_synthetic_dataset

from emoca_pipeline.cli.data import register
from emoca_pipeline.data.affectnet import AFFECTNET_CLASSES
from emoca_pipeline.data.detect import DetectSettings, read_detections, run_detection
from emoca_pipeline.data.labels import read_labels
from emoca_pipeline.data.manifest import ManifestSettings, build_manifest, read_manifest, stats
from emoca_pipeline.data.schema import MANIFEST_SCHEMA, SCHEMA_VERSION, metadata_of

HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks," \
         "expression,valence,arousal"

#: AffectNet-style rows: key -> (split file, expression, valence, arousal, kept?)
AFFECTNET_ROWS = {
    "101/a.png": ("training", 0, 0.1, 0.2, True),
    "101/b.png": ("training", 1, 0.5, -0.3, True),
    "101/c.png": ("training", 7, -0.2, 0.9, True),
    "102/d.png": ("training", 8, 0.0, 0.0, False),     # "none": dropped
    "102/e.png": ("training", 9, 0.0, 0.0, False),     # "uncertain": dropped
    "102/f.png": ("training", 10, -2.0, -2.0, False),  # "no-face": dropped
    "102/g.png": ("training", 3, -2.0, -2.0, False),   # invalid valence/arousal: dropped
    "103/h.png": ("validation", 6, -0.7, 0.6, True),
    "103/i.png": ("validation", 4, -0.4, 0.8, True),
    "103/j.png": ("validation", 2, -2.0, 0.1, False),  # invalid valence: dropped
}


@pytest.fixture(scope="module")
def affectnet(tmp_path_factory) -> tuple[Path, Path, list[Path]]:
    """An AffectNet-format folder: images, training.csv and validation.csv (the latter
    without its header line, as some copies ship it), detected with their own landmarks."""
    root = tmp_path_factory.mktemp("affectnet")
    images = root / "Manually_Annotated_Images"
    rng = np.random.default_rng(3)
    lines: dict[str, list[str]] = {"training": [HEADER], "validation": []}
    for key, (split, expression, valence, arousal, _) in AFFECTNET_ROWS.items():
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(images / key), rng.integers(0, 255, (80, 80, 3), np.uint8))
        lines[split].append(affectnet_line(key, face_landmarks(rng, 80), expression, valence,
                                           arousal))
    # An image without any label row, and one whose label row has no landmarks.
    for key in ("104/unlabelled.png", "105/no_landmarks.png"):
        (images / key).parent.mkdir()
        assert cv2.imwrite(str(images / key), rng.integers(0, 255, (80, 80, 3), np.uint8))
    lines["training"].append(affectnet_line("105/no_landmarks.png", None, 5, 0.3, 0.3))
    csvs = []
    for split, rows in lines.items():
        path = root / f"{split}.csv"
        path.write_text("\n".join(rows) + "\n")
        csvs.append(path)
    out = root / "detections"
    run_detection(images, out, DetectSettings(landmarker="gt", labels=tuple(map(str, csvs)),
                                              shard_size=4), progress=False)
    return images, out, csvs


def test_affectnet_join_drops_classes_8_to_10_and_invalid_va(affectnet, tmp_path) -> None:
    images, detections, csvs = affectnet
    summary = build_manifest(detections, tmp_path / "manifest", "affectnet", csvs)
    table = read_manifest(tmp_path / "manifest")
    kept = {key: row for key, row in AFFECTNET_ROWS.items() if row[4]}
    assert sorted(table.column("path").to_pylist()) == sorted(kept)
    for row in table.to_pylist():
        split, expression, valence, arousal, _ = AFFECTNET_ROWS[row["path"]]
        assert row["split"] == ("train" if split == "training" else "test")
        assert row["expression"] == expression
        assert row["valence"] == pytest.approx(valence) and row["arousal"] == pytest.approx(
            arousal)
        assert row["dataset"] == "affectnet" and row["root"] == str(images)
        assert row["identity"] is None and row["face_index"] == 0
    assert summary.rows == 5 and summary.splits == {"train": 3, "test": 2}
    # With gt landmarks, images without a label row have no face: "no_face", not "unlabelled".
    assert summary.dropped == {"label_filtered": 5, "no_face": 2}
    assert summary.label_counts == {"label_rows": 11, "dropped_class_8_10": 3,
                                    "dropped_invalid_va": 2, "labels_without_face": 1}
    assert summary.classes == {"train": {"Neutral": 1, "Happy": 1, "Contempt": 1},
                               "test": {"Anger": 1, "Fear": 1}}
    assert json.loads((tmp_path / "manifest" / "_summary-affectnet.json").read_text()) == \
        summary.to_dict()
    # Faces whose image has no label are "unlabelled".
    only_validation = build_manifest(detections, tmp_path / "other", "affectnet", csvs[1:])
    assert only_validation.rows == 2 and only_validation.splits == {"test": 2}
    assert only_validation.dropped == {"label_filtered": 1, "no_face": 2, "unlabelled": 7}
    # The validation CSV may go to "val" instead.
    build_manifest(detections, tmp_path / "manifest", "affectnet", csvs,
                   ManifestSettings(validation_split="val"))
    counts = stats(tmp_path / "manifest").counts["affectnet"]
    assert {split: sum(classes.values()) for split, classes in counts.items()} == \
        {"train": 3, "val": 2}


def test_landmarks_from_the_affectnet_csv(affectnet) -> None:
    _, detections, csvs = affectnet
    text = csvs[0].read_text().splitlines()[1]
    key, landmarks = text.split(",")[0], text.split(",")[5]
    (row,) = [row for row in read_detections(detections).to_pylist() if row["path"] == key]
    np.testing.assert_allclose(row["landmarks"], [float(v) for v in landmarks.split(";")],
                               rtol=1e-6)


def test_synthetic_table_join_and_stats(tmp_path) -> None:
    table_path = write_synthetic_dataset(tmp_path / "synth", count=12, identities=4)
    run_detection(table_path, tmp_path / "det", DetectSettings(landmarker="gt", shard_size=5),
                  progress=False)
    summary = build_manifest(tmp_path / "det", tmp_path / "manifest", "synthetic", [table_path])
    truth = pq.read_table(table_path).to_pandas().set_index("path")
    table = read_manifest(tmp_path / "manifest", dataset="synthetic")
    assert table.num_rows == summary.rows == 12
    for row in table.to_pylist():
        expected = truth.loc[row["path"]]
        assert row["split"] == expected["split"] and row["expression"] == expected["expression"]
        assert row["identity"] == str(expected["identity"])
        assert row["valence"] == expected["valence"] and row["arousal"] == expected["arousal"]
        assert row["image_id"] == expected["image_id"]
        np.testing.assert_array_equal(row["landmarks"], expected["landmarks"])
        assert row["root"] == str(tmp_path / "synth")
    # Stats against pandas on the source table.
    reference = truth.groupby(["split", "expression"]).size()
    counts = stats(tmp_path / "manifest")
    for (split, expression), count in reference.items():
        assert counts.counts["synthetic"][split][AFFECTNET_CLASSES[expression]] == count
    assert counts.total() == 12 and counts.total(split="val") == (truth["split"] == "val").sum()
    text = counts.format()
    assert text.splitlines()[0].split()[:3] == ["dataset", "split", "faces"]
    assert "synthetic        train" in text and text.splitlines()[-1].split() == ["total", "12"]


def test_plain_folder_hash_split_is_by_content(tmp_path) -> None:
    rng = np.random.default_rng(5)
    folder = tmp_path / "photos"
    folder.mkdir()
    landmarks = {}
    for index in range(300):
        name = f"{index:03d}.png"
        assert cv2.imwrite(str(folder / name), rng.integers(0, 255, (16, 16, 3), np.uint8))
        landmarks[name] = face_landmarks(rng, 16)
    # Same content under another name: same split.
    (folder / "copy_of_007.png").write_bytes((folder / "007.png").read_bytes())
    landmarks["copy_of_007.png"] = landmarks["007.png"]
    table = pd.DataFrame({"path": list(landmarks),
                          "landmarks": [p.reshape(-1).tolist() for p in landmarks.values()]})
    gt = tmp_path / "landmarks.parquet"
    table.to_parquet(gt)
    run_detection(folder, tmp_path / "det", DetectSettings(landmarker="gt", labels=(str(gt),)),
                  progress=False)
    settings = ManifestSettings(val_fraction=0.2, test_fraction=0.1)
    summary = build_manifest(tmp_path / "det", tmp_path / "manifest", "photos", (), settings)
    rows = {row["path"]: row for row in read_manifest(tmp_path / "manifest").to_pylist()}
    assert len(rows) == 301 and summary.labels == "none"
    assert rows["copy_of_007.png"]["split"] == rows["007.png"]["split"]
    assert rows["007.png"]["expression"] is None
    shares = pd.Series([row["split"] for row in rows.values()]).value_counts() / len(rows)
    assert abs(shares["val"] - 0.2) < 0.06 and abs(shares["test"] - 0.1) < 0.05
    again = build_manifest(tmp_path / "det", tmp_path / "again", "photos", (), settings)
    assert again.splits == summary.splits


def test_datasets_share_a_folder_and_replace_atomically(affectnet, tmp_path) -> None:
    _, detections, csvs = affectnet
    manifest = tmp_path / "manifest"
    build_manifest(detections, manifest, "affectnet", csvs)
    table_path = write_synthetic_dataset(tmp_path / "synth", count=6)
    run_detection(table_path, tmp_path / "det", DetectSettings(landmarker="gt"), progress=False)
    build_manifest(tmp_path / "det", manifest, "synthetic", [table_path])
    before = sorted(p.relative_to(manifest) for p in (manifest / "dataset=affectnet").rglob("*"))
    build_manifest(tmp_path / "det", manifest, "synthetic", [table_path])  # rebuild one
    after = sorted(p.relative_to(manifest) for p in (manifest / "dataset=affectnet").rglob("*"))
    assert before == after
    assert not [p for p in manifest.iterdir() if p.name.startswith(".")]  # no temp folders
    counts = stats(manifest)
    assert counts.total("affectnet") == 5 and counts.total("synthetic") == 6
    files = sorted(manifest.glob("dataset=*/split=*/*.parquet"))
    assert files and all(metadata_of(pq.read_schema(f))["schema_version"] == SCHEMA_VERSION
                         for f in files)
    table = read_manifest(manifest)
    assert table.schema.remove_metadata() == MANIFEST_SCHEMA.remove_metadata()
    assert table.num_rows == 11


def test_errors_name_the_file(affectnet, tmp_path) -> None:
    _, detections, csvs = affectnet
    bad = tmp_path / "labels.csv"
    bad.write_text(HEADER + "\n")
    with pytest.raises(ValueError, match="labels.csv: cannot tell training from validation"):
        build_manifest(detections, tmp_path / "m", "affectnet", [bad])
    short = tmp_path / "training.csv"
    short.write_text("subDirectory_filePath,expression\nx.png,1\n")
    with pytest.raises(ValueError, match="training.csv: lacks column.s. valence, arousal"):
        read_labels([short])
    with pytest.raises(FileNotFoundError, match="nope.csv: no such file"):
        read_labels([tmp_path / "nope.csv"])
    with pytest.raises(ValueError, match="appear more than once"):
        read_labels([csvs[0], csvs[0]])
    table_path = write_synthetic_dataset(tmp_path / "synth", count=3)
    odd = pq.read_table(table_path).to_pandas()
    odd.loc[0, "split"] = "holdout"
    odd.to_parquet(tmp_path / "odd.parquet")
    with pytest.raises(ValueError, match=r"odd.parquet: unknown split value\(s\) \['holdout'\]"):
        read_labels([tmp_path / "odd.parquet"])
    with pytest.raises(ValueError, match="--dataset 'a/b'"):
        build_manifest(detections, tmp_path / "m", "a/b")
    with pytest.raises(FileNotFoundError, match="no such detection folder"):
        build_manifest(tmp_path / "none", tmp_path / "m", "x")
    with pytest.raises(ValueError, match="no faces left for the manifest of 'synthetic'"):
        build_manifest(detections, tmp_path / "m", "synthetic", [table_path])
    assert not (tmp_path / "m" / "dataset=synthetic").exists()
    with pytest.raises(FileNotFoundError, match="no such manifest folder"):
        stats(tmp_path / "nothing")


def test_cli_manifest_and_stats(affectnet, tmp_path, capsys) -> None:
    _, detections, csvs = affectnet
    parser = argparse.ArgumentParser(prog="emoca")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["manifest", "build", "--labels", str(csvs[0]), "--labels",
                              str(csvs[1]), str(detections), str(tmp_path / "m"), "--dataset",
                              "affectnet"])
    args.func(args)
    printed = capsys.readouterr().out
    assert "manifest affectnet (affectnet labels): 5 faces" in printed
    args = parser.parse_args(["manifest", "stats", str(tmp_path / "m"), "--out",
                              str(tmp_path / "stats.json")])
    args.func(args)
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1].split() == ["total", "5"]
    assert json.loads((tmp_path / "stats.json").read_text())["total"] == 5
