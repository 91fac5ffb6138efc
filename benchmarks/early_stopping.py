"""Early stopping: the same searches with and without the pruner and the bound check (issue 6, item 3).

Variants of the config (everything else identical, ``search.final_seeds=0``):

* ``both``: pruner and bound check on;
* ``pruner_only``: ``search.bound_check=false``;
* ``bound_only``: ``search.pruner=none``;
* ``neither``: both off: every proposed trial trains to its fixed point.

"The pruner" is the config's (``search.pruner``), or the median pruner where the config has none
(configs/mnist1d_cnn.yaml), or ``--pruner``; each variant sets both switches, so the config's own choice
does not change what a variant means.

Per variant and seed: total epochs trained (`SearchOutcome.epochs_trained`), final hypervolume, trials
pruned, loop wall time. ``--reuse FILE.json`` takes the runs of a `benchmarks.search_quality` JSON whose
label is "default" (same dataset, trials, seeds, parallelism) as the variant the dataset's config is as it
stands (``both`` for the digits configs, ``bound_only`` for configs/mnist1d_cnn.yaml, which has no pruner)
instead of running it again.

Run: ``python -m benchmarks.early_stopping [--datasets digits_cnn,digits_resnet,mnist1d_cnn] [--trials 80]
[--seeds 0,1,2] [--variants both,pruner_only,bound_only,neither] [--parallelism 2] [--reuse search_quality.json]
[--out FILE.json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks._common import machine, machine_line, quiet_logs, ray_session, table, write_json
from benchmarks.search_quality import DATASETS, hv_at, run_one

VARIANTS = {"both": (True, True), "pruner_only": (True, False), "bound_only": (False, True), "neither": (False, False)}


def variant_overrides(variant: str, pruner: str) -> list[str]:
    """The overrides of `variant` (pruner on/off, bound check on/off), with `pruner` as the pruner when on."""
    prune, bound = VARIANTS[variant]
    return [f"search.pruner={pruner if prune else 'none'}", f"search.bound_check={'true' if bound else 'false'}"]


def _search_config(dataset: str) -> Any:
    from nas.config import load_config

    return load_config(DATASETS.get(dataset, Path(dataset))).search


def _pruner(search: Any, chosen: str) -> str:
    return chosen or (search.pruner if search.pruner != "none" else "median")


def pruner_of(dataset: str, chosen: str = "") -> str:
    """The pruner a variant with pruning uses: `chosen`, else the config's, else the median pruner."""
    return _pruner(_search_config(dataset), chosen)


def config_variant(dataset: str, chosen: str = "") -> str | None:
    """The variant that the dataset's config as it stands is (with `chosen` as the pruner of the variants that
    prune), or None when it is none of them (its pruner is another than theirs)."""
    search = _search_config(dataset)
    prunes = search.pruner != "none"
    if prunes and search.pruner != _pruner(search, chosen):
        return None
    return next(v for v, switches in VARIANTS.items() if switches == (prunes, search.bound_check))


def main(argv: list[str] | None = None, session: Any = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="digits_cnn,digits_resnet,mnist1d_cnn",
                   help="comma-separated (default: the three of item 1; make bench runs digits_cnn)")
    p.add_argument("--trials", type=int, default=80)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--sampler", default="", help="override the config's sampler (default: keep it)")
    p.add_argument("--pruner", default="", help="the pruner of the variants that prune (default: the config's, "
                                                "or median where the config has none)")
    p.add_argument("--parallelism", type=int, default=2, help="trials in flight (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--reuse", type=Path, help="search_quality JSON whose 'default' runs stand for the variant "
                                              "that the dataset's config is as it stands")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    quiet_logs()
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    variants = [v for v in args.variants.split(",") if v]
    info = machine()
    print(f"# early stopping: {machine_line(info)}", flush=True)
    reused: list[dict[str, Any]] = []
    if args.reuse:
        prior = json.loads(args.reuse.read_text())
        prior_args = prior.get("args", {})
        changed = [f"--{k.replace('_', '-')} {v}" for k, v in prior_args.items() if k in ("set", "tpe_options") and v]
        if changed:
            p.error(f"--reuse {args.reuse}: its runs changed the config ({', '.join(changed)}), so they are not "
                    f"the config as it stands")
        if prior_args.get("parallelism", 2) != args.parallelism:
            p.error(f"--reuse {args.reuse}: its runs had parallelism {prior_args.get('parallelism', 2)}, "
                    f"these have {args.parallelism} (--parallelism)")
        reused = [dict(r, reused_from=str(args.reuse)) for r in prior["runs"]
                  if r["label"] == "default" and r["n_trials"] == args.trials and r["seed"] in seeds]
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    with ray_session(session) as ray:
        ex = ray.executor(args.parallelism)
        for dataset in [d for d in args.datasets.split(",") if d]:
            pruner = pruner_of(dataset, args.pruner)
            as_is = None if args.sampler or args.set else config_variant(dataset, args.pruner)
            print(f"# {dataset}: the variants that prune use search.pruner={pruner}; the config as it stands is "
                  f"variant {as_is or '(none of them, or changed by --sampler/--set)'}", flush=True)
            for variant in variants:
                for seed in seeds:
                    prior_run = [r for r in reused if r["dataset"] == dataset and r["seed"] == seed
                                 and variant == as_is]
                    if prior_run:
                        runs.append(dict(prior_run[0], label=variant))
                        continue
                    overrides = [f"seed={seed}", f"search.n_trials={args.trials}",
                                 *variant_overrides(variant, pruner), *args.set]
                    if args.sampler:
                        overrides.append(f"search.sampler={args.sampler}")
                    runs.append(run_one(dataset, overrides, ex, label=variant))
    rows = []
    summary: dict[str, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        for variant in variants:
            rs = [r for r in runs if r["dataset"] == dataset and r["label"] == variant]
            if not rs:
                continue

            def ms(key: str, rs: list[dict[str, Any]] = rs) -> tuple[float, float]:
                v = [float(r[key]) for r in rs]
                return statistics.fmean(v), statistics.pstdev(v) if len(v) > 1 else 0.0

            hv40 = [hv_at(r["history"], args.trials // 2) for r in rs]
            s = {k: ms(k) for k in ("epochs", "hypervolume", "pruned", "complete", "loop_s", "train_s")}
            s["hv_half"] = (statistics.fmean(hv40), statistics.pstdev(hv40) if len(hv40) > 1 else 0.0)
            s["seeds"] = [r["seed"] for r in rs]
            s["reused"] = any("reused_from" in r for r in rs)
            summary[f"{dataset}/{variant}"] = s
            rows.append([dataset, variant + (" (reused)" if s["reused"] else ""), ",".join(map(str, s["seeds"])),
                         f"{s['epochs'][0]:.0f} ± {s['epochs'][1]:.0f}",
                         f"{s['hypervolume'][0]:.4f} ± {s['hypervolume'][1]:.4f}",
                         f"{s['hv_half'][0]:.4f} ± {s['hv_half'][1]:.4f}",
                         f"{s['pruned'][0]:.1f}", f"{s['loop_s'][0]:.0f} ± {s['loop_s'][1]:.0f}"])
    print("\n" + table(["dataset", "variant", "seeds", "epochs trained", "final HV", f"HV@{args.trials // 2}",
                        "pruned (mean)", "loop s"], rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    data = {"machine": info, "args": vars(args) | {"out": str(args.out), "reuse": str(args.reuse)},
            "summary": summary, "runs": runs}
    write_json(args.out, data)
    return data


if __name__ == "__main__":
    main()
