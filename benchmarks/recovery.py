"""Time to recover from a worker killed mid-trial (SIGKILL), on a local Ray.

One trial runs at a time (parallelism 1), so the killed worker is the running trial's. Per kill:

* kill -> progress resumes: until the driver receives the trial's next new epoch. The retried task retrains
  from epoch 1 with the same seed and Ray drops the epochs already delivered, so this includes retraining
  them;
* restart overhead: that time minus the time to retrain those epochs and the next one (the trial's own
  epoch time, measured from its reports before the kill): what Ray spends noticing the death, rescheduling
  the task and starting a worker.

Run: ``python -m benchmarks.recovery [--kills 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import temp_folder

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _trial_workers(raylet: int) -> set[int]:
    """Worker processes of our own Ray (descendants of its raylet) running a trial: other Rays on the
    machine run trials too."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if not (entry / "cmdline").read_bytes().startswith(b"ray::_trial_task"):
                    continue
            except OSError:
                continue
            pid = ancestor = int(entry.name)
            while ancestor > 1 and ancestor != raylet:
                ancestor = _parent(ancestor)
            if ancestor == raylet:
                pids.add(pid)
    return pids


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    from nas.config import config_from_dict
    from nas.search import run_search
    from workers.ray_adapter import RayExecutor

    class TimedExecutor(RayExecutor):
        """Notes when each report reaches the driver."""

        def __init__(self) -> None:
            super().__init__(parallelism=1, max_retries=args.kills + 1)
            self.reports: list[tuple[float, Any, int]] = []

        def poll(self, timeout: float = 1.0) -> list[Any]:
            events = super().poll(timeout)
            now = time.monotonic()
            self.reports += [(now, e.key, e.epoch) for e in events if e.kind == "report"]
            return events

    executor = TimedExecutor()
    executor.start()
    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    rows: list[dict[str, float]] = []

    def killer() -> None:
        killed_keys: set[Any] = set()
        for _ in range(args.kills):
            # Wait until a trial not killed before has streamed a few epochs, then kill its worker.
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                fresh = [r for r in executor.reports if r[1] not in killed_keys]
                if fresh and fresh[-1][2] >= 5 and time.monotonic() - fresh[-1][0] < 0.5:
                    break
                time.sleep(0.02)
            workers = _trial_workers(raylet)
            if len(workers) != 1:
                print(f"skipped a kill: {len(workers)} trial workers running")
                continue
            victim = workers.pop()
            delivered = executor.reports[-1]
            killed_keys.add(delivered[1])
            before = [r[0] for r in executor.reports if r[1] == delivered[1]]
            epoch_time = (before[-1] - before[0]) / (len(before) - 1) if len(before) > 1 else 0.0
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            while time.monotonic() - killed < 120:
                later = [r for r in executor.reports if r[0] > killed and r[1] == delivered[1]
                         and r[2] > delivered[2]]
                if later:
                    progress = later[0][0] - killed
                    rows.append({"kill_to_progress_s": round(progress, 2), "epochs_retrained": delivered[2],
                                 "epoch_s": round(epoch_time, 3),
                                 "restart_overhead_s": round(progress - (delivered[2] + 1) * epoch_time, 2)})
                    break
                time.sleep(0.01)
            time.sleep(0.5)

    with temp_folder() as folder:
        config = config_from_dict({
            "name": "recovery", "data": {"dataset": "digits"},
            # Many distinct architectures: a duplicate would reuse a result and train nothing.
            "space": {"name": "cnn", "depth": [2, 3], "channels": [8, 12, 16, 24], "kernel_sizes": [3], "activations": ["relu"],
                      "batch_norm": [True], "downsample": ["none"], "downsample_every": [1], "head": ["flatten"]},
            "train": {"max_epochs": 150, "loss_tol": 0.0, "update_tol": 0.0, "patience": 150},
            "search": {"n_trials": args.kills + 2, "sampler": "random", "pruner": "none", "bound_check": False,
                       "final_seeds": 0, "storage": f"sqlite:///{folder / 'optuna.db'}"},
            "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "artifact_location": str(folder / "art")}})
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        outcome = run_search(config, executor=executor)
        thread.join(timeout=60)
    executor.shutdown()
    print(f"{len(rows)} kills; trials completed {outcome.count('COMPLETE')} of {len(outcome.records)}")
    print("| kill | kill -> progress resumes (s) | epochs retrained | epoch (s) | restart overhead (s) |")
    print("|---:|---:|---:|---:|---:|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['kill_to_progress_s']} | {r['epochs_retrained']} | {r['epoch_s']} | "
              f"{r['restart_overhead_s']} |")
    if rows:
        print(f"| median | {statistics.median(r['kill_to_progress_s'] for r in rows)} | | | "
              f"{statistics.median(r['restart_overhead_s'] for r in rows)} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
