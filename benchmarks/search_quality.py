"""Search quality against random search at equal compute (issue 6, item 1).

For each dataset config, runs of ``--trials`` trials with the config's sampler ("default") and with
``search.sampler=random``, one run per seed; everything else (pruner, bound check, λ, scale, reference
point) is the config's, so the compared runs differ in the sampler alone. The hypervolume of each run is
read from ``SearchOutcome.hypervolume_history`` after the k-th finished trial (k in ``--at``), with the
mean and spread (population std, min-max) over seeds.

Target: the default reaches the mean hypervolume random search reaches at the last checkpoint (80 trials)
in at most half as many trials (2x sample efficiency), on every dataset. "Trials to match" is the first k
at which the seed-mean curve of the default reaches that value (per seed too: the first k at which that
seed's run reaches it).

Every search gets fresh temporary SQLite stores; one local Ray (parallelism 2 unless
``--parallelism``) serves the whole process.

Run: ``python -m benchmarks.search_quality [--datasets digits_cnn,digits_resnet,mnist1d_cnn]
[--trials 80] [--seeds 0,1,2] [--samplers default,random] [--compare-samplers nsga2,gp] [--set key=value]
[--out FILE.json]``; ``--from-json A.json B.json`` compares earlier runs together (e.g. seeds run apart).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from benchmarks._common import ROOT, machine, machine_line, quiet_logs, ray_session, table, temp_folder, write_json

DATASETS = {"digits_cnn": ROOT / "configs" / "digits_cnn.yaml",
            "digits_resnet": ROOT / "configs" / "digits_resnet.yaml",
            "mnist1d_cnn": ROOT / "configs" / "mnist1d_cnn.yaml"}


# -- one run ---------------------------------------------------------------------------------------------
def hv_at(history: Sequence[tuple[int, float]], k: int) -> float:
    """Hypervolume after the k-th finished trial (the last value when fewer finished; 0 before any)."""
    if not history:
        return 0.0
    return float(history[min(k, len(history)) - 1][1])


def run_one(dataset: str, overrides: Sequence[str], executor: Any, *, label: str = "",
            keep_final: bool = False) -> dict[str, Any]:
    """One search on fresh stores: its hypervolume history, front, compute and (if any) final test."""
    from nas.config import load_config
    from nas.search import run_search

    path = DATASETS.get(dataset, Path(dataset))
    with temp_folder("geonas-quality-") as folder:
        store = [f"search.storage=sqlite:///{folder / 'optuna.db'}", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
                 f"tracking.artifact_location={folder / 'artifacts'}"]
        final = [] if keep_final else ["search.final_seeds=0"]
        config = load_config(path, [*store, *final, *overrides])
        started = time.perf_counter()
        outcome = run_search(config, executor=executor)
        wall = time.perf_counter() - started
    front = [{"trial": p.trial_number, "macs": p.macs, "val_error": p.val_error, "params": p.params,
              "summary": p.summary, "test": outcome.final_test.get(str(p.trial_number)),
              "val_error_first": (p.extra or {}).get("val_error_first")} for p in outcome.front]
    failed, fail_examples = _reasons(outcome, "FAIL")
    r = {"label": label, "dataset": dataset, "overrides": list(overrides), "sampler": config.search.sampler,
         "seed": config.seed, "n_trials": config.search.n_trials, "reference_point": list(config.search.reference_point),
         "pruner": config.search.pruner, "bound_check": config.search.bound_check,
         # the budget's axis: with count_duplicates false, proposals of structures already tried do not count
         "history": [[n, hv] for n, hv in outcome.hypervolume_history
                     if config.search.count_duplicates or outcome.records[n].duplicate_of is None],
         "history_all": [[n, hv] for n, hv in outcome.hypervolume_history], "hypervolume": outcome.hypervolume,
         "epochs": outcome.epochs_trained,
         # search.recheck_seeds: the trained trials whose first result entered the front and were rechecked
         "rechecked": sum(1 for p in outcome.points if (p.extra or {}).get("val_error_first") is not None
                          and outcome.records[p.trial_number].dispatched_at),
         "complete": outcome.count("COMPLETE"), "pruned": outcome.count("PRUNED"),
         "failed": outcome.count("FAIL"),
         "duplicates": sum(1 for rec in outcome.records.values() if rec.duplicate_of is not None),
         "loop_s": outcome.loop_time, "wall_s": wall,
         "train_s": outcome.train_time, "front": front, "final_test": outcome.final_test,
         "epochs_by_trial": {n: rec.epochs for n, rec in outcome.records.items() if rec.dispatched_at},
         "fail_reasons": failed, "prune_reasons": _reasons(outcome, "PRUNED")[0], "fail_examples": fail_examples}
    print(f"  [{label or dataset}] sampler={r['sampler']} seed={r['seed']}: HV {r['hypervolume']:.4f}, "
          f"{r['complete']} complete / {r['pruned']} pruned / {r['failed']} failed / {r['duplicates']} duplicates, {r['epochs']} epochs, "
          f"loop {r['loop_s']:.0f} s; failed {r['fail_reasons']}, pruned {r['prune_reasons']}", flush=True)
    for kind, example in r["fail_examples"].items():
        if kind not in ("infeasible", "diverged"):
            print(f"    first {kind} failure: {example[:500]}", flush=True)
    return r


def _reasons(outcome: Any, state: str) -> tuple[dict[str, int], dict[str, str]]:
    """Counts of the first word of the reasons of trials in `state` (infeasible, diverged, bound, pruner), and
    the first full reason of each (a failure's message says what to fix; the counts do not)."""
    counts: dict[str, int] = {}
    examples: dict[str, str] = {}
    for r in outcome.records.values():
        if r.state == state:
            key = (r.reason or "?").split(":", 1)[0]
            counts[key] = counts.get(key, 0) + 1
            examples.setdefault(key, (r.reason or "?")[:2000])
    return counts, examples


# -- aggregation -----------------------------------------------------------------------------------------
def spread(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict[str, float]) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f} [{s['min']:.4f}, {s['max']:.4f}]"


def mean_curve(runs: Sequence[dict[str, Any]], n: int) -> list[float]:
    return [statistics.fmean(hv_at(r["history"], k) for r in runs) for k in range(1, n + 1)]


def first_reaching(curve: Sequence[float], target: float) -> int | None:
    for k, v in enumerate(curve, start=1):
        if v >= target - 1e-12:
            return k
    return None


def paired(runs: Sequence[dict[str, Any]], base: dict[int, dict[str, Any]], at: Sequence[int]) -> dict[str, Any]:
    """Per seed (both arms share the split and the start-up trials): this arm's HV minus the baseline's at each
    checkpoint, and at half the last checkpoint against the baseline at the last (the 2x target, per seed);
    mean, standard error of the mean, and in how many seeds this arm is ahead."""
    last = max(at)
    pairs = [(r, base[r["seed"]]) for r in runs if r["seed"] in base]
    out: dict[str, Any] = {}
    for name, k, kb in [*((str(k), k, k) for k in at), (f"{last // 2}_vs_{last}", last // 2, last)]:
        diffs = [hv_at(r["history"], k) - hv_at(b["history"], kb) for r, b in pairs]
        if diffs:
            se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
            out[name] = {"mean": statistics.fmean(diffs), "se": se, "ahead": sum(d > 0 for d in diffs),
                         "tied": sum(d == 0 for d in diffs), "n": len(diffs)}
    return out


def compare(runs: Sequence[dict[str, Any]], at: Sequence[int], baseline: str = "random") -> dict[str, Any]:
    """Per dataset: HV spread at each checkpoint per sampler, and trials the others need to match the
    baseline's mean HV at the last checkpoint."""
    out: dict[str, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        by_sampler: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            if r["dataset"] == dataset:
                by_sampler.setdefault(r["label"], []).append(r)
        last = max(at)
        entry: dict[str, Any] = {"samplers": {}}
        for label, rs in by_sampler.items():
            entry["samplers"][label] = {
                "seeds": [r["seed"] for r in rs], "sampler": rs[0]["sampler"],
                "hv": {str(k): spread([hv_at(r["history"], k) for r in rs]) for k in at},
                "epochs": spread([r["epochs"] for r in rs]), "loop_s": spread([r["loop_s"] for r in rs]),
                "pruned": spread([r["pruned"] for r in rs]), "failed": spread([r["failed"] for r in rs]),
                "mean_curve": mean_curve(rs, last)}
        if baseline in by_sampler:
            target = entry["samplers"][baseline]["hv"][str(last)]["mean"]
            entry["baseline_target_hv"] = target
            base = {r["seed"]: r for r in by_sampler[baseline]}
            for label, rs in by_sampler.items():
                s = entry["samplers"][label]
                if label != baseline:
                    s["paired"] = paired(rs, base, at)
                s["trials_to_match_mean"] = first_reaching(s["mean_curve"], target)
                s["trials_to_match_per_seed"] = [first_reaching([hv_at(r["history"], k) for k in range(1, last + 1)],
                                                                target) for r in rs]
        out[dataset] = entry
    return out


def report(comparison: dict[str, Any], at: Sequence[int], default_label: str = "default",
           baseline: str = "random") -> str:
    lines = []
    last = max(at)
    for dataset, entry in comparison.items():
        lines.append(f"\n### {dataset}\n")
        rows = []
        for label, s in entry["samplers"].items():
            match = s.get("trials_to_match_mean")
            rows.append([label, s["sampler"], ",".join(map(str, s["seeds"])),
                         *[fmt(s["hv"][str(k)]) for k in at],
                         f"{s['epochs']['mean']:.0f} ± {s['epochs']['std']:.0f}", f"{s['loop_s']['mean']:.0f}",
                         "never" if match is None and "trials_to_match_mean" in s else str(match or "-"),
                         str(s.get("trials_to_match_per_seed", "-"))])
        lines.append(table(["run", "sampler", "seeds", *[f"HV@{k} mean ± std [min, max]" for k in at],
                            "epochs", "loop s (mean)", f"trials to random's mean HV@{last}", "per seed"], rows))
        for label, s in entry["samplers"].items():
            if s.get("paired"):
                parts = [f"{k.replace('_vs_', ' vs ')}: {v['mean']:+.4f} ± {v['se']:.4f} (ahead in {v['ahead']}, tied in "
                         f"{v['tied']} of {v['n']})" for k, v in s["paired"].items()]
                lines.append(f"\n{label} minus {baseline} per seed (mean ± standard error) at " + "; ".join(parts))
        if "baseline_target_hv" in entry and default_label in entry["samplers"]:
            m = entry["samplers"][default_label].get("trials_to_match_mean")
            ok = m is not None and m <= last // 2
            lines.append(f"\nTarget (default reaches random's mean HV@{last} = {entry['baseline_target_hv']:.4f} "
                         f"in <= {last // 2} trials): {'MET' if ok else 'NOT MET'} "
                         f"({'at ' + str(m) if m else 'not within ' + str(last)} trials).")
    return "\n".join(lines)


@contextlib.contextmanager
def _tpe_options(options: dict[str, Any]) -> Iterator[None]:
    """TPE with `options` over the service's arguments while the block runs (an experiment; the service's
    settings are nas.study.make_sampler's)."""
    import nas.study

    options = dict(options)
    if (frac := options.pop("gamma_frac", None)) is not None:
        options["gamma"] = lambda n: min(math.ceil(frac * n), 25)
    original = nas.study.make_sampler
    nas.study.make_sampler = functools.partial(original, **options)
    try:
        yield
    finally:
        nas.study.make_sampler = original


def _parse_tpe_options(parser: argparse.ArgumentParser, text: str) -> dict[str, Any]:
    """`--tpe-options` as a dict of TPESampler arguments (plus gamma_frac); a bad one exits with a one-line error."""
    import inspect

    import optuna

    try:
        options = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        parser.error(f"--tpe-options is not valid JSON ({exc}): {text!r}")
    if not isinstance(options, dict):
        parser.error(f"--tpe-options must be a JSON object of TPESampler arguments, but got {text!r}")
    # gamma and weights are functions in TPESampler, which JSON cannot give: gamma_frac stands for gamma
    known = set(inspect.signature(optuna.samplers.TPESampler).parameters) - {"gamma", "weights", "constraints_func",
                                                                             "seed"}  # the seed is --seeds
    known |= {"gamma_frac"}
    unknown = sorted(set(options) - known)
    if unknown:
        parser.error(f"--tpe-options: unknown or unsupported TPESampler argument(s) {unknown}; known: {sorted(known)}")
    frac = options.get("gamma_frac", 0.1)
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac <= 1:
        parser.error(f"--tpe-options: gamma_frac must be a number in (0, 1], but got {frac!r}")
    return options


# -- main ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None, session: Any = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits_cnn,digits_resnet,mnist1d_cnn",
                   help="comma-separated: " + ", ".join(DATASETS) + " or config paths")
    p.add_argument("--trials", type=int, default=80)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--at", default="20,40,80", help="checkpoints (trials) at which the hypervolume is read")
    p.add_argument("--samplers", default="default,random",
                   help="'default' (the config's sampler) and/or sampler names; 'random' is the baseline")
    p.add_argument("--compare-samplers", default="",
                   help="extra samplers (e.g. nsga2,gp) run on the first dataset only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every run (repeatable)")
    p.add_argument("--tag", default="", help="appended to every run's label (e.g. '+pareto' with --set search.mode=pareto)")
    p.add_argument("--baseline", default="random", help="label of the baseline runs (default: %(default)s)")
    p.add_argument("--parallelism", type=int, default=2,
                   help="trials in flight (1: each run is reproducible, TPE sees every earlier trial when asked)")
    p.add_argument("--tpe-options", default="", metavar="JSON",
                   help="extra TPESampler arguments for the tpe runs, e.g. '{\"prior_weight\": 3.0}'; "
                        "'gamma_frac': g sets gamma(n) = min(ceil(g·n), 25) (Optuna's default: g = 0.1)")
    p.add_argument("--from-json", nargs="+", type=Path, metavar="FILE",
                   help="run nothing: compare the runs of these earlier --out files together (e.g. seeds run apart)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    tpe_options = _parse_tpe_options(p, args.tpe_options)
    at = sorted({min(int(k), args.trials) for k in args.at.split(",")})
    if args.from_json:
        runs = sorted((r for path in args.from_json for r in json.loads(path.read_text())["runs"]),
                      key=lambda r: (r["dataset"], r["label"], r["seed"]))
        comparison = compare(runs, at, baseline=args.baseline)
        print(report(comparison, at, default_label="default" + args.tag, baseline=args.baseline))
        return {"comparison": comparison, "runs": runs}
    quiet_logs()
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    datasets = [d for d in args.datasets.split(",") if d]
    plan: list[tuple[str, str, int]] = []
    for i, dataset in enumerate(datasets):
        samplers = [s for s in args.samplers.split(",") if s]
        if i == 0:
            samplers += [s for s in args.compare_samplers.split(",") if s and s not in samplers]
        for sampler in samplers:
            for seed in seeds:
                plan.append((dataset, sampler, seed))
    info = machine()
    print(f"# search quality: {machine_line(info)}\n# {len(plan)} runs of {args.trials} trials", flush=True)
    runs = []
    started = time.perf_counter()
    with ray_session(session) as ray, _tpe_options(tpe_options):
        ex = ray.executor(args.parallelism)
        for dataset, sampler, seed in plan:
            overrides = [f"seed={seed}", f"search.n_trials={args.trials}", *args.set]
            if sampler != "default":
                overrides.append(f"search.sampler={sampler}")
            runs.append(run_one(dataset, overrides, ex, label=sampler + args.tag))
    comparison = compare(runs, at, baseline=args.baseline)
    text = report(comparison, at, default_label="default" + args.tag, baseline=args.baseline)
    print(text)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    data = {"machine": info, "args": vars(args) | {"out": str(args.out)}, "comparison": comparison,
            "runs": runs, "total_s": time.perf_counter() - started}
    write_json(args.out, data)
    return data


if __name__ == "__main__":
    main()
