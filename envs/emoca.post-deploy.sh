#!/usr/bin/env bash
# Snakemake runs this once, inside the freshly created environment of emoca.yaml, from the
# workflow's working directory (the repository root, where `snakemake` is started; set
# EMOCA_PIPELINE_ROOT when starting it elsewhere). It installs the package with the
# dependencies pinned in pyproject.toml, editable, so the `emoca` command is the checkout's.
set -euo pipefail
root=${EMOCA_PIPELINE_ROOT:-$PWD}
if [ ! -f "$root/pyproject.toml" ] || ! grep -q '^name = "emoca-pipeline"' "$root/pyproject.toml"; then
  echo "emoca.post-deploy.sh: $root is not the emoca-pipeline checkout; start snakemake in" \
       "the repository root or set EMOCA_PIPELINE_ROOT" >&2
  exit 1
fi
python -m pip install --quiet -e "$root"
