"""The service's error classes: one base, named subclasses for each kind of user error."""

from __future__ import annotations

__all__ = ["GeonasError", "ConfigError", "DataError", "StudyInUseError"]


class GeonasError(Exception):
    """Base class of every error the service raises on purpose (the CLI turns them into exit code 2)."""


class ConfigError(GeonasError, ValueError):
    """A config key or value is wrong; the message names the key path."""


class DataError(GeonasError, ValueError):
    """A dataset cannot be used; the message names the file, array or value at fault."""


class StudyInUseError(GeonasError):
    """Another live driver holds the study."""
