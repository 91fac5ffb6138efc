"""`make bench` / `benchmarks.run_all`: the chain's flags, its sizes and one real benchmark through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from benchmarks import run_all
from benchmarks._common import ROOT  # the repository root, as the benchmarks see it


def test_every_benchmark_has_a_full_and_a_quick_size_and_a_module():
    assert set(run_all.FULL) == set(run_all.QUICK) == set(run_all.WITH_SESSION) | set(run_all.ON_THEIR_OWN)
    assert not set(run_all.WITH_SESSION) & set(run_all.ON_THEIR_OWN)
    assert run_all.NO_LOAD_CHECK <= set(run_all.FULL)


def test_unknown_benchmark_is_named_and_exits_non_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        run_all.main(["--only", "overhead,no_such_bench"])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "no_such_bench" in err and "overhead" in err  # names the culprit and lists the known ones


def test_make_bench_passes_bench_args_to_run_all():
    # Under `make test` this make is a sub-make: drop the parent's flags so it prints only its own commands.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "-n", "--no-print-directory", "bench", "BENCH_ARGS=--quick --only diagnostics_cost"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    bench = [line for line in out.splitlines() if "-m benchmarks.run_all" in line]
    assert len(bench) == 1 and bench[0].endswith("-m benchmarks.run_all --quick --only diagnostics_cost")


def test_quick_chain_runs_a_real_benchmark_and_writes_its_json(tmp_path):
    # In a child process, as `make bench` runs it (the benchmark sets torch's thread count for its own process).
    printed = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--quick", "--only", "diagnostics_cost",
                              "--out-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, check=True,
                             timeout=300).stdout
    assert "=== diagnostics_cost ===" in printed and "=== summary ===" in printed
    data = json.loads((tmp_path / "diagnostics_cost.json").read_text())
    rows = data["rows"]
    assert len(rows) == 4  # --trials 2 for each of the two digits configs
    assert {r["config"] for r in rows} == {"digits_cnn.yaml", "digits_resnet.yaml"}
    for r in rows:
        assert r["epochs"] >= 1 and r["train_s"] > 0 and r["diagnose_s"] > 0
        assert 0 <= r["val_error"] <= 1
    total = data["totals"]["all"]
    assert total["trials"] == 4
    assert total["ratio"] == pytest.approx(total["diagnose_s"] / total["train_s"])
