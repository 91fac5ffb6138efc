"""A tiny search through real Ray, real SQLite Optuna storage and a real MLflow store, read back."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from nas.config import config_from_dict
from nas.search import run_search
from nas.study import trial_attrs
from nas.tracking import TAG_KIND, TAG_REASON, TAG_STATE, TAG_STUDY, TAG_TRIAL

TINY_SPACE = {"name": "cnn", "depth": [0, 2], "channels": [4, 8], "kernel_sizes": [3], "activations": ["relu", "tanh"],
              "batch_norm": [True], "downsample": ["stride"], "downsample_every": [1], "head": ["global_pool", "flatten"]}


def tiny_config(stores: dict[str, str], **sections: Any):
    data = {
        "name": "tiny", "seed": 0, "data": {"dataset": "digits"}, "space": TINY_SPACE,
        "train": {"max_epochs": 8, "patience": 2},
        "search": {"n_trials": 6, "n_startup_trials": 3, "final_seeds": 2, "storage": stores["storage"],
                   "pruner_warmup_epochs": 2},
        "tracking": {"uri": stores["tracking"], "artifact_location": stores["artifacts"]},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) and key != "space" else value
    return config_from_dict(data)


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get(TAG_KIND) == "search"]
    children = [r for r in runs if r.data.tags.get(TAG_KIND) == "trial"]
    return client, parents, children


def _artifacts(client: MlflowClient, run_id: str) -> set[str]:
    return {a.path for a in client.list_artifacts(run_id)}


def test_tiny_search_records_study_runs_metrics_and_artifacts(stores, ray_executor):
    config = tiny_config(stores)
    outcome = run_search(config, executor=ray_executor)

    # The study: exactly the budget of finished trials, each with its architecture and curve stored.
    study = optuna.load_study(study_name="tiny", storage=stores["storage"])
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]
    assert len(study.trials) == len(finished) == 6
    complete = [t for t in finished if t.state == TrialState.COMPLETE]
    assert complete, "at least one trial completes on digits"
    for t in complete:
        a = trial_attrs(t)
        # F is the scalar objective, E_CNN + λ·E_comp/scale
        assert t.value == pytest.approx(a["E_CNN"] + 0.1 * a["E_comp"] / 1e6)
        assert a["arch_id"] and a["E_comp"] >= 0 and 0 <= a["val_error"] <= 1
        # one training run per trial (search.seeds_per_trial: 1): no per-run list, no run count per epoch
        assert "runs" not in a and all("seeds_training" not in h for h in a["history"])
        assert "val_error_std" not in a["final_extra"] and "epochs_trained" not in a["final_extra"]

    # The front: non-dominated completed trials, with test results for every member.
    assert outcome.front and set(str(p.trial_number) for p in outcome.front) == set(outcome.final_test)
    for entry in outcome.final_test.values():
        assert entry["seeds"] == 2 and 0 < entry["test_accuracy_mean"] <= 1
        # the default final test trains each seed's network again on train + validation (search.final_refit)
        # and keeps the same runs' split-trained test accuracies beside it
        assert entry["refit"] is True and len(entry["test_accuracy_train_split"]) == 2
        assert 0 < entry["test_accuracy_train_split_mean"] <= 1

    # MLflow: one parent, one child per trial, nested under the parent.
    client, parents, children = _runs(stores["tracking"], "tiny")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == outcome.parent_run_id and parent.info.status == "FINISHED"
    assert parent.data.tags[TAG_STUDY] == "tiny"
    assert len(children) == 6
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(int(c.data.tags["trial_number"]) for c in children) == list(range(6))
    # parent: the config as params and artifact; hypervolume and best F with step = trial number
    assert parent.data.params["search.n_trials"] == "6" and parent.data.params["space.name"] == "cnn"
    hv = client.get_metric_history(parent.info.run_id, "hypervolume")
    assert sorted(m.step for m in hv) == list(range(6))
    assert {"config.yaml", "front.json", "front.png", "front_table.md", "hypervolume.png",
            "environment.json"} <= _artifacts(client, parent.info.run_id)
    front_file = Path(client.download_artifacts(parent.info.run_id, "front.json"))
    front = json.loads(front_file.read_text())
    assert [m["trial_number"] for m in front["front"]] == [p.trial_number for p in outcome.front]
    assert all("test_accuracy_mean" in m and m["test_refit"] for m in front["front"])
    member_run = next(c for c in _runs(stores["tracking"], "tiny")[2]
                      if int(c.data.tags["trial_number"]) == outcome.front[0].trial_number)
    assert {"test_accuracy_mean", "test_accuracy_std", "test_accuracy_train_split_mean"} <= set(member_run.data.metrics)

    # `nas sync` right after the search finds every run as it would rebuild it: it writes nothing
    assert _sync(stores, "tiny") == ([], [])
    for child in children:
        number = int(child.data.tags["trial_number"])
        state = study.trials[number].state.name
        assert child.data.tags[TAG_STATE] == state  # the run says how the trial ended
        assert child.data.tags["arch_id"] == trial_attrs(study.trials[number])["arch_id"]
        assert "arch.activation" in child.data.params or "arch.depth" in child.data.params
        assert {"architecture.json", "complexity_profile.json", "complexity_profile.png"} <= _artifacts(
            client, child.info.run_id)
        if state == "COMPLETE":
            assert child.info.status == "FINISHED"
            assert {"E_comp", "E_CNN", "F", "val_error", "epochs", "fixed_point_reached"} <= set(child.data.metrics)
            epochs = int(child.data.metrics["epochs"])
            if "duplicate_of" not in child.data.tags:
                # one val_loss point per epoch trained
                assert len(client.get_metric_history(child.info.run_id, "epoch/val_loss")) == epochs
                # the geometry of the curve, at initialization and trained, as metrics and a plot
                assert {"diag.init.jacobian_msv", "diag.trained.jacobian_msv", "diag.init.balance_entropy",
                        "diag.trained.traj_length_head"} <= set(child.data.metrics)
                assert "diagnostics.png" in _artifacts(client, child.info.run_id)
        else:
            assert child.info.status in ("KILLED", "FAILED") and child.data.tags[TAG_REASON]


def test_infeasible_and_diverging_trials_are_recorded_and_the_search_goes_on(stores, ray_executor):
    # depth 4 with max-pooling after every layer cannot be built for 8x8 inputs; depth 3 trains with an
    # absurd step and diverges. Neither stops the search.
    space = {"name": "cnn", "depth": [3, 4], "channels": [4], "kernel_sizes": [3], "activations": ["identity"],
             "batch_norm": [False], "downsample": ["pool"], "downsample_every": [1], "head": ["flatten"]}
    config = tiny_config(stores, name="faulty", space=space, train={"optimizer": "sgd", "lr": 1.0e6, "max_epochs": 5},
                         search={"n_trials": 5, "n_startup_trials": 5, "sampler": "random", "final_seeds": 0,
                                 "storage": stores["storage"]})
    outcome = run_search(config, executor=ray_executor)
    study = optuna.load_study(study_name="faulty", storage=stores["storage"])
    assert len(study.trials) == 5
    # each says why: a diverged training failed; an architecture that cannot be built was never trained and
    # ends pruned (a sampler learns from pruned trials, not from failed ones)
    expected = {3: (TrialState.FAIL, "diverged", "FAILED"), 4: (TrialState.PRUNED, "infeasible", "KILLED")}
    by_number = {}
    for t in study.trials:
        state, reason, status = expected[len(trial_attrs(t)["arch"]["channels"])]
        assert t.state == state and trial_attrs(t)["reason"].startswith(reason + ":")
        by_number[t.number] = (reason, status)
    assert outcome.count("FAIL") + outcome.count("PRUNED") == 5 and outcome.front == []
    _, parents, children = _runs(stores["tracking"], "faulty")
    assert len(parents) == 1 and len(children) == 5
    for child in children:
        reason, status = by_number[int(child.data.tags[TAG_TRIAL])]
        assert child.info.status == status and child.data.tags[TAG_REASON].startswith(reason)


def test_tpe_learns_that_an_infeasible_region_is_empty(stores, ray_cluster):
    # Depth is the only choice: depths 1-3 (max-pool after every layer) can be built for 8x8 inputs, depth 4
    # cannot. An infeasible proposal ends PRUNED, which TPE counts as a poor observation (it skips FAIL
    # trials: it then went on proposing depth 4). One trial in flight: the same search on every run.
    from workers.ray_adapter import RayExecutor

    space = {"name": "cnn", "depth": [1, 4], "channels": [4], "kernel_sizes": [3], "activations": ["relu"],
             "batch_norm": [True], "downsample": ["pool"], "downsample_every": [1], "head": ["flatten"]}
    config = tiny_config(stores, name="infeasible-tpe", space=space, train={"max_epochs": 2},
                         search={"n_trials": 24, "n_startup_trials": 4, "sampler": "tpe", "pruner": "none",
                                 "bound_check": False, "final_seeds": 0, "storage": stores["storage"]})
    executor = RayExecutor(parallelism=1, cpus_per_trial=1)
    executor.start()
    try:
        run_search(config, executor=executor)
    finally:
        executor.shutdown()
    trials = optuna.load_study(study_name="infeasible-tpe", storage=stores["storage"]).trials
    infeasible = [t.number for t in trials if trial_attrs(t).get("reason", "").startswith("infeasible")]
    assert len(trials) == 24 and all(t.state == TrialState.PRUNED for t in trials if t.number in infeasible)
    # measured: 2 of the 20 trials after the start-up ones (7 and 9); 17 of 20 when they ended FAIL
    assert len([n for n in infeasible if n >= 4]) <= 4, infeasible


def test_a_macs_budget_trains_only_what_fits_and_records_the_rest(stores, ray_executor):
    # search.max_macs = 1,500 on 8x8 digits: depth 0 (640 MACs), the nets of 4 channels (one layer, or two
    # with either head) and one layer of 8 with global pooling fit (616-1,312 MACs); the others (1,808-3,776)
    # are over it, ended PRUNED without training, say why and do not count toward n_trials (they cost nothing).
    config = tiny_config(stores, name="budget", search={"n_trials": 10, "n_startup_trials": 10, "sampler": "random",
                                                        "max_macs": 1500, "final_seeds": 1,
                                                        "storage": stores["storage"]})
    outcome = run_search(config, executor=ray_executor)
    trials = optuna.load_study(study_name="budget", storage=stores["storage"]).trials
    over = [t for t in trials if trial_attrs(t)["E_comp"] > 1500]
    under = [t for t in trials if trial_attrs(t)["E_comp"] <= 1500]
    assert len(under) == 10 and over  # random search with seed 0 proposes both kinds
    assert sorted(outcome.records) == [t.number for t in trials]
    assert all(outcome.records[t.number].over_budget for t in over)
    for t in over:
        a = trial_attrs(t)
        assert t.state == TrialState.PRUNED and a["epochs"] == 0 and not a["history"]
        assert a["reason"] == f"budget: E_comp = {a['E_comp']:,} MACs > search.max_macs = 1,500"
    # what fits trains as before (none of it is pruned by the budget)
    assert all(not trial_attrs(t).get("reason", "").startswith("budget") for t in under)
    assert any(t.state == TrialState.COMPLETE for t in under)
    assert outcome.front and all(p.macs <= 1500 for p in outcome.front)
    assert outcome.count("PRUNED") >= len(over)
    _, parents, children = _runs(stores["tracking"], "budget")
    assert parents[0].data.params["search.max_macs"] == "1500.0"  # the budget is one of the search's params
    budget_runs = [c for c in children if c.data.tags.get(TAG_REASON, "").startswith("budget:")]
    assert len(budget_runs) == len(over) and all(c.info.status == "KILLED" for c in budget_runs)
    assert all("epoch/val_loss" not in c.data.metrics for c in budget_runs)
    # the runs the search wrote are what `nas sync` rebuilds from the storage: a sync right after writes nothing
    assert _sync(stores, "budget") == ([], [])


def test_a_budget_below_every_network_stops_the_search_after_n_trials_proposals(stores, ray_executor, caplog):
    # The cheapest network of the tiny space has 616 MACs: every proposal is over a budget of 100. The search
    # does not loop for ever on free proposals: n_trials of them in a row end it, with a warning; a rerun asks
    # for no more, and a rerun without the budget trains its n_trials (the skipped proposals never counted).
    config = tiny_config(stores, name="no-budget-fits",
                         search={"n_trials": 4, "n_startup_trials": 4, "sampler": "random", "max_macs": 100,
                                 "final_seeds": 0, "storage": stores["storage"]})
    with caplog.at_level("WARNING", logger="nas.search"):
        outcome = run_search(config, executor=ray_executor)
    assert len(outcome.records) == 4 and all(r.over_budget and r.state == "PRUNED" for r in outcome.records.values())
    assert outcome.front == [] and "4 structures in a row over search.max_macs = 100" in caplog.text
    again = run_search(config, executor=ray_executor)
    assert len(again.records) == 4
    trained = run_search(replace(config, search=replace(config.search, max_macs=None)), executor=ray_executor)
    assert len(trained.records) == 8 and trained.count("COMPLETE") >= 1
    assert all(not r.over_budget for n, r in trained.records.items() if n >= 4)


def test_pareto_mode_tells_two_objectives_and_never_prunes(stores, ray_executor):
    # (and search.diagnostics=false: no geometry diagnostics are computed or logged)
    config = tiny_config(stores, name="pareto", search={"mode": "pareto", "sampler": "nsga2", "n_trials": 4,
                                                        "n_startup_trials": 4, "final_seeds": 0, "diagnostics": False,
                                                        "storage": stores["storage"]})
    outcome = run_search(config, executor=ray_executor)
    study = optuna.load_study(study_name="pareto", storage=stores["storage"])
    assert len(study.directions) == 2
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    # neither pruner nor bound check in pareto mode: a trial not completed failed, or could not be built
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.FAIL or trial_attrs(t)["reason"].startswith("infeasible") for t in others)
    for t in complete:
        # the two objectives are (E_comp, validation error)
        assert t.values == [trial_attrs(t)["E_comp"], trial_attrs(t)["val_error"]]
    # the service's front equals Optuna's own Pareto set on the same trials (up to duplicate points)
    optuna_front = {tuple(t.values) for t in study.best_trials}
    assert {(p.macs, p.val_error) for p in outcome.front} == optuna_front
    _, _, children = _runs(stores["tracking"], "pareto")
    assert children and not any(k.startswith("diag.") for c in children for k in c.data.metrics)
    assert all(r.diagnose_time == 0.0 for r in outcome.records.values())


def test_rerunning_a_finished_search_resumes_the_study_without_new_trials(stores, ray_executor, monkeypatch):
    config = tiny_config(stores, name="again", search={"n_trials": 3, "n_startup_trials": 3, "final_seeds": 1,
                                                       "storage": stores["storage"]})
    first = run_search(config, executor=ray_executor)
    submitted: list[Any] = []
    submit = ray_executor.submit
    monkeypatch.setattr(ray_executor, "submit", lambda key, *a, **kw: (submitted.append(key), submit(key, *a, **kw))[1])
    second = run_search(config, executor=ray_executor)
    assert submitted == []  # neither a trial nor a final-test task: the same protocol's entries are kept
    study = optuna.load_study(study_name="again", storage=stores["storage"])
    assert len(study.trials) == 3  # the budget is of the study, not of one driver
    assert second.parent_run_id == first.parent_run_id  # the same parent run continues
    assert second.final_test == first.final_test  # test results are not recomputed (the test split is read once)
    _, parents, children = _runs(stores["tracking"], "again")
    assert len(parents) == 1 and len(children) == 3
    # a rerun under the other final-test protocol redoes the entries made under the first, and only those
    split_only = run_search(tiny_config(stores, name="again", search={
        "n_trials": 3, "n_startup_trials": 3, "final_seeds": 1, "final_refit": False, "storage": stores["storage"]}),
        executor=ray_executor)
    assert set(split_only.final_test) == set(first.final_test)
    assert sorted(k[1] for k in submitted) == sorted(int(n) for n in first.final_test)  # one seed per member
    assert all(e["refit"] is False and "test_accuracy_train_split" not in e for e in split_only.final_test.values())
    assert all(e["refit"] is True for e in first.final_test.values())


def test_a_resumed_search_whose_run_lookup_is_slow_gives_each_new_trial_one_run(stores, ray_executor, monkeypatch):
    # On resume the tracker first looks up the runs of earlier drivers and repairs them. When that is slow
    # (a loaded tracking server) this driver's first trials finish before it: the repair must leave them to
    # the tracker, or they get two runs each.
    import time as time_module

    import nas.search as search_module

    first = tiny_config(stores, name="slowopen", search={"n_trials": 2, "sampler": "random", "final_seeds": 0,
                                                         "storage": stores["storage"]})
    run_search(first, executor=ray_executor)
    opening = search_module._open_search_runs

    def slow_open(*args: Any, **kwargs: Any) -> None:
        time_module.sleep(8)  # the resumed driver's trials (a few epochs each) finish meanwhile
        opening(*args, **kwargs)

    monkeypatch.setattr(search_module, "_open_search_runs", slow_open)
    # The patch lives in this process: the tracker's writers run on its threads here (a tracking process
    # would run the same Tracker code with the original function).
    resumed = tiny_config(stores, name="slowopen", search={"n_trials": 5, "sampler": "random", "final_seeds": 0,
                                                           "storage": stores["storage"]}, tracking={"process": False})
    outcome = run_search(resumed, executor=ray_executor)
    assert outcome.count("COMPLETE") + outcome.count("PRUNED") + outcome.count("FAIL") >= 3
    _, parents, children = _runs(stores["tracking"], "slowopen")
    numbers = sorted(int(r.data.tags["trial_number"]) for r in children)
    assert len(parents) == 1 and numbers == [0, 1, 2, 3, 4]


def test_the_median_pruner_never_stops_a_trial_cheaper_than_every_completed_one(stores, ray_executor):
    # Four batch-norm ReLU nets learn fast (low F per epoch); then the linear model (depth 0, the cheapest net of
    # the space) learns slowly, its F above their median, and sigmoid nets without batch norm sit near chance.
    space = {"name": "cnn", "depth": [0, 2], "channels": [16, 32], "kernel_sizes": [3], "activations": ["relu", "sigmoid"],
             "batch_norm": [True, False], "downsample": ["none"], "downsample_every": [1], "head": ["flatten"]}
    config = tiny_config(stores, name="median-cheap", space=space, train={"max_epochs": 8, "patience": 8},
                         search={"n_trials": 7, "n_startup_trials": 3, "sampler": "random", "pruner": "median",
                                 "pruner_warmup_epochs": 1, "bound_check": False, "final_seeds": 0,
                                 "storage": stores["storage"]})
    study = optuna.create_study(study_name="median-cheap", storage=stores["storage"], direction="minimize")
    good = {"depth": 2, "channels_0": 16, "channels_1": 16, "kernel_size": 3, "activation": "relu", "batch_norm": True,
            "downsample": "none", "head": "flatten"}
    # four first, so that with two trials in flight at least three are complete when the linear model starts
    for params in [good, {**good, "depth": 1}, {**good, "channels_0": 32, "channels_1": 32},
                   {**good, "depth": 1, "channels_0": 32}, {"depth": 0}]:
        study.enqueue_trial(params)
    for _ in range(2):
        study.enqueue_trial({**good, "activation": "sigmoid", "batch_norm": False})
    run_search(config, executor=ray_executor)

    trials = optuna.load_study(study_name="median-cheap", storage=stores["storage"]).trials
    linear = next(t for t in trials if trial_attrs(t)["arch"]["channels"] == [])
    # it ran to the end although the median rule alone would have stopped it: its F was above the median of
    # the ReLU nets' F at the same epoch
    assert linear.state == TrialState.COMPLETE
    relu = [t for t in trials[:4] if t.state == TrialState.COMPLETE]
    assert len(relu) >= 3
    above = [step for step, f in linear.intermediate_values.items()
             if all(step in t.intermediate_values for t in relu)
             and f > statistics.median(t.intermediate_values[step] for t in relu)]
    assert above, "the linear model's F was above the median: the guard, not its F, kept it"
    # the rule still works where it should: sigmoid nets near chance cost more than the nets already complete
    assert any(t.state == TrialState.PRUNED and trial_attrs(t)["reason"].startswith("pruner: ") for t in trials[5:])


def test_the_dominance_pruner_stops_a_trial_only_when_a_cheaper_completed_one_stays_ahead_of_it(stores, ray_executor):
    # Three cheap ReLU nets first, then wide sigmoid nets without batch norm, which sit near chance for their
    # first epochs: once three trials are complete, each report of a running trial, projected with the best
    # improvement the completed trials made after as many epochs, is compared with the completed trials that
    # cost no more MACs.
    space = {"name": "cnn", "depth": [1, 2], "channels": [4, 32], "kernel_sizes": [3], "activations": ["relu", "sigmoid"],
             "batch_norm": [False], "downsample": ["none"], "downsample_every": [1], "head": ["flatten"]}
    config = tiny_config(stores, name="dominance", space=space, train={"max_epochs": 10, "patience": 3},
                         search={"n_trials": 8, "n_startup_trials": 3, "sampler": "random", "pruner": "dominance",
                                 "pruner_warmup_epochs": 1, "bound_check": False, "final_seeds": 0,
                                 "storage": stores["storage"]})
    study = optuna.create_study(study_name="dominance", storage=stores["storage"], direction="minimize")
    cheap = {"depth": 1, "channels_0": 4, "kernel_size": 3, "activation": "relu", "batch_norm": False,
             "downsample": "none", "head": "flatten"}
    wide = {"depth": 2, "channels_0": 32, "channels_1": 32, "kernel_size": 3, "activation": "sigmoid",
            "batch_norm": False, "downsample": "none", "head": "flatten"}
    for params in [cheap, {**cheap, "channels_0": 32}, {**cheap, "depth": 2, "channels_1": 4}] + [wide] * 5:
        study.enqueue_trial(params)
    outcome = run_search(config, executor=ray_executor)

    trials = {t.number: t for t in optuna.load_study(study_name="dominance", storage=stores["storage"]).trials}
    assert len(trials) == 8 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials.values())
    pruned = [t for t in trials.values() if t.state == TrialState.PRUNED]
    assert pruned, "a wide sigmoid net near chance is dominated by a cheaper ReLU net"
    for t in pruned:
        a = trial_attrs(t)
        assert a["reason"].startswith("dominance: ")
        epochs = a["epochs"]
        mine = min(h["val_error"] for h in a["history"][:epochs])
        by = trials[int(a["reason"].split("trial ")[1].split("'")[0])]
        other = trial_attrs(by)
        assert by.state == TrialState.COMPLETE and other["E_comp"] <= a["E_comp"]
        theirs = min(h["val_error"] for h in other["history"])  # its final best error
        assert theirs < mine and epochs >= 1
        assert outcome.records[t.number].reason == a["reason"]
    # the cheapest net of the study is never pruned: nothing costs less
    cheapest = min(trials.values(), key=lambda t: trial_attrs(t)["E_comp"])
    assert cheapest.state == TrialState.COMPLETE


def test_with_count_duplicates_false_the_budget_is_of_new_structures_and_an_exhausted_space_ends_it(
        stores, ray_cluster, caplog):
    # Four structures in all (depth 1; 4 or 8 channels; relu or tanh). With a budget of 10 new ones the search
    # trains each of the four once, is told the earlier result for every proposal of one already tried (not
    # counted), and stops after 10 such proposals in a row: the space is exhausted.
    from workers.ray_adapter import RayExecutor

    space = {**TINY_SPACE, "depth": [1, 1], "head": ["flatten"]}
    config = tiny_config(stores, name="distinct", space=space, train={"max_epochs": 2},
                         search={"n_trials": 10, "sampler": "random", "pruner": "none", "bound_check": False,
                                 "count_duplicates": False, "final_seeds": 0, "storage": stores["storage"]})
    executor = RayExecutor(parallelism=1, cpus_per_trial=1)  # one in flight: a structure is never trained twice
    executor.start()
    try:
        with caplog.at_level("WARNING", logger="nas.search"):
            outcome = run_search(config, executor=executor)
        records = [outcome.records[n] for n in sorted(outcome.records)]
        new = [r for r in records if r.duplicate_of is None]
        duplicates = [r for r in records if r.duplicate_of is not None]
        assert len(new) == len({r.arch_id for r in new}) == 4 and all(r.dispatched_at for r in new)
        assert all(r.duplicate_of is not None for r in records[-10:])  # the run of duplicates that ended it
        by_number = {r.number: r for r in new}
        for r in duplicates:  # told the result of the trial that trained the structure, and never trained
            source = by_number[r.duplicate_of]
            assert (r.arch_id, r.values, r.state, r.dispatched_at) == (source.arch_id, source.values, "COMPLETE", 0.0)
        assert outcome.epochs_trained == sum(r.epochs for r in new)
        assert "10 structures in a row that were already tried" in caplog.text
        # a rerun resumes with that run of duplicates and asks for nothing
        again = run_search(config, executor=executor)
        assert sorted(again.records) == sorted(outcome.records)
    finally:
        executor.shutdown()
    trials = optuna.load_study(study_name="distinct", storage=stores["storage"]).trials
    assert len(trials) == len(records)
    assert [trial_attrs(t).get("duplicate_of") for t in trials] == [r.duplicate_of for r in records]


def test_with_seeds_per_trial_each_trial_is_told_the_mean_of_its_training_runs(stores, ray_executor):
    # Two training runs per trial (the trial's seed and one of its own): the study is told the mean validation
    # loss and error, the storage and MLflow keep each run's numbers, and the epochs of both runs are counted.
    from nas.study import derive_seed

    config = tiny_config(stores, name="two_seeds", train={"max_epochs": 4},
                         search={"n_trials": 5, "seeds_per_trial": 2, "final_seeds": 0, "pruner_warmup_epochs": 1,
                                 "bound_check": False, "storage": stores["storage"]})
    outcome = run_search(config, executor=ray_executor)
    trials = {t.number: t for t in optuna.load_study(study_name="two_seeds", storage=stores["storage"]).trials}
    complete = [t for t in trials.values() if t.state == TrialState.COMPLETE and t.number in outcome.records
                and outcome.records[t.number].duplicate_of is None]
    assert complete
    client, _, children = _runs(stores["tracking"], "two_seeds")
    by_trial = {int(r.data.tags[TAG_TRIAL]): r for r in children}
    for t in complete:
        a = trial_attrs(t)
        runs = a["runs"]
        assert [r["seed"] for r in runs] == [a["seed"], derive_seed(0, t.number, -1)] and runs[0]["seed"] != runs[1]["seed"]
        assert a["E_CNN"] == pytest.approx(statistics.mean(r["val_loss"] for r in runs))
        assert a["val_error"] == pytest.approx(statistics.mean(r["val_error"] for r in runs))
        assert a["epochs"] == max(r["epochs"] for r in runs)
        # every reported epoch says how many runs trained in it
        assert all(h["seeds_training"] in (1, 2) for h in a["history"]) and a["history"][0]["seeds_training"] == 2
        metrics = by_trial[t.number].data.metrics
        assert metrics["val_error_std"] == pytest.approx(statistics.stdev(r["val_error"] for r in runs))
        # the epochs the worker says each run trained are those the reports counted
        assert metrics["epochs_trained"] == outcome.records[t.number].epochs_trained == sum(
            r["epochs"] for r in runs) == sum(h["seeds_training"] for h in a["history"])
        assert [m.value for m in client.get_metric_history(by_trial[t.number].info.run_id, "epoch/seeds_training")] == [
            h["seeds_training"] for h in a["history"]]
    for record in outcome.records.values():
        if record.state == "PRUNED":  # both runs trained until the pruner stopped them (or one to its fixed point)
            a = trial_attrs(trials[record.number])
            assert record.epochs_trained == a["final_extra"]["epochs_trained"] == sum(
                h["seeds_training"] for h in a["history"])
            assert record.epochs < record.epochs_trained <= 2 * record.epochs or record.epochs_trained == 0
            assert by_trial[record.number].data.metrics["epochs_trained"] == record.epochs_trained
    assert outcome.epochs_trained == sum(r.epochs_trained for r in outcome.records.values() if r.dispatched_at)
    assert outcome.epochs_trained > sum(r.epochs for r in outcome.records.values() if r.dispatched_at)

    # `nas reproduce` retrains both runs from the record and gets the same means, epoch by epoch
    from nas.review import reproduce_trial

    reproduction = reproduce_trial(stores["tracking"], by_trial[complete[0].number].info.run_id)
    assert reproduction.comparisons and all(c.equal for c in reproduction.comparisons), [
        c for c in reproduction.comparisons if not c.equal]
    assert any("mean of 2 training runs" in note for note in reproduction.notes)


def _sync(stores: dict[str, str], name: str) -> tuple[list[int], list[int]]:
    """`nas sync` of a study right after its search: the trials whose runs it (created, updated)."""
    from nas.sync import sync_study

    client = MlflowClient(stores["tracking"])
    report = sync_study(optuna.load_study(study_name=name, storage=stores["storage"]), client,
                        client.get_experiment_by_name(name).experiment_id)
    return report.created, report.updated


def _search_one_in_flight(config, stores, executor_type: Any = None) -> tuple[Any, dict[int, Any]]:
    """Run `config` with one trial in flight (on a RayExecutor, or `executor_type`, on the session's Ray); return
    the outcome and the study's trials by number."""
    from workers.ray_adapter import RayExecutor

    executor = (executor_type or RayExecutor)(parallelism=1, cpus_per_trial=1)
    executor.start()
    try:
        outcome = run_search(config, executor=executor)
    finally:
        executor.shutdown()
    trials = {t.number: t for t in optuna.load_study(study_name=config.study_name, storage=stores["storage"]).trials}
    return outcome, trials


def test_with_recheck_seeds_front_entrants_are_told_the_mean_of_more_runs(stores):
    # search.recheck_seeds: 1 — a trained trial whose first result would enter the front (no completed trial with as
    # few MACs and as low an error) trains one more run, with a seed of its own, before the study is told; it is
    # told the mean of both runs. One trial in flight: the front each trial met is the completed trials before it.
    from nas.review import reproduce_trial
    from nas.study import derive_seed

    config = tiny_config(stores, name="recheck", train={"max_epochs": 4},
                         search={"n_trials": 6, "recheck_seeds": 1, "final_seeds": 0, "pruner": "none",
                                 "bound_check": False, "storage": stores["storage"]})
    outcome, trials = _search_one_in_flight(config, stores)
    client, _, children = _runs(stores["tracking"], "recheck")
    by_trial = {int(r.data.tags[TAG_TRIAL]): r for r in children}
    seen: list[tuple[float, float]] = []  # (MACs, val error) of the completed trials so far
    rechecked = []
    for number in sorted(trials):
        t, record = trials[number], outcome.records[number]
        if t.state != TrialState.COMPLETE:  # no pruner nor bound check: only a trial that failed (its task raised)
            continue
        a = trial_attrs(t)
        extra = a["final_extra"]
        first = extra.get("val_error_first", a["val_error"])
        entered = not any(macs <= a["E_comp"] and err <= first for macs, err in seen)
        if record.duplicate_of is None:
            assert ("recheck_runs" in extra) == entered, (number, seen, first)
        if "recheck_runs" in extra and record.duplicate_of is None:
            rechecked.append(number)
            runs = a["runs"]
            # the trial's seed, then the first seed of its own (the one seeds_per_trial: 2 would have used)
            assert [r["seed"] for r in runs] == [a["seed"], derive_seed(0, number, -1)]
            assert extra["recheck_runs"] == 1 and runs[0]["val_error"] == first
            assert a["val_error"] == pytest.approx(statistics.fmean(r["val_error"] for r in runs))
            assert a["E_CNN"] == pytest.approx(statistics.fmean(r["val_loss"] for r in runs))
            assert t.value == pytest.approx(a["E_CNN"] + 0.1 * a["E_comp"] / 1e6)  # F of the mean
            # the recheck's reports reach neither the history nor MLflow's per-epoch curves: those are the first run's
            assert len(a["history"]) == runs[0]["epochs"]
            assert len(client.get_metric_history(by_trial[number].info.run_id, "epoch/val_error")) == runs[0]["epochs"]
            # both runs' epochs are counted, and MLflow has what the storage has
            assert record.epochs_trained == extra["epochs_trained"] == sum(r["epochs"] for r in runs)
            metrics = by_trial[number].data.metrics
            assert metrics["val_error"] == pytest.approx(a["val_error"]) and metrics["val_error_first"] == first
            assert metrics["recheck_runs"] == 1
        elif record.duplicate_of is None:  # dominated at once: one run, as without the option
            assert "runs" not in a and record.epochs_trained == a["epochs"]
        seen.append((a["E_comp"], a["val_error"]))
    assert rechecked and rechecked[0] == 0  # the first trial always enters the (empty) front
    # every trained member of the final front was an entrant when it finished, so each was rechecked; the front's
    # table and front.json show the mean of its runs beside its first run's error
    from nas.search import front_json, front_table

    trained = [p for p in outcome.front if outcome.records[p.trial_number].duplicate_of is None]
    assert trained and all(p.extra["val_error_first"] == trial_attrs(trials[p.trial_number])["final_extra"][
        "val_error_first"] for p in trained)
    assert all(m["val_error_first"] is not None for m in front_json(trained, 0.0)["front"])
    assert f"(first run {100 * trained[0].extra['val_error_first']:.2f}%)" in front_table(trained)
    assert outcome.epochs_trained == sum(r.epochs_trained for r in outcome.records.values() if r.dispatched_at)

    # `nas reproduce` retrains the first run and the recheck's, and gets the same curve and the same mean
    reproduction = reproduce_trial(stores["tracking"], by_trial[rechecked[-1]].info.run_id)
    assert reproduction.comparisons and all(c.equal for c in reproduction.comparisons), [
        c for c in reproduction.comparisons if not c.equal]
    assert {"val_error", "val_error_first", "epoch/val_error@1"} <= {c.name for c in reproduction.comparisons}
    assert any("rechecked with 1 more training runs" in note for note in reproduction.notes)
    # `nas sync` rebuilds the rechecked trials' runs as the search wrote them: right after, it writes nothing
    assert _sync(stores, "recheck") == ([], [])


def test_a_failed_recheck_keeps_the_first_result_and_says_why(stores):
    # A recheck task that fails (here its architecture cannot be read in the worker: a real Ray task error) loses
    # nothing: the trial is told its first run's result, with the reason on the trial and its MLflow run.
    from workers.ray_adapter import RayExecutor

    class BrokenRecheck(RayExecutor):
        def submit(self, key, spec, data_ref):
            if isinstance(key, tuple) and key[0] == "recheck":
                spec = replace(spec, arch_json="{not json")
            super().submit(key, spec, data_ref)

    config = tiny_config(stores, name="recheck_fails", train={"max_epochs": 2},
                         search={"n_trials": 2, "recheck_seeds": 2, "final_seeds": 0, "pruner": "none",
                                 "bound_check": False, "storage": stores["storage"]})
    outcome, trials = _search_one_in_flight(config, stores, BrokenRecheck)
    t = trials[0]  # the first trial enters the empty front, so its recheck was tried
    a = trial_attrs(t)
    assert t.state == TrialState.COMPLETE and "runs" not in a and "recheck_runs" not in a["final_extra"]
    assert a["reason"].startswith("recheck failed: ") and outcome.records[0].epochs_trained == a["epochs"]
    _, _, children = _runs(stores["tracking"], "recheck_fails")
    run = next(r for r in children if r.data.tags[TAG_TRIAL] == "0")
    assert run.data.tags[TAG_STATE] == "COMPLETE" and run.data.tags[TAG_REASON] == a["reason"]
    assert run.data.metrics["val_error"] == a["val_error"]


def test_a_resumed_search_reuses_a_rechecked_result_as_rechecked():
    # A rerun of the config rebuilds, from the storage, the results a duplicate proposal reuses: a rechecked entrant's
    # carries its recheck (the runs it added and its first run's error), as the driver that trained it had it.
    from nas.search import _Search
    from nas.study import ATTR

    attrs = {ATTR.E_CNN: 0.2, ATTR.VAL_ERROR: 0.05, ATTR.EPOCHS: 9, ATTR.FIXED_POINT: True,
             ATTR.RUNS: [{"seed": 1, "val_error": 0.04}, {"seed": 2, "val_error": 0.06}],
             ATTR.FINAL_EXTRA: {"recheck_runs": 1.0, "val_error_first": 0.04}}
    result = _Search._stored_result(attrs)
    assert result["recheck"] == {"runs": 1, "val_error_first": 0.04} and len(result["runs"]) == 2
    assert "recheck" not in _Search._stored_result({**attrs, ATTR.FINAL_EXTRA: {}})
