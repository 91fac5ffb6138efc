"""benchmarks.mnist1d_reference (issue 6, item 2): which search it runs."""

from __future__ import annotations

import argparse

from benchmarks import mnist1d_reference
from nas.config import load_config


def test_item2_search_is_the_configs_own_unless_trials_are_given():
    base = load_config(mnist1d_reference.CONFIG)
    args = argparse.Namespace(search_seed=3, trials=None, final_seeds=3, set=["search.lam=0.5"])
    # by default the trial budget a user of configs/mnist1d_cnn.yaml gets (docs/SEARCH_QUALITY.md, item 2)
    assert base.search.n_trials == 160
    assert mnist1d_reference.search_overrides(args, base) == [
        "seed=3", "search.n_trials=160", "search.final_seeds=3", "search.lam=0.5"]
    args.trials = 80
    assert mnist1d_reference.search_overrides(args, base)[1] == "search.n_trials=80"
    # a budget given with --set is the config's too
    with_set = load_config(mnist1d_reference.CONFIG, ["search.n_trials=240"])
    args.trials = None
    assert mnist1d_reference.search_overrides(args, with_set)[1] == "search.n_trials=240"
