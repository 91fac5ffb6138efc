"""All benchmarks, one after the other (what ``make bench`` runs): overhead, parallelism, fixed point.

    python -m benchmarks.run_all [--out-dir DIR] [--quick]

Sized to finish well under an hour on a 2-core machine (about 20 minutes when nothing else runs; each
measurement first waits while other processes load the machine). ``--quick`` runs tiny sizes to check
that everything works (minutes; the figures then mean little). With ``--out-dir`` each benchmark also
writes its figures as JSON there.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks import fixed_point, overhead, parallelism
from benchmarks._common import RaySession


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, help="write overhead.json, parallelism.json, fixed_point.json here")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    p.add_argument("--no-load-check", action="store_true")
    args = p.parse_args(argv)

    def extra(name: str) -> list[str]:
        out = ["--out", str(args.out_dir / f"{name}.json")] if args.out_dir else []
        return out + (["--no-load-check"] if args.no_load_check else [])

    if args.quick:
        sizes = {"overhead": ["--trials", "4", "--warmup-trials", "1", "--profile", "--profile-trials", "3"],
                 "parallelism": ["--trials", "4", "--repeats", "1"],
                 "fixed_point": ["--trials", "4", "--budgets", "20", "--max-epochs", "20"]}
    else:
        sizes = {"overhead": ["--trials", "30", "--profile"], "parallelism": ["--trials", "24", "--repeats", "2"],
                 "fixed_point": ["--trials", "30", "--budgets", "60,30"]}
    started = time.perf_counter()
    headline = []
    with RaySession() as session:  # one local Ray for all three
        for name, module in (("overhead", overhead), ("parallelism", parallelism), ("fixed_point", fixed_point)):
            headline += run_one(name, module, sizes[name] + extra(name), session)
    print("\n=== summary ===")
    print("\n".join(headline))
    print(f"total {time.perf_counter() - started:.0f} s")


def run_one(name: str, module: Any, argv: list[str], session: RaySession) -> list[str]:
    t = time.perf_counter()
    print(f"\n=== {name} ===", flush=True)
    r = module.main(argv, session=session)
    headline = []
    if name == "overhead":
        headline.append(f"overhead: {100 * r['runs'][-1]['overhead']:.1f}% (target <= 5%)")
    elif name == "parallelism":
        headline.append(f"parallelism 2 vs 1: {r['ratio']:.2f}x completed trials/min (target >= 1.8x)")
    else:
        for c in r["comparisons"]:
            headline.append(f"fixed-point rule vs {c['against']}: {100 * c['epoch_saving']:.1f}% fewer epochs, "
                            f"HV ratio {c['hypervolume_ratio']:.3f} (target >= 40% fewer at equal quality)")
    print(f"({name}: {time.perf_counter() - t:.0f} s)", flush=True)
    return headline


if __name__ == "__main__":
    main()
