"""The final test's task (a front member retrained, tested once, then refitted on train + validation).

`_trial_task` is run in this process (it is a plain generator; Ray only ships it to a worker), on real data
and the real trainer. The refit failure is injected by replacing the trainer's `refit` in the adapter's
namespace with one that raises the trainer's own divergence error: a refit can diverge where the first run did
not (more data, the same schedule), which no small real case does on demand.
"""

from __future__ import annotations

import pytest

from nas.config import DataConfig
from nas.data import load_dataset
from nas.search import final_entry, front_table, model_seed_index
from nas.energy import FrontPoint
from workers import TrainConfig, TrainingDiverged
from workers import ray_adapter
from workers.ray_adapter import TaskSpec

ARCH = ('{"space": "cnn", "channels": [8], "kernel_sizes": [3], "activation": "relu", "batch_norm": true, '
        '"downsample": "stride", "downsample_every": 1, "head": "global_pool"}')
TRAIN = TrainConfig(max_epochs=3, device="cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig("digits"), seed=0)


def _result(spec: TaskSpec, data) -> dict:
    events = list(ray_adapter._trial_task(spec, data, 1))
    assert events[-1]["kind"] == "result" and all(e["kind"] == "report" for e in events[:-1])
    return events[-1]["result"]


def test_the_final_task_reports_both_protocols_and_returns_the_refitted_weights(digits):
    payload = _result(TaskSpec(ARCH, TRAIN, 5, evaluate_test=True, return_state=True, diagnostics=False,
                               refit=True), digits)
    assert 0.0 <= payload["test_accuracy"] <= 1.0 and 0.0 <= payload["test_accuracy_train_split"] <= 1.0
    assert payload["refit_epochs"] == len(payload["history"]) and "refit_error" not in payload
    assert payload["state_dict"]


def test_a_failed_refit_keeps_the_split_trained_test_and_names_the_refit(digits, monkeypatch):
    def diverging_refit(*args, **kwargs):
        raise TrainingDiverged("diverged: training loss nan at epoch 2")

    monkeypatch.setattr(ray_adapter, "refit", diverging_refit)
    spec = TaskSpec(ARCH, TRAIN, 5, evaluate_test=True, return_state=True, diagnostics=False, refit=True)
    payload = _result(spec, digits)
    # the first run's test is kept under its own name; nothing is reported as the refit's test
    assert 0.0 <= payload["test_accuracy_train_split"] <= 1.0 and "test_loss_train_split" in payload
    assert "test_accuracy" not in payload and "test_loss" not in payload
    assert payload["refit_error"] == "final refit failed: diverged: training loss nan at epoch 2"
    assert "state_dict" not in payload  # no weights: the split-trained network is not the member's model
    # the member's entry: the seed counts among the split-trained results, and its failure says "refit"
    ok = {"test_accuracy": 0.9, "test_accuracy_train_split": 0.88}
    entry = final_entry(True, {0: ok, 1: payload}, ["worker died: the process running the trial exited"])
    assert entry["refit"] is True and entry["seeds"] == 1 and entry["test_accuracy"] == [0.9]
    assert entry["test_accuracy_mean"] == 0.9 and entry["test_accuracy_std"] == 0.0
    assert entry["test_accuracy_train_split"] == [0.88, payload["test_accuracy_train_split"]]
    assert entry["failures"] == ["worker died: the process running the trial exited", payload["refit_error"]]


def test_the_logged_model_is_the_first_seed_that_brought_weights_back(digits, monkeypatch):
    # Each seed's final task returns its weights; when the first seed's refit fails (no weights), the member's
    # model is the next seed's, not none.
    spec = TaskSpec(ARCH, TRAIN, 5, evaluate_test=True, return_state=True, diagnostics=False, refit=True)
    good = _result(spec, digits)
    monkeypatch.setattr(ray_adapter, "refit", lambda *a, **k: (_ for _ in ()).throw(TrainingDiverged("diverged: x")))
    failed = _result(spec, digits)
    assert "state_dict" in good and "state_dict" not in failed
    assert model_seed_index({0: failed, 1: good, 2: good}) == 1
    assert model_seed_index({2: good, 0: good}) == 0
    assert model_seed_index({0: failed}) is None and model_seed_index({}) is None


def test_a_redo_that_fails_on_every_seed_keeps_the_entry_it_would_replace():
    previous = {"seeds": 2, "refit": False, "test_accuracy": [0.9, 0.92], "test_accuracy_mean": 0.91,
                "test_accuracy_std": 0.01}
    failed = {"test_accuracy_train_split": 0.9, "refit_error": "final refit failed: diverged: loss nan"}
    kept = final_entry(True, {0: failed}, ["ValueError: no"], previous)
    # still the old protocol's entry (so the next run tries the redo again), with why the redo failed
    assert {k: kept[k] for k in previous} == previous
    assert kept["redo_failures"] == ["ValueError: no", "final refit failed: diverged: loss nan"]
    # with no earlier result there is nothing to keep: the entry records the failures
    empty = final_entry(True, {0: failed}, [])
    assert empty["seeds"] == 0 and "test_accuracy_mean" not in empty and empty["failures"] == [failed["refit_error"]]
    # one seed that succeeds is a result under the new protocol: it replaces the old entry
    redone = final_entry(True, {0: {"test_accuracy": 0.95, "test_accuracy_train_split": 0.93}}, [], previous)
    assert redone["refit"] is True and redone["test_accuracy"] == [0.95] and "redo_failures" not in redone


def test_the_front_table_marks_entries_kept_without_the_refit():
    front = [FrontPoint(trial_number=n, macs=1000.0 * (n + 1), val_error=0.1 / (n + 1), params=10, arch_id=str(n),
                        summary=f"net {n}") for n in (0, 1)]
    final = {"0": {"seeds": 1, "refit": True, "test_accuracy_mean": 0.9, "test_accuracy_std": 0.0},
             "1": {"seeds": 1, "refit": False, "test_accuracy_mean": 0.95, "test_accuracy_std": 0.0}}
    rows = front_table(front, final).splitlines()
    assert rows[2].endswith("90.00 ± 0.00% (1 seeds) |") and rows[3].endswith("95.00 ± 0.00% (1 seeds) (no refit) |")
    assert "search.final_refit" in rows[-1]
    # all under one protocol: no marks
    same = {k: {**v, "refit": True} for k, v in final.items()}
    assert "(no refit)" not in front_table(front, same)


def test_a_final_task_trains_one_run_per_seed():
    # several training runs in one task are for search trials: the final test's weights and test are one run's
    with pytest.raises(ValueError, match="repeat_seeds"):
        TaskSpec(ARCH, TRAIN, 5, evaluate_test=True, repeat_seeds=(6,))
    with pytest.raises(ValueError, match="repeat_seeds"):
        TaskSpec(ARCH, TRAIN, 5, return_state=True, repeat_seeds=(6,))
    assert TaskSpec(ARCH, TRAIN, 5, repeat_seeds=(6,)).repeat_seeds == (6,)
