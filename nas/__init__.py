"""geonas: geometry-guided architecture search (the service: config, energy, search loop, tracking, CLI)."""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use (PEP 562): a process that needs one module (the tracking process needs
# nas.tracking) does not pay for torch, Ray and Optuna through the package.
_EXPORTS = {
    "Config": "nas.config", "config_from_dict": "nas.config", "load_config": "nas.config",
    "Dataset": "nas.data", "load_dataset": "nas.data",
    "FrontPoint": "nas.energy", "energy": "nas.energy", "hypervolume": "nas.energy", "pareto_front": "nas.energy",
    "ConfigError": "nas.errors", "DataError": "nas.errors", "GeonasError": "nas.errors",
    "SearchOutcome": "nas.search", "run_search": "nas.search",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
