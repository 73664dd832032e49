"""All result tables in one page (rule tables): results/tables/tables.md and .html.

Reads each evaluation's CSV (emotion networks, synthetic benchmark, NoW, AffectNet) and
writes them one after another under a heading; runs as a Snakemake `script:`.
"""

import csv
import html
from pathlib import Path


def _read(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f) if row]


def tables(paths: list[Path], markdown: Path, page: Path) -> None:
    md, body = ["# Result tables", ""], ["<h1>Result tables</h1>"]
    for path in paths:
        rows = _read(path)
        title = f"{path.parent.name}/{path.stem}"
        md += [f"## {title}", "", f"Source: `{path}`", ""]
        body += [f"<h2>{html.escape(title)}</h2>", f"<p>Source: <code>{html.escape(str(path))}"
                 "</code></p>", "<table border='1' cellspacing='0' cellpadding='4'>"]
        if rows:
            header, *data = rows
            md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            md += ["| " + " | ".join(row) + " |" for row in data]
            body.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                     for row in data]
        md.append("")
        body.append("</table>")
    for out, text in ((markdown, "\n".join(md) + "\n"),
                      (page, "<html><body>\n" + "\n".join(body) + "\n</body></html>\n")):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".tmp-{out.name}")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out)


if __name__ == "__main__" and "snakemake" in globals():
    snakemake = globals()["snakemake"]
    tables([Path(p) for p in snakemake.input.tables], Path(snakemake.output.markdown),
           Path(snakemake.output.html))
