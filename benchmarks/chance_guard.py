"""What the fixed-point rule's chance guard changes, on saturated starts (docs/SEARCH.md).

    python -m benchmarks.chance_guard [--max-epochs 60]

Trains plain sigmoid CNNs without normalization (16 channels, kernel 3, flatten head) of depth 4 and 8 on
digits (configs/digits_cnn.yaml's data and `train:`), seed 0, once with the guard off (`train.chance_tol=0`)
and once with the default guard, and prints epochs, whether the rule saw a fixed point, the final
validation accuracy and the accuracy every 6 epochs.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from benchmarks._common import ROOT


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--depths", default="4,8")
    args = parser.parse_args(argv)
    from nas.config import load_config
    from nas.data import load_dataset
    from search_spaces import CNNArchitecture
    from workers import train_to_fixed_point

    torch.set_num_threads(1)
    config = load_config(ROOT / "configs" / "digits_cnn.yaml")
    data = load_dataset(config.data, config.seed).without_test()
    print("| depth | guard | epochs | fixed point | val accuracy | accuracy every 6 epochs | s |")
    print("|---:|:---|---:|:---|---:|:---|---:|")
    for depth in (int(d) for d in args.depths.split(",")):
        arch = CNNArchitecture((16,) * depth, (3,) * depth, "sigmoid", False, "none", 1, "flatten")
        for label, tol in (("off", 0.0), (f"on ({config.train.chance_tol})", config.train.chance_tol)):
            train = replace(config.train, max_epochs=args.max_epochs, chance_tol=tol)
            started = time.perf_counter()
            r = train_to_fixed_point(arch, data, train, seed=0)
            accs = ", ".join(f"{100 * (1 - h['val_error']):.0f}" for h in r.history[::6])
            print(f"| {depth} | {label} | {r.epochs} | {'yes' if r.fixed_point_reached else 'no'} | "
                  f"{100 * (1 - r.val_error):.1f}% | {accs} | {time.perf_counter() - started:.1f} |", flush=True)


if __name__ == "__main__":
    main()
