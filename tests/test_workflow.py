"""The Snakemake workflow and the `emoca` command, run for real in a scratch copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "profiles", "envs")


def _env() -> dict[str, str]:
    # A fresh invocation: no MLflow parent run or workflow id inherited from outside.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMOCA_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=workdir,
        env=_env(), capture_output=True, text=True, timeout=600,
    )
    if check and proc.returncode != 0:
        logs = "\n".join(f"--- {log}\n{log.read_text(errors='replace')[-3000:]}"
                         for log in sorted(workdir.rglob("logs/**/*.log")))
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}\n{logs}")
    return proc


# The default DAG, shrunk to test size (the README's command runs it at full size).
SMALL_CONFIG = """
synth: {n_images: 24, image_size: 128, images_per_identity: 2}
detect: {shard_size: 10}
emotion:
  models:
    emomlp_gt_codes: {input: codes, config: tiny_mlp.yaml}
    resnet50_images: {input: images, config: tiny_cnn.yaml}
emoca: {deca_config: tiny_emoca.yaml, coarse_config: tiny_emoca.yaml,
        detail_config: tiny_emoca.yaml}
"""
TINY_MLP = "max_epochs: 2\npatience: 1\nbatch_size: 16\nmlp: {hidden_dim: 64}\n"
TINY_CNN = "max_epochs: 1\npatience: 1\nbatch_size: 8\nimage: {image_size: 32}\n"
TINY_EMOCA = ("max_steps: -1\nmax_epochs: 1\nbatch_size: 8\nmodel: {image_size: 32}\n"
              "val_every_n_epochs: 1\nlimit_val_batches: 1\n")


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow in a folder whose name has a space and non-ASCII letters."""
    work = tmp_path / "wörk dir"
    work.mkdir()
    for name in WORKFLOW_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
    (work / "small.yaml").write_text(SMALL_CONFIG)
    (work / "tiny_mlp.yaml").write_text(TINY_MLP)
    (work / "tiny_cnn.yaml").write_text(TINY_CNN)
    (work / "tiny_emoca.yaml").write_text(TINY_EMOCA)
    return work


def test_lint_is_clean(workdir: Path) -> None:
    proc = _snakemake(workdir, "--lint")
    assert "Congratulations" in proc.stdout + proc.stderr


def test_default_dag_runs_and_reruns_nothing(workdir: Path) -> None:
    args = ("--configfile", "small.yaml", "--config", "results=out 'q' ü")
    _snakemake(workdir, *args)
    results = workdir / "out 'q' ü"
    report = json.loads((results / "assets" / "flame_check.json").read_text())
    assert report["landmarks"] == 68 and report["vertices"] > 1000
    assert pq.read_metadata(results / "synthetic" / "synthetic.parquet").num_rows == 24
    summary = json.loads((results / "detect" / "synthetic" / "summary.json").read_text())
    assert summary["images"] == 24
    table = (results / "emotion" / "emotion_table.md").read_text()
    assert "emomlp_gt_codes" in table and "resnet50_images" in table and "E-ACC" in table
    assert (results / "emoca" / "detail" / "model.pt").is_file()
    for rule in ("assets", "flame_check", "synth", "train_emotion", "eval_emotion",
                 "train_emoca"):
        assert list((results / "logs").glob(f"{rule}*")), rule
        assert list((results / "benchmarks").glob(f"{rule}*")), rule
    again = _snakemake(workdir, *args)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_config_is_validated_against_the_schema(workdir: Path) -> None:
    (workdir / "bad.yaml").write_text("flame:\n  n_shape: 400\n")
    proc = _snakemake(workdir, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert "400 is greater than the maximum of 300" in proc.stdout + proc.stderr


def test_user_asset_folder_errors_name_the_folder(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "emoca_pipeline", "flame", "check", str(tmp_path / "nope")],
        capture_output=True, text=True, env=_env(),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"emoca: error: {tmp_path / 'nope'}: no such FLAME asset " \
        "folder or model file"


@pytest.mark.parametrize("command", [[], ["assets"], ["assets", "procedural"], ["flame"],
                                     ["flame", "check"]])
def test_every_subcommand_has_help(command: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "emoca_pipeline", *command, "--help"],
                          capture_output=True, text=True, env=_env())
    assert proc.returncode == 0 and "usage: emoca" in proc.stdout
