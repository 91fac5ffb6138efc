"""Tracking throughput: how many trials per second one tracker writes to MLflow, with nothing else running.

The driver capacity benchmark measures the whole loop on cores shared with the workers; this one replays
the MLflow writes of the capacity benchmark's trivial trials (one epoch, geometry diagnostics on) into a
tracker alone — no Ray, no Optuna, no training — so it says what tracking itself costs and how fast one
tracker can go: on threads of the calling process (``--process off``, `tracking.process: false`) or in a
process of its own (``on``). Per trial, as the search makes them: a child run with its tags and params
(the params ride on the first batch), ``architecture.json`` and ``complexity_profile.json``, the profile
and diagnostics PNGs, one epoch of curve metrics, the end batch (11 final metrics, 16 diagnostics, a tag)
and the status, and the parent's three per-trial metrics (batched every 2 s).

Figures: trials/s (n_trials / the time from the first write until the last is done, start-up included),
the caller's CPU ms per trial and the tracking process's CPU ms per trial (0 on threads).

Run: ``python -m benchmarks.tracking_throughput [--trials 300] [--process off,on] [--writers 4] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path
from typing import Any

from benchmarks._common import children_cpu, machine, machine_line, temp_folder

EPOCH = ("train_loss", "val_loss", "val_error", "loss_residual", "update_residual", "lr")
FINAL = ("E_comp", "E_CNN", "F", "val_error", "epochs", "fixed_point_reached", "params", "train_wall_time",
         "loss_residual", "update_residual", "final_lr")
DIAGNOSTICS = tuple(f"m{i}" for i in range(8))


def replay(folder: Path, n_trials: int, process: bool, writers: int) -> dict[str, Any]:
    """Write `n_trials` trivial trials through a fresh tracker on a SQLite store in `folder`."""
    from nas.plots import diagnostics_png, profile_png
    from nas.search import TRACKING_DELAY
    from nas.tracking import PARENT, Tracker
    from nas.tracking_process import TrackingProcess

    cpu0, children0, wall0 = time.process_time(), children_cpu(), time.perf_counter()
    kind = TrackingProcess if process else Tracker
    tracker = kind(f"sqlite:///{folder / 'mlflow.db'}", "tracking-throughput", str(folder / "artifacts"), writers=writers)
    tracker.start_run(PARENT, "search", {"geonas.kind": "search"}, {f"config.key{i}": i for i in range(60)})
    diagnostics = {name: 0.1 * i for i, name in enumerate(DIAGNOSTICS)}
    for n in range(n_trials):
        tags = {"geonas.kind": "trial", "geonas.study": "tracking-throughput", "trial_number": n, "arch_id": f"a{n}",
                "state": "RUNNING", "summary": "conv 8 k3 relu"}
        params = {**{f"arch.p{i}": i for i in range(12)}, "seed": n, "trial_number": n, "torch_threads": 1}
        tracker.start_run(n, f"trial-{n:04d}", tags, params, parent=PARENT, params_delay=TRACKING_DELAY)
        tracker.log_dict(n, {"depth": 1, "channels": [8], "kernel_size": 3}, "architecture.json")
        tracker.log_dict(n, {"layers": [{"name": "conv1", "macs": 5184}, {"name": "fc", "macs": 5120}]},
                         "complexity_profile.json")
        tracker.log_png(n, functools.partial(profile_png, ["conv1", "fc"], [5184, 5120], f"trial {n}: conv 8 k3 relu"),
                        "complexity_profile.png")
        tracker.log_metrics(n, {f"epoch/{k}": 0.5 for k in EPOCH}, step=1, max_delay=TRACKING_DELAY)
        tracker.log_png(n, functools.partial(diagnostics_png, diagnostics, diagnostics, f"trial {n}"), "diagnostics.png")
        final = {**{k: 0.5 for k in FINAL}, **{f"diag.init.{k}": v for k, v in diagnostics.items()},
                 **{f"diag.trained.{k}": v for k, v in diagnostics.items()}}
        tracker.end_run(n, "FINISHED", final, {"state": "COMPLETE"}, step=1)
        tracker.log_metrics(PARENT, {"hypervolume": 0.5, "front_size": 3.0, "trials_finished": float(n + 1)}, step=n,
                            max_delay=TRACKING_DELAY)
        tracker.flush_stale()
    tracker.end_run(PARENT, "FINISHED", {"wall_time": 1.0}, step=n_trials)
    done = tracker.flush()
    wall = time.perf_counter() - wall0
    failed = len(tracker.failed_writes)
    tracker.close()
    cpu, children = time.process_time() - cpu0, children_cpu() - children0
    return {"process": process, "writers": writers, "trials": n_trials, "wall_s": round(wall, 2),
            "trials_per_s": round(n_trials / wall, 1), "caller_cpu_ms_per_trial": round(1000 * cpu / n_trials, 1),
            "tracking_process_cpu_ms_per_trial": round(1000 * children / n_trials, 1),
            "all_written": done and failed == 0}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--process", default="off,on", help="comma-separated: off (threads of the caller), on")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over --process, interleaved")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    modes = [{"on": True, "off": False}[m] for m in args.process.split(",")]
    rows = []
    for _ in range(args.repeats):
        for process in modes:
            with temp_folder() as folder:
                rows.append(replay(folder, args.trials, process, args.writers))
    print(machine_line(machine()))
    print("| tracker | writers | trials | wall s | trials/s | caller CPU ms/trial | tracking process CPU ms/trial | all written |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {'process' if r['process'] else 'threads'} | {r['writers']} | {r['trials']} | {r['wall_s']} | "
              f"{r['trials_per_s']} | {r['caller_cpu_ms_per_trial']} | {r['tracking_process_cpu_ms_per_trial']} | "
              f"{r['all_written']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
