"""Every MLflow write of the service goes through this module.

`Tracker` queues writes and performs them on background writer threads: the driver never waits on
MLflow, per-epoch metrics go out in batches (one ``log_batch`` per flush), and a tracking server that is
down delays the writes (retried with backoff) instead of stopping the search or losing a record.
Runs are addressed by keys (``"search"`` for the parent, the trial number for a child) that the writers
resolve to MLflow run ids once they exist.

With several writers (``tracking.writers``, four by default) each run's writes go to one writer, in the order they were made: the parent's to the first, the trials'
spread over the others. A write that needs another run (a child needs its parent's id) waits until the
writes that create runs and were queued before it are done.
"""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping, Sequence

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository


__all__ = ["Tracker", "experiment_id", "client_for", "log_bytes", "log_in_batches", "server_environment", "PARENT", "TAG_STUDY", "TAG_TRIAL", "TAG_ARCH", "TAG_STATE",
           "TAG_REASON", "TAG_KIND"]

log = logging.getLogger(__name__)

PARENT = "search"
TAG_KIND = "geonas.kind"  # "search" or "trial"
TAG_STUDY = "geonas.study"
TAG_TRIAL = "trial_number"
TAG_ARCH = "arch_id"
TAG_STATE = "state"
TAG_REASON = "reason"
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value is 6000 characters
BATCH = 1000  # MLflow accepts up to 1000 metrics per log_batch
WRITERS = 4  # writer threads by default (tracking.writers); this module does not import nas.config, which imports torch


def server_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for an `mlflow server` / `mlflow ui` process this package starts.

    MLflow 3's server also starts a job runner by default (seven more Python processes, for GenAI jobs such
    as trace rollups and scorers) that a review of architecture searches never uses; on a PostgreSQL backend
    and two loaded cores it made the server take 30-50 s instead of 8-10 s to answer its first request, and a
    `nas sync` of three trials right after the start 66 s instead of 11 s. It is turned off unless `base`
    (default: this process's environment) sets ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` itself.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return env


def client_for(uri: str) -> MlflowClient:
    """An MlflowClient on `uri` (a SQLite store path or a tracking server URL)."""
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        _fast_sqlite_commits()
    return MlflowClient(tracking_uri=uri)


def _log_through_file(data: bytes, artifact_file: str, log: Callable[[str, str | None], None]) -> None:
    """Write `data` to a temporary file named like `artifact_file` and call ``log(path, folder)``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        path.write_bytes(data)
        folder = str(Path(artifact_file).parent) if Path(artifact_file).parent != Path(".") else None
        log(str(path), folder)


def _write_atomically(root: Path, artifact_file: str, data: bytes) -> None:
    """Write `data` to `root`/`artifact_file` (a local artifact store) through a hidden file in the same folder
    and a rename, as MLflow's local store does, so readers never see half a file: one file instead of a
    temporary folder, a copy and its removal per artifact."""
    relative = Path(artifact_file)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"artifact path must stay inside the run's artifacts, but got {artifact_file!r}")
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes it private; an artifact is readable like any file
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def log_bytes(client: MlflowClient, run_id: str, data: bytes, artifact_file: str) -> None:
    """Log `data` as the artifact `artifact_file` (a path inside the run's artifacts) of run `run_id`."""
    _log_through_file(data, artifact_file, lambda path, folder: client.log_artifact(run_id, path, folder))


_SQLITE_LISTENING = False


def _fast_sqlite_commits() -> None:
    """WAL journal and synchronous=NORMAL for SQLite connections made in this process (MLflow's store).

    SQLite's default syncs the disk at every commit, and MLflow commits each write: with WAL a commit costs
    a fraction of a millisecond, readers (the UI) never block the writer, and a crash loses at most the
    last writes, never the file. Other databases are untouched.
    """
    global _SQLITE_LISTENING
    if _SQLITE_LISTENING:
        return
    import sqlite3

    import sqlalchemy

    def pragmas(connection: Any, _record: Any) -> None:
        if isinstance(connection, sqlite3.Connection):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "connect", pragmas)
    _SQLITE_LISTENING = True


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created (with `artifact_location`) if it does not exist."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if artifact_location:
        if "://" in artifact_location:
            location = artifact_location
        else:
            path = Path(artifact_location).resolve() / name
            path.mkdir(parents=True, exist_ok=True)
            location = path.as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - another driver may have created it in between
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class _NoRun(LookupError):
    """A write addressed a run that does not exist (its creation failed)."""


ANY_RUN = object()  # what a write that adopts runs of earlier drivers creates: any run key


@dataclass
class _Op:
    name: str
    fn: Callable[[], None]
    seq: int = 0
    creates: Hashable | None = None  # the run key this write creates (ANY_RUN: it may adopt any)
    attempts: int = 0



@dataclass
class _Buffer:
    """Metrics (and params) of one run waiting for their batch: since when, and how long they may wait (None:
    until a flush)."""
    metrics: list[Metric] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)
    max_delay: float | None = None


def _chunks(metrics: Sequence[Metric], params: Sequence[Param] = (), tags: Sequence[RunTag] = ()
            ) -> list[tuple[list[Metric], list[Param], list[RunTag]]]:
    """Split one batch into `log_batch` calls within MLflow's limits (1000 entities, 100 params and 100 tags
    per call); always at least one (maybe empty) call."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    chunks = []
    while True:
        p, params = params[:100], params[100:]
        t, tags = tags[:100], tags[100:]
        room = BATCH - len(p) - len(t)
        m, metrics = metrics[:room], metrics[room:]
        chunks.append((m, p, t))
        if not (metrics or params or tags):
            return chunks


def log_in_batches(client: MlflowClient, run_id: str, metrics: Sequence[Metric] = (), params: Sequence[Param] = (),
                   tags: Sequence[RunTag] = ()) -> bool:
    """Log metrics, params and tags to `run_id` in as few `log_batch` calls as MLflow's limits allow;
    True if anything was written."""
    wrote = False
    for m, p, t in _chunks(metrics, params, tags):
        if m or p or t:
            client.log_batch(run_id, metrics=m, params=p, tags=t, synchronous=True)
            wrote = True
    return wrote


_FIGURES = threading.Lock()
_current = threading.local()  # the write a writer thread is performing (its `seq`)


class Tracker:
    """Queued, batched MLflow writes for one search (a parent run and one child run per trial).

    Args:
        uri: the MLflow tracking URI.
        experiment: the experiment name (created if missing).
        artifact_location: where a new experiment keeps artifacts (a folder or URI); None for the server default.
        retry_for: seconds a failing write is retried before it is given up (the Optuna storage keeps the
            record; ``nas sync`` rebuilds MLflow from it).
        writers: writer threads; one run's writes always go to the same one.
    """

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None,
                 retry_for: float = 600.0, writers: int = WRITERS) -> None:
        # MLflow's HTTP client retries a request up to 7 times with long backoff; this queue retries
        # whole writes itself, so keep single requests short.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        # MLflow's client prints a link to every run it ends on a server (and reads the run back to do so):
        # a search ends hundreds of runs; `nas ui` and the parent run are where reviewers find them.
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self.uri = uri
        self.client = client_for(uri)
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.retry_for = retry_for
        self._experiment_id: str | None = None
        self._exp_lock = threading.Lock()
        self._run_ids: dict[Hashable, str] = {}
        # The artifact store of each run this tracker created (from create_run's answer): writing through it
        # spares MLflow's client a get_run per run to find where the artifacts go.
        self._artifact_repos: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a run id became known, or a creating write ended
        self._seq = 0
        self._creating: dict[int, Hashable] = {}  # seq -> key of each queued write that creates runs
        self.writers = writers
        if self.writers < 1:
            raise ValueError(f"writers must be at least 1, but got {writers}")
        self._lanes: list[queue.Queue[_Op | None]] = [queue.Queue() for _ in range(self.writers)]
        self._buffers: dict[Hashable, _Buffer] = {}  # touched by the caller's thread only
        self.failed_writes: list[str] = []
        # Seconds the writer spent per kind of write ("start run", "metrics of", "complexity_profile.png of", ...)
        # and how many: where a search's tracking time goes (benchmarks/driver_capacity.py prints it).
        self.write_seconds: dict[str, list[float]] = {}
        self._down_since = 0.0
        self._stopped = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(lane,), name=f"geonas-tracking-{n}", daemon=True)
                         for n, lane in enumerate(self._lanes)]
        for thread in self._threads:
            thread.start()

    # -- the writer threads -------------------------------------------------------------------------------
    def _work(self, lane: queue.Queue[_Op | None]) -> None:
        while True:
            op = lane.get()
            if op is None or self._stopped.is_set():
                # Stopped with writes still queued: drop them; the Optuna storage keeps every record.
                if op is not None:
                    self.failed_writes.append(f"MLflow write '{op.name}' dropped at shutdown")
                    self._done_creating(op)
                lane.task_done()
                if op is None:
                    return
                continue
            started = time.monotonic()
            delay = 0.5
            # While the store has been unreachable for longer than retry_for, try each write once only.
            patience = 0.0 if self._down_since and time.monotonic() - self._down_since > self.retry_for \
                else self.retry_for
            _current.seq = op.seq
            while True:
                try:
                    op.fn()
                    self._down_since = 0.0
                    break
                except _NoRun as exc:  # the run's creation was given up: retrying cannot help
                    self.failed_writes.append(f"MLflow write '{op.name}' skipped: {exc}")
                    break
                except Exception as exc:  # noqa: BLE001 - any failure of the store: retry, then give up loudly
                    op.attempts += 1
                    self._down_since = self._down_since or time.monotonic()
                    if time.monotonic() - started >= patience:
                        message = f"MLflow write '{op.name}' given up after {op.attempts} attempts: {exc}"
                        log.warning(message)
                        self.failed_writes.append(message)
                        break
                    if op.attempts == 1:
                        log.warning("MLflow write '%s' failed (%s); retrying", op.name, exc)
                    if self._stopped.wait(delay):
                        self.failed_writes.append(f"MLflow write '{op.name}' dropped at shutdown")
                        break
                    delay = min(delay * 2, 5.0)  # short: a server that is back is used within seconds
            self._done_creating(op)
            with self._lock:
                kind = self.write_seconds.setdefault(op.name.rsplit(" ", 1)[0], [0, 0.0])
                kind[0] += 1
                kind[1] += time.monotonic() - started
            lane.task_done()

    def _done_creating(self, op: _Op) -> None:
        if op.creates is not None:
            with self._changed:
                self._creating.pop(op.seq, None)
                self._changed.notify_all()

    def _lane(self, key: Hashable) -> int:
        """The writer of `key`'s runs: the first for the parent (and writes not tied to one run), the others
        for the trials, spread by key."""
        if self.writers == 1 or not isinstance(key, int):  # the parent ("search") and writes of no run
            return 0
        return 1 + key % (self.writers - 1)

    def _submit(self, name: str, fn: Callable[[], None], key: Hashable = None, creates: Hashable | None = None) -> None:
        with self._lock:
            self._seq += 1
            op = _Op(name, fn, self._seq, creates)
            if creates is not None:
                self._creating[op.seq] = creates
        self._lanes[self._lane(key)].put(op)

    def _run_id(self, key: Hashable) -> str:
        """`key`'s run id; waits while a write queued before the calling one may still create that run."""
        me = getattr(_current, "seq", None)  # None outside a writer: any queued creation counts

        def may_come() -> bool:
            return any((me is None or seq < me) and created in (key, ANY_RUN) for seq, created in self._creating.items())

        with self._changed:
            while key not in self._run_ids and not self._stopped.is_set() and may_come():
                self._changed.wait(0.5)
            if key not in self._run_ids:
                raise _NoRun(f"no MLflow run for {key!r}")
            return self._run_ids[key]

    def adopt(self, key: Hashable, run_id: str) -> None:
        """Address an existing run (from an earlier driver) by `key`."""
        with self._changed:
            self._run_ids.setdefault(key, run_id)
            self._changed.notify_all()

    def run_id(self, key: Hashable) -> str | None:
        """The MLflow run id of `key` once its run exists (None before the queue reached it)."""
        with self._lock:
            return self._run_ids.get(key)

    def experiment_id(self) -> str:
        """The experiment's id, created on first use (call from a queued write, or when the store is up)."""
        return self._exp()

    def _exp(self) -> str:
        with self._exp_lock:  # one writer creates the experiment, the others wait for its id
            if self._experiment_id is None:
                self._experiment_id = experiment_id(self.client, self.experiment, self.artifact_location)
            return self._experiment_id

    # -- runs ---------------------------------------------------------------------------------------------
    def start_run(self, key: Hashable, run_name: str, tags: Mapping[str, Any], params: Mapping[str, Any],
                  parent: Hashable | None = None, existing_run_id: str | None = None,
                  params_delay: float | None = None) -> None:
        """Create (or, with `existing_run_id`, reopen) the run of `key`, with tags and params.

        `params_delay`: the params wait (at most that many seconds, see `flush_stale`) to go out in the run's
        next batch of metrics instead of a request of their own; None: written with the run's creation.
        """
        param_list = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        if params_delay is not None:
            buffer = self._buffers.setdefault(key, _Buffer())
            buffer.params.extend(param_list)
            buffer.max_delay = params_delay if buffer.max_delay is None else min(buffer.max_delay, params_delay)
            param_list = []
        tried = []

        def create() -> None:
            all_tags = {k: str(v) for k, v in tags.items()}
            if parent is not None:
                all_tags["mlflow.parentRunId"] = self._run_id(parent)
            if existing_run_id is not None:
                run_id = existing_run_id
                self.client.update_run(run_id, status="RUNNING")
            else:
                # A retried create may follow one that the server carried out but answered too late: look for
                # that run first, so that a slow server never gets two runs for one trial.
                found = self._find_created(all_tags) if tried else None
                tried.append(True)
                if found:
                    run_id = found
                else:
                    run = self.client.create_run(self._exp(), tags=all_tags, run_name=run_name)
                    run_id = run.info.run_id
                    self._remember_artifact_store(run_id, run.info.artifact_uri)
            with self._changed:
                self._run_ids[key] = run_id
                self._changed.notify_all()
            reopened = [RunTag(k, v) for k, v in all_tags.items()] if existing_run_id is not None else []
            log_in_batches(self.client, run_id, params=param_list, tags=reopened)

        self._submit(f"start run {key}", create, key, creates=key)

    def _remember_artifact_store(self, run_id: str, artifact_uri: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            self._artifact_repos[run_id] = get_artifact_repository(artifact_uri, tracking_uri=self.uri)
        except Exception:  # noqa: BLE001 - an unusual store: MLflow's client finds it per write instead
            pass

    def _log_artifact_bytes(self, key: Hashable, data: bytes, artifact_file: str) -> None:
        run_id = self._run_id(key)
        repo = self._artifact_repos.get(run_id)
        if repo is None:
            log_bytes(self.client, run_id, data, artifact_file)
        elif isinstance(repo, LocalArtifactRepository):
            _write_atomically(Path(repo.artifact_dir), artifact_file, data)
        else:
            _log_through_file(data, artifact_file, repo.log_artifact)

    def _find_created(self, tags: Mapping[str, str]) -> str | None:
        if TAG_TRIAL not in tags or TAG_STUDY not in tags:
            return None
        runs = self.client.search_runs([self._exp()], max_results=1, filter_string=(
            f"tags.`{TAG_STUDY}` = '{tags[TAG_STUDY]}' and tags.`{TAG_TRIAL}` = '{tags[TAG_TRIAL]}' and "
            f"tags.`{TAG_KIND}` = '{tags.get(TAG_KIND, 'trial')}'"))
        return runs[0].info.run_id if runs else None

    def log_metrics(self, key: Hashable, metrics: Mapping[str, float], step: int, flush: bool = False,
                    max_delay: float | None = None) -> None:
        """Buffer metrics of `key` at `step`; they are written in one batch at the next flush of that run
        (`flush`: now; `max_delay`: once the oldest buffered metric of the run is that many seconds old)."""
        now = int(time.time() * 1000)
        buffer = self._buffers.setdefault(key, _Buffer())
        if max_delay is not None:
            buffer.max_delay = max_delay
        buffer.metrics.extend(Metric(name, float(value), now, int(step)) for name, value in metrics.items())
        if flush or len(buffer.metrics) >= BATCH or (max_delay is not None and
                                                      time.monotonic() - buffer.since >= max_delay):
            self.flush_metrics(key)

    def flush_stale(self) -> None:
        """Write the buffered metrics that have waited their `max_delay` (call it from the loop that logs them)."""
        now = time.monotonic()
        for key, buffer in list(self._buffers.items()):
            if buffer.max_delay is not None and now - buffer.since >= buffer.max_delay:
                self.flush_metrics(key)

    def flush_metrics(self, key: Hashable) -> None:
        """Queue the buffered metrics (and params) of `key` as one batch."""
        buffer = self._buffers.pop(key, None)
        if buffer is None or not (buffer.metrics or buffer.params):
            return
        write = self._batch_writer(key, _chunks(buffer.metrics, buffer.params))
        self._submit(f"metrics of {key}", write, key)

    def _batch_writer(self, key: Hashable, chunks: list[tuple[list[Metric], list[Param], list[RunTag]]],
                      then: Callable[[str], None] | None = None) -> Callable[[], None]:
        """A write of `chunks` to `key`'s run, then `then(run_id)`; a retry skips the chunks already written."""
        written: list[int] = []

        def write() -> None:
            run_id = self._run_id(key)
            for n, (metrics, params, tags) in enumerate(chunks):
                if n in written:
                    continue
                if metrics or params or tags:
                    self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=True)
                written.append(n)
            if then is not None:
                then(run_id)

        return write

    def set_tags(self, key: Hashable, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._submit(f"tags of {key}", lambda: self.client.log_batch(self._run_id(key), tags=items, synchronous=True),
                     key)

    def log_dict(self, key: Hashable, data: Any, artifact_file: str) -> None:
        self.log_text(key, json.dumps(data, indent=2, sort_keys=True, default=str), artifact_file)

    def log_text(self, key: Hashable, text: str, artifact_file: str) -> None:
        data = text.encode("utf-8")
        self._submit(f"{artifact_file} of {key}", lambda: self._log_artifact_bytes(key, data, artifact_file), key)

    def log_figure(self, key: Hashable, make_figure: Callable[[], Any], artifact_file: str) -> None:
        """Render a matplotlib figure on a writer thread (off the driver's path) and log it as PNG."""

        def write() -> None:
            from nas.plots import close

            with _FIGURES:  # matplotlib's pyplot state is not thread-safe: one figure at a time over the writers
                fig = make_figure()
                try:
                    buffer = io.BytesIO()
                    fig.savefig(buffer, format="png")
                finally:
                    close(fig)
            self._log_artifact_bytes(key, buffer.getvalue(), artifact_file)

        self._submit(f"{artifact_file} of {key}", write, key)

    def log_model(self, key: Hashable, model: Any, input_example: Any, metrics: Mapping[str, float]) -> None:
        """Log a trained network as the MLflow model ``model`` of `key`'s run (signature from `input_example`),
        with `metrics` and the tag ``has_model``; `mlflow.pytorch.load_model("runs:/<id>/model")` loads it."""

        def write() -> None:
            import mlflow
            import mlflow.pytorch
            import torch
            from mlflow.models import infer_signature

            run_id = self._run_id(key)
            with torch.no_grad():
                output = model(torch.as_tensor(input_example)).numpy()
            signature = infer_signature(input_example, output)
            mlflow.set_tracking_uri(self.uri)
            # Requirements stated, not inferred: inference loads the model in a subprocess (seconds).
            with mlflow.start_run(run_id=run_id):
                # Pickled (not torch.export): it loads as the same network class, for any batch size.
                mlflow.pytorch.log_model(model, name="model", input_example=input_example, signature=signature,
                                         serialization_format="pickle",
                                         pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), int(time.time() * 1000), 0)
                                                   for k, v in metrics.items()],
                                  tags=[RunTag("has_model", "true")], synchronous=True)

        self._submit(f"model of {key}", write, key)

    def log_png(self, key: Hashable, make_png: Callable[[], bytes], artifact_file: str) -> None:
        """Render PNG bytes on a writer thread and log them as `artifact_file`."""

        self._submit(f"{artifact_file} of {key}", lambda: self._log_artifact_bytes(key, make_png(), artifact_file),
                     key)

    def call(self, name: str, fn: Callable[..., None], *args: Any, adopts_runs: bool = False) -> None:
        """Queue any other write: ``fn(tracker, *args)`` runs on the first writer, in order with the parent's
        writes (``tracker.client`` is its MLflow client). `adopts_runs`: `fn` finds or creates runs (`adopt`);
        writes queued after it that need a run it may provide wait for it. With a `TrackingProcess`, `fn` and
        `args` cross to that process: a module-level function and picklable arguments."""
        self._submit(name, lambda: fn(self, *args), None, creates=ANY_RUN if adopts_runs else None)

    def end_run(self, key: Hashable, status: str, metrics: Mapping[str, float] | None = None,
                tags: Mapping[str, Any] | None = None, step: int = 0) -> None:
        """Write the final metrics and tags of `key` with its buffered metrics, then end it with `status`:
        one batch and one status change (a retry after a failed status change does not log the batch twice)."""
        if metrics:
            self.log_metrics(key, metrics, step)
        buffer = self._buffers.pop(key, None) or _Buffer()  # the run ends: nothing more is buffered for it
        items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        write = self._batch_writer(key, _chunks(buffer.metrics, buffer.params, items),
                                   then=lambda run_id: self.client.set_terminated(run_id, status=status))
        self._submit(f"end run {key}", write, key)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is done; False if `timeout` seconds passed first."""
        for key in list(self._buffers):
            self.flush_metrics(key)
        if timeout is None:
            for lane in self._lanes:
                lane.join()
            return True
        deadline = time.monotonic() + timeout
        while self.backlog and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.backlog

    @property
    def backlog(self) -> int:
        """Writes queued or in progress, over all writers."""
        return sum(lane.unfinished_tasks for lane in self._lanes)

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the writer threads; writes still queued after `timeout` are dropped (False).

        Dropped writes lose nothing: the storage holds every record, and `nas sync` (or the next run of the
        same search) rebuilds the runs from it.
        """
        done = self.flush(timeout)
        if not done:
            self._stopped.set()
        for lane in self._lanes:
            lane.put(None)
        for thread in self._threads:
            thread.join(timeout=30)
        return done
