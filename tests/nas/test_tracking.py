"""The queued MLflow writer against a real SQLite tracking store."""

from __future__ import annotations

import json
import time

from mlflow import MlflowClient

from nas.tracking import Tracker


def _tracker(tmp_path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking-test", str(tmp_path / "artifacts"))


def test_a_run_gets_its_params_artifacts_metrics_tags_and_status(tmp_path):
    tracker = _tracker(tmp_path)
    tracker.start_run("parent", "search", {"geonas.kind": "search"}, {"seed": 0})
    tracker.start_run(1, "trial-0001", {"geonas.kind": "trial"}, {"arch.depth": 2}, parent="parent")
    tracker.log_dict(1, {"depth": 2}, "architecture.json")
    tracker.log_png(1, lambda: b"\x89PNG fake", "plots/profile.png")
    for epoch in (1, 2, 3):
        tracker.log_metrics(1, {"epoch/val_loss": 1.0 / epoch}, step=epoch, max_delay=60)
    tracker.end_run(1, "FINISHED", {"E_CNN": 0.33}, {"geonas.state": "COMPLETE", "duplicate_of": 7}, step=3)
    assert tracker.flush(timeout=60)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(tracker.run_id(1))
    assert run.info.status == "FINISHED"
    assert run.data.params == {"arch.depth": "2"}
    assert run.data.tags["mlflow.parentRunId"] == tracker.run_id("parent")
    assert run.data.tags["geonas.state"] == "COMPLETE" and run.data.tags["duplicate_of"] == "7"
    assert run.data.metrics["E_CNN"] == 0.33
    assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch/val_loss")] == [1.0, 0.5, 1 / 3]
    # artifacts go straight to the run's artifact store, folders included
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"architecture.json", "plots"}
    path = client.download_artifacts(run.info.run_id, "architecture.json", str(tmp_path))
    assert json.loads(open(path).read()) == {"depth": 2}
    assert client.download_artifacts(run.info.run_id, "plots/profile.png", str(tmp_path))
    assert tracker.write_seconds["start run"][0] == 2 and tracker.write_seconds["end run"][0] == 1
    tracker.close()


def test_batched_metrics_reach_mlflow_after_their_delay_without_new_writes(tmp_path):
    tracker = _tracker(tmp_path)
    tracker.start_run("parent", "search", {}, {})
    tracker.log_metrics("parent", {"hypervolume": 0.5}, step=0, max_delay=0.3)
    tracker.log_metrics("parent", {"hypervolume": 0.6}, step=1, max_delay=0.3)
    tracker.flush_stale()  # too early: nothing is written yet
    _wait_for_the_queue(tracker)  # (the run's creation; flush() would write the buffered metrics too)
    time.sleep(0.4)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_metric_history(tracker.run_id("parent"), "hypervolume") == []
    tracker.flush_stale()  # what the search loop calls after every poll
    _wait_for_the_queue(tracker)
    assert [m.value for m in client.get_metric_history(tracker.run_id("parent"), "hypervolume")] == [0.5, 0.6]
    tracker.close()


def _wait_for_the_queue(tracker: Tracker) -> None:
    deadline = time.monotonic() + 60
    while tracker.backlog and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tracker.backlog == 0
