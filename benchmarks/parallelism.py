"""Completed trials per minute with 1 vs 2 trials at once on the same local Ray, same budget.

    python -m benchmarks.parallelism [--trials 24] [--repeats 2] [--out parallelism.json]

Digits CNN trials, random sampler with a fixed seed (both runs ask for the same architecture sequence and
each trial has the same training seed), no pruner, no bound check: every trial trains. One local Ray with
every CPU of the machine; each run gets its own executor (parallelism 1 or 2, one CPU and one torch thread
per trial). Runs alternate 1, 2, 2, 1, ... so that drifts of the machine fall on both sides. The rate is
``COMPLETE trials / loop time`` (the ask/train/tell loop, without Ray start-up and the final report).
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks._common import (DIGITS, EVERY_TRIAL_TRAINS, RaySession, machine, machine_line, make_config,
                                measure_search, parser, quiet_logs, ray_session, table, temp_folder,
                                wait_until_quiet, write_json)

TARGET = 1.8


def greedy_makespan(durations: list[float], workers: int) -> float:
    """Makespan of running `durations` in order, each on the first free worker (what the driver does)."""
    free = [0.0] * workers
    for d in durations:
        i = min(range(workers), key=free.__getitem__)
        free[i] += d
    return max(free)


def figures(m: Any, parallelism: int) -> dict[str, Any]:
    s = m.summary
    loop = s["loop_time_s"]
    return {"label": m.label, "parallelism": parallelism, "trials": s["trials"], "complete": s["complete"],
            "trained": s["trained"], "duplicates": s["duplicates"], "epochs": s["epochs"], "loop_time_s": loop,
            "train_time_s": s["train_time_s"], "complete_per_min": 60 * s["complete"] / loop,
            "trained_per_min": 60 * s["trained"] / loop, "epochs_per_min": 60 * s["epochs"] / loop,
            "other_cores_before": m.load.get("other_cores_before"), "loadavg_before": m.load.get("loadavg"),
            "other_cores_during": s["other_cores_during"], "busy": s["busy"], "discarded": s["discarded"], "archs": s["archs"], "val_errors": s["val_errors"],
            "epochs_by_trial": s["epochs_by_trial"], "cpu": m.cpu,
            "train_times": {r.number: r.train_wall_time for r in m.outcome.records.values()
                            if r.dispatched_at and r.state == "COMPLETE"}}


# -- the machine's own ceiling: the same trainer in 1 vs 2 plain processes (no Ray, no driver) ---------------
def _ceiling_job(arch_jsons: list[str], data: Any, train: Any, seed: int, start: Any, out: Any) -> None:
    import torch

    from search_spaces import Architecture
    from workers import train_to_fixed_point

    torch.set_num_threads(1)
    start.wait()
    t = time.perf_counter()
    for arch_json in arch_jsons:
        train_to_fixed_point(Architecture.from_json(arch_json), data, train, seed=seed)
    out.put(time.perf_counter() - t)


def _ceiling_round(jobs: int, arch_jsons: list[str], data: Any, train: Any) -> float:
    """Seconds until `jobs` processes, started together, have each trained every architecture once."""
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_ceiling_job, args=(arch_jsons, data, train, 7 + k, start, out)) for k in range(jobs)]
    for proc in procs:
        proc.start()
    time.sleep(8)  # let every process import torch before the clock starts
    start.set()
    times = [out.get(timeout=900) for _ in procs]
    for proc in procs:
        proc.join()
    return max(times)


def ceiling(config_path: Path, n_archs: int, epochs: int, seed: int, check_load: bool) -> dict[str, Any]:
    """Throughput of 2 plain trainer processes vs 1 on this machine: the best any executor could do.

    A few architectures sampled from the config's space (depth >= 1) are each trained for a fixed
    `epochs`, in one process alone, then in two processes at once (rounds 1, 2, 2, 1).
    """
    import optuna

    from nas.data import load_dataset
    from search_spaces import get_space

    with temp_folder() as folder:
        config = make_config(folder, [], config_path or DIGITS)
    space_cfg = dict(config.space)
    space = get_space(space_cfg.pop("name"), **space_cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    archs: list[str] = []
    while len(archs) < n_archs:
        arch = space.sample(study.ask())
        if arch.to_dict().get("depth", 1) >= 1:
            archs.append(arch.to_json())
    data = load_dataset(config.data, config.seed).without_test()
    train = replace(config.train, max_epochs=epochs, loss_tol=0.0, update_tol=0.0)
    rounds = []
    for jobs in (1, 2, 2, 1):
        load = wait_until_quiet(f"ceiling, {jobs} process(es)") if check_load else {}
        seconds = _ceiling_round(jobs, archs, data, train)
        rounds.append({"processes": jobs, "seconds": seconds, "jobs_per_min": 60 * jobs / seconds,
                       "other_cores_before": load.get("other_cores_before")})
    one = statistics.fmean(r["jobs_per_min"] for r in rounds if r["processes"] == 1)
    two = statistics.fmean(r["jobs_per_min"] for r in rounds if r["processes"] == 2)
    return {"archs": n_archs, "epochs": epochs, "rounds": rounds, "ratio": two / one}


def main(argv: list[str] | None = None, session: RaySession | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--repeats", type=int, default=2, help="pairs of runs (1 then 2, then 2 then 1, ...)")
    p.add_argument("--seed", type=int, default=0, help="config seed (the sampler's seed)")
    p.add_argument("--warmup-trials", type=int, default=2)
    p.add_argument("--ceiling-archs", type=int, default=4,
                   help="architectures in the no-Ray ceiling measurement (0: skip it)")
    p.add_argument("--ceiling-epochs", type=int, default=15)
    args = p.parse_args(argv)
    quiet_logs()
    results: dict[str, Any] = {"benchmark": "parallelism", "machine": machine(), "target": TARGET, "runs": []}
    order: list[int] = []
    for i in range(args.repeats):
        order += [1, 2] if i % 2 == 0 else [2, 1]
    with ray_session(session) as session:
        results["ray_cpus"] = session.cpus()
        executors = {1: session.executor(1), 2: session.executor(2)}
        # Start both workers first (the first task of a worker imports torch).
        measure_search("warm-up", [*EVERY_TRIAL_TRAINS, f"search.n_trials={args.warmup_trials}"], executors[2],
                       config_path=args.config, check_load=False)
        for k, parallelism in enumerate(order):
            m = measure_search(f"run {k + 1}: parallelism {parallelism}",
                               [*EVERY_TRIAL_TRAINS, f"search.n_trials={args.trials}", f"seed={args.seed}"],
                               executors[parallelism], config_path=args.config, check_load=not args.no_load_check)
            results["runs"].append(figures(m, parallelism))
    runs = results["runs"]
    rate = {q: statistics.fmean(r["complete_per_min"] for r in runs if r["parallelism"] == q) for q in (1, 2)}
    results["ratio"] = rate[2] / rate[1]
    results["ratio_trained"] = (statistics.fmean(r["trained_per_min"] for r in runs if r["parallelism"] == 2)
                                / statistics.fmean(r["trained_per_min"] for r in runs if r["parallelism"] == 1))
    results["same_architectures"] = all(r["archs"] == runs[0]["archs"] for r in runs)
    same_errors = [n for n, e in runs[0]["val_errors"].items() if all(r["val_errors"].get(n) == e for r in runs)]
    results["same_val_errors"] = f"{len(same_errors)}/{len(runs[0]['val_errors'])}"
    # What 2 workers could give at best: the p=1 trainer times scheduled greedily on 2 workers, no slowdown.
    p1 = [r for r in runs if r["parallelism"] == 1]
    p2 = [r for r in runs if r["parallelism"] == 2]
    ideal = []
    for r in p1:
        times = [r["train_times"][n] for n in sorted(r["train_times"])]
        ideal.append(sum(times) / greedy_makespan(times, 2))
    results["ideal_ratio_from_p1_train_times"] = statistics.fmean(ideal)
    results["train_time_inflation_p2_vs_p1"] = (statistics.fmean(r["train_time_s"] for r in p2)
                                                / statistics.fmean(r["train_time_s"] for r in p1))
    if args.ceiling_archs > 0:
        results["ceiling"] = ceiling(args.config, args.ceiling_archs, args.ceiling_epochs, args.seed,
                                     not args.no_load_check)
    print(report(results))
    write_json(args.out, results)
    return results


def report(results: dict[str, Any]) -> str:
    runs = results["runs"]
    headers = ["run", "par.", "complete", "trained", "epochs", "loop s", "Σ train s", "complete/min", "epochs/min",
               "other cores (before/during)"]
    rows = [[r["label"].split(":")[0], r["parallelism"], r["complete"], r["trained"], r["epochs"], r["loop_time_s"],
             r["train_time_s"], r["complete_per_min"], r["epochs_per_min"],
             f"{r['other_cores_before']}/{r['other_cores_during']}"] for r in runs]
    verdict = "met" if results["ratio"] >= results["target"] else "NOT met"
    lines = ["# parallelism: completed digits trials per minute, 1 vs 2 trials at once",
             machine_line(results["machine"]), f"Ray CPUs: {results['ray_cpus']:.0f}", "", table(headers, rows), "",
             table(["figure", "value"], [
                 ["ratio of completed trials/min, parallelism 2 / 1", results["ratio"]],
                 ["ratio of trained trials/min, parallelism 2 / 1", results["ratio_trained"]],
                 ["best possible ratio: p=1 train times, greedy on 2 workers, no slowdown",
                  results["ideal_ratio_from_p1_train_times"]],
                 ["Σ trainer time, parallelism 2 / 1 (slowdown of each trial when two share the CPUs)",
                  results["train_time_inflation_p2_vs_p1"]],
                 ["same architecture sequence in every run", str(results["same_architectures"])],
                 ["trials with identical val error in every run", results["same_val_errors"]]]), ""]
    if "ceiling" in results:
        c = results["ceiling"]
        lines += [f"Ceiling of the machine: {c['archs']} architectures x {c['epochs']} epochs in plain processes "
                  f"(no Ray, no driver), 1 vs 2 at once:",
                  table(["round", "processes", "seconds", "jobs/min", "other cores before"],
                        [[k + 1, r["processes"], r["seconds"], r["jobs_per_min"], str(r["other_cores_before"])]
                         for k, r in enumerate(c["rounds"])]),
                  f"ceiling ratio (2 processes / 1): {c['ratio']:.2f}", ""]
    for q in (1, 2):
        cpu = [r for r in runs if r["parallelism"] == q][-1]["cpu"]
        lines += [f"CPU seconds during the last parallelism-{q} run (wall {cpu['wall_s']:.1f} s):",
                  table(["where", "CPU s", "cores"],
                        [[k, v, v / cpu["wall_s"]] for k, v in sorted(cpu["ours"].items(), key=lambda kv: -kv[1])
                         if v > 0.005] + [["other processes (not this benchmark)", cpu["other_cpu_s"],
                                            cpu["other_cores"]]]), ""]
    lines += [f"target: ratio >= {results['target']} -> {verdict} ({results['ratio']:.2f}x)"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
