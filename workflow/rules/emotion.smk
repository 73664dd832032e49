# Emotion networks: one training job per entry of config["emotion"]["models"] (EmoMLP on
# FLAME codes, or the ResNet-50 network on image crops), on the manifest of
# config["emotion"]["dataset"] (train/val/test splits from the manifest), then the
# paper-format table comparing them on its test split. Each training job is an MLflow child
# run of the workflow's parent run (default store: sqlite in the results folder).


rule train_emotion:
    input:
        unpack(emotion_inputs),
    output:
        model=results("emotion", "models", "{model}", "model.pt"),
        predictions=results("emotion", "models", "{model}", "predictions.parquet"),
        summary=results("emotion", "models", "{model}", "training.json"),
    params:
        kind=lambda wildcards: emotion_model(wildcards)["input"],
        codes=emotion_codes_flag,
        out=lambda wildcards, output: Path(output.model).parent,
        tracking_uri=mlflow_tracking_uri(),
        experiment=config["mlflow"]["experiment"],
    wildcard_constraints:
        model=r"[A-Za-z0-9_.-]+",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    log:
        results("logs", "train_emotion", "{model}.log"),
    benchmark:
        results("benchmarks", "train_emotion", "{model}.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca train emotion --input {params.kind} --config {input.settings:q}"
        " --manifest {input.manifest:q} {params.codes} --out {params.out:q}"
        " --name {wildcards.model:q} --tracking-uri {params.tracking_uri:q}"
        " --experiment {params.experiment:q} --threads {threads} > {log:q} 2>&1"


rule eval_emotion:
    input:
        expand(
            results("emotion", "models", "{model}", "predictions.parquet"),
            model=sorted(config["emotion"]["models"]),
        ),
    output:
        csv=report(
            results("emotion", "emotion_table.csv"),
            caption="../report/emotion_table.rst",
            category="Tables",
            labels={"table": "emotion recognition"},
        ),
        markdown=results("emotion", "emotion_table.md"),
        latex=results("emotion", "emotion_table.tex"),
        confusion=report(
            results("emotion", "confusion_matrices.png"),
            caption="../report/confusion.rst",
            category="Plots",
            labels={"plot": "confusion matrices"},
        ),
        metrics=results("emotion", "emotion_metrics.json"),
    params:
        out=lambda wildcards, output: Path(output.csv).parent,
        tracking=tracking_options(),
    resources:
        mem_mb=2000,
        runtime=30,
    log:
        results("logs", "eval_emotion.log"),
    benchmark:
        results("benchmarks", "eval_emotion.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca eval emotion --predictions {input:q} --out {params.out:q} {params.tracking}"
        " > {log:q} 2>&1"
