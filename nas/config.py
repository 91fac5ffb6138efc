"""Experiment configs: YAML in, one validated frozen `Config` out.

Configs are validated once, here, at the edge: an unknown key, a wrong type or an impossible range raises
`ConfigError` naming the key path (``search.n_trials``), and nothing downstream probes a config again.
A config may name a ``base`` config (a path relative to itself) whose values it overrides; ``--set
a.b=c`` overrides and override files are applied on top, and the resolved config is what gets logged.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from nas.errors import ConfigError
from workers import TrainConfig

__all__ = [
    "Config",
    "DataConfig",
    "TrainConfig",
    "SearchConfig",
    "TrackingConfig",
    "RayConfig",
    "load_config",
    "config_from_dict",
    "apply_override",
    "config_to_dict",
    "flatten",
    "mask_secrets",
    "expand_env",
]

DATASETS = ("digits", "mnist1d", "npz")
MODES = ("scalar", "pareto")
SAMPLERS = ("tpe", "nsga2", "random", "gp")
PRUNERS = ("median", "successive_halving", "dominance", "none")


def _check(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{path} {message}")


def _choice(value: str, options: tuple[str, ...], path: str) -> None:
    _check(value in options, path, f"must be one of {list(options)}, but got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how it is split (stratified, from the config seed), and how its inputs are permuted.

    ``permute`` cuts every input into blocks of ``permute_block`` positions (1-D) or
    ``permute_block`` x ``permute_block`` pixels (2-D) and reorders the blocks: "fixed" by one
    permutation for every sample (with block 1 on MNIST-1D: the published "spatially shuffled"
    variant, like the mnist1d package's ``shuffle_seq``), "per_sample" by a fresh permutation for
    each sample (the seed paper's block-permuted images, section III-A). The permutations are drawn
    from ``permute_seed``, independently of the split, so the splits hold the same samples.
    """

    dataset: str = "digits"
    path: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    permute: str = "none"
    permute_block: int = 1
    permute_seed: int = 0

    def __post_init__(self) -> None:
        _choice(self.dataset, DATASETS, "data.dataset")
        _check(self.dataset != "npz" or bool(self.path), "data.path", "is required when data.dataset is 'npz'")
        _check(0 < self.val_fraction < 1, "data.val_fraction", f"must be in (0, 1), but got {self.val_fraction}")
        _check(0 < self.test_fraction < 1, "data.test_fraction", f"must be in (0, 1), but got {self.test_fraction}")
        total = self.val_fraction + self.test_fraction
        _check(total < 1, "data.val_fraction", f"+ data.test_fraction must be below 1, but got {total}")
        _choice(self.permute, ("none", "fixed", "per_sample"), "data.permute")
        _check(self.permute_block >= 1, "data.permute_block", f"must be at least 1, but got {self.permute_block}")
        _check(self.permute != "none" or self.permute_block == 1, "data.permute_block",
               f"has no effect while data.permute is 'none' (got {self.permute_block}); set data.permute to "
               "'fixed' or 'per_sample'")
        _check(self.permute_seed >= 0, "data.permute_seed", f"must be >= 0, but got {self.permute_seed}")


@dataclass(frozen=True)
class SearchConfig:
    """The outer loop: energy, sampler, pruner, budget, storage and the front's reference point."""

    mode: str = "scalar"
    n_trials: int = 30
    sampler: str = "tpe"
    n_startup_trials: int = 10
    pruner: str = "median"
    pruner_warmup_epochs: int = 3
    lam: float = 0.1
    scale: float = 1.0e6
    bound_check: bool = True
    # a budget of MACs per sample: a proposal whose curve is longer is never trained (PRUNED, reason "budget: ..."),
    # so the trials go to the networks a user can deploy (docs/SEARCH.md, "A MACs budget"); null: no budget
    max_macs: float | None = None
    # false: a proposal of a structure already tried is told its earlier result and does not count towards
    # n_trials (it trains nothing); the budget is then n_trials new structures (docs/SEARCH.md, "Duplicates")
    count_duplicates: bool = True
    # each trial trains its architecture this many times (seeds of their own) and is told the mean validation
    # loss and error; reports and pruning see the mean per epoch (docs/SEARCH.md, "Training seeds per trial")
    seeds_per_trial: int = 1
    # a trained trial whose result would enter the front (no completed trial has as few MACs and as low a
    # validation error) trains this many more runs, seeds of its own, before the study is told; it is told the
    # mean of all its runs (docs/SEARCH.md, "Rechecking front entrants")
    recheck_seeds: int = 0
    reference_point: tuple[float, float] = (1.0e6, 1.0)
    final_seeds: int = 3
    final_refit: bool = True  # the final test trains each member on train + validation (docs/SEARCH.md)
    storage: str = "sqlite:///runs/optuna.db"
    study_name: str | None = None
    diagnostics: bool = True  # the geometry diagnostics of every trained trial (docs/DIAGNOSTICS.md)

    def __post_init__(self) -> None:
        _choice(self.mode, MODES, "search.mode")
        _choice(self.sampler, SAMPLERS, "search.sampler")
        _choice(self.pruner, PRUNERS, "search.pruner")
        _check(self.n_trials >= 1, "search.n_trials", f"must be at least 1, but got {self.n_trials}")
        _check(self.n_startup_trials >= 0, "search.n_startup_trials", f"must be >= 0, but got {self.n_startup_trials}")
        _check(self.pruner_warmup_epochs >= 0, "search.pruner_warmup_epochs",
               f"must be >= 0, but got {self.pruner_warmup_epochs}")
        _check(self.lam >= 0, "search.lam", f"must be >= 0, but got {self.lam}")
        _check(self.scale > 0, "search.scale", f"must be positive, but got {self.scale}")
        _check(self.max_macs is None or self.max_macs > 0, "search.max_macs",
               f"must be positive (or null for no budget), but got {self.max_macs}")
        _check(len(self.reference_point) == 2 and all(v > 0 for v in self.reference_point),
               "search.reference_point", f"must be [max_macs, max_val_error], both positive, but got "
               f"{list(self.reference_point)}")
        _check(self.seeds_per_trial >= 1, "search.seeds_per_trial",
               f"must be at least 1, but got {self.seeds_per_trial}")
        _check(self.recheck_seeds >= 0, "search.recheck_seeds", f"must be >= 0, but got {self.recheck_seeds}")
        _check(self.final_seeds >= 0, "search.final_seeds", f"must be >= 0, but got {self.final_seeds}")
        _check(bool(self.storage), "search.storage", "must be a storage URL such as sqlite:///runs/optuna.db")
        scheme = self.storage.split(":", 1)[0]
        _check(scheme == "journal+postgresql" or scheme.split("+", 1)[0] in ("sqlite", "postgresql", "mysql"),
               "search.storage", f"must be a sqlite://, postgresql://, journal+postgresql:// or mysql:// URL, but got "
               f"{mask_secrets(self.storage)!r}")


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow writes: a tracking URI (SQLite store or a server) and the artifact location."""

    uri: str = "sqlite:///runs/mlflow.db"
    artifact_location: str | None = "runs/artifacts"
    experiment: str | None = None
    flush_timeout: float = 120.0
    writers: int = 4  # MLflow writer threads (each run's writes stay in order on one); nas.tracking.WRITERS
    process: bool = False  # true: the writers run in a process of their own, off the driver's GIL (nas/tracking_process.py)

    def __post_init__(self) -> None:
        _check(self.flush_timeout >= 0, "tracking.flush_timeout", f"must be >= 0, but got {self.flush_timeout}")
        _check(1 <= self.writers <= 64, "tracking.writers", f"must be between 1 and 64, but got {self.writers}")


@dataclass(frozen=True)
class RayConfig:
    """Where trials run: a local Ray started by the service, or an existing cluster by address."""

    address: str | None = None
    parallelism: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_retries: int = 2

    def __post_init__(self) -> None:
        _check(self.parallelism is None or self.parallelism >= 1, "ray.parallelism",
               f"must be at least 1 (or null for one trial per CPU), but got {self.parallelism}")
        _check(self.cpus_per_trial > 0, "ray.cpus_per_trial", f"must be positive, but got {self.cpus_per_trial}")
        _check(self.gpus_per_trial >= 0, "ray.gpus_per_trial", f"must be >= 0, but got {self.gpus_per_trial}")
        _check(self.max_retries >= 0, "ray.max_retries", f"must be >= 0, but got {self.max_retries}")


@dataclass(frozen=True)
class Config:
    """One experiment: dataset x space x training x search x tracking x resources."""

    name: str = "search"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    space: Mapping[str, Any] = field(default_factory=lambda: {"name": "cnn"})
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        _check(bool(re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name)), "name",
               f"must be letters, digits, '_', '.' or '-', but got {self.name!r}")
        _check(self.seed >= 0, "seed", f"must be >= 0, but got {self.seed}")

    @property
    def study_name(self) -> str:
        return self.search.study_name or self.name

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name


# ---------------------------------------------------------------------------------------------------------
# Generic construction of the dataclasses above from plain data, with key paths in every error.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path} must not be null")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping, but got {type(value).__name__} {value!r}")
        return _build(tp, value, path)
    if tp is typing.Any or origin in (Mapping, collections.abc.Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path} must be a mapping, but got {type(value).__name__} {value!r}")
        return dict(value)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} must be a list, but got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path} must be a list of {len(args)} values, but got {list(value)}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if value is None:
        raise ConfigError(f"{path} must be a {_type_name(tp)}, but got null")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, but got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path} must be an integer, but got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e6 (no dot) as a string; accept numeric strings for floats.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{path} must be a number, but got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, but got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {tp!r}")  # a programming error, kept loud


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            path = f"{prefix}.{key}" if prefix else str(key)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{path}'{hint}; allowed keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            path = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:  # a dataclass of another package validates itself with ValueError
        raise ConfigError(str(exc)) from None


def _validate_space(space: Mapping[str, Any]) -> None:
    from search_spaces import get_space  # the space validates its own keys and values

    params = dict(space)
    name = params.pop("name", None)
    if not isinstance(name, str):
        raise ConfigError(f"space.name must name a registered space, but got {name!r}")
    try:
        get_space(name, **params)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("space") else f"space: {message}") from exc


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate plain data (a parsed YAML document) into a `Config`.

    Raises:
        ConfigError: naming the key path of the first unknown key, wrong type or impossible value.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping at the top level, but got {type(data).__name__}")
    data = dict(data)
    data.pop("base", None)
    config = _build(Config, data, "")
    _validate_space(config.space)
    return config


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and key != "space":
            merged[key] = _merge(merged[key], value)
        elif key == "space" and isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) \
                and value.get("name", merged[key].get("name")) == merged[key].get("name"):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config base chain loops at {path}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"base in {path} must be a path to a config file, but got {base!r}")
    return _merge(_load_raw(path.parent / base, seen + (path,)), data)


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``key.path=value`` override (value parsed as YAML) to raw config data.

    Raises:
        ConfigError: if the assignment has no '=' or an empty key.
    """
    if "=" not in assignment:
        raise ConfigError(f"--set expects key.path=value, but got {assignment!r}")
    key_path, raw = assignment.split("=", 1)
    keys = [k for k in key_path.strip().split(".")]
    if not key_path.strip() or any(not k for k in keys):
        raise ConfigError(f"--set has an empty key in {assignment!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    result = dict(data)
    node = result
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = {}
        elif not isinstance(child, Mapping):
            raise ConfigError(f"--set {key_path}: {'.'.join(keys[:i + 1])} is not a mapping")
        node[key] = dict(child)
        node = node[key]
    node[keys[-1]] = value
    return result


def load_config(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = (),
                override_files: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (and its ``base`` chain), apply override files then ``--set`` overrides, validate.

    Raises:
        ConfigError: a missing file, invalid YAML, or any invalid key or value (named by its path).
    """
    data = _load_raw(Path(path))
    for extra in override_files:
        data = _merge(data, _load_raw(Path(extra)))
    for assignment in overrides:
        data = apply_override(data, assignment)
    return config_from_dict(data)


def config_to_dict(config: Config) -> dict[str, Any]:
    """The resolved config as plain data (YAML-safe: tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings to dotted keys (``search.lam``), lists rendered as comma-joined text."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, path))
        elif isinstance(value, (list, tuple)):
            flat[path] = ",".join(str(v) for v in value)
        else:
            flat[path] = value
    return flat


_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?P<tail>@)")


def mask_secrets(text: str) -> str:
    """Hide the password of any URL in `text` (``postgresql://u:***@host/db``): never log secrets."""
    return _PASSWORD.sub(lambda m: f"{m.group('head')}***{m.group('tail')}", text)


_ENV = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, what: str) -> str:
    """Expand ``${NAME}`` from the environment (how secrets reach storage URLs without being in a config).

    Raises:
        ConfigError: if a named variable is not set.
    """

    def repl(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in os.environ:
            raise ConfigError(f"{what} refers to ${{{name}}}, but the environment variable {name} is not set")
        return os.environ[name]

    return _ENV.sub(repl, text)
