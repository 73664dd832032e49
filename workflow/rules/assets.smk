# FLAME-format assets: the procedural model every demo and test uses, and a check of
# whichever asset folder the config names (real FLAME files drop in by path).


rule assets:
    output:
        directory(results("assets", "procedural")),
    params:
        seed=config["assets"]["seed"],
    log:
        results("logs", "assets.log"),
    benchmark:
        results("benchmarks", "assets.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca assets procedural {output:q} --seed {params.seed} > {log:q} 2>&1"


rule flame_check:
    input:
        **flame_inputs(),
    output:
        results("assets", "flame_check.json"),
    params:
        n_shape=config["flame"]["n_shape"],
        n_exp=config["flame"]["n_exp"],
    log:
        results("logs", "flame_check.log"),
    benchmark:
        results("benchmarks", "flame_check.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca flame check {input.assets:q} --n-shape {params.n_shape} --n-exp {params.n_exp}"
        " --out {output:q} > {log:q} 2>&1"
