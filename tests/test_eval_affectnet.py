"""`emoca eval affectnet`: EmoMLPs on reconstructed codes of train and test manifests (or of
one manifest holding every split), tracked as an MLflow child run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from test_eval_synthetic import (
    TINY_EMOMLP,
    artifact_names,
    finished_run,
    fsl,
    workflow_parent,
)

from emoca_pipeline.cli import main


def write_codes(folder: Path, n: int, noise: float, seed: int, split: str | list[str] | None,
                failed: int = 0) -> None:
    """A reconstruction shard whose labels follow from exp (class = argmax of 8 components,
    valence/arousal = linear in them), codes = exp + noise; ``failed`` rows have a status.
    ``split``: of every row, or per row (image ids then ``<split><row>``), or None: no split
    column."""
    from emoca_pipeline.inference.schema import reconstruction_schema

    rng = np.random.default_rng(seed)
    exp = rng.normal(size=(n, 50))
    classes = exp[:, :8].argmax(axis=1)
    valence = np.tanh(exp[:, 0] - exp[:, 2])
    arousal = np.tanh(exp[:, 3] + exp[:, 4])
    widths = {"shape": 100, "tex": 50, "exp": 50, "pose": 6, "cam": 3, "light": 27,
              "detail": 128}
    splits = [split] * n if split is None or isinstance(split, str) else split
    labels = ("split",) * (split is not None) + ("expression", "valence", "arousal")
    schema = reconstruction_schema(widths, labels=labels, metadata={"table": "reconstructions"})
    status = ["ok"] * (n - failed) + ["no_face"] * failed
    columns = {"image_id": pa.array([f"{s}{i}" for i, s in enumerate(splits)]),
               "path": pa.array([f"{s}/{i}.jpg" for i, s in enumerate(splits)]),
               "frame": pa.nulls(n, pa.int32()), "width": pa.array([64] * n, pa.int32()),
               "height": pa.array([64] * n, pa.int32()),
               "face_index": pa.array([0] * n, pa.int16()), "status": pa.array(status)}
    for name, width in widths.items():
        value = exp + rng.normal(size=exp.shape) * noise if name == "exp" else \
            rng.normal(size=(n, width)) * 0.1
        columns[name] = fsl(value)
    columns["crop_transform"] = pa.FixedSizeListArray.from_arrays(
        pa.array(np.tile(np.eye(3).reshape(-1), n)), 9)
    columns["landmarks"] = fsl(np.zeros((n, 136)))
    columns["mediapipe_landmarks"] = fsl(np.zeros((n, 210)))
    if split is not None:
        columns["split"] = pa.array(splits)
    columns["expression"] = pa.array(classes.astype(np.int16))
    columns["valence"] = pa.array(valence.astype(np.float32))
    columns["arousal"] = pa.array(arousal.astype(np.float32))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(columns, schema=schema),
                   folder / "shard-00000-of-00001.parquet")


def test_affectnet_table_has_one_row_per_model(tmp_path: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name, noise in (("sharp", 0.1), ("blurred", 3.0)):
        write_codes(tmp_path / name / "train", 400, noise, seed=1, split="train")
        # the second model fails on 2 test images: both are compared on the rest
        write_codes(tmp_path / name / "test", 120, noise, seed=2, split="test",
                    failed=2 if name == "blurred" else 0)
    (tmp_path / "emomlp.yaml").write_text(TINY_EMOMLP)
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = workflow_parent(uri, tmp_path, "emoca-pipeline", monkeypatch)
    torch.set_num_threads(1)
    code = main(["eval", "affectnet",
                 "--train", f"sharp={tmp_path / 'sharp' / 'train'}",
                 f"blurred={tmp_path / 'blurred' / 'train'}",
                 "--test", f"sharp={tmp_path / 'sharp' / 'test'}",
                 f"blurred={tmp_path / 'blurred' / 'test'}",
                 "--emotion-config", str(tmp_path / "emomlp.yaml"), "--out", str(out),
                 "--tracking-uri", uri])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "affectnet_table.json").read_text())
    rows = {m["model"]: m for m in metrics["models"]}
    assert set(rows) == {"sharp", "blurred"}
    assert rows["sharp"]["count"] == rows["blurred"]["count"] == 118
    assert rows["sharp"]["table"]["E-ACC"] > rows["blurred"]["table"]["E-ACC"]
    assert rows["sharp"]["table"]["V-CCC"] > rows["blurred"]["table"]["V-CCC"]
    assert (out / "affectnet_table.md").read_text().count("| sharp |") == 1
    assert (out / "emomlp" / "sharp" / "model.pt").is_file()

    client, run = finished_run(uri, "emoca-pipeline", "eval affectnet")
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics["sharp/e_acc"] == pytest.approx(rows["sharp"]["table"]["E-ACC"])
    assert run.data.metrics["blurred/v_ccc"] == pytest.approx(rows["blurred"]["table"]["V-CCC"])
    assert artifact_names(client, run) == {
        "affectnet_table.csv", "affectnet_table.md", "affectnet_table.tex",
        "affectnet_table.json", "affectnet_confusion_matrices.png"}


def test_one_folder_is_split_by_its_split_column(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """As the workflow runs it: the whole manifest reconstructed once, given as both --train
    and --test; its train and val rows train the EmoMLP, its test rows test it."""
    rng = np.random.default_rng(3)
    splits = rng.choice(["train", "val", "test"], size=300, p=[0.6, 0.15, 0.25]).tolist()
    folder = tmp_path / "reconstruct" / "emoca" / "affectnet"
    write_codes(folder, 300, 0.1, seed=4, split=splits, failed=3)
    (tmp_path / "emomlp.yaml").write_text(TINY_EMOMLP)
    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    torch.set_num_threads(1)
    code = main(["eval", "affectnet", "--train", f"emoca={folder}", "--test", f"emoca={folder}",
                 "--emotion-config", str(tmp_path / "emomlp.yaml"), "--out", str(out),
                 "--tracking-uri", uri])
    assert code == 0, capsys.readouterr().err
    ok = np.arange(300) < 297  # the failed rows are the last three
    given = pq.read_table(out / "codes" / "emoca.parquet", columns=["image_id", "split"])
    chosen = dict(zip(given.column("image_id").to_pylist(), given.column("split").to_pylist(),
                      strict=True))
    expected = {f"{s}{i}": s for i, s in enumerate(splits) if ok[i]}
    assert chosen == expected  # every ok row, in its own split (val kept as validation)
    metrics = json.loads((out / "affectnet_table.json").read_text())["models"][0]
    assert metrics["count"] == sum(s == "test" for s in np.array(splits)[ok])
    # labels follow from the codes: it learnt (chance: 0.125 and 0)
    assert metrics["table"]["E-ACC"] > 0.3 and metrics["table"]["V-CCC"] > 0.5
    _, run = finished_run(uri, "emoca-pipeline", "eval affectnet")
    assert run.data.metrics["emoca/e_acc"] == pytest.approx(metrics["table"]["E-ACC"])
    assert run.data.params["train.emoca"] == run.data.params["test.emoca"] == str(folder)


def test_one_folder_without_split_column_is_refused(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "codes"
    write_codes(folder, 20, 0.1, seed=5, split=None)
    assert main(["eval", "affectnet", "--train", f"m={folder}", "--test", f"m={folder}",
                 "--emotion-config", str(tmp_path / "x.yaml"), "--out", str(tmp_path / "out"),
                 "--results", str(tmp_path)]) == 2
    assert f"{folder}: no split column, so --train and --test cannot both be" in \
        capsys.readouterr().err


def test_models_must_match(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "affectnet", "--train", f"a={tmp_path}", "--test", f"b={tmp_path}",
                 "--emotion-config", str(tmp_path / "x.yaml"), "--out", str(tmp_path),
                 "--results", str(tmp_path)]) == 2
    assert "train and test name different models" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "affectnet", "--train", "nonsense", "--test", f"b={tmp_path}",
              "--emotion-config", "x", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "expected NAME=DIR, got 'nonsense'" in capsys.readouterr().err
