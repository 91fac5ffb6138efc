from __future__ import annotations

import random

import optuna
import pytest

from nas.config import config_from_dict
from nas.study import derive_seed, make_pruner, make_sampler, repeat_seeds
from search_spaces import get_space


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "random", "gp"])
@pytest.mark.parametrize("mode", ["scalar", "pareto"])
def test_every_sampler_drives_the_cnn_space_in_both_modes(sampler, mode):
    config = config_from_dict({"search": {"sampler": sampler, "mode": mode, "n_startup_trials": 3}})
    directions = ["minimize"] if mode == "scalar" else ["minimize", "minimize"]
    study = optuna.create_study(sampler=make_sampler(config), pruner=make_pruner(config), directions=directions)
    space = get_space("cnn")
    rng = random.Random(0)
    ids = set()
    for _ in range(6):  # past the startup trials, so the model-based samplers are exercised too
        trial = study.ask()
        arch = space.sample(trial)
        ids.add(arch.arch_id)
        values = [rng.random()] if mode == "scalar" else [rng.random(), rng.random()]
        study.tell(trial, values)
    assert len(study.trials) == 6 and len(ids) >= 2  # each proposal is an architecture; they vary


def test_pareto_mode_never_prunes():
    config = config_from_dict({"search": {"mode": "pareto", "pruner": "median"}})
    # Optuna cannot prune multi-objective trials (optuna#3450)
    assert isinstance(make_pruner(config), optuna.pruners.NopPruner)


def test_trial_seeds_are_stable_and_distinct():
    assert derive_seed(0, 5) == derive_seed(0, 5)
    assert len({derive_seed(0, n) for n in range(1000)}) == 1000
    assert derive_seed(0, 5) != derive_seed(1, 5) != derive_seed(0, 5, replicate=1)
    # a trial's further training runs (search.seeds_per_trial): replicates -1, -2, ..., none for one run
    assert repeat_seeds(0, 5, 3) == (derive_seed(0, 5, replicate=-1), derive_seed(0, 5, replicate=-2))
    assert repeat_seeds(0, 5, 1) == ()
