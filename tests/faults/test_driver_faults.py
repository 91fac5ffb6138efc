"""Faults 4-6: the driver killed mid-search, the tracking server down, two drivers on one study.

Drivers run as `nas search` processes joined to the session's Ray cluster (as `ray job submit` would run
them), with the Optuna storage on the real PostgreSQL and MLflow behind a real `mlflow server` process
whose backend store is PostgreSQL too.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from nas.config import config_from_dict
from nas.search import run_search
from nas.study import make_storage, trial_attrs
from nas.testing import MlflowServer, free_port
from tests.faults.conftest import wait_for
from tests.nas.test_search import TINY_SPACE

SLOW = {"max_epochs": 25, "patience": 25, "loss_tol": 0.0, "update_tol": 0.0}


def _config(name: str, storage: str, tracking: str, tmp_path: Path, n_trials: int, **search) -> dict:
    return {
        "name": name, "seed": 0, "data": {"dataset": "digits"}, "space": TINY_SPACE, "train": SLOW,
        "search": {"n_trials": n_trials, "sampler": "random", "pruner": "none", "bound_check": False,
                   "final_seeds": 0, "storage": storage, **search},
        # The MLflow writes in a process of their own: every driver fault here also covers that process.
        "tracking": {"uri": tracking, "artifact_location": str(tmp_path / "artifacts"), "flush_timeout": 30,
                     "process": True},
        "ray": {"parallelism": 2},
    }


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _driver(path: Path, ray_cluster, tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.address}
    return subprocess.Popen([sys.executable, "-m", "nas", "search", str(path), "--no-progress", *args], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    import sqlalchemy

    if storage.startswith("journal+"):  # one table, created by whoever comes first: nothing to wait for
        try:
            return optuna.load_study(study_name=name, storage=make_storage(storage)).trials
        except KeyError:
            return []

    # Read only once the driver has created the schema: two processes creating Optuna's tables at the same
    # moment on a fresh PostgreSQL database collide.
    engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)
    try:
        ready = sqlalchemy.inspect(engine).has_table("alembic_version")
    finally:
        engine.dispose()
    if not ready:
        return []
    try:
        return optuna.load_study(study_name=name, storage=storage).trials
    except KeyError:
        return []


def _children(tracking: str, experiment: str):
    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string="tags.`geonas.kind` = 'trial'", max_results=1000)


@pytest.mark.parametrize("storage_format", ["postgresql", "journal+postgresql"])
def test_killed_driver_resumes_the_study_without_losing_or_duplicating_trials(storage_format, pg_database,
                                                                              mlflow_server, ray_cluster, tmp_path):
    storage = pg_database("optuna").replace("postgresql://", storage_format + "://", 1)
    config = _config("resume", storage, mlflow_server.url, tmp_path, n_trials=6)
    path = _write(tmp_path, config)
    first = _driver(path, ray_cluster, tmp_path)
    # Kill the driver once some trials finished and others are running.
    wait_for(lambda: sum(t.state == TrialState.COMPLETE for t in _trials(storage, "resume")) >= 2
             and any(t.state == TrialState.RUNNING for t in _trials(storage, "resume")), timeout=300)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    at_kill = _trials(storage, "resume")
    running = {t.number: t.params for t in at_kill if t.state == TrialState.RUNNING}
    completed = {t.number for t in at_kill if t.state == TrialState.COMPLETE}
    assert running, "the driver died with trials running"

    second = _driver(path, ray_cluster, tmp_path)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]

    trials = _trials(storage, "resume")
    requeued = [t for t in trials if trial_attrs(t).get("requeued")]
    counted = [t for t in trials if not trial_attrs(t).get("requeued")]
    # the trials left RUNNING by the dead driver were marked failed, with the reason ...
    assert {t.number for t in requeued} == set(running)
    assert all(t.state == TrialState.FAIL and trial_attrs(t)["reason"].startswith("driver died") for t in requeued)
    # ... and their architectures ran again as new trials
    rerun = {t.user_attrs["requeued_from"]: t.params for t in trials if "requeued_from" in t.user_attrs}
    # (a driver killed while sampling leaves a trial with part of its parameters: those parts are fixed in
    # the rerun, the rest sampled anew; a trial killed before its first parameter has nothing to requeue)
    assert set(rerun) == {n for n, params in running.items() if params}
    for number, params in rerun.items():
        assert params.items() >= running[number].items()
    # completed trials were kept, and the study has exactly the budget of finished trials
    assert completed <= {t.number for t in counted if t.state == TrialState.COMPLETE}
    assert len(counted) == 6 and all(t.state == TrialState.COMPLETE for t in counted)
    # MLflow: exactly one child run per trial, the stale ones KILLED
    children = _children(mlflow_server.url, "resume")
    per_trial = collections.Counter(int(r.data.tags["trial_number"]) for r in children)
    assert per_trial == {t.number: 1 for t in trials}
    status = {int(r.data.tags["trial_number"]): r.info.status for r in children}
    assert all(status[n] == "KILLED" for n in running)
    assert all(status[t.number] == "FINISHED" for t in counted)


def test_tracking_server_down_for_part_of_the_search_loses_no_record(pg_database, ray_executor, tmp_path):
    server = MlflowServer(pg_database("mlflow"), tmp_path / "mlflow-artifacts").start()
    storage = pg_database("optuna")
    data = _config("outage", storage, server.url, tmp_path, n_trials=5)
    # The search may end before the server is back (restarting it takes tens of seconds on a loaded
    # machine): the driver then waits for the queued writes up to flush_timeout.
    data["tracking"]["flush_timeout"] = 300
    config = config_from_dict(data)
    outage: list[float] = []

    def take_the_server_down() -> None:
        wait_for(lambda: any(t.state == TrialState.COMPLETE for t in _trials(storage, "outage")), timeout=300)
        server.stop()
        outage.append(time.monotonic())
        time.sleep(8)  # trials keep finishing meanwhile
        server.start()
        outage.append(time.monotonic())

    thread = threading.Thread(target=take_the_server_down, daemon=True)
    thread.start()
    try:
        outcome = run_search(config, executor=ray_executor)
        thread.join(timeout=120)
        assert len(outage) == 2, "the server was down during the search and came back"
        # the search went on: the full budget
        assert outcome.count("COMPLETE") == 5
        # writes were queued and retried: every trial has its run with its final metrics
        children = _children(server.url, "outage")
        assert sorted(int(r.data.tags["trial_number"]) for r in children) == list(range(5))
        assert all(r.info.status == "FINISHED" and "E_CNN" in r.data.metrics for r in children)
        # `nas sync` finds nothing to repair, and running it again changes nothing
        sync = [subprocess.run([sys.executable, "-m", "nas", "sync", str(_write(tmp_path, _config(
            "outage", storage, server.url, tmp_path, n_trials=5)))], cwd=tmp_path, capture_output=True, text=True,
            timeout=300) for _ in range(2)]
        assert [p.returncode for p in sync] == [0, 0], sync[0].stderr[-2000:]
        assert "0 child runs created, 0 updated" in sync[1].stdout
    finally:
        server.stop()


def test_sync_rebuilds_every_run_lost_while_the_server_was_down(pg_database, ray_executor, tmp_path):
    storage = pg_database("optuna")
    backend = pg_database("mlflow")
    port = free_port()
    # No server at all during the search: every MLflow write fails, the search still completes.
    config = _config("lost", storage, f"http://127.0.0.1:{port}", tmp_path, n_trials=3, final_seeds=1)
    config["tracking"]["flush_timeout"] = 2
    outcome = run_search(config_from_dict(config), executor=ray_executor)
    assert outcome.count("COMPLETE") == 3
    server = MlflowServer(backend, tmp_path / "mlflow-artifacts")
    server.port, server.url = port, f"http://127.0.0.1:{port}"
    server.start()
    try:
        path = _write(tmp_path, config)
        first = subprocess.run([sys.executable, "-m", "nas", "sync", str(path)], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-2000:]
        assert "3 child runs created" in first.stdout and "parent run created" in first.stdout
        second = subprocess.run([sys.executable, "-m", "nas", "sync", str(path)], cwd=tmp_path, capture_output=True,
                                text=True, timeout=300)
        # idempotent: a second sync writes nothing
        assert second.returncode == 0 and "0 child runs created, 0 updated" in second.stdout
        client = MlflowClient(server.url)
        runs = client.search_runs([client.get_experiment_by_name("lost").experiment_id], max_results=100)
        parents = [r for r in runs if r.data.tags["geonas.kind"] == "search"]
        children = [r for r in runs if r.data.tags["geonas.kind"] == "trial"]
        assert len(parents) == 1 and len(children) == 3
        study = optuna.load_study(study_name="lost", storage=storage)
        for run in children:
            trial = study.trials[int(run.data.tags["trial_number"])]
            # rebuilt from the storage: final metrics, per-epoch history, artifacts
            assert run.info.status == "FINISHED"
            assert run.data.metrics["E_CNN"] == trial_attrs(trial)["E_CNN"]
            history = client.get_metric_history(run.info.run_id, "epoch/val_loss")
            assert len(history) == trial_attrs(trial)["epochs"]
            assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
                "architecture.json", "complexity_profile.json", "complexity_profile.png"}
        # the final test of the front members, lost with the rest, is back on their runs
        final = study.user_attrs["final_test"]
        assert final and set(final) == {str(p.trial_number) for p in outcome.front}
        for run in children:
            entry = final.get(run.data.tags["trial_number"])
            if entry:
                assert run.data.metrics["test_accuracy_mean"] == pytest.approx(entry["test_accuracy_mean"])
                assert run.data.metrics["test_accuracy_train_split_mean"] == pytest.approx(
                    entry["test_accuracy_train_split_mean"])
            else:
                assert "test_accuracy_mean" not in run.data.metrics
        parent = parents[0]
        assert len(client.get_metric_history(parent.info.run_id, "hypervolume")) == 3
        assert {"front.json", "front_table.md", "front.png", "config.yaml"} <= {
            a.path for a in client.list_artifacts(parent.info.run_id)}
    finally:
        server.stop()


def test_a_killed_tracking_process_stops_mlflow_not_the_search_and_sync_completes_the_runs(ray_executor, tmp_path,
                                                                                              caplog):
    # The MLflow writes run in a process of their own (tracking.process, set by _config). It is killed after the
    # first finished trial: the search finishes its budget in the storage, says what happened, and `nas sync`
    # writes the runs that were lost.
    import logging

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _config("trackingkill", f"sqlite:///{tmp_path / 'optuna.db'}", uri, tmp_path, n_trials=4)
    config["train"] = {"max_epochs": 3, "patience": 3}
    killed = []

    def kill_the_tracking_process(search) -> None:
        if not killed:
            killed.append(search.tracker._process.pid)
            os.kill(killed[0], signal.SIGKILL)

    with caplog.at_level(logging.WARNING, logger="nas.tracking_process"):
        outcome = run_search(config_from_dict(config), executor=ray_executor, on_progress=kill_the_tracking_process)
    assert killed and outcome.count("COMPLETE") == 4
    assert "The MLflow tracking process is out of reach" in caplog.text and "nas sync" in caplog.text
    client = MlflowClient(uri)

    def finished_children() -> list:
        experiment = client.get_experiment_by_name("trackingkill")  # None if the kill came before its creation
        runs = client.search_runs([experiment.experiment_id], max_results=100) if experiment else []
        return [r for r in runs if r.data.tags.get("geonas.kind") == "trial" and r.info.status == "FINISHED"]

    assert len(finished_children()) < 4  # the kill lost records: what sync is for
    path = _write(tmp_path, config)
    sync = subprocess.run([sys.executable, "-m", "nas", "sync", str(path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert sync.returncode == 0, sync.stderr[-2000:]
    assert len(finished_children()) == 4
    runs = client.search_runs([client.get_experiment_by_name("trackingkill").experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags["geonas.kind"] == "trial"]
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == [0, 1, 2, 3]
    assert all(r.info.status == "FINISHED" and "E_CNN" in r.data.metrics for r in children)
    assert len([r for r in runs if r.data.tags["geonas.kind"] == "search"]) == 1


def test_second_driver_on_a_running_study_refuses(pg_database, ray_cluster, tmp_path):
    storage = pg_database("optuna")
    config = _config("twice", storage, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, n_trials=40)
    path = _write(tmp_path, config)
    first = _driver(path, ray_cluster, tmp_path)
    try:
        wait_for(lambda: any(t.state == TrialState.RUNNING for t in _trials(storage, "twice")), timeout=300)
        second = _driver(path, ray_cluster, tmp_path)
        out, err = second.communicate(timeout=300)
        # a clear refusal, exit code 2, and no trial started by the second driver
        assert second.returncode == 2
        assert "is being driven by" in err and "twice" in err
        assert first.poll() is None  # the first driver goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
