"""The seed paper's claims as reproducible experiments: ``nas experiment NAME CONFIG``.

Each experiment states a hypothesis, measures, and says whether the numbers support it (verdicts are
computed from the measurements, never written in advance). It writes a report (``report.md``,
``results.json`` and PNG figures) to ``--out`` (default ``runs/experiments/NAME``) and logs the same
files as artifacts of one MLflow run (tag ``geonas.kind = experiment``) in the MLflow experiment
``experiment.NAME`` of the config's tracking store; the searches it runs are logged there too.

* ``activation-depth``: plain CNNs without normalization at growing depth with ReLU (He), sigmoid
  (Xavier) and tanh at critical initialization: accuracy, epochs to the fixed point, and the geometry
  diagnostics (trajectory length, Jacobian at initialization) against depth.
* ``locality``: MNIST-1D unshuffled and spatially shuffled, digits with blocks of 4x4 and 2x2 pixels
  permuted by one fixed permutation or a fresh one per image: the best CNN of a small search against
  the best MLP (no convolution) at the same budget.
* ``depth-sweep``: the best validation error a small search reaches at each depth of a CNN.

The config gives the data, space, training, search, tracking and Ray settings; ``--set`` overrides it
as for ``nas search``; ``--param KEY=VALUE`` sets the experiment's own sizes (depths, trials, ...);
``--quick`` uses tiny sizes (for tests).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from nas.errors import GeonasError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from nas.config import Config
    from nas.data import Dataset
    from workers.ray_adapter import RayExecutor

__all__ = ["EXPERIMENTS", "Experiment", "Verdict", "Report", "run_experiment", "add_parser", "run",
           "train_and_diagnose"]

TAG_EXPERIMENT = "experiment"
DEFAULT_OUT = Path("runs") / "experiments"


# -- the report ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """One claim, whether the measurements support it (None: not testable with these settings), and why."""

    claim: str
    supported: bool | None
    evidence: str

    @property
    def label(self) -> str:
        return {True: "supported", False: "not supported", None: "not tested"}[self.supported]


@dataclass
class Report:
    """What an experiment produced: text sections, verdicts, figures, flat metrics and raw results."""

    name: str
    hypothesis: str
    setup: str
    sections: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)  # file name -> matplotlib Figure
    metrics: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    wall_time: float = 0.0

    def markdown(self, command: str) -> str:
        lines = [f"# Experiment `{self.name}`", "", f"Command: `{command}`", "",
                 f"Wall time: {self.wall_time:.0f} s.", "", "## Hypothesis", "", self.hypothesis, "",
                 "## Setup", "", self.setup, "", "## Verdicts (computed from the numbers below)", ""]
        for verdict in self.verdicts:
            lines.append(f"- **{verdict.label}**: {verdict.claim} — {verdict.evidence}")
        lines.append("")
        lines.extend(self.sections)
        if self.figures:
            lines += ["## Figures", ""]
            lines += [f"![{name}]({name})" for name in self.figures]
            lines.append("")
        return "\n".join(lines)


# -- experiment parameters ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Experiment:
    """An experiment: its hypothesis, its parameters at default and quick size, and the function running it."""

    name: str
    hypothesis: str
    defaults: Mapping[str, Any]
    quick: Mapping[str, Any]
    body: Callable[["Context"], Report]


def _parse_params(experiment: Experiment, assignments: Sequence[str], quick: bool) -> dict[str, Any]:
    """The experiment's parameters: defaults, then the quick sizes, then ``KEY=VALUE`` (YAML values).

    Raises:
        GeonasError: naming an unknown key (listing the allowed ones) or a value of the wrong type.
    """
    params = dict(experiment.defaults)
    if quick:
        params.update(experiment.quick)
    for assignment in assignments:
        if "=" not in assignment:
            raise GeonasError(f"--param expects KEY=VALUE, but got {assignment!r}")
        key, raw = (part.strip() for part in assignment.split("=", 1))
        if key not in experiment.defaults:
            raise GeonasError(f"unknown parameter {key!r} of experiment {experiment.name!r}; "
                              f"allowed: {', '.join(experiment.defaults)}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        params[key] = _check_param(experiment.name, key, value, experiment.defaults[key])
    return params


# Integer parameters that count something that must exist (the others may be 0).
_AT_LEAST_ONE = ("n_trials", "seeds", "workers", "width", "kernel_size", "mlp_max_layers")


def _check_param(name: str, key: str, value: Any, default: Any) -> Any:
    def bad(kind: str) -> GeonasError:
        return GeonasError(f"parameter {key!r} of experiment {name!r} must be {kind}, but got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        low = 1 if key in _AT_LEAST_ONE else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(f"an integer >= {low}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        value = float(value)
    elif isinstance(default, list):
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            # a bare value or "2,4,8": a list of one or more items, each read as YAML
            value = [value] if not isinstance(value, str) else [yaml.safe_load(v) for v in value.split(",")]
        if not isinstance(value, list) or not value:
            raise bad("a non-empty list")
        kind = type(default[0]) if default else str
        if kind is int:
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
                raise bad("a list of integers >= 0")
        else:
            value = [str(v) for v in value]
    elif default is None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise bad("an integer >= 1 or null")
    return value


# -- running ------------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What an experiment body gets: the config, its parameters, a logger and a shared Ray executor."""

    name: str
    config: "Config"
    params: dict[str, Any]
    log: Callable[[str], None]
    executor_factory: Callable[[], "RayExecutor"]
    _executor: "RayExecutor | None" = None
    _datasets: dict[Any, "Dataset"] = field(default_factory=dict)

    @property
    def executor(self) -> "RayExecutor":
        if self._executor is None:
            self._executor = self.executor_factory()
        return self._executor

    def dataset(self, data: Mapping[str, Any]) -> "Dataset":
        """The dataset of the config's data section with `data` overriding it (cached)."""
        from nas.config import DataConfig
        from nas.data import load_dataset

        merged = {**dataclasses.asdict(self.config.data), **data}
        key = tuple(sorted(merged.items()))
        if key not in self._datasets:
            self._datasets[key] = load_dataset(DataConfig(**merged), self.config.seed)
        return self._datasets[key]

    def derived_config(self, tag: str, changes: Mapping[str, Mapping[str, Any]]) -> "Config":
        """The config with sections updated by `changes`, a study of its own and this experiment's MLflow
        experiment: the study name carries a digest of the resolved settings (everything but the stores),
        so rerunning the same experiment resumes its finished studies and changed settings start new ones."""
        from nas.config import config_from_dict, config_to_dict

        data = config_to_dict(self.config)
        for section, values in changes.items():
            data[section] = {**data[section], **values}
        data["search"]["study_name"] = None
        data["tracking"]["experiment"] = f"experiment.{self.name}"
        settings = {k: v for k, v in data.items() if k not in ("tracking",)}
        settings["search"] = {k: v for k, v in data["search"].items() if k != "storage"}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
        data["search"]["study_name"] = f"{self.config.name}.{self.name}.{tag}.{digest.hexdigest()[:8]}"
        return config_from_dict(data)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None


def _default_executor(config: "Config") -> Callable[[], "RayExecutor"]:
    def make() -> "RayExecutor":
        from workers.ray_adapter import RayExecutor

        r = config.ray
        executor = RayExecutor(r.address, r.parallelism, r.cpus_per_trial, r.gpus_per_trial, r.max_retries)
        executor.start()
        return executor

    return make


def run_experiment(name: str, config: "Config", params: Mapping[str, Any] | None = None, *,
                   out: str | Path | None = None, quick: bool = False, executor: "RayExecutor | None" = None,
                   command: str = "", log: Callable[[str], None] | None = None) -> Report:
    """Run experiment `name` on `config`, write its report to `out` and log it to MLflow.

    Args:
        name: a key of EXPERIMENTS.
        config: the validated config (data, space, train, search, tracking, ray).
        params: the experiment's parameters over its defaults (checked like ``--param``).
        out: the report folder (default ``runs/experiments/NAME``).
        quick: start from the experiment's tiny sizes.
        executor: a started RayExecutor to reuse (tests share one); by default one from ``config.ray``.
        command: the command line to print in the report.
        log: progress messages (default: stderr).

    Returns:
        The report (also written as ``report.md``, ``results.json`` and PNGs).

    Raises:
        GeonasError: an unknown experiment or parameter, or a config the experiment cannot use.
    """
    if name not in EXPERIMENTS:
        raise GeonasError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    experiment = EXPERIMENTS[name]
    assignments = [f"{k}={json.dumps(v)}" for k, v in (params or {}).items()]
    resolved = _parse_params(experiment, assignments, quick)
    folder = Path(out) if out is not None else DEFAULT_OUT / name
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    factory = (lambda: executor) if executor is not None else _default_executor(config)
    context = Context(name, config, resolved, log, factory)
    started = time.perf_counter()
    try:
        report = experiment.body(context)
    finally:
        if executor is None:
            context.close()
    report.wall_time = time.perf_counter() - started
    report.results.setdefault("params", resolved)
    _write(report, folder, command or f"nas experiment {name} ...")
    _log_to_mlflow(report, config, resolved, folder)
    log(f"[{name}] report written to {folder / 'report.md'}")
    return report


def _write(report: Report, folder: Path, command: str) -> None:
    from nas.plots import close

    folder.mkdir(parents=True, exist_ok=True)
    for file, figure in report.figures.items():
        figure.savefig(folder / file)
        close(figure)
    (folder / "report.md").write_text(report.markdown(command))
    results = {"name": report.name, "hypothesis": report.hypothesis, "wall_time_s": report.wall_time,
               "verdicts": [{"claim": v.claim, "supported": v.supported, "evidence": v.evidence}
                            for v in report.verdicts],
               "metrics": report.metrics, **report.results}
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _log_to_mlflow(report: Report, config: "Config", params: Mapping[str, Any], folder: Path) -> None:
    from mlflow.entities import Metric, Param, RunTag

    from nas.config import config_to_dict, flatten, mask_secrets
    from nas.tracking import TAG_KIND, client_for, experiment_id

    client = client_for(config.tracking.uri)
    exp = experiment_id(client, f"experiment.{report.name}", config.tracking.artifact_location)
    tags = {TAG_KIND: "experiment", TAG_EXPERIMENT: report.name, "config_name": config.name}
    for index, verdict in enumerate(report.verdicts):
        tags[f"verdict.{index}"] = f"{verdict.label}: {verdict.claim}"[:5000]
    run = client.create_run(exp, run_name=report.name, tags=tags)
    run_id = run.info.run_id
    resolved = config_to_dict(config)
    resolved["search"]["storage"] = mask_secrets(config.search.storage)
    all_params = {f"config.{k}": mask_secrets(str(v)) for k, v in flatten(resolved).items()}
    all_params.update({f"param.{k}": json.dumps(v) for k, v in params.items()})
    param_list = [Param(k, v[:6000]) for k, v in all_params.items()]
    for start in range(0, len(param_list), 100):
        client.log_batch(run_id, params=param_list[start:start + 100], synchronous=True)
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in report.metrics.items() if isinstance(v, (int, float))]
    metrics.append(Metric("wall_time", report.wall_time, now, 0))
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000], synchronous=True)
    client.log_batch(run_id, tags=[RunTag("verdicts_supported", str(sum(v.supported is True for v in report.verdicts)))],
                     synchronous=True)
    client.log_artifacts(run_id, str(folder))
    client.set_terminated(run_id, "FINISHED")
    report.results["mlflow_run_id"] = run_id


# -- training with diagnostics (activation-depth) --------------------------------------------------------------
@dataclass(frozen=True)
class _DataArrays:
    """The splits a trainer reads, as plain arrays (picklable to worker processes)."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    num_classes: int


def train_and_diagnose(arch_json: str, data: Any, train: Any, seed: int, threads: int = 1) -> dict[str, Any]:
    """Train one architecture to its fixed point and diagnose it at initialization and trained.

    Runs in a worker process (or in-process): builds the seeded model, runs ``workers.diagnose`` on it,
    trains it (``workers.fit``), diagnoses the trained weights, and returns plain data.

    Returns:
        ``{"result": TrialResult.to_dict() without history, "init": {...}, "trained": {...}}``, or
        ``{"error": message}`` when training diverged.
    """
    import torch

    from search_spaces import Architecture, layer_costs
    from workers import TrainingDiverged, diagnose, fit, seeded_model

    torch.set_num_threads(max(1, threads))
    arch = Architecture.from_json(arch_json)
    costs = layer_costs(arch, tuple(data.x_train.shape[1:]), int(data.num_classes))
    model = seeded_model(arch, data, seed)
    init_started = time.perf_counter()
    init = diagnose(model, arch, data.x_val, costs, seed=seed)
    diagnose_time = time.perf_counter() - init_started
    try:
        result, model = fit(model, data, train, seed=seed)
    except TrainingDiverged as exc:
        return {"error": str(exc), "init": init}
    trained_started = time.perf_counter()
    trained = diagnose(model, arch, data.x_val, costs, seed=seed)
    diagnose_time += time.perf_counter() - trained_started
    payload = result.to_dict()
    payload.pop("history", None)
    return {"result": payload, "init": init, "trained": trained, "diagnose_time": diagnose_time}


def _run_jobs(jobs: Sequence[tuple[str, Any, Any, int]], workers: int, log: Callable[[str], None],
              label: Callable[[int], str]) -> list[dict[str, Any]]:
    """Run ``train_and_diagnose(*job)`` for every job, in `workers` processes (1: in this process)."""
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers <= 1:
        for index, job in enumerate(jobs):
            results[index] = train_and_diagnose(*job)
            log(f"  done {label(index)}")
        return [r or {} for r in results]
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fork after torch threads started is unsafe
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(train_and_diagnose, *job): index for index, job in enumerate(jobs)}
        for future in concurrent.futures.as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            log(f"  done {label(index)}")
    return [r or {} for r in results]


def _arrays(dataset: "Dataset") -> _DataArrays:
    return _DataArrays(dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val, dataset.num_classes)


def _train_config(context: Context) -> Any:
    max_epochs = context.params.get("max_epochs")
    train = context.config.train
    return dataclasses.replace(train, max_epochs=max_epochs) if max_epochs else train


# -- helpers for verdicts and tables -----------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}g}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def _log_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log10(y) against x (NaN with fewer than two positive points)."""
    points = [(x, math.log10(y)) for x, y in zip(xs, ys) if y is not None and y > 0 and math.isfinite(y)]
    if len(points) < 2 or len({x for x, _ in points}) < 2:
        return math.nan
    slope, _ = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return slope


# ===============================================================================================================
# 1. activation-depth
ACTIVATION_DEPTH_HYPOTHESIS = (
    "The seed paper (section III-A) argues that ReLU works better than the sigmoid in deep CNNs because the "
    "sigmoid is 'too complex' a nonlinearity. Mean-field theory (Poole et al. 2016; Schoenholz et al. 2017) "
    "explains the same observation by criticality at initialization instead: a sigmoid network with Xavier "
    "initialization is in the ordered phase (χ1 ≈ 0.06 < 1), so signals and gradients vanish geometrically "
    "with depth, while ReLU with He initialization (χ1 = 1) and tanh at its critical initialization "
    "(σ_w² ≈ 1.76, σ_b² = 0.05) propagate them. Expected: sigmoid stalls beyond a few layers, ReLU trains "
    "deeper, critical tanh matches ReLU — a smooth saturating nonlinearity is not the problem, its "
    "initialization is.")


def _activation_depth(context: Context) -> Report:
    from search_spaces import CNNArchitecture, layer_costs

    p = context.params
    dataset = context.dataset({})
    train = _train_config(context)
    depths, activations, seeds = list(p["depths"]), list(p["activations"]), int(p["seeds"])
    archs: list[tuple[str, int, int, Any]] = []
    for activation in activations:
        for depth in depths:
            if depth < 1:
                raise GeonasError(f"parameter 'depths' of activation-depth must be >= 1, but got {depth}")
            try:
                arch = CNNArchitecture((p["width"],) * depth, (p["kernel_size"],) * depth, activation, False, "none",
                                       1, "flatten")
                layer_costs(arch, dataset.input_shape, dataset.num_classes)
            except ValueError as exc:  # an unknown activation, an even kernel size
                raise GeonasError(f"activation-depth: {exc}") from None
            for seed in range(seeds):
                archs.append((activation, depth, seed, arch))
    data = _arrays(dataset)
    from nas.study import derive_seed

    jobs = [(arch.to_json(), data, train, derive_seed(context.config.seed, depth, seed)) for _, depth, seed, arch in archs]
    context.log(f"[activation-depth] {len(jobs)} trainings on {dataset.name} {dataset.input_shape}, "
                f"{p['workers']} process(es)")
    outputs = _run_jobs(jobs, int(p["workers"]), context.log,
                        lambda i: f"{archs[i][0]} depth {archs[i][1]} seed {archs[i][2]}")
    chance = 1.0 / dataset.num_classes
    runs = []
    for (activation, depth, seed, arch), output in zip(archs, outputs):
        entry: dict[str, Any] = {"activation": activation, "depth": depth, "seed": seed, "arch": arch.summary(),
                                 "init": output.get("init", {}), "trained": output.get("trained", {})}
        if "result" in output:
            r = output["result"]
            entry.update(val_accuracy=1 - r["val_error"], val_loss=r["val_loss"], epochs=r["epochs"],
                         fixed_point=r["fixed_point_reached"], wall_time=r["wall_time"],
                         diagnose_time=output.get("diagnose_time", 0.0))
        else:
            entry.update(val_accuracy=chance, epochs=0, fixed_point=False, error=output.get("error", "failed"))
        runs.append(entry)

    def cell(activation: str, depth: int, key: str, phase: str | None = None) -> float:
        values = [(r[phase].get(key, math.nan) if phase else r.get(key, math.nan)) for r in runs
                  if r["activation"] == activation and r["depth"] == depth]
        return _mean([float(v) for v in values])

    threshold = float(p["trainable_accuracy"])
    summary = {a: {d: {"val_accuracy": cell(a, d, "val_accuracy"), "epochs": cell(a, d, "epochs"),
                       "fixed_point": cell(a, d, "fixed_point"),
                       "init_jacobian_msv": cell(a, d, "jacobian_msv", "init"),
                       "init_traj_growth": cell(a, d, "traj_growth_mean", "init"),
                       "trained_traj_growth": cell(a, d, "traj_growth_mean", "trained")}
                   for d in depths} for a in activations}
    verdicts = _activation_depth_verdicts(summary, depths, threshold)

    rows = []
    for a in activations:
        for d in depths:
            s = summary[a][d]
            fixed = "yes" if s["fixed_point"] >= 0.5 else "no (cap)"
            rows.append([a, str(d), _pct(s["val_accuracy"]), f"{s['epochs']:.0f}", fixed,
                         _num(s["init_jacobian_msv"]), _num(s["init_traj_growth"]), _num(s["trained_traj_growth"])])
    table = _table(["activation", "depth", "val accuracy", "epochs", "fixed point", "Jacobian msv (init)",
                    "trajectory growth/layer (init)", "(trained)"], rows)
    metrics = {f"{a}.d{d}.{k}": v for a in activations for d in depths for k, v in summary[a][d].items()
               if isinstance(v, float) and math.isfinite(v)}

    from nas.diagnostic_plots import series_figure

    figures = {
        "accuracy_vs_depth.png": series_figure(
            depths, {a: [summary[a][d]["val_accuracy"] for d in depths] for a in activations}, xlabel="depth (conv layers)",
            ylabel="validation accuracy", title=f"{dataset.name}: accuracy against depth", logx=True, hline=chance,
            hline_label="chance"),
        "epochs_vs_depth.png": series_figure(
            depths, {a: [summary[a][d]["epochs"] for d in depths] for a in activations}, xlabel="depth (conv layers)",
            ylabel="epochs trained (to the fixed point or the cap)", title="epochs against depth", logx=True,
            hline=float(train.max_epochs), hline_label="max_epochs"),
        "jacobian_vs_depth.png": series_figure(
            depths, {a: [summary[a][d]["init_jacobian_msv"] for d in depths] for a in activations},
            xlabel="depth (conv layers)", ylabel="mean squared singular value of J (init)",
            title="signal propagation at initialization", logx=True, logy=True),
        "trajectory_growth_vs_depth.png": series_figure(
            depths, {f"{a} {phase}": [summary[a][d][f"{phase}_traj_growth"] for d in depths]
                     for a in activations for phase in ("init", "trained")},
            xlabel="depth (conv layers)", ylabel="trajectory length growth per layer (geometric mean)",
            title="trajectory length growth (Raghu et al. 2017)", logx=True, logy=True, hline=1.0),
    }
    deepest = max(depths)
    from nas.diagnostic_plots import diagnostics_figure

    for a in activations:
        run = next((r for r in runs if r["activation"] == a and r["depth"] == deepest), None)
        if run and run["init"]:
            figures[f"diagnostics_{a}_d{deepest}.png"] = diagnostics_figure(
                run["init"], run["trained"], f"{a}, depth {deepest}: trajectory length per layer")
    diag_time = sum(r.get("diagnose_time", 0.0) for r in runs)
    train_time = sum(r.get("wall_time", 0.0) for r in runs)
    setup = (f"Data: {dataset.name}, input {dataset.input_shape}, {len(dataset.y_train)} train / {len(dataset.y_val)} "
             f"validation samples (chance {_pct(chance)}). Plain CNNs without normalization: depth x conv("
             f"{p['width']} channels, kernel {p['kernel_size']}, padding same, bias) -> activation, no downsampling, "
             f"flatten -> linear. Activations and initializations: relu = He, sigmoid = Xavier (gain 1), "
             f"tanh_critical = N(0, 1.76/fan_in) weights and N(0, 0.05) biases. Training: {train.optimizer}, lr "
             f"{train.lr}, batch {train.batch_size}, to the fixed point or {train.max_epochs} epochs; {seeds} seed(s) "
             f"per cell. 'Trainable' means validation accuracy >= {_pct(threshold)}. Diagnostics (workers.diagnose) "
             f"took {diag_time:.1f} s against {train_time:.1f} s of training ({100 * diag_time / max(train_time, 1e-9):.1f}%).")
    report = Report("activation-depth", ACTIVATION_DEPTH_HYPOTHESIS, setup, verdicts=verdicts, figures=figures,
                    metrics=metrics)
    report.sections += ["## Results", "", table, _stall_note(runs, chance, train)]
    report.results.update(summary={a: {str(d): v for d, v in s.items()} for a, s in summary.items()}, runs=runs)
    return report


def _stall_note(runs: Sequence[Mapping[str, Any]], chance: float, train: Any) -> str:
    """Which runs ended at chance, and after how many epochs: a stall the fixed-point rule may have cut short."""
    stalled = [r for r in runs if r["val_accuracy"] <= chance + 0.05]
    if not stalled:
        return "Every run ended above chance.\n"
    cells = ", ".join(f"{r['activation']} d{r['depth']} seed {r['seed']} ({r['epochs']} epochs)" for r in stalled)
    early = [r for r in stalled if r["epochs"] < train.max_epochs]
    text = f"Runs that ended at chance accuracy: {cells}."
    if early:
        text += (f" {len(early)} of them stopped before max_epochs = {train.max_epochs}: the fixed-point rule "
                 f"(patience {train.patience}, loss_tol {train.loss_tol}, update_tol {train.update_tol}) read a "
                 f"plateau at chance with barely moving weights as a fixed point. Whether they would escape it later "
                 f"is measured with a larger patience (e.g. --set train.patience=100).")
    return text + "\n"


def _activation_depth_verdicts(summary: Mapping[str, Mapping[int, Mapping[str, float]]], depths: Sequence[int],
                               threshold: float) -> list[Verdict]:
    def trainable(a: str) -> list[int]:
        return [d for d in depths if summary[a][d]["val_accuracy"] >= threshold]

    def deepest_trainable(a: str) -> int:
        # the deepest depth up to which every tested depth trains
        deepest = 0
        for d in sorted(depths):
            if summary[a][d]["val_accuracy"] < threshold:
                break
            deepest = d
        return deepest

    verdicts = []
    if "sigmoid" in summary:
        stalls = [d for d in sorted(depths) if summary["sigmoid"][d]["val_accuracy"] < threshold]
        if stalls:
            verdicts.append(Verdict("sigmoid (Xavier) stalls beyond a few layers", stalls[0] <= 8,
                                    f"first depth below {_pct(threshold)}: {stalls[0]} "
                                    f"(accuracy {_pct(summary['sigmoid'][stalls[0]]['val_accuracy'])})"))
        else:
            verdicts.append(Verdict("sigmoid (Xavier) stalls beyond a few layers", False,
                                    f"it reaches {_pct(threshold)} at every tested depth up to {max(depths)}"))
    if "sigmoid" in summary and "relu" in summary:
        r, s = deepest_trainable("relu"), deepest_trainable("sigmoid")
        verdicts.append(Verdict("ReLU (He) trains deeper than sigmoid (Xavier)", r > s if r != s else False,
                                f"deepest depth trained (every shallower one too): relu {r}, sigmoid {s}"))
    if "tanh_critical" in summary and "relu" in summary:
        gaps = [summary["tanh_critical"][d]["val_accuracy"] - summary["relu"][d]["val_accuracy"] for d in depths]
        same = trainable("tanh_critical") == trainable("relu")
        mean_gap = _mean([abs(g) for g in gaps])
        verdicts.append(Verdict("tanh at critical initialization matches ReLU", same and mean_gap <= 0.05,
                                f"trainable depths tanh_critical {trainable('tanh_critical')} vs relu "
                                f"{trainable('relu')}; mean |accuracy difference| {100 * mean_gap:.1f} points "
                                f"(tolerance 5)"))
    slopes = {a: _log_slope(depths, [summary[a][d]["init_jacobian_msv"] for d in depths]) for a in summary}
    if "sigmoid" in slopes and math.isfinite(slopes["sigmoid"]) and len(depths) >= 2:
        factor = {a: 10 ** s for a, s in slopes.items() if math.isfinite(s)}
        others = {a: f for a, f in factor.items() if a != "sigmoid"}
        critical = all(0.8 <= f <= 1.25 for f in others.values())
        verdicts.append(Verdict(
            "at initialization the sigmoid net is in the ordered phase (the Jacobian shrinks geometrically with "
            "depth) while the others are near critical", factor["sigmoid"] < 0.8 and critical,
            "Jacobian mean squared singular value changes by a factor per layer of "
            + ", ".join(f"{a} {f:.3g}" for a, f in factor.items()) + " (critical: 1; ordered: < 0.8)"))
    return verdicts


# ===============================================================================================================
# 2. locality
LOCALITY_HYPOTHESIS = (
    "The seed paper (section III-A) argues that CNNs solve tasks whose transformation is a short curve of local "
    "operations, and cannot efficiently solve tasks made by global operations such as images cut into blocks "
    "that are then permuted. An MLP has no notion of locality: a fixed permutation of its inputs is absorbed by "
    "its first layer. Expected: on permuted inputs the CNN loses accuracy and its advantage over the MLP, the "
    "MLP is unchanged by a fixed permutation. Published reference (MNIST-1D, Greydanus 2020): CNN 94% "
    "unshuffled vs 56% spatially shuffled, MLP 68% in both.")

PUBLISHED = {("mnist1d", "none", 1): {"cnn": 0.94, "mlp": 0.68}, ("mnist1d", "fixed", 1): {"cnn": 0.56, "mlp": 0.68}}


@dataclass(frozen=True)
class _Condition:
    dataset: str
    permute: str = "none"
    block: int = 1

    @classmethod
    def parse(cls, text: str) -> "_Condition":
        parts = text.split(":")
        if len(parts) not in (1, 3) or not parts[0]:
            raise GeonasError(f"a locality condition is DATASET or DATASET:PERMUTE:BLOCK (e.g. digits:fixed:4), "
                              f"but got {text!r}")
        if len(parts) == 1:
            return cls(parts[0])
        try:
            block = int(parts[2])
        except ValueError:
            raise GeonasError(f"the block of locality condition {text!r} must be an integer") from None
        return cls(parts[0], parts[1], block)

    @property
    def label(self) -> str:
        if self.permute == "none":
            return self.dataset
        what = "positions" if self.block == 1 else f"blocks {self.block}"
        return f"{self.dataset} {what} {'fixed' if self.permute == 'fixed' else 'per image'}"

    @property
    def tag(self) -> str:
        return self.dataset if self.permute == "none" else f"{self.dataset}-{self.permute}-{self.block}"

    @property
    def data(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "permute": self.permute, "permute_block": self.block}


def _mlp_candidates(params: Mapping[str, Any], activations: Sequence[str], count: int, seed: int) -> list[Any]:
    """`count` distinct MLPs drawn uniformly (seeded): 1..mlp_max_layers hidden layers of mlp_widths units."""
    from search_spaces import CNNArchitecture

    rng = random.Random(seed)
    widths, max_layers = list(params["mlp_widths"]), int(params["mlp_max_layers"])
    distinct = len(activations) * sum(len(widths) ** k for k in range(1, max_layers + 1))
    seen: list[Any] = []
    while len(seen) < min(count, distinct):
        layers = rng.randint(1, max_layers)
        arch = CNNArchitecture.mlp(tuple(rng.choice(widths) for _ in range(layers)), rng.choice(list(activations)))
        if arch not in seen:
            seen.append(arch)
    return seen


def _train_on_executor(context: Context, jobs: Mapping[Any, tuple[Any, int]], dataset: "Dataset", train: Any,
                       evaluate_test: bool) -> dict[Any, dict[str, Any]]:
    """Train every (arch, seed) of `jobs` on the Ray executor; the results (or errors) by key."""
    from workers.ray_adapter import TaskSpec

    executor = context.executor
    data_ref = executor.put(dataset if evaluate_test else dataset.without_test())
    for key, (arch, seed) in jobs.items():
        executor.submit(key, TaskSpec(arch.to_json(), train, seed, evaluate_test=evaluate_test), data_ref)
    results: dict[Any, dict[str, Any]] = {}
    for event in executor.wait_all():
        if event.kind == "result":
            results[event.key] = event.payload or {}
        elif event.kind in ("error", "cancelled"):
            results[event.key] = {"error": event.reason}
    return results


@dataclass
class _Arm:
    """The outcome of one arm (CNN or MLP) on one condition."""

    candidates: int = 0
    completed: int = 0
    best_summary: str = ""
    best_val_accuracy: float = math.nan
    best_macs: int = 0
    test_accuracy: float = math.nan
    test_accuracies: list[float] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Test accuracy of the best candidate when measured, else its validation accuracy."""
        return self.test_accuracy if math.isfinite(self.test_accuracy) else self.best_val_accuracy


def _final_test(context: Context, arch: Any, dataset: "Dataset", train: Any, trial_seed_base: int,
                arm: _Arm, key: str) -> None:
    from nas.study import derive_seed

    seeds = int(context.params["test_seeds"])
    if seeds <= 0:
        return
    jobs = {(key, k): (arch, derive_seed(context.config.seed, trial_seed_base, k + 1)) for k in range(seeds)}
    results = _train_on_executor(context, jobs, dataset, train, evaluate_test=True)
    arm.test_accuracies = [float(r["test_accuracy"]) for r in results.values() if "test_accuracy" in r]
    arm.test_accuracy = _mean(arm.test_accuracies)


def _cnn_arm(context: Context, condition: _Condition, dataset: "Dataset", train: Any) -> _Arm:
    from nas.search import run_search

    p = context.params
    space = dict(context.config.space)
    low, high = space.get("depth", [1, 4])
    space["depth"] = [max(1, int(low)), max(1, int(high))]  # a CNN has at least one convolution
    config = context.derived_config(f"cnn.{condition.tag}", {
        "data": condition.data, "space": space, "train": {"max_epochs": train.max_epochs},
        "search": {"n_trials": int(p["n_trials"]), "final_seeds": 0, "lam": float(p["lam"])}})
    outcome = run_search(config, executor=context.executor)
    arm = _Arm(candidates=len(outcome.records), completed=len(outcome.points))
    arm.trials = [{"trial": pt.trial_number, "summary": pt.summary, "macs": pt.macs, "val_error": pt.val_error}
                  for pt in outcome.points]
    if not outcome.points:
        return arm
    best = min(outcome.points, key=lambda pt: (pt.val_error, pt.macs))
    arm.best_summary, arm.best_val_accuracy, arm.best_macs = best.summary, 1 - best.val_error, int(best.macs)
    arch = _stored_arch(config, best.trial_number)
    _final_test(context, arch, dataset, train, best.trial_number, arm, f"cnn-test-{condition.tag}")
    return arm


def _stored_arch(config: "Config", trial_number: int) -> Any:
    import optuna

    from nas.study import ATTR, make_storage, storage_url, trial_attrs
    from search_spaces import Architecture

    study = optuna.load_study(study_name=config.study_name, storage=make_storage(storage_url(config)))
    return Architecture.from_dict(trial_attrs(study.trials[trial_number])[ATTR.ARCH])


def _mlp_arm(context: Context, condition: _Condition, dataset: "Dataset", train: Any) -> _Arm:
    from nas.study import derive_seed
    from search_spaces import layer_costs, total_macs

    p = context.params
    activations = [a for a in context.config.space.get("activations", ["relu"]) if a != "identity"] or ["relu"]
    candidates = _mlp_candidates(p, activations, int(p["n_trials"]), context.config.seed)
    # The same seeds as the CNN search's trials 0..n-1: equal footing.
    jobs = {("mlp", condition.tag, i): (arch, derive_seed(context.config.seed, i)) for i, arch in enumerate(candidates)}
    results = _train_on_executor(context, jobs, dataset, train, evaluate_test=False)
    arm = _Arm(candidates=len(candidates))
    scored = []
    for (_, _, i), r in sorted(results.items(), key=lambda kv: kv[0][2]):
        arch = candidates[i]
        macs = total_macs(layer_costs(arch, dataset.input_shape, dataset.num_classes))
        entry = {"trial": i, "summary": arch.summary(), "macs": macs, "val_error": r.get("val_error")}
        if "error" in r:
            entry["error"] = r["error"]
        else:
            scored.append((float(r["val_error"]), macs, i))
        arm.trials.append(entry)
    arm.completed = len(scored)
    if not scored:
        return arm
    val_error, macs, index = min(scored)
    arm.best_summary, arm.best_val_accuracy, arm.best_macs = candidates[index].summary(), 1 - val_error, macs
    _final_test(context, candidates[index], dataset, train, index, arm, f"mlp-test-{condition.tag}")
    return arm


def _locality(context: Context) -> Report:
    p = context.params
    conditions = [_Condition.parse(text) for text in p["conditions"]]
    train = _train_config(context)
    outcomes: dict[_Condition, dict[str, _Arm]] = {}
    sizes: dict[_Condition, str] = {}
    for condition in conditions:
        try:
            dataset = context.dataset(condition.data)
        except (ValueError, TypeError) as exc:  # ConfigError / DataError name the key
            raise GeonasError(f"locality condition {condition.tag!r}: {exc}") from None
        sizes[condition] = f"{dataset.input_shape}, {dataset.sizes()['train']}/{dataset.sizes()['val']}/" \
                           f"{dataset.sizes()['test']}"
        context.log(f"[locality] {condition.label}: CNN search, {p['n_trials']} trials")
        cnn = _cnn_arm(context, condition, dataset, train)
        context.log(f"[locality] {condition.label}: {p['n_trials']} MLPs")
        mlp = _mlp_arm(context, condition, dataset, train)
        outcomes[condition] = {"cnn": cnn, "mlp": mlp}
        context.log(f"[locality] {condition.label}: CNN {_pct(cnn.accuracy)} ({cnn.best_summary}), "
                    f"MLP {_pct(mlp.accuracy)} ({mlp.best_summary})")

    measured = "test" if int(p["test_seeds"]) > 0 else "validation"
    rows = []
    for c, arms in outcomes.items():
        ref = PUBLISHED.get((c.dataset, c.permute, c.block), {})
        rows.append([c.label, _pct(arms["cnn"].accuracy), _pct(ref.get("cnn")), arms["cnn"].best_summary,
                     _pct(arms["mlp"].accuracy), _pct(ref.get("mlp")), arms["mlp"].best_summary,
                     f"{100 * (arms['cnn'].accuracy - arms['mlp'].accuracy):+.1f}"])
    table = _table(["condition", f"CNN {measured} acc.", "published", "best CNN", f"MLP {measured} acc.", "published",
                    "best MLP", "CNN - MLP (points)"], rows)
    verdicts = _locality_verdicts(outcomes)
    metrics: dict[str, float] = {}
    for c, arms in outcomes.items():
        for arm_name, arm in arms.items():
            for key, value in (("accuracy", arm.accuracy), ("val_accuracy", arm.best_val_accuracy),
                               ("macs", float(arm.best_macs))):
                if math.isfinite(value):
                    metrics[f"{c.tag}.{arm_name}.{key}"] = value

    from nas.diagnostic_plots import bars_figure

    labels = [c.label for c in outcomes]
    figures = {"locality.png": bars_figure(
        labels, {"CNN": [a["cnn"].accuracy for a in outcomes.values()], "MLP": [a["mlp"].accuracy for a in outcomes.values()]},
        ylabel=f"{measured} accuracy of the best candidate", title="CNN vs MLP on permuted inputs",
        references={"CNN": [PUBLISHED.get((c.dataset, c.permute, c.block), {}).get("cnn") for c in outcomes],
                    "MLP": [PUBLISHED.get((c.dataset, c.permute, c.block), {}).get("mlp") for c in outcomes]})}
    setup = (f"Conditions (inputs permuted before the split by nas.data, seed {context.config.data.permute_seed}): "
             + "; ".join(f"{c.label} ({sizes[c]})" for c in outcomes) + ". "
             f"CNN arm: nas.search.run_search over the config's cnn space with at least one conv layer, "
             f"{p['n_trials']} trials, sampler {context.config.search.sampler}, pruner {context.config.search.pruner}, "
             f"λ = {p['lam']}. MLP arm: {p['n_trials']} distinct MLPs (1..{p['mlp_max_layers']} hidden layers of "
             f"{p['mlp_widths']} units) drawn at random, trained with the same settings and seeds. The best of each "
             f"arm by validation error is retrained with {p['test_seeds']} new seed(s) and evaluated once on the "
             f"test split. Training: {train.optimizer}, lr {train.lr}, to the fixed point or {train.max_epochs} epochs.")
    report = Report("locality", LOCALITY_HYPOTHESIS, setup, verdicts=verdicts, figures=figures, metrics=metrics)
    report.sections += ["## Results", "", table]
    report.results["conditions"] = {c.tag: {"label": c.label, **{k: dataclasses.asdict(a) for k, a in arms.items()}}
                                    for c, arms in outcomes.items()}
    return report


def _locality_verdicts(outcomes: Mapping[_Condition, Mapping[str, _Arm]]) -> list[Verdict]:
    verdicts = []
    base = {c.dataset: arms for c, arms in outcomes.items() if c.permute == "none"}
    for c, arms in outcomes.items():
        if c.permute == "none" or c.dataset not in base:
            continue
        cnn_drop = base[c.dataset]["cnn"].accuracy - arms["cnn"].accuracy
        mlp_drop = base[c.dataset]["mlp"].accuracy - arms["mlp"].accuracy
        gap = arms["cnn"].accuracy - arms["mlp"].accuracy
        base_gap = base[c.dataset]["cnn"].accuracy - base[c.dataset]["mlp"].accuracy
        if not all(math.isfinite(v) for v in (cnn_drop, mlp_drop, gap)):
            verdicts.append(Verdict(f"{c.label}: the CNN needs locality", None, "an arm produced no result"))
            continue
        verdicts.append(Verdict(
            f"{c.label}: the permutation costs the CNN more than the MLP (locality matters to the CNN)",
            cnn_drop - mlp_drop > 0.05,
            f"accuracy drop from {c.dataset}: CNN {100 * cnn_drop:+.1f}, MLP {100 * mlp_drop:+.1f} points "
            f"(threshold: 5 points more for the CNN)"))
        verdicts.append(Verdict(
            f"{c.label}: the CNN is no better than the MLP (the paper's 'cannot be solved by a CNN')",
            gap <= 0.01,
            f"CNN - MLP = {100 * gap:+.1f} points (unpermuted: {100 * base_gap:+.1f}); supported at <= +1 point"))
        if c.permute == "fixed":
            verdicts.append(Verdict(
                f"{c.label}: a fixed permutation leaves the MLP unchanged", abs(mlp_drop) <= 0.03,
                f"MLP accuracy change {100 * -mlp_drop:+.1f} points (tolerance 3)"))
    return verdicts


# ===============================================================================================================
# 3. depth-sweep
DEPTH_SWEEP_HYPOTHESIS = (
    "The seed paper (section III-A) argues that a network must be long enough — its curve must be at least as "
    "long as the geodesic to the target transformation — but not too long, since a longer curve means searching "
    "a larger parameter space: the best error reachable under a fixed budget should first fall, then rise with "
    "depth. Later work (batch norm, residual connections, adaptive optimizers) makes very deep plain nets "
    "trainable, so the rise may be weak or absent at the depths tested.")


def _depth_sweep(context: Context) -> Report:
    from nas.search import run_search

    p = context.params
    if context.config.space.get("name") != "cnn":
        raise GeonasError(f"depth-sweep sweeps the depth of the cnn space, but the config's space is "
                          f"{context.config.space.get('name')!r}")
    dataset = context.dataset({})
    train = _train_config(context)
    depths = sorted(set(int(d) for d in p["depths"]))
    best: dict[int, dict[str, Any]] = {}
    for depth in depths:
        context.log(f"[depth-sweep] depth {depth}: {p['n_trials']} trials")
        space = {**context.config.space, "depth": [depth, depth]}
        config = context.derived_config(f"d{depth}", {
            "space": space, "train": {"max_epochs": train.max_epochs},
            "search": {"n_trials": int(p["n_trials"]), "final_seeds": 0, "lam": float(p["lam"])}})
        outcome = run_search(config, executor=context.executor)
        entry: dict[str, Any] = {"trials": len(outcome.records), "completed": len(outcome.points),
                                 "failed": outcome.count("FAIL"), "pruned": outcome.count("PRUNED")}
        if outcome.points:
            top = min(outcome.points, key=lambda pt: (pt.val_error, pt.macs))
            entry.update(best_val_error=top.val_error, best_summary=top.summary, best_macs=top.macs,
                         mean_val_error=_mean([pt.val_error for pt in outcome.points]),
                         epochs=(top.extra or {}).get("epochs"))
        best[depth] = entry
        context.log(f"[depth-sweep] depth {depth}: best validation error {_pct(entry.get('best_val_error'))}")

    margin = float(p["margin"])
    verdicts = _depth_sweep_verdicts(best, margin)
    rows = [[str(d), _pct(e.get("best_val_error")), _pct(e.get("mean_val_error")), e.get("best_summary", "—"),
             f"{int(e['best_macs']):,}" if "best_macs" in e else "—", f"{e['completed']}/{e['trials']}"]
            for d, e in best.items()]
    table = _table(["depth", "best val error", "mean val error", "best architecture", "MACs", "completed/trials"], rows)
    from nas.diagnostic_plots import series_figure

    errors = [best[d].get("best_val_error", math.nan) for d in depths]
    figures = {"depth_sweep.png": series_figure(
        depths, {"best validation error": errors, "mean validation error": [best[d].get("mean_val_error", math.nan)
                                                                          for d in depths]},
        xlabel="depth (conv layers)", ylabel="validation error",
        title=f"{dataset.name}: error reachable at each depth ({p['n_trials']} trials each)")}
    metrics = {f"d{d}.{k}": float(v) for d, e in best.items() for k, v in e.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}
    setup = (f"Data: {dataset.name}, input {dataset.input_shape}, {len(dataset.y_train)} train / {len(dataset.y_val)} "
             f"validation samples. For each depth, nas.search.run_search over the config's cnn space with the depth "
             f"fixed, {p['n_trials']} trials, sampler {context.config.search.sampler}, pruner "
             f"{context.config.search.pruner}, λ = {p['lam']} (the search minimizes the validation loss). Training: "
             f"{train.optimizer}, lr {train.lr}, to the fixed point or {train.max_epochs} epochs. Differences below "
             f"{100 * margin:.1f} points are treated as ties (one validation image is "
             f"{100 / max(1, len(dataset.y_val)):.2f} points).")
    report = Report("depth-sweep", DEPTH_SWEEP_HYPOTHESIS, setup, verdicts=verdicts, figures=figures, metrics=metrics)
    report.sections += ["## Results", "", table]
    report.results["depths"] = {str(d): e for d, e in best.items()}
    return report


def _depth_sweep_verdicts(best: Mapping[int, Mapping[str, Any]], margin: float) -> list[Verdict]:
    measured = {d: float(e["best_val_error"]) for d, e in best.items() if "best_val_error" in e}
    if len(measured) < 2:
        return [Verdict("the error first falls, then rises with depth", None, "fewer than two depths completed")]
    optimum = min(measured, key=lambda d: (measured[d], d))
    shallow, deep = min(measured), max(measured)
    long_enough = measured[shallow] - measured[optimum] > margin
    too_long = measured[deep] - measured[optimum] > margin
    text = ", ".join(f"d{d} {_pct(e)}" for d, e in measured.items())
    return [
        Verdict("a network must be long enough: the shallowest net is worse than the best depth", long_enough,
                f"best depth {optimum}; {text}"),
        Verdict("too long fails: the deepest net is worse than the best depth", too_long,
                f"deepest {deep}: {_pct(measured[deep])} vs best {_pct(measured[optimum])} (margin {100 * margin:.1f} "
                f"points)"),
        Verdict("the error curve is U-shaped (an interior optimum)", long_enough and too_long and shallow < optimum < deep,
                f"optimum at depth {optimum} of {sorted(measured)}"),
    ]


# ===============================================================================================================
EXPERIMENTS: dict[str, Experiment] = {
    "activation-depth": Experiment(
        "activation-depth", ACTIVATION_DEPTH_HYPOTHESIS,
        defaults={"depths": [2, 4, 8, 16, 32], "activations": ["relu", "sigmoid", "tanh_critical"], "width": 16,
                  "kernel_size": 3, "seeds": 3, "max_epochs": None, "trainable_accuracy": 0.5, "workers": 2},
        quick={"depths": [1, 3], "activations": ["relu", "sigmoid", "tanh_critical"], "width": 4, "max_epochs": 2,
               "workers": 1},
        body=_activation_depth),
    "locality": Experiment(
        "locality", LOCALITY_HYPOTHESIS,
        defaults={"conditions": ["mnist1d", "mnist1d:fixed:1", "digits", "digits:fixed:4", "digits:per_sample:4",
                                 "digits:fixed:2", "digits:per_sample:2"],
                  "n_trials": 8, "mlp_widths": [32, 64, 128], "mlp_max_layers": 2, "test_seeds": 1, "lam": 0.0,
                  "max_epochs": None},
        quick={"conditions": ["digits", "digits:fixed:4"], "n_trials": 2, "mlp_widths": [16, 32], "mlp_max_layers": 1,
               "max_epochs": 2},
        body=_locality),
    "depth-sweep": Experiment(
        "depth-sweep", DEPTH_SWEEP_HYPOTHESIS,
        defaults={"depths": [0, 1, 2, 3, 4, 6, 8], "n_trials": 8, "lam": 0.0, "margin": 0.01, "max_epochs": None},
        quick={"depths": [0, 1], "n_trials": 1, "max_epochs": 2},
        body=_depth_sweep),
}


# -- CLI ----------------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``experiment NAME CONFIG [--set K=V] [--param K=V] [--quick] [--out DIR]`` to the `nas` parser."""
    parser = subparsers.add_parser(
        "experiment", help="run one of the paper's claims as an experiment and write its report",
        description="Experiments: " + "; ".join(f"{name}: {e.hypothesis.split('.')[0]}." for name, e in EXPERIMENTS.items()))
    parser.add_argument("name", metavar="NAME", help=f"one of {', '.join(EXPERIMENTS)}")
    parser.add_argument("config", help="YAML config (data, space, train, search, tracking, ray)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override one config value (repeatable), e.g. --set train.max_epochs=20")
    parser.add_argument("--override", dest="override_files", action="append", default=[], metavar="FILE",
                        help="a YAML file of overrides merged over the config (repeatable)")
    parser.add_argument("--param", dest="params", action="append", default=[], metavar="KEY=VALUE",
                        help="one experiment parameter (repeatable), e.g. --param depths=[2,4,8]")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test, not a result)")
    parser.add_argument("--out", help="report folder (default runs/experiments/NAME)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Run ``nas experiment`` from parsed arguments; 0 on success (user errors raise GeonasError)."""
    from nas.config import load_config

    if args.name not in EXPERIMENTS:
        raise GeonasError(f"unknown experiment {args.name!r}; choose from {', '.join(EXPERIMENTS)}")
    experiment = EXPERIMENTS[args.name]
    params = _parse_params(experiment, args.params, args.quick)  # refuse bad parameters before loading anything
    config = load_config(args.config, args.overrides, getattr(args, "override_files", []))
    command = " ".join(["nas experiment", args.name, args.config, *(f"--set {o}" for o in args.overrides),
                        *(f"--param {p}" for p in args.params), *(["--quick"] if args.quick else []),
                        *([f"--out {args.out}"] if args.out else [])])
    report = run_experiment(args.name, config, {k: v for k, v in params.items()}, out=args.out, command=command)
    for verdict in report.verdicts:
        print(f"{verdict.label:>13}: {verdict.claim} — {verdict.evidence}")
    print(f"report: {Path(args.out) if args.out else DEFAULT_OUT / args.name}/report.md "
          f"(MLflow run {report.results.get('mlflow_run_id')})")
    return 0
