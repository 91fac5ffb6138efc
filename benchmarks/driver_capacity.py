"""Driver capacity: how many trials per second one driver can ask, dispatch, tell and track.

Trivial trials (one epoch of a one-layer CNN of 1-16 channels on digits; a new architecture almost every
trial, so that each is dispatched to a worker) keep the workers idle most of the time, so the driver is the
bottleneck. The figures per storage:

* trials/s end to end: n_trials / the search loop's wall time (everything: Optuna storage writes, Ray
  dispatch and result, MLflow tracking queue, the workers' epoch);
* trials/s tracked: n_trials / (the loop + the time after it until the last MLflow write is done): the
  rate at which trials are asked, dispatched, told and tracked, start-up excluded;
* trials/s whole run: n_trials / the whole `run_search` (Ray connection, stores opened, the loop, and the
  MLflow queue drained to the last record: nothing is left to write when it returns);
* driver CPU per trial: CPU seconds of the driver process over the whole run (its threads included: the
  tracking writers when they run on threads, Ray's client threads) per trial; 1 / that is what one driver
  could feed if workers were free and nothing else used its core;
* tracking process CPU per trial: with ``tracking.process: true`` (``--process on``; the config's default is
  off), the CPU seconds of the child process that does the MLflow writes, per trial (``--process on,off``
  compares the two set-ups).

The MLflow side is either a SQLite store in the driver's process (``--tracking sqlite``, the embedded default)
or a real ``mlflow server`` process on 127.0.0.1 over its own PostgreSQL database, with proxied artifacts
(``--tracking server``, the cluster set-up of configs/cluster_example.yaml) or with artifacts written by the
driver straight to the artifact root the server names (``--tracking server-direct``: ``mlflow server
--no-serve-artifacts --default-artifact-root``, for an artifact store every node can reach, such as S3 or a
shared file system), written by ``--writers`` writer threads (comma-separated counts are compared; default:
the config's, 4).

Run: ``python -m benchmarks.driver_capacity [--trials 200] [--pg postgresql://postgres@127.0.0.1:5432/test]
[--storages sqlite,postgresql,journal,journal-async] [--samplers random,tpe] [--tracking sqlite,server,server-direct]
[--writers 1,4] [--process on,off] [--server-workers 2]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from benchmarks._common import children_cpu, machine, machine_line, temp_folder

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# Cheap one-layer CNNs, one epoch: a trial's training is tens of milliseconds. The space holds 3,072 distinct
# architectures (16 widths x 2 kernels x 6 activations x 2 x 2 x 2), so that nearly every trial is dispatched
# to a worker: a search reuses the result of an architecture it has already trained (a duplicate is asked,
# told and tracked but never dispatched), and the report counts the trials that were dispatched.
TRIVIAL_SPACE = {"name": "cnn", "depth": [1, 1], "channels": list(range(1, 17)), "kernel_sizes": [1, 3],
                 "activations": ["relu", "gelu", "silu", "tanh", "sigmoid", "identity"], "batch_norm": [False, True],
                 "downsample": ["stride", "pool"], "downsample_every": [1], "head": ["flatten", "global_pool"]}


def _config(storage: str, folder: Path, n_trials: int, sampler: str, name: str, tracking: dict[str, Any],
            diagnostics: bool = True) -> Any:
    from nas.config import config_from_dict

    return config_from_dict({
        "name": name, "seed": 0, "data": {"dataset": "digits"}, "space": TRIVIAL_SPACE,
        "train": {"max_epochs": 1},
        "search": {"n_trials": n_trials, "sampler": sampler, "pruner": "none", "bound_check": False,
                   "final_seeds": 0, "storage": storage, "n_startup_trials": 10, "diagnostics": diagnostics},
        "tracking": tracking,
    })


def _pg_database(admin_url: str) -> tuple[str, Any]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool)
    name = f"geonas_bench_{uuid.uuid4().hex[:8]}"
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()

    return admin_url.rsplit("/", 1)[0] + f"/{name}", drop


# The storages compared: SQLite, PostgreSQL through Optuna's RDB tables, Optuna's journal in one PostgreSQL table
# (nas/journal.py), and that journal with asynchronous commits (PostgreSQL's synchronous_commit=off for the
# driver's session: a crash of the database server can lose the last few hundred milliseconds of records).
STORAGE_FORMATS = {
    "postgresql": lambda url: url,
    "journal": lambda url: "journal+" + url,
    "journal-async": lambda url: "journal+" + url + "?options=-csynchronous_commit%3Doff",
}


def measure(storage: str, folder: Path, n_trials: int, sampler: str, executor: Any, name: str,
            label: str, tracking: dict[str, Any], kind: str, diagnostics: bool = True) -> dict[str, Any]:
    from nas.search import run_search

    config = _config(storage, folder, n_trials, sampler, name, tracking, diagnostics)
    cpu_before, wall_before, children_before = time.process_time(), time.perf_counter(), children_cpu()
    outcome = run_search(config, executor=executor)
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - wall_before
    tracking_cpu = children_cpu() - children_before
    dispatched = sum(1 for r in outcome.records.values() if r.dispatched_at)
    return {"storage": label, "sampler": sampler, "trials": n_trials, "dispatched": dispatched,
            "parallelism": executor.parallelism,
            "tracking": kind, "diagnostics": diagnostics,
            "writers": config.tracking.writers, "process": config.tracking.process,
            "loop_s": round(outcome.loop_time, 2), "trials_per_s": round(n_trials / outcome.loop_time, 1),
            "whole_run_s": round(wall, 2), "trials_per_s_whole_run": round(n_trials / wall, 1),
            "drain_s": round(outcome.drain_time, 2),
            "trials_per_s_tracked": round(n_trials / (outcome.loop_time + outcome.drain_time), 1),
            "tracking_ms_per_trial": {k: round(1000 * v[1] / n_trials, 2) for k, v in
                                      sorted(outcome.tracking_seconds.items(), key=lambda kv: -kv[1][1])},
            "driver_cpu_ms_per_trial": round(1000 * cpu / n_trials, 1),
            "tracking_process_cpu_ms_per_trial": round(1000 * tracking_cpu / n_trials, 1),
            "driver_capacity_per_s": round(n_trials / cpu, 1)}


@contextlib.contextmanager
def _tracking_store(kind: str, folder: Path, args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The MLflow side of one measurement: a SQLite store in the driver, or a fresh `mlflow server` process."""
    if kind == "sqlite":
        yield {"uri": f"sqlite:///{folder / 'mlflow.db'}", "artifact_location": str(folder / "artifacts")}
        return
    if kind not in ("server", "server-direct"):
        raise SystemExit(f"--tracking: unknown store {kind!r} (sqlite, server or server-direct)")
    # The same server process the fault tests run (nas/testing.py), with more worker processes.
    from nas.testing import MlflowServer

    backend, drop = _pg_database(args.pg)
    (folder / "server-artifacts").mkdir()
    server = MlflowServer(backend, folder / "server-artifacts", workers=args.server_workers,
                          serve_artifacts=kind == "server").start()
    try:
        yield {"uri": server.url, "artifact_location": None}
    finally:
        server.stop()
        drop()


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--pg", default=os.environ.get("GEONAS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--samplers", default="random,tpe")
    parser.add_argument("--storages", default="sqlite,postgresql,journal,journal-async",
                        help="comma-separated: sqlite, " + ", ".join(STORAGE_FORMATS))
    parser.add_argument("--tracking", default="sqlite", help="comma-separated: sqlite (in the driver), server, server-direct")
    parser.add_argument("--writers", default="", help="comma-separated writer thread counts (default: the config's)")
    parser.add_argument("--process", default="off",
                        help="comma-separated: off (the config's default: the MLflow writers on threads of the driver), "
                             "on (tracking.process: the writers in a process of their own)")
    parser.add_argument("--server-workers", type=int, default=2, help="worker processes of the mlflow server")
    parser.add_argument("--parallelism", type=int, default=2,
                        help="trials in flight; above the cores, Ray queues the extra ones, so the driver never waits "
                             "for a worker to ask and dispatch the next trial")
    parser.add_argument("--no-diagnostics", action="store_true",
                        help="search.diagnostics=false: no geometry diagnostics in the workers, no diagnostics plot")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from workers.ray_adapter import RayExecutor

    executor = RayExecutor(parallelism=args.parallelism)
    executor.start()
    # Warm-up, not measured: the first trials of a fresh Ray start its worker processes (each imports torch).
    with temp_folder() as folder, _tracking_store("sqlite", folder, args) as tracking:
        measure(f"sqlite:///{folder / 'optuna.db'}", folder, 10, "random", executor, "capacity-warm-up", "sqlite",
                tracking, "sqlite", not args.no_diagnostics)
    rows = []
    writer_counts = [int(w) for w in args.writers.split(",") if w] or [None]
    processes = [{"on": True, "off": False}[p] for p in args.process.split(",")]
    try:
        for tracking_kind in args.tracking.split(","):
            for writers, process in [(w, p) for w in writer_counts for p in processes]:
                for sampler in args.samplers.split(","):
                    for storage in args.storages.split(","):
                        with temp_folder() as folder, _tracking_store(tracking_kind, folder, args) as tracking:
                            tracking["process"] = process
                            if writers is not None:
                                tracking["writers"] = writers
                            if storage == "sqlite":
                                rows.append(measure(f"sqlite:///{folder / 'optuna.db'}", folder, args.trials, sampler,
                                                    executor, f"capacity-sqlite-{sampler}", storage, tracking,
                                                    tracking_kind, not args.no_diagnostics))
                                continue
                            url, drop = _pg_database(args.pg)
                            try:
                                rows.append(measure(STORAGE_FORMATS[storage](url), folder, args.trials, sampler,
                                                    executor, f"capacity-{storage}-{sampler}", storage, tracking,
                                                    tracking_kind, not args.no_diagnostics))
                            finally:
                                drop()
    finally:
        executor.shutdown()
    print(machine_line(machine()))
    print(f"geometry diagnostics: {'off' if args.no_diagnostics else 'on (the default)'}; "
          f"trials in flight: {args.parallelism}")
    print("| storage | sampler | MLflow store | writers | tracking process | trials | dispatched | loop s | trials/s (loop) | "
          "MLflow drain after the loop s | trials/s tracked (loop + drain) | whole run s | driver process CPU ms/trial | "
          "tracking process CPU ms/trial |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['storage']} | {r['sampler']} | {r['tracking']} | {r['writers']} | {'on' if r['process'] else 'off'} | "
              f"{r['trials']} | {r['dispatched']} | {r['loop_s']} | "
              f"{r['trials_per_s']} | {r['drain_s']} | {r['trials_per_s_tracked']} | {r['whole_run_s']} | "
              f"{r['driver_cpu_ms_per_trial']} | {r['tracking_process_cpu_ms_per_trial']} |")
    print("\nMLflow writers, ms of writer time per trial by kind of write, summed over writers (first row of each "
          "storage, store and writer count):")
    seen = set()
    for r in rows:
        if (r["storage"], r["tracking"], r["writers"], r["process"]) in seen:
            continue
        seen.add((r["storage"], r["tracking"], r["writers"], r["process"]))
        top = ", ".join(f"{k} {v}" for k, v in list(r["tracking_ms_per_trial"].items())[:8])
        where = "a tracking process" if r["process"] else "threads of the driver"
        print(f"- {r['storage']} ({r['sampler']}, {r['tracking']}, {r['writers']} writers on {where}): "
              f"total {sum(r['tracking_ms_per_trial'].values()):.1f}: {top}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
