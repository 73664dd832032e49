# EMOCA's training stages, chained through their model.pt: deca (E_flame from scratch on
# the synthetic data, with ground-truth terms), coarse (E_expression; E_flame frozen) and
# detail (E_detail, D_detail). Each job is an MLflow child run under the workflow's parent
# run (default store: sqlite in the results folder). Settings: config["emoca"].
rule train_deca:
    input:
        table=emoca_table(),
        assets=flame_assets(),
        settings=config["emoca"]["deca_config"],
    output:
        model=results("emoca", "deca", "model.pt"),
        summary=results("emoca", "deca", "training.json"),
    params:
        out=lambda wildcards, output: Path(output.model).parent,
        tracking_uri=mlflow_tracking_uri(),
    threads: 2
    resources:
        mem_mb=6000,
    log:
        results("logs", "train_emoca", "deca.log"),
    benchmark:
        results("benchmarks", "train_emoca", "deca.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca train deca --config {input.settings:q} --table {input.table:q}"
        " --assets {input.assets:q} --out {params.out:q}"
        " --tracking-uri {params.tracking_uri:q} --threads {threads} > {log:q} 2>&1"


rule train_coarse:
    input:
        table=emoca_table(),
        init=results("emoca", "deca", "model.pt"),
        settings=config["emoca"]["coarse_config"],
    output:
        model=results("emoca", "coarse", "model.pt"),
        summary=results("emoca", "coarse", "training.json"),
    params:
        out=lambda wildcards, output: Path(output.model).parent,
        tracking_uri=mlflow_tracking_uri(),
    threads: 2
    resources:
        mem_mb=6000,
    log:
        results("logs", "train_emoca", "coarse.log"),
    benchmark:
        results("benchmarks", "train_emoca", "coarse.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca train coarse --config {input.settings:q} --table {input.table:q}"
        " --init {input.init:q} --out {params.out:q}"
        " --tracking-uri {params.tracking_uri:q} --threads {threads} > {log:q} 2>&1"


rule train_detail:
    input:
        table=emoca_table(),
        init=results("emoca", "coarse", "model.pt"),
        settings=config["emoca"]["detail_config"],
    output:
        model=results("emoca", "detail", "model.pt"),
        summary=results("emoca", "detail", "training.json"),
    params:
        out=lambda wildcards, output: Path(output.model).parent,
        tracking_uri=mlflow_tracking_uri(),
    threads: 2
    resources:
        mem_mb=6000,
    log:
        results("logs", "train_emoca", "detail.log"),
    benchmark:
        results("benchmarks", "train_emoca", "detail.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca train detail --config {input.settings:q} --table {input.table:q}"
        " --init {input.init:q} --out {params.out:q}"
        " --tracking-uri {params.tracking_uri:q} --threads {threads} > {log:q} 2>&1"
