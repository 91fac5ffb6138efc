"""Real components for the fault tests: PostgreSQL databases, an `mlflow server` process, Ray processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` process on 127.0.0.1 over a PostgreSQL backend store; can stop and restart."""

    def __init__(self, backend: str, artifacts: Path, workers: int = 1, serve_artifacts: bool = True) -> None:
        self.backend = backend
        self.workers = workers
        self.serve_artifacts = serve_artifacts  # False: clients write artifacts straight to `artifacts`
        self.artifacts = artifacts
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "MlflowServer":
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        artifacts = (["--artifacts-destination", str(self.artifacts)] if self.serve_artifacts else
                     ["--no-serve-artifacts", "--default-artifact-root", self.artifacts.resolve().as_uri()])
        self.process = subprocess.Popen(
            [mlflow, "server", "--backend-store-uri", self.backend, *artifacts,
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self.process = None


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


def wait_for(condition: Callable[[], object], timeout: float, interval: float = 0.2) -> object:
    """Poll `condition` until it returns something truthy (returned), or fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")
