# EMOCA's training stages, chained through their model.pt: deca (E_flame from scratch, with
# the synthetic-assist terms when ground-truth codes are configured), coarse (E_expression;
# E_flame frozen; the emotion-consistency loss uses the image emotion network trained by
# rule train_emotion) and detail (E_detail, D_detail). Every stage reads the manifest of
# config["emoca"]["dataset"] (crops from its landmarks, identity, split); ground-truth codes
# (config["emoca"]["codes"]) are joined on image_id. Each job is an MLflow child run under
# the workflow's parent run (default store: sqlite in the results folder).


rule train_deca:
    input:
        unpack(emoca_inputs("deca")),
    output:
        model=results("emoca", "deca", "model.pt"),
        summary=results("emoca", "deca", "training.json"),
    params:
        out=lambda wildcards, output: Path(output.model).parent,
        codes=emoca_codes_flag(),
        tracking_uri=mlflow_tracking_uri(),
        experiment=config["mlflow"]["experiment"],
    threads: 2
    resources:
        mem_mb=6000,
        runtime=240,
    log:
        results("logs", "train_emoca", "deca.log"),
    benchmark:
        results("benchmarks", "train_emoca", "deca.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca train deca --config {input.settings:q} --table {input.table:q} {params.codes}"
        " --assets {input.assets:q} --out {params.out:q} --tracking-uri {params.tracking_uri:q}"
        " --experiment {params.experiment:q} --threads {threads} > {log:q} 2>&1"


rule train_coarse:
    input:
        unpack(emoca_inputs("coarse")),
    output:
        model=results("emoca", "coarse", "model.pt"),
        summary=results("emoca", "coarse", "training.json"),
    params:
        out=lambda wildcards, output: Path(output.model).parent,
        codes=emoca_codes_flag(),
        tracking_uri=mlflow_tracking_uri(),
        experiment=config["mlflow"]["experiment"],
    threads: 2
    resources:
        mem_mb=6000,
        runtime=240,
    log:
        results("logs", "train_emoca", "coarse.log"),
    benchmark:
        results("benchmarks", "train_emoca", "coarse.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca train coarse --config {input.settings:q} --table {input.table:q} {params.codes}"
        " --init {input.init:q} --emotion-network {input.emotion_network:q}"
        " --out {params.out:q} --tracking-uri {params.tracking_uri:q}"
        " --experiment {params.experiment:q} --threads {threads} > {log:q} 2>&1"


rule train_detail:
    input:
        unpack(emoca_inputs("detail")),
    output:
        model=results("emoca", "detail", "model.pt"),
        summary=results("emoca", "detail", "training.json"),
    params:
        out=lambda wildcards, output: Path(output.model).parent,
        codes=emoca_codes_flag(),
        tracking_uri=mlflow_tracking_uri(),
        experiment=config["mlflow"]["experiment"],
    threads: 2
    resources:
        mem_mb=6000,
        runtime=240,
    log:
        results("logs", "train_emoca", "detail.log"),
    benchmark:
        results("benchmarks", "train_emoca", "detail.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca train detail --config {input.settings:q} --table {input.table:q} {params.codes}"
        " --init {input.init:q} --out {params.out:q} --tracking-uri {params.tracking_uri:q}"
        " --experiment {params.experiment:q} --threads {threads} > {log:q} 2>&1"


rule import_model:
    input:
        check=lambda wildcards: check_report(f"model-{wildcards.model}"),
        assets=flame_assets(),
    output:
        results("models", "{model}", "model.pt"),
    params:
        path=lambda wildcards: config["models"][wildcards.model]["path"],
    wildcard_constraints:
        model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    resources:
        mem_mb=4000,
        runtime=30,
    log:
        results("logs", "import_model", "{model}.log"),
    benchmark:
        results("benchmarks", "import_model", "{model}.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca import-checkpoint {params.path:q} {output:q} --assets {input.assets:q}"
        " > {log:q} 2>&1"
