"""The queued MLflow writer against a real SQLite tracking store."""

from __future__ import annotations

import json
import time

from mlflow import MlflowClient

from nas.tracking import Tracker, server_environment


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


def test_several_writers_keep_each_runs_writes_in_order_and_children_under_their_parent(tmp_path):
    # The parent's creation is slow (as when the search's runs are looked up on resume): the children's
    # writers must wait for it instead of creating orphans or skipping the children.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "tracking-test", str(tmp_path / "artifacts"), writers=3)
    threads: dict[str, set[str]] = {}

    def open_parent(tracker) -> None:
        import threading

        time.sleep(1.0)
        run = tracker.client.create_run(tracker.experiment_id(), run_name="search")
        threads.setdefault("open", set()).add(threading.current_thread().name)
        tracker.adopt("search", run.info.run_id)

    tracker.call("open the search's runs", open_parent, adopts_runs=True)
    for n in range(8):
        tracker.start_run(n, f"trial-{n:04d}", {"geonas.kind": "trial"}, {"n": n}, parent="search")
        tracker.log_dict(n, {"n": n}, "architecture.json")
        for epoch in range(1, 4):
            tracker.log_metrics(n, {"epoch/val_loss": n + 1.0 / epoch}, step=epoch)
        tracker.end_run(n, "FINISHED", {"E_CNN": float(n)}, {"state": "COMPLETE"}, step=3)
    tracker.log_metrics("search", {"hypervolume": 0.5}, step=7, flush=True)
    assert tracker.flush(timeout=60)
    assert not tracker.failed_writes

    client = MlflowClient(tracking_uri=uri)
    parent = tracker.run_id("search")
    children = client.search_runs([tracker.experiment_id()], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(int(r.data.params["n"]) for r in children) == list(range(8))
    for run in children:
        n = int(run.data.params["n"])
        assert run.info.status == "FINISHED" and run.data.tags["state"] == "COMPLETE"
        assert run.data.metrics["E_CNN"] == n
        assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch/val_loss")] == \
            [n + 1.0, n + 0.5, n + 1.0 / 3]
    # every writer did some of the work: the parent's on the first, the trials' on the two others
    assert tracker.writers == 3 and tracker.write_seconds["start run"][0] == 8
    assert threads["open"] == {"geonas-tracking-0"}
    tracker.close()


def test_a_child_whose_parent_never_comes_is_skipped_not_waited_for_forever(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking-test", str(tmp_path / "artifacts"), writers=2)

    def broken(_tracker) -> None:
        raise RuntimeError("the store refuses")

    tracker.retry_for = 0.5  # give the broken write up quickly
    tracker.call("open the search's runs", broken, adopts_runs=True)
    tracker.start_run(1, "trial-0001", {}, {}, parent="search")
    assert tracker.flush(timeout=30)
    assert tracker.run_id(1) is None
    assert any("open the search's runs" in w and "given up" in w for w in tracker.failed_writes)
    assert any("start run 1" in w and "skipped" in w for w in tracker.failed_writes)
    tracker.close()


def test_delayed_params_go_out_with_the_first_batch_or_after_their_delay(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "tracking-test", str(tmp_path / "artifacts"))
    many = {f"p{i}": i for i in range(150)}  # more than one log_batch takes (100 params)
    tracker.start_run(1, "trial-0001", {}, many, params_delay=60)
    tracker.log_metrics(1, {"epoch/val_loss": 0.5}, step=1, max_delay=60)
    tracker.end_run(1, "FINISHED", {"E_CNN": 0.5}, {"state": "COMPLETE"}, step=1)
    tracker.start_run(2, "trial-0002", {}, {"depth": 3}, params_delay=0.3)  # a run that logs nothing for a while
    _wait_for_the_queue(tracker)
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(tracker.run_id(2)).data.params == {}  # not yet: waiting for a batch to go with
    time.sleep(0.4)
    tracker.flush_stale()
    _wait_for_the_queue(tracker)
    assert client.get_run(tracker.run_id(2)).data.params == {"depth": "3"}
    one = client.get_run(tracker.run_id(1))
    assert one.data.params == {k: str(v) for k, v in many.items()} and one.info.status == "FINISHED"
    assert one.data.metrics["E_CNN"] == 0.5 and one.data.tags["state"] == "COMPLETE"
    # the params rode on the end batch: no request of their own, none at the start
    assert tracker.write_seconds["start run"][0] == 2 and "params of" not in " ".join(tracker.write_seconds)
    tracker.close()


def test_a_batch_is_split_within_mlflows_limits():
    from mlflow.entities import Metric, Param, RunTag

    from nas.tracking import _chunks

    metrics = [Metric("m", 1.0, 0, i) for i in range(2500)]
    params = [Param(f"p{i}", "v") for i in range(150)]
    tags = [RunTag("state", "COMPLETE")]
    chunks = _chunks(metrics, params, tags)
    assert all(len(m) + len(p) + len(t) <= 1000 and len(p) <= 100 and len(t) <= 100 for m, p, t in chunks)
    assert [x for m, _, _ in chunks for x in m] == metrics  # every metric once, in order
    assert [x for _, p, _ in chunks for x in p] == params and [x for _, _, t in chunks for x in t] == tags
    assert _chunks([]) == [([], [], [])]  # nothing to write is still one (empty) call: the end run's status follows


def test_local_artifacts_are_written_whole_in_place_and_stay_inside_the_run(tmp_path):
    import os
    import stat

    import pytest

    from nas.tracking import _write_atomically

    root = tmp_path / "run" / "artifacts"
    _write_atomically(root, "plots/front.json", b"first")
    _write_atomically(root, "plots/front.json", b"second")  # a later version replaces the file
    assert (root / "plots" / "front.json").read_bytes() == b"second"
    assert os.listdir(root / "plots") == ["front.json"]  # no staging file left behind
    assert stat.S_IMODE((root / "plots" / "front.json").stat().st_mode) == 0o644
    for bad in ("../outside.json", "/etc/passwd"):
        with pytest.raises(ValueError, match="inside the run's artifacts"):
            _write_atomically(root, bad, b"x")
    assert not (tmp_path / "run" / "outside.json").exists()


def test_servers_start_without_mlflows_job_runner_unless_the_environment_asks_for_it():
    assert server_environment({"PATH": "/bin"}) == {"PATH": "/bin", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    assert server_environment({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
