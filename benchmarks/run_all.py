"""All benchmarks, one after the other (what ``make bench`` runs), sized to fit in under an hour here.

    python -m benchmarks.run_all [--out-dir DIR] [--quick] [--only overhead,search_quality,...]

* issue 2: overhead, parallelism, fixed point (about 20 minutes on a quiet 2-core machine);
* issue 6: search quality on digits cnn (default vs random, 80 trials x 3 seeds), early stopping (4 variants,
  seed 0), MNIST-1D against the published table (the reference CNN x 3 seeds, one search of the config's
  budget, 160 trials, with 3 final seeds per front member);
* issue 3: driver capacity (TPE; SQLite, PostgreSQL tables, PostgreSQL journal), time to recover from a
  worker kill; these start their own Ray (and need the PostgreSQL server of ``GEONAS_TEST_PG``);
* issue 5: the cost of the geometry diagnostics.

Each measurement that times something first waits while other processes load the machine. ``--quick``
runs tiny sizes to check that everything works (minutes; the figures then mean little). With
``--out-dir`` each benchmark also writes its figures as JSON there. The full-size figures, the
commands and the machines are in docs/BENCHMARKS.md and docs/SEARCH_QUALITY.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks import (diagnostics_cost, driver_capacity, early_stopping, fixed_point, mnist1d_reference, overhead,
                        parallelism, recovery, search_quality, tracking_throughput)
from benchmarks._common import RaySession

FULL = {
    "overhead": ["--trials", "30", "--profile"],
    "parallelism": ["--trials", "24", "--repeats", "2"],
    "fixed_point": ["--trials", "30", "--budgets", "60,30"],
    "search_quality": ["--datasets", "digits_cnn", "--samplers", "default,random", "--seeds", "0,1,2"],
    "early_stopping": ["--datasets", "digits_cnn", "--seeds", "0"],
    "mnist1d_reference": ["--seeds", "0,1,2"],
    "driver_capacity": ["--trials", "200", "--samplers", "tpe", "--storages", "sqlite,postgresql,journal"],
    "tracking_throughput": ["--trials", "300", "--repeats", "2"],
    "recovery": ["--kills", "3"],
    "diagnostics_cost": [],
}
QUICK = {
    "overhead": ["--trials", "4", "--warmup-trials", "1", "--profile", "--profile-trials", "3"],
    "parallelism": ["--trials", "4", "--repeats", "1"],
    "fixed_point": ["--trials", "4", "--budgets", "20", "--max-epochs", "20"],
    "search_quality": ["--datasets", "digits_cnn", "--samplers", "default,random", "--seeds", "0", "--trials", "6",
                       "--at", "3,6"],
    "early_stopping": ["--datasets", "digits_cnn", "--seeds", "0", "--trials", "4", "--variants", "both,neither"],
    "mnist1d_reference": ["--seeds", "0", "--trials", "3", "--final-seeds", "1", "--set", "train.max_epochs=3"],
    "driver_capacity": ["--trials", "10", "--samplers", "random", "--storages", "sqlite,journal"],
    "tracking_throughput": ["--trials", "10", "--repeats", "1"],
    "recovery": ["--kills", "1"],
    "diagnostics_cost": ["--trials", "2"],
}
# Benchmarks that share one local Ray, in order; then those that start their own Ray (or none).
WITH_SESSION = {"overhead": overhead, "parallelism": parallelism, "fixed_point": fixed_point,
                "search_quality": search_quality, "early_stopping": early_stopping,
                "mnist1d_reference": mnist1d_reference}
ON_THEIR_OWN = {"driver_capacity": driver_capacity, "tracking_throughput": tracking_throughput, "recovery": recovery,
                "diagnostics_cost": diagnostics_cost}
NO_LOAD_CHECK = {"overhead", "parallelism", "fixed_point"}  # the others have no such flag


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, help="write NAME.json for each benchmark here")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    p.add_argument("--no-load-check", action="store_true")
    p.add_argument("--only", help="comma-separated subset of: " + ", ".join(FULL))
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else list(FULL)
    unknown = [n for n in names if n not in FULL]
    if unknown:
        p.error(f"--only: unknown benchmark(s) {unknown}; known: {', '.join(FULL)}")
    sizes = QUICK if args.quick else FULL

    def argv_of(name: str) -> list[str]:
        out = ["--out", str(args.out_dir / f"{name}.json")] if args.out_dir else []
        if args.out_dir:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        return sizes[name] + out + (["--no-load-check"] if args.no_load_check and name in NO_LOAD_CHECK else [])

    started = time.perf_counter()
    headline: list[str] = []
    with_session = [n for n in names if n in WITH_SESSION]
    if with_session:
        with RaySession() as session:  # one local Ray for these
            for name in with_session:
                headline += run_one(name, WITH_SESSION[name], argv_of(name), session)
    for name in (n for n in names if n in ON_THEIR_OWN):
        headline += run_one(name, ON_THEIR_OWN[name], argv_of(name), None)
    print("\n=== summary ===")
    print("\n".join(headline))
    print(f"total {time.perf_counter() - started:.0f} s")


def run_one(name: str, module: Any, argv: list[str], session: RaySession | None) -> list[str]:
    t = time.perf_counter()
    print(f"\n=== {name} ===", flush=True)
    r = module.main(argv, session=session) if session is not None else module.main(argv)
    headline = []
    if name == "overhead":
        m = r["runs"][-1]
        headline.append(f"overhead: {100 * m['overhead']:.1f}% (target <= 5%), of which geometry diagnostics "
                        f"{100 * m['diagnostics_share']:.1f}%")
    elif name == "parallelism":
        headline.append(f"parallelism 2 vs 1: {r['ratio']:.2f}x completed trials/min (target >= 1.8x)")
    elif name == "fixed_point":
        for c in r["comparisons"]:
            headline.append(f"{c['rule']} vs {c['against']}: {100 * c['epoch_saving']:.1f}% fewer epochs, "
                            f"HV ratio {c['hypervolume_ratio']:.3f} (target >= 40% fewer at equal quality)")
    elif name == "driver_capacity":
        for row in r:
            headline.append(f"driver capacity {row['storage']} {row['sampler']}: {row['trials_per_s']} trials/s "
                            f"(loop), {row['trials_per_s_tracked']} trials/s tracked (target >= 20 with PostgreSQL)")
    elif name == "tracking_throughput":
        for row in r:
            headline.append(f"tracking throughput, {'process' if row['process'] else 'threads'}: {row['trials_per_s']} "
                            f"trials/s with nothing else running")
    else:
        headline.append(f"{name}: done (figures above)")
    print(f"({name}: {time.perf_counter() - t:.0f} s)", flush=True)
    return headline


if __name__ == "__main__":
    main()
