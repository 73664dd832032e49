# Paper tables from the reconstructions: the synthetic benchmark (ground-truth codes and
# geometry) for each synthetic dataset, NoW (per model) and AffectNet emotion recognition
# from codes when those datasets are enabled. Each job is an MLflow child run of the
# workflow's parent run (--tracking-uri/--experiment; the parent comes from the environment),
# holding the table's cells as metrics and its files as artifacts; the EmoMLPs it trains on
# reconstructed codes (config evaluation.emotion_config) are runs nested under it.

rule eval_synthetic:
    input:
        **flame_inputs(),
        reconstructions=lambda wildcards: [
            shard for model in reconstruction_models()
            for shard in reconstruction_shards(model, wildcards.dataset)
        ],
        table=results("synthetic", "synthetic.parquet"),
        emotion_config=config["evaluation"]["emotion_config"],
    output:
        csv=report(
            results("evaluation", "{dataset}", "synthetic_table.csv"),
            caption="../report/synthetic_table.rst",
            category="Tables",
            labels={"table": "synthetic benchmark ({dataset})"},
        ),
        other=multiext(results("evaluation", "{dataset}", "synthetic_table"), ".md", ".tex",
                       ".json"),
        plot=report(
            results("evaluation", "{dataset}", "synthetic_metrics.png"),
            caption="../report/synthetic_plot.rst",
            category="Plots",
            labels={"plot": "synthetic benchmark ({dataset})"},
        ),
    params:
        reconstructions=lambda wildcards: pairs(reconstruction_models(), wildcards.dataset),
        out=lambda wildcards, output: str(Path(output.csv).parent),
        tracking=tracking_options(),
    wildcard_constraints:
        dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    log:
        results("logs", "evaluation", "{dataset}", "synthetic.log"),
    benchmark:
        results("benchmarks", "evaluation", "{dataset}", "synthetic.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca eval synthetic --reconstructions {params.reconstructions}"
        " --table {input.table:q} --assets {input.assets:q}"
        " --emotion-config {input.emotion_config:q} --out {params.out:q}"
        " {params.tracking} --run-name 'eval synthetic {wildcards.dataset}'"
        " --threads {threads} > {log:q} 2>&1"


rule eval_now:
    input:
        reconstructions=lambda wildcards: reconstruction_shards(wildcards.model,
                                                                datasets_of(NOW)[0]),
        model=model_path,
        check=check_report(NOW),
    output:
        csv=report(
            results("evaluation", "now", "{model}", "now_table.csv"),
            caption="../report/now_table.rst",
            category="Tables",
            labels={"table": "NoW ({model})"},
        ),
        other=multiext(results("evaluation", "now", "{model}", "now_table"), ".md", ".tex",
                       ".json"),
        plot=report(
            results("evaluation", "now", "{model}", "now_cumulative_error.png"),
            caption="../report/now_plot.rst",
            category="Plots",
            labels={"plot": "NoW cumulative error ({model})"},
        ),
    params:
        reconstructions=lambda wildcards: reconstruction_dir(wildcards.model,
                                                             datasets_of(NOW)[0]),
        root=config["now"]["root"],
        split=config["now"]["split"],
        out=lambda wildcards, output: str(Path(output.csv).parent),
        tracking=tracking_options(),
    wildcard_constraints:
        model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    log:
        results("logs", "evaluation", "now", "{model}.log"),
    benchmark:
        results("benchmarks", "evaluation", "now", "{model}.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca eval now --reconstructions {params.reconstructions:q} --model {input.model:q}"
        " --now-root {params.root:q} --split {params.split} --out {params.out:q}"
        " --name {wildcards.model:q} {params.tracking} --threads {threads} > {log:q} 2>&1"


rule eval_affectnet:
    input:
        reconstructions=lambda wildcards: [
            shard for model in reconstruction_models()
            for shard in reconstruction_shards(model, datasets_of(AFFECTNET)[0])
        ],
        check=check_report(AFFECTNET),
        emotion_config=config["evaluation"]["emotion_config"],
    output:
        csv=report(
            results("evaluation", "affectnet", "affectnet_table.csv"),
            caption="../report/affectnet_table.rst",
            category="Tables",
            labels={"table": "AffectNet from codes"},
        ),
        other=multiext(results("evaluation", "affectnet", "affectnet_table"), ".md", ".tex",
                       ".json"),
        confusion=report(
            results("evaluation", "affectnet", "affectnet_confusion_matrices.png"),
            caption="../report/affectnet_confusion.rst",
            category="Plots",
            labels={"plot": "AffectNet confusion matrices"},
        ),
    params:
        # One folder per model holds all splits (the manifest's split column is passed
        # through): given as both --train and --test, its split column chooses the rows
        # (train and val train the EmoMLP, test tests it).
        train=lambda wildcards: pairs(reconstruction_models(), datasets_of(AFFECTNET)[0]),
        test=lambda wildcards: pairs(reconstruction_models(), datasets_of(AFFECTNET)[0]),
        out=lambda wildcards, output: str(Path(output.csv).parent),
        tracking=tracking_options(),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    log:
        results("logs", "evaluation", "affectnet.log"),
    benchmark:
        results("benchmarks", "evaluation", "affectnet.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca eval affectnet --train {params.train} --test {params.test}"
        " --emotion-config {input.emotion_config:q} --out {params.out:q}"
        " {params.tracking} --threads {threads} > {log:q} 2>&1"
