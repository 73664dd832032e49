"""Result tables as CSV, GitHub Markdown and LaTeX: one writer for every evaluation table.

A table is a list of named rows (models, challenges, ...) with one float per column. CSV
keeps full precision (``repr``; an undefined value is ``nan``); Markdown and LaTeX round
to ``digits`` decimals (per column when a sequence is given) and show "--" for a value
that is not finite.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from emoca_pipeline.io.atomic import atomic_write_text

__all__ = [
    "TableFiles",
    "csv_table",
    "format_value",
    "latex_escape",
    "latex_table",
    "markdown_table",
    "write_tables",
]

Digits = int | Sequence[int]


def format_value(value: float, digits: int = 3) -> str:
    """``value`` rounded to ``digits`` decimals; "--" when it is not finite."""
    return "--" if not math.isfinite(value) else f"{value:.{digits}f}"


def _digits(digits: Digits, n: int) -> list[int]:
    if isinstance(digits, int):
        return [digits] * n
    digits = list(digits)
    if len(digits) != n:
        raise ValueError(f"digits: {len(digits)} values for {n} columns")
    return digits


def _check(row_names: Sequence[str], columns: Sequence[str],
           values: Sequence[Sequence[float]]) -> None:
    if len(values) != len(row_names):
        raise ValueError(f"values: {len(values)} rows for {len(row_names)} row names")
    for name, row in zip(row_names, values, strict=True):
        if len(row) != len(columns):
            raise ValueError(f"row {name!r}: {len(row)} values for {len(columns)} columns")


def markdown_table(row_names: Sequence[str], columns: Sequence[str],
                   values: Sequence[Sequence[float]], label: str = "Model",
                   digits: Digits = 3, notes: Sequence[str] = ()) -> str:
    """GitHub Markdown; ``notes`` are paragraphs after the table."""
    _check(row_names, columns, values)
    places = _digits(digits, len(columns))
    lines = [
        f"| {label} | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, row in zip(row_names, values, strict=True):
        cells = [format_value(float(v), d) for v, d in zip(row, places, strict=True)]
        lines.append(f"| {str(name).replace('|', '/')} | " + " | ".join(cells) + " |")
    for note in notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def latex_table(row_names: Sequence[str], columns: Sequence[str],
                values: Sequence[Sequence[float]], label: str = "Model",
                digits: Digits = 3, comment: str | None = None) -> str:
    """A LaTeX ``tabular`` with booktabs rules; ``comment`` heads it as a ``%`` line."""
    _check(row_names, columns, values)
    places = _digits(digits, len(columns))
    header = " & ".join(latex_escape(x) for x in [label, *columns])
    first = f"% {comment}; needs \\usepackage{{booktabs}}" if comment else \
        "% needs \\usepackage{booktabs}"
    lines = [first, r"\begin{tabular}{l" + "r" * len(columns) + "}", r"\toprule",
             header + r" \\", r"\midrule"]
    for name, row in zip(row_names, values, strict=True):
        cells = [format_value(float(v), d) for v, d in zip(row, places, strict=True)]
        lines.append(" & ".join([latex_escape(str(name)), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def csv_table(row_names: Sequence[str], columns: Sequence[str],
              values: Sequence[Sequence[float]], label: str = "model",
              extra: Mapping[str, Sequence[object]] | None = None) -> str:
    """CSV in full precision; ``extra`` columns (e.g. sample counts) follow the values."""
    _check(row_names, columns, values)
    extra = dict(extra or {})
    for key, column in extra.items():
        if len(column) != len(row_names):
            raise ValueError(f"extra column {key!r}: {len(column)} values for "
                             f"{len(row_names)} rows")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([label, *columns, *extra])
    for i, (name, row) in enumerate(zip(row_names, values, strict=True)):
        writer.writerow([name, *(repr(float(v)) for v in row),
                         *(column[i] for column in extra.values())])
    return buffer.getvalue()


class TableFiles(NamedTuple):
    """The files :func:`write_tables` wrote."""

    csv: Path
    markdown: Path
    latex: Path


def write_tables(out_dir: str | os.PathLike, stem: str, row_names: Sequence[str],
                 columns: Sequence[str], values: Sequence[Sequence[float]],
                 label: str = "Model", digits: Digits = 3, notes: Sequence[str] = (),
                 comment: str | None = None,
                 extra: Mapping[str, Sequence[object]] | None = None) -> TableFiles:
    """Write ``OUT/<stem>.csv``, ``.md`` and ``.tex`` atomically (see the functions above;
    the CSV's first header cell is ``label`` in lower case)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = TableFiles(out / f"{stem}.csv", out / f"{stem}.md", out / f"{stem}.tex")
    atomic_write_text(files.csv, csv_table(row_names, columns, values, label.lower(), extra))
    atomic_write_text(files.markdown, markdown_table(row_names, columns, values, label,
                                                     digits, notes))
    atomic_write_text(files.latex, latex_table(row_names, columns, values, label, digits,
                                               comment))
    return files
