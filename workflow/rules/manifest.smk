# The manifest: each dataset's detections joined with its labels (config["datasets"][name]
# ["labels"]: AffectNet's training.csv and validation.csv, "synthetic", or none) into
# results/manifest/dataset=NAME/split=.../part-0.parquet (`emoca manifest build`), then
# counts per split and class (`emoca manifest stats`).
# Helpers (manifest_inputs, manifest_datasets): common.smk.


rule manifest:
    input:
        unpack(manifest_inputs),
    output:
        data=directory(results("manifest", "dataset={dataset}")),
        summary=results("manifest", "_summary-{dataset}.json"),
    params:
        detections=lambda wildcards, input: str(Path(input.detections).parent),
        out=lambda wildcards, output: str(Path(output.summary).parent),
        labels=lambda wildcards, input: " ".join(
            f"--labels {shlex.quote(path)}" for path in input.labels
        ),
        validation_split=config["manifest"]["validation_split"],
        val_fraction=config["manifest"]["val_fraction"],
        test_fraction=config["manifest"]["test_fraction"],
    wildcard_constraints:
        dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    log:
        results("logs", "manifest", "{dataset}.log"),
    benchmark:
        results("benchmarks", "manifest", "{dataset}.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca manifest build {params.detections:q} {params.out:q}"
        " --dataset {wildcards.dataset:q} --validation-split {params.validation_split}"
        " --val-fraction {params.val_fraction} --test-fraction {params.test_fraction}"
        " {params.labels} > {log:q} 2>&1"


rule manifest_stats:
    input:
        manifest_datasets(),
    output:
        results("manifest", "_stats.json"),
    params:
        manifest=lambda wildcards, output: str(Path(output[0]).parent),
    log:
        results("logs", "manifest", "stats.log"),
    benchmark:
        results("benchmarks", "manifest", "stats.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca manifest stats {params.manifest:q} --out {output:q} > {log:q} 2>&1"
