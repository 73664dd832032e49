"""Scratch copies of the workflow for the Snakemake tests (local and Slurm).

Not a test module (no ``test_`` prefix); test files import it by name (pytest puts ``tests/``
on ``sys.path``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: What `snakemake` needs from the repository (`slurm` is the root link to the profile).
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "profiles", "envs", "slurm")


def copy_workflow(work: Path) -> None:
    """Copy the workflow files into ``work``, keeping links as links."""
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_symlink():
            (work / name).symlink_to(os.readlink(src))
        elif src.is_dir():
            shutil.copytree(src, work / name)
        else:
            shutil.copy(src, work / name)
