"""Sampling: deterministic with RandomTrial, compatible with real Optuna trials, stable names."""

from __future__ import annotations

import random

import optuna
import pytest

from search_spaces import (
    SPACES,
    CNNArchitecture,
    RandomTrial,
    ResNetArchitecture,
    get_space,
    layer_costs,
    total_macs,
)

SCALARS = (str, int, float, bool, type(None))


class RecordingTrial(RandomTrial):
    """A RandomTrial that records every call and enforces Optuna's rule on categorical choices."""

    def __init__(self, seed: int) -> None:
        super().__init__(random.Random(seed))
        self.calls: list[tuple[str, str]] = []

    def suggest_int(self, name, low, high):
        self.calls.append(("int", name))
        return super().suggest_int(name, low, high)

    def suggest_categorical(self, name, choices):
        self.calls.append(("categorical", name))
        # Optuna accepts only None, bool, int, float and str as categorical choices.
        assert all(isinstance(choice, SCALARS) for choice in choices), (name, choices)
        return super().suggest_categorical(name, choices)


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_same_seed_gives_the_same_architecture(space_name):
    space = get_space(space_name)
    first = [space.sample(RandomTrial(random.Random(seed))) for seed in range(50)]
    second = [space.sample(RandomTrial(random.Random(seed))) for seed in range(50)]
    # Randomness is injected: the same seeds reproduce the same architectures.
    assert first == second
    # ... and the seeds do explore: 50 seeds give many distinct architectures.
    assert len(set(first)) > 40


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_sample_works_with_a_real_optuna_trial(space_name):
    space = get_space(space_name)
    study = optuna.create_study()
    trial = study.ask()
    arch = space.sample(trial)
    # A real optuna.Trial is accepted and produces this space's architecture type.
    assert isinstance(arch, space.architecture_type)
    # Optuna recorded the draws under the stable names.
    assert {"cnn": "depth", "resnet": "stages"}.get(space_name, "") in trial.params
    study.tell(trial, float(total_macs(layer_costs(arch, (1, 40), 10))))
    # The trial completed with its objective: the params are valid Optuna distributions.
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_tpe_search_over_a_space_runs_and_reproduces_the_archs(space_name):
    space = get_space(space_name)

    def objective(trial: optuna.Trial) -> float:
        arch = space.sample(trial)
        trial.set_user_attr("arch", arch.to_json())
        return float(total_macs(layer_costs(arch, (1, 40), 10)))

    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=5)
    study = optuna.create_study(sampler=sampler)
    # Conditional parameters (per-layer names, depth-0 shortcuts) keep distributions consistent:
    # the model-based sampler runs past its random start-up trials without errors.
    study.optimize(objective, n_trials=12)
    assert len(study.trials) == 12
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for frozen in study.trials:
        # Replaying a trial's params rebuilds exactly the architecture it evaluated.
        replay = space.sample(optuna.trial.FixedTrial(frozen.params))
        assert replay.to_json() == frozen.user_attrs["arch"]


def test_cnn_parameter_names_are_stable():
    space = get_space("cnn", depth=[3, 3], per_layer_kernel=True, downsample=["pool"])
    trial = RecordingTrial(0)
    space.sample(trial)
    # The exact names, in order, that studies and dashboards rely on.
    assert trial.calls == [
        ("int", "depth"),
        ("categorical", "channels_0"),
        ("categorical", "channels_1"),
        ("categorical", "channels_2"),
        ("categorical", "kernel_size_0"),
        ("categorical", "kernel_size_1"),
        ("categorical", "kernel_size_2"),
        ("categorical", "activation"),
        ("categorical", "batch_norm"),
        ("categorical", "downsample"),
        ("categorical", "downsample_every"),
        ("categorical", "head"),
    ]


def test_cnn_shared_kernel_is_one_parameter():
    trial = RecordingTrial(1)
    arch = get_space("cnn", depth=[2, 2], downsample=["none"]).sample(trial)
    names = [name for _, name in trial.calls]
    # One "kernel_size" for the net, repeated per layer; no downsample_every without downsampling.
    assert "kernel_size" in names and "kernel_size_0" not in names
    assert "downsample_every" not in names
    assert len(set(arch.kernel_sizes)) == 1 and arch.downsample_every == 1


def test_resnet_parameter_names_are_stable():
    trial = RecordingTrial(0)
    get_space("resnet", stages=[2, 2]).sample(trial)
    assert trial.calls == [
        ("categorical", "stem_width"),
        ("int", "stages"),
        ("categorical", "blocks_0"),
        ("categorical", "blocks_1"),
        ("categorical", "width_0"),
        ("categorical", "width_1"),
        ("categorical", "kernel_size"),
        ("categorical", "activation"),
        ("categorical", "block_form"),
    ]


def test_ordered_choices_draw_ranks_under_their_own_names():
    space = get_space("cnn", depth=[2, 2], channels=[32, 8, 16], kernel_sizes=[5, 3],
                      per_layer_kernel=True, ordered_choices=True)
    trial = RecordingTrial(0)
    arch = space.sample(trial)
    # Channels and kernels are integer ranks among the choices sorted ascending, under "_rank" names
    # (a study never holds "channels_0" as both a category and an integer).
    assert trial.calls[:5] == [("int", "depth"), ("int", "channels_0_rank"), ("int", "channels_1_rank"),
                               ("int", "kernel_size_0_rank"), ("int", "kernel_size_1_rank")]
    assert arch.channels == tuple([8, 16, 32][trial.params[f"channels_{i}_rank"]] for i in range(2))
    assert arch.kernel_sizes == tuple([3, 5][trial.params[f"kernel_size_{i}_rank"]] for i in range(2))
    resnet = RecordingTrial(0)
    get_space("resnet", stages=[1, 1], ordered_choices=True).sample(resnet)
    assert [call for call in resnet.calls if call[0] == "int"] == [
        ("int", "stem_width_rank"), ("int", "stages"), ("int", "blocks_0_rank"), ("int", "width_0_rank"),
        ("int", "kernel_size_rank")]


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # TPE's `group`, as nas.study uses it
@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_ordered_choices_sample_every_choice_uniformly_and_replay_with_tpe(space_name):
    space = get_space(space_name, ordered_choices=True)
    plain = get_space(space_name)
    # Uniform draws by rank reach the same architectures as categorical draws, with the same frequencies.
    ordered_draws = [space.sample(RandomTrial(random.Random(seed))) for seed in range(400)]
    plain_draws = [plain.sample(RandomTrial(random.Random(seed))) for seed in range(400)]
    field = {"cnn": "channels", "resnet": "widths"}[space_name]
    firsts = [getattr(a, field)[0] for a in ordered_draws if getattr(a, field)]
    assert set(firsts) == {getattr(a, field)[0] for a in plain_draws if getattr(a, field)}
    assert min(firsts.count(v) for v in set(firsts)) > 0.6 * len(firsts) / len(set(firsts))

    def objective(trial: optuna.Trial) -> float:
        arch = space.sample(trial)
        trial.set_user_attr("arch", arch.to_json())
        return float(total_macs(layer_costs(arch, (1, 40), 10)))

    study = optuna.create_study(sampler=optuna.samplers.TPESampler(
        seed=0, n_startup_trials=5, multivariate=True, group=True))
    study.optimize(objective, n_trials=25)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert all(isinstance(d, optuna.distributions.IntDistribution)
               for t in study.trials for k, d in t.distributions.items() if k.endswith("_rank"))
    for frozen in study.trials:
        assert space.sample(optuna.trial.FixedTrial(frozen.params)).to_json() == frozen.user_attrs["arch"]
    # Minimising MACs, the model-based trials lean to the smallest widths: rank 0 is drawn most after start-up.
    rank = {"cnn": "channels_0_rank", "resnet": "width_0_rank"}[space_name]
    modelled = [t.params[rank] for t in study.trials[5:]]
    assert modelled.count(0) > len(modelled) / 2


def test_depth_zero_draws_nothing_else_and_gives_the_linear_baseline():
    trial = RecordingTrial(0)
    arch = get_space("cnn", depth=[0, 0]).sample(trial)
    # Parameters that cannot change the model are not drawn: only "depth".
    assert trial.calls == [("int", "depth")]
    assert arch == CNNArchitecture.linear()


def test_downsampling_that_never_happens_is_sampled_as_none():
    space = get_space("cnn", depth=[1, 1], downsample=["stride"], downsample_every=[2])
    arch = space.sample(RandomTrial(random.Random(0)))
    # With one layer, "every 2nd layer" never downsamples: the same model as "none", the same id.
    assert (arch.downsample, arch.downsample_every) == ("none", 1)


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_sampled_values_stay_within_the_configured_choices(space_name):
    configs = {
        "cnn": dict(
            depth=[2, 3],
            channels=[4, 12],
            kernel_sizes=[1, 7],
            activations=["tanh"],
            batch_norm=[False],
            downsample=["pool"],
            downsample_every=[1],
            head=["flatten"],
        ),
        "resnet": dict(
            stem_width=[4],
            stages=[2, 3],
            blocks_per_stage=[2],
            widths=[12, 24],
            kernel_sizes=[7],
            activations=["silu", "gelu"],
            block_forms=["pre"],
        ),
    }
    space = get_space(space_name, **configs.get(space_name, {}))
    for seed in range(100):
        arch = space.sample(RandomTrial(random.Random(seed)))
        # Every drawn value is one the config allows.
        if isinstance(arch, CNNArchitecture):
            assert 2 <= arch.depth <= 3 and set(arch.channels) <= {4, 12}
            assert set(arch.kernel_sizes) <= {1, 7} and arch.activation == "tanh"
            assert (arch.batch_norm, arch.downsample, arch.head) == (False, "pool", "flatten")
        elif isinstance(arch, ResNetArchitecture):
            assert arch.stem_width == 4 and 2 <= arch.stages <= 3 and set(arch.blocks) == {2}
            assert set(arch.widths) <= {12, 24} and arch.kernel_size == 7
            assert arch.activation in {"silu", "gelu"} and arch.block_form == "pre"


def test_random_trial_repeats_a_name_and_refuses_a_bare_seed():
    trial = RandomTrial(random.Random(0))
    first = trial.suggest_int("depth", 1, 100)
    # Like Optuna, a name drawn twice returns its first value.
    assert trial.suggest_int("depth", 1, 100) == first and trial.params == {"depth": first}
    # Randomness must be injected as a random.Random, not a seed.
    with pytest.raises(TypeError, match="RandomTrial needs a random.Random, but got int"):
        RandomTrial(0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="choices must not be empty"):
        trial.suggest_categorical("head", [])
