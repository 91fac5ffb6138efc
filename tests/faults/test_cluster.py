"""The cluster path: secrets from the environment never reach MLflow or the logs; `ray job submit` runs a search."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from nas.config import load_config
from nas.search import run_search
from nas.study import make_storage
from nas.testing import free_port
from tests.faults.conftest import wait_for
from tests.nas.test_search import TINY_SPACE

ROOT = Path(__file__).resolve().parents[2]
SECRET = "pa55-w0rd-that-must-not-leak"


@pytest.mark.parametrize("storage_format", ["postgresql", "journal+postgresql"])
def test_storage_password_from_the_environment_is_never_logged(storage_format, pg_database, ray_executor, tmp_path,
                                                               monkeypatch, caplog):
    # The server trusts local connections, so any password works: what matters is where it ends up.
    monkeypatch.setenv("GEONAS_TEST_PG_PASSWORD", SECRET)
    url = pg_database("secret").replace("postgresql://postgres@",
                                        f"{storage_format}://postgres:${{GEONAS_TEST_PG_PASSWORD}}@")
    config_path = tmp_path / "secret.yaml"
    config_path.write_text(yaml.safe_dump({
        "name": "secret", "data": {"dataset": "digits"}, "space": TINY_SPACE, "train": {"max_epochs": 3},
        "search": {"n_trials": 2, "final_seeds": 0, "storage": url},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_location": str(tmp_path / "art")}}))
    config = load_config(config_path)
    assert "${GEONAS_TEST_PG_PASSWORD}" in config.search.storage  # the config keeps the reference, not the value
    run_search(config, executor=ray_executor)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("secret").experiment_id])
    texts = []
    for run in runs:
        texts += [*run.data.params.values(), *run.data.tags.values()]
        for artifact in client.list_artifacts(run.info.run_id):
            if artifact.path.endswith((".yaml", ".json", ".md")):
                texts.append(Path(client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))).read_text())
    study = optuna.load_study(study_name="secret",
                              storage=make_storage(url.replace("${GEONAS_TEST_PG_PASSWORD}", SECRET)))
    texts += [str(v) for v in study.user_attrs.values()]
    texts.append(caplog.text)
    assert texts and not [t for t in texts if SECRET in t]  # nowhere: params, tags, artifacts, storage attrs, logs
    assert any("postgres:***@" in t for t in texts)  # the masked URL is what is recorded


@pytest.mark.skipif(shutil.which("ray", path=str(Path(sys.executable).parent)) is None, reason="ray CLI missing")
def test_ray_job_submit_runs_a_search_on_a_started_cluster(tmp_path):
    """As the README says: `ray start --head`, then `ray job submit --working-dir . -- nas search CONFIG`."""
    ray = str(Path(sys.executable).with_name("ray"))
    port, dashboard = free_port(), free_port()
    # Ray 2.60 clusters require a token (kept in ~/.ray/auth_token); the job CLI must be told to send it.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    # Every port of its own: the test session's cluster already holds Ray's default agent ports (52365...),
    # and a job agent that cannot bind leaves `ray job submit` answering "No available agent".
    agent_ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "ray-client-server-port")]
    start = subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--num-cpus", "2",
                            "--temp-dir", str(temp), "--disable-usage-stats", *agent_ports],
                           env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        work = tmp_path / "work"
        work.mkdir()
        (work / "job.yaml").write_text(yaml.safe_dump({
            "name": "job", "data": {"dataset": "digits"}, "space": TINY_SPACE, "train": {"max_epochs": 3},
            "search": {"n_trials": 2, "final_seeds": 0}}))
        address = f"http://127.0.0.1:{dashboard}"
        wait_for(lambda: subprocess.run([ray, "job", "list", "--address", address], env=env, capture_output=True,
                                        timeout=60).returncode == 0, timeout=120, interval=1)
        for _ in range(30):
            job = subprocess.run([ray, "job", "submit", "--address", address, "--working-dir", ".", "--",
                                  str(Path(sys.executable).with_name("nas")), "search", "job.yaml", "--no-progress"],
                                 cwd=work, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in job.stderr:  # the node's job agent starts a little after the head
                break
            time.sleep(2)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        # the job's driver ran the search on the cluster and printed the front
        assert "study job: 2 trials" in job.stdout and "| trial | architecture |" in job.stdout
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_cluster(temp: Path) -> None:
    """Kill the processes of the cluster started with --temp-dir `temp` only (`ray stop` would stop every
    Ray on the machine, the test session's own cluster too)."""
    import signal

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp) in cmdline and int(entry.name) != os.getpid():
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                pass
    time.sleep(1)
