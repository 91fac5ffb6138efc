"""What the benchmarks share: configs with temporary stores, one local Ray, load checks, CPU accounting,
a summary of a search outcome, and markdown tables.

Every search gets its own temporary Optuna and MLflow SQLite stores (never ``runs/``). One local Ray is
started per benchmark process and reused by every measurement in it (starting Ray costs seconds).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "configs" / "digits_cnn.yaml"

# Every trial trains (no pruner, no bound check) and the sampler is seeded, so two runs of the same
# config ask for the same architecture sequence; no final test report.
EVERY_TRIAL_TRAINS = ("search.sampler=random", "search.pruner=none", "search.bound_check=false",
                      "search.final_seeds=0")

_TICK = os.sysconf("SC_CLK_TCK")


# -- configs -------------------------------------------------------------------------------------------------
def children_cpu() -> float:
    """CPU seconds of this process's finished children that were waited for (the tracking process, joined when
    its search ends)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def store_overrides(folder: Path) -> list[str]:
    """Overrides that point a config at fresh SQLite stores and an artifact folder under `folder`."""
    return [f"search.storage=sqlite:///{folder / 'optuna.db'}", f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            f"tracking.artifact_location={folder / 'artifacts'}"]


def make_config(folder: Path, overrides: Sequence[str] = (), path: Path = DIGITS) -> Any:
    """`load_config(path)` with the stores under `folder`, then `overrides` (``key=value``), final_seeds=0."""
    from nas.config import load_config

    return load_config(path, [*store_overrides(folder), "search.final_seeds=0", *overrides])


@contextlib.contextmanager
def temp_folder(prefix: str = "geonas-bench-") -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- Ray ---------------------------------------------------------------------------------------------------
class RaySession:
    """One local Ray for a whole benchmark; `executor(p)` gives a started executor running p trials at once.

    Ray is started here, as `RayExecutor.start` does for a local Ray, but with ``address="local"``:
    without it ``ray.init()`` joins the cluster named in /tmp/ray/ray_current_cluster (the last
    ``ray start`` on this machine, even a dead one) instead of starting its own. Executors then join this
    Ray, so each measurement can use its own parallelism without paying Ray's start-up again. A session
    passed to another benchmark's `main` is reused, not restarted.
    """

    def __init__(self) -> None:
        import ray

        from workers.ray_adapter import RayExecutor

        self._cls = RayExecutor
        self._started_here = False
        started = time.perf_counter()
        if not ray.is_initialized():
            ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
            self._started_here = True
        self.start_time = time.perf_counter() - started
        self._executors: list[Any] = []

    def executor(self, parallelism: int) -> Any:
        ex = self._cls(parallelism=parallelism, cpus_per_trial=1)
        ex.start()  # joins the running Ray
        self._executors.append(ex)
        return ex

    def cpus(self) -> float:
        from workers.ray_adapter import cluster_cpus

        return cluster_cpus()

    def shutdown(self) -> None:
        import ray

        for ex in self._executors:
            ex.shutdown()  # cancels what still runs; leaves Ray to us
        if self._started_here and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> "RaySession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


@contextlib.contextmanager
def ray_session(existing: RaySession | None) -> Iterator[RaySession]:
    """`existing` as is (its owner shuts it down), else a new session for the block."""
    if existing is not None:
        yield existing
        return
    with RaySession() as session:
        yield session


# -- /proc: CPU time of processes, ours and others ------------------------------------------------------
def _stat(path: str) -> tuple[str, int, float, int] | None:
    """(comm, ppid, cpu seconds, start time) from a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file."""
    try:
        with open(path, "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    lparen, rparen = raw.find("("), raw.rfind(")")
    comm = raw[lparen + 1:rparen]
    fields = raw[rparen + 2:].split()
    # fields[0] is state (stat field 3): utime, stime are fields 14, 15; starttime is field 22.
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK, int(fields[19])


def _processes() -> dict[tuple[int, int], tuple[str, int, float]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(f"/proc/{name}/stat")
            if st is not None:
                comm, ppid, cpu, start = st
                out[(int(name), start)] = (comm, ppid, cpu)
    return out


def _descendants(procs: dict[tuple[int, int], tuple[str, int, float]], root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for (pid, _), (_, ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def _driver_threads() -> dict[int, tuple[str, float]]:
    names = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    main = threading.main_thread().native_id
    out = {}
    for tid in os.listdir("/proc/self/task"):
        st = _stat(f"/proc/self/task/{tid}/stat")
        if st is None:
            continue
        t = int(tid)
        label = "main" if t == main else names.get(t) or st[0]
        out[t] = (label, st[2])
    return out


def _category(comm: str) -> str:
    if comm.startswith("ray::"):
        return "ray worker processes (training + task overhead)"
    if comm in ("raylet", "gcs_server"):
        return f"ray {comm}"
    return "other ray helper processes"


class CpuMeter:
    """CPU seconds used during a window, sampled from /proc in a background thread.

    Splits the time into this process's threads (the driver's main thread, the MLflow writer threads,
    Ray's threads), our child processes (Ray's raylet, GCS, workers) and everything else on the machine
    ("other processes": another engineer's tests, for example). A process that starts and ends between
    two samples (every `interval` seconds) is missed.
    """

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._first: dict[tuple[int, int], float] = {}
        self._last: dict[tuple[int, int], float] = {}
        self._ours: dict[tuple[int, int], str] = {}
        self._others: dict[tuple[int, int], str] = {}
        self._threads_first: dict[int, tuple[str, float]] = {}
        self._threads_last: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = self.stopped = 0.0

    def _sample(self, initial: bool) -> None:
        procs = _processes()
        mine = _descendants(procs, os.getpid())
        for key, (comm, _, cpu) in procs.items():
            if key[0] == os.getpid():
                continue
            if key not in self._first:
                self._first[key] = cpu if initial else 0.0
                if key[0] in mine:
                    self._ours[key] = _category(comm)
                else:
                    self._others[key] = comm
            self._last[key] = cpu
        for tid, (label, cpu) in _driver_threads().items():
            if tid not in self._threads_first:
                self._threads_first[tid] = (label, cpu if initial else 0.0)
            self._threads_last[tid] = (label, cpu)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample(initial=False)

    def start(self) -> "CpuMeter":
        self._sample(initial=True)
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="bench-cpu-meter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample(initial=False)
        self.stopped = time.perf_counter()
        return self.result()

    def result(self) -> dict[str, Any]:
        wall = self.stopped - self.started
        ours: dict[str, float] = {}
        for key, cat in self._ours.items():
            ours[cat] = ours.get(cat, 0.0) + self._last[key] - self._first[key]
        threads: dict[str, float] = {}
        for tid, (label, cpu) in self._threads_last.items():
            label = ("driver: MLflow writer threads" if label.startswith("geonas-tracking") else
                     "driver: main thread" if label == "main" else "driver: other threads (Ray client, torch, ...)")
            threads[label] = threads.get(label, 0.0) + cpu - self._threads_first[tid][1]
        others: dict[str, float] = {}
        for key, comm in self._others.items():
            others[comm] = others.get(comm, 0.0) + self._last[key] - self._first[key]
        other_total = sum(others.values())
        top_others = sorted(others.items(), key=lambda kv: -kv[1])[:5]
        return {"wall_s": wall, "ours": {**threads, **ours}, "other_cpu_s": other_total,
                "other_cores": other_total / wall if wall > 0 else 0.0,
                "other_top": [(name, round(cpu, 2)) for name, cpu in top_others if cpu > 0.05]}


# -- load ----------------------------------------------------------------------------------------------------
def top_snapshot() -> str:
    try:
        return subprocess.run(["top", "-bn1"], capture_output=True, text=True, timeout=10).stdout.splitlines()[:15]
    except (OSError, subprocess.SubprocessError):
        return []


def other_cores(seconds: float = 3.0) -> tuple[float, list[tuple[str, float]]]:
    """Cores used by processes other than this benchmark and its Ray, over `seconds`."""
    meter = CpuMeter(interval=0.5).start()
    time.sleep(seconds)
    r = meter.stop()
    return r["other_cores"], r["other_top"]


def wait_until_quiet(label: str, max_other_cores: float = 0.3, max_wait_s: float = 1800.0,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Check the load from other processes; wait (up to `max_wait_s`) while it is above `max_other_cores`.

    Returns what was seen: load averages, the cores other processes used just before the measurement,
    how long it waited, and ``top -bn1 | head -15``.
    """
    waited = 0.0
    while True:
        cores, top = other_cores()
        if cores <= max_other_cores or waited >= max_wait_s:
            break
        log(f"[{label}] other processes use {cores:.2f} cores ({top}); waiting 30 s")
        time.sleep(30)
        waited += 33
    load = os.getloadavg()
    seen = {"loadavg": [round(v, 2) for v in load], "other_cores_before": round(cores, 2), "other_top_before": top,
            "waited_s": waited, "quiet": cores <= max_other_cores, "top": top_snapshot()}
    log(f"[{label}] load average {seen['loadavg']}, other processes {cores:.2f} cores"
        f"{' (NOT quiet: measured anyway)' if not seen['quiet'] else ''}")
    return seen


# -- one measured search ------------------------------------------------------------------------------------
@dataclass
class Measured:
    """A search outcome with what was seen around it."""

    label: str
    outcome: Any
    load: dict[str, Any]
    cpu: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    config: Any = None
    extra: Any = None


@contextlib.contextmanager
def around_loop(before: Callable[[], None], after: Callable[[], None]) -> Iterator[None]:
    """Call `before` and `after` around the search's ask/train/tell loop (the span of
    `SearchOutcome.loop_time`), so that what a benchmark measures covers the same span. Instrumentation
    of this benchmark process only: the service's `_Search.run` is wrapped, not changed."""
    from nas import search as search_module

    original = search_module._Search.run

    def run(self: Any) -> None:
        before()
        try:
            original(self)
        finally:
            after()

    search_module._Search.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        search_module._Search.run = original  # type: ignore[method-assign]


def measure_search(label: str, overrides: Sequence[str], executor: Any, *, config_path: Path = DIGITS,
                   check_load: bool = True, retries: int = 2, max_other_cores: float = 0.3,
                   inspect: Callable[[Any], Any] | None = None, log: Callable[[str], None] = print) -> Measured:
    """Check the load, run a search with CPU accounting over its loop, and summarize it.

    The config is `make_config` of `config_path` with `overrides`, on fresh stores in a temporary folder
    (removed afterwards; `inspect(config)`, if given, reads them before, its value in ``Measured.extra``).
    When other processes used more than `max_other_cores` during the run, the run is repeated on fresh
    stores (up to `retries` times) once the machine is quiet again; discarded attempts are listed in
    ``summary["discarded"]`` and ``summary["busy"]`` says whether the kept run was still disturbed.
    """
    from nas.search import run_search

    discarded: list[dict[str, Any]] = []
    for attempt in range(retries + 1):
        load = wait_until_quiet(label, max_other_cores, log=log) if check_load else {}
        with temp_folder() as folder:
            config = make_config(folder, overrides, config_path)
            log(f"[{label}] running {config.search.n_trials} trials, parallelism {executor.parallelism} ...")
            meter = CpuMeter()
            with around_loop(meter.start, lambda: meter.stop()):
                outcome = run_search(config, executor=executor)
            extra = inspect(config) if inspect is not None else None
        cpu = meter.result()
        m = Measured(label, outcome, load, cpu, summarize(outcome), config, extra)
        m.summary["other_cores_during"] = round(cpu["other_cores"], 2)
        s = m.summary
        log(f"[{label}] {s['complete']} complete ({s['trained']} trained) in {s['loop_time_s']:.1f} s loop; "
            f"other processes used {cpu['other_cores']:.2f} cores meanwhile {cpu['other_top']}"
            + (f"; trials in flight > 1 s longer than trained (rerun?): {s['suspect_reruns']}"
               if s["suspect_reruns"] else ""))
        if not check_load or cpu["other_cores"] <= max_other_cores or attempt == retries:
            break
        log(f"[{label}] discarded: the machine was busy during the run; again")
        discarded.append({"loop_time_s": s["loop_time_s"], "train_time_s": s["train_time_s"],
                          "other_cores_during": s["other_cores_during"], "other_top": cpu["other_top"]})
    m.summary["discarded"] = discarded
    m.summary["busy"] = bool(check_load and cpu["other_cores"] > max_other_cores)
    return m


def summarize(outcome: Any) -> dict[str, Any]:
    """Figures of one search outcome.

    ``train_time_s`` sums the trainer wall time of trials that trained here (dispatched to a worker);
    `SearchOutcome.train_time` also counts, for a trial that reused a duplicate's result, the wall time
    of the trial it copied (reported as ``train_time_reported_s``).
    """
    records = list(outcome.records.values())
    trained = [r for r in records if r.dispatched_at and r.state == "COMPLETE"]
    duplicates = [r for r in records if r.state == "COMPLETE" and not r.dispatched_at]
    train = sum(r.train_wall_time for r in trained)
    errors = [p.val_error for p in outcome.points]
    in_flight = [r.finished_at - r.dispatched_at for r in trained]
    return {
        "trials": len(records), "complete": outcome.count("COMPLETE"), "pruned": outcome.count("PRUNED"),
        "failed": outcome.count("FAIL"), "trained": len(trained), "duplicates": len(duplicates),
        "epochs": outcome.epochs_trained, "loop_time_s": outcome.loop_time, "wall_time_s": outcome.wall_time,
        "train_time_s": train, "train_time_reported_s": outcome.train_time,
        "diagnose_time_s": sum(r.diagnose_time for r in trained),
        "in_flight_s": sum(in_flight),
        "hypervolume": outcome.hypervolume, "front_size": len(outcome.front),
        "best_val_error": min(errors) if errors else float("nan"),
        "mean_val_error": statistics.fmean(errors) if errors else float("nan"),
        "archs": {r.number: r.arch_id for r in records},
        "val_errors": {p.trial_number: p.val_error for p in outcome.points},
        "epochs_by_trial": {r.number: r.epochs for r in trained},
        "summaries": {r.number: r.summary for r in records},
        # A trial in flight much longer than its trainer ran was most likely rerun by Ray (its worker died).
        "suspect_reruns": [r.number for r in trained if r.finished_at - r.dispatched_at - r.train_wall_time > 1.0],
    }


# -- machine and output ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import torch

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("ray", "optuna", "mlflow"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a version is informative only
            versions[name] = "?"
    return {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **tree_state(),
            "nproc": len(os.sched_getaffinity(0)), "cpu": model, "platform": platform.platform(),
            "python": sys.version.split()[0], "torch": torch.__version__, **versions}


def tree_state() -> dict[str, Any]:
    """The commit measured and the files that differ from it (the working tree is edited concurrently)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    digest = hashlib.sha256()
    for package in ("nas", "workers", "search_spaces"):
        for path in sorted((ROOT / package).glob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "source_sha256": digest.hexdigest()[:12],
            "modified": [line[3:] for line in git("status", "--short").splitlines() if line[3:].strip()
                         and not line[3:].startswith(("benchmarks/", "docs/BENCHMARKS"))]}


def machine_line(m: dict[str, Any]) -> str:
    return (f"{m['date']}; {m['nproc']} CPUs ({m['cpu']}); Python {m['python']}, torch {m['torch']}, "
            f"ray {m['ray']}, optuna {m['optuna']}, mlflow {m['mlflow']}; tree {m['commit']} + "
            f"{len(m['modified'])} modified/untracked paths (service source sha256 {m['source_sha256']})")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (pastes into docs/BENCHMARKS.md as is); numbers right-aligned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join(("-" * (w + 1) + ":") if n else (":" + "-" * (w + 1)) for w, n in zip(widths, numeric)) + "|"
    body = ["| " + " | ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(r, widths, numeric)) + " |"
            for r in cells]
    return "\n".join([line, sep, *body])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.4f}"
    return str(v)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, help="also write the figures as JSON to this path")
    p.add_argument("--config", type=Path, default=DIGITS, help="the experiment config (default: %(default)s)")
    p.add_argument("--no-load-check", action="store_true", help="do not wait for other processes to go quiet")
    return p


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {path}")


def quiet_logs() -> None:
    """Keep the benchmark's output to its figures: silence INFO logs of MLflow, Alembic and Ray."""
    import logging
    import warnings

    for name in ("mlflow", "alembic", "ray", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
