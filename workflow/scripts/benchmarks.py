"""One table of every job's benchmark file (rule benchmark_summary): wall time, max RSS,
CPU time per rule and wildcards, sorted by wall time; runs as a Snakemake `script:`."""

import csv
from pathlib import Path


def summarise(folder: Path, out: Path) -> None:
    rows = []
    for path in sorted(folder.rglob("*.tsv")):
        if path == out:
            continue
        with open(path, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f, delimiter="\t"))
        for record in records[-1:]:  # the last measurement of a job
            rows.append({"job": str(path.relative_to(folder).with_suffix("")),
                         "seconds": record.get("s", ""), "max_rss_mb": record.get("max_rss", ""),
                         "cpu_time_s": record.get("cpu_time", "")})
    rows.sort(key=lambda row: -float(row["seconds"] or 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["job", "seconds", "max_rss_mb", "cpu_time_s"],
                                delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)


if __name__ == "__main__" and "snakemake" in globals():
    snakemake = globals()["snakemake"]
    summarise(Path(snakemake.params.folder), Path(snakemake.output[0]))
