# The synthetic labelled face dataset, rendered from the configured FLAME assets.


rule synth:
    input:
        **flame_inputs(),
    output:
        table=results("synthetic", "synthetic.parquet"),
        contact_sheet=results("synthetic", "contact_sheet.png"),
    params:
        out_dir=lambda wildcards, output: Path(output.table).parent,
        n_images=config["synth"]["n_images"],
        seed=config["synth"]["seed"],
        image_size=config["synth"]["image_size"],
        images_per_identity=config["synth"]["images_per_identity"],
    log:
        results("logs", "synth.log"),
    benchmark:
        results("benchmarks", "synth.tsv")
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca synth {params.out_dir:q} --assets {input.assets:q} --n {params.n_images}"
        " --seed {params.seed} --image-size {params.image_size}"
        " --images-per-identity {params.images_per_identity} > {log:q} 2>&1"
