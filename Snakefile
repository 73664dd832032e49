# emoca-pipeline: one DAG from download to paper tables and a report. Logic lives in the
# `emoca` command (emoca_pipeline/cli/); the rules only wire files together:
#
#   download / check_data -> synth, sample_photos -> detect (sharded) -> manifest
#     -> train_emotion -> eval_emotion
#     -> train_deca -> train_coarse (+ the image emotion network) -> train_detail
#     -> reconstruct (every dataset x model, sharded, gpu) -> eval_synthetic / now / affectnet
#     -> tables, contact_sheet, benchmark_summary  (snakemake --report report.zip)
#
# Run locally: `snakemake` (profiles/default is the workflow profile Snakemake picks up by
# itself); on Slurm: `snakemake --profile slurm` (see profiles/slurm/config.yaml).
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")

# Entries switched off with `enabled: false` stay in the config file but not in the DAG.
config["datasets"] = {
    name: dataset for name, dataset in config["datasets"].items() if dataset["enabled"]
}
config["models"] = {
    name: model for name, model in config["models"].items() if model.get("enabled", True)
}


include: "workflow/rules/common.smk"


# Set by common.smk (one id per invocation); passed on to jobs on any executor.
envvars:
    "EMOCA_WORKFLOW_ID",


check_references()
# Licensed data this config uses (checked by name now, by checksum in rule check_data).
GATED = gated_data()


include: "workflow/rules/download.smk"
include: "workflow/rules/assets.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/emotion.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/reconstruct.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# Quick jobs that only fetch, check or gather files run in the Snakemake process itself,
# not as cluster jobs (download also because compute nodes often have no internet).
localrules:
    all,
    download,
    check_data,
    sample_photos,
    manifest_stats,
    tables,
    contact_sheet,
    benchmark_summary,


# MLflow: one parent run per invocation that runs jobs; every training and evaluation job
# nests its run under it ($EMOCA_MLFLOW_PARENT_RUN, inherited by local and Slurm jobs).
# A parent given from outside (the variable already set) is used and left open.
_OWN_PARENT_RUN = "EMOCA_MLFLOW_PARENT_RUN" not in os.environ


onstart:
    if _OWN_PARENT_RUN:
        from emoca_pipeline.tracking import start_workflow_run

        workflow_id = os.environ["EMOCA_WORKFLOW_ID"]
        start_workflow_run(
            config["mlflow"]["tracking_uri"] or None,
            config["results"],
            experiment=config["mlflow"]["experiment"],
            run_name=f"workflow {workflow_id[:8]}",
            tags={"emoca.workflow_id": workflow_id, "emoca.parent": "snakemake"},
        )


onsuccess:
    if _OWN_PARENT_RUN and os.environ.get("EMOCA_MLFLOW_PARENT_RUN"):
        from emoca_pipeline.tracking import end_workflow_run

        end_workflow_run(config["mlflow"]["tracking_uri"] or None, config["results"],
                         status="FINISHED")


onerror:
    if _OWN_PARENT_RUN and os.environ.get("EMOCA_MLFLOW_PARENT_RUN"):
        from emoca_pipeline.tracking import end_workflow_run

        end_workflow_run(config["mlflow"]["tracking_uri"] or None, config["results"],
                         status="FAILED")


rule all:
    input:
        results("assets", "flame_check.json"),
        results("manifest", "_stats.json"),
        results("emotion", "emotion_table.md"),
        results("emoca", "detail", "model.pt"),
        results("tables", "tables.md"),
        results("tables", "tables.html"),
        expand(results("report", "contact_sheet_{model}.png"), model=reconstruction_models()),
        results("report", "benchmarks.tsv"),
    default_target: True
