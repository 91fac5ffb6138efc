"""Time to recover from a worker killed mid-trial (SIGKILL), on a local Ray.

One trial runs at a time (parallelism 1), so the killed worker is the running trial's. Two figures per kill:

* kill -> retried task running: until a new worker process executes the trial again (Ray noticed the
  death, rescheduled the task, and a worker picked it up);
* kill -> progress resumes: until the driver receives the trial's next new epoch. The retried task retrains
  from epoch 1 with the same seed; Ray drops the epochs already delivered, so this includes retraining them.

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


def _trial_workers() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::_trial_task"):
                    pids.add(int(entry.name))
            except OSError:
                pass
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
    rows: list[dict[str, float]] = []

    def killer() -> None:
        for _ in range(args.kills):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (workers := _trial_workers()):
                time.sleep(0.05)
            time.sleep(1.5)  # into the trial's epochs
            workers = _trial_workers()
            if len(workers) != 1:
                continue
            victim = workers.pop()
            delivered = max((r for r in executor.reports), default=(0.0, None, 0))
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            while time.monotonic() - killed < 120 and not (_trial_workers() - {victim}):
                time.sleep(0.01)
            running = time.monotonic() - killed
            while time.monotonic() - killed < 120:
                later = [r for r in executor.reports if r[0] > killed and r[1] == delivered[1]
                         and r[2] > delivered[2]]
                if later:
                    rows.append({"kill_to_running_s": round(running, 2),
                                 "kill_to_progress_s": round(later[0][0] - killed, 2),
                                 "epochs_retrained": delivered[2]})
                    break
                time.sleep(0.01)
            time.sleep(2.0)

    with temp_folder() as folder:
        config = config_from_dict({
            "name": "recovery", "data": {"dataset": "digits"},
            "space": {"name": "cnn", "depth": [2, 2], "channels": [16], "kernel_sizes": [3], "activations": ["relu"],
                      "batch_norm": [True], "downsample": ["none"], "downsample_every": [1], "head": ["flatten"]},
            "train": {"max_epochs": 40, "loss_tol": 0.0, "update_tol": 0.0, "patience": 40},
            "search": {"n_trials": args.kills + 2, "sampler": "random", "pruner": "none", "bound_check": False,
                       "final_seeds": 0, "storage": f"sqlite:///{folder / 'optuna.db'}"},
            "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "artifact_location": str(folder / "art")}})
        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        outcome = run_search(config, executor=executor)
        thread.join(timeout=60)
    executor.shutdown()
    print(f"{len(rows)} kills; trials completed {outcome.count('COMPLETE')} of {len(outcome.records)}")
    print("| kill | kill -> retried task running (s) | kill -> progress resumes (s) | epochs retrained |")
    print("|---:|---:|---:|---:|")
    for i, r in enumerate(rows, 1):
        print(f"| {i} | {r['kill_to_running_s']} | {r['kill_to_progress_s']} | {r['epochs_retrained']} |")
    if rows:
        print(f"| median | {statistics.median(r['kill_to_running_s'] for r in rows)} | "
              f"{statistics.median(r['kill_to_progress_s'] for r in rows)} | |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
