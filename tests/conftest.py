"""Shared fixtures: one local Ray per test session (it takes seconds to start), temporary stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_executor():
    """A started RayExecutor on a local Ray with 2 CPUs, shared by every test of the session."""
    from workers.ray_adapter import RayExecutor

    executor = RayExecutor(parallelism=2, cpus_per_trial=1)
    executor.start()
    yield executor
    executor.shutdown()


@pytest.fixture
def stores(tmp_path: Path) -> dict[str, str]:
    """Fresh SQLite stores for Optuna and MLflow, and an artifact folder, under the test's tmp dir."""
    return {
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
        "tracking": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "artifacts": str(tmp_path / "artifacts"),
    }
