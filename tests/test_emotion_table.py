"""The paper-format emotion table from prediction files, against scipy / scikit-learn; the
`emoca eval emotion` job is an MLflow child run holding the table."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy.stats import pearsonr
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from test_eval_synthetic import artifact_names, finished_run, workflow_parent

from emoca_pipeline.cli.emotion import register_eval
from emoca_pipeline.evaluation.emotion_table import (
    TABLE_COLUMNS,
    evaluate_emotion,
    read_emotion_predictions,
    write_emotion_predictions,
)

N = 120


def _truth(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    expression = rng.integers(0, 8, N)
    expression[:2] = [9, 10]  # rows AffectNet drops: left out of every model's metrics
    valence = rng.uniform(-1, 1, N).astype(np.float32)
    arousal = rng.uniform(-1, 1, N).astype(np.float32)
    arousal[2] = -2.0
    return {"image_id": np.array([f"k{i:03d}" for i in range(N)]), "expression": expression,
            "valence": valence, "arousal": arousal}


def _write_model(path: Path, name: str, truth: dict[str, np.ndarray], seed: int,
                 skill: float, order: np.ndarray | None = None,
                 constant_valence: bool = False) -> dict[str, np.ndarray]:
    """Predictions of a model that is right with probability ~skill; rows in ``order``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(N, 8))
    correct = rng.uniform(size=N) < skill
    labels = np.clip(truth["expression"], 0, 7)
    logits[correct, labels[correct]] += 10.0
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    valence = truth["valence"] * skill + rng.normal(0, 0.3, N)
    if constant_valence:
        valence = np.full(N, 0.25)
    arousal = truth["arousal"] * skill + rng.normal(0, 0.3, N) + 0.1
    order = np.arange(N) if order is None else order
    write_emotion_predictions(
        path, truth["image_id"][order].tolist(), name, log_probs[order], valence[order],
        arousal[order], expression=truth["expression"][order].astype(np.float64),
        valence=truth["valence"][order], arousal=truth["arousal"][order],
        split=["test"] * N,
    )
    return {"log_probs": log_probs, "valence": valence, "arousal": arousal}


def _reference(truth: dict[str, np.ndarray], predicted: dict[str, np.ndarray]) -> dict:
    """The table row computed directly with numpy, scipy and scikit-learn."""
    keep = (truth["expression"] <= 7) & (truth["arousal"] != -2.0)
    row = {}
    for prefix, name in (("V", "valence"), ("A", "arousal")):
        x = predicted[name][keep].astype(np.float32).astype(np.float64)
        y = truth[name][keep].astype(np.float64)
        row[f"{prefix}-PCC"] = pearsonr(x, y).statistic if x.std() > 0 else math.nan
        row[f"{prefix}-CCC"] = 2 * np.cov(x, y, bias=True)[0, 1] / (
            x.var() + y.var() + (x.mean() - y.mean()) ** 2)
        row[f"{prefix}-RMSE"] = np.sqrt(np.mean((x - y) ** 2))
        row[f"{prefix}-SAGR"] = np.mean(np.sign(x) == np.sign(y))
    predicted_class = predicted["log_probs"][keep].argmax(axis=1)
    true_class = truth["expression"][keep]
    row["E-ACC"] = accuracy_score(true_class, predicted_class)
    row["E-F1"] = f1_score(true_class, predicted_class, average="macro", labels=range(8),
                           zero_division=0)
    row["confusion"] = confusion_matrix(true_class, predicted_class, labels=range(8))
    row["n"] = int(keep.sum())
    return row


def _eval_cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="emoca")
    evaluate = parser.add_subparsers(dest="command").add_parser("eval")
    register_eval(evaluate.add_subparsers(dest="eval_command", required=True))
    args = parser.parse_args(argv)
    args.func(args)


def test_table_numbers_match_scipy_and_sklearn_in_three_formats(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    truth = _truth()
    reversed_rows = np.arange(N)[::-1]
    references = {
        "good_model": _reference(truth, _write_model(tmp_path / "a.parquet", "good_model",
                                                     truth, 1, 0.8)),
        "weak": _reference(truth, _write_model(tmp_path / "b.parquet", "weak", truth, 2, 0.3,
                                               order=reversed_rows)),
        "flat": _reference(truth, _write_model(tmp_path / "c.parquet", "flat", truth, 3, 0.5,
                                               constant_valence=True)),
    }
    out = tmp_path / "table out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = workflow_parent(uri, tmp_path, "tables", monkeypatch)
    _eval_cli(["eval", "emotion", "--predictions", str(tmp_path / "a.parquet"),
               str(tmp_path / "b.parquet"), str(tmp_path / "c.parquet"), "--out", str(out),
               "--tracking-uri", uri, "--experiment", "tables"])

    with open(out / "emotion_table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["model"] for row in rows] == ["good_model", "weak", "flat"]
    for row in rows:
        reference = references[row["model"]]
        assert int(row["n"]) == reference["n"] == N - 3
        for column in TABLE_COLUMNS:
            expected = reference[column]
            if math.isnan(expected):
                assert row[column] == "nan", (row["model"], column)
            else:
                assert float(row[column]) == pytest.approx(expected, rel=1e-9, abs=1e-12), \
                    (row["model"], column)
    assert math.isnan(references["flat"]["V-PCC"])  # the constant predictor's PCC
    assert references["flat"]["V-CCC"] == pytest.approx(0.0, abs=1e-12)

    markdown = (out / "emotion_table.md").read_text()
    assert "| Model | " + " | ".join(TABLE_COLUMNS) + " |" in markdown
    good = references["good_model"]
    assert (f"| good_model | {good['V-PCC']:.3f} | {good['V-CCC']:.3f} | {good['V-RMSE']:.3f} "
            f"| {good['V-SAGR']:.3f} |") in markdown
    assert f"| flat | -- | {references['flat']['V-CCC']:.3f} |" in markdown.replace("-0.000",
                                                                                     "0.000")
    latex = (out / "emotion_table.tex").read_text()
    assert r"\begin{tabular}{lrrrrrrrrrr}" in latex and r"\bottomrule" in latex
    assert f"good\\_model & {good['V-PCC']:.3f} & " in latex
    assert latex.count(r" \\") == 4  # header + 3 models
    assert f"& {good['E-ACC']:.3f} & {good['E-F1']:.3f} \\\\" in latex

    metrics = json.loads((out / "emotion_metrics.json").read_text())
    weak = metrics["models"][1]
    assert weak["model"] == "weak" and weak["dropped_invalid_labels"] == 3
    np.testing.assert_array_equal(weak["confusion_matrix"], references["weak"]["confusion"])
    assert metrics["models"][2]["table"]["V-PCC"] is None

    with Image.open(out / "confusion_matrices.png") as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] > 2 * pixels.shape[0]  # three panels side by side
    assert pixels.std() > 20  # not blank

    client, run = finished_run(uri, "tables", "eval emotion")
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["emoca.run_kind"] == "evaluation"
    logged = run.data.metrics
    assert logged["good_model/e_acc"] == pytest.approx(good["E-ACC"], rel=1e-9)
    assert logged["weak/a_ccc"] == pytest.approx(references["weak"]["A-CCC"], rel=1e-9)
    assert "flat/v_pcc" not in logged  # undefined: left out, not NaN
    assert len(logged) == 3 * len(TABLE_COLUMNS) - 1
    assert artifact_names(client, run) == {"emotion_table.csv", "emotion_table.md",
                                           "emotion_table.tex", "emotion_metrics.json",
                                           "confusion_matrices.png"}


def test_models_on_different_images_or_duplicated_are_refused(tmp_path: Path) -> None:
    truth = _truth()
    _write_model(tmp_path / "a.parquet", "a", truth, 1, 0.8)
    other = dict(truth, image_id=np.array([f"z{i:03d}" for i in range(N)]))
    _write_model(tmp_path / "b.parquet", "b", other, 2, 0.8)
    with pytest.raises(ValueError, match=r"b\.parquet: model 'b' was evaluated on 117 images, "
                                          r"'a' \(.*a\.parquet\) on 117, and the image ids "
                                          r"differ"):
        evaluate_emotion([tmp_path / "a.parquet", tmp_path / "b.parquet"], tmp_path / "out")
    _write_model(tmp_path / "c.parquet", "a", truth, 3, 0.5)
    with pytest.raises(ValueError, match=r"c\.parquet: model 'a' is also in .*a\.parquet"):
        evaluate_emotion([tmp_path / "a.parquet", tmp_path / "c.parquet"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet: no such predictions file"):
        evaluate_emotion([tmp_path / "nope.parquet"], tmp_path / "out")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"junk\.parquet: not a Parquet file"):
        evaluate_emotion([tmp_path / "junk.parquet"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_predictions_round_trip_and_reject_nan(tmp_path: Path) -> None:
    truth = _truth()
    predicted = _write_model(tmp_path / "a.parquet", "m", truth, 1, 0.8)
    table = read_emotion_predictions(tmp_path / "a.parquet")
    assert table.schema.field("expr_logits").type.list_size == 8
    assert (table.schema.metadata or {})[b"emoca.table"] == b"emotion_predictions"
    frame = table.to_pandas()
    np.testing.assert_allclose(np.stack(frame["expr_logits"]), predicted["log_probs"],
                               rtol=1e-6)
    assert list(frame["expr_pred"]) == list(predicted["log_probs"].argmax(axis=1))
    assert frame["expression"].tolist()[:3] == [9, 10, truth["expression"][2]]
    no_labels = tmp_path / "unlabelled.parquet"
    write_emotion_predictions(no_labels, ["x", "y"], "m", np.log(np.full((2, 8), 1 / 8)),
                              np.zeros(2), np.zeros(2))
    assert pq.read_table(no_labels).column("expression").null_count == 2
    with pytest.raises(ValueError, match="model 'm' has no rows with valid ground truth"):
        evaluate_emotion([no_labels], tmp_path / "out")
    with pytest.raises(ValueError, match=r"bad\.parquet: predictions of model 'm' contain NaN"):
        write_emotion_predictions(tmp_path / "bad.parquet", ["x", "y"], "m",
                                  np.zeros((2, 8)), np.array([0.0, np.nan]), np.zeros(2))
    assert not (tmp_path / "bad.parquet").exists()
