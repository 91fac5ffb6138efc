"""Real components for the fault tests: PostgreSQL databases, an `mlflow server` process, Ray processes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from nas.testing import MlflowServer


@pytest.fixture
def mlflow_server(pg_database, tmp_path) -> Iterator[MlflowServer]:
    """A running MLflow tracking server on PostgreSQL, for one test."""
    server = MlflowServer(pg_database("mlflow"), tmp_path / "mlflow-artifacts").start()
    yield server
    server.stop()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def trial_worker_pids() -> list[int]:
    """PIDs of Ray worker processes executing a trial right now (Ray titles them ``ray::_trial_task``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _cmdline(int(entry.name)).startswith("ray::_trial_task"):
            pids.append(int(entry.name))
    return pids


def parent_pid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = parent_pid(pid)
        if pid == ancestor:
            return True
    return False


def descendant_commands(ancestor: int) -> list[str]:
    """The command lines of the running processes that descend from `ancestor`."""
    return [_cmdline(int(entry.name)) for entry in Path("/proc").iterdir()
            if entry.name.isdigit() and descends_from(int(entry.name), ancestor)]


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.2) -> object:
    """Poll `condition` until it returns something truthy (returned), or fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")
