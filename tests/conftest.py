"""Shared fixtures: one local Ray per test session (it takes seconds to start), temporary stores."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Keep the simulated multi-node cluster on the loopback interface: without this, Ray turns the address
# 127.0.0.1 into the machine's outward IP, where the head node (bound to 127.0.0.1) does not listen.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real Ray cluster on this machine (head node with 2 CPUs, on 127.0.0.1), started once per session.

    Tests add and remove worker nodes (`cluster.add_node`, `cluster.remove_node`) to simulate a multi-node
    cluster; drivers in subprocesses join it through its address.
    """
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="session")
def ray_executor(ray_cluster):
    """A started RayExecutor on the session's cluster, 2 trials at once, shared by every test."""
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


PG_ADMIN_URL = os.environ.get("GEONAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_engine():
    import sqlalchemy

    return sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[Callable[[str], str]]:
    """A factory of fresh PostgreSQL databases on the real server (dropped at the end of the session)."""
    import sqlalchemy

    engine = _pg_engine()
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL} ({type(exc).__name__}); set GEONAS_TEST_PG")
    created: list[str] = []

    def make(prefix: str) -> str:
        name = f"geonas_{prefix}_{uuid.uuid4().hex[:8]}"
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield make
    with engine.connect() as connection:
        for name in created:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
