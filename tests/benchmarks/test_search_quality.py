"""benchmarks.search_quality and benchmarks.early_stopping (issue 6, items 1 and 3): how a verdict is read
from the runs' hypervolume histories, and what each early-stopping variant switches."""

from __future__ import annotations

import math

import pytest

from benchmarks import early_stopping, search_quality
from benchmarks.search_quality import compare, first_reaching, hv_at, paired, report


def run(label: str, seed: int, curve: list[float], **extra: float) -> dict:
    """A run as `search_quality.run_one` records it: the history is (trial number, HV after it) per trial."""
    return {"label": label, "dataset": "digits_cnn", "seed": seed, "sampler": "tpe" if label == "default" else label,
            "history": [[n, hv] for n, hv in enumerate(curve)], "epochs": extra.get("epochs", 100.0),
            "loop_s": 1.0, "pruned": 0, "failed": 0}


def test_hv_at_reads_the_kth_finished_trial_and_holds_the_last_value():
    history = [[0, 0.1], [1, 0.3], [2, 0.5]]
    assert hv_at(history, 1) == 0.1
    assert hv_at(history, 3) == 0.5
    assert hv_at(history, 80) == 0.5  # fewer trials finished than the checkpoint: the last value
    assert hv_at([], 20) == 0.0


def test_first_reaching_counts_trials_from_one():
    assert first_reaching([0.1, 0.2, 0.4, 0.4], 0.4) == 3
    assert first_reaching([0.1, 0.2], 0.5) is None


def test_paired_differences_per_seed_and_the_half_budget_check():
    # TPE reaches at trial 2 what random reaches at trial 4, on both seeds
    tpe = [run("default", 0, [0.1, 0.5, 0.6, 0.7]), run("default", 1, [0.2, 0.4, 0.5, 0.5])]
    rnd = {0: run("random", 0, [0.1, 0.2, 0.3, 0.5]), 1: run("random", 1, [0.1, 0.2, 0.3, 0.3])}
    out = paired(tpe, rnd, [2, 4])
    assert out["2"]["mean"] == pytest.approx((0.3 + 0.2) / 2)
    assert out["2"]["ahead"] == 2 and out["2"]["n"] == 2
    assert out["4"]["mean"] == pytest.approx((0.2 + 0.2) / 2)
    # the target per seed: TPE at half the budget against random at the whole
    half = out["2_vs_4"]
    assert half["mean"] == pytest.approx((0.0 + 0.1) / 2)
    assert half["ahead"] == 1 and half["tied"] == 1
    assert half["se"] == pytest.approx(math.sqrt(0.005) / math.sqrt(2))


def test_compare_and_report_give_the_items_verdict():
    at = [2, 4]
    met = [run("default", 0, [0.1, 0.5, 0.6, 0.7]), run("default", 1, [0.2, 0.4, 0.5, 0.5]),
           run("random", 0, [0.1, 0.2, 0.3, 0.5]), run("random", 1, [0.1, 0.2, 0.3, 0.3])]
    c = compare(met, at)["digits_cnn"]
    assert c["baseline_target_hv"] == pytest.approx(0.4)  # random's mean HV at the last checkpoint
    tpe = c["samplers"]["default"]
    assert tpe["mean_curve"] == pytest.approx([0.15, 0.45, 0.55, 0.6])
    assert tpe["trials_to_match_mean"] == 2
    assert tpe["trials_to_match_per_seed"] == [2, 2]
    assert c["samplers"]["random"]["trials_to_match_per_seed"] == [4, None]
    assert tpe["hv"]["4"]["min"] == 0.5 and tpe["hv"]["4"]["max"] == 0.7
    assert "MET (at 2 trials)" in report(compare(met, at), at)

    # the same TPE runs a trial slower: the seed-mean curve reaches random's mean at trial 3 of 4 (> half)
    late = [run("default", s, [r["history"][0][1], *[hv for _, hv in r["history"][:-1]]])
            for s, r in enumerate(met[:2])] + met[2:]
    assert compare(late, at)["digits_cnn"]["samplers"]["default"]["trials_to_match_mean"] == 3
    assert "NOT MET (at 3 trials)" in report(compare(late, at), at)
    never = [run("default", s, [0.1, 0.1, 0.1, 0.1]) for s in (0, 1)] + met[2:]
    assert "NOT MET (not within 4 trials)" in report(compare(never, at), at)


def test_early_stopping_variants_switch_the_pruner_and_the_bound_check():
    assert early_stopping.variant_overrides("both", "median") == ["search.pruner=median", "search.bound_check=true"]
    assert early_stopping.variant_overrides("pruner_only", "median") == ["search.pruner=median",
                                                                         "search.bound_check=false"]
    assert early_stopping.variant_overrides("bound_only", "median") == ["search.pruner=none", "search.bound_check=true"]
    assert early_stopping.variant_overrides("neither", "dominance") == ["search.pruner=none",
                                                                        "search.bound_check=false"]


def test_early_stopping_pruner_is_the_configs_or_median_where_it_has_none():
    # digits cnn runs the median pruner and the bound check: its search_quality runs are variant "both"
    assert early_stopping.pruner_of("digits_cnn") == "median"
    # MNIST-1D runs no pruner (docs/SEARCH_QUALITY.md, item 3): the variants that prune use the median pruner,
    # and the config as is is variant "bound_only", not "both"
    assert early_stopping.pruner_of("mnist1d_cnn") == "median"
    assert early_stopping.config_variant("mnist1d_cnn") == "bound_only"
    assert early_stopping.config_variant("digits_cnn") == "both"
    assert early_stopping.config_variant("digits_resnet") == "both"
    # a chosen pruner is used as given; then no variant is the digits config as it stands (median pruner)
    assert early_stopping.pruner_of("digits_cnn", "dominance") == "dominance"
    assert early_stopping.config_variant("digits_cnn", "dominance") is None
    assert early_stopping.config_variant("mnist1d_cnn", "dominance") == "bound_only"
    assert set(search_quality.DATASETS) == {"digits_cnn", "digits_resnet", "mnist1d_cnn"}


def test_early_stopping_reuses_only_runs_of_the_config_as_it_stands(tmp_path, capsys):
    # runs made with --set are another config: refused before any search starts (so no Ray is needed)
    changed = tmp_path / "changed.json"
    changed.write_text('{"args": {"set": ["search.lam=0.5"], "parallelism": 2}, "runs": []}')
    with pytest.raises(SystemExit):
        early_stopping.main(["--datasets", "digits_cnn", "--reuse", str(changed)])
    assert "search.lam=0.5" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text('{"args": {"set": [], "parallelism": 1}, "runs": []}')
    with pytest.raises(SystemExit):
        early_stopping.main(["--datasets", "digits_cnn", "--reuse", str(other)])
    assert "parallelism 1" in capsys.readouterr().err
