"""`emoca eval synthetic` on a tiny hand-made ground truth: the rows come out in order, and
the evaluation is an MLflow child run of the workflow's parent run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from emoca_pipeline.cli import main
from emoca_pipeline.tracking import PARENT_RUN_ENV, WORKFLOW_ID_ENV, start_workflow_run

TINY_EMOMLP = """\
name: emomlp
seed: 0
batch_size: 32
learning_rate: 1.0e-3
max_epochs: 40
patience: 8
checkpoint_weights_only: true
balanced_sampling: true
accelerator: cpu
devices: 1
precision: 32-true
mlp:
  hidden_dim: 64
  n_hidden_layers: 2
"""


def workflow_parent(tracking_uri: str, results: Path, experiment: str,
                    monkeypatch: pytest.MonkeyPatch) -> str:
    """A workflow's parent run, announced to jobs as Snakemake's onstart does."""
    monkeypatch.delenv(WORKFLOW_ID_ENV, raising=False)
    parent = start_workflow_run(tracking_uri, results, experiment=experiment, set_env=False)
    monkeypatch.setenv(PARENT_RUN_ENV, parent)
    return parent


def finished_run(tracking_uri: str, experiment: str, run_name: str):
    """(client, run): the one evaluation run named ``run_name``, checked FINISHED (without a
    workflow, a parent made for the job alone has the same name)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                               filter_string=f"tags.`mlflow.runName` = '{run_name}' and "
                                             "tags.`emoca.run_kind` = 'evaluation'")
    assert len(found) == 1, [r.info.run_name for r in found]
    assert found[0].info.status == "FINISHED"
    return client, found[0]


def artifact_names(client, run) -> set[str]:
    return {item.path for item in client.list_artifacts(run.info.run_id)}


def fsl(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def make_truth(path: Path, assets: Path, n_identities: int = 30, per_identity: int = 4,
               seed: int = 0) -> dict[str, np.ndarray]:
    """A synthetic.parquet-like table: codes, labels from the codes, projected landmarks."""
    from emoca_pipeline.evaluation.synthetic import _Codes, _flame_outputs, _project
    from emoca_pipeline.flame import create
    from emoca_pipeline.synth.labels import emotion_labels

    rng = np.random.default_rng(seed)
    n = n_identities * per_identity
    identity = np.repeat(np.arange(n_identities), per_identity)
    split_of = np.array(["train"] * (n_identities * 6 // 10) + ["val"] * (n_identities * 2 // 10)
                        + ["test"] * (n_identities - n_identities * 8 // 10))
    shape = np.repeat(rng.normal(size=(n_identities, 100)) * 0.7, per_identity, axis=0)
    exp = np.zeros((n, 50))
    exp[:, :25] = np.abs(rng.normal(size=(n, 25))) * (rng.random((n, 25)) < 0.25) * 2.0
    exp[:, 25:] = rng.normal(size=(n, 25)) * 0.3
    pose = np.concatenate([rng.normal(size=(n, 3)) * 0.15,
                           np.stack([np.abs(rng.normal(size=n)) * 0.15, np.zeros(n),
                                     np.zeros(n)], axis=1)], axis=1)
    cam = np.stack([rng.uniform(3.5, 4.5, n), rng.normal(size=n) * 0.02,
                    rng.normal(size=n) * 0.02], axis=1)
    expression, valence, arousal = emotion_labels(exp.astype(np.float32),
                                                  pose[:, 3:].astype(np.float32))
    codes = _Codes(shape, exp, pose, cam)
    _, landmarks = _flame_outputs(create(assets), codes)
    width = np.full(n, 256)
    pixels = _project(landmarks, cam, width)
    table = pa.table({
        "path": pa.array([f"images/{i:06d}.png" for i in range(n)]),
        "image_id": pa.array([f"img{i:04d}" for i in range(n)]),
        "identity": pa.array(identity.astype(np.int64)),
        "split": pa.array(split_of[identity].tolist()),
        "expression": pa.array(np.asarray(expression).astype(np.int64)),
        "valence": pa.array(np.asarray(valence, dtype=np.float32)),
        "arousal": pa.array(np.asarray(arousal, dtype=np.float32)),
        "width": pa.array(width.astype(np.int32)), "height": pa.array(width.astype(np.int32)),
        "landmarks": fsl(pixels.reshape(n, -1)),
        "shape": fsl(shape), "exp": fsl(exp), "pose": fsl(pose), "cam": fsl(cam),
    })
    pq.write_table(table, path)
    return {"shape": shape, "exp": exp, "pose": pose, "cam": cam, "landmarks": pixels,
            "image_id": np.array(table.column("image_id").to_pylist())}


def write_reconstruction(folder: Path, truth: dict[str, np.ndarray], noise: float,
                         seed: int) -> None:
    """The truth plus noise of relative size ``noise``, as an `emoca reconstruct` shard."""
    from emoca_pipeline.inference.schema import reconstruction_schema

    rng = np.random.default_rng(seed)
    n = len(truth["image_id"])
    widths = {"shape": 100, "tex": 50, "exp": 50, "pose": 6, "cam": 3, "light": 27,
              "detail": 128}
    schema = reconstruction_schema(widths, metadata={"table": "reconstructions",
                                                     "schema_version": "1"})
    columns = {"image_id": pa.array(truth["image_id"].tolist()),
               "path": pa.array([f"images/{i:06d}.png" for i in range(n)]),
               "frame": pa.nulls(n, pa.int32()), "width": pa.array([256] * n, pa.int32()),
               "height": pa.array([256] * n, pa.int32()),
               "face_index": pa.array([0] * n, pa.int16()), "status": pa.array(["ok"] * n)}
    for name, width in widths.items():
        if name in ("shape", "exp", "pose"):
            value = truth[name] + rng.normal(size=truth[name].shape) * noise * \
                truth[name].std(axis=0, keepdims=True).clip(0.005)
        elif name == "cam":
            value = truth["cam"]
        else:
            value = np.zeros((n, width))
        columns[name] = fsl(value)
    columns["crop_transform"] = pa.FixedSizeListArray.from_arrays(
        pa.array(np.tile(np.eye(3).reshape(-1), n)), 9)
    columns["landmarks"] = fsl(truth["landmarks"].reshape(n, -1)
                               + rng.normal(size=(n, 136)) * noise * 4.0)
    columns["mediapipe_landmarks"] = fsl(np.zeros((n, 210)))
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(columns, schema=schema),
                   folder / "shard-00000-of-00001.parquet")


@pytest.fixture(scope="module")
def synthetic_case(procedural_assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval_synthetic")
    truth = make_truth(root / "synthetic.parquet", procedural_assets)
    write_reconstruction(root / "good", truth, noise=0.1, seed=1)
    write_reconstruction(root / "poor", truth, noise=0.4, seed=2)
    (root / "emomlp.yaml").write_text(TINY_EMOMLP)
    return root


def test_rows_are_ordered_ground_truth_best_mean_code_worst(
        synthetic_case: Path, procedural_assets: Path, capsys: pytest.CaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    root = synthetic_case
    out = root / "out"
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent = workflow_parent(uri, root, "evals", monkeypatch)
    torch.set_num_threads(1)
    code = main(["eval", "synthetic", "--reconstructions", f"good={root / 'good'}",
                 f"poor={root / 'poor'}", "--table", str(root / "synthetic.parquet"),
                 "--assets", str(procedural_assets), "--out", str(out), "--emotion-config",
                 str(root / "emomlp.yaml"), "--tracking-uri", uri, "--experiment", "evals",
                 "--run-name", "eval synthetic tiny"])
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "synthetic_table.json").read_text())["rows"]
    assert list(rows) == ["good", "poor", "mean code", "ground truth"]
    truth, good, poor, mean = (rows[k] for k in ("ground truth", "good", "poor", "mean code"))
    assert truth["V-err"] < 1e-6 and truth["NME-68"] < 1e-4
    assert truth["Exp-PCC"] == pytest.approx(1.0) and truth["Jaw (deg)"] < 1e-3
    for column in ("V-err", "NME-68", "Jaw (deg)"):
        assert truth[column] < good[column] < poor[column] < mean[column], column
    assert good["V-err (mm)"] == pytest.approx(good["V-err"] * 1000)
    assert truth["Exp-PCC"] > good["Exp-PCC"] > poor["Exp-PCC"]
    assert mean["Exp-PCC"] is None  # a constant prediction has no correlation
    assert truth["E-ACC"] > mean["E-ACC"]
    assert good["E-ACC"] > mean["E-ACC"]
    markdown = (out / "synthetic_table.md").read_text()
    assert "| Model | V-err | V-err (mm) | NME-68 | Exp-PCC |" in markdown
    assert "| mean code |" in markdown and "inter-ocular" in markdown
    assert (out / "synthetic_metrics.png").stat().st_size > 0
    assert (out / "emotion" / "emotion_table.md").is_file()

    # the evaluation's child run: under the workflow's parent, every defined cell a metric
    client, run = finished_run(uri, "evals", "eval synthetic tiny")
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["emoca.run_kind"] == "evaluation"
    assert run.data.params["reconstructions.good"] == str(root / "good")
    metrics = run.data.metrics
    assert metrics["good/exp_pcc"] == pytest.approx(good["Exp-PCC"])
    assert metrics["mean_code/v_err_mm"] == pytest.approx(mean["V-err (mm)"])
    assert metrics["ground_truth/e_acc"] == pytest.approx(truth["E-ACC"])
    assert metrics["poor/nme_68"] == pytest.approx(poor["NME-68"])
    assert "mean_code/exp_pcc" not in metrics  # undefined cells are left out
    assert len(metrics) == 4 * 9 - 1
    assert artifact_names(client, run) == {
        "synthetic_table.csv", "synthetic_table.md", "synthetic_table.tex",
        "synthetic_table.json", "synthetic_metrics.png"}
    # the EmoMLP of each row is a run nested under the evaluation's
    emomlps = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(r.info.run_name for r in emomlps) == ["good", "ground truth", "mean code",
                                                        "poor"]


def test_bad_inputs_are_named(synthetic_case: Path, procedural_assets: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture) -> None:
    root = synthetic_case
    base = ["eval", "synthetic", "--table", str(root / "synthetic.parquet"), "--assets",
            str(procedural_assets), "--out", str(tmp_path / "out"), "--results", str(tmp_path)]
    assert main(base + ["--reconstructions", f"x={tmp_path / 'none'}", "--no-emotion"]) == 2
    assert f"{tmp_path / 'none'}: no such reconstruction folder" in capsys.readouterr().err
    assert main(base + ["--reconstructions", f"good={root / 'good'}"]) == 2
    assert "--emotion-config" in capsys.readouterr().err
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"image_id": ["a"]}), other)
    assert main(["eval", "synthetic", "--table", str(other), "--assets", str(procedural_assets),
                 "--out", str(tmp_path / "out"), "--reconstructions", f"good={root / 'good'}",
                 "--no-emotion", "--results", str(tmp_path)]) == 2
    assert f"{other}: not a synthetic table" in capsys.readouterr().err
