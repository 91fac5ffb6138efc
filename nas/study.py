"""The Optuna side of a search: study creation (sampler, pruner, directions) and reading a study back.

The driver (`nas.search`) is the only Optuna client; this module holds what it and the CLI share.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.config import Config, expand_env, mask_secrets
from nas.energy import FrontPoint, pareto_front
from nas.errors import ConfigError
from nas.journal import PostgresJournalBackend, is_journal_url

__all__ = ["trial_attrs", "RECORD", "RESULT", "derive_seed", "make_sampler", "make_pruner", "open_study", "storage_url", "front_points",
           "FINISHED_STATES", "ATTR", "BUDGET_REASON", "over_budget", "repeat_seeds", "recheck_seeds", "result_runs", "rechecked_result", "point_extra"]

FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
BUDGET_REASON = "budget:"  # how the reason of a proposal over search.max_macs starts (it is never profiled)


def over_budget(reason: object) -> bool:
    """Whether a trial's reason says it was a proposal over search.max_macs: never trained nor profiled."""
    return str(reason or "").startswith(BUDGET_REASON)


class ATTR:
    """Names of the user attributes a trial keeps in the storage (the storage is the source of truth)."""

    ARCH = "arch"
    ARCH_ID = "arch_id"
    SUMMARY = "summary"
    E_COMP = "E_comp"
    PARAMS = "params"
    SEED = "seed"
    E_CNN = "E_CNN"
    VAL_ERROR = "val_error"
    F = "F"
    EPOCHS = "epochs"
    FIXED_POINT = "fixed_point_reached"
    REASON = "reason"
    DUPLICATE_OF = "duplicate_of"
    WALL_TIME = "train_wall_time"
    HISTORY = "history"  # per-epoch metrics, so MLflow can be rebuilt from the storage alone
    FINAL_EXTRA = "final_extra"  # the trainer's final residuals and step size
    RUNS = "runs"  # several training runs (seeds_per_trial > 1, or a recheck): each run's seed, val loss and error, epochs
    DIAGNOSTICS = "diagnostics"  # geometry of the curve at initialization and trained (diag.init.*, diag.trained.*)
    REQUEUED = "requeued"  # failed because its driver died; its architecture was enqueued again


RECORD = "record"  # written once when a trial is dispatched: the architecture, its curve, the seed
RESULT = "result"  # written once when it ends: results, history, or the reason it failed or was pruned


def trial_attrs(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's attributes as one flat mapping (keys of `ATTR`).

    The driver writes them as two user attributes, ``record`` and ``result``: each user attribute is a
    storage transaction, and one per key (a dozen per trial) capped the driver's throughput.
    """
    flat = {k: v for k, v in trial.user_attrs.items() if k not in (RECORD, RESULT)}
    flat.update(trial.user_attrs.get(RECORD) or {})
    flat.update(trial.user_attrs.get(RESULT) or {})
    return flat


def derive_seed(study_seed: int, trial_number: int, replicate: int = 0) -> int:
    """A trial's seed from the study seed, its number and a replicate index (stable across machines).

    Replicate 0 is the trial's (first) training run, 1.. the final test's seeds, -1.. the further training runs of
    a trial (`search.seeds_per_trial`).
    """
    digest = hashlib.sha256(f"{study_seed}:{trial_number}:{replicate}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def repeat_seeds(study_seed: int, trial_number: int, runs: int) -> tuple[int, ...]:
    """The seeds of a trial's further training runs beyond its first (`search.seeds_per_trial` = `runs`)."""
    return tuple(derive_seed(study_seed, trial_number, -j) for j in range(1, runs))


def recheck_seeds(study_seed: int, trial_number: int, seeds_per_trial: int, recheck: int) -> tuple[int, ...]:
    """The seeds of a front entrant's recheck (`search.recheck_seeds` = `recheck`): the trial's next further
    training-run seeds after the ``seeds_per_trial - 1`` its first task trained."""
    return repeat_seeds(study_seed, trial_number, seeds_per_trial + recheck)[seeds_per_trial - 1:]


RUN_KEYS = ("seed", "val_loss", "val_error", "epochs", "best_epoch", "fixed_point_reached")


def result_runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each training run's own outcome in a task's result: its ``runs`` (several seeds), or the one run it was."""
    return list(result.get("runs") or []) or [{k: result[k] for k in RUN_KEYS}]


def rechecked_result(first: dict[str, Any], recheck: dict[str, Any]) -> dict[str, Any]:
    """A trial's result after its recheck: the mean over the runs of its first task and of the recheck's.

    ``val_loss`` and ``val_error`` are the means of every run's own (each at its best epoch), ``epochs`` the
    longest run's, ``fixed_point_reached`` whether every run reached its fixed point, the residuals the largest
    (unknown if one is), ``wall_time`` the two tasks' together, ``runs`` every run; the rest (the history, the
    diagnostics, the first seed) stays the first task's. ``recheck`` holds how many runs the recheck added and
    the first task's validation error, which made the trial a front entrant.
    """
    runs = result_runs(first) + result_runs(recheck)

    def largest(name: str) -> float:
        values = [float(r.get(name, math.nan)) for r in (first, recheck)]
        return math.nan if any(math.isnan(v) for v in values) else max(values)

    return {**first, "val_loss": statistics.fmean(float(r["val_loss"]) for r in runs),
            "val_error": statistics.fmean(float(r["val_error"]) for r in runs),
            "epochs": max(int(r["epochs"]) for r in runs),
            "fixed_point_reached": all(bool(r["fixed_point_reached"]) for r in runs),
            "loss_residual": largest("loss_residual"), "update_residual": largest("update_residual"),
            "wall_time": float(first.get("wall_time", 0.0)) + float(recheck.get("wall_time", 0.0)), "runs": runs,
            "recheck": {"runs": len(result_runs(recheck)), "val_error_first": float(first["val_error"])}}


def make_sampler(config: Config, **tpe_options: Any) -> optuna.samplers.BaseSampler:
    """The config's sampler; `tpe_options` override TPESampler's arguments (for experiments: benchmarks)."""
    search = config.search
    seed = config.seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if search.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if search.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, search.n_startup_trials))
        if search.sampler == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=search.n_startup_trials,
                                             warn_independent_sampling=False)
        # multivariate + group: the space is conditional (per-layer keys exist only up to the sampled depth).
        return optuna.samplers.TPESampler(**{"seed": seed, "n_startup_trials": search.n_startup_trials,
                                             "multivariate": True, "group": True, "constant_liar": True, **tpe_options})


def make_pruner(config: Config) -> optuna.pruners.BasePruner:
    search = config.search
    if search.mode == "pareto" or search.pruner in ("none", "dominance"):
        # Optuna cannot prune multi-objective trials; the fixed-point rule still ends each run. The dominance
        # pruner lives in the driver (nas.search), which knows every trial's MACs and per-epoch errors.
        return optuna.pruners.NopPruner()
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, search.pruner_warmup_epochs),
                                                      reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=min(5, search.n_startup_trials),
                                       n_warmup_steps=search.pruner_warmup_epochs)


def storage_url(config: Config) -> str:
    """The storage URL with ``${ENV}`` secrets expanded (never log the result: use `mask_secrets`)."""
    url = expand_env(config.search.storage, "search.storage")
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return url


def make_storage(url: str) -> optuna.storages.BaseStorage | str:
    """An Optuna storage for `url`: SQLite in WAL mode with ``synchronous=NORMAL``; Optuna's journal in one
    PostgreSQL table for ``journal+postgresql://`` (`nas.journal`); other URLs as Optuna opens them.

    SQLite's default journal syncs the disk on every commit (several ms each), and a trial takes about a
    dozen commits; in WAL mode a commit is a fraction of a millisecond, readers (``nas front`` during a
    search) do not block the writer, and a crash loses at most the last commits, never the file.
    """
    if is_journal_url(url):
        return optuna.storages.JournalStorage(PostgresJournalBackend(url))
    if not url.startswith("sqlite:"):
        return url
    import sqlalchemy

    storage = optuna.storages.RDBStorage(url)

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections made while creating the schema did not get the pragmas
    return storage


def open_study(config: Config) -> optuna.Study:
    """Create the study, or load it when it exists (a rerun of the same config resumes it).

    Raises:
        ConfigError: if the stored study was made for another mode (one vs two objectives).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["minimize"] if config.search.mode == "scalar" else ["minimize", "minimize"]
    url = storage_url(config)
    try:
        study = optuna.create_study(storage=make_storage(url), study_name=config.study_name, sampler=make_sampler(config),
                                    pruner=make_pruner(config), directions=directions, load_if_exists=True)
    except Exception as exc:  # noqa: BLE001 - a storage that cannot be opened is the user's URL at fault
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"search.storage {mask_secrets(url)!r} cannot be opened: {type(exc).__name__}: "
                          f"{mask_secrets(str(exc)).splitlines()[0]}") from None
    if len(study.directions) != len(directions):
        raise ConfigError(f"search.mode is {config.search.mode!r}, but the stored study {config.study_name!r} has "
                          f"{len(study.directions)} objective(s); use another search.study_name")
    return study


def front_points(trials: list[FrozenTrial]) -> list[FrontPoint]:
    """Completed trials as points of the (E_comp, validation error) plane."""
    points = []
    for t in trials:
        a = trial_attrs(t)
        if t.state != TrialState.COMPLETE or ATTR.E_COMP not in a:
            continue
        points.append(FrontPoint(trial_number=t.number, macs=float(a[ATTR.E_COMP]), val_error=float(a[ATTR.VAL_ERROR]),
                                 params=int(a.get(ATTR.PARAMS, 0)), arch_id=str(a.get(ATTR.ARCH_ID, "")),
                                 summary=str(a.get(ATTR.SUMMARY, "")),
                                 extra=point_extra(a)))
    return points


def point_extra(attrs: dict[str, Any]) -> dict[str, Any]:
    """What a front point carries besides MACs and error, from a completed trial's attributes: F, E_CNN, epochs,
    and for a rechecked front entrant (`search.recheck_seeds`) the first task's error, `val_error_first`."""
    extra = {"F": attrs.get(ATTR.F), "E_CNN": attrs.get(ATTR.E_CNN), "epochs": attrs.get(ATTR.EPOCHS)}
    first = (attrs.get(ATTR.FINAL_EXTRA) or {}).get("val_error_first")
    if first is not None:
        extra["val_error_first"] = first
    return extra


def study_front(study: optuna.Study) -> tuple[list[FrontPoint], list[FrontPoint]]:
    """(all completed points, the front) of a stored study."""
    points = front_points(study.get_trials(deepcopy=False))
    return points, pareto_front(points)


def final_results(study: optuna.Study) -> dict[str, Any]:
    """Test accuracies of front members from the final report, keyed by trial number (as text)."""
    return dict(study.user_attrs.get("final_test", {}))
