"""Faults 1-3: a worker killed mid-trial, a worker node removed mid-search, a trial that raises.

Real Ray (the session's cluster, plus worker nodes added here), real SQLite storage, real MLflow store.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

from nas.search import run_search
from nas.study import trial_attrs
from tests.faults.conftest import descends_from, trial_worker_pids, wait_for
from tests.nas.test_search import tiny_config
from workers.ray_adapter import RayExecutor

# Trials that train for a few seconds, so that a fault can land in the middle of one.
SLOW = {"max_epochs": 25, "patience": 25, "loss_tol": 0.0, "update_tol": 0.0}
EVERY_TRIAL_TRAINS = {"pruner": "none", "bound_check": False, "final_seeds": 0, "sampler": "random"}


def _finished_states(storage: str, name: str) -> list[TrialState]:
    return [t.state for t in optuna.load_study(study_name=name, storage=storage).trials]


def test_worker_killed_mid_trial_is_retried_and_completes(stores, ray_cluster, ray_executor):
    config = tiny_config(stores, name="killed-worker", train=SLOW,
                         search={**EVERY_TRIAL_TRAINS, "n_trials": 4, "storage": stores["storage"]})
    raylet = ray_cluster.head_node.all_processes["raylet"][0].process.pid
    killed: list[int] = []

    def ours() -> list[int]:
        # Trial workers of this session's cluster only: other Rays on the machine run trials too.
        return [p for p in trial_worker_pids() if descends_from(p, raylet)]

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            running = ours()
            if running:
                time.sleep(0.5)  # let it get into its epochs
                if running[0] in ours():
                    os.kill(running[0], signal.SIGKILL)
                    killed.append(running[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    outcome = run_search(config, executor=ray_executor)
    killer.join(timeout=5)
    assert killed, "a trial's worker process was killed during the search"
    # Ray reran the killed trial (same seed: same numbers); nothing failed, nothing is missing.
    assert _finished_states(stores["storage"], "killed-worker") == [TrialState.COMPLETE] * 4
    assert outcome.count("COMPLETE") == 4


def test_node_removed_mid_search_reschedules_its_trials(stores, ray_cluster):
    node = ray_cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
    raylet = node.all_processes["raylet"][0].process.pid
    executor = RayExecutor(parallelism=4, cpus_per_trial=1, max_retries=3)
    executor.start()  # joins the session's cluster: head (2 CPUs) + this node (2 CPUs)
    config = tiny_config(stores, name="lost-node", train=SLOW,
                         search={**EVERY_TRIAL_TRAINS, "n_trials": 6, "storage": stores["storage"]})
    removed: list[int] = []

    def remove_node_when_busy() -> None:
        # Wait until a trial runs in a worker process of the added node, then take the node away.
        running_there = wait_for(lambda: [p for p in trial_worker_pids() if descends_from(p, raylet)], timeout=120)
        time.sleep(0.5)
        ray_cluster.remove_node(node, allow_graceful=False)
        removed.extend(running_there)

    remover = threading.Thread(target=remove_node_when_busy, daemon=True)
    remover.start()
    try:
        outcome = run_search(config, executor=executor)
    finally:
        executor.shutdown()
        remover.join(timeout=30)
    assert removed, "trials were running on the removed node"
    # Its trials were rescheduled on the head node and completed: the full budget, nothing failed.
    assert _finished_states(stores["storage"], "lost-node") == [TrialState.COMPLETE] * 6
    assert outcome.count("COMPLETE") == 6


def test_trial_that_raises_is_recorded_failed_and_the_search_goes_on(stores, ray_executor):
    # Asking for CUDA on a machine without a GPU makes every trial raise inside its worker.
    config = tiny_config(stores, name="raising", train={"device": "cuda"},
                         search={**EVERY_TRIAL_TRAINS, "n_trials": 3, "storage": stores["storage"]})
    import torch

    if torch.cuda.is_available():
        import pytest

        pytest.skip("this machine has a GPU: the trial would not raise")
    outcome = run_search(config, executor=ray_executor)
    study = optuna.load_study(study_name="raising", storage=stores["storage"])
    # every trial ran and failed, each with the error as its reason; the search went through its budget
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 3
    for trial in study.trials:
        assert "ValueError: train.device is 'cuda'" in trial_attrs(trial)["reason"]
    assert outcome.count("FAIL") == 3
    client = MlflowClient(stores["tracking"])
    runs = client.search_runs([client.get_experiment_by_name("raising").experiment_id],
                              filter_string="tags.`geonas.kind` = 'trial'")
    assert len(runs) == 3
    for run in runs:
        # the MLflow run ended FAILED, with the reason as a tag
        assert run.info.status == "FAILED"
        assert "ValueError: train.device is 'cuda'" in run.data.tags["reason"]
