# Emotion networks: one training job per entry of config["emotion"]["models"] (EmoMLP on
# FLAME codes, or the ResNet-50 network on image crops), then the paper-format table
# comparing them on the manifest's test split. Runs are tracked in MLflow (default: a
# sqlite database in the results folder).


rule train_emotion:
    input:
        manifest=(
            results("synthetic", "synthetic.parquet")
            if config["emotion"]["manifest"] == "synthetic"
            else config["emotion"]["manifest"]
        ),
        settings=lambda wildcards: config["emotion"]["models"][wildcards.model]["config"],
    output:
        model=results("emotion", "models", "{model}", "model.pt"),
        predictions=results("emotion", "models", "{model}", "predictions.parquet"),
        summary=results("emotion", "models", "{model}", "training.json"),
    params:
        kind=lambda wildcards: config["emotion"]["models"][wildcards.model]["input"],
        out=lambda wildcards, output: Path(output.model).parent,
        tracking_uri=mlflow_tracking_uri(),
        experiment=config["mlflow"]["experiment"],
    wildcard_constraints:
        model=r"[A-Za-z0-9_.-]+",
    threads: 2
    resources:
        mem_mb=4000,
    log:
        results("logs", "train_emotion", "{model}.log"),
    benchmark:
        results("benchmarks", "train_emotion", "{model}.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca train emotion --input {params.kind} --config {input.settings:q}"
        " --manifest {input.manifest:q} --out {params.out:q} --name {wildcards.model:q}"
        " --tracking-uri {params.tracking_uri:q} --experiment {params.experiment:q}"
        " --threads {threads} > {log:q} 2>&1"


rule eval_emotion:
    input:
        expand(
            results("emotion", "models", "{model}", "predictions.parquet"),
            model=sorted(config["emotion"]["models"]),
        ),
    output:
        csv=results("emotion", "emotion_table.csv"),
        markdown=results("emotion", "emotion_table.md"),
        latex=results("emotion", "emotion_table.tex"),
        confusion=results("emotion", "confusion_matrices.png"),
        metrics=results("emotion", "emotion_metrics.json"),
    params:
        out=lambda wildcards, output: Path(output.csv).parent,
    log:
        results("logs", "eval_emotion.log"),
    benchmark:
        results("benchmarks", "eval_emotion.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca eval emotion --predictions {input:q} --out {params.out:q} > {log:q} 2>&1"
