# Face detection, one job per shard. The checkpoint `detect_plan` (`emoca detect plan`) lists
# a dataset's images (sorted) and fixes its number of shards; `detect_shard` runs
# `emoca detect shard --shard K` for each; `detect_summary` (`emoca detect summary`) checks
# that every image has its rows and writes summary.json.
# Datasets come from config["datasets"]: `images` is a folder, a file list or a video, or
# "synthetic" (the table of rule `synth`) or "sample_photos" (rule `sample_photos`).
# Helpers (detect_inputs, detect_options, detect_shards): common.smk.


rule sample_photos:
    output:
        directory(results("sample_photos")),
    log:
        results("logs", "sample_photos.log"),
    benchmark:
        results("benchmarks", "sample_photos.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca sample-photos {output:q} > {log:q} 2>&1"


checkpoint detect_plan:
    input:
        unpack(detect_inputs),
    output:
        plan=results("detect", "{dataset}", "plan.json"),
        listing=results("detect", "{dataset}", "listing.parquet"),
    params:
        out=lambda wildcards, output: str(Path(output.plan).parent),
        options=detect_options,
    wildcard_constraints:
        dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    log:
        results("logs", "detect", "{dataset}", "plan.log"),
    benchmark:
        results("benchmarks", "detect", "{dataset}", "plan.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca detect plan {input.images:q} {params.out:q} {params.options} > {log:q} 2>&1"


rule detect_shard:
    input:
        unpack(detect_inputs),
        plan=results("detect", "{dataset}", "plan.json"),
    output:
        results("detect", "{dataset}", "shard-{shard}.parquet"),
    params:
        out=lambda wildcards, output: str(Path(output[0]).parent),
        shard=lambda wildcards: int(wildcards.shard),
        options=detect_options,
    wildcard_constraints:
        dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
        shard=r"\d{5}",
    threads: config["detect"]["workers"]
    resources:
        mem_mb=lambda wildcards, threads: 1500 * threads,
    log:
        results("logs", "detect", "{dataset}", "shard-{shard}.log"),
    benchmark:
        results("benchmarks", "detect", "{dataset}", "shard-{shard}.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca detect shard {input.images:q} {params.out:q} --shard {params.shard}"
        " --workers {threads} --no-progress {params.options} > {log:q} 2>&1"


rule detect_summary:
    input:
        unpack(detect_inputs),
        shards=detect_shards,
    output:
        results("detect", "{dataset}", "summary.json"),
    params:
        out=lambda wildcards, output: str(Path(output[0]).parent),
        options=detect_options,
    wildcard_constraints:
        dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    log:
        results("logs", "detect", "{dataset}", "summary.log"),
    benchmark:
        results("benchmarks", "detect", "{dataset}", "summary.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca detect summary {input.images:q} {params.out:q} --no-progress {params.options}"
        " > {log:q} 2>&1"
