# Large-scale inference: every enabled dataset (its manifest) reconstructed by every model
# (the trained "emoca" and the enabled released ones), in config["reconstruct"]["shards"]
# jobs per (model, dataset): shard I of N writes
# results/reconstruct/MODEL/DATASET/shard-IIIII-of-NNNNN.parquet (atomic: the shard's done
# file; a rerun skips finished shards) plus renders/overlays in that folder. Each job asks
# for config["reconstruct"]["gpus"] GPUs (Slurm --gpus) and runs its CPU work on its threads.


rule reconstruct:
    input:
        data=lambda wildcards: manifest_dataset(wildcards.dataset),
        model=model_path,
    output:
        results("reconstruct", "{model}", "{dataset}", "shard-{shard}-of-{shards}.parquet"),
    params:
        out=lambda wildcards, output: str(Path(output[0]).parent),
        shard=lambda wildcards: f"{int(wildcards.shard)}/{int(wildcards.shards)}",
        options=reconstruct_options(),
    wildcard_constraints:
        model=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
        dataset=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
        shard=r"\d{5}",
        shards=r"\d{5}",
    threads: config["reconstruct"]["threads"]
    resources:
        gpu=config["reconstruct"]["gpus"],
        mem_mb=config["reconstruct"]["mem_mb"],
        runtime=config["reconstruct"]["runtime"],
    log:
        results("logs", "reconstruct", "{model}", "{dataset}", "shard-{shard}-of-{shards}.log"),
    benchmark:
        results("benchmarks", "reconstruct", "{model}", "{dataset}",
                "shard-{shard}-of-{shards}.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca reconstruct {input.data:q} {params.out:q} --model {input.model:q}"
        " --shard {params.shard} {params.options} --threads {threads} > {log:q} 2>&1"
