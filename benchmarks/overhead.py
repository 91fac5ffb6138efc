"""Share of a search's loop time spent outside training (Ray, Optuna, MLflow, the driver itself).

    python -m benchmarks.overhead [--trials 30] [--profile] [--out overhead.json]

Digits trials (configs/digits_cnn.yaml), one trial at a time, random sampler with a fixed seed, no
pruner and no bound check, so every trial trains. The figure is

    overhead = 1 - Σ trainer wall time / loop time

and the same with the geometry diagnostics (issue 5, timed inside the worker) counted with training, which
leaves what Ray, Optuna, MLflow and the driver cost.

where the loop time is that of the ask/train/tell loop (`SearchOutcome.loop_time`: without Ray start-up,
data loading and the final report). The trainer's wall time starts once the model is built inside the
worker, so model building, task scheduling and result delivery count as overhead. A first, small search
warms the Ray workers up (their first task imports torch); its figures are shown as the "cold" row.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import statistics
from pathlib import Path
from typing import Any

from benchmarks._common import (EVERY_TRIAL_TRAINS, RaySession, around_loop, machine, machine_line, make_config,
                                measure_search, parser, quiet_logs, ray_session, table, temp_folder,
                                wait_until_quiet, write_json)

TARGET = 0.05


def figures(m: Any) -> dict[str, Any]:
    """Overhead figures of one measured search (parallelism 1)."""
    s, outcome = m.summary, m.outcome
    records = [r for r in outcome.records.values() if r.dispatched_at and r.state == "COMPLETE"]
    loop, train = s["loop_time_s"], s["train_time_s"]
    outside_in_flight = [r.finished_at - r.dispatched_at - r.train_wall_time for r in records]
    # Per trained trial: outside-trainer time in flight = a + b * epochs (least squares).
    xs = [float(r.epochs) for r in records]
    a = b = float("nan")
    if len(records) >= 3 and statistics.pvariance(xs) > 0:
        b, a = statistics.linear_regression(xs, outside_in_flight)
    finished = s["trials"]
    return {
        "label": m.label, "trials": finished, "trained": s["trained"], "duplicates": s["duplicates"],
        "epochs": s["epochs"], "loop_time_s": loop, "train_time_s": train,
        "overhead": 1 - train / loop if loop else float("nan"),
        "diagnose_time_s": s["diagnose_time_s"],
        "diagnostics_share": s["diagnose_time_s"] / loop if loop else float("nan"),
        "overhead_without_diagnostics": 1 - (train + s["diagnose_time_s"]) / loop if loop else float("nan"),
        "overhead_with_reported_train_time": 1 - s["train_time_reported_s"] / loop if loop else float("nan"),
        "driver_time_per_trial_s": (loop - train) / finished,
        "in_flight_outside_trainer_per_trained_trial_s": statistics.fmean(outside_in_flight) if records else 0.0,
        "between_trials_per_trial_s": (loop - s["in_flight_s"]) / finished,
        "fit_per_trial_s": a, "fit_per_epoch_s": b,
        "train_time_per_trained_trial_s": train / max(1, s["trained"]),
        "other_cores_before": m.load.get("other_cores_before"), "loadavg_before": m.load.get("loadavg"),
        "other_cores_during": s["other_cores_during"], "busy": s["busy"], "discarded": s["discarded"], "cpu": m.cpu,
    }


def profile_search(session: RaySession, config_path: Path, trials: int, seed: int, top: int = 25,
                   check_load: bool = True) -> dict[str, Any]:
    """cProfile the driver's main thread through one more search; the top costs by cumulative and own time."""
    from nas.search import run_search

    load = wait_until_quiet("profile") if check_load else {}
    with temp_folder() as folder:
        config = make_config(folder, [*EVERY_TRIAL_TRAINS, f"search.n_trials={trials}", f"seed={seed}"], config_path)
        executor = session.executor(1)
        profiler = cProfile.Profile()
        with around_loop(profiler.enable, profiler.disable):  # the loop only, as loop_time
            outcome = run_search(config, executor=executor)
    stats = pstats.Stats(profiler)
    rows = []
    for (filename, line, func), (cc, nc, tt, ct, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append({"function": _short(filename, line, func), "calls": nc, "own_s": tt, "cumulative_s": ct,
                     "ours": _is_driver_step(filename, func)})
    by_cum = sorted((r for r in rows if r["ours"]), key=lambda r: -r["cumulative_s"])[:top]
    by_own = sorted(rows, key=lambda r: -r["own_s"])[:top]
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(80)
    return {"trials": trials, "load": load, "loop_time_s": outcome.loop_time, "train_time_s": summarize_train(outcome),
            "by_cumulative": by_cum, "by_own": by_own, "pstats": text.getvalue()}


_OPTUNA_STEPS = {"ask", "tell", "report", "should_prune", "set_user_attr", "_suggest"}


def _is_driver_step(filename: str, func: str) -> bool:
    """The service's own functions, Optuna's ask/tell/report calls, Ray's wait/get and SQLite commits."""
    f = filename.replace("\\", "/")
    if any(part in f for part in ("/nas/", "/workers/", "/search_spaces/")):
        return True
    if "/optuna/" in f and func in _OPTUNA_STEPS:
        return True
    if "/ray/_private/worker.py" in f and func in ("wait", "get", "put"):
        return True
    return "sqlite3.Connection" in func


def summarize_train(outcome: Any) -> float:
    return sum(r.train_wall_time for r in outcome.records.values() if r.dispatched_at and r.state == "COMPLETE")


def _short(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func
    parts = Path(filename).parts
    for anchor in ("site-packages", "main"):
        if anchor in parts:
            parts = parts[parts.index(anchor) + 1:]
            break
    return f"{'/'.join(parts[-3:])}:{line}({func})"


def main(argv: list[str] | None = None, session: RaySession | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--warmup-trials", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="config seed (the sampler's seed)")
    p.add_argument("--profile", action="store_true", help="also cProfile the driver through one more search")
    p.add_argument("--profile-trials", type=int, default=20)
    args = p.parse_args(argv)
    quiet_logs()
    mach = machine()
    results: dict[str, Any] = {"benchmark": "overhead", "machine": mach, "target": TARGET, "runs": []}
    with ray_session(session) as session:
        results["ray_start_s"] = session.start_time
        executor = session.executor(1)
        runs = []
        for label, n in (("first (fresh workers)", args.warmup_trials), ("measured", args.trials)):
            runs.append(measure_search(label, [*EVERY_TRIAL_TRAINS, f"search.n_trials={n}", f"seed={args.seed}"],
                                       executor, config_path=args.config, check_load=not args.no_load_check))
        results["runs"] = [figures(m) for m in runs]
        if args.profile:
            results["profile"] = profile_search(session, args.config, args.profile_trials, args.seed,
                                                check_load=not args.no_load_check)
    print(report(results))
    write_json(args.out, results)
    return results


def report(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = [f"# overhead: digits CNN trials, parallelism 1, every trial trains", machine_line(results["machine"]),
             f"Ray start-up (not in the loop time): {results['ray_start_s']:.1f} s", ""]
    headers = ["run", "trials", "trained", "dup.", "epochs", "loop s", "Σ train s", "overhead",
               "of which diagnostics", "Ray+Optuna+MLflow+driver", "driver s/trial", "other cores (before/during)"]
    rows = [[r["label"], r["trials"], r["trained"], r["duplicates"], r["epochs"], r["loop_time_s"], r["train_time_s"],
             f"{100 * r['overhead']:.1f}%", f"{100 * r['diagnostics_share']:.1f}%",
             f"{100 * r['overhead_without_diagnostics']:.1f}%", r["driver_time_per_trial_s"],
             f"{r['other_cores_before']}/{r['other_cores_during']}"] for r in runs]
    lines += [table(headers, rows), ""]
    m = runs[-1]
    lines += ["Where the driver time of the measured run goes (per trial, seconds):", table(
        ["part", "s"],
        [["between trials (ask, sample, curve, tracking calls, tell of the previous one)",
          m["between_trials_per_trial_s"]],
         ["in flight, outside the trainer (task start, model build, reports, result)",
          m["in_flight_outside_trainer_per_trained_trial_s"]],
         ["  fit of in-flight outside time: fixed part per trial", m["fit_per_trial_s"]],
         ["  fit of in-flight outside time: per epoch", m["fit_per_epoch_s"]],
         ["training (trainer wall time) per trained trial", m["train_time_per_trained_trial_s"]]]), ""]
    if abs(m["overhead"] - m["overhead_with_reported_train_time"]) > 1e-9:
        lines += [f"(With SearchOutcome.train_time, which counts the copied wall time of duplicate trials, the "
                  f"overhead would read {100 * m['overhead_with_reported_train_time']:.1f}%.)", ""]
    cpu = m["cpu"]
    lines += [f"CPU seconds during the measured run (wall {cpu['wall_s']:.1f} s):",
              table(["where", "CPU s", "cores"], [[k, v, v / cpu["wall_s"]] for k, v in
                                                  sorted(cpu["ours"].items(), key=lambda kv: -kv[1]) if v > 0.005] +
                    [["other processes (not this benchmark)", cpu["other_cpu_s"], cpu["other_cores"]]]), ""]
    verdict = "met" if m["overhead"] <= results["target"] else "NOT met"
    lines.append(f"target: overhead <= {100 * results['target']:.0f}% -> {verdict} ({100 * m['overhead']:.1f}%, "
                 f"geometry diagnostics included)")
    plumbing = "met" if m["overhead_without_diagnostics"] <= results["target"] else "NOT met"
    lines.append(f"Ray, Optuna, MLflow and the driver alone (the geometry diagnostics of issue 5, "
                 f"{100 * m['diagnostics_share']:.1f}% of the loop, left out): {plumbing} "
                 f"({100 * m['overhead_without_diagnostics']:.1f}%)")
    if "profile" in results:
        prof = results["profile"]
        lines += ["", f"cProfile of the driver's main thread ({prof['trials']} trials, loop {prof['loop_time_s']:.1f} s, "
                      f"Σ train {prof['train_time_s']:.1f} s), the service's steps, Optuna's ask/tell/report, Ray's wait/get and SQLite commits by cumulative time:",
                  table(["function", "calls", "own s", "cumulative s"],
                        [[r["function"], r["calls"], r["own_s"], r["cumulative_s"]] for r in prof["by_cumulative"]]),
                  "", "top by own time:",
                  table(["function", "calls", "own s", "cumulative s"],
                        [[r["function"], r["calls"], r["own_s"], r["cumulative_s"]] for r in prof["by_own"]])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
