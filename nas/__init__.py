"""geonas: geometry-guided architecture search (the service: config, energy, search loop, tracking, CLI)."""

from nas.config import Config, config_from_dict, load_config
from nas.data import Dataset, load_dataset
from nas.energy import FrontPoint, energy, hypervolume, pareto_front
from nas.errors import ConfigError, DataError, GeonasError
from nas.search import SearchOutcome, run_search

__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "Dataset",
    "FrontPoint",
    "GeonasError",
    "SearchOutcome",
    "config_from_dict",
    "energy",
    "hypervolume",
    "load_config",
    "load_dataset",
    "pareto_front",
    "run_search",
]
