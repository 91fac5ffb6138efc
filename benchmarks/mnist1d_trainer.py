"""The trainer's settings on MNIST-1D, measured on fixed architectures (issue 6, item 2).

The item-2 searches are limited by what the trainer gets out of a network as much as by which network the
search finds: the same architecture tests several points apart under different ``train:`` settings. This
trains a fixed set of architectures — the reference CNN as our space builds it (31,875 MACs) and three nets
of the kind item-2 fronts hold under 15,875 MACs — under each variant of configs/mnist1d_cnn.yaml's
``train:`` section, the way a search's trial and its final test do: `workers.fit` to the fixed point on the
training split (validation accuracy, and the test accuracy of the kept weights), then `workers.refit` on
train + validation with that run's schedule (the final test's default) and its test accuracy.

One thread per process (`torch.set_num_threads(1)`), so the numbers repeat on the same machine.

Run: ``python -m benchmarks.mnist1d_trainer [--seeds 0,1,2] [--variant "NAME: key=value key=value"]...
[--out FILE.json]``; without ``--variant``: the config as it is, the lr/batch of configs/digits_cnn.yaml
(0.003 / 64) and the config with ``train.patience=5``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from benchmarks._common import machine, machine_line, table, write_json
from benchmarks.mnist1d_reference import CONFIG, fit_and_refit, space_reference

DEFAULT_VARIANTS = ["config:", "lr 0.003, batch 64: train.lr=0.003 train.batch_size=64", "patience 5: train.patience=5"]


def architectures() -> dict[str, Any]:
    """The reference CNN (our space's build) and three nets from earlier item-2 fronts (docs/SEARCH_QUALITY.md)."""
    from search_spaces import CNNArchitecture

    def small(channels: tuple[int, ...], kernels: tuple[int, ...]) -> CNNArchitecture:
        return CNNArchitecture(channels=channels, kernel_sizes=kernels, activation="gelu", batch_norm=True,
                               downsample="pool", downsample_every=1, head="global_pool")

    return {"reference (our space)": space_reference(),
            "d3 c[8,8,8] k[5,7,7] gelu bn pool gap": small((8, 8, 8), (5, 7, 7)),
            "d2 c[8,25] k3 gelu bn pool gap": small((8, 25), (3, 3)),
            "d3 c[8,8,32] k[5,3,3] gelu bn pool gap": small((8, 8, 32), (5, 3, 3))}


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME: key=value key=value"`` -> (NAME, overrides)."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--variant must read 'NAME: key=value ...', but got {text!r}")
    return name.strip(), rest.split()


def run_variant(name: str, overrides: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    import torch

    from nas.config import load_config
    from nas.data import load_dataset
    from search_spaces import layer_costs, total_macs
    from workers import metrics_on_test_split, seeded_model

    torch.set_num_threads(1)
    config = load_config(CONFIG, overrides)
    datasets = {seed: load_dataset(config.data, seed) for seed in seeds}  # a variant may change data.*
    rows = []
    for label, arch in architectures().items():
        for seed in seeds:
            data = datasets[seed]
            train_only = data.without_test()
            result, model, refitted, fit_s, refit_s = fit_and_refit(seeded_model(arch, train_only, seed), train_only,
                                                                    config.train, seed)
            row = {"variant": name, "overrides": overrides, "arch": label, "seed": seed,
                   "macs": total_macs(layer_costs(arch, train_only.input_shape, train_only.num_classes)),
                   "val_accuracy": 1.0 - result.val_error, "epochs": result.epochs,
                   "split_test_accuracy": metrics_on_test_split(model, data)["test_accuracy"],
                   "refit_test_accuracy": metrics_on_test_split(refitted, data)["test_accuracy"],
                   "wall_s": fit_s + refit_s}
            rows.append(row)
            print(f"  {name} | {label} seed {seed}: val {row['val_accuracy']:.4f}, split test "
                  f"{row['split_test_accuracy']:.4f}, refit test {row['refit_test_accuracy']:.4f}, "
                  f"{row['epochs']} epochs", flush=True)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[list[Any]]:
    def pct(values: list[float]) -> str:
        return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.pstdev(values):.2f}"

    out = []
    for key in dict.fromkeys((r["arch"], r["variant"]) for r in rows):
        rs = [r for r in rows if (r["arch"], r["variant"]) == key]
        out.append([key[0], rs[0]["macs"], key[1], pct([r["val_accuracy"] for r in rs]),
                    pct([r["split_test_accuracy"] for r in rs]), pct([r["refit_test_accuracy"] for r in rs]),
                    ", ".join(str(r["epochs"]) for r in rs)])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variant", action="append", type=parse_variant, metavar="'NAME: key=value ...'",
                   help="a train: variant (repeatable); default: " + "; ".join(DEFAULT_VARIANTS))
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variant or [parse_variant(v) for v in DEFAULT_VARIANTS]
    m = machine()
    print(machine_line(m), flush=True)
    rows = [row for name, overrides in variants for row in run_variant(name, overrides, seeds)]
    order = list(architectures())
    rows.sort(key=lambda r: order.index(r["arch"]))
    print(table(["architecture", "MACs", "train: variant", "val acc %", "test acc % (split-trained)",
                 "test acc % (refit)", "epochs per seed"], summary(rows)))
    result = {"machine": m, "config": str(CONFIG), "seeds": seeds, "rows": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
