"""Real components for tests and benchmarks: a free local port and an `mlflow server` process.

Shipped with the package (as ``optuna.testing`` is) so that the test suite and ``benchmarks/`` start the
same real tracking server the same way.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["free_port", "MlflowServer"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` process on 127.0.0.1 over `backend` (a PostgreSQL or SQLite URI); can stop and
    restart."""

    def __init__(self, backend: str, artifacts: Path, workers: int = 1, serve_artifacts: bool = True) -> None:
        self.backend = backend
        self.workers = workers
        self.serve_artifacts = serve_artifacts  # False: clients write artifacts straight to `artifacts`
        self.artifacts = artifacts
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> "MlflowServer":
        from nas.tracking import server_environment  # imports mlflow: only when a server is started

        mlflow = str(Path(sys.executable).with_name("mlflow"))
        artifacts = (["--artifacts-destination", str(self.artifacts)] if self.serve_artifacts else
                     ["--no-serve-artifacts", "--default-artifact-root", self.artifacts.resolve().as_uri()])
        self.process = subprocess.Popen(
            [mlflow, "server", "--backend-store-uri", self.backend, *artifacts,
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)],
            env=server_environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
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
