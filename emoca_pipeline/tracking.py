"""The one MLflow setup every training job uses (emotion networks, EMOCA coarse/detail).

Where runs go:

* The tracking URI is always explicit. Default: ``sqlite:///<results>/mlflow.db`` (MLflow 3's
  file store is deprecated and errors in recent releases). A server (``http://...``) or any
  other database URI MLflow accepts can be given instead; plain paths and ``file:`` URIs are
  refused with a one-line error.
* Artifacts of a local database store go to ``mlartifacts/`` beside the ``.db`` file (for a
  non-sqlite database, under ``<results>/mlartifacts``), never to ``./mlruns`` in whatever
  folder the job happens to run in. A server chooses its own artifact store.

Run layout: one *parent run* per workflow invocation, one *child run* per training job
(:func:`make_mlflow_logger`) and per evaluation job (:func:`job_run`, tagged
``emoca.run_kind=evaluation``; its cells logged with :func:`log_metrics` under
:func:`metric_key` names) (children carry MLflow's ``mlflow.parentRunId`` tag, so the UI
nests them). The parent is,
in order of precedence:

1. the ``parent_run_id`` argument;
2. the run id in ``$EMOCA_MLFLOW_PARENT_RUN`` (:data:`PARENT_RUN_ENV`), for a caller that
   made the parent itself (:func:`start_workflow_run`, e.g. in Snakemake's ``onstart``);
3. the run tagged ``emoca.workflow_id=$EMOCA_WORKFLOW_ID`` (:data:`WORKFLOW_ID_ENV`),
   created by the first job of the invocation that needs it and found by the others. The
   workflow sets this variable once per invocation when its Snakefile is parsed (a random
   id, no MLflow import and no run unless a training job runs); jobs inherit it, locally
   and on Slurm (sbatch exports the environment by default). On a sqlite store the
   find-or-create runs under the store lock, so concurrent jobs share one parent;
4. otherwise a parent made for this one job (a standalone ``emoca train ...`` is its own
   one-job invocation), so every training run has the same two-level layout.

Parents of kinds 3 and 4 are ended by their jobs (:meth:`EmocaMLFlowLogger.finish`):
FINISHED when a job succeeds unless a job of the invocation failed, FAILED when one fails.
A parent must live in the child's experiment (MLflow nests runs only within one
experiment); a mismatch is an error naming both.

Every child run gets the tags ``mlflow.source.git.commit`` (and ``emoca.git_dirty``) of the
source tree the package was imported from, plus whatever the caller passes (use
:func:`input_tags` for the BLAKE2b digests of the input manifest and other inputs). The
caller logs the resolved config with :func:`log_params` and files (its model, the best
Lightning checkpoint) with :func:`log_artifact` after ``fit``: the logger itself logs no
checkpoints, and uses only the public APIs of Lightning and MLflow.

Concurrency: two jobs may start at once on one sqlite file. The first touch of the database
(which creates its tables) and experiment creation run under an exclusive ``flock`` on
``<db>.lock``; later writes rely on SQLite's own locking.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# No telemetry from an offline batch pipeline (set before mlflow is imported; a user who
# wants it can set MLFLOW_DISABLE_TELEMETRY=false).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pytorch_lightning.loggers import MLFlowLogger  # noqa: E402 - after the env default

__all__ = [
    "DEFAULT_EXPERIMENT",
    "PARENT_RUN_ENV",
    "WORKFLOW_ID_ENV",
    "EmocaMLFlowLogger",
    "default_tracking_uri",
    "end_workflow_run",
    "file_digest",
    "flatten_params",
    "git_state",
    "input_tags",
    "job_run",
    "log_artifact",
    "log_metrics",
    "log_params",
    "make_mlflow_logger",
    "metric_key",
    "resolve_tracking_uri",
    "start_workflow_run",
]

#: Experiment that holds the workflow's runs unless the config names another.
DEFAULT_EXPERIMENT = "emoca-pipeline"

#: Environment variable holding the parent run id of the current workflow invocation.
PARENT_RUN_ENV = "EMOCA_MLFLOW_PARENT_RUN"

#: Environment variable holding an id of the current workflow invocation (any string).
WORKFLOW_ID_ENV = "EMOCA_WORKFLOW_ID"

_WORKFLOW_ID_TAG = "emoca.workflow_id"

_PARENT_TAG = "mlflow.parentRunId"
_GIT_COMMIT_TAG = "mlflow.source.git.commit"
_MAX_PARAM_CHARS = 6000  # MLflow 3's limit on a parameter value

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# Tracking URI and store


def default_tracking_uri(results_dir: str | os.PathLike) -> str:
    """``sqlite:///<absolute results_dir>/mlflow.db``."""
    return "sqlite:///" + str(Path(results_dir).resolve() / "mlflow.db")


def resolve_tracking_uri(tracking_uri: str | None, results_dir: str | os.PathLike) -> str:
    """The tracking URI to use: ``tracking_uri`` when given, else :func:`default_tracking_uri`.

    Raises:
        ValueError: a plain path or a ``file:`` URI (MLflow 3's file store is deprecated), or
            a string without a scheme.
    """
    if tracking_uri is None or tracking_uri == "":
        return default_tracking_uri(results_dir)
    if not isinstance(tracking_uri, str):
        raise ValueError(f"tracking_uri: expected a string, got {type(tracking_uri).__name__}")
    if tracking_uri.startswith("file:"):
        raise ValueError(f"tracking_uri {tracking_uri!r}: MLflow's file store is deprecated; "
                         "use sqlite:///PATH/mlflow.db or a server URI")
    if "://" not in tracking_uri and tracking_uri not in ("databricks",):
        raise ValueError(f"tracking_uri {tracking_uri!r}: expected a URI such as "
                         "sqlite:///PATH/mlflow.db or http://HOST:5000")
    return tracking_uri


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs or in-memory sqlite)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix):].split("?", 1)[0]
    if path in ("", ":memory:"):
        return None
    return Path(path)


def _artifact_location(tracking_uri: str, results_dir: str | os.PathLike) -> str | None:
    """Artifact root for new experiments: beside a sqlite file, under results for other
    databases, None (the server's choice) for servers."""
    scheme = tracking_uri.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme in ("http", "https", "databricks", "databricks-uc", "uc"):
        return None
    db = _sqlite_path(tracking_uri)
    folder = (db.resolve().parent if db is not None else Path(results_dir).resolve())
    return (folder / "mlartifacts").as_uri()


@contextlib.contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Exclusive lock around database creation and experiment creation (sqlite only)."""
    db = _sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _client_and_experiment(
    tracking_uri: str, results_dir: str | os.PathLike, experiment: str
) -> tuple[Any, str]:
    """An MlflowClient on the store (tables created if needed) and the experiment's id."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not experiment or not isinstance(experiment, str):
        raise ValueError(f"experiment: expected a non-empty name, got {experiment!r}")
    with _store_lock(tracking_uri):
        try:
            client = MlflowClient(tracking_uri)
            found = client.get_experiment_by_name(experiment)
            if found is None:
                return client, client.create_experiment(
                    experiment, artifact_location=_artifact_location(tracking_uri, results_dir)
                )
        except MlflowException as error:
            raise ValueError(f"MLflow store {tracking_uri}: {_first_line(error)}") from error
    if found.lifecycle_stage == "deleted":
        raise ValueError(f"MLflow experiment {experiment!r} in {tracking_uri} is deleted: "
                         "restore it or choose another experiment name")
    return client, found.experiment_id


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ---------------------------------------------------------------------------------------
# Tags and params


def git_state(path: str | os.PathLike | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git work tree holding ``path`` (default: this package).

    ``dirty`` is True when tracked files differ from the commit. (None, None) outside a
    git work tree or without git.
    """
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (commit or None), bool(status.strip())


def file_digest(path: str | os.PathLike) -> str:
    """BLAKE2b-160 hex digest of a file, or of a folder (e.g. a partitioned Parquet dataset):
    every file's relative POSIX path and bytes, in sorted order (hidden files skipped).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    digest = hashlib.blake2b(digest_size=20)
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    else:
        files = [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def input_tags(**inputs: str | os.PathLike | None) -> dict[str, str]:
    """Tags naming input files and their digests: for ``manifest=PATH`` the tags
    ``emoca.input.manifest`` (the absolute path) and ``emoca.input.manifest.blake2b``.
    None values are skipped."""
    tags: dict[str, str] = {}
    for name, value in inputs.items():
        if value is None:
            continue
        path = Path(value)
        tags[f"emoca.input.{name}"] = str(path.resolve())
        tags[f"emoca.input.{name}.blake2b"] = file_digest(path)
    return tags


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> ``{"a.b.c": "value"}`` with values as strings (None -> "null")."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                flat.update(flatten_params(value, prefix=f"{name}."))
            else:
                flat[name] = "{}"
        elif value is None:
            flat[name] = "null"
        else:
            text = str(value)
            flat[name] = text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] \
                + "..."
    return flat


# ---------------------------------------------------------------------------------------
# Runs


class EmocaMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger with the run layout of this module (it logs no checkpoints:
    jobs log the files they choose with :func:`log_artifact`).

    Attributes:
        store_uri: the tracking URI.
        parent_run_id: the run this one is nested under.
        owns_parent: True when this job ends the parent too (parents found or made through
            ``$EMOCA_WORKFLOW_ID`` or made for this job alone; see the module docstring).
        finish_on_teardown: False keeps the run open when Lightning finalizes the logger at
            the end of ``fit``, so that the job can log test metrics and files afterwards;
            the job then calls :meth:`finish`. A failure inside ``fit`` ends the run as
            FAILED either way.
        ended: whether :meth:`finish` ended the run.
    """

    def __init__(self, *, tracking_uri: str, parent_run_id: str, owns_parent: bool,
                 finish_on_teardown: bool = True, **kwargs: Any) -> None:
        super().__init__(tracking_uri=tracking_uri, log_model=False, **kwargs)
        self.store_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.owns_parent = owns_parent
        self.finish_on_teardown = finish_on_teardown
        self.ended = False

    def finalize(self, status: str = "success") -> None:
        """Lightning's end-of-``fit`` hook: ends the run unless ``finish_on_teardown`` is
        False and ``fit`` succeeded."""
        if status in ("success", "finished") and not self.finish_on_teardown:
            return
        self.finish(status)

    def finish(self, status: str = "success") -> None:
        """End the run (and an owned parent): "success"/"finished" -> FINISHED, anything
        else -> FAILED. Idempotent."""
        if self.ended:
            return
        self.ended = True
        failed = status not in ("success", "finished")
        client = self.experiment
        client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
        if self.owns_parent:
            with _store_lock(self.store_uri):
                if failed or client.get_run(self.parent_run_id).info.status != "FAILED":
                    client.set_terminated(self.parent_run_id, "FAILED" if failed else "FINISHED")


def _resolve_parent(
    client: Any, uri: str, experiment: str, experiment_id: str, run_name: str,
    parent_run_id: str | None,
) -> tuple[str, bool]:
    """(parent run id, whether this job ends it); see the module docstring."""
    from mlflow.exceptions import MlflowException

    explicit = parent_run_id or os.environ.get(PARENT_RUN_ENV) or None
    if explicit is not None:
        source = "parent_run_id" if parent_run_id else f"${PARENT_RUN_ENV}"
        try:
            parent_run = client.get_run(explicit)
        except MlflowException as error:
            raise ValueError(f"parent MLflow run {explicit!r} (from {source}) not found in "
                             f"{uri}: {_first_line(error)}") from error
        if parent_run.info.experiment_id != experiment_id:
            raise ValueError(
                f"parent MLflow run {explicit!r} (from {source}) is in experiment "
                f"{parent_run.info.experiment_id}, not in {experiment!r} ({experiment_id}); "
                "runs nest only within one experiment"
            )
        return explicit, False
    workflow_id = os.environ.get(WORKFLOW_ID_ENV) or None
    if workflow_id is None:
        run = client.create_run(experiment_id, run_name=run_name,
                                tags={"emoca.run_kind": "workflow", "emoca.parent": "job"})
        return run.info.run_id, True
    if "'" in workflow_id:
        raise ValueError(f"${WORKFLOW_ID_ENV}: must not contain quotes, got {workflow_id!r}")
    with _store_lock(uri):
        found = client.search_runs(
            [experiment_id], filter_string=f"tags.`{_WORKFLOW_ID_TAG}` = '{workflow_id}'",
            max_results=1,
        )
        if found:
            parent = found[0]
            if parent.info.status == "FINISHED":  # an earlier job ended it; running again
                client.update_run(parent.info.run_id, status="RUNNING")
            return parent.info.run_id, True
        commit, dirty = git_state()
        tags = {"emoca.run_kind": "workflow", "emoca.parent": "workflow",
                _WORKFLOW_ID_TAG: workflow_id}
        if commit is not None:
            tags[_GIT_COMMIT_TAG] = commit
            tags["emoca.git_dirty"] = str(dirty).lower()
        run = client.create_run(experiment_id, run_name=f"workflow {workflow_id}", tags=tags)
        return run.info.run_id, True


def make_mlflow_logger(
    tracking_uri: str | None,
    results_dir: str | os.PathLike,
    experiment: str,
    run_name: str,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    finish_on_teardown: bool = True,
) -> EmocaMLFlowLogger:
    """The MLflow logger of one training job, its run already created.

    Args:
        tracking_uri: MLflow tracking URI, or None for ``sqlite:///<results_dir>/mlflow.db``.
        results_dir: the workflow's results folder (default database and artifact location).
        experiment: MLflow experiment name (created if missing).
        run_name: the child run's name.
        parent_run_id: parent run; default: ``$EMOCA_MLFLOW_PARENT_RUN``, else the parent
            of ``$EMOCA_WORKFLOW_ID``, else one made for this job (see the module docstring).
        tags: extra tags of the child run (e.g. :func:`input_tags`).
        finish_on_teardown: end the run when ``fit`` ends (see :class:`EmocaMLFlowLogger`).

    Raises:
        ValueError: a bad tracking URI, a deleted experiment, or a parent run that does not
            exist or lives in another experiment (one line naming it).
    """
    uri = resolve_tracking_uri(tracking_uri, results_dir)
    client, experiment_id = _client_and_experiment(uri, results_dir, experiment)
    parent, owns_parent = _resolve_parent(client, uri, experiment, experiment_id, run_name,
                                          parent_run_id)

    commit, dirty = git_state()
    child_tags: dict[str, str] = {"emoca.run_kind": "training"}
    if commit is not None:
        child_tags[_GIT_COMMIT_TAG] = commit
        child_tags["emoca.git_dirty"] = str(dirty).lower()
    child_tags.update(tags or {})
    child_tags[_PARENT_TAG] = parent
    logger = EmocaMLFlowLogger(
        experiment_name=experiment,
        run_name=run_name,
        tracking_uri=uri,
        tags=child_tags,
        artifact_location=_artifact_location(uri, results_dir),
        parent_run_id=parent,
        owns_parent=owns_parent,
        finish_on_teardown=finish_on_teardown,
    )
    _ = logger.run_id  # create the run now, so that errors surface before training starts
    return logger


def start_workflow_run(
    tracking_uri: str | None,
    results_dir: str | os.PathLike,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
    set_env: bool = True,
) -> str:
    """Create the parent run of one workflow invocation and return its id.

    With ``set_env`` the id is also put in ``os.environ[PARENT_RUN_ENV]`` so that every job
    started afterwards (they inherit the environment) nests its run under it. Call
    :func:`end_workflow_run` when the workflow ends.
    """
    uri = resolve_tracking_uri(tracking_uri, results_dir)
    client, experiment_id = _client_and_experiment(uri, results_dir, experiment)
    commit, dirty = git_state()
    run_tags = {"emoca.run_kind": "workflow"}
    if commit is not None:
        run_tags[_GIT_COMMIT_TAG] = commit
        run_tags["emoca.git_dirty"] = str(dirty).lower()
    run_tags.update(tags or {})
    name = run_name or time.strftime("workflow %Y-%m-%d %H:%M:%S")
    run_id = client.create_run(experiment_id, run_name=name, tags=run_tags).info.run_id
    if set_env:
        os.environ[PARENT_RUN_ENV] = run_id
    return run_id


def end_workflow_run(
    tracking_uri: str | None,
    results_dir: str | os.PathLike,
    run_id: str | None = None,
    status: str = "FINISHED",
) -> None:
    """End a workflow's parent run (default: the one in ``$EMOCA_MLFLOW_PARENT_RUN``) with
    ``status`` ("FINISHED", "FAILED" or "KILLED"); nothing to do when there is none."""
    from mlflow.tracking import MlflowClient

    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise ValueError(f"status: expected FINISHED, FAILED or KILLED, got {status!r}")
    run_id = run_id or os.environ.get(PARENT_RUN_ENV)
    if not run_id:
        return
    MlflowClient(resolve_tracking_uri(tracking_uri, results_dir)).set_terminated(run_id, status)


def log_params(logger: MLFlowLogger, params: Mapping[str, Any]) -> None:
    """Log a (nested) mapping, e.g. the resolved config, as params ``a.b.c`` of the run."""
    from mlflow.entities import Param

    items = [Param(key, value) for key, value in flatten_params(params).items()]
    for start in range(0, len(items), 100):  # MLflow's batch limit
        logger.experiment.log_batch(logger.run_id, params=items[start:start + 100])


def log_artifact(logger: MLFlowLogger, path: str | os.PathLike, artifact_path: str | None = None
                 ) -> None:
    """Copy a local file into the run's artifacts (under ``artifact_path``)."""
    logger.experiment.log_artifact(logger.run_id, str(path), artifact_path)


def metric_key(*parts: str) -> str:
    """An MLflow metric name from table labels: each part lower-cased, every run of other
    characters than letters and digits made one ``_``, parts joined by ``/``
    (``metric_key("mean code", "V-err (mm)") == "mean_code/v_err_mm"``)."""
    words = ["_".join(re.findall(r"[0-9a-z]+", part.lower())) for part in parts]
    if not all(words):
        raise ValueError(f"metric name parts {parts!r}: each needs a letter or digit")
    return "/".join(words)


def log_metrics(logger: MLFlowLogger, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log ``{name: value}`` in batches; values that are not finite (an undefined table cell)
    are left out rather than stored as NaN."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(key, float(value), now, step) for key, value in metrics.items()
             if value is not None and math.isfinite(float(value))]
    for start in range(0, len(items), 1000):  # MLflow's batch limit
        logger.experiment.log_batch(logger.run_id, metrics=items[start:start + 1000])


@contextlib.contextmanager
def job_run(
    tracking_uri: str | None,
    results_dir: str | os.PathLike,
    experiment: str,
    run_name: str,
    kind: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
) -> Iterator[EmocaMLFlowLogger]:
    """A job's child run for work outside Lightning (e.g. an evaluation), as
    :func:`make_mlflow_logger` makes it, tagged ``emoca.run_kind=kind``, with ``params``
    logged (:func:`log_params`); FINISHED when the block ends, FAILED when it raises."""
    logger = make_mlflow_logger(tracking_uri, results_dir, experiment, run_name,
                                parent_run_id=parent_run_id,
                                tags={**(tags or {}), "emoca.run_kind": kind},
                                finish_on_teardown=False)
    try:
        if params:
            log_params(logger, params)
        yield logger
    except BaseException:
        logger.finish("failed")
        raise
    logger.finish("success")
