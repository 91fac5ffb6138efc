"""The driver of a search: Optuna ask/tell, Ray workers, MLflow tracking, the front.

Flow of one trial: ask -> sample an Architecture -> its curve (layer_costs, E_comp) -> infeasible, or over
search.max_macs? (pruned, never trained) -> duplicate of a finished architecture? (its result reused) -> bound check
(scalar mode: λ·E_comp/scale >= best F -> pruned, never trained) -> train on a Ray worker, pruning on its
per-epoch reports -> (search.recheck_seeds: a result that would enter the front trains more runs first) -> tell ->
track -> front and hypervolume.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from nas.config import Config, config_to_dict, flatten, mask_secrets
from nas.data import Dataset, load_dataset
from nas.energy import (FrontPoint, best_so_far, bound_excludes, complexity_term, dominating_trial, energy, hypervolume,
                        pareto_front)
from nas.lock import StudyLock
from nas.plots import diagnostics_png, front_figure, hypervolume_figure, profile_png
from nas.provenance import environment
from nas.study import (ATTR, BUDGET_REASON, FINISHED_STATES, RECORD, RESULT, derive_seed, front_points, open_study,
                       over_budget, point_extra, recheck_seeds, rechecked_result, repeat_seeds, storage_url, trial_attrs)
from nas.sync import open_search_runs as _open_search_runs
from nas.sync import member_test_metrics, profile_json
from nas.tracking import PARENT, TAG_ARCH, TAG_KIND, TAG_REASON, TAG_STATE, TAG_STUDY, TAG_TRIAL, Tracker
from nas.tracking_process import open_tracker
from search_spaces import (Architecture, InfeasibleArchitecture, build_model, get_space, layer_costs, total_macs,
                           total_params)
from workers.ray_adapter import RayExecutor, TaskSpec, TrialEvent

__all__ = ["run_search", "SearchOutcome", "TrialRecord"]

FRONT_REFRESH_SECONDS = 30.0
TRACKING_DELAY = 2.0  # seconds the per-epoch and per-trial metrics may wait to be written in one batch
EPOCH_PREFIX = "epoch/"
RECHECK = "recheck"  # the executor key of a front entrant's recheck task is (RECHECK, trial number)
log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    """What the driver knows of one trial while and after it runs."""

    number: int
    state: str = "RUNNING"
    arch_id: str = ""
    summary: str = ""
    e_comp: int = 0
    params: int = 0
    reason: str = ""
    values: tuple[float, ...] = ()
    epochs: int = 0
    epochs_trained: int = 0  # summed over the trial's training runs (search.seeds_per_trial); set when it ends
    train_wall_time: float = 0.0
    diagnose_time: float = 0.0  # seconds of the geometry diagnostics in the worker (outside train_wall_time)
    dispatched_at: float = 0.0
    finished_at: float = 0.0
    duplicate_of: int | None = None  # the trial whose result this proposal of the same structure reused

    @property
    def over_budget(self) -> bool:
        """E_comp over search.max_macs: never trained, not counted toward n_trials."""
        return over_budget(self.reason)


@dataclass
class SearchOutcome:
    """The result of `run_search`: every trial record, the front, its hypervolume and test results."""

    study_name: str
    records: dict[int, TrialRecord]
    points: list[FrontPoint]
    front: list[FrontPoint]
    hypervolume: float
    best_f: float | None
    final_test: dict[str, dict[str, Any]]
    wall_time: float
    parent_run_id: str | None
    hypervolume_history: list[tuple[int, float]] = field(default_factory=list)
    loop_time: float = 0.0  # seconds of the ask/train/tell loop, without start-up and the final report
    # seconds from the end of the loop until the last MLflow write was done (the final report included), and
    # the MLflow writer's seconds per kind of write: how far tracking lags behind the loop
    drain_time: float = 0.0
    tracking_seconds: dict[str, list[float]] = field(default_factory=dict)

    @property
    def epochs_trained(self) -> int:
        """Epochs trained in this search's trials, summed over each trial's training runs (duplicates reuse a
        result and train none)."""
        return sum(r.epochs_trained for r in self.records.values() if r.dispatched_at)

    @property
    def train_time(self) -> float:
        """Seconds the trainer itself ran, summed over the trials that completed."""
        return sum(r.train_wall_time for r in self.records.values())

    def count(self, state: str) -> int:
        return sum(1 for r in self.records.values() if r.state == state)


class _Search:
    """One search in progress; `run_search` builds it and calls `run`."""

    def __init__(self, config: Config, dataset: Dataset, executor: RayExecutor, tracker: Tracker,
                 on_progress: Callable[["_Search"], None] | None) -> None:
        self.config = config
        self.search = config.search
        self.dataset = dataset
        space_cfg = dict(config.space)
        self.space = get_space(space_cfg.pop("name"), **space_cfg)
        self.executor = executor
        self.tracker = tracker
        self.on_progress = on_progress
        self.study = open_study(config)
        self.records: dict[int, TrialRecord] = {}
        self.live: dict[int, optuna.Trial] = {}
        self.specs: dict[int, TaskSpec] = {}  # with search.recheck_seeds: each live trial's task, for its recheck
        # trials in self.live whose first task ended with a front entrant's result: that result, while their
        # recheck trains (search.recheck_seeds)
        self.rechecking: dict[int, dict[str, Any]] = {}
        self.data_ref: Any = None  # the training and validation splits in the object store, once the loop starts
        self.reports: dict[int, list[dict[str, float]]] = {}
        self.results_by_arch: dict[str, tuple[int, dict[str, Any]]] = {}
        self.points: list[FrontPoint] = []
        # (number, MACs, best validation error after each epoch) of completed trials: the dominance pruner's view
        self.curves: list[tuple[int, float, list[float]]] = []
        self.best_f: float | None = None
        self.hv_history: list[tuple[int, float]] = []
        self.started = time.perf_counter()
        self._front_logged_at = -math.inf
        self.loop_time = 0.0
        before = self.study.get_trials(deepcopy=False)
        self.resumed = bool(before)
        self.requeued = self._requeue_stale_trials([t for t in before if t.state == TrialState.RUNNING])
        trials = self.study.get_trials(deepcopy=False) if self.requeued else before
        # The trials earlier drivers finished: the only ones whose MLflow runs the opening of the runs may
        # repair. This driver's own trials (requeued ones included: they wait in the study under their number)
        # get theirs from its tracker, even when one finishes before that opening.
        self.earlier = [t for t in trials if t.state in FINISHED_STATES]
        self._store_study_attrs()
        self._load_finished(trials)

    # -- state from the storage (a rerun of the same config resumes the study) ------------------------------
    def _store_study_attrs(self) -> None:
        """What `nas sync` and `nas front` need to rebuild the search's records from the storage alone."""
        resolved = config_to_dict(self.config)
        resolved["search"]["storage"] = mask_secrets(self.config.search.storage)
        wanted = {"reference_point": list(self.search.reference_point), "mode": self.search.mode,
                  "config_name": self.config.name, "space": self.config.space.get("name"), "dataset": self.dataset.name,
                  "input_shape": list(self.dataset.input_shape), "num_classes": self.dataset.num_classes,
                  "data_fingerprint": self.dataset.fingerprint, "config_yaml": _yaml(resolved),
                  "config_params": {k: mask_secrets(str(v)) for k, v in flatten(resolved).items()}}
        current = self.study.user_attrs
        for key, value in wanted.items():
            if current.get(key) != value:
                self.study.set_user_attr(key, value)

    def _requeue_stale_trials(self, running: list[optuna.trial.FrozenTrial]) -> list[int]:
        """Trials left RUNNING by a driver that died (`running`): mark them failed and enqueue their
        architectures again.

        This driver holds the study's lock, so no live driver owns them.
        """
        stale = []
        for t in running:
            self.study._storage.set_trial_user_attr(t._trial_id, RESULT, {ATTR.REASON: "driver died: requeued",
                                                                          ATTR.REQUEUED: True})
            self.study.tell(t.number, state=TrialState.FAIL)
            if t.params:
                self.study.enqueue_trial(t.params, user_attrs={"requeued_from": t.number})
            stale.append(t.number)
        return stale

    def _load_finished(self, trials: list[optuna.trial.FrozenTrial]) -> None:
        for t in sorted(trials, key=lambda t: t.number):  # records stay in trial order: the streaks read it
            a = trial_attrs(t)
            if t.state not in FINISHED_STATES or a.get(ATTR.REQUEUED):
                continue
            record = TrialRecord(t.number, state=t.state.name, arch_id=str(a.get(ATTR.ARCH_ID, "")),
                                 summary=str(a.get(ATTR.SUMMARY, "")), e_comp=int(a.get(ATTR.E_COMP, 0)),
                                 params=int(a.get(ATTR.PARAMS, 0)), reason=str(a.get(ATTR.REASON, "")),
                                 values=tuple(t.values or ()), epochs=int(a.get(ATTR.EPOCHS, 0)),
                                 duplicate_of=a.get(ATTR.DUPLICATE_OF))
            self.records[t.number] = record
            if t.state == TrialState.COMPLETE and ATTR.F in a:
                self.results_by_arch.setdefault(record.arch_id, (t.number, self._stored_result(a)))
                self._update_best(float(a[ATTR.F]))
                self._add_curve(t.number, record.e_comp, a.get(ATTR.HISTORY) or [])
        self.points = front_points(trials)

    # Both streaks are read from the records, so a rerun of a search that stopped on one asks no more of it.
    @property
    def duplicate_streak(self) -> int:
        """The latest proposals in a row of structures already trained (count_duplicates: false)."""
        return _streak(self.records, lambda r: r.duplicate_of is not None)

    @property
    def budget_streak(self) -> int:
        """The latest proposals in a row over search.max_macs; a streak of an earlier run counts only while the
        current budget still excludes it."""
        budget = self.search.max_macs
        return 0 if budget is None else _streak(self.records, lambda r: r.over_budget and r.e_comp > budget)

    @staticmethod
    def _stored_result(attrs: dict[str, Any]) -> dict[str, Any]:
        result = {"val_loss": attrs[ATTR.E_CNN], "val_error": attrs[ATTR.VAL_ERROR], "epochs": attrs.get(ATTR.EPOCHS, 0),
                  "fixed_point_reached": attrs.get(ATTR.FIXED_POINT, False), "wall_time": 0.0,
                  "runs": attrs.get(ATTR.RUNS) or []}
        extra = attrs.get(ATTR.FINAL_EXTRA) or {}
        if "val_error_first" in extra:  # a rechecked front entrant (search.recheck_seeds): a duplicate says so too
            result["recheck"] = {"runs": int(extra["recheck_runs"]), "val_error_first": extra["val_error_first"]}
        return result

    def _update_best(self, f: float) -> None:
        if self.best_f is None or f < self.best_f:
            self.best_f = f

    def _add_curve(self, number: int, e_comp: float, history: list[dict[str, Any]]) -> None:
        curve = best_so_far(h.get("val_error") for h in history)
        if curve and math.isfinite(curve[-1]):
            self.curves.append((number, float(e_comp), curve))

    @property
    def finished(self) -> int:
        """Finished trials that count towards `n_trials` (with `count_duplicates: false`, duplicates do not;
        proposals over `max_macs` never do)."""
        counted = self.search.count_duplicates
        return sum(1 for r in self.records.values()
                   if r.state != "RUNNING" and not r.over_budget and (counted or r.duplicate_of is None))

    @property
    def front(self) -> list[FrontPoint]:
        return pareto_front(self.points)

    def hypervolume(self) -> float:
        return hypervolume(self.front, self.search.reference_point)

    # -- the loop ---------------------------------------------------------------------------------------
    def run(self) -> None:
        loop_started = time.perf_counter()
        try:
            self._loop()
        finally:
            self.loop_time = time.perf_counter() - loop_started

    def _loop(self) -> None:
        self.data_ref = self.executor.put(self.dataset.without_test())
        while self._wants_more(0) or self.live:
            # Read once per round: without a configured parallelism it asks the cluster for its CPUs (an RPC),
            # and nodes may join or leave during a long search.
            capacity = self.executor.parallelism
            while len(self.live) < capacity and self._wants_more(len(self.live)):
                self._ask_and_dispatch(self.data_ref)
            for event in self.executor.poll(timeout=0.5):
                self._handle(event)
            self.tracker.flush_stale()  # metrics batched for TRACKING_DELAY reach MLflow even when nothing else comes

    def _wants_more(self, in_flight: int) -> bool:
        """Whether to ask for another trial with `in_flight` trials running: the budget is not spent, and (with
        count_duplicates: false; otherwise the budget ends first) the last n_trials proposals were not all
        duplicates, which means the space, or what the sampler still considers of it, is exhausted, nor all over
        search.max_macs (they do not count either)."""
        limit = self.search.n_trials
        return self.finished + in_flight < limit and self.duplicate_streak < limit and self.budget_streak < limit

    def _ask_and_dispatch(self, data_ref: Any) -> None:
        trial = self.study.ask()
        record = TrialRecord(trial.number)
        self.records[trial.number] = record
        seed = derive_seed(self.config.seed, trial.number)
        arch = self.space.sample(trial)
        record.arch_id, record.summary = arch.arch_id, arch.summary()
        stored: dict[str, Any] = {ATTR.ARCH: arch.to_dict(), ATTR.ARCH_ID: arch.arch_id, ATTR.SUMMARY: record.summary,
                                  ATTR.SEED: seed}
        self._start_child(trial.number, arch, seed)
        try:
            costs = layer_costs(arch, self.dataset.input_shape, self.dataset.num_classes)
        except InfeasibleArchitecture as exc:
            # Never trained. Ended PRUNED, as a bound-checked proposal is: Optuna's samplers skip FAIL trials, so
            # TPE never learned that a region cannot be built and proposed it again and again (40 of 80 trials
            # of one digits search); a pruned trial with no reports is one of its worst observations.
            trial.set_user_attr(RECORD, stored)
            self._finish_pruned(trial, str(exc))
            return
        record.e_comp, record.params = total_macs(costs), total_params(costs)
        stored.update({ATTR.E_COMP: record.e_comp, ATTR.PARAMS: record.params})
        budget = self.search.max_macs
        if budget is not None and record.e_comp > budget:
            # Never trained, like an infeasible proposal: over the user's budget it could not be deployed. It costs
            # milliseconds and does not count toward n_trials; n_trials such proposals in a row end the search.
            trial.set_user_attr(RECORD, stored)
            self._finish_pruned(trial, f"{BUDGET_REASON} E_comp = {record.e_comp:,} MACs > search.max_macs = "
                                       f"{budget:,.0f}")
            if self.budget_streak == self.search.n_trials:
                log.warning("the sampler proposed %d structures in a row over search.max_macs = %s: the search stops "
                            "with %d of its %d trials", self.budget_streak, f"{budget:,.0f}", self.finished,
                            self.search.n_trials)
            return
        self._log_profile(trial.number, arch, costs)
        if arch.arch_id in self.results_by_arch:
            # The sampler proposed a structure already trained to its fixed point: reuse that result.
            source, result = self.results_by_arch[arch.arch_id]
            stored[ATTR.DUPLICATE_OF] = record.duplicate_of = source
            if self.duplicate_streak == self.search.n_trials and not self.search.count_duplicates:
                log.warning("the sampler proposed %d structures in a row that were already tried: the search "
                            "stops with %d of its %d new trials", self.duplicate_streak, self.finished,
                            self.search.n_trials)
            trial.set_user_attr(RECORD, stored)
            # reused: no training happened
            self._finish_complete(trial, {**result, "wall_time": 0.0}, tags={"duplicate_of": source})
            return
        trial.set_user_attr(RECORD, stored)
        if self.search.mode == "scalar" and self.search.bound_check and bound_excludes(
                record.e_comp, self.search.lam, self.search.scale, self.best_f):
            term = complexity_term(record.e_comp, self.search.lam, self.search.scale)
            self._finish_pruned(trial, f"bound: λ·E_comp/scale = {term:.4g} >= best F = {self.best_f:.4g}")
            return
        self.live[trial.number] = trial
        self.reports[trial.number] = []
        record.dispatched_at = time.perf_counter()
        further = repeat_seeds(self.config.seed, trial.number, self.search.seeds_per_trial)
        spec = TaskSpec(arch.to_json(), self.config.train, seed, diagnostics=self.search.diagnostics,
                        repeat_seeds=further)
        if self.search.recheck_seeds:
            self.specs[trial.number] = spec
        self.executor.submit(trial.number, spec, data_ref)

    def _handle(self, event: TrialEvent) -> None:
        if isinstance(event.key, tuple):  # (RECHECK, number)
            self._on_recheck(event.key[1], event)
            return
        trial = self.live.get(event.key)
        if trial is None or trial.number in self.rechecking:
            return  # a late event of a trial already pruned, or of one whose first task ended (its recheck trains)
        if event.kind == "report":
            self._on_report(trial, event.epoch, event.payload or {})
        elif event.kind == "result":
            if self._start_recheck(trial.number, event.payload or {}):
                return
            del self.live[trial.number]
            self._finish_complete(trial, event.payload or {})
        else:
            del self.live[trial.number]
            self._finish_failed(trial, event.reason or event.kind)

    # -- rechecking front entrants (search.recheck_seeds) -----------------------------------------------------
    def _enters_front(self, macs: float, val_error: float) -> bool:
        """Whether a result would enter the front: no completed trial has as few MACs and as low an error."""
        return math.isfinite(val_error) and not any(p.macs <= macs and p.val_error <= val_error for p in self.points)

    def _start_recheck(self, number: int, result: dict[str, Any]) -> bool:
        """A trained trial whose first result would enter the front trains search.recheck_seeds more runs before
        the study is told (a place on the front won by one lucky run is the front's winner's curse); True when
        it does. The trial stays in self.live, holding a worker's place, until its recheck ends."""
        k = self.search.recheck_seeds
        if not k or not self._enters_front(float(self.records[number].e_comp), float(result.get("val_error", math.nan))):
            return False
        seeds = recheck_seeds(self.config.seed, number, self.search.seeds_per_trial, k)
        spec = TaskSpec(self.specs[number].arch_json, self.config.train, seeds[0], diagnostics=False,
                        repeat_seeds=seeds[1:])
        self.rechecking[number] = result
        self.executor.submit((RECHECK, number), spec, self.data_ref)
        return True

    def _on_recheck(self, number: int, event: TrialEvent) -> None:
        first = self.rechecking.get(number)
        if first is None or event.kind == "report":
            return  # its reports reach neither the pruner nor the trial's history (the first task's)
        del self.rechecking[number]
        trial = self.live.pop(number)
        if event.kind == "result":
            self._finish_complete(trial, rechecked_result(first, event.payload or {}))
        else:  # nothing is lost: the trial is told its first task's result, and why the recheck is missing
            self._finish_complete(trial, {**first, "recheck_error": f"recheck failed: {event.reason or event.kind}"})

    def _on_report(self, trial: optuna.Trial, epoch: int, metrics: dict[str, float]) -> None:
        # Per-epoch curves live under "epoch/" so they never mix with the final metrics of the same name.
        self.tracker.log_metrics(trial.number, {f"{EPOCH_PREFIX}{k}": v for k, v in metrics.items()}, step=epoch,
                                 max_delay=TRACKING_DELAY)
        self.reports[trial.number].append(metrics)
        record = self.records[trial.number]
        if self.search.pruner == "dominance":
            self._prune_if_dominated(trial, record, epoch)
            return
        if self.search.mode != "scalar" or self.search.pruner == "none":
            return  # nothing would read the intermediate value: spare the storage a write per epoch
        f_epoch = energy(metrics["val_loss"], record.e_comp, self.search.lam, self.search.scale)
        trial.report(f_epoch, epoch)
        # A trial cheaper than every completed one extends the front's cheap end whatever its F: the median rule,
        # which compares F, would stop it (a small net learns slowly), so it runs on.
        if trial.should_prune() and any(macs <= record.e_comp for _, macs, _ in self.curves):
            self._stop_running(trial, f"pruner: F = {f_epoch:.4g} at epoch {epoch}", epoch)

    def _stop_running(self, trial: optuna.Trial, reason: str, epoch: int) -> None:
        """A pruner's verdict on a running trial: cancel its task and record it PRUNED after `epoch` epochs."""
        self.executor.cancel(trial.number)
        self._finish_pruned(trial, reason, epochs=epoch)  # it also drops the trial from self.live

    def _prune_if_dominated(self, trial: optuna.Trial, record: TrialRecord, epoch: int) -> None:
        if epoch < max(1, self.search.pruner_warmup_epochs) or len(self.curves) < min(5, self.search.n_startup_trials):
            return
        errors = best_so_far(m.get("val_error") for m in self.reports[trial.number])
        found = dominating_trial(self.curves, float(record.e_comp), errors)
        if found is not None:
            self._stop_running(trial, f"dominance: val error {errors[-1]:.4g} after {epoch} epochs, projected with the "
                                      f"best improvement seen, stays above trial {found[0]}'s {found[1]:.4g} at no "
                                      f"more MACs", epoch)

    # -- endings ------------------------------------------------------------------------------------------
    def _history(self, number: int) -> list[dict[str, float]]:
        """Per-epoch metrics reported so far (kept in the storage; NaN, unknown residuals, as None)."""
        return [{"epoch": epoch, **{k: (v if math.isfinite(v) else None) for k, v in m.items()}}
                for epoch, m in enumerate(self.reports.get(number, []), start=1)]

    def _finish_complete(self, trial: optuna.Trial, result: dict[str, Any], tags: dict[str, Any] | None = None) -> None:
        record = self.records[trial.number]
        e_cnn, val_error = float(result["val_loss"]), float(result["val_error"])
        f = energy(e_cnn, record.e_comp, self.search.lam, self.search.scale)
        record.epochs = int(result.get("epochs", 0))
        runs = list(result.get("runs") or [])
        record.epochs_trained = sum(int(r["epochs"]) for r in runs) if runs else record.epochs
        record.train_wall_time = float(result.get("wall_time", 0.0))
        record.diagnose_time = float(result.get("diagnose_time", 0.0)) if record.dispatched_at else 0.0
        extra = {k: float(result[k]) for k in ("loss_residual", "update_residual", "final_lr") if k in result}
        if runs:  # several training runs: how far apart they were (sample std), and what they cost together
            extra["val_error_std"] = statistics.stdev(float(r["val_error"]) for r in runs)
            if record.dispatched_at:  # trained here, not a reused result
                extra["epochs_trained"] = float(record.epochs_trained)
        if "recheck" in result:  # a front entrant, rechecked: the runs the recheck added, and what the first told
            extra.update(recheck_runs=float(result["recheck"]["runs"]),
                         val_error_first=float(result["recheck"]["val_error_first"]))
        diagnostics = {f"diag.{k}": float(v) for k, v in (result.get("diagnostics") or {}).items()}
        attrs = {ATTR.E_CNN: e_cnn, ATTR.VAL_ERROR: val_error, ATTR.F: f, ATTR.EPOCHS: record.epochs,
                 ATTR.FIXED_POINT: bool(result.get("fixed_point_reached", False)),
                 ATTR.WALL_TIME: record.train_wall_time, ATTR.FINAL_EXTRA: extra,
                 ATTR.HISTORY: self._history(trial.number), ATTR.DIAGNOSTICS: diagnostics}
        if runs:
            attrs[ATTR.RUNS] = runs
        tags = dict(tags or {})
        if result.get("recheck_error") and record.dispatched_at:
            attrs[ATTR.REASON] = tags[TAG_REASON] = result["recheck_error"]
        trial.set_user_attr(RESULT, attrs)
        values = (f,) if self.search.mode == "scalar" else (float(record.e_comp), val_error)
        self.study.tell(trial, values)
        record.state, record.values = "COMPLETE", values
        self.results_by_arch.setdefault(record.arch_id, (trial.number, result))
        if self.reports.get(trial.number):
            self._add_curve(trial.number, record.e_comp, attrs[ATTR.HISTORY])
        self._update_best(f)
        self.points.append(FrontPoint(trial.number, float(record.e_comp), val_error, record.params, record.arch_id,
                                      record.summary, point_extra(attrs)))
        final = {"E_comp": record.e_comp, "E_CNN": e_cnn, "F": f, "val_error": val_error, "epochs": record.epochs,
                 "fixed_point_reached": float(attrs[ATTR.FIXED_POINT]), "params": record.params,
                 "train_wall_time": record.train_wall_time}
        final.update(extra)
        final.update(diagnostics)
        if diagnostics and record.dispatched_at:  # trained here, not a reused result
            self._log_diagnostics_plot(trial.number, result["diagnostics"], record.summary)
        self.tracker.end_run(trial.number, "FINISHED", final, {TAG_STATE: "COMPLETE", **tags}, step=record.epochs)
        self.specs.pop(trial.number, None)
        self._after_trial(trial.number)

    def _finish_pruned(self, trial: optuna.Trial, reason: str, epochs: int = 0) -> None:
        record = self.records[trial.number]
        attrs = {ATTR.REASON: reason, ATTR.EPOCHS: epochs, ATTR.HISTORY: self._history(trial.number)}
        metrics = {"epochs": epochs, "E_comp": record.e_comp}
        if record.params:  # its curve was measured (not an infeasible proposal): as `nas sync` rebuilds the run
            metrics["params"] = record.params
        # the runs that trained in each reported epoch (one run per trial unless search.seeds_per_trial > 1)
        record.epochs_trained = epochs
        if self.search.seeds_per_trial > 1:
            record.epochs_trained = int(sum(m.get("seeds_training", 1) for m in self.reports.get(trial.number, [])[:epochs]))
            attrs[ATTR.FINAL_EXTRA] = {"epochs_trained": float(record.epochs_trained)}
            metrics["epochs_trained"] = record.epochs_trained
        trial.set_user_attr(RESULT, attrs)
        self.study.tell(trial, state=TrialState.PRUNED)
        record.state, record.reason, record.epochs = "PRUNED", reason, epochs
        self.live.pop(trial.number, None)
        self.specs.pop(trial.number, None)
        self.tracker.end_run(trial.number, "KILLED", metrics, {TAG_STATE: "PRUNED", TAG_REASON: reason}, step=epochs)
        self._after_trial(trial.number)

    def _finish_failed(self, trial: optuna.Trial, reason: str) -> None:
        record = self.records[trial.number]
        trial.set_user_attr(RESULT, {ATTR.REASON: reason})
        self.study.tell(trial, state=TrialState.FAIL)
        self.specs.pop(trial.number, None)
        record.state, record.reason = "FAIL", reason
        self.tracker.end_run(trial.number, "FAILED", None, {TAG_STATE: "FAIL", TAG_REASON: reason})
        self._after_trial(trial.number)

    def _after_trial(self, number: int) -> None:
        record = self.records[number]
        record.finished_at = time.perf_counter()
        hv = self.hypervolume()
        self.hv_history.append((number, hv))
        metrics = {"hypervolume": hv, "front_size": float(len(self.front)), "trials_finished": float(self.finished)}
        if self.best_f is not None:
            metrics["best_F"] = self.best_f
        # Written at most every TRACKING_DELAY seconds: one batch per trial would cost the writer a round trip each.
        self.tracker.log_metrics(PARENT, metrics, step=number, max_delay=TRACKING_DELAY)
        if record.state == "COMPLETE":
            self._log_front(force=False)
        if self.on_progress is not None:
            self.on_progress(self)

    # -- tracking ---------------------------------------------------------------------------------------
    def _start_child(self, number: int, arch: Architecture, seed: int) -> None:
        params = {f"arch.{k}": v for k, v in arch.flat_params().items()}
        params.update(seed=seed, trial_number=number, torch_threads=self.executor.threads_per_trial)
        tags = {TAG_KIND: "trial", TAG_STUDY: self.config.study_name, TAG_TRIAL: number, TAG_ARCH: arch.arch_id,
                TAG_STATE: "RUNNING", "summary": arch.summary()}
        # The params go out with the trial's first batch of metrics (one request fewer per trial), at most
        # TRACKING_DELAY seconds after the start.
        self.tracker.start_run(number, f"trial-{number:04d}", tags, params, parent=PARENT, params_delay=TRACKING_DELAY)
        self.tracker.log_dict(number, arch.to_dict(), "architecture.json")

    def _log_profile(self, number: int, arch: Architecture, costs: list[Any]) -> None:
        self.tracker.log_dict(number, profile_json(arch, costs), "complexity_profile.json")
        names = [c.name for c in costs if c.kind in ("conv", "linear")]
        macs = [c.macs for c in costs if c.kind in ("conv", "linear")]
        self.tracker.log_png(number, partial(profile_png, names, macs, f"trial {number}: {arch.summary()}"),
                             "complexity_profile.png")

    def _log_diagnostics_plot(self, number: int, diagnostics: dict[str, float], summary: str) -> None:
        init = {k[len("init."):]: v for k, v in diagnostics.items() if k.startswith("init.")}
        trained = {k[len("trained."):]: v for k, v in diagnostics.items() if k.startswith("trained.")}
        self.tracker.log_png(number, partial(diagnostics_png, init, trained, f"trial {number}: {summary}"),
                             "diagnostics.png")

    def _log_front(self, force: bool = True) -> None:
        # Rendering the plot costs ~150 ms of CPU: refresh it at most every 30 s while running (and at the end).
        now = time.perf_counter()
        if not force and now - self._front_logged_at < FRONT_REFRESH_SECONDS:
            return
        self._front_logged_at = now
        points, front = list(self.points), self.front
        self.tracker.log_dict(PARENT, front_json(front, self.hypervolume()), "front.json")
        title = f"{self.config.name}: {len(points)} trials, {len(front)} on the front"
        self.tracker.log_figure(PARENT, partial(front_figure, points, front, title), "front.png")

    # -- the final report ---------------------------------------------------------------------------------
    def final_report(self) -> dict[str, dict[str, Any]]:
        """Retrain each front member with `final_seeds` seeds; evaluate each once on the test split."""
        front = self.front
        seeds = self.search.final_seeds
        if not front or seeds == 0:
            self._log_front(force=True)
            return {}
        existing = dict(self.study.user_attrs.get("final_test", {}))
        refit = self.search.final_refit
        # A member without an entry under this protocol is tested: none yet, or one made under the other protocol
        # (or before there was a choice: no "refit" key).
        todo = [p for p in front if (e := existing.get(str(p.trial_number))) is None or e.get("refit", False) != refit]
        if todo:
            data_ref = self.executor.put(self.dataset)
            trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
            for point in todo:
                arch_json = Architecture.from_dict(trial_attrs(trials[point.trial_number])[ATTR.ARCH]).to_json()
                for k in range(seeds):
                    # Every retraining brings its weights back: the member's logged model is the first seed's that
                    # has weights (a seed whose task or refit failed has none), see `model_seed_index`.
                    spec = TaskSpec(arch_json, self.config.train, derive_seed(self.config.seed, point.trial_number, k + 1),
                                    evaluate_test=True, return_state=True, diagnostics=False, refit=refit)
                    self.executor.submit(("final", point.trial_number, k), spec, data_ref)
            payloads: dict[int, dict[int, dict[str, Any]]] = {p.trial_number: {} for p in todo}
            reasons: dict[int, list[str]] = {p.trial_number: [] for p in todo}
            for event in self.executor.wait_all():
                _, number, k = event.key
                if event.kind == "result" and event.payload:
                    payloads[number][k] = event.payload
                elif event.kind in ("error", "cancelled"):
                    reasons[number].append(event.reason)
            for number, by_seed in payloads.items():
                k = model_seed_index(by_seed)
                if k is not None:
                    self._log_model(number, trials[number], by_seed[k], seed_index=k)
                payloads[number] = {i: {key: v for key, v in p.items() if key != "state_dict"} for i, p in by_seed.items()}
            for number in payloads:
                entry = final_entry(refit, payloads[number], reasons[number], existing.get(str(number)))
                existing[str(number)] = entry
                if entry.get("refit") == refit and "test_accuracy_mean" in entry:
                    self.tracker.log_metrics(number, member_test_metrics(entry), step=0, flush=True)
            self.study.set_user_attr("final_test", existing)
        self._log_front(force=True)
        table = front_table(front, existing)
        self.tracker.log_text(PARENT, table, "front_table.md")
        self.tracker.log_dict(PARENT, front_json(front, self.hypervolume(), existing), "front.json")
        return existing


    def _log_model(self, number: int, trial: Any, payload: dict[str, Any], seed_index: int) -> None:
        """Log a front member's retrained network as an MLflow model on its trial's run."""
        import torch

        arch = Architecture.from_dict(trial_attrs(trial)[ATTR.ARCH])
        model = build_model(arch, self.dataset.input_shape, self.dataset.num_classes)
        model.load_state_dict({k: torch.tensor(v) for k, v in payload["state_dict"].items()})
        model.eval()
        example = self.dataset.x_test[:4]
        self.tracker.log_model(number, model, example, {
            "model_test_accuracy": float(payload["test_accuracy"]),
            "model_seed": float(derive_seed(self.config.seed, number, seed_index + 1))})


def model_seed_index(payloads: dict[int, dict[str, Any]]) -> int | None:
    """Which seed's network is a front member's logged model: the first, by seed index, whose final task
    brought weights back (a task whose refit failed brings none); None when no seed's did."""
    return min((k for k, payload in payloads.items() if "state_dict" in payload), default=None)


def final_entry(refit: bool, payloads: dict[int, dict[str, Any]], reasons: list[str],
                previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """A front member's entry of the study's ``final_test``, from its seeds' task results.

    Args:
        refit: the protocol the tasks ran under (``search.final_refit``).
        payloads: the result of each seed's task that finished, by seed index.
        reasons: why the other seeds' tasks failed.
        previous: the member's entry made under the other protocol, if any. When every seed failed this
            time, it is kept (with the new failures beside it), so a failed redo loses no result; the
            next run tries the redo again.
    """
    values, split, failures = [], [], list(reasons)
    for k in sorted(payloads):
        payload = payloads[k]
        if "test_accuracy" in payload:
            values.append(float(payload["test_accuracy"]))
        if "test_accuracy_train_split" in payload:
            split.append(float(payload["test_accuracy_train_split"]))
        if "refit_error" in payload:  # its split-trained run finished (and counts in `split`); the refit did not
            failures.append(payload["refit_error"])
    if not values and previous and "test_accuracy_mean" in previous:
        return {**previous, "redo_failures": failures}
    entry: dict[str, Any] = {"seeds": len(values), "refit": refit, "test_accuracy": values}
    if values:
        entry["test_accuracy_mean"] = statistics.fmean(values)
        entry["test_accuracy_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
    if split:  # with refit: the same runs' networks trained on the training split alone
        entry["test_accuracy_train_split"] = split
        entry["test_accuracy_train_split_mean"] = statistics.fmean(split)
    if failures:
        entry["failures"] = failures
    return entry


def front_json(front: list[FrontPoint], hv: float, final: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The front as plain data (what front.json holds and `nas front --json` prints)."""
    final = final or {}
    members = []
    for p in front:
        member = {"trial_number": p.trial_number, "arch_id": p.arch_id, "summary": p.summary, "macs": p.macs,
                  "params": p.params, "val_error": p.val_error, **(p.extra or {})}
        test = final.get(str(p.trial_number))
        if test and "test_accuracy_mean" in test:
            member.update(test_accuracy_mean=test["test_accuracy_mean"], test_accuracy_std=test["test_accuracy_std"],
                          test_seeds=test["seeds"], test_refit=bool(test.get("refit", False)))
            if "test_accuracy_train_split_mean" in test:
                member["test_accuracy_train_split_mean"] = test["test_accuracy_train_split_mean"]
        members.append(member)
    return {"hypervolume": hv, "front": members}


def front_table(front: list[FrontPoint], final: dict[str, dict[str, Any]] | None = None) -> str:
    """The front as a markdown table: one row per member, by increasing MACs."""
    final = final or {}
    lines = ["| trial | architecture | MACs | params | val error | test accuracy |",
             "|---:|:---|---:|---:|---:|:---|"]
    tested = [final.get(str(p.trial_number), {}) for p in front]
    mixed = len({bool(t.get("refit")) for t in tested if "test_accuracy_mean" in t}) > 1
    for p, test in zip(front, tested):
        acc = (f"{100 * test['test_accuracy_mean']:.2f} ± {100 * test['test_accuracy_std']:.2f}% "
               f"({test['seeds']} seeds)" if "test_accuracy_mean" in test else "—")
        if mixed and "test_accuracy_mean" in test and not test.get("refit"):
            acc += " (no refit)"  # kept from a run without the refit: its redo with it failed
        error = f"{100 * p.val_error:.2f}%"
        if (p.extra or {}).get("val_error_first") is not None:  # rechecked: the mean of its runs, and its first run's
            error += f" (first run {100 * p.extra['val_error_first']:.2f}%)"
        lines.append(f"| {p.trial_number} | {p.summary} | {int(p.macs):,} | {p.params:,} | {error} | {acc} |")
    if any(t.get("refit") for t in tested):
        lines.append("\nTest accuracy: each seed's network trained again on the training and validation splits "
                     "with its run's schedule (search.final_refit), then tested once.")
    return "\n".join(lines) + "\n"


def _streak(records: dict[int, TrialRecord], belongs: Callable[[TrialRecord], bool]) -> int:
    """How many of the latest `records` (kept in trial order) in a row belong."""
    return next((i for i, r in enumerate(reversed(records.values())) if not belongs(r)), len(records))


def run_search(config: Config, *, on_progress: Callable[[Any], None] | None = None,
               executor: RayExecutor | None = None) -> SearchOutcome:
    """Run (or resume) the search a config describes, to its budget of finished trials.

    Args:
        config: a validated config.
        on_progress: called after every finished trial with the search in progress (for a progress bar).
        executor: a started RayExecutor to reuse (tests share one local Ray); by default one is made from
            ``config.ray`` and shut down at the end.

    Returns:
        The outcome: trial records, the front and its hypervolume, and the final test results.

    Raises:
        DataError, ConfigError: before any trial starts, when the data or the config cannot be used.
    """
    started = time.perf_counter()
    dataset = load_dataset(config.data, config.seed)
    # One driver per study: a second one refuses here, before it touches the study or starts Ray.
    lock = StudyLock(storage_url(config), config.study_name).acquire()
    tracker = open_tracker(config.tracking, config.experiment_name)
    own_executor = executor is None
    try:
        if executor is None:
            r = config.ray
            executor = RayExecutor(r.address, r.parallelism, r.cpus_per_trial, r.gpus_per_trial, r.max_retries)
            executor.start()
        search = _Search(config, dataset, executor, tracker, on_progress)
        resolved = config_to_dict(config)
        resolved["search"]["storage"] = mask_secrets(config.search.storage)
        env = environment(executor.threads_per_trial)
        tags = {TAG_KIND: "search", TAG_STUDY: config.study_name, "dataset": dataset.name,
                "space": config.space.get("name"), "mode": config.search.mode,
                "storage": mask_secrets(config.search.storage), "data_fingerprint": dataset.fingerprint,
                "git_commit": env["git"]["commit"], "git_dirty": env["git"]["dirty"]}
        params = {k: mask_secrets(str(v)) for k, v in flatten(resolved).items()}
        tracker.call("open the search's runs", _open_search_runs, config.study_name, config.name, tags, params,
                     search.earlier, tuple(dataset.input_shape), dataset.num_classes, adopts_runs=True)
        tracker.log_text(PARENT, _yaml(resolved), "config.yaml")
        tracker.log_dict(PARENT, {**env, "data": {"fingerprint": dataset.fingerprint, **dataset.sizes(),
                                  "input_shape": list(dataset.input_shape), "num_classes": dataset.num_classes}},
                         "environment.json")
        search.run()
        loop_done = time.perf_counter()
        final = search.final_report()
        hv_steps = [s for s, _ in search.hv_history]
        hv_values = [v for _, v in search.hv_history]
        if hv_steps:
            tracker.log_figure(PARENT, partial(hypervolume_figure, hv_steps, hv_values, f"{config.name}: hypervolume"),
                               "hypervolume.png")
        tracker.end_run(PARENT, "FINISHED", {"wall_time": time.perf_counter() - started}, step=search.search.n_trials)
        if not tracker.flush(timeout=config.tracking.flush_timeout):
            log.warning("%d MLflow writes are still queued (is the tracking server at %s up?); the Optuna storage "
                        "keeps every record: run `nas sync CONFIG` to rebuild the MLflow runs", tracker.backlog,
                        mask_secrets(config.tracking.uri))
        drain_time = time.perf_counter() - loop_done
        return SearchOutcome(
            study_name=config.study_name, records=search.records, points=search.points, front=search.front,
            hypervolume=search.hypervolume(), best_f=search.best_f, final_test=final,
            wall_time=time.perf_counter() - started, parent_run_id=tracker.run_id(PARENT),
            hypervolume_history=search.hv_history, loop_time=search.loop_time, drain_time=drain_time,
            tracking_seconds={k: list(v) for k, v in tracker.write_seconds.items()})
    finally:
        tracker.close(timeout=0 if tracker.backlog else 10)
        if own_executor and executor is not None:
            executor.shutdown()
        lock.release()


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


__all__ += ["front_json", "front_table"]
