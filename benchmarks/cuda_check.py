"""Check the CUDA path of the trainer and the diagnostics on a GPU machine (not part of CI).

    python -m benchmarks.cuda_check [--out DIR]

Imports only ``workers`` and ``search_spaces`` (torch, numpy, scikit-learn's bundled digits), so it runs in
a plain PyTorch environment without Ray, Optuna or MLflow. For a 2-D CNN, a 2-D ResNet and a 1-D CNN it:

* trains with ``train.device: auto`` and checks that ``auto`` picked CUDA and the model, the residuals and
  the kept weights live there;
* trains the same trial twice on the GPU and compares the numbers (the determinism promise: same trial,
  same machine, same numbers);
* trains it on the CPU and compares the validation accuracy (numbers differ between devices; the
  accuracy should not by much);
* runs the geometry diagnostics on the GPU model and compares them with the CPU's on the same weights;
* checks that the layer costs (analytic) agree with FlopCounterMode on the GPU.

Prints one line per check and writes ``cuda_check.json`` to ``--out``. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from search_spaces import Architecture, build_model, layer_costs
from workers import TrainConfig, diagnose, fit, resolve_device, seeded_model

ARCHS = {
    "cnn-2d": {"space": "cnn", "channels": [16, 32], "kernel_sizes": [3, 3], "activation": "relu",
               "batch_norm": True, "downsample": "stride", "downsample_every": 1, "head": "global_pool"},
    "resnet-2d": {"space": "resnet", "stem_width": 16, "blocks": [1, 1], "widths": [16, 32], "kernel_size": 3,
                  "activation": "relu", "block_form": "pre"},
    "cnn-1d": {"space": "cnn", "channels": [16, 16, 16], "kernel_sizes": [5, 3, 3], "activation": "gelu",
               "batch_norm": False, "downsample": "stride", "downsample_every": 1, "head": "flatten"},
}


@dataclass
class Arrays:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int


def digits(one_d: bool) -> Arrays:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = ((x - x.mean()) / x.std()).astype(np.float32)
    x = x.reshape(-1, 1, 64) if one_d else x.reshape(-1, 1, 8, 8)
    order = np.random.default_rng(0).permutation(len(y))
    cut = int(0.8 * len(y))
    tr, va = order[:cut], order[cut:]
    return Arrays(x[tr], y[tr].astype(np.int64), x[va], y[va].astype(np.int64), 10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args(argv)
    checks: list[dict] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    print(f"torch {torch.__version__}, cuda available {torch.cuda.is_available()}, "
          f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}", flush=True)
    check("auto resolves to cuda", resolve_device("auto").type == "cuda", str(resolve_device("auto")))
    cfg = TrainConfig(max_epochs=args.epochs)
    for name, spec in ARCHS.items():
        arch = Architecture.from_dict(spec)
        data = digits(name.endswith("1d"))
        shape = tuple(data.x_train.shape[1:])
        runs = {}
        for label, train in (("gpu", cfg), ("gpu again", cfg), ("cpu", replace(cfg, device="cpu"))):
            started = time.perf_counter()
            result, model = fit(seeded_model(arch, data, 7), data, train, seed=7)
            runs[label] = (result, model, time.perf_counter() - started)
        gpu, gpu2, cpu = (runs[k][0] for k in ("gpu", "gpu again", "cpu"))
        model = runs["gpu"][1]
        check(f"{name}: trained on cuda", gpu.device.startswith("cuda") and next(model.parameters()).is_cuda,
              f"result.device={gpu.device}, {gpu.epochs} epochs, fixed point {gpu.fixed_point_reached}, "
              f"val acc {1 - gpu.val_error:.3f}, {runs['gpu'][2]:.1f} s (cpu {runs['cpu'][2]:.1f} s)")
        same = [h["val_loss"] for h in gpu.history] == [h["val_loss"] for h in gpu2.history]
        diff = max(abs(a["val_loss"] - b["val_loss"]) for a, b in zip(gpu.history, gpu2.history))
        check(f"{name}: same trial twice on the GPU gives the same numbers", same and gpu.epochs == gpu2.epochs,
              f"max |val_loss difference| over epochs {diff:.3g}; epochs {gpu.epochs} vs {gpu2.epochs}")
        check(f"{name}: GPU and CPU accuracy agree within 3 points", abs(gpu.val_error - cpu.val_error) <= 0.03,
              f"val acc gpu {1 - gpu.val_error:.3f}, cpu {1 - cpu.val_error:.3f}")
        costs = layer_costs(arch, shape, 10)
        d_gpu = diagnose(model, arch, data.x_val, costs, seed=3)
        d_cpu = diagnose(_cpu_copy(arch, shape, model), arch, data.x_val, costs, seed=3)
        rel = max(abs(d_gpu[k] - d_cpu[k]) / max(abs(d_cpu[k]), 1e-12) for k in d_cpu if k in d_gpu)
        check(f"{name}: diagnostics on the GPU match the CPU's on the same weights",
              set(d_gpu) == set(d_cpu) and rel < 1e-2 and all(math.isfinite(v) for v in d_gpu.values()),
              f"{len(d_gpu)} metrics, max relative difference {rel:.2g}")
        from torch.utils.flop_counter import FlopCounterMode

        device = resolve_device("auto")
        fresh = build_model(arch, shape, 10).to(device).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fresh(torch.as_tensor(data.x_val[:1], device=device))
        analytic = sum(c.macs for c in costs)
        check(f"{name}: analytic MACs equal FlopCounterMode/2 on cuda", counter.get_total_flops() == 2 * analytic,
              f"analytic {analytic}, counted/2 {counter.get_total_flops() / 2:g}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda_check.json").write_text(json.dumps({"torch": torch.__version__, "checks": checks}, indent=2))
    failed = [c["check"] for c in checks if not c["ok"]]
    print(f"{len(checks) - len(failed)} of {len(checks)} checks passed" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


def _cpu_copy(arch: Architecture, shape: tuple[int, ...], model: torch.nn.Module) -> torch.nn.Module:
    copy = build_model(arch, shape, 10)
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return copy


if __name__ == "__main__":
    sys.exit(main())
