"""Declarative search spaces, sampled architectures, and their models and analytic costs.

A space is data (choices and ranges); ``space.sample(trial)`` draws a frozen, hashable
Architecture; ``build_model`` turns it into a SegmentedNet and ``layer_costs`` into the network's
curve (per-layer MACs, parameters and output shapes) without running it.
"""

from ._activations import ACTIVATION_VARIANTS, ACTIVATIONS, INITIALIZERS, ActivationVariant
from ._base import SPACES, Architecture, SearchSpace, get_space, register_space
from ._build import build_model, layer_costs
from ._cnn import CNNArchitecture, CNNSpace
from ._costs import InfeasibleArchitecture, LayerCost, total_macs, total_params
from ._plan import ResidualBlock, SegmentedNet
from ._resnet import ResNetArchitecture, ResNetSpace
from ._trial import RandomTrial

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_VARIANTS",
    "ActivationVariant",
    "INITIALIZERS",
    "SPACES",
    "Architecture",
    "CNNArchitecture",
    "CNNSpace",
    "InfeasibleArchitecture",
    "LayerCost",
    "RandomTrial",
    "ResNetArchitecture",
    "ResNetSpace",
    "ResidualBlock",
    "SearchSpace",
    "SegmentedNet",
    "build_model",
    "get_space",
    "layer_costs",
    "register_space",
    "total_macs",
    "total_params",
]
