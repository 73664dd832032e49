"""The shared MLflow setup: URIs, parent/child runs, tags, params, artifacts (sqlite store)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from emoca_pipeline.tracking import (
    PARENT_RUN_ENV,
    WORKFLOW_ID_ENV,
    end_workflow_run,
    file_digest,
    flatten_params,
    input_tags,
    log_artifact,
    log_params,
    make_mlflow_logger,
    resolve_tracking_uri,
    start_workflow_run,
)


@pytest.fixture(autouse=True)
def no_inherited_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may run inside a workflow job: start without its parent-run variables, and
    leave none behind (start_workflow_run sets one; setenv first makes monkeypatch restore
    the variable's absence at teardown)."""
    for name in (PARENT_RUN_ENV, WORKFLOW_ID_ENV):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder whose name has a space, a quote and a non-ASCII letter."""
    return tmp_path_factory.mktemp("tracking") / "out 'q' ü"


def _client(results: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(resolve_tracking_uri(None, results))


def test_tracking_uri_defaults_to_sqlite_in_results_and_refuses_file_stores(
        tmp_path: Path) -> None:
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri("http://host:5000", tmp_path) == "http://host:5000"
    with pytest.raises(ValueError, match="file store is deprecated"):
        resolve_tracking_uri(f"file://{tmp_path}", tmp_path)
    with pytest.raises(ValueError, match=r"'mlruns': expected a URI such as sqlite:///"):
        resolve_tracking_uri("mlruns", tmp_path)


def test_workflow_parent_from_environment_nests_children(
        results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = start_workflow_run(None, results, "exp", run_name="workflow test")
    assert os.environ[PARENT_RUN_ENV] == parent
    loggers = [make_mlflow_logger(None, results, "exp", f"job{i}", tags={"k": "v"})
               for i in range(2)]
    client = _client(results)
    for logger in loggers:
        run = client.get_run(logger.run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent and run.data.tags["k"] == "v"
        assert run.info.status == "RUNNING"
        logger.finish("success")
        assert client.get_run(logger.run_id).info.status == "FINISHED"
    # The workflow's parent is not ended by its jobs...
    assert client.get_run(parent).info.status == "RUNNING"
    end_workflow_run(None, results, status="FAILED")
    assert client.get_run(parent).info.status == "FAILED"
    # ...and no on-demand parents were made.
    experiment = client.get_experiment_by_name("exp")
    assert len(client.search_runs([experiment.experiment_id])) == 3
    # Artifacts go beside the database, not to ./mlruns.
    assert experiment.artifact_location == (results.resolve() / "mlartifacts").as_uri()


def test_a_standalone_jobs_parent_ends_with_it_and_failure_is_recorded(
        results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logger = make_mlflow_logger(None, results, "exp", "standalone", finish_on_teardown=False)
    client = _client(results)
    parent = client.get_run(logger.parent_run_id)
    assert parent.data.tags["emoca.parent"] == "job" and logger.owns_parent
    logger.finalize("success")  # what Lightning calls at the end of fit: the run stays open
    assert client.get_run(logger.run_id).info.status == "RUNNING"
    logger.finish("failed")
    assert client.get_run(logger.run_id).info.status == "FAILED"
    assert client.get_run(logger.parent_run_id).info.status == "FAILED"


def test_jobs_of_one_workflow_id_share_a_parent_that_remembers_failure(
        results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WORKFLOW_ID_ENV, "invocation-1")
    first = make_mlflow_logger(None, results, "exp", "coarse")
    second = make_mlflow_logger(None, results, "exp", "detail")
    client = _client(results)
    assert first.parent_run_id == second.parent_run_id
    parent = client.get_run(first.parent_run_id)
    assert parent.data.tags["emoca.workflow_id"] == "invocation-1"
    assert parent.info.run_name == "workflow invocation-1"
    first.finish("failed")
    second.finish("success")  # a later success does not hide the failure
    assert client.get_run(first.parent_run_id).info.status == "FAILED"
    monkeypatch.setenv(WORKFLOW_ID_ENV, "invocation-2")
    third = make_mlflow_logger(None, results, "exp", "emotion")
    assert third.parent_run_id != first.parent_run_id
    third.finish("success")
    assert client.get_run(third.parent_run_id).info.status == "FINISHED"
    fourth = make_mlflow_logger(None, results, "exp", "emotion again")  # same invocation
    assert fourth.parent_run_id == third.parent_run_id
    assert client.get_run(third.parent_run_id).info.status == "RUNNING"
    fourth.finish("success")
    assert client.get_run(third.parent_run_id).info.status == "FINISHED"


def test_bad_parent_runs_are_refused(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PARENT_RUN_ENV, "0123456789abcdef0123456789abcdef")
    with pytest.raises(ValueError, match=r"parent MLflow run '0123456789abcdef0123456789abcdef' "
                                         r"\(from \$EMOCA_MLFLOW_PARENT_RUN\) not found"):
        make_mlflow_logger(None, results, "exp", "job")
    elsewhere = start_workflow_run(None, results, "other experiment", set_env=False)
    with pytest.raises(ValueError, match="runs nest only within one experiment"):
        make_mlflow_logger(None, results, "exp", "job", parent_run_id=elsewhere)


def test_params_tags_and_artifacts(results: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(b"parquet bytes")
    logger = make_mlflow_logger(None, results, "exp", "params", tags=input_tags(manifest=manifest))
    config = {"batch_size": 64, "mlp": {"hidden_dim": 2048, "use_jaw": True},
              "weights": None, "empty": {}}
    log_params(logger, config)
    log_artifact(logger, manifest, "inputs")
    logger.log_metrics({"val/loss": 0.5}, step=3)
    logger.finish()
    run = _client(results).get_run(logger.run_id)
    assert run.data.params == {"batch_size": "64", "mlp.hidden_dim": "2048",
                               "mlp.use_jaw": "True", "weights": "null", "empty": "{}"}
    assert run.data.metrics == {"val/loss": 0.5}
    expected = hashlib.blake2b(b"parquet bytes", digest_size=20).hexdigest()
    assert run.data.tags["emoca.input.manifest.blake2b"] == expected
    assert run.data.tags["emoca.input.manifest"] == str(manifest.resolve())
    listed = [item.path for item in _client(results).list_artifacts(logger.run_id, "inputs")]
    assert listed == ["inputs/manifest.parquet"]


def test_folder_digest_covers_names_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "split=test").mkdir()
    (tmp_path / "split=test" / "part-0.parquet").write_bytes(b"a")
    (tmp_path / "split=train").mkdir()
    (tmp_path / "split=train" / "part-0.parquet").write_bytes(b"b")
    (tmp_path / ".hidden").write_bytes(b"ignored")
    first = file_digest(tmp_path)
    expected = hashlib.blake2b(digest_size=20)
    for name, data in (("split=test/part-0.parquet", b"a"), ("split=train/part-0.parquet", b"b")):
        expected.update(name.encode() + b"\0")
        expected.update(data)
    assert first == expected.hexdigest()
    (tmp_path / "split=train" / "part-0.parquet").rename(tmp_path / "split=train" / "p.parquet")
    assert file_digest(tmp_path) != first
    with pytest.raises(FileNotFoundError, match="nope: no such file or folder"):
        file_digest(tmp_path / "nope")
    assert flatten_params({"a": {"b": {"c": 1}}, "d": [1, 2]}) == {"a.b.c": "1", "d": "[1, 2]"}
