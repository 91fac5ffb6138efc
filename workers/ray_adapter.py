"""The one module that imports Ray: trials run as Ray streaming-generator tasks.

Ray's reporting API has changed many times; everything the service needs from Ray is here, behind
`RayExecutor`: start or join a cluster, submit a trial, receive its per-epoch reports while it runs
(a streaming generator yields them), cancel it (pruning), and learn how it ended.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Generator, Literal

import ray
import torch
from ray.exceptions import RayTaskError, TaskCancelledError, WorkerCrashedError

from search_spaces import Architecture, layer_costs
from workers._diagnostics import diagnose
from workers._trainer import TrainConfig, TrainData, fit_runs_steps, metrics_on_test_split, refit, seeded_model

__all__ = ["RayExecutor", "TrialEvent", "TaskSpec", "cluster_cpus"]

EventKind = Literal["report", "result", "error", "cancelled"]


@dataclass(frozen=True)
class TrialEvent:
    """Something a running task told the driver: a per-epoch report, its result, or how it failed."""

    key: Any
    kind: EventKind
    epoch: int = 0
    payload: dict[str, Any] | None = None
    reason: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """What one task runs: an architecture (as JSON), the training settings and seed, and whether the
    trained network is then evaluated once on the test split (front members in the final report).

    `repeat_seeds`: further training runs of the same architecture, one per seed, in lockstep with the first
    (`fit_seeds_steps`); the reports and the result are then the means over all the runs, and the diagnostics
    are the first run's. Only for search trials: not with `evaluate_test` or `return_state`.
    """

    arch_json: str
    train: TrainConfig
    seed: int
    evaluate_test: bool = False
    return_state: bool = False
    diagnostics: bool = True
    refit: bool = False  # with evaluate_test: also train on train + validation with the run's schedule (`refit`)
    repeat_seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.repeat_seeds and (self.evaluate_test or self.return_state):
            # the test, the refit's schedule and the weights would be one run's beside a mean: not supported
            raise ValueError("TaskSpec: repeat_seeds (a trial's several training runs) cannot be combined with "
                             "evaluate_test or return_state (the final test trains one run per seed)")


def _trial_task(spec: TaskSpec, data: TrainData, threads: int) -> Generator[dict[str, Any], None, None]:
    """Runs in a Ray worker: stream one dict per epoch, then one with the result."""
    torch.set_num_threads(max(1, threads))
    arch = Architecture.from_json(spec.arch_json)
    model = seeded_model(arch, data, spec.seed)
    diagnostics: dict[str, float] = {}
    diagnose_s = 0.0

    def diagnose_as(prefix: str) -> None:
        # The geometry of the curve (own generators: training unchanged), timed apart from the training.
        nonlocal diagnose_s
        started = time.perf_counter()
        costs = layer_costs(arch, tuple(data.x_train.shape[1:]), int(data.num_classes))
        diagnostics.update({f"{prefix}.{k}": v for k, v in diagnose(model, arch, data.x_val, costs, seed=spec.seed).items()})
        diagnose_s += time.perf_counter() - started

    if spec.diagnostics:
        diagnose_as("init")  # before any step
    steps = fit_runs_steps([model, *(seeded_model(arch, data, seed) for seed in spec.repeat_seeds)], data, spec.train,
                           [spec.seed, *spec.repeat_seeds])
    while True:
        try:
            epoch, metrics = next(steps)
        except StopIteration as done:
            result, (model, *_) = done.value  # the first run's model: the one the diagnostics followed
            break
        yield {"kind": "report", "epoch": epoch, "metrics": metrics}
    payload = result.to_dict()
    if spec.diagnostics:
        diagnose_as("trained")
        payload["diagnostics"] = diagnostics
    payload["diagnose_time"] = diagnose_s  # seconds of the geometry diagnostics, outside the trainer's wall_time
    return_state = spec.return_state
    if spec.evaluate_test:
        payload.update(metrics_on_test_split(model, data))
        if spec.refit:
            # The run above chose the schedule on the validation split; the network the user gets is trained
            # again on both splits with it, and is the one tested (the split-trained one's test is kept too).
            payload.update({f"{k}_train_split": v for k, v in payload.items() if k.startswith("test_")})
            try:
                model = refit(seeded_model(arch, data, spec.seed), data, spec.train,
                              [h["lr"] for h in result.history], seed=spec.seed)
            except Exception as exc:  # noqa: BLE001 - recorded: the split-trained run's test is not lost with it
                # No refit test result (the driver must not read the split-trained one as it) and no weights.
                del payload["test_loss"], payload["test_accuracy"]
                payload["refit_error"] = f"final refit failed: {_reason(exc)}"
                return_state = False
            else:
                payload.update(metrics_on_test_split(model, data), refit_epochs=len(result.history))
    if return_state:
        payload["state_dict"] = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    yield {"kind": "result", "result": payload}


def _reason(exc: BaseException) -> str:
    """A one-line failure reason: the trainer's own message where it has one (``diverged: ...``)."""
    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
    if isinstance(cause, WorkerCrashedError) or isinstance(exc, WorkerCrashedError):
        return "worker died: the process running the trial exited unexpectedly"
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    if text.startswith(("diverged", "infeasible")):
        return text
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def cluster_cpus() -> float:
    """CPUs of the connected Ray cluster."""
    return float(ray.cluster_resources().get("CPU", 0.0))


class RayExecutor:
    """Runs trials on a local Ray (started here) or an existing cluster (by address).

    Args:
        address: a Ray cluster address (``ray://``, ``host:port`` or ``auto``); None uses ``RAY_ADDRESS`` when
            set, else starts a local Ray bound to 127.0.0.1.
        parallelism: trials at once; None means one per ``cpus_per_trial`` CPUs of the cluster.
        cpus_per_trial: Ray CPUs reserved per trial; torch threads in the worker are set to match.
        gpus_per_trial: Ray GPUs per trial; the trainer uses CUDA when one is assigned.
        max_retries: how often Ray reruns a trial whose worker process or node died.
    """

    def __init__(self, address: str | None = None, parallelism: int | None = None, cpus_per_trial: float = 1.0,
                 gpus_per_trial: float = 0.0, max_retries: int = 2) -> None:
        if parallelism is not None and parallelism < 1:
            raise ValueError(f"parallelism must be at least 1, but got {parallelism}")
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self._parallelism = parallelism
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self.max_retries = max_retries
        self._started_here = False
        self._running: dict[Any, ray.ObjectRefGenerator] = {}
        self._remote = None

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to the cluster at `address`, or start a local Ray bound to 127.0.0.1."""
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                # address="local": a new Ray of our own. Without it ray.init() joins whatever cluster the last
                # `ray start` on this machine recorded in /tmp/ray (even a dead one).
                ray.init(address="local", include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1")
                self._started_here = True
        self._remote = ray.remote(_trial_task).options(
            num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial, max_retries=self.max_retries,
            retry_exceptions=False)

    def shutdown(self) -> None:
        """Cancel what still runs; stop Ray if this executor started it."""
        for key in list(self._running):
            self.cancel(key)
        if self._started_here and ray.is_initialized():
            ray.shutdown()
        self._started_here = False

    def __enter__(self) -> "RayExecutor":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    @property
    def parallelism(self) -> int:
        """Trials at once: the configured number, else one per `cpus_per_trial` CPUs of the cluster."""
        if self._parallelism is not None:
            return self._parallelism
        return max(1, int(math.floor(cluster_cpus() / self.cpus_per_trial)))

    @property
    def threads_per_trial(self) -> int:
        return max(1, int(self.cpus_per_trial))

    # -- trials ---------------------------------------------------------------------------------------
    def put(self, data: TrainData) -> Any:
        """Place the data in the object store once; tasks receive the reference, not a copy each."""
        return ray.put(data)

    def submit(self, key: Any, spec: TaskSpec, data_ref: Any) -> None:
        """Start one trial; its events come back from `poll` under `key`."""
        if self._remote is None:
            raise RuntimeError("RayExecutor.start() must be called before submit()")
        if key in self._running:
            raise ValueError(f"a task with key {key!r} is already running")
        self._running[key] = self._remote.remote(spec, data_ref, self.threads_per_trial)

    @property
    def running(self) -> int:
        return len(self._running)

    def cancel(self, key: Any) -> None:
        """Stop a running trial (pruning); no further events come for it."""
        generator = self._running.pop(key, None)
        if generator is not None:
            try:
                ray.cancel(generator)
            except Exception:  # noqa: BLE001 - the task may have finished in between; nothing to stop
                pass

    def poll(self, timeout: float = 1.0) -> list[TrialEvent]:
        """Wait up to `timeout` seconds for anything from the running trials, then return every event ready."""
        if not self._running:
            return []
        keys = {id(gen): key for key, gen in self._running.items()}
        ready, _ = ray.wait(list(self._running.values()), num_returns=1, timeout=timeout)
        if ready:
            # Gather the rest of what is ready without waiting again.
            ready, _ = ray.wait(list(self._running.values()), num_returns=len(self._running), timeout=0)
        events: list[TrialEvent] = []
        for generator in ready:
            key = keys[id(generator)]
            events.extend(self._drain(key, generator))
        return events

    def _drain(self, key: Any, generator: ray.ObjectRefGenerator) -> list[TrialEvent]:
        events: list[TrialEvent] = []
        while key in self._running:
            try:
                ready, _ = ray.wait([generator], num_returns=1, timeout=0)
                if not ready:
                    break
                item = ray.get(next(generator))
            except StopIteration:
                self._running.pop(key, None)
                events.append(TrialEvent(key, "error", reason="the task ended without a result"))
                break
            except TaskCancelledError:
                self._running.pop(key, None)
                events.append(TrialEvent(key, "cancelled", reason="cancelled"))
                break
            except (RayTaskError, WorkerCrashedError, ray.exceptions.RayError) as exc:
                self._running.pop(key, None)
                events.append(TrialEvent(key, "error", reason=_reason(exc)))
                break
            if item["kind"] == "report":
                events.append(TrialEvent(key, "report", epoch=item["epoch"], payload=item["metrics"]))
            else:
                self._running.pop(key, None)
                events.append(TrialEvent(key, "result", payload=item["result"]))
        return events

    def wait_all(self, timeout: float | None = None) -> list[TrialEvent]:
        """Poll until nothing runs (or `timeout` seconds pass); every event in order of arrival."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[TrialEvent] = []
        while self._running and (deadline is None or time.monotonic() < deadline):
            events.extend(self.poll(timeout=1.0))
        return events

