# emoca-pipeline: the whole DAG, from assets to paper tables. Logic lives in the
# `emoca` command (emoca_pipeline/cli.py); the rules only wire files together.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/assets.smk"
include: "workflow/rules/synth.smk"
include: "workflow/rules/detect.smk"
include: "workflow/rules/manifest.smk"
include: "workflow/rules/emotion.smk"
include: "workflow/rules/train.smk"


rule all:
    input:
        results("assets", "flame_check.json"),
        results("synthetic", "synthetic.parquet"),
        expand(results("detect", "{dataset}", "summary.json"), dataset=sorted(config["datasets"])),
        results("manifest", "_stats.json"),
        results("emotion", "emotion_table.md"),
        results("emoca", "detail", "model.pt"),
    default_target: True
