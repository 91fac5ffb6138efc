"""The `nas` command as a user runs it: search, front, ui (a real `mlflow ui` server process)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.nas.test_search import TINY_SPACE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> dict[str, object]:
    """One `nas search` run through the CLI (its own local Ray), in a fresh folder."""
    folder = tmp_path_factory.mktemp("cli")
    config = {
        "name": "cli", "seed": 1, "data": {"dataset": "digits"}, "space": TINY_SPACE,
        "train": {"max_epochs": 6, "patience": 2},
        "search": {"n_trials": 4, "n_startup_trials": 2, "final_seeds": 1},
        "ray": {"parallelism": 2},
    }
    path = folder / "cli.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, "-m", "nas", "search", str(path), "--set", "search.n_trials=5",
                           "--no-progress"], cwd=folder, capture_output=True, text=True, timeout=600)
    return {"folder": folder, "proc": proc}


def test_search_prints_the_front_table_and_uses_default_stores(searched):
    proc = searched["proc"]
    folder: Path = searched["folder"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the --set override took: 5 trials, not the file's 4
    assert "study cli: 5 trials" in proc.stdout
    assert "| trial | architecture | MACs |" in proc.stdout
    # the embedded defaults: SQLite stores and artifacts under ./runs
    assert (folder / "runs" / "optuna.db").is_file() and (folder / "runs" / "mlflow.db").is_file()
    assert (folder / "runs" / "artifacts").is_dir()


def test_front_prints_the_stored_front_as_json(searched):
    folder: Path = searched["folder"]
    proc = subprocess.run([sys.executable, "-m", "nas", "front", "--json"], cwd=folder, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["study"] == "cli" and data["front"]
    macs = [m["macs"] for m in data["front"]]
    errors = [m["val_error"] for m in data["front"]]
    # a front: cost up, error strictly down
    assert macs == sorted(macs) and errors == sorted(errors, reverse=True) and len(set(errors)) == len(errors)
    assert all("test_accuracy_mean" in m for m in data["front"])  # final report ran (1 seed)
    table = subprocess.run([sys.executable, "-m", "nas", "front"], cwd=folder, capture_output=True, text=True,
                           timeout=120)
    assert table.returncode == 0 and "on the front" in table.stdout


def test_front_of_an_unknown_study_is_a_clear_error(searched):
    folder: Path = searched["folder"]
    proc = subprocess.run([sys.executable, "-m", "nas", "front", "--study", "nope"], cwd=folder, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "no study named 'nope'" in proc.stderr and "cli" in proc.stderr  # names the studies that exist


def test_ui_serves_the_search_on_localhost(searched):
    folder: Path = searched["folder"]
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "nas", "ui", "--port", str(port)], cwd=folder,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow UI did not answer within 90 s")
        client = MlflowClient(f"http://127.0.0.1:{port}")
        experiment = client.get_experiment_by_name("cli")
        runs = client.search_runs([experiment.experiment_id])
        # the parent and one child per trial, read over HTTP from the server `nas ui` started
        assert len(runs) == 6
        # bound to the loopback interface only
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        local_addresses = {line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines() if line.strip()}
        if local_addresses:  # (ss may be missing on some machines)
            assert local_addresses == {"127.0.0.1"}
        # without MLflow 3's job runner (nas.tracking.server_environment): its web worker only
        from tests.faults.conftest import descendant_commands

        commands = descendant_commands(server.pid)
        assert any("uvicorn" in c for c in commands) and not any("mlflow.server.jobs" in c for c in commands)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
