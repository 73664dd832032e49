# Helpers shared by every stage.
import json
import os
import shlex
import uuid
from pathlib import Path

# One id per workflow invocation, inherited by every job: the training jobs' MLflow runs
# nest under one parent run (see emoca_pipeline/tracking.py).
os.environ.setdefault("EMOCA_WORKFLOW_ID", uuid.uuid4().hex)


def results(*parts):
    """A path under the configured results folder."""
    return str(Path(config["results"], *parts))


def mlflow_tracking_uri():
    """The configured MLflow tracking URI; default: a sqlite database in the results folder."""
    return config["mlflow"]["tracking_uri"] or "sqlite:///" + str(
        Path(results("mlflow.db")).resolve()
    )


def emoca_table():
    """EMOCA's training table: the synthetic one of rule `synth`, or the configured path."""
    table = config["emoca"]["table"]
    if table == "synthetic":
        return results("synthetic", "synthetic.parquet")
    return table


def flame_assets():
    """The FLAME asset folder: the procedural one made by rule `assets`, or the user's."""
    source = config["assets"]["flame"]
    if source == "procedural":
        return results("assets", "procedural")
    return source


# Data stage (detect.smk, manifest.smk): which files a dataset's jobs read, and the
# `emoca detect` flags they share. Datasets come from config["datasets"].




def detect_source(wildcards):
    """What `emoca detect` reads for a dataset (a path)."""
    images = config["datasets"][wildcards.dataset]["images"]
    if images == "synthetic":
        return results("synthetic", "synthetic.parquet")
    if images == "sample_photos":
        return results("sample_photos")
    return images


def label_files(names):
    """Label/landmark file names of the config, with "synthetic" resolved."""
    return [results("synthetic", "synthetic.parquet") if name == "synthetic" else name
            for name in names]


def detect_inputs(wildcards):
    """Snakemake inputs of a dataset's detection jobs: its images and landmark tables."""
    dataset = config["datasets"][wildcards.dataset]
    return {"images": detect_source(wildcards),
            "landmarks": label_files(dataset.get("landmarks", []))}


def detect_options(wildcards, input):
    """`emoca detect` flags shared by the plan, shard and summary jobs (quoted)."""
    dataset = config["datasets"][wildcards.dataset]
    settings = config["detect"]
    options = [
        "--landmarker", dataset.get("landmarker", "mediapipe"),
        "--max-faces", str(settings["max_faces"]),
        "--max-pixels", str(settings["max_pixels"]),
        "--shard-size", str(settings["shard_size"]),
    ]
    if input.landmarks:
        options += ["--labels", *input.landmarks]
    return " ".join(shlex.quote(option) for option in options)


def detect_shards(wildcards):
    """The shard files of a dataset, known once its plan is written."""
    plan = checkpoints.detect_plan.get(dataset=wildcards.dataset).output.plan
    with open(plan, encoding="utf-8") as f:
        shards = json.load(f)["shards"]
    return [results("detect", wildcards.dataset, f"shard-{shard:05d}.parquet")
            for shard in range(shards)]


def manifest_inputs(wildcards):
    """The detection summary (all shards done) and the label files of a dataset."""
    dataset = config["datasets"][wildcards.dataset]
    return {"detections": results("detect", wildcards.dataset, "summary.json"),
            "labels": label_files(dataset.get("labels", []))}


def manifest_datasets():
    return expand(results("manifest", "dataset={dataset}"), dataset=sorted(config["datasets"]))
