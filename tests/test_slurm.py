"""A small part of the DAG through a real Slurm (`snakemake --profile slurm`), checked in
`sacct`: every cluster job ran under Slurm, completed, and got as many CPUs as its rule's
threads. Skips where no Slurm runs (CI starts one with .ci/start-slurm.sh)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from workflow_helpers import copy_workflow

# synth (threads 2) -> detect plan -> 2 detection shards (threads 1) -> summary.
SMALL = """
synth: {n_images: 8, image_size: 96, images_per_identity: 2}
detect: {shard_size: 4, workers: 1}
"""
THREADS = {"assets": 1, "synth": 2, "detect_plan": 1, "detect_shard": 1, "detect_summary": 1}


def _slurm_node_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return False
    try:
        states = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True,
                                text=True, timeout=20).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return False
    if not any(state.rstrip("*") in ("idle", "mixed") for state in states):
        return False
    # The executor plugin polls job states with sacct: with accounting down it would wait
    # for ever, so a cluster whose sacct fails counts as no cluster.
    try:
        return subprocess.run(["sacct", "--noheader", "--allocations", "--starttime", "now"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


pytestmark = pytest.mark.skipif(not _slurm_node_up(),
                                reason="no Slurm: no sinfo/sacct, no idle node or no accounting")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMOCA_", "SLURM_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _sacct(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """JobID -> fields of the allocation (not its steps); waits for accounting to settle."""
    fields = "JobID,JobName,AllocCPUS,State,ExitCode,Comment"
    for _ in range(30):
        out = subprocess.run(
            ["sacct", "--noheader", "--parsable2", f"--format={fields}", "--allocations",
             "-j", ",".join(job_ids)], capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        rows = {line.split("|")[0]: dict(zip(fields.split(","), line.split("|"), strict=True))
                for line in out.splitlines() if line}
        if set(rows) >= set(job_ids) and all(r["State"] == "COMPLETED" for r in rows.values()):
            return rows
        time.sleep(1)
    return rows


def test_small_dag_runs_under_slurm_with_the_cpus_of_its_rules(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    copy_workflow(work)
    (work / "small.yaml").write_text(SMALL)
    target = "results/detect/synthetic/summary.json"
    # SIGINT on timeout: snakemake ignored SIGTERM once while status polling failed.
    proc = subprocess.run(
        ["timeout", "-s", "INT", "540", sys.executable, "-m", "snakemake", target,
         "--profile", "slurm", "--configfile", "small.yaml", "--seconds-between-status-checks",
         "2"],
        cwd=work, env=_env(), capture_output=True, text=True, timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert json.loads((work / target).read_text())["images"] == 8

    # "Job 3 has been submitted with SLURM jobid 17 (log: .../slurm_logs/rule_synth/17.log)."
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: .*?/slurm_logs/"
                                r"rule_(\w+)/", output))
    assert submitted, output[-3000:]
    rows = _sacct(list(submitted))
    seen: dict[str, int] = {}
    for job_id, rule in submitted.items():
        row = rows[job_id]
        assert row["State"] == "COMPLETED" and row["ExitCode"] == "0:0", row
        seen[rule] = seen.get(rule, 0) + 1
        assert int(row["AllocCPUS"]) == THREADS[rule], (rule, row)
        print(f"sacct {rule}: " + " ".join(f"{k}={v}" for k, v in row.items()))
    # Cluster jobs: everything but the local rules (sample_photos etc. are not in this DAG).
    assert seen == {"assets": 1, "synth": 1, "detect_plan": 1, "detect_shard": 2,
                    "detect_summary": 1}, seen
    # Local rules never reach Slurm; the jobs ran on the threads they were given.
    assert "rule_sample_photos" not in output
