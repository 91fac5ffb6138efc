"""Cost of the geometry diagnostics against the training they describe, on digits trials.

    python -m benchmarks.diagnostics_cost [--trials 12] [--configs configs/digits_cnn.yaml ...] [--out cost.json]

For each config (default: the digits CNN and ResNet searches), `--trials` architectures are drawn from its
space with a seeded RandomTrial, built with a seeded initialization and, as a worker does it,

    diagnose(init)  ->  fit to the fixed point (the config's train section)  ->  diagnose(trained)

on one torch thread (a Ray worker with cpus_per_trial = 1). The figure is

    ratio = Σ (diagnose(init) + diagnose(trained)) time / Σ training time

with the training time the trainer's own wall time (`TrialResult.wall_time`). The target is <= 10%.
Rendering the diagnostics figure (done on one of the driver's MLflow writer threads, not in the worker) is timed
separately.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = [ROOT / "configs" / "digits_cnn.yaml", ROOT / "configs" / "digits_resnet.yaml"]
TARGET = 0.10


def measure(config_path: Path, trials: int, seed: int) -> list[dict[str, Any]]:
    """Train and diagnose `trials` feasible architectures of the config's space; one row per trial."""
    import torch

    from nas.config import load_config
    from nas.data import load_dataset
    from nas.diagnostic_plots import diagnostics_figure
    from nas.plots import close
    from nas.study import derive_seed
    from search_spaces import InfeasibleArchitecture, RandomTrial, get_space, layer_costs, total_macs
    from workers import diagnose, fit, seeded_model

    config = load_config(config_path)
    data = load_dataset(config.data, config.seed).without_test()
    space_cfg = dict(config.space)
    space = get_space(space_cfg.pop("name"), **space_cfg)
    rows: list[dict[str, Any]] = []
    draw = 0
    while len(rows) < trials:
        arch = space.sample(RandomTrial(random.Random(seed * 100_003 + draw)))
        draw += 1
        try:
            costs = layer_costs(arch, data.input_shape, data.num_classes)
        except InfeasibleArchitecture:
            continue
        trial_seed = derive_seed(config.seed, draw)
        model = seeded_model(arch, data, trial_seed)
        started = time.perf_counter()
        init = diagnose(model, arch, data.x_val, costs, seed=trial_seed)
        init_time = time.perf_counter() - started
        result, model = fit(model, data, config.train, seed=trial_seed)
        started = time.perf_counter()
        trained = diagnose(model, arch, data.x_val, costs, seed=trial_seed)
        trained_time = time.perf_counter() - started
        started = time.perf_counter()
        figure = diagnostics_figure(init, trained, arch.summary())
        with tempfile.TemporaryDirectory() as tmp:
            figure.savefig(Path(tmp) / "diagnostics.png")
        close(figure)
        figure_time = time.perf_counter() - started
        row = {"config": config_path.name, "arch": arch.summary(), "macs": total_macs(costs), "epochs": result.epochs,
               "train_s": result.wall_time, "diagnose_init_s": init_time, "diagnose_trained_s": trained_time,
               "diagnose_s": init_time + trained_time, "figure_s": figure_time, "metrics": len(init) + len(trained),
               "torch_threads": torch.get_num_threads(), "val_error": result.val_error, "init": init,
               "trained": trained}
        row["ratio"] = row["diagnose_s"] / row["train_s"]
        rows.append(row)
        print(f"  {row['arch']:<55} {row['epochs']:>3} epochs  train {row['train_s']:6.2f} s  "
              f"diagnose {1000 * row['diagnose_s']:6.1f} ms  ({100 * row['ratio']:.2f}%)", flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    train = sum(r["train_s"] for r in rows)
    diag = sum(r["diagnose_s"] for r in rows)
    ratios = [r["ratio"] for r in rows]
    return {"trials": len(rows), "train_s": train, "diagnose_s": diag, "ratio": diag / train,
            "median_trial_ratio": statistics.median(ratios), "max_trial_ratio": max(ratios),
            "diagnose_per_trial_ms": 1000 * diag / len(rows),
            "figure_per_trial_ms": 1000 * statistics.fmean(r["figure_s"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="architectures per config (default %(default)s)")
    parser.add_argument("--configs", type=Path, nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the architecture draws")
    parser.add_argument("--out", type=Path, help="also write the rows and totals as JSON")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # a Ray worker with cpus_per_trial = 1
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {len(os.sched_getaffinity(0))} CPUs; "
          f"Python {sys.version.split()[0]}, torch {torch.__version__}, {platform.platform()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    rows: list[dict[str, Any]] = []
    totals: dict[str, Any] = {}
    for config in args.configs:
        print(f"{config.name}: {args.trials} trials")
        part = measure(config, args.trials, args.seed)
        rows += part
        totals[config.name] = summary(part)
    totals["all"] = summary(rows)
    print()
    print("| config | trials | training (s) | diagnostics (s) | ratio | median trial | worst trial | "
          "per trial (ms) | figure (ms) |")
    print("|:---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, t in totals.items():
        print(f"| {name} | {t['trials']} | {t['train_s']:.1f} | {t['diagnose_s']:.2f} | {100 * t['ratio']:.2f}% | "
              f"{100 * t['median_trial_ratio']:.2f}% | {100 * t['max_trial_ratio']:.2f}% | "
              f"{t['diagnose_per_trial_ms']:.0f} | {t['figure_per_trial_ms']:.0f} |")
    ratio = totals["all"]["ratio"]
    print(f"\ndiagnostics / training = {100 * ratio:.2f}% (target <= {100 * TARGET:.0f}%): "
          f"{'met' if ratio <= TARGET else 'NOT met'}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "totals": totals}, indent=2))
        print(f"wrote {args.out}")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
