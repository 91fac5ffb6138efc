"""The MLflow writers in a process of their own, against a real SQLite tracking store."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time

from mlflow import MlflowClient

from nas.plots import profile_png
from nas.tracking_process import TrackingProcess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _open_parent(tracker, name: str, tags: dict) -> None:
    """What the search queues first (`Tracker.call`): runs in the child, with the child's tracker."""
    run = tracker.client.create_run(tracker.experiment_id(), run_name=name, tags=tags)
    tracker.adopt("search", run.info.run_id)


def test_the_process_writes_what_the_threads_write_in_order_and_reports_back(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = TrackingProcess(uri, "tracking-test", str(tmp_path / "artifacts"), writers=3)
    assert tracker._process.pid != os.getpid() and tracker._process.poll() is None
    tracker.call("open the search's runs", _open_parent, "search", {"geonas.kind": "search"}, adopts_runs=True)
    for n in range(6):
        tracker.start_run(n, f"trial-{n:04d}", {"geonas.kind": "trial"}, {"n": n}, parent="search", params_delay=60)
        tracker.log_dict(n, {"n": n}, "architecture.json")
        tracker.log_png(n, functools.partial(profile_png, ["conv1", "fc"], [100 * (n + 1), 10], f"trial {n}"),
                        "complexity_profile.png")
        for epoch in range(1, 4):
            tracker.log_metrics(n, {"epoch/val_loss": n + 1.0 / epoch}, step=epoch, max_delay=60)
        tracker.end_run(n, "FINISHED", {"E_CNN": float(n)}, {"state": "COMPLETE"}, step=3)
    tracker.log_metrics("search", {"hypervolume": 0.5}, step=5, max_delay=60)
    assert tracker.flush(timeout=60)
    assert tracker.backlog == 0 and tracker.failed_writes == []

    client = MlflowClient(tracking_uri=uri)
    parent = tracker.run_id("search")
    assert client.get_run(parent).data.tags["geonas.kind"] == "search"
    assert [m.value for m in client.get_metric_history(parent, "hypervolume")] == [0.5]
    children = client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(int(r.data.params["n"]) for r in children) == list(range(6))
    for run in children:
        n = int(run.data.params["n"])
        assert run.info.run_id == tracker.run_id(n)
        assert run.info.status == "FINISHED" and run.data.metrics["E_CNN"] == n
        assert [m.value for m in client.get_metric_history(run.info.run_id, "epoch/val_loss")] == \
            [n + 1.0, n + 0.5, n + 1.0 / 3]
        assert json.loads(open(client.download_artifacts(run.info.run_id, "architecture.json", str(tmp_path / str(n))))
                          .read()) == {"n": n}
        png = open(client.download_artifacts(run.info.run_id, "complexity_profile.png", str(tmp_path / str(n))), "rb")
        assert png.read() == profile_png(["conv1", "fc"], [100 * (n + 1), 10], f"trial {n}")  # drawn in the child
    seconds = tracker.write_seconds
    assert seconds["start run"][0] == 6 and seconds["end run"][0] == 6 and seconds["complexity_profile.png of"][0] == 6
    assert tracker.close(timeout=30)
    assert tracker._process.poll() == 0  # it stopped by itself
    assert tracker.write_seconds == seconds  # kept from the child's last report
    tracker.start_run(99, "late", {}, {})  # after close: not written, and said so
    assert any("'start_run of 99' not written" in w for w in tracker.failed_writes)


def test_a_write_that_does_not_pickle_is_recorded_and_the_others_go_on(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = TrackingProcess(uri, "tracking-test", str(tmp_path / "artifacts"), writers=1)
    tracker.start_run(1, "trial-0001", {}, {"depth": 2})
    tracker.log_png(1, lambda: b"png", "profile.png")  # a lambda cannot cross to the process
    tracker.end_run(1, "FINISHED", {"E_CNN": 0.5}, {}, step=1)
    assert tracker.flush(timeout=60)
    assert len(tracker.failed_writes) == 1 and "'log_png of 1' could not be sent" in tracker.failed_writes[0]
    run = MlflowClient(tracking_uri=uri).get_run(tracker.run_id(1))
    assert run.info.status == "FINISHED" and run.data.params == {"depth": "2"} and run.data.metrics["E_CNN"] == 0.5
    assert tracker.close(timeout=30)  # nothing dropped: the lost write is in failed_writes, as with Tracker
    assert len(tracker.failed_writes) == 1


def _explode() -> None:
    raise RuntimeError("cannot be rebuilt here")


class _Unreadable:
    """Pickles in the driver; unpickling it (in the child) raises."""

    def __reduce__(self):
        return (_explode, ())


def test_a_model_a_figure_and_an_unreadable_write_through_the_process(tmp_path):
    import mlflow.pytorch
    import numpy as np
    import torch

    from nas.energy import FrontPoint
    from nas.plots import front_figure

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = TrackingProcess(uri, "tracking-test", str(tmp_path / "artifacts"), writers=2)
    tracker.start_run("search", "search", {}, {})
    points = [FrontPoint(0, 100.0, 0.2, 10, "a", "cnn a"), FrontPoint(1, 50.0, 0.3, 5, "b", "cnn b")]
    tracker.log_figure("search", functools.partial(front_figure, points, points, "front"), "front.png")
    tracker.log_dict("search", _Unreadable(), "broken.json")  # lost in the child, and said so; the rest goes on
    tracker.start_run(1, "trial-0001", {}, {})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    example = np.ones((2, 1, 4), dtype=np.float32)
    # torch registers shared-memory reductions on multiprocessing's pickler: the weights must travel as data
    tracker.log_model(1, model, example, {"test_accuracy": 0.9})
    tracker.end_run(1, "FINISHED", {}, {}, step=0)
    assert tracker.flush(timeout=120)
    assert len(tracker.failed_writes) == 1 and "cannot be rebuilt here" in tracker.failed_writes[0]
    client = MlflowClient(tracking_uri=uri)
    assert {a.path for a in client.list_artifacts(tracker.run_id("search"))} == {"front.png"}
    run = client.get_run(tracker.run_id(1))
    assert run.data.tags["has_model"] == "true" and run.data.metrics["test_accuracy"] == 0.9
    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    with torch.no_grad():
        assert torch.equal(loaded(torch.as_tensor(example)), model(torch.as_tensor(example)))
    assert tracker.close(timeout=30) and len(tracker.failed_writes) == 1  # kept from the child's last report


def test_an_interrupted_question_leaves_the_pipe_closed_not_mispaired(tmp_path, monkeypatch):
    import pytest

    tracker = TrackingProcess(f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking-test", str(tmp_path / "artifacts"))
    tracker.start_run(1, "trial-0001", {}, {})
    assert tracker.flush(timeout=60)

    def interrupted(_timeout):
        raise KeyboardInterrupt

    monkeypatch.setattr(tracker._conn, "poll", interrupted)  # Ctrl-C while the driver waits for an answer
    with pytest.raises(KeyboardInterrupt):
        tracker.flush(timeout=60)
    monkeypatch.undo()
    # The answer to that flush may still come: nothing reads it as the answer to another question.
    assert tracker.backlog == 0 and tracker.run_id(1) is None and tracker.flush(timeout=1) is False
    tracker.start_run(2, "trial-0002", {}, {})
    assert any("'start_run of 2' not written" in w for w in tracker.failed_writes)
    assert tracker.close(timeout=5) is False
    assert tracker._process.poll() is not None  # the child saw its pipe close and stopped


def test_a_dead_tracking_process_leaves_the_driver_running(tmp_path):
    tracker = TrackingProcess(f"sqlite:///{tmp_path / 'mlflow.db'}", "tracking-test", str(tmp_path / "artifacts"))
    tracker.start_run(1, "trial-0001", {}, {})
    assert tracker.flush(timeout=60) and tracker.run_id(1)
    os.kill(tracker._process.pid, signal.SIGKILL)
    tracker._process.wait(timeout=30)
    for n in range(2, 5):  # the pipe breaks on one of these or on the next question: nothing raises
        tracker.start_run(n, f"trial-{n:04d}", {}, {})
    assert tracker.flush(timeout=5) is False
    assert tracker.backlog == 0 and tracker.run_id(2) is None
    assert any("not written" in w for w in tracker.failed_writes)
    assert tracker.close(timeout=5) is False


_DRIVER = """
import os, signal, sys, time
from nas.tracking_process import TrackingProcess
tracker = TrackingProcess(sys.argv[1], "tracking-test", sys.argv[2])
tracker.start_run(1, "trial-0001", {}, {})
assert tracker.flush(timeout=60)
for n in range(2, 200):
    tracker.start_run(n, f"trial-{n:04d}", {}, {})
print(tracker._process.pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_tracking_process_stops_when_its_driver_is_killed(tmp_path):
    # A killed driver's queued writes must not go on in an orphan beside the next driver (which repairs the
    # runs from the storage): the child sees its pipe close and exits. The driver is a script without an
    # `if __name__ == "__main__"` guard: the child must not run it again (as multiprocessing's spawn would).
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    driver = subprocess.run([sys.executable, str(script), f"sqlite:///{tmp_path / 'mlflow.db'}",
                             str(tmp_path / "artifacts")], cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT},
                            capture_output=True, text=True, timeout=120)
    assert driver.returncode == -signal.SIGKILL, driver.stderr
    child = int(driver.stdout.split()[0])
    deadline = time.monotonic() + 20
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
