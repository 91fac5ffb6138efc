"""Review and reproduce: register the best front member under a budget; retrain a trial from its MLflow record.

Both work from the MLflow records alone (a tracking server or a SQLite store), months after the search.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient

from nas.config import Config, config_from_dict
from nas.errors import GeonasError
from nas.tracking import TAG_KIND, TAG_STUDY, TAG_TRIAL, client_for

__all__ = ["export_best", "reproduce_trial", "Reproduction", "Comparison"]


def _text_artifact(client: MlflowClient, run_id: str, path: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return Path(client.download_artifacts(run_id, path, tmp)).read_text()
        except Exception as exc:  # noqa: BLE001 - a missing artifact is the record's problem, named
            raise GeonasError(f"run {run_id} has no readable artifact {path!r} ({type(exc).__name__}); "
                              f"run `nas sync CONFIG` to rebuild the records") from None


# -- export -------------------------------------------------------------------------------------------------


def export_best(uri: str, experiment: str, study: str, max_macs: float, name: str) -> dict[str, Any]:
    """Register the front member with the lowest validation error among those with at most `max_macs` MACs.

    Returns:
        What was registered: model name and version, trial number, run id, MACs, validation error, test accuracy.

    Raises:
        GeonasError: when the experiment has no logged model of that study within the budget.
    """
    import mlflow

    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise GeonasError(f"no MLflow experiment named {experiment!r} at {uri}")
    runs = client.search_runs([exp.experiment_id], max_results=5000, filter_string=(
        f"tags.`{TAG_STUDY}` = '{study}' and tags.`{TAG_KIND}` = 'trial' and tags.has_model = 'true'"))
    if not runs:
        raise GeonasError(f"study {study!r} has no front member with a logged model (search.final_seeds must be "
                          f"at least 1)")
    within = [r for r in runs if r.data.metrics.get("E_comp", math.inf) <= max_macs]
    if not within:
        cheapest = min(r.data.metrics.get("E_comp", math.inf) for r in runs)
        raise GeonasError(f"no front member of {study!r} has at most {max_macs:,.0f} MACs; the cheapest has "
                          f"{cheapest:,.0f}")
    best = min(within, key=lambda r: (r.data.metrics["val_error"], r.data.metrics["E_comp"]))
    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(f"runs:/{best.info.run_id}/model", name)
    metrics = best.data.metrics
    record = {"name": name, "version": version.version, "trial_number": int(best.data.tags[TAG_TRIAL]),
              "run_id": best.info.run_id, "macs": metrics["E_comp"], "val_error": metrics["val_error"],
              "test_accuracy": metrics.get("model_test_accuracy"), "max_macs": max_macs,
              "summary": best.data.tags.get("summary", "")}
    for key in ("trial_number", "macs", "val_error", "test_accuracy", "max_macs", "summary"):
        client.set_model_version_tag(name, version.version, key, str(record[key]))
    client.update_model_version(name, version.version, description=(
        f"Best front member of study {study} within {max_macs:,.0f} MACs: trial {record['trial_number']}, "
        f"{record['summary']}, {metrics['E_comp']:,.0f} MACs, validation error {100 * metrics['val_error']:.2f}%"))
    return record


# -- reproduce ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """One metric as logged and as reproduced."""

    name: str
    logged: float
    reproduced: float

    @property
    def equal(self) -> bool:
        return self.logged == self.reproduced or (math.isnan(self.logged) and math.isnan(self.reproduced))


@dataclass(frozen=True)
class Reproduction:
    """The outcome of retraining a trial from its record."""

    run_id: str
    trial_number: int
    same_machine: bool
    data_matches: bool
    comparisons: list[Comparison]
    notes: list[str]

    @property
    def matches(self) -> bool:
        return self.data_matches and all(c.equal for c in self.comparisons)

    def table(self) -> str:
        """Final metrics row by row; the per-epoch curve summed up, with the epochs that differ listed."""
        lines = ["| metric | logged | reproduced | difference |", "|:---|---:|---:|---:|"]
        curve = [c for c in self.comparisons if c.name.startswith("epoch/")]
        for c in self.comparisons:
            if c in curve and c.equal:
                continue
            diff = "0" if c.equal else f"{c.reproduced - c.logged:+.3g}"
            lines.append(f"| {c.name} | {c.logged:.6g} | {c.reproduced:.6g} | {diff} |")
        same = sum(c.equal for c in curve)
        lines.append(f"| per-epoch val_loss and val_error | {len(curve)} values | {same} equal | "
                     f"{len(curve) - same} differ |")
        return "\n".join(lines) + "\n"


def _source_run(client: MlflowClient, run: Any) -> tuple[Any, list[str]]:
    """The run that actually trained: a duplicate trial reused the result of `duplicate_of`."""
    source = run.data.tags.get("duplicate_of")
    if source is None:
        return run, []
    found = client.search_runs([run.info.experiment_id], filter_string=(
        f"tags.`{TAG_STUDY}` = '{run.data.tags[TAG_STUDY]}' and tags.`{TAG_TRIAL}` = '{source}' and "
        f"tags.`{TAG_KIND}` = 'trial'"), max_results=1)
    if not found:
        raise GeonasError(f"run {run.info.run_id} reused trial {source}'s result, whose run is missing")
    return found[0], [f"trial {run.data.tags[TAG_TRIAL]} reused the result of trial {source}: reproducing that one"]


def reproduce_trial(uri: str, run_id: str) -> Reproduction:
    """Retrain the trial of MLflow run `run_id` from its record alone and compare the validation metrics.

    The record gives everything: the architecture (architecture.json), the trial's seed and torch threads
    (params), the resolved config (the parent run's config.yaml) and the data fingerprint and machine (the
    parent's environment.json). On the same machine the numbers match exactly.

    Raises:
        GeonasError: when the run is not a trial run of a search, or its record is incomplete.
    """
    import torch

    from nas.data import load_dataset
    from nas.study import recheck_seeds, rechecked_result, repeat_seeds
    from search_spaces import Architecture
    from workers import drain_steps, fit_runs_steps, seeded_model

    client = client_for(uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001
        raise GeonasError(f"no MLflow run {run_id!r} at {uri} ({type(exc).__name__})") from None
    if run.data.tags.get(TAG_KIND) != "trial":
        raise GeonasError(f"run {run_id} is not a trial run of a search (tag {TAG_KIND} is "
                          f"{run.data.tags.get(TAG_KIND)!r})")
    run, notes = _source_run(client, run)
    parent_id = run.data.tags.get("mlflow.parentRunId")
    if not parent_id:
        raise GeonasError(f"run {run.info.run_id} has no parent run: its search's config is unknown")
    parent = client.get_run(parent_id)
    config: Config = config_from_dict(yaml.safe_load(_text_artifact(client, parent_id, "config.yaml")))
    env = json.loads(_text_artifact(client, parent_id, "environment.json"))
    arch = Architecture.from_json(_text_artifact(client, run.info.run_id, "architecture.json"))
    seed = int(run.data.params["seed"])
    threads = int(run.data.params.get("torch_threads") or env["machine"].get("torch_threads_per_trial") or 1)

    from nas.provenance import environment

    here = environment(threads)
    same_machine = all(here["machine"][k] == env["machine"].get(k) for k in ("cpu", "platform", "gpu")) and \
        here["packages"]["torch"] == env["packages"].get("torch")
    if not same_machine:
        notes.append(f"another machine or torch: recorded {env['machine'].get('cpu')} / torch "
                     f"{env['packages'].get('torch')}, here {here['machine']['cpu']} / torch {here['packages']['torch']}")
    dataset = load_dataset(config.data, config.seed)
    data_matches = dataset.fingerprint == parent.data.tags.get("data_fingerprint")
    if not data_matches:
        notes.append(f"the data differ: fingerprint {dataset.fingerprint} here, "
                     f"{parent.data.tags.get('data_fingerprint')} recorded")
    state = run.data.tags.get("state", "")
    logged_curve = {name: {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"epoch/{name}")}
                    for name in ("val_loss", "val_error")}
    train = config.train
    if state != "COMPLETE":
        # A pruned trial stopped early: retrain only as far as it went.
        epochs = max(logged_curve["val_loss"], default=0)
        if epochs == 0:
            raise GeonasError(f"trial {run.data.tags.get(TAG_TRIAL)} ({state}) was never trained: nothing to "
                              f"reproduce")
        train = dataclasses.replace(train, max_epochs=epochs)
        notes.append(f"trial was {state}: compared over its {epochs} trained epochs")
    # search.seeds_per_trial > 1: the trial was the mean of that many training runs, from these seeds
    number = int(run.data.tags[TAG_TRIAL])
    seeds = [seed, *repeat_seeds(config.seed, number, config.search.seeds_per_trial)]
    if len(seeds) > 1:
        notes.append(f"the trial is the mean of {len(seeds)} training runs (search.seeds_per_trial): all retrained")
    # a front entrant rechecked (search.recheck_seeds): its result is the mean over these runs as well
    rechecked = int(run.data.metrics.get("recheck_runs", 0)) if state == "COMPLETE" else 0
    more = list(recheck_seeds(config.seed, number, config.search.seeds_per_trial, rechecked))
    if more:
        notes.append(f"the trial's front entry was rechecked with {len(more)} more training runs: retrained too")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    curve: dict[str, dict[int, float]] = {"val_loss": {}, "val_error": {}}
    data = dataset.without_test()

    def train_runs(run_seeds: list[int], on_epoch: Any = None) -> Any:
        models = [seeded_model(arch, data, s) for s in run_seeds]
        return drain_steps(fit_runs_steps(models, data, train, run_seeds), on_epoch)[0]

    def record(epoch: int, metrics: dict[str, float]) -> None:
        for name in curve:
            curve[name][epoch] = metrics[name]

    try:
        result = train_runs(seeds, record).to_dict()
        first_error = result["val_error"]
        if more:
            result = rechecked_result(result, train_runs(more).to_dict())
    finally:
        torch.set_num_threads(previous)
    comparisons = []
    for name in ("val_loss", "val_error"):
        for step, value in sorted(logged_curve[name].items()):
            comparisons.append(Comparison(f"epoch/{name}@{step}", value, curve[name].get(step, math.nan)))
    if state == "COMPLETE":
        metrics = run.data.metrics
        comparisons += [Comparison("E_CNN", metrics["E_CNN"], result["val_loss"]),
                        Comparison("val_error", metrics["val_error"], result["val_error"]),
                        Comparison("epochs", metrics["epochs"], float(result["epochs"]))]
        if more:
            comparisons.append(Comparison("val_error_first", metrics["val_error_first"], first_error))
    return Reproduction(run.info.run_id, int(run.data.tags[TAG_TRIAL]), same_machine, data_matches, comparisons,
                        notes)
