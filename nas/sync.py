"""Rebuild the MLflow runs of a study from its Optuna storage, idempotently.

The Optuna storage is the single source of truth: every trial keeps its architecture, curve, per-epoch
history, results and failure reason as user attributes. MLflow is a view of it. When tracking writes
were lost (a tracking server down for longer than the driver retried, a driver killed with writes still
queued), `sync_study` finds or creates the parent run and one child run per trial and writes only what
is missing or different, so running it twice changes nothing.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from optuna.trial import FrozenTrial, TrialState

from nas.energy import FrontPoint, hypervolume, pareto_front
from nas.study import ATTR, front_points, over_budget, trial_attrs
from nas.tracking import (PARENT, TAG_ARCH, TAG_KIND, TAG_REASON, TAG_STATE, TAG_STUDY, TAG_TRIAL, Tracker, log_bytes,
                          log_in_batches)

__all__ = ["sync_study", "find_runs", "run_status", "SyncReport", "open_search_runs"]

STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED",
          TrialState.RUNNING: "RUNNING", TrialState.WAITING: "SCHEDULED"}
EPOCH_METRICS = ("train_loss", "val_loss", "val_error", "lr", "loss_residual", "update_residual",
                 "seeds_training")  # the last only with search.seeds_per_trial > 1


def run_status(trial: FrozenTrial) -> str:
    """The MLflow status of a trial's run: FINISHED, KILLED (pruned, or its driver died) or FAILED."""
    if trial.state == TrialState.FAIL and trial_attrs(trial).get(ATTR.REQUEUED):
        return "KILLED"
    return STATUS[trial.state]


def find_runs(client: MlflowClient, experiment_id: str, study_name: str) -> tuple[str | None, dict[int, str]]:
    """(parent run id, {trial number: child run id}) of a study, from the runs' tags."""
    parent: str | None = None
    children: dict[int, str] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_STUDY}` = '{study_name}'",
                                  max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if tags.get(TAG_KIND) == "search":
                parent = parent or run.info.run_id
            elif tags.get(TAG_KIND) == "trial" and TAG_TRIAL in tags:
                children.setdefault(int(tags[TAG_TRIAL]), run.info.run_id)
        token = page.token
        if not token:
            return parent, children


def trial_tags(study_name: str, trial: FrozenTrial) -> dict[str, str]:
    a = trial_attrs(trial)
    tags = {TAG_KIND: "trial", TAG_STUDY: study_name, TAG_TRIAL: str(trial.number), TAG_STATE: trial.state.name}
    if ATTR.ARCH_ID in a:
        tags[TAG_ARCH] = str(a[ATTR.ARCH_ID])
    if ATTR.SUMMARY in a:
        tags["summary"] = str(a[ATTR.SUMMARY])
    if a.get(ATTR.REASON):
        tags[TAG_REASON] = str(a[ATTR.REASON])
    if ATTR.DUPLICATE_OF in a:
        tags["duplicate_of"] = str(a[ATTR.DUPLICATE_OF])
    return tags


def trial_params(trial: FrozenTrial) -> dict[str, str]:
    from search_spaces import Architecture

    a = trial_attrs(trial)
    params: dict[str, str] = {"trial_number": str(trial.number)}
    if ATTR.SEED in a:
        params["seed"] = str(a[ATTR.SEED])
    if ATTR.ARCH in a:
        arch = Architecture.from_dict(a[ATTR.ARCH])
        params.update({f"arch.{k}": str(v) for k, v in arch.flat_params().items()})
    return params


def final_metrics(trial: FrozenTrial) -> dict[str, float]:
    """The final metrics of a trial's run, as the driver logs them."""
    a = trial_attrs(trial)
    metrics: dict[str, float] = {}
    names = {ATTR.E_COMP: "E_comp", ATTR.E_CNN: "E_CNN", ATTR.F: "F", ATTR.VAL_ERROR: "val_error",
             ATTR.EPOCHS: "epochs", ATTR.FIXED_POINT: "fixed_point_reached", ATTR.PARAMS: "params",
             ATTR.WALL_TIME: "train_wall_time"}
    for attr, name in names.items():
        if attr in a and a[attr] is not None:
            metrics[name] = float(a[attr])
    for name, value in {**(a.get(ATTR.FINAL_EXTRA) or {}), **(a.get(ATTR.DIAGNOSTICS) or {})}.items():
        metrics[name] = float(value)
    return metrics


FINAL_METRICS = ("test_accuracy_mean", "test_accuracy_std", "test_accuracy_train_split_mean")


def member_test_metrics(entry: dict[str, Any] | None) -> dict[str, float]:
    """A front member's final-test metrics (its run's), from its entry of the study's ``final_test``."""
    return {k: float(entry[k]) for k in FINAL_METRICS if entry and entry.get(k) is not None}


def _same(logged: float | None, value: float) -> bool:
    """Equal, NaN included (an unknown residual is logged as NaN)."""
    return logged is not None and (logged == value or (math.isnan(logged) and math.isnan(value)))


class SyncReport:
    """What one sync wrote."""

    def __init__(self) -> None:
        self.created: list[int] = []
        self.updated: list[int] = []
        self.parent_created = False

    def __str__(self) -> str:
        return (f"{len(self.created)} child runs created, {len(self.updated)} updated"
                f"{', parent run created' if self.parent_created else ''}")


def _missing_metrics(client: MlflowClient, run_id: str, existing: dict[str, float], name: str,
                     points: list[tuple[int, float]]) -> list[Metric]:
    """Points of metric `name` not yet in the run (compared by step)."""
    if not points:
        return []
    if name in existing:
        steps = {m.step for m in client.get_metric_history(run_id, name)}
    else:
        steps = set()
    return [Metric(name, value, 0, step) for step, value in points if step not in steps]


def sync_trial(client: MlflowClient, experiment_id: str, study_name: str, parent_id: str, trial: FrozenTrial,
               run_id: str | None, input_shape: tuple[int, ...] | None, num_classes: int | None,
               final_test: dict[str, Any] | None = None) -> bool:
    """Make the child run of `trial` match the storage (and `final_test`, its entry of the study's final
    test when it is a front member); True if anything was written."""
    wrote = False
    tags = trial_tags(study_name, trial)
    if run_id is None:
        run_id = client.create_run(experiment_id, tags={**tags, "mlflow.parentRunId": parent_id},
                                   run_name=f"trial-{trial.number:04d}").info.run_id
        wrote = True
    run = client.get_run(run_id)
    data = run.data
    params = [Param(k, v) for k, v in trial_params(trial).items() if k not in data.params]
    new_tags = [RunTag(k, v) for k, v in {**tags, "mlflow.parentRunId": parent_id}.items() if data.tags.get(k) != v]
    metrics: list[Metric] = []
    history = trial_attrs(trial).get(ATTR.HISTORY) or []
    for name in EPOCH_METRICS:
        points = [(int(h["epoch"]), float(h[name])) for h in history if h.get(name) is not None]
        metrics += _missing_metrics(client, run_id, data.metrics, f"epoch/{name}", points)
    step = int(trial_attrs(trial).get(ATTR.EPOCHS, 0) or 0)
    for name, value in final_metrics(trial).items():
        if not _same(data.metrics.get(name), value):
            metrics.append(Metric(name, value, 0, step))
    now_ms = int(time.time() * 1000)  # newer than a value of the other final-test protocol, so it is the latest
    for name, value in member_test_metrics(final_test).items():
        if not _same(data.metrics.get(name), value):
            metrics.append(Metric(name, value, now_ms, 0))
    wrote |= log_in_batches(client, run_id, metrics, params, new_tags)
    wrote |= _sync_trial_artifacts(client, run_id, trial, input_shape, num_classes)
    status = run_status(trial)
    if run.info.status != status and status not in ("RUNNING", "SCHEDULED"):
        client.set_terminated(run_id, status=status)
        wrote = True
    return wrote


def _sync_trial_artifacts(client: MlflowClient, run_id: str, trial: FrozenTrial, input_shape: tuple[int, ...] | None,
                          num_classes: int | None) -> bool:
    from search_spaces import Architecture, InfeasibleArchitecture, layer_costs

    attrs = trial_attrs(trial)
    arch_dict = attrs.get(ATTR.ARCH)
    if arch_dict is None:
        return False
    # a proposal over search.max_macs ends in milliseconds: the driver logs its architecture, not its profile
    profiled = not over_budget(attrs.get(ATTR.REASON))
    present = {a.path for a in client.list_artifacts(run_id)}
    wrote = False
    arch = Architecture.from_dict(arch_dict)
    if "architecture.json" not in present:
        client.log_text(run_id, json.dumps(arch.to_dict(), indent=2, sort_keys=True), "architecture.json")
        wrote = True
    if not profiled or input_shape is None or num_classes is None or (
            "complexity_profile.json" in present and "complexity_profile.png" in present):
        return wrote
    try:
        costs = layer_costs(arch, input_shape, num_classes)
    except InfeasibleArchitecture:
        return wrote
    if "complexity_profile.json" not in present:
        client.log_text(run_id, json.dumps(profile_json(arch, costs), indent=2), "complexity_profile.json")
    if "complexity_profile.png" not in present:
        from nas.plots import profile_png

        layers = [c for c in costs if c.kind in ("conv", "linear")]
        log_bytes(client, run_id, profile_png([c.name for c in layers], [c.macs for c in layers],
                                              f"trial {trial.number}: {arch.summary()}"), "complexity_profile.png")
    return True


def profile_json(arch: Any, costs: list[Any]) -> dict[str, Any]:
    """The complexity profile (the curve) of an architecture as plain data."""
    from search_spaces import total_macs

    return {"arch_id": arch.arch_id, "E_comp": total_macs(costs),
            "layers": [{"name": c.name, "kind": c.kind, "output_shape": list(c.output_shape), "macs": c.macs,
                        "params": c.params} for c in costs]}


def hypervolume_history(trials: list[FrozenTrial], reference: tuple[float, float]) -> list[tuple[int, float]]:
    """Hypervolume of the front after each finished trial, in trial order (what the driver logged live)."""
    points: list[FrontPoint] = []
    history = []
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
                and not trial_attrs(t).get(ATTR.REQUEUED)]
    by_number = {p.trial_number: p for p in front_points(trials)}
    for t in sorted(finished, key=lambda t: t.number):
        if t.number in by_number:
            points.append(by_number[t.number])
        history.append((t.number, hypervolume(pareto_front(points), reference)))
    return history


def sync_study(study: optuna.Study, client: MlflowClient, experiment_id: str) -> SyncReport:
    """Find or create the parent run and every child run of `study`, writing only what is missing.

    Returns:
        What was created or updated (nothing on a second run).
    """
    report = SyncReport()
    attrs = study.user_attrs
    name = study.study_name
    parent_id, children = find_runs(client, experiment_id, name)
    if parent_id is None:
        tags = {TAG_KIND: "search", TAG_STUDY: name, "mode": str(attrs.get("mode", "")),
                "space": str(attrs.get("space", "")), "dataset": str(attrs.get("dataset", ""))}
        parent_id = client.create_run(experiment_id, tags=tags, run_name=str(attrs.get("config_name", name))).info.run_id
        report.parent_created = True
        config_params = attrs.get("config_params") or {}
        log_in_batches(client, parent_id, params=[Param(k, str(v)) for k, v in config_params.items()])
        if attrs.get("config_yaml"):
            client.log_text(parent_id, attrs["config_yaml"], "config.yaml")
    input_shape = tuple(attrs["input_shape"]) if attrs.get("input_shape") else None
    num_classes = attrs.get("num_classes")
    trials = study.get_trials(deepcopy=False)
    final = attrs.get("final_test") or {}
    for trial in trials:
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            continue
        existed = trial.number in children
        if sync_trial(client, experiment_id, name, parent_id, trial, children.get(trial.number), input_shape,
                      num_classes, final.get(str(trial.number))):
            (report.updated if existed else report.created).append(trial.number)
    _sync_parent(client, parent_id, study, trials)
    return report


def _sync_parent(client: MlflowClient, parent_id: str, study: optuna.Study, trials: list[FrozenTrial]) -> None:
    from nas.search import front_json, front_table

    reference = tuple(study.user_attrs.get("reference_point", (1.0e6, 1.0)))
    run = client.get_run(parent_id)
    history = hypervolume_history(trials, reference)  # type: ignore[arg-type]
    metrics = _missing_metrics(client, parent_id, run.data.metrics, "hypervolume",
                               [(n, v) for n, v in history])
    if metrics:
        client.log_batch(parent_id, metrics=metrics, synchronous=True)
    points = front_points(trials)
    front = pareto_front(points)
    final = dict(study.user_attrs.get("final_test", {}))
    present = {a.path for a in client.list_artifacts(parent_id)}
    wanted = front_json(front, hypervolume(front, reference), final)  # type: ignore[arg-type]
    if "front.json" in present:
        with tempfile.TemporaryDirectory() as tmp:
            current = json.loads(Path(client.download_artifacts(parent_id, "front.json", tmp)).read_text())
        stale = current != json.loads(json.dumps(wanted))
    else:
        stale = True
    if stale:
        client.log_text(parent_id, json.dumps(wanted, indent=2, sort_keys=True), "front.json")
        client.log_text(parent_id, front_table(front, final), "front_table.md")
        from nas.plots import close, front_figure

        fig = front_figure(points, front, f"{study.study_name}: {len(points)} trials, {len(front)} on the front")
        try:
            client.log_figure(parent_id, fig, "front.png")
        finally:
            close(fig)


def open_search_runs(tracker: Tracker, study_name: str, run_name: str, tags: dict[str, Any], params: dict[str, Any],
                      earlier: list[FrozenTrial], input_shape: tuple[int, ...], num_classes: int) -> None:
    """Find or create the parent run; adopt the child runs of earlier drivers; on resume, repair the records of
    the trials they finished (`earlier`).

    Runs on the tracking thread, first in its queue, so a tracking server that is down delays it without
    stopping the search (`Tracker.call`: module-level, with picklable arguments, for the tracking process;
    here, not in nas.search, so that process does not import Ray).
    """
    client = tracker.client
    exp = tracker.experiment_id()
    parent_id, children = find_runs(client, exp, study_name)
    if parent_id is None:
        parent_id = client.create_run(exp, tags={k: str(v) for k, v in tags.items()}, run_name=run_name).info.run_id
        existing: dict[str, str] = {}
    else:
        client.update_run(parent_id, status="RUNNING")
        existing = client.get_run(parent_id).data.params
        client.log_batch(parent_id, tags=[RunTag("resumed", "true")], synchronous=True)
    tracker.adopt(PARENT, parent_id)
    for number, run_id in children.items():
        tracker.adopt(number, run_id)
    log_in_batches(client, parent_id, params=[Param(k, str(v)) for k, v in params.items() if k not in existing])
    # Records an earlier driver left incomplete (it died with writes queued, or the server was down). This
    # driver's own trials (requeued ones included) get their runs from its tracker, never from here.
    for trial in earlier:
        sync_trial(client, exp, study_name, parent_id, trial, children.get(trial.number), input_shape, num_classes)
