"""Review and reproduce, against a real `mlflow server` process read over HTTP (MlflowClient, REST)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
import yaml
from mlflow import MlflowClient

from nas.config import config_from_dict
from nas.data import load_dataset
from nas.search import run_search
from nas.testing import MlflowServer
from tests.nas.test_search import TINY_SPACE
from workers.ray_adapter import RayExecutor


def _config_dict(name: str, tracking: str, storage: str, tmp: Path, **search) -> dict:
    return {"name": name, "seed": 3, "data": {"dataset": "digits"}, "space": TINY_SPACE,
            "train": {"max_epochs": 10, "patience": 2},
            "search": {"n_trials": 6, "n_startup_trials": 3, "final_seeds": 2, "storage": storage, **search},
            "tracking": {"uri": tracking, "artifact_location": None}}


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, ray_cluster):
    """A finished search tracked by a real MLflow server (SQLite backend, served artifacts)."""
    tmp = tmp_path_factory.mktemp("review")
    server = MlflowServer(f"sqlite:///{tmp / 'server.db'}", tmp / "server-artifacts").start()
    data = _config_dict("review", server.url, f"sqlite:///{tmp / 'optuna.db'}", tmp)
    config_path = tmp / "review.yaml"
    config_path.write_text(yaml.safe_dump(data))
    executor = RayExecutor(parallelism=2)
    executor.start()
    try:
        outcome = run_search(config_from_dict(data), executor=executor)
    finally:
        executor.shutdown()
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name("review")
    yield {"server": server, "client": client, "experiment": experiment, "outcome": outcome, "tmp": tmp,
           "config_path": config_path, "config": config_from_dict(data)}
    server.stop()


def _children(reviewed, order_by=None):
    return reviewed["client"].search_runs([reviewed["experiment"].experiment_id],
                                          filter_string="tags.`geonas.kind` = 'trial'", order_by=order_by)


def test_parent_run_shows_front_plot_hypervolume_config_table_and_provenance(reviewed):
    client = reviewed["client"]
    parent = client.get_run(reviewed["outcome"].parent_run_id)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    # what a reviewer opens in the UI, served over HTTP
    assert {"front.png", "hypervolume.png", "front_table.md", "front.json", "config.yaml",
            "environment.json"} <= artifacts
    table = Path(client.download_artifacts(parent.info.run_id, "front_table.md", str(reviewed["tmp"]))).read_text()
    for point in reviewed["outcome"].front:
        assert f"| {point.trial_number} | {point.summary} |" in table  # each member, with test accuracy ± std
    assert table.count("(2 seeds)") == len(reviewed["outcome"].front)
    assert len(client.get_metric_history(parent.info.run_id, "hypervolume")) == 6
    # what a rerun needs: resolved config, packages, code version, data fingerprint, machine
    env = json.loads(Path(client.download_artifacts(parent.info.run_id, "environment.json",
                                                    str(reviewed["tmp"]))).read_text())
    assert env["packages"]["torch"] == torch.__version__ and env["packages"]["mlflow"] == mlflow.__version__
    assert env["git"]["commit"] == parent.data.tags["git_commit"] and "dirty" in env["git"]
    assert env["machine"]["cpu"] and env["data"]["fingerprint"] == parent.data.tags["data_fingerprint"]
    logged = yaml.safe_load(Path(client.download_artifacts(parent.info.run_id, "config.yaml",
                                                           str(reviewed["tmp"]))).read_text())
    assert config_from_dict(logged) == reviewed["config"]  # the resolved config, complete


def test_child_runs_sort_by_energy_terms_and_carry_their_profile(reviewed):
    for key in ("E_comp", "val_error", "F"):
        runs = [r for r in _children(reviewed, order_by=[f"metrics.{key} ASC"]) if key in r.data.metrics]
        values = [r.data.metrics[key] for r in runs]
        assert values and values == sorted(values)  # the server sorts the runs table by each term
    for run in _children(reviewed):
        names = {a.path for a in reviewed["client"].list_artifacts(run.info.run_id)}
        assert "complexity_profile.png" in names


def test_front_member_model_loads_and_reproduces_its_logged_test_accuracy(reviewed):
    members = [r for r in _children(reviewed) if r.data.tags.get("has_model") == "true"]
    # every front member has a model
    assert sorted(int(r.data.tags["trial_number"]) for r in members) == sorted(
        p.trial_number for p in reviewed["outcome"].front)
    mlflow.set_tracking_uri(reviewed["server"].url)
    data = load_dataset(reviewed["config"].data, reviewed["config"].seed)
    for run in members:
        model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
        model.eval()
        with torch.no_grad():
            predictions = model(torch.as_tensor(data.x_test)).argmax(dim=1).numpy()
        accuracy = float((predictions == data.y_test).mean())
        assert accuracy == pytest.approx(run.data.metrics["model_test_accuracy"], abs=1e-12)


def test_export_registers_the_best_member_within_the_budget(reviewed):
    front = reviewed["outcome"].front
    budget = front[len(front) // 2].macs  # a budget that cuts the front
    expected = min((p for p in front if p.macs <= budget), key=lambda p: (p.val_error, p.macs))
    proc = subprocess.run([sys.executable, "-m", "nas", "export", "--config", str(reviewed["config_path"]),
                           "--max-macs", str(budget), "--name", "review-best"], cwd=reviewed["tmp"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = reviewed["client"]
    versions = client.search_model_versions("name = 'review-best'")
    assert len(versions) == 1
    run = client.get_run(versions[0].run_id)
    assert int(run.data.tags["trial_number"]) == expected.trial_number  # lowest error within the budget
    assert run.data.metrics["E_comp"] <= budget
    too_small = subprocess.run([sys.executable, "-m", "nas", "export", "--config", str(reviewed["config_path"]),
                                "--max-macs", "0.5"], cwd=reviewed["tmp"], capture_output=True, text=True, timeout=300)
    assert too_small.returncode == 2 and "the cheapest has" in too_small.stderr
    no_budget = subprocess.run([sys.executable, "-m", "nas", "export", "--config", str(reviewed["config_path"])],
                               cwd=reviewed["tmp"], capture_output=True, text=True, timeout=300)
    assert no_budget.returncode == 2 and "--max-macs is required" in no_budget.stderr
    # a config with a search budget (search.max_macs) is its own export budget
    data = yaml.safe_load(reviewed["config_path"].read_text())
    data["search"]["max_macs"] = budget
    budgeted = reviewed["tmp"] / "review-budget.yaml"
    budgeted.write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "-m", "nas", "export", "--config", str(budgeted), "--name", "review-budget"],
                          cwd=reviewed["tmp"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    version = client.search_model_versions("name = 'review-budget'")[0]
    assert int(client.get_run(version.run_id).data.tags["trial_number"]) == expected.trial_number


def test_reproduce_retrains_a_trial_from_its_record_exactly(reviewed):
    trained = [r for r in _children(reviewed) if r.data.tags["state"] == "COMPLETE"
               and "duplicate_of" not in r.data.tags]
    proc = subprocess.run([sys.executable, "-m", "nas", "reproduce", trained[0].info.run_id, "--tracking-uri",
                           reviewed["server"].url, "--strict"], cwd=reviewed["tmp"], capture_output=True, text=True,
                          timeout=300)
    # same machine, deterministic torch: every per-epoch value and the final metrics match exactly
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "reproduced exactly" in proc.stdout and "0 differ" in proc.stdout


def test_same_config_and_seed_give_the_same_architectures_with_one_worker(tmp_path, ray_cluster):
    sequences = []
    for run in range(2):
        data = _config_dict("same", f"sqlite:///{tmp_path / f'm{run}.db'}", f"sqlite:///{tmp_path / f'o{run}.db'}",
                            tmp_path, n_trials=5, final_seeds=0)
        executor = RayExecutor(parallelism=1)
        executor.start()
        try:
            outcome = run_search(config_from_dict(data), executor=executor)
        finally:
            executor.shutdown()
        sequences.append([outcome.records[n].arch_id for n in sorted(outcome.records)])
    assert sequences[0] == sequences[1] and len(sequences[0]) == 5


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="no chromium: `apt-get install chromium` (as .ci/run does) enables the browser test")
def test_mlflow_ui_lists_the_search_runs_in_a_headless_browser(reviewed, tmp_path):
    # The experiment's "Training runs" page (MLflow 3 opens experiments on a GenAI overview by default).
    url = f"{reviewed['server'].url}/#/experiments/{reviewed['experiment'].experiment_id}/runs"
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=20000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the page rendered the search's parent run, and counts it with its 6 nested trial runs
    assert ">review<" in proc.stdout
    assert "<strong>7</strong> matching runs" in proc.stdout
