"""What a rerun needs to know about where a search ran: code version, packages, machine."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["environment", "git_state", "PACKAGES"]

PACKAGES = ("geonas", "torch", "ray", "optuna", "mlflow", "numpy", "scikit-learn", "mnist1d", "matplotlib")
_ROOT = Path(__file__).resolve().parents[1]


def git_state(root: Path = _ROOT) -> dict[str, Any]:
    """The commit of the code and whether the tree had uncommitted changes ("unknown" outside a git checkout)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": "unknown", "dirty": "unknown"}
    if commit.returncode != 0:
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(torch_threads_per_trial: int | None = None) -> dict[str, Any]:
    """Code version, package versions and machine, as recorded on a search's parent run."""
    import torch

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = "not installed"
    machine = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "",
        "torch_threads_per_trial": torch_threads_per_trial,
    }
    return {"git": git_state(), "packages": packages, "machine": machine}
