"""The fixed-point rule against fixed epoch budgets: epochs spent and the quality of the front.

    python -m benchmarks.fixed_point [--trials 30] [--budgets 60,30] [--seeds 0,1,2]
        [--variant train.patience=4] [--out fixed_point.json]

Digits CNN trials, random sampler with a fixed seed (every run trains the same architecture sequence with
the same per-trial seeds), no pruner, no bound check. One run stops each trial by the fixed-point rule
(the config's train section, capped at ``train.max_epochs``, 60); each other run trains every trial for a
fixed budget of N epochs (``train.max_epochs=N train.loss_tol=0 train.update_tol=0``: the stopping test
never passes; the learning rate is still cut when a patience window ends worse than the best before it).
In every run a trial's validation error is that of its best-validation-loss epoch. Each seed draws another
sequence of architectures; with several seeds the summary sums the epochs and averages the hypervolume
ratios. ``--variant`` adds rule runs with other settings (e.g. ``train.patience=4``) against the same budgets.
"""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks._common import (EVERY_TRIAL_TRAINS, RaySession, machine, machine_line, measure_search, parser,
                                quiet_logs, ray_session, table, write_json)

TARGET_SAVING = 0.40


def _stopped_early(m: Any, max_epochs: int) -> tuple[int, int]:
    """(trials that stopped before the epoch cap, trials trained): the rule's stops, from the trial records."""
    trained = [r for r in m.outcome.records.values() if r.dispatched_at and r.state == "COMPLETE"]
    return sum(1 for r in trained if r.epochs < max_epochs), len(trained)


def main(argv: list[str] | None = None, session: RaySession | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--budgets", default="60,30", help="fixed epoch budgets to compare, comma-separated")
    p.add_argument("--max-epochs", type=int, default=60, help="the rule's cap (train.max_epochs)")
    p.add_argument("--seeds", default="0",
                   help="comma-separated config seeds (the sampler's): one draw of architectures per seed, summed")
    p.add_argument("--parallelism", type=int, default=1)
    p.add_argument("--rule-set", action="append", default=[], metavar="KEY=VALUE",
                   help="overrides of the rule run only (e.g. train.patience=4), to try other tolerances")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="another rule run with these overrides, compared with the same budgets (repeatable)")
    args = p.parse_args(argv)
    quiet_logs()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    rules = [("fixed-point rule", [f"train.max_epochs={args.max_epochs}", *args.rule_set])]
    rules += [(f"rule, {v}", [f"train.max_epochs={args.max_epochs}", *v.split(",")]) for v in args.variant]
    fixed = [(f"fixed {b} epochs", [f"train.max_epochs={b}", "train.loss_tol=0", "train.update_tol=0"])
             for b in budgets]
    results: dict[str, Any] = {"benchmark": "fixed_point", "machine": machine(), "target_saving": TARGET_SAVING,
                               "rules": [label for label, _ in rules], "seeds": []}
    with ray_session(session) as session:
        executor = session.executor(args.parallelism)
        for seed in seeds:
            runs = [_run(label, overrides, seed, args, executor) for label, overrides in [*rules, *fixed]]
            by_label = {r["label"]: r for r in runs}
            comparisons = [compare(by_label[rule], by_label[budget]) for rule, _ in rules for budget, _ in fixed]
            results["seeds"].append({"seed": seed, "runs": runs, "comparisons": comparisons,
                                     "same_architectures": all(r["archs"] == runs[0]["archs"] for r in runs)})
            print(report(results, results["seeds"][-1]), flush=True)
    results["runs"] = results["seeds"][0]["runs"]
    results["comparisons"] = overall(results["seeds"])
    if len(seeds) > 1:
        print(summary(results))
    write_json(args.out, results)
    return results


def _run(label: str, overrides: list[str], seed: int, args: Any, executor: Any) -> dict[str, Any]:
    m = measure_search(label, [*EVERY_TRIAL_TRAINS, f"search.n_trials={args.trials}", f"seed={seed}", *overrides],
                       executor, config_path=args.config, check_load=not args.no_load_check)
    config = m.config
    reached, trained = _stopped_early(m, config.train.max_epochs)
    s = m.summary
    return {
        "label": label, "overrides": overrides, "trials": s["trials"], "complete": s["complete"],
        "trained": s["trained"], "duplicates": s["duplicates"], "epochs": s["epochs"],
        "train_time_s": s["train_time_s"], "loop_time_s": s["loop_time_s"], "hypervolume": s["hypervolume"],
        "front_size": s["front_size"], "best_val_error": s["best_val_error"],
        "mean_val_error": s["mean_val_error"], "stopped_early": reached, "stopped_early_of": trained,
        "archs": s["archs"], "val_errors": s["val_errors"], "epochs_by_trial": s["epochs_by_trial"],
        "summaries": s["summaries"], "suspect_reruns": s["suspect_reruns"],
        "front": [(pt.trial_number, pt.macs, pt.val_error, pt.summary) for pt in m.outcome.front],
        "reference_point": list(config.search.reference_point),
        "other_cores_before": m.load.get("other_cores_before"), "loadavg_before": m.load.get("loadavg"),
        "other_cores_during": s["other_cores_during"], "busy": s["busy"], "discarded": s["discarded"]}


def overall(per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each (rule, budget) pair over every seed: epochs summed, hypervolume ratios averaged."""
    out = []
    for i, first in enumerate(per_seed[0]["comparisons"]):
        cs = [s["comparisons"][i] for s in per_seed]
        rule_epochs = sum(c["rule_epochs"] for c in cs)
        fixed_epochs = sum(c["fixed_epochs"] for c in cs)
        ratios = [c["hypervolume_ratio"] for c in cs]
        out.append({"rule": first["rule"], "against": first["against"], "seeds": [s["seed"] for s in per_seed],
                    "epoch_ratio": rule_epochs / fixed_epochs, "epoch_saving": 1 - rule_epochs / fixed_epochs,
                    "hypervolume_ratio": statistics.fmean(ratios), "hypervolume_ratios": ratios,
                    "epoch_savings": [c["epoch_saving"] for c in cs],
                    "rule_better": sum(c["rule_better"] for c in cs), "equal": sum(c["equal"] for c in cs),
                    "rule_worse": sum(c["rule_worse"] for c in cs)})
    return out


def summary(results: dict[str, Any]) -> str:
    rows = [[c["rule"], c["against"], ", ".join(str(s) for s in c["seeds"]),
             ", ".join(f"{100 * e:.1f}%" for e in c["epoch_savings"]), f"{100 * c['epoch_saving']:.1f}%",
             ", ".join(f"{r:.3f}" for r in c["hypervolume_ratios"]), c["hypervolume_ratio"],
             f"{c['rule_better']}/{c['equal']}/{c['rule_worse']}"] for c in results["comparisons"]]
    return "\n".join(["over every seed (epochs summed; HV ratio = mean of the per-seed ratios):",
                      table(["rule", "vs", "seeds", "epochs saved per seed", "epochs saved (all)",
                             "HV ratio per seed", "HV ratio (mean)", "better/equal/worse (paired)"], rows)])


def compare(rule: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """The rule against one fixed budget: epochs, time, front quality, and per-architecture errors (paired)."""
    common = sorted(set(rule["val_errors"]) & set(fixed["val_errors"]))
    diffs = [rule["val_errors"][n] - fixed["val_errors"][n] for n in common]
    return {
        "rule": rule["label"], "against": fixed["label"], "rule_epochs": rule["epochs"],
        "fixed_epochs": fixed["epochs"], "epoch_ratio": rule["epochs"] / fixed["epochs"],
        "epoch_saving": 1 - rule["epochs"] / fixed["epochs"],
        "train_time_ratio": rule["train_time_s"] / fixed["train_time_s"],
        "hypervolume_ratio": rule["hypervolume"] / fixed["hypervolume"] if fixed["hypervolume"] else float("nan"),
        "best_val_error_diff": rule["best_val_error"] - fixed["best_val_error"],
        "paired_trials": len(common),
        "paired_mean_diff": statistics.fmean(diffs) if diffs else float("nan"),
        "paired_median_diff": statistics.median(diffs) if diffs else float("nan"),
        "rule_better": sum(1 for d in diffs if d < -1e-12), "equal": sum(1 for d in diffs if abs(d) <= 1e-12),
        "rule_worse": sum(1 for d in diffs if d > 1e-12),
        "worst": [{"trial": n, "summary": rule["summaries"].get(n, ""), "rule_epochs": rule["epochs_by_trial"].get(n),
                   "rule_val_error": rule["val_errors"][n], "fixed_val_error": fixed["val_errors"][n]}
                  for n in sorted(common, key=lambda n: fixed["val_errors"][n] - rule["val_errors"][n])[:3]
                  if rule["val_errors"][n] > fixed["val_errors"][n]],
    }


def report(results: dict[str, Any], one: dict[str, Any]) -> str:
    """One seed's runs and comparisons."""
    runs = one["runs"]
    headers = ["run", "trained", "epochs", "epochs/trial", "Σ train s", "stopped before cap", "hypervolume",
               "front size", "best val err", "mean val err", "other cores (before/during)"]
    rows = [[r["label"], r["trained"], r["epochs"], r["epochs"] / max(1, r["trained"]), r["train_time_s"],
             f"{r['stopped_early']}/{r['stopped_early_of']}", r["hypervolume"], r["front_size"],
             r["best_val_error"], r["mean_val_error"], f"{r['other_cores_before']}/{r['other_cores_during']}"]
            for r in runs]
    crow = [[c["rule"], c["against"], c["epoch_ratio"], f"{100 * c['epoch_saving']:.1f}%", c["train_time_ratio"],
             c["hypervolume_ratio"], c["best_val_error_diff"], c["paired_mean_diff"], c["paired_median_diff"],
             f"{c['rule_better']}/{c['equal']}/{c['rule_worse']}"] for c in one["comparisons"]]
    lines = [f"# fixed point: the fixed-point rule vs fixed epoch budgets, same architectures (seed {one['seed']})",
             machine_line(results["machine"]),
             f"reference point of the hypervolume: {runs[0]['reference_point']}; same architecture sequence in "
             f"every run: {one['same_architectures']}", "", table(headers, rows), "",
             "rule vs budget (val error differences are rule - fixed; paired = same architecture and seed):",
             table(["rule", "vs", "epoch ratio", "epochs saved", "train time ratio", "HV ratio", "Δ best val err",
                    "paired mean Δ", "paired median Δ", "rule better/equal/worse"], crow), ""]
    for c in one["comparisons"]:
        if c["worst"]:
            lines += [f"architectures where the {c['rule']} does worst against {c['against']}:",
                      table(["trial", "architecture", "rule epochs", "rule val err", "fixed val err"],
                            [[w["trial"], w["summary"], str(w["rule_epochs"]), w["rule_val_error"],
                              w["fixed_val_error"]] for w in c["worst"]]), ""]
    for c in one["comparisons"]:
        met = c["epoch_saving"] >= results["target_saving"]
        lines.append(f"target, {c['rule']} vs {c['against']}: >= {100 * results['target_saving']:.0f}% fewer epochs "
                     f"-> {'met' if met else 'NOT met'} ({100 * c['epoch_saving']:.1f}%), "
                     f"HV ratio {c['hypervolume_ratio']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
