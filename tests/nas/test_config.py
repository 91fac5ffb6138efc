from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nas.config import apply_override, config_from_dict, flatten, load_config, mask_secrets
from nas.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_validates(path: Path):
    config = load_config(path)
    # the name of each shipped config matches its file, so studies and experiments are easy to find
    assert config.name == path.stem


def test_base_config_values_are_overridden_by_the_child(tmp_path):
    config = load_config(ROOT / "configs" / "mnist1d_cnn.yaml")
    assert config.data.dataset == "mnist1d"  # the child's value
    assert config.train.lr == 0.01  # the child's value over the base's 0.003
    assert config.train.max_epochs == 80  # the child's value over the base's 60
    # a value the child does not set comes from the base, not from the defaults
    (tmp_path / "base.yaml").write_text("name: base\ntrain:\n  patience: 7\n  lr: 0.02\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: child\ntrain:\n  lr: 0.05\n")
    child = load_config(tmp_path / "child.yaml")
    assert (child.train.patience, child.train.lr) == (7, 0.05)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"search": {"n_trails": 5}}, "unknown key 'search.n_trails' (did you mean 'n_trials'?)"),
        ({"train": {"lr": "fast"}}, "train.lr must be a number"),
        ({"search": {"n_trials": 0}}, "search.n_trials must be at least 1"),
        ({"search": {"seeds_per_trial": 0}}, "search.seeds_per_trial must be at least 1, but got 0"),
        ({"search": {"recheck_seeds": -1}}, "search.recheck_seeds must be >= 0, but got -1"),
        ({"search": {"recheck_seeds": 1.5}}, "search.recheck_seeds must be an integer"),
        ({"train": {"lr_factor": 1.5}}, "train.lr_factor must be in (0, 1)"),
        ({"train": {"chance_tol": 1.0}}, "train.chance_tol must be in [0, 1)"),
        ({"data": {"val_fraction": 0.6, "test_fraction": 0.5}}, "data.val_fraction"),
        ({"data": {"dataset": "cifar"}}, "data.dataset must be one of"),
        ({"search": {"sampler": "cmaes"}}, "search.sampler must be one of"),
        ({"search": {"reference_point": [1.0]}}, "search.reference_point"),
        ({"search": {"max_macs": 0}}, "search.max_macs must be positive (or null for no budget), but got 0"),
        ({"search": {"max_macs": "small"}}, "search.max_macs"),
        ({"ray": {"parallelism": 0}}, "ray.parallelism must be at least 1"),
        ({"tracking": {"writers": 0}}, "tracking.writers must be between 1 and 64"),
        ({"space": {"name": "transformer"}}, "transformer"),
        ({"space": {"name": "cnn", "depth": [3, 1]}}, "depth"),
        ({"space": {"name": "cnn", "activations": ["relu", "swish"]}}, "swish"),
        ({"space": {"name": "cnn", "widht": 3}}, "widht"),
        ({"data": {"dataset": "npz"}}, "data.path is required"),
        ({"seed": -1}, "seed must be >= 0"),
    ],
)
def test_invalid_config_names_the_key_at_fault(data, fragment):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    # the message names the offending key path or value
    assert fragment in str(info.value)


def test_set_override_parses_yaml_values_and_creates_paths():
    data = apply_override({"search": {"n_trials": 30}}, "search.n_trials=5")
    data = apply_override(data, "train.lr=1e-2")
    data = apply_override(data, "space.channels=[4, 8]")
    assert data["search"]["n_trials"] == 5  # an int, not the text "5"
    assert config_from_dict({**data, "space": {"name": "cnn", "channels": [4, 8]}}).train.lr == pytest.approx(0.01)
    assert data["space"]["channels"] == [4, 8]
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_override({}, "search.n_trials")


def test_override_file_is_merged_before_set(tmp_path: Path):
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"search": {"n_trials": 7, "lam": 0.5}}))
    config = load_config(ROOT / "configs" / "digits_cnn.yaml", ["search.n_trials=3"], [str(extra)])
    assert config.search.n_trials == 3  # --set wins over the override file
    assert config.search.lam == 0.5  # the override file wins over the config


def test_missing_and_malformed_files_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("search: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_secrets_are_masked_and_flattened_params_are_plain():
    assert mask_secrets("postgresql://geo:s3cret@db:5432/nas") == "postgresql://geo:***@db:5432/nas"
    assert mask_secrets("sqlite:///runs/optuna.db") == "sqlite:///runs/optuna.db"
    assert flatten({"a": {"b": [1, 2], "c": None}}) == {"a.b": "1,2", "a.c": None}


def test_cli_exits_2_with_the_key_path_and_starts_nothing(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "bad", "search": {"n_trials": -3}}))
    proc = subprocess.run([sys.executable, "-m", "nas", "search", str(bad)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "search.n_trials" in proc.stderr
    # nothing started: no store was created
    assert not (tmp_path / "runs").exists()
    proc = subprocess.run([sys.executable, "-m", "nas", "search", str(ROOT / "configs" / "digits_cnn.yaml"),
                           "--set", "train.optimizer=lbfgs"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "train.optimizer" in proc.stderr
    assert not (tmp_path / "runs").exists()
