"""Architecture and SearchSpace base classes and the registry of spaces."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ._plan import NetworkPlan
    from ._trial import Trial

FlatValue = str | int | float | bool


@dataclasses.dataclass(frozen=True)
class Architecture(ABC):
    """A sampled structure θ: a frozen, hashable dataclass with a stable id and a JSON round trip.

    Subclasses are frozen dataclasses whose fields are scalars or tuples (hashable) and that
    validate themselves in ``__post_init__``; ``space_name`` ties each to its registered space.
    A field with a default is optional: ``to_dict`` leaves it out while it holds its default and
    ``from_dict`` fills it in when absent, so adding such a field keeps every stored id valid.
    """

    space_name: ClassVar[str]

    @abstractmethod
    def summary(self) -> str:
        """A short human-readable description, e.g. ``cnn d3 c[16,32,32] k3 relu bn stride gap``."""

    @abstractmethod
    def _plan(self, num_classes: int) -> NetworkPlan:
        """The layer plan that both ``build_model`` and ``layer_costs`` walk."""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-compatible dict ``{"space": name, field: value, ...}``, tuples as lists."""
        data: dict[str, Any] = {"space": self.space_name}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if _is_optional(field) and value == field.default:
                continue  # an optional field at its default: the canonical JSON (and id) predates it
            data[field.name] = list(value) if isinstance(value, tuple) else value
        return data

    def to_json(self) -> str:
        """Return the canonical JSON (sorted keys, no spaces) that ``arch_id`` hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def arch_id(self) -> str:
        """First 12 hex characters of the SHA-256 of the canonical JSON: stable across runs."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:12]

    def flat_params(self) -> dict[str, FlatValue]:
        """Return flat scalar parameters for MLflow: tuples joined by commas (``"16,32,32"``)."""
        flat: dict[str, FlatValue] = {}
        for key, value in self.to_dict().items():
            flat[key] = ",".join(str(item) for item in value) if isinstance(value, list) else value
        return flat

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Architecture:
        """Rebuild an architecture from ``to_dict`` output, dispatching on ``data["space"]``.

        Args:
            data: A mapping with ``"space"`` and exactly the architecture's fields.

        Returns:
            An instance of the architecture class of the registered space named by ``"space"``.

        Raises:
            ValueError: If the space is unknown or does not match ``cls``, a key is missing or
                unknown, or a value is invalid.
        """
        if not isinstance(data, Mapping) or "space" not in data:
            raise ValueError(f"an architecture dict needs a 'space' key, but got {data!r}")
        space = _space_class(data["space"])
        arch_type = space.architecture_type
        if cls is not Architecture and not issubclass(arch_type, cls):
            raise ValueError(
                f"{cls.__name__}.from_dict got an architecture of space {data['space']!r}"
            )
        expected = {field.name for field in dataclasses.fields(arch_type)}
        required = {field.name for field in dataclasses.fields(arch_type) if not _is_optional(field)}
        given = set(data) - {"space"}
        if not required <= given <= expected:
            problems = []
            if missing := sorted(required - given):
                problems.append(f"missing keys {', '.join(missing)}")
            if unknown := sorted(given - expected):
                problems.append(f"unknown keys {', '.join(map(str, unknown))}")
            raise ValueError(
                f"{arch_type.__name__}: {'; '.join(problems)} "
                f"(fields: {', '.join(sorted(expected))})"
            )
        return arch_type(**{key: data[key] for key in given})

    @classmethod
    def from_json(cls, text: str) -> Architecture:
        """Rebuild an architecture from ``to_json`` output (see ``from_dict``).

        Raises:
            ValueError: If the text is not JSON or not a valid architecture dict.
        """
        return cls.from_dict(json.loads(text))


def _is_optional(field: dataclasses.Field[Any]) -> bool:
    return field.default is not dataclasses.MISSING


class SearchSpace(ABC):
    """Declarative choices and ranges from which ``sample`` draws an Architecture.

    Subclasses validate their configuration in the constructor (keyword arguments are the keys
    under ``space:`` in a config) and set the class attributes ``name`` and ``architecture_type``.
    """

    name: ClassVar[str]
    architecture_type: ClassVar[type[Architecture]]

    @abstractmethod
    def sample(self, trial: Trial) -> Architecture:
        """Draw an architecture using only ``trial.suggest_int`` and ``trial.suggest_categorical``.

        Args:
            trial: An ``optuna.Trial`` or a ``RandomTrial``.

        Returns:
            The sampled architecture, in canonical form (one architecture per distinct model).
        """

    @classmethod
    def config_keys(cls) -> tuple[str, ...]:
        """The keys this space accepts in its configuration, in declaration order."""
        return tuple(inspect.signature(cls).parameters)


SPACES: dict[str, type[SearchSpace]] = {}
"""Registered search spaces by name; add entries with ``register_space`` (refuses duplicates)."""


def register_space(space: type[SearchSpace]) -> type[SearchSpace]:
    """Register a SearchSpace subclass under its ``name``; usable as a class decorator.

    Args:
        space: The class, with ``name`` and ``architecture_type`` set.

    Returns:
        ``space`` unchanged.

    Raises:
        ValueError: If the name is already registered or does not match the architecture's
            ``space_name``.
        TypeError: If ``space`` is not a SearchSpace subclass.
    """
    if not (isinstance(space, type) and issubclass(space, SearchSpace)):
        raise TypeError(f"register_space needs a SearchSpace subclass, but got {space!r}")
    name = space.name
    if name in SPACES:
        raise ValueError(f"space {name!r} is already registered ({SPACES[name].__name__})")
    if space.architecture_type.space_name != name:
        raise ValueError(
            f"space {name!r}: its architecture_type {space.architecture_type.__name__} has "
            f"space_name {space.architecture_type.space_name!r}"
        )
    SPACES[name] = space
    return space


def _space_class(name: object) -> type[SearchSpace]:
    if not isinstance(name, str) or name not in SPACES:
        raise ValueError(f"unknown space {name!r}; registered spaces: {', '.join(sorted(SPACES))}")
    return SPACES[name]


def get_space(name: str, /, **config: Any) -> SearchSpace:
    """Create the registered space ``name`` from its configuration.

    Args:
        name: A key of SPACES, e.g. ``"cnn"``.
        **config: The dict under ``space:`` in a config, without ``name``.

    Returns:
        The validated space.

    Raises:
        ValueError: If the name is not registered (listing registered names), a key is unknown
            (naming it and listing the allowed keys), or a value is invalid (naming key and value).
    """
    space = _space_class(name)
    allowed = space.config_keys()
    unknown = [key for key in config if key not in allowed]
    if unknown:
        raise ValueError(
            f"unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(f'space.{key}' for key in unknown)} for space {name!r}; "
            f"allowed keys: {', '.join(allowed)}"
        )
    return space(**config)
