"""How much of a front member's validation accuracy is its training seed's (issue 6, item 2).

An item-2 front is built from one training run per trial: a small net whose validation accuracy came out high
for its seed dominates every larger net that validated lower, and the front has no member between them. This
trains front members again on their search's split (configs/mnist1d_cnn.yaml with the search seed and
``--set`` overrides), first with the trial's own seed (`nas.study.derive_seed(search seed, trial)`; its
validation accuracy should be the search's, which the reader checks against the front) and then with the seeds
``search.seeds_per_trial`` would add (`nas.study.repeat_seeds`), the way a trial trains them (`workers.fit` to
the fixed point).

The default cases are the largest front members under 15,875 MACs of the three searches that missed item 2 on
2026-12-07 (docs/SEARCH_QUALITY.md, item 2, "λ = 0.5 on search seeds 0-11").

Run: ``python -m benchmarks.validation_noise [--others 5] [--case 'NAME|SEARCH_SEED|TRIAL|ARCH_JSON|KEY=VALUE ...']...
[--out FILE.json]``; ARCH_JSON is an architecture's JSON (`Architecture.to_json`).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from benchmarks._common import machine, machine_line, table, write_json
from benchmarks.mnist1d_reference import CONFIG


def _cnn(channels: list[int], kernels: list[int]) -> str:
    from search_spaces import CNNArchitecture

    return CNNArchitecture(channels=tuple(channels), kernel_sizes=tuple(kernels), activation="silu", batch_norm=True,
                           downsample="pool", downsample_every=1, head="global_pool").to_json()


DEFAULT_CASES = [
    ("λ 0.5, search seed 6, trial 18", 6, 18, _cnn([8, 8], [5, 5]), ["search.lam=0.5"]),
    ("λ 0.5, search seed 11, trial 25", 11, 25, _cnn([8, 8], [7, 7]), ["search.lam=0.5"]),
    ("λ 1.0, search seed 10, trial 70", 10, 70, _cnn([8, 8, 8], [5, 3, 3]), []),
]


def parse_case(text: str) -> tuple[str, int, int, str, list[str]]:
    """``"NAME|SEARCH_SEED|TRIAL|ARCH_JSON|KEY=VALUE ..."`` -> (name, search seed, trial, arch JSON, overrides)."""
    parts = text.split("|")
    if len(parts) not in (4, 5):
        raise argparse.ArgumentTypeError(f"must read 'NAME|SEARCH_SEED|TRIAL|ARCH_JSON[|KEY=VALUE ...]', but got {text!r}")
    try:
        search_seed, trial = int(parts[1]), int(parts[2])
    except ValueError:
        raise argparse.ArgumentTypeError(f"SEARCH_SEED and TRIAL must be integers, but got {parts[1]!r}, {parts[2]!r}") from None
    return parts[0], search_seed, trial, parts[3], parts[4].split() if len(parts) == 5 else []


def run_case(name: str, search_seed: int, trial: int, arch_json: str, overrides: list[str], others: int) -> dict[str, Any]:
    import torch

    from nas.config import load_config
    from nas.data import load_dataset
    from nas.study import derive_seed, repeat_seeds
    from search_spaces import Architecture, layer_costs, total_macs
    from workers import fit, seeded_model

    torch.set_num_threads(1)
    config = load_config(CONFIG, [f"seed={search_seed}", *overrides])
    data = load_dataset(config.data, config.seed).without_test()
    arch = Architecture.from_json(arch_json)
    seeds = [derive_seed(config.seed, trial), *repeat_seeds(config.seed, trial, others + 1)]
    vals = []
    for seed in seeds:
        result, _ = fit(seeded_model(arch, data, seed), data, config.train, seed=seed)
        vals.append(1.0 - result.val_error)
        print(f"  {name}: seed {seed}: val {vals[-1]:.4f} ({result.epochs} epochs)", flush=True)
    return {"name": name, "search_seed": search_seed, "trial": trial, "arch": arch.summary(), "overrides": overrides,
            "macs": total_macs(layer_costs(arch, data.input_shape, data.num_classes)), "seeds": seeds,
            "val_accuracy": vals}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--others", type=int, default=5, help="seeds trained besides the trial's own")
    p.add_argument("--case", action="append", type=parse_case, metavar="'NAME|SEARCH_SEED|TRIAL|ARCH_JSON|KEY=VALUE ...'",
                   help="a front member (repeatable); default: the three misses of 2026-12-07")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.others < 1:
        p.error(f"--others must be at least 1, but got {args.others}")
    m = machine()
    print(machine_line(m), flush=True)
    rows = [run_case(*case, others=args.others) for case in (args.case or DEFAULT_CASES)]
    print(table(["case", "architecture", "MACs", "val acc % (trial's seed)", "val acc % other seeds: mean ± std", "per seed"],
                [[r["name"], r["arch"], r["macs"], f"{100 * r['val_accuracy'][0]:.2f}",
                  f"{100 * statistics.fmean(r['val_accuracy'][1:]):.2f} ± {100 * statistics.pstdev(r['val_accuracy'][1:]):.2f}",
                  ", ".join(f"{100 * v:.2f}" for v in r["val_accuracy"][1:])] for r in rows]))
    result = {"machine": m, "config": str(CONFIG), "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
