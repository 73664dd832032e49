# Helpers shared by every stage: paths under the results folder, what each configured
# dataset and model resolves to, and the inputs/flags the rules share. No science here.
import json
import os
import shlex
import uuid
from pathlib import Path

from snakemake.exceptions import WorkflowError

# One id per workflow invocation, inherited by every job: the MLflow runs of its training and
# evaluation jobs nest under one parent run (see emoca_pipeline/tracking.py and onstart in
# the Snakefile, which creates that parent run and passes its id the same way).
os.environ.setdefault("EMOCA_WORKFLOW_ID", uuid.uuid4().hex)

# Special values of a dataset's `images` (anything else is a path).
SYNTHETIC, SAMPLE_PHOTOS, AFFECTNET, NOW, DOWNLOAD = (
    "synthetic", "sample_photos", "affectnet", "now", "download:"
)
#: The model the workflow trains (EMOCA's detail stage); released models join it by name.
TRAINED_MODEL = "emoca"
DECA_STAGE_MODEL = "deca"


def results(*parts):
    """A path under the configured results folder."""
    return str(Path(config["results"], *parts))


def mlflow_tracking_uri():
    """The configured MLflow tracking URI; default: a sqlite database in the results folder."""
    database = Path(results("mlflow.db")).resolve()
    return config["mlflow"]["tracking_uri"] or f"sqlite:///{database}"


def quoted(*options):
    """Shell words, each quoted (for flags assembled in params)."""
    return " ".join(shlex.quote(str(option)) for option in options)


# ---------------------------------------------------------------------------------------
# Gated data: checked at parse time by name (cheap: missing data fails before any job, with
# one message saying what to get, from where and where to put it) and by rule check_data
# (checksums too), whose report every consumer of the data takes as input.


def gated_data():
    """Check name -> (kind, folder, sha256 by file) of the licensed data this config uses;
    raises WorkflowError (one line) when one is missing or malformed."""
    gated = {}
    if config["assets"]["flame"] != "procedural":
        gated["flame"] = ("flame", config["assets"]["flame"], config["assets"].get("sha256", {}))
    kinds = {dataset["images"] for dataset in config["datasets"].values()}
    for kind in (AFFECTNET, NOW):
        if kind in kinds:
            gated[kind] = (kind, config[kind]["root"], config[kind].get("sha256", {}))
    for name, model in sorted(config["models"].items()):
        gated[f"model-{name}"] = ("emoca", model["path"], model.get("sha256", {}))
    if gated:
        from emoca_pipeline.io.download import check_data

        for kind, path, _ in gated.values():
            try:
                check_data(kind, path)
            except (FileNotFoundError, ValueError) as err:
                raise WorkflowError(f"emoca: error: {err}") from None
    return gated


def check_report(check):
    """The report of rule check_data for one entry of GATED."""
    return results("checks", f"{check}.json")


def flame_assets():
    """The FLAME asset folder: the procedural one made by rule `assets`, or the user's."""
    source = config["assets"]["flame"]
    if source == "procedural":
        return results("assets", "procedural")
    return source


def flame_inputs():
    """Inputs of rules that read the FLAME assets: the folder and, for a licensed one, its
    check report."""
    inputs = {"assets": flame_assets()}
    if config["assets"]["flame"] != "procedural":
        inputs["flame_check"] = check_report("flame")
    return inputs


def download_path(name):
    """Where rule download puts the file of config["downloads"][name]."""
    if name not in config["downloads"]:
        raise WorkflowError(f"emoca: error: download:{name}: no such entry in downloads "
                            f"(config has: {', '.join(sorted(config['downloads'])) or 'none'})")
    return str(Path(config["download_dir"], name, config["downloads"][name]["file"]))


def resolve(value):
    """A path value of the config: "download:NAME" -> its downloaded file."""
    return download_path(value[len(DOWNLOAD):]) if value.startswith(DOWNLOAD) else value


# ---------------------------------------------------------------------------------------
# Datasets: config["datasets"] keeps only the enabled ones (the Snakefile drops the rest).


def dataset_source(name):
    """(images, landmark tables, label files, gated check reports) of a dataset."""
    dataset = config["datasets"][name]
    images = dataset["images"]
    landmarks = [resolve_table(path) for path in dataset.get("landmarks", [])]
    labels = [resolve_table(path) for path in dataset.get("labels", [])]
    checks = []
    if images == SYNTHETIC:
        images = results("synthetic", "synthetic.parquet")
    elif images == SAMPLE_PHOTOS:
        images = results("sample_photos")
    elif images == AFFECTNET:
        root = Path(config["affectnet"]["root"])
        checks.append(check_report(AFFECTNET))
        lists = [str(root / "Manually_Annotated_file_lists" / name)
                 for name in ("training.csv", "validation.csv")]
        images = str(root / "Manually_Annotated_Images")
        landmarks = landmarks or (lists if dataset.get("landmarker") == "gt" else [])
        labels = labels or lists
    elif images == NOW:
        root = Path(config["now"]["root"])
        checks.append(check_report(NOW))
        images = str(root / "iphone_pictures")
    else:
        images = resolve(images)
    return images, landmarks, labels, checks


def resolve_table(name):
    """A label/landmark table of the config, with "synthetic" and downloads resolved."""
    return results("synthetic", "synthetic.parquet") if name == SYNTHETIC else resolve(name)


def label_files(names):
    """Label/landmark file names of the config, resolved."""
    return [resolve_table(name) for name in names]


def detect_source(wildcards):
    """What `emoca detect` reads for a dataset (a path)."""
    return dataset_source(wildcards.dataset)[0]


def detect_inputs(wildcards):
    """Snakemake inputs of a dataset's detection jobs: its images and landmark tables (and
    the check report of licensed data)."""
    images, landmarks, _, checks = dataset_source(wildcards.dataset)
    return {"images": images, "landmarks": landmarks, "checks": checks}


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
    for path in input.landmarks:
        options += ["--labels", path]
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
    _, _, labels, _ = dataset_source(wildcards.dataset)
    return {"detections": results("detect", wildcards.dataset, "summary.json"),
            "labels": labels}


def manifest_dataset(name):
    """The manifest folder of one dataset (what training and reconstruction read)."""
    return results("manifest", f"dataset={name}")


def manifest_datasets():
    return [manifest_dataset(name) for name in sorted(config["datasets"])]


# ---------------------------------------------------------------------------------------
# Models and reconstructions


def reconstruction_models():
    """Name -> model.pt of every model the datasets are reconstructed with: the trained
    EMOCA, its DECA stage alone (the paper's comparison) and the enabled released models."""
    models = {TRAINED_MODEL: results("emoca", "detail", "model.pt"),
              DECA_STAGE_MODEL: results("emoca", "deca", "model.pt")}
    for name in sorted(config["models"]):
        models[name] = results("models", name, "model.pt")
    return models


def model_path(wildcards):
    models = reconstruction_models()
    return models[wildcards.model]


def shard_count(dataset):
    return config["datasets"][dataset].get("shards") or config["reconstruct"]["shards"]


def reconstruction_shards(model, dataset):
    """The shard files of one model on one dataset (one job each)."""
    n = shard_count(dataset)
    return [results("reconstruct", model, dataset, f"shard-{i:05d}-of-{n:05d}.parquet")
            for i in range(n)]


def reconstruction_dir(model, dataset):
    return results("reconstruct", model, dataset)


def all_reconstructions():
    return [shard for model in reconstruction_models() for dataset in sorted(config["datasets"])
            for shard in reconstruction_shards(model, dataset)]


def datasets_of(kind):
    """Names of the enabled datasets whose images are `kind` (synthetic, affectnet, now)."""
    return [name for name, dataset in sorted(config["datasets"].items())
            if dataset["images"] == kind]


def codes_table(value):
    """A codes table of the config: "synthetic", "reconstruction:MODEL" (all of its shards on
    the emotion dataset) or a path; returns (Snakemake input, the path given to --codes)."""
    if value == SYNTHETIC:
        table = results("synthetic", "synthetic.parquet")
        return table, table
    if value.startswith("reconstruction:"):
        model = value[len("reconstruction:"):]
        dataset = config["emotion"]["dataset"]
        return reconstruction_shards(model, dataset), reconstruction_dir(model, dataset)
    return resolve(value), resolve(value)


# ---------------------------------------------------------------------------------------
# Emotion networks


def emotion_model(wildcards):
    return config["emotion"]["models"][wildcards.model]


def emotion_inputs(wildcards):
    """The manifest, the settings and, for an EmoMLP, its codes table."""
    inputs = {"manifest": manifest_dataset(config["emotion"]["dataset"]),
              "settings": emotion_model(wildcards)["config"]}
    if emotion_model(wildcards)["input"] == "codes":
        inputs["codes"] = codes_table(emotion_model(wildcards).get("codes", SYNTHETIC))[0]
    return inputs


def emotion_codes_flag(wildcards):
    model = emotion_model(wildcards)
    if model["input"] != "codes":
        return ""
    return quoted("--codes", codes_table(model.get("codes", SYNTHETIC))[1])


# ---------------------------------------------------------------------------------------
# EMOCA stages


def emoca_inputs(stage):
    """Inputs of one EMOCA stage: the manifest, codes, settings, previous stage / assets."""

    def inputs(wildcards):
        settings = config["emoca"]
        found = {"table": manifest_dataset(settings["dataset"]),
                 "settings": settings[f"{stage}_config"]}
        if settings["codes"]:
            found["codes"] = codes_table(settings["codes"])[0]
        if stage == "deca":
            found.update(flame_inputs())
        else:
            found["init"] = results("emoca", {"coarse": "deca", "detail": "coarse"}[stage],
                                    "model.pt")
        if stage == "coarse":
            found["emotion_network"] = results("emotion", "models",
                                               settings["emotion_network"], "model.pt")
        return found

    return inputs


def emoca_codes_flag():
    codes = config["emoca"]["codes"]
    return quoted("--codes", codes_table(codes)[1]) if codes else ""


# ---------------------------------------------------------------------------------------
# Reconstruction


def reconstruct_options():
    settings = config["reconstruct"]
    options = ["--device", settings["device"], "--batch-size", settings["batch_size"],
               "--precision", settings["precision"]]
    if settings["save"]:
        options += ["--save", ",".join(settings["save"])]
    if not settings["detail"]:
        options.append("--no-detail")
    return quoted(*options)


# ---------------------------------------------------------------------------------------
# Evaluation and report


def pairs(models, dataset):
    """NAME=DIR arguments: each model's reconstruction folder of `dataset` (quoted)."""
    return quoted(*(f"{model}={reconstruction_dir(model, dataset)}" for model in models))


def tracking_options():
    return quoted("--tracking-uri", mlflow_tracking_uri(),
                  "--experiment", config["mlflow"]["experiment"])


def evaluation_tables():
    """The CSV of every evaluation this config runs (the emotion networks' included)."""
    tables = [results("emotion", "emotion_table.csv")]
    tables += [results("evaluation", name, "synthetic_table.csv")
               for name in datasets_of(SYNTHETIC)]
    if datasets_of(NOW):
        tables += [results("evaluation", "now", model, "now_table.csv")
                   for model in reconstruction_models()]
    if datasets_of(AFFECTNET):
        tables.append(results("evaluation", "affectnet", "affectnet_table.csv"))
    return tables


# ---------------------------------------------------------------------------------------
# Cross-references


def check_references():
    """Cross-references the schema cannot express, as one-line errors."""
    enabled = ", ".join(sorted(config["datasets"])) or "none"
    for key in ("emotion", "emoca"):
        name = config[key]["dataset"]
        if name not in config["datasets"]:
            raise WorkflowError(f"emoca: error: config {key}.dataset: {name!r} is not an "
                                f"enabled dataset (enabled: {enabled})")
    network = config["emoca"]["emotion_network"]
    model = config["emotion"]["models"].get(network)
    if model is None or model["input"] != "images":
        raise WorkflowError(
            f"emoca: error: config emoca.emotion_network: {network!r} is not an image "
            f"network of emotion.models ({', '.join(sorted(config['emotion']['models']))}); "
            "the coarse stage's emotion-consistency loss needs one")
    codes = [config["emoca"]["codes"]] + [
        m.get("codes", SYNTHETIC) for m in config["emotion"]["models"].values()
        if m["input"] == "codes"
    ]
    for value in codes:
        if value.startswith("reconstruction:"):
            if value.split(":", 1)[1] not in reconstruction_models():
                raise WorkflowError(f"emoca: error: codes {value!r}: no such model "
                                    f"({', '.join(reconstruction_models())})")
        elif value == SYNTHETIC and not datasets_of(SYNTHETIC):
            raise WorkflowError("emoca: error: codes 'synthetic' need an enabled dataset with "
                                "images: synthetic")
