# Data from outside: files fetched over HTTP(S) (config["downloads"]) and licensed data the
# user placed by hand (FLAME, released EMOCA models, AffectNet, NoW), checked where it is.
# Both are local rules: compute nodes of many clusters have no internet, and checks are quick.


rule download:
    output:
        str(Path(config["download_dir"], "{name}", "{file}")),
    params:
        url=lambda wildcards: config["downloads"][wildcards.name]["url"],
        sha256=lambda wildcards: config["downloads"][wildcards.name]["sha256"],
    wildcard_constraints:
        name=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
        file=r"[^/]+",
    log:
        results("logs", "download", "{name}", "{file}.log"),
    benchmark:
        results("benchmarks", "download", "{name}", "{file}.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        # `emoca download` retries and resumes by itself (OUT.part); OUT appears only when
        # its SHA-256 matches, so Snakemake never sees a partial file.
        "emoca download {params.url:q} {output:q} --sha256 {params.sha256} > {log:q} 2>&1"


rule check_data:
    output:
        results("checks", "{check}.json"),
    params:
        kind=lambda wildcards: GATED[wildcards.check][0],
        path=lambda wildcards: GATED[wildcards.check][1],
        sha256=lambda wildcards: quoted(
            *(f"{name}={digest}" for name, digest in sorted(GATED[wildcards.check][2].items()))
        ),
        flag=lambda wildcards: "--sha256" if GATED[wildcards.check][2] else "",
    wildcard_constraints:
        check=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
    log:
        results("logs", "checks", "{check}.log"),
    benchmark:
        results("benchmarks", "checks", "{check}.tsv")
    conda:
        "../../envs/emoca.yaml"
    shell:
        "emoca check-data {params.kind} {params.path:q} {params.flag} {params.sha256}"
        " --out {output:q} > {log:q} 2>&1"
