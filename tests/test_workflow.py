"""The Snakemake workflow and the `emoca` command, run for real in a scratch copy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from workflow_helpers import copy_workflow


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
    copy_workflow(work)
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
                 "train_emoca", "reconstruct", "evaluation"):
        assert list((results / "logs").glob(f"{rule}*")), rule
        assert list((results / "benchmarks").glob(f"{rule}*")), rule
    # every dataset reconstructed, in 2 shards each
    for dataset in ("synthetic", "photos"):
        shards = sorted((results / "reconstruct" / "emoca" / dataset).glob("shard-*.parquet"))
        assert [s.name for s in shards] == ["shard-00000-of-00002.parquet",
                                            "shard-00001-of-00002.parquet"], dataset
    assert "emotion_table" in (results / "tables" / "tables.md").read_text()
    assert "synthetic_table" in (results / "tables" / "tables.md").read_text()
    assert (results / "report" / "contact_sheet_emoca.png").stat().st_size > 1000
    bench = (results / "report" / "benchmarks.tsv").read_text().splitlines()
    assert bench[0].split("\t") == ["job", "seconds", "max_rss_mb", "cpu_time_s"]
    assert len(bench) > 15
    _check_mlflow_layout(results)
    again = _snakemake(workdir, *args)
    assert "Nothing to be done" in again.stdout + again.stderr
    proc = _snakemake(workdir, *args, "--report", "report.zip")
    assert (workdir / "report.zip").stat().st_size > 10000, proc.stderr[-2000:]


def _check_mlflow_layout(results: Path) -> None:
    """One parent run for the invocation (made in onstart, ended in onsuccess), with every
    training and evaluation job as its child."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("emoca-pipeline")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("emoca.parent") == "snakemake"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")
                == parents[0].info.run_id]
    names = sorted(r.info.run_name for r in children)
    assert len(children) >= 6, names  # 2 emotion nets, 3 EMOCA stages, >= 1 evaluation
    assert all(r.info.status == "FINISHED" for r in children), names


def _licensed_data(root: Path) -> dict[str, Path]:
    """Folders laid out like the licensed releases (names only: for a dry run)."""
    affectnet = root / "Affect Net"
    (affectnet / "Manually_Annotated_Images").mkdir(parents=True)
    lists = affectnet / "Manually_Annotated_file_lists"
    lists.mkdir()
    header = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
              "expression,valence,arousal\n")
    for name in ("training.csv", "validation.csv"):
        (lists / name).write_text(header)
    now = root / "NoW"
    for name in ("iphone_pictures", "scans", "scans_lmks_onlypp"):
        (now / name).mkdir(parents=True)
    (now / "imagepathsvalidation.txt").write_text("")
    model = root / "EMOCA_v2_lr_mse_20"
    checkpoints = model / "detail" / "checkpoints" / "deca-epoch=03-val_loss"
    checkpoints.mkdir(parents=True)
    (checkpoints / "x=0.1.ckpt").write_bytes(b"")
    (model / "cfg.yaml").write_text("coarse: {}\ndetail: {}\n")
    return {"affectnet": affectnet, "now": now, "model": model}


def test_dry_run_of_a_full_config_lists_every_rule(workdir: Path) -> None:
    data = _licensed_data(workdir / "data")
    photos = workdir / "my phötos"
    photos.mkdir()
    full = f"""
downloads:
  clip: {{url: "http://127.0.0.1:9/clip.mp4", sha256: "{'a' * 64}", file: clip.mp4}}
datasets:
  folder: {{enabled: true, images: "{photos}"}}
  video: {{enabled: true, images: "download:clip"}}
  affectnet: {{enabled: true}}
  now: {{enabled: true}}
affectnet: {{root: "{data['affectnet']}"}}
now: {{root: "{data['now']}"}}
models:
  emoca_v2_released: {{enabled: true, path: "{data['model']}"}}
"""
    (workdir / "full.yaml").write_text(full)
    proc = _snakemake(workdir, "-n", "--configfile", "full.yaml")
    table = proc.stdout.split("Job stats:")[1].split("\ntotal")[0].splitlines()[3:]
    jobs = {line.split()[0] for line in table if line.strip()}
    rules = set(_snakemake(workdir, "--list-rules").stdout.split())
    # detect_shard jobs appear once the checkpoint detect_plan has run
    assert jobs == rules - {"detect_shard"}, rules ^ jobs
    assert "reconstruct" in rules and "detect_shard" in rules


def test_missing_licensed_data_fails_before_any_job_with_one_message(workdir: Path) -> None:
    (workdir / "now.yaml").write_text("datasets:\n  now: {enabled: true}\n"
                                      "now: {root: /nowhere/NoW}\n")
    proc = _snakemake(workdir, "-n", "--configfile", "now.yaml", check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "emoca: error:" in line]
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "/nowhere/NoW: no such folder" in lines[0]
    assert "https://now.is.tue.mpg.de" in lines[0] and "now.root" in lines[0]


def test_config_cross_references_are_checked(workdir: Path) -> None:
    (workdir / "bad.yaml").write_text("emoca: {emotion_network: emomlp_gt_codes}\n")
    proc = _snakemake(workdir, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert "config emoca.emotion_network: 'emomlp_gt_codes' is not an image network" in \
        proc.stdout + proc.stderr


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


# A cheap part of the DAG: the synthetic photos and their detection shards.
DETECT_CONFIG = """
synth: {n_images: 12, image_size: 96, images_per_identity: 2}
detect: {shard_size: 4}
"""
DETECT_TARGET = "results/detect/synthetic/summary.json"


def _detection_outputs(results: Path) -> dict[str, object]:
    """Every output of the synth + detect jobs, as comparable values (repr: NaN == NaN)."""
    outputs: dict[str, object] = {}
    for path in sorted(results.rglob("*")):
        if not path.is_file() or {"logs", "benchmarks", "mlartifacts"} & set(path.parts) \
                or path.name.startswith("mlflow.db"):  # the run's records, not outputs
            continue
        key = str(path.relative_to(results))
        if path.suffix == ".parquet":
            outputs[key] = repr(pq.read_table(path).to_pylist())
        elif path.suffix == ".json":  # without the run's timing
            outputs[key] = {k: v for k, v in json.loads(path.read_text()).items()
                            if k != "seconds"}
        else:
            outputs[key] = path.read_bytes()
    return outputs


def test_sigkill_mid_run_then_rerun_gives_the_outputs_of_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    # Both runs in one folder (outputs hold absolute input paths): first uninterrupted.
    work = tmp_path / "work"
    work.mkdir()
    copy_workflow(work)
    (work / "small.yaml").write_text(DETECT_CONFIG)
    _snakemake(work, DETECT_TARGET, "--configfile", "small.yaml")
    first = _detection_outputs(work / "results")
    shutil.rmtree(work / "results")
    shutil.rmtree(work / ".snakemake")

    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", DETECT_TARGET,
         "--configfile", "small.yaml"],
        cwd=work, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    # Kill snakemake and its running jobs (the whole process group) once detection runs.
    started = work / "results" / "logs" / "detect" / "synthetic" / "shard-00000.log"
    deadline = time.monotonic() + 300
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / DETECT_TARGET).exists()

    _snakemake(work, "--unlock")
    _snakemake(work, DETECT_TARGET, "--configfile", "small.yaml")
    second = _detection_outputs(work / "results")
    assert sorted(first) == sorted(second)
    for key in first:
        assert first[key] == second[key], key
    again = _snakemake(work, DETECT_TARGET, "--configfile", "small.yaml", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_input_folder_with_spaces_and_non_ascii_names(workdir: Path) -> None:
    from PIL import Image
    from skimage import data

    photos = workdir / "Fotos vom Ausflug – Zürich 'q'"
    (photos / "sub dir").mkdir(parents=True)
    face = Image.fromarray(data.astronaut())
    face.save(photos / "astronaut ü.png")
    face.resize((256, 256)).save(photos / "sub dir" / "klein é.jpg")
    (workdir / "folder.yaml").write_text(
        f'datasets:\n  folder: {{enabled: true, images: "{photos}"}}\n')
    target = "results/manifest/_summary-folder.json"
    _snakemake(workdir, target, "--configfile", "folder.yaml")
    summary = json.loads((workdir / "results" / "detect" / "folder" / "summary.json").read_text())
    assert summary["images"] == 2
    table = pq.read_table(workdir / "results" / "manifest" / "dataset=folder")
    assert sorted(table.column("path").to_pylist()) == ["astronaut ü.png", "sub dir/klein é.jpg"]
