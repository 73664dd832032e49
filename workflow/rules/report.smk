# What a person opens after a run: every table on one page (results/tables/), a contact
# sheet of each model's reconstructions and overlays, and a summary of the benchmark files;
# all of them, with the evaluation tables and plots, go into `snakemake --report report.zip`
# (captions: workflow/report/*.rst). Local rules: they only gather files.


rule tables:
    input:
        tables=evaluation_tables(),
    output:
        markdown=results("tables", "tables.md"),
        html=report(
            results("tables", "tables.html"),
            caption="../report/tables.rst",
            category="Tables",
            labels={"table": "all tables"},
        ),
    log:
        results("logs", "tables.log"),
    conda:
        "../../envs/emoca.yaml"
    script:
        "../scripts/tables.py"


rule contact_sheet:
    input:
        lambda wildcards: [shard for dataset in sorted(config["datasets"])
                           for shard in reconstruction_shards(wildcards.model, dataset)],
    output:
        report(
            results("report", "contact_sheet_{model}.png"),
            caption="../report/contact_sheet.rst",
            category="Reconstructions",
            labels={"model": "{model}"},
        ),
    params:
        folders=lambda wildcards: {dataset: reconstruction_dir(wildcards.model, dataset)
                                   for dataset in sorted(config["datasets"])},
        faces=config["report"]["contact_sheet_faces"],
    wildcard_constraints:
        model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    log:
        results("logs", "contact_sheet", "{model}.log"),
    conda:
        "../../envs/emoca.yaml"
    script:
        "../scripts/contact_sheet.py"


rule benchmark_summary:
    input:
        # everything else the workflow makes, so that every benchmark file exists
        results("tables", "tables.md"),
        expand(results("report", "contact_sheet_{model}.png"), model=reconstruction_models()),
        results("manifest", "_stats.json"),
        results("assets", "flame_check.json"),
    output:
        report(
            results("report", "benchmarks.tsv"),
            caption="../report/benchmarks.rst",
            category="Benchmarks",
            labels={"file": "all jobs"},
        ),
    params:
        folder=results("benchmarks"),
    log:
        results("logs", "benchmark_summary.log"),
    conda:
        "../../envs/emoca.yaml"
    script:
        "../scripts/benchmarks.py"
