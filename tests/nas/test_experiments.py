"""nas experiment: the paper's claims as experiments, at tiny sizes, through real training, Ray, Optuna and MLflow."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from torch.utils.flop_counter import FlopCounterMode

from nas.config import config_from_dict
from nas.errors import GeonasError
from nas.experiments import (
    _activation_depth_verdicts,
    _Arm,
    _Condition,
    _depth_sweep_verdicts,
    _locality_verdicts,
    add_parser,
    run,
    run_experiment,
)
from nas.tracking import TAG_KIND
from search_spaces import Architecture, CNNArchitecture, build_model, get_space, layer_costs, total_params


def digits_config(stores: dict[str, str], **sections) -> dict:
    data = {"name": "exp", "seed": 0, "data": {"dataset": "digits"},
            "space": {"name": "cnn", "depth": [0, 2], "channels": [4, 8], "kernel_sizes": [3], "activations": ["relu"],
                      "batch_norm": [True], "downsample": ["stride"], "downsample_every": [1], "head": ["global_pool"]},
            "search": {"storage": stores["storage"], "n_startup_trials": 2},
            "tracking": {"uri": stores["tracking"], "artifact_location": stores["artifacts"]}}
    data.update(sections)
    return data


def experiment_run(stores: dict[str, str], name: str):
    client = MlflowClient(stores["tracking"])
    exp = client.get_experiment_by_name(f"experiment.{name}")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    return client, [r for r in runs if r.data.tags.get(TAG_KIND) == "experiment"], runs


# -- the architecture pieces the experiments added -----------------------------------------------------------
def test_mlp_head_keeps_old_ids_and_its_costs_match_the_flop_counter():
    old = CNNArchitecture((16, 32, 32), (3, 3, 3), "relu", True, "stride", 1, "global_pool")
    # Without hidden layers the canonical JSON has no "hidden" key: ids stored before it existed still match.
    assert "hidden" not in old.to_json() and old.arch_id == "56be8c429063"
    assert Architecture.from_json(old.to_json()) == old
    for arch, shape in ((CNNArchitecture.mlp((32, 16), "relu"), (1, 40)),
                        (CNNArchitecture((8,), (3,), "gelu", False, "pool", 1, "flatten", hidden=(12,)), (1, 8, 8))):
        # With hidden layers the field is part of the id, and the JSON round trip keeps it.
        assert Architecture.from_json(arch.to_json()) == arch and '"hidden"' in arch.to_json()
        costs = layer_costs(arch, shape, 10)
        model = build_model(arch, shape, 10).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.randn(1, *shape))
        # The analytic curve equals torch's count (2 FLOPs per MAC) and the parameter count of the model.
        assert sum(c.macs for c in costs) == counter.get_total_flops() // 2
        assert total_params(costs) == sum(p.numel() for p in model.parameters())
    # An MLP is a depth-0 net with hidden layers; its activation matters, so it is not forced to identity.
    assert CNNArchitecture.mlp((8,), "tanh").summary() == "cnn d0 flatten mlp[8] tanh"
    with pytest.raises(ValueError, match="at least one hidden layer"):
        CNNArchitecture.mlp((), "relu")


def test_tanh_critical_is_a_named_variant_with_critical_weights_and_biases():
    arch = CNNArchitecture((64, 64), (3, 3), "tanh_critical", False, "none", 1, "global_pool")
    model = build_model(arch, (1, 40), 10, generator=torch.Generator().manual_seed(0))
    conv = model.segments[1][0]  # 64 -> 64 channels, kernel 3: fan_in 192
    # Poole et al.'s critical point for tanh: Var(w) = 1.76 / fan_in, Var(b) = 0.05.
    assert conv.weight.var().item() == pytest.approx(1.76 / 192, rel=0.05)
    assert conv.bias.var().item() == pytest.approx(0.05, rel=0.5)  # 64 draws
    assert isinstance(model.segments[0][1], torch.nn.Tanh)
    # Plain tanh keeps its initialization (zero biases): existing architectures train as before.
    tanh = build_model(CNNArchitecture((8,), (3,), "tanh", False, "none", 1, "flatten"), (1, 40), 10)
    assert torch.count_nonzero(tanh.segments[0][0].bias) == 0
    # A config may list the variant; the spaces' default choices do not include it.
    assert get_space("cnn", activations=["tanh_critical"]).activations == ("tanh_critical",)
    assert "tanh_critical" not in get_space("cnn").activations


# -- activation-depth through the CLI ------------------------------------------------------------------------
def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nas")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_activation_depth_quick_through_the_cli_writes_report_and_mlflow_run(stores, tmp_path: Path, capsys):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(digits_config(stores)))
    out = tmp_path / "report"
    code = run(parse(["experiment", "activation-depth", str(config_file), "--quick", "--out", str(out),
                      "--param", "depths=[1,4]"]))
    assert code == 0
    report = (out / "report.md").read_text()
    # The report states the hypothesis, the verdicts and the measured table, with the command that made it.
    assert "## Hypothesis" in report and "## Verdicts" in report and "| relu | 4 |" in report
    assert "--param depths=[1,4]" in report
    results = json.loads((out / "results.json").read_text())
    # Every (activation, depth) was trained and diagnosed at initialization and trained.
    runs = results["runs"]
    assert {(r["activation"], r["depth"]) for r in runs} == {(a, d) for a in ("relu", "sigmoid", "tanh_critical")
                                                            for d in (1, 4)}
    assert all("jacobian_msv" in r["init"] and "traj_length_l1" in r["trained"] for r in runs)
    # The signal-propagation verdict is computed: sigmoid's Jacobian shrinks with depth far faster than relu's.
    summary = results["summary"]
    assert summary["sigmoid"]["4"]["init_jacobian_msv"] < 1e-2 * summary["relu"]["4"]["init_jacobian_msv"]
    assert any("ordered phase" in v["claim"] for v in results["verdicts"])
    # Figures exist, one diagnostics panel per activation at the deepest depth.
    assert {"accuracy_vs_depth.png", "jacobian_vs_depth.png", "diagnostics_sigmoid_d4.png"} <= {
        p.name for p in out.iterdir()}
    # One MLflow run holds the same files and the summary metrics.
    client, experiment_runs, _ = experiment_run(stores, "activation-depth")
    assert len(experiment_runs) == 1
    logged = experiment_runs[0]
    assert {"report.md", "results.json", "accuracy_vs_depth.png"} <= {a.path for a in client.list_artifacts(
        logged.info.run_id)}
    assert "relu.d4.val_accuracy" in logged.data.metrics and logged.data.params["param.depths"] == "[1, 4]"
    # The CLI prints each verdict.
    assert "supported" in capsys.readouterr().out


def test_cli_refuses_user_errors_before_anything_runs(stores, tmp_path: Path):
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(digits_config(stores)))
    # An unknown experiment lists the known ones.
    with pytest.raises(GeonasError, match="unknown experiment 'depth'; choose from activation-depth, locality"):
        run(parse(["experiment", "depth", str(config_file)]))
    # An unknown parameter lists the allowed ones; a wrong type names the parameter.
    with pytest.raises(GeonasError, match="unknown parameter 'depth' of experiment 'depth-sweep'; allowed: depths"):
        run(parse(["experiment", "depth-sweep", str(config_file), "--param", "depth=[1]"]))
    with pytest.raises(GeonasError, match="parameter 'n_trials' of experiment 'locality' must be an integer >= 1"):
        run(parse(["experiment", "locality", str(config_file), "--param", "n_trials=0"]))
    # A malformed condition and an unknown activation are named.
    with pytest.raises(GeonasError, match="DATASET:PERMUTE:BLOCK"):
        _Condition.parse("digits:fixed")
    with pytest.raises(GeonasError, match="unknown activation 'swish'"):
        run(parse(["experiment", "activation-depth", str(config_file), "--quick", "--param", "activations=[swish]",
                   "--out", str(tmp_path / "x")]))
    # A depth sweep needs the cnn space.
    resnet = digits_config(stores, space={"name": "resnet"})
    with pytest.raises(GeonasError, match="cnn space"):
        run_experiment("depth-sweep", config_from_dict(resnet), quick=True, out=tmp_path / "y")
    # Nothing was written for the refused runs.
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# -- locality and depth-sweep: real searches on the shared local Ray --------------------------------------------
def test_locality_quick_compares_the_best_cnn_and_mlp_on_each_condition(stores, tmp_path: Path, ray_executor):
    config = config_from_dict(digits_config(stores))
    report = run_experiment("locality", config, {"conditions": ["digits", "digits:per_sample:4"]}, quick=True,
                            out=tmp_path / "locality", executor=ray_executor)
    conditions = report.results["conditions"]
    assert set(conditions) == {"digits", "digits-per_sample-4"}
    for entry in conditions.values():
        cnn, mlp = entry["cnn"], entry["mlp"]
        # Each arm had the same budget, and its best candidate was tested once on the test split.
        assert cnn["candidates"] == mlp["candidates"] == 2
        assert 0 < cnn["test_accuracy"] <= 1 and 0 < mlp["test_accuracy"] <= 1
        # The CNN arm searched convolutional nets only; the MLP arm has hidden layers and no convolution.
        assert cnn["best_summary"].startswith("cnn d") and not cnn["best_summary"].startswith("cnn d0")
        assert mlp["best_summary"].startswith("cnn d0 flatten mlp[")
    # Per permuted condition: verdicts on the CNN's loss of locality and on CNN vs MLP.
    claims = [v.claim for v in report.verdicts]
    assert len(claims) == 2 and all(c.startswith("digits blocks 4 per image") for c in claims)
    # MLflow: the report run, and the CNN searches as search runs of the same experiment.
    client, experiment_runs, runs = experiment_run(stores, "locality")
    assert len(experiment_runs) == 1 and "locality.png" in {
        a.path for a in client.list_artifacts(experiment_runs[0].info.run_id)}
    assert sum(r.data.tags.get(TAG_KIND) == "search" for r in runs) == 2
    assert "digits.cnn.accuracy" in experiment_runs[0].data.metrics


def test_depth_sweep_quick_runs_one_search_per_depth_and_resumes_them(stores, tmp_path: Path, ray_executor):
    config = config_from_dict(digits_config(stores))
    first = run_experiment("depth-sweep", config, quick=True, out=tmp_path / "a", executor=ray_executor)
    depths = first.results["depths"]
    # One search per depth, with the budget of trials; the best error at each depth is measured.
    assert set(depths) == {"0", "1"} and all(d["trials"] == 1 for d in depths.values())
    assert depths["0"]["best_summary"] == "cnn d0 flatten" and depths["1"]["best_summary"].startswith("cnn d1")
    # The verdicts compare shallowest, best and deepest depth.
    assert [v.supported is not None for v in first.verdicts] == [True, True, True]
    # Each search is a study of its own in the config's storage, named after the settings' digest.
    names = optuna.get_all_study_names(stores["storage"])
    assert len(names) == 2 and all(n.startswith("exp.depth-sweep.d") for n in names)
    # Rerunning the same experiment resumes the finished studies: no new trial, the same numbers.
    second = run_experiment("depth-sweep", config, quick=True, out=tmp_path / "b", executor=ray_executor)
    assert second.results["depths"] == depths
    assert all(len(optuna.load_study(study_name=n, storage=stores["storage"]).trials) == 1 for n in names)


# -- verdicts come from the numbers -------------------------------------------------------------------------
def test_activation_depth_verdicts_follow_the_measurements():
    depths = [2, 4, 8, 16]

    def cells(accuracies, msv):
        return {d: {"val_accuracy": a, "init_jacobian_msv": m} for d, a, m in zip(depths, accuracies, msv)}

    literature = {"relu": cells([0.97, 0.97, 0.96, 0.95], [1.5, 1.2, 1.0, 0.5]),
                  "sigmoid": cells([0.9, 0.1, 0.1, 0.1], [1e-2, 1e-5, 1e-10, 1e-20]),
                  "tanh_critical": cells([0.96, 0.96, 0.95, 0.93], [0.7, 0.6, 0.5, 0.4])}
    verdicts = _activation_depth_verdicts(literature, depths, 0.5)
    # Sigmoid stalls at depth 4, ReLU trains to 16, tanh matches it, sigmoid is ordered: all supported.
    assert [v.supported for v in verdicts] == [True, True, True, True]
    contrary = {"relu": cells([0.97] * 4, [1, 1, 1, 1]), "sigmoid": cells([0.97] * 4, [1, 1, 1, 1]),
                "tanh_critical": cells([0.97, 0.97, 0.3, 0.1], [1, 1, 1, 1])}
    # Sigmoid trains everywhere, so it does not stall and relu is not deeper; tanh falls behind; no ordered phase.
    assert [v.supported for v in _activation_depth_verdicts(contrary, depths, 0.5)] == [False, False, False, False]


def test_locality_and_depth_sweep_verdicts_follow_the_measurements():
    def arms(cnn: float, mlp: float) -> dict[str, _Arm]:
        return {"cnn": _Arm(test_accuracy=cnn), "mlp": _Arm(test_accuracy=mlp)}

    published = {_Condition("mnist1d"): arms(0.94, 0.68), _Condition("mnist1d", "fixed", 1): arms(0.56, 0.68)}
    # The published MNIST-1D numbers support every claim: the CNN drops 38 points, the MLP none.
    assert [v.supported for v in _locality_verdicts(published)] == [True, True, True]
    robust = {_Condition("digits"): arms(0.98, 0.96), _Condition("digits", "fixed", 4): arms(0.97, 0.90)}
    # A CNN that keeps its lead on permuted blocks contradicts the claims (and the MLP changed by 6 points).
    assert [v.supported for v in _locality_verdicts(robust)] == [False, False, False]
    u_shape = {0: {"best_val_error": 0.2}, 2: {"best_val_error": 0.03}, 8: {"best_val_error": 0.08}}
    assert [v.supported for v in _depth_sweep_verdicts(u_shape, 0.01)] == [True, True, True]
    monotone = {0: {"best_val_error": 0.2}, 2: {"best_val_error": 0.03}, 8: {"best_val_error": 0.03}}
    # Deeper never hurts (within the margin): long enough yes, too long no, no interior optimum.
    assert [v.supported for v in _depth_sweep_verdicts(monotone, 0.01)] == [True, False, False]
    assert math.isnan(_Arm().accuracy)  # an arm without results has no accuracy
