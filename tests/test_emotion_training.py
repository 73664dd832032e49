"""Emotion-network training through Lightning + MLflow, on tables written by the test.

The codes table mimics the synthetic dataset's format: FLAME codes whose expression part
is drawn around one of 8 class prototypes, with the label a deterministic function of the
code (the nearest prototype), valence/arousal = tanh of linear functions of it, and
train/val/test splits by identity.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from jsonschema import Draft202012Validator
from PIL import Image
from sklearn.metrics import accuracy_score

from emoca_pipeline.cli import main
from emoca_pipeline.cli.emotion import register_eval, register_predict, register_train
from emoca_pipeline.data.crop import crop_box_from_landmarks, crop_transform, warp_crop
from emoca_pipeline.evaluation.metrics import regression_metrics
from emoca_pipeline.inference.emotion import predict_batches
from emoca_pipeline.losses.emotion import EmotionLoss, VALossSettings
from emoca_pipeline.models.emotion import EmotionImageNet, load_emotion_model
from emoca_pipeline.tracking import PARENT_RUN_ENV, WORKFLOW_ID_ENV
from emoca_pipeline.training.emotion_data import EmotionDataModule
from emoca_pipeline.training.emotion_job import train_emotion
from emoca_pipeline.training.emotion_module import EmotionModule
from emoca_pipeline.training.emotion_settings import load_emotion_settings


@pytest.fixture(scope="module", autouse=True)
def no_inherited_parent():
    """Tests may run inside a workflow job: start without its parent-run variables."""
    with pytest.MonkeyPatch.context() as patch:
        for name in (PARENT_RUN_ENV, WORKFLOW_ID_ENV):
            patch.setenv(name, "")  # so that teardown restores the variable's absence
            patch.delenv(name)
        yield


def _fixed(values: np.ndarray, width: int) -> pa.FixedSizeListArray:
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat), width)


def _ellipse_landmarks(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """68 points on an ellipse: a stand-in for a face's landmarks, (68, 2)."""
    angle = np.linspace(0.0, 2.0 * np.pi, 68, endpoint=False)
    return np.stack([cx + rx * np.cos(angle), cy + ry * np.sin(angle)], axis=1)


def write_synthetic_table(folder: Path, n_identities: int, per_identity: int,
                          with_images: bool = False, seed: int = 0) -> Path:
    """A table in the synthetic dataset's format (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = n_identities * per_identity
    identity = np.repeat(np.arange(n_identities), per_identity)
    split = np.where(identity % 5 < 3, "train", np.where(identity % 5 == 3, "val", "test"))
    prototypes = rng.normal(0.0, 1.0, (8, 50))
    exp = prototypes[rng.integers(0, 8, n)] + rng.normal(0.0, 0.5, (n, 50))
    expression = np.argmin(((exp[:, None, :] - prototypes[None]) ** 2).sum(-1), axis=1)
    shape = rng.normal(0.0, 1.0, (n_identities, 100))[identity]
    pose = rng.normal(0.0, 0.1, (n, 6))
    valence = np.tanh(exp @ rng.normal(0.0, 0.3, 50))
    arousal = np.tanh(exp @ rng.normal(0.0, 0.3, 50) + 3.0 * pose[:, 3])
    width, height = 80, 64
    landmarks = np.empty((n, 68, 2))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cx, cy = 40 + rng.uniform(-6, 6), 32 + rng.uniform(-4, 4)
        landmarks[i] = _ellipse_landmarks(cx, cy, 15, 18)
        if with_images:
            image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
            x0, y0 = int(cx) - 12, int(cy) - 14
            image[y0:y0 + 28, x0:x0 + 24] = (30 * expression[i], 180, 90)  # the "face"
            (folder / "images").mkdir(exist_ok=True)
            Image.fromarray(image).save(folder / "images" / f"{i:04d}.png")
    table = pa.table({
        "path": [f"images/{i:04d}.png" for i in range(n)],
        "image_id": [f"img{i:04d}" for i in range(n)],
        "identity": identity.astype(np.int64),
        "split": split,
        "expression": expression.astype(np.int64),
        "valence": valence.astype(np.float32),
        "arousal": arousal.astype(np.float32),
        "width": np.full(n, width, np.int64),
        "height": np.full(n, height, np.int64),
        "landmarks": _fixed(landmarks, 136),
        "bbox": _fixed(np.tile([25.0, 14.0, 55.0, 50.0], (n, 1)), 4),
        "shape": _fixed(shape, 100),
        "exp": _fixed(exp, 50),
        "pose": _fixed(pose, 6),
    })
    path = folder / "synthetic.parquet"
    pq.write_table(table, path)
    return path


MLP_CONFIG = """\
name: emomlp_test
seed: 0
batch_size: 32
learning_rate: 1.0e-3
max_epochs: 12
patience: 4
mlp:
  hidden_dim: 256
  n_hidden_layers: 2
"""


@pytest.fixture(scope="module")
def codes_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_table(tmp_path_factory.mktemp("codes"), 48, 10)


@pytest.fixture(scope="module")
def image_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_table(tmp_path_factory.mktemp("images"), 10, 3, with_images=True)


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory: pytest.TempPathFactory, codes_table: Path):
    """EmoMLP trained on the codes table through train_emotion, tracked in a sqlite store."""
    work = tmp_path_factory.mktemp("mlp run")
    config = work / "mlp.yaml"
    config.write_text(MLP_CONFIG)
    results = work / "results"
    torch.set_num_threads(1)
    result = train_emotion(config, codes_table, work / "out", "codes", results_dir=results)
    return result, results, codes_table


def _test_split(table_path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(table_path).to_pandas()
    test = table[table["split"] == "test"]
    return {"image_id": test["image_id"].to_numpy(), "expression": test["expression"].to_numpy()}


def test_emomlp_learns_the_label_function_on_held_out_identities(mlp_run) -> None:
    result, _, table_path = mlp_run
    predictions = pq.read_table(result.predictions_path).to_pandas()
    truth = _test_split(table_path)
    # The predictions cover exactly the held-out identities' rows.
    assert sorted(predictions["image_id"]) == sorted(truth["image_id"])
    assert set(predictions["split"]) == {"test"}
    labels = dict(zip(truth["image_id"], truth["expression"], strict=True))
    expected = [labels[key] for key in predictions["image_id"]]
    accuracy = accuracy_score(expected, predictions["expr_pred"])
    assert accuracy >= 0.8
    assert result.test_metrics["accuracy"] == pytest.approx(accuracy)
    # expr_pred is the argmax of the stored log-probabilities, which are normalised.
    logits = np.stack(predictions["expr_logits"].to_numpy())
    assert np.array_equal(logits.argmax(axis=1), predictions["expr_pred"].to_numpy())
    np.testing.assert_allclose(np.exp(logits).sum(axis=1), 1.0, atol=1e-5)
    summary = json.loads(result.summary_path.read_text())
    assert summary["data"] == {"train": 300, "val": 90, "test": 90, "dropped": 0}
    assert summary["best_checkpoint"] == str(result.best_checkpoint)


def test_saved_model_reloads_and_predicts_the_same(mlp_run, tmp_path: Path) -> None:
    result, _, table_path = mlp_run
    model, spec = load_emotion_model(result.model_path)
    assert spec["input"] == "codes" and spec["name"] == "emomlp_test"
    assert model.settings.hidden_dim == 256 and not model.training
    again = tmp_path / "again.parquet"
    args = _parser().parse_args(["predict", "emotion", "--model", str(result.model_path),
                                 "--manifest", str(table_path), "--out", str(again),
                                 "--name", "reloaded"])
    args.func(args)
    first = pq.read_table(result.predictions_path).to_pandas()
    second = pq.read_table(again).to_pandas()
    assert set(second["model"]) == {"reloaded"}
    assert list(first["image_id"]) == list(second["image_id"])
    np.testing.assert_allclose(second["valence_pred"], first["valence_pred"], atol=1e-6)
    assert list(first["expr_pred"]) == list(second["expr_pred"])
    # The model is the best checkpoint's network, not the last epoch's.
    checkpoint = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][f"model.{key}"], value), key


def test_mlflow_run_holds_params_metrics_tags_and_checkpoint(mlp_run, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    result, results, table_path = mlp_run
    client = MlflowClient("sqlite:///" + str(results / "mlflow.db"))
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "emomlp_test"
    params = run.data.params
    assert params["batch_size"] == "32" and params["mlp.hidden_dim"] == "256"
    assert params["learning_rate"] == "0.001" and params["input"] == "codes"
    assert params["va_loss.scheme"] == "shake" and params["data.train"] == "300"
    metrics = run.data.metrics
    assert metrics["test/accuracy"] == pytest.approx(result.test_metrics["accuracy"])
    history = client.get_metric_history(result.run_id, "val/loss")
    assert len(history) >= 2
    assert min(m.value for m in history) == pytest.approx(
        json.loads(result.summary_path.read_text())["best_val_loss"], rel=1e-6)
    tags = run.data.tags
    digest = hashlib.blake2b(table_path.read_bytes(), digest_size=20).hexdigest()
    assert tags["emoca.input.manifest.blake2b"] == digest
    head = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:
        assert tags["mlflow.source.git.commit"] == head.stdout.strip()
    # Nested under a parent run made for this job (no workflow variables set), ended with it.
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["emoca.parent"] == "job"
    assert parent.info.status == "FINISHED"
    # The best checkpoint is an artifact, byte for byte.
    stem = result.best_checkpoint.stem
    listed = [item.path for item in client.list_artifacts(result.run_id, stem)]
    assert f"{stem}/{result.best_checkpoint.name}" in listed
    local = client.download_artifacts(result.run_id, f"{stem}/{result.best_checkpoint.name}",
                                      str(tmp_path))
    assert Path(local).read_bytes() == result.best_checkpoint.read_bytes()
    assert {"model.pt", "predictions.parquet", "training.json"} <= {
        item.path for item in client.list_artifacts(result.run_id)}
    # Artifacts sit beside the database, not in ./mlruns.
    assert (results / "mlartifacts" / result.run_id).is_dir()


def test_image_batches_are_landmark_crops_in_unit_range(image_table: Path) -> None:
    data = EmotionDataModule(image_table, "images", batch_size=4, image_size=48)
    data.setup()
    assert data.split_sizes() == {"train": 18, "val": 6, "test": 6, "dropped": 0}
    sample = data.dataset("val")[1]
    row = int(sample["index"])
    table = pq.read_table(image_table).to_pandas()
    assert table["image_id"][row] == data.keys[row]
    image = np.asarray(Image.open(image_table.parent / table["path"][row]).convert("RGB"))
    landmarks = np.asarray(table["landmarks"][row]).reshape(68, 2)
    box = crop_box_from_landmarks(landmarks)
    expected = warp_crop(image, crop_transform(box.center, box.size, 48), 48)
    assert sample["image"].shape == (3, 48, 48) and sample["image"].dtype == torch.float32
    np.testing.assert_allclose(sample["image"].permute(1, 2, 0).numpy(), expected / 255.0,
                               atol=1e-6)
    assert int(sample["expression"]) == table["expression"][row]


def test_a_partitioned_manifest_with_a_root_column_reads_the_same(image_table: Path,
                                                                  tmp_path: Path) -> None:
    """The data stage's manifest: a hive-partitioned folder, paths relative to ``root``."""
    table = pq.read_table(image_table)
    root = pa.array([str(image_table.parent)] * table.num_rows)
    table = table.append_column("root", root).append_column(
        "status", pa.array(["ok"] * (table.num_rows - 1) + ["no_face"]))
    pq.write_to_dataset(table, tmp_path / "manifest", partition_cols=["split"])
    data = EmotionDataModule(tmp_path / "manifest", "images", image_size=32)
    data.setup()
    assert data.split_sizes() == {"train": 18, "val": 6, "test": 5, "dropped": 1}
    reference = EmotionDataModule(image_table, "images", image_size=32)
    reference.setup()
    key = data.keys[data.indices("val")[0]]
    ours = data.dataset("val")[0]["image"]
    theirs = reference.dataset("all")[int(np.flatnonzero(reference.keys == key)[0])]["image"]
    assert torch.equal(ours, theirs)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_image_network_loss_decreases_through_the_module(image_table: Path) -> None:
    torch.manual_seed(0)
    data = EmotionDataModule(image_table, "images", batch_size=8, image_size=32)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32)
    # Unshaken VA weights so that losses of different steps are comparable.
    loss = EmotionLoss(VALossSettings(scheme="norm"))
    module = EmotionModule(EmotionImageNet(), loss, learning_rate=1e-4)
    optimizer = module.configure_optimizers()
    module.train()
    losses = []
    for step in range(5):
        optimizer.zero_grad()
        value = module.training_step(batch, step)
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses


def test_image_training_job_writes_a_loadable_network(mlp_run, image_table: Path,
                                                      tmp_path: Path, caplog) -> None:
    config = tmp_path / "cnn.yaml"
    config.write_text("name: cnn_test\nbatch_size: 6\nmax_epochs: 1\nlimit_train_batches: 1\n"
                      "image:\n  image_size: 32\n")
    results = mlp_run[1]  # the same MLflow store: a second run in it
    caplog.set_level(logging.INFO, logger="emoca_pipeline.training.fit")
    result = train_emotion(config, image_table, tmp_path / "out", "images",
                           results_dir=results)
    # One log line per validation, with the key metrics.
    lines = [r.getMessage() for r in caplog.records if r.name == "emoca_pipeline.training.fit"]
    assert len(lines) == 1 and re.fullmatch(
        r"epoch 0 step 1: val/loss \S+, val/accuracy \S+, val/v_ccc \S+, val/a_ccc \S+",
        lines[0]), lines
    predictions = pq.read_table(result.predictions_path)
    assert predictions.num_rows == 6 and result.best_checkpoint is not None
    # model.pt is what EMOCA's emotion loss loads as its frozen network.
    network = EmotionImageNet(weights_path=result.model_path).eval()
    model, spec = load_emotion_model(result.model_path)
    assert spec["input"] == "images" and spec["image_size"] == 32
    assert spec["backbone"] == "frnet" == model.backbone  # the paper's (the default)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(network.features(images), model.features(images))


def test_codes_can_come_from_a_separate_table(codes_table: Path, tmp_path: Path) -> None:
    table = pq.read_table(codes_table)
    # An "inference output": codes only, other row order, a few extra rows.
    order = np.random.default_rng(1).permutation(table.num_rows)
    codes = table.select(["image_id", "shape", "exp", "pose"]).take(pa.array(order))
    extra = codes.slice(0, 3).set_column(
        0, "image_id", pa.array(["extra0", "extra1", "extra2"]))
    pq.write_table(pa.concat_tables([codes, extra]), tmp_path / "codes.parquet")
    joined = EmotionDataModule(codes_table, "codes", codes_table=tmp_path / "codes.parquet")
    own = EmotionDataModule(codes_table, "codes")
    joined.setup()
    own.setup()
    for name in ("shape", "exp", "jaw"):
        np.testing.assert_array_equal(joined.codes()[name], own.codes()[name])
    for name in ("keys", "expression", "valence"):
        np.testing.assert_array_equal(getattr(joined.labels(), name), getattr(own.labels(), name))
    pq.write_table(codes.slice(5), tmp_path / "partial.parquet")
    partial = EmotionDataModule(codes_table, "codes", codes_table=tmp_path / "partial.parquet")
    with pytest.raises(ValueError, match=r"partial\.parquet: no codes for 5 of 480 rows"):
        partial.setup()


def test_affectnet_rows_are_filtered_and_sampling_is_class_balanced(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 400
    # Imbalanced classes (class 0 is 10x class 7), plus rows AffectNet drops.
    expression = rng.choice(8, n, p=np.array([10, 6, 4, 3, 2, 2, 1.5, 1]) / 29.5)
    expression[:10] = [8, 9, 10, 8, 9, 10, 0, 1, 2, 3]
    valence = rng.uniform(-1, 1, n)
    valence[6:8] = -2.0
    arousal = rng.uniform(-1, 1, n)
    arousal[8] = -2.0
    arousal[9] = np.nan
    codes = rng.normal(size=(n, 156))
    pq.write_table(pa.table({
        "image_id": [f"r{i}" for i in range(n)],
        "split": ["train"] * n,
        "expression": expression.astype(np.int64),
        "valence": valence.astype(np.float32),
        "arousal": arousal.astype(np.float32),
        "shape": _fixed(codes[:, :100], 100),
        "exp": _fixed(codes[:, 100:150], 50),
        "pose": _fixed(codes[:, 150:], 6),
    }), tmp_path / "t.parquet")
    data = EmotionDataModule(tmp_path / "t.parquet", "codes", batch_size=50, seed=3)
    data.setup()
    assert data.split_sizes()["dropped"] == 10 and "r0" not in set(data.keys)
    drawn = np.concatenate([batch["expression"].numpy() for _ in range(10)
                            for batch in data.train_dataloader()])
    assert drawn.size == 10 * 7 * 50  # drop_last: 390 rows -> 7 full batches per epoch
    fractions = np.bincount(drawn, minlength=8) / drawn.size
    np.testing.assert_allclose(fractions, 1 / 8, atol=0.03)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("batch_sise: 32\n", "unknown key batch_sise (known: name, seed, "),
        ("mlp:\n  hiden_dim: 3\n", "unknown key mlp.hiden_dim in mlp (known: shape_dim"),
        ("batch_size: 0\n", "batch_size: must be >= 1, got 0"),
        ("batch_size: many\n", "batch_size: input should be a valid integer, unable to parse "
                                "string as an integer, got 'many'"),
        ("learning_rate: fast\n", "learning_rate: input should be a valid number, unable to "
                                   "parse string as a number, got 'fast'"),
        ("balanced_sampling: maybe\n", "balanced_sampling: input should be a valid boolean"),
        ("limit_train_batches: x\n", "limit_train_batches: input should be a valid integer, "
                                      "unable to parse string as an integer or input should be "
                                      "a valid number"),
        ("limit_train_batches: 1.5\n", "limit_train_batches: a fraction must lie in (0, 1]"),
        ("min_epochs: 5\nmax_epochs: 2\n", "min_epochs (5) exceeds max_epochs (2)"),
        ("image:\n  input_normalization: z\n",
         "image.input_normalization: input should be 'none' or 'imagenet', got 'z'"),
        ("mlp:\n  hidden_dim: 0\n", "mlp: EmoMLPSettings.hidden_dim: must be >= 1, got 0"),
        ("va_loss:\n  weights: {v_mse: 1, nope: 1}\n", "va_loss: VALossSettings.weights: "
                                                      "unknown term(s) ['nope']"),
        ("- 1\n- 2\n", "expected a mapping of settings, got list"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_line_naming_the_file(tmp_path: Path, text: str,
                                                message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ValueError) as error:
        load_emotion_settings(config)
    assert str(error.value).startswith(f"{config}: ")
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    if "unknown key batch_sise" in message:  # the known keys are listed
        assert "batch_size, eval_batch_size, learning_rate" in str(error.value)


def test_config_defaults_are_the_papers_and_floats_accept_yaml_1_1_exponents(
        tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-4\nlimit_train_batches: 3\n")
    settings = load_emotion_settings(config)
    assert settings.learning_rate == 1e-4 and settings.limit_train_batches == 3
    assert settings.batch_size == 64 and settings.mlp.hidden_dim == 2048
    assert settings.mlp.n_hidden_layers == 4 and settings.va_loss.scheme == "shake"
    with pytest.raises(FileNotFoundError, match="nope.yaml: no such config file"):
        load_emotion_settings(tmp_path / "nope.yaml")
    for name in ("emotion_mlp.yaml", "emotion_cnn.yaml"):  # the shipped configs load
        load_emotion_settings(Path(__file__).parents[1] / "config" / name)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoca")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, register in (("train", register_train), ("predict", register_predict),
                           ("eval", register_eval)):
        group = commands.add_parser(name).add_subparsers(dest=f"{name}_command", required=True)
        register(group)
    return parser


def test_cli_user_errors_name_the_file(tmp_path: Path, codes_table: Path, capsys) -> None:
    parser = _parser()
    for command in (["train", "emotion"], ["predict", "emotion"], ["eval", "emotion"]):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*command, "--help"])
        assert exit_.value.code == 0
    assert "--tracking-uri URI" in capsys.readouterr().out
    config = tmp_path / "c.yaml"
    config.write_text("max_epochs: 1\n")
    args = parser.parse_args(["train", "emotion", "--input", "codes", "--config", str(config),
                              "--manifest", str(tmp_path / "missing.parquet"),
                              "--out", str(tmp_path / "out"), "--results", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="missing.parquet: no such Parquet table"):
        args.func(args)
    args = parser.parse_args(["train", "emotion", "--input", "images", "--config", str(config),
                              "--manifest", str(codes_table), "--out", str(tmp_path / "out"),
                              "--results", str(tmp_path / "results")])
    # The codes table names image files that do not exist.
    with pytest.raises(FileNotFoundError, match=r"synthetic\.parquet: image .*images/0000\.png "
                                                r"not found \(column 'path' 'images/0000\.png' "
                                                r"is relative to "):
        args.func(args)
    assert not (tmp_path / "results").exists()  # failed before any MLflow run


def test_running_validation_metrics_match_the_whole_set_metrics(mlp_run) -> None:
    """The module's torchmetrics (over batches) against the float64 whole-set metrics and
    scikit-learn on the same predictions."""
    result, _, table_path = mlp_run
    model, _ = load_emotion_model(result.model_path)
    module = EmotionModule(model).eval()
    data = EmotionDataModule(table_path, "codes", eval_batch_size=16,
                             mlp_settings=model.settings)
    with torch.no_grad():
        for step, batch in enumerate(data.dataloader("val")):
            module.validation_step(batch, step)
    running = {name: float(value) for name, value in
               {**module.val_valence.compute(), **module.val_expression.compute()}.items()}
    predictions = predict_batches(model, data.dataloader("val"))
    labels = data.labels(predictions.index)
    whole = regression_metrics(predictions.valence, labels.valence)
    n = len(labels.keys)
    assert n == 90
    assert running["val/v_pcc"] == pytest.approx(whole.pcc, abs=1e-5)
    assert running["val/v_rmse"] == pytest.approx(whole.rmse, rel=1e-5)
    assert running["val/v_sagr"] == pytest.approx(whole.sagr, abs=1e-12)
    # torchmetrics' CCC uses the n - 1 variance, the tables' the n one.
    assert running["val/v_ccc"] == pytest.approx(whole.ccc, rel=2.0 / n)
    assert running["val/accuracy"] == pytest.approx(
        accuracy_score(labels.expression, predictions.log_probs.argmax(axis=1)), abs=1e-6)


@pytest.mark.parametrize("network", ["emotion", "deca"])
def test_training_schema_checks_configs_as_the_loader_does(network: str, tmp_path: Path) -> None:
    """``emoca train schema NETWORK`` (for the workflow) accepts the shipped configs and
    refuses what the loader refuses, reading YAML 1.1 number strings the same way."""
    from emoca_pipeline.training.emoca_settings import load_emoca_settings

    load = load_emotion_settings if network == "emotion" else load_emoca_settings
    schema_file = tmp_path / "schema.json"
    assert main(["train", "schema", network, "--out", str(schema_file)]) == 0
    validator = Draft202012Validator(json.loads(schema_file.read_text()))
    shipped = sorted((Path(__file__).parents[1] / "config").glob(
        "emotion_*.yaml" if network == "emotion" else "emoca_*.yaml"))
    assert len(shipped) >= 2
    for config in shipped:
        assert not list(validator.iter_errors(yaml.safe_load(config.read_text()))), config
        load(config)
    cases = {"learning_rate: 1e-4\nbatch_size: 3\n": True, "batch_sise: 3\n": False,
             "batch_size: 0\n": False, "batch_size: many\n": False,
             "max_epochs: 1.5\n": False, "seed: [1]\n": False}
    for text, valid in cases.items():
        config = tmp_path / "c.yaml"
        config.write_text(text)
        assert validator.is_valid(yaml.safe_load(text)) == valid, text
        if valid:
            assert load(config).learning_rate == 1e-4
        else:
            with pytest.raises(ValueError, match=f"^{re.escape(str(config))}: "):
                load(config)


def test_precision_auto_is_float32_without_avx512_and_bf16_with_native_bf16() -> None:
    from emoca_pipeline.training.fit import FitSettings, trainer_precision

    assert trainer_precision(FitSettings(precision="16-mixed")) == "16-mixed"
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = set(re.findall(r"\b(avx512\w*|amx\w*)\b", cpuinfo.read_text()))
    resolved = trainer_precision(FitSettings(precision="auto", accelerator="cpu"))
    if not flags:  # no AVX-512 at all: bf16 would be emulated (20x slower, measured)
        assert resolved == "32-true"
    elif {"avx512_bf16", "amx_bf16"} & flags:
        assert resolved == "bf16-mixed"
    else:
        pytest.skip("AVX-512 without native bf16: oneDNN's own choice")


def test_max_steps_ending_the_first_epoch_before_its_validation_keeps_the_last_weights(
        tmp_path: Path, codes_table: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Lightning's default early stopping also checks at the end of a training epoch, where
    # val/loss does not exist yet when max_steps cut the epoch short: that run crashed.
    config = tmp_path / "short.yaml"
    config.write_text(MLP_CONFIG + "max_steps: 2\nval_every_n_epochs: 1\n")
    torch.set_num_threads(1)
    with caplog.at_level(logging.WARNING):
        result = train_emotion(config, codes_table, tmp_path / "out", "codes",
                               results_dir=tmp_path / "results")
    assert "no validation ran" in caplog.text
    assert json.loads((tmp_path / "out" / "training.json").read_text())["steps"] == 2
    assert load_emotion_model(result.model_path)[0] is not None
