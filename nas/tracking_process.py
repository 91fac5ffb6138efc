"""MLflow writes in a process of their own.

`TrackingProcess` has the interface of `nas.tracking.Tracker` that the search uses, and runs a `Tracker` in
a child process: the driver only pickles each write onto a pipe (tens of microseconds), and MLflow's ORM, the
artifact files and the PNGs cost the child's CPU and the child's GIL, not the search loop's. Writes keep
their order (one pipe, read by one thread that queues them on the child's writers, as `Tracker` queues them
on its threads), so everything `Tracker` promises still holds: each run's writes in order, a child run
created after its parent, retries while the tracking store is down.

What crosses the pipe must pickle (with the standard pickle, not multiprocessing's, which would send torch
tensors as shared-memory handles the child cannot open): the callables of `log_png`, `log_figure` and `call`
are module-level functions (or ``functools.partial`` of them) and the models of `log_model` are picklable
networks. A write that does not pickle, or does not unpickle in the child, is recorded as failed and the
others go on.

Faults: if the child dies, the driver logs it once and goes on without MLflow (every record is in the Optuna
storage; ``nas sync`` rebuilds the runs). If the driver dies, the child sees its pipe close and exits at once
without writing what is still queued, as the writer threads of a killed driver would: the next driver, or
``nas sync``, repairs those runs from the storage, and no orphan writes beside it. Ctrl-C is left to the
driver, which asks the child to flush and stop; a Ctrl-C that lands between a question to the child and its
answer leaves the pipe unusable, so the driver then closes it and the child stops, dropping what was queued
(the storage keeps every record; ``nas sync`` rebuilds the runs).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Hashable, Mapping

from nas.tracking import WRITERS

if TYPE_CHECKING:
    from nas.config import TrackingConfig

__all__ = ["TrackingProcess", "open_tracker"]

log = logging.getLogger(__name__)

_IDLE_POLL = 0.2  # seconds the child waits for a message before it flushes metrics that waited long enough
_ANSWER_GRACE = 60.0  # seconds a question to the child may take beyond its own timeout before the child counts as hung
# What the driver may ask the child to do (one-way) or answer (a question); nothing else is run from a message.
_WRITES = frozenset({"start_run", "log_metrics", "flush_metrics", "set_tags", "log_dict", "log_text", "log_figure",
                     "log_png", "log_model", "call", "end_run"})
_QUESTIONS = frozenset({"run_id", "backlog", "flush", "write_seconds", "failed_writes", "close"})


def open_tracker(tracking: TrackingConfig, experiment: str) -> Any:
    """The search's tracker as `tracking` asks: a `TrackingProcess` (``tracking.process``) or a `Tracker` on
    threads of the driver."""
    from nas.tracking import Tracker

    kind = TrackingProcess if tracking.process else Tracker
    return kind(tracking.uri, experiment, tracking.artifact_location, writers=tracking.writers)


class TrackingProcess:
    """A `Tracker` in a child process, driven through a pipe.

    Args: as `nas.tracking.Tracker`.
    """

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None,
                 retry_for: float = 600.0, writers: int = WRITERS) -> None:
        if writers < 1:
            raise ValueError(f"writers must be at least 1, but got {writers}")
        self.uri = uri
        self.experiment = experiment
        self.writers = writers
        # A fresh interpreter, not a fork (the driver holds Ray's and the storage's threads and connections, which
        # a fork copies in whatever state they are in) and not multiprocessing's spawn, which re-imports the
        # driver's main module: a user's script without an `if __name__ == "__main__"` guard would start its
        # search again in the child. The child gets the driver's sys.path and one end of a socket pair.
        self._conn, child_end = multiprocessing.Pipe(duplex=True)
        bootstrap = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "  # before the imports (seconds)
                     "import json, sys; sys.path[:0] = json.loads(sys.argv[2]); "
                     "from nas.tracking_process import _serve_fd; _serve_fd(int(sys.argv[1]))")
        self._process = subprocess.Popen([sys.executable, "-c", bootstrap, str(child_end.fileno()), json.dumps(sys.path)],
                                         pass_fds=[child_end.fileno()], stdin=subprocess.DEVNULL)
        child_end.close()
        self._conn.send_bytes(_dumps((uri, experiment, artifact_location, retry_for, writers)))
        self._lock = threading.Lock()  # one message (and its answer) on the pipe at a time
        self._dead = ""  # why the child can no longer be reached
        self._unsent: list[str] = []  # writes the driver could not hand to the child
        self._final: dict[str, Any] | None = None  # what the child reported when it stopped

    # -- the pipe -------------------------------------------------------------------------------------------
    def _died(self, why: str) -> None:
        if not self._dead:
            self._dead = why
            log.warning("The MLflow tracking process is out of reach (%s); the search goes on without MLflow. The Optuna "
                        "storage keeps every record: run `nas sync CONFIG` to rebuild the MLflow runs.", why)

    def _write(self, method: str, *args: Any, **kwargs: Any) -> None:
        name = f"{method} of {args[0]!r}" if args else method
        with self._lock:
            if self._dead:
                self._unsent.append(f"MLflow write '{name}' not written: {self._dead}")
                return
            try:
                data = _dumps(("write", method, args, kwargs))
            except Exception as exc:  # noqa: BLE001 - it does not pickle: nothing was sent, this write is lost
                log.warning("MLflow write '%s' could not be sent to the tracking process: %s", name, exc)
                self._unsent.append(f"MLflow write '{name}' could not be sent to the tracking process: {exc}")
                return
            try:
                self._conn.send_bytes(data)
            except (OSError, EOFError) as exc:  # the child is gone
                self._died(f"its pipe broke: {exc}")
                self._unsent.append(f"MLflow write '{name}' not written: {self._dead}")
            except BaseException:  # interrupted (Ctrl-C) mid-message: what the child reads next is garbage
                self._died("a message to it was interrupted")
                raise

    def _ask(self, question: str, *args: Any, default: Any = None, wait: float | None = 0.0,
             grace: float = _ANSWER_GRACE) -> Any:
        """The child's answer to `question` (after every write sent before it); `default` if it cannot answer.
        `wait`: seconds the question itself may take (None: as long as the child lives); `grace`: how much
        longer before the child counts as hung."""
        with self._lock:
            if self._dead:
                return default
            try:
                self._conn.send_bytes(_dumps(("ask", question, args, {})))
                deadline = None if wait is None else time.monotonic() + wait + grace
                while not self._conn.poll(0.5):
                    if self._process.poll() is not None:
                        raise EOFError(f"it exited with code {self._process.returncode}")
                    if deadline is not None and time.monotonic() > deadline:
                        self._process.kill()
                        raise TimeoutError(f"no answer to '{question}' within {wait + grace:.0f} s")
                ok, value = pickle.loads(self._conn.recv_bytes())
            except (OSError, EOFError, TimeoutError) as exc:
                self._died(str(exc))
                return default
            except BaseException:  # interrupted (Ctrl-C) between the question and its answer: they no longer pair
                self._died(f"the driver was interrupted while waiting for its answer to '{question}'")
                raise
        if not ok:
            raise RuntimeError(f"the tracking process failed to answer '{question}': {value}")
        return value

    # -- writes: as Tracker's, queued in the child ----------------------------------------------------------
    def start_run(self, key: Hashable, run_name: str, tags: Mapping[str, Any], params: Mapping[str, Any],
                  parent: Hashable | None = None, existing_run_id: str | None = None,
                  params_delay: float | None = None) -> None:
        self._write("start_run", key, run_name, dict(tags), dict(params), parent, existing_run_id, params_delay)

    def log_metrics(self, key: Hashable, metrics: Mapping[str, float], step: int, flush: bool = False,
                    max_delay: float | None = None) -> None:
        self._write("log_metrics", key, dict(metrics), step, flush, max_delay)

    def flush_stale(self) -> None:
        """Nothing to do: the child writes metrics that waited their delay on its own."""

    def flush_metrics(self, key: Hashable) -> None:
        self._write("flush_metrics", key)

    def set_tags(self, key: Hashable, tags: Mapping[str, Any]) -> None:
        self._write("set_tags", key, dict(tags))

    def log_dict(self, key: Hashable, data: Any, artifact_file: str) -> None:
        self._write("log_dict", key, data, artifact_file)

    def log_text(self, key: Hashable, text: str, artifact_file: str) -> None:
        self._write("log_text", key, text, artifact_file)

    def log_figure(self, key: Hashable, make_figure: Callable[[], Any], artifact_file: str) -> None:
        self._write("log_figure", key, make_figure, artifact_file)

    def log_png(self, key: Hashable, make_png: Callable[[], bytes], artifact_file: str) -> None:
        self._write("log_png", key, make_png, artifact_file)

    def log_model(self, key: Hashable, model: Any, input_example: Any, metrics: Mapping[str, float]) -> None:
        self._write("log_model", key, model, input_example, dict(metrics))

    def call(self, name: str, fn: Callable[..., None], *args: Any, adopts_runs: bool = False) -> None:
        self._write("call", name, fn, *args, adopts_runs=adopts_runs)

    def end_run(self, key: Hashable, status: str, metrics: Mapping[str, float] | None = None,
                tags: Mapping[str, Any] | None = None, step: int = 0) -> None:
        self._write("end_run", key, status, dict(metrics or {}), dict(tags or {}), step)

    # -- questions ------------------------------------------------------------------------------------------
    def run_id(self, key: Hashable) -> str | None:
        return self._ask("run_id", key)

    @property
    def backlog(self) -> int:
        """Writes queued or in progress in the child (0 once it is gone)."""
        return self._ask("backlog", default=0)

    @property
    def write_seconds(self) -> dict[str, list[float]]:
        if self._final is not None:
            return self._final["write_seconds"]
        return self._ask("write_seconds", default={})

    @property
    def failed_writes(self) -> list[str]:
        done = self._final["failed_writes"] if self._final is not None else self._ask("failed_writes", default=[])
        return list(done) + self._unsent

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write sent so far is done; False if `timeout` seconds passed first (or the child is gone)."""
        return bool(self._ask("flush", timeout, default=False, wait=timeout))

    def close(self, timeout: float | None = None) -> bool:
        """Flush (at most `timeout` seconds), then stop the child; False if writes were dropped (the timeout, or
        the child out of reach). Writes that failed are in `failed_writes`, as with `Tracker`."""
        done = False
        if not self._dead and self._final is None:
            # The child's close joins each writer thread for up to 30 s.
            answer = self._ask("close", timeout, default=None, wait=timeout, grace=_ANSWER_GRACE + 30 * self.writers)
            if answer is not None:
                done, self._final = answer
            self._dead = self._dead or "closed"
        with self._lock:
            self._conn.close()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        return done


def _serve_fd(fd: int) -> None:
    """The child's entry point: its end of the pipe is file descriptor `fd`; the first message says what to track."""
    from multiprocessing.connection import Connection

    # Ctrl-C in a terminal reaches the whole process group: the driver handles it and asks this process to
    # flush and stop, so the last records are written (the bootstrap ignores it before its imports, too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    try:
        uri, experiment, artifact_location, retry_for, writers = pickle.loads(conn.recv_bytes())
    except (EOFError, OSError):
        os._exit(0)
    _serve(conn, uri, experiment, artifact_location, retry_for, writers)


def _serve(conn: Any, uri: str, experiment: str, artifact_location: str | None, retry_for: float,
           writers: int) -> None:
    """A `Tracker` fed from `conn` until the driver closes it or is gone."""
    from nas.tracking import Tracker

    tracker = Tracker(uri, experiment, artifact_location, retry_for=retry_for, writers=writers)
    parent = os.getppid()
    while True:
        try:
            if not conn.poll(_IDLE_POLL):
                if os.getppid() != parent:  # the driver is gone (and something else still holds its end)
                    os._exit(0)
                tracker.flush_stale()
                continue
            raw = conn.recv_bytes()
        except (EOFError, OSError):
            # The driver is gone without a word: stop now, as its writer threads would have. Writing what is
            # queued could race the next driver, which repairs these runs from the storage.
            os._exit(0)
        try:
            kind, method, args, kwargs = pickle.loads(raw)
        except Exception as exc:  # noqa: BLE001 - e.g. a class the child cannot import: this write is lost, not the rest
            log.warning("A message to the tracking process could not be read: %r", exc)
            tracker.failed_writes.append(f"MLflow write could not be read by the tracking process: {exc!r}")
            continue
        if kind == "write" and method in _WRITES:
            try:
                getattr(tracker, method)(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a bad write is recorded, the others go on
                log.warning("MLflow write '%s' could not be queued: %s", method, exc)
                tracker.failed_writes.append(f"MLflow write '{method}' could not be queued: {exc}")
        elif kind == "ask" and method in _QUESTIONS:
            try:
                if method == "close":
                    done = tracker.close(*args)
                    answer: Any = (done, {"write_seconds": tracker.write_seconds,
                                          "failed_writes": tracker.failed_writes})
                else:
                    value = getattr(tracker, method)
                    answer = value(*args) if callable(value) else value
                reply = (True, answer)
            except Exception as exc:  # noqa: BLE001 - the driver hears of it
                reply = (False, repr(exc))
            try:
                conn.send_bytes(_dumps(reply))
            except (OSError, EOFError):
                os._exit(0)
            if method == "close":
                conn.close()
                return
        else:
            tracker.failed_writes.append(f"unknown message to the tracking process: {kind} {method}")
        tracker.flush_stale()


def _dumps(message: Any) -> bytes:
    """`message` pickled with the standard pickler (torch's reductions, registered on multiprocessing's, would
    send tensors as shared-memory handles)."""
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
