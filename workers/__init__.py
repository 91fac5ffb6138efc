"""Training of candidates: the Ray-free trainer, and `workers.ray_adapter`, the one module importing Ray."""

from workers._diagnostics import diagnose
from workers._trainer import (
    TrainConfig,
    TrainData,
    TrainingDiverged,
    TrialResult,
    chance_loss,
    drain_steps,
    evaluate,
    fit,
    fit_runs_steps,
    fit_seeds_steps,
    fit_steps,
    metrics_on_test_split,
    refit,
    resolve_device,
    seeded_model,
    train_to_fixed_point,
)

__all__ = [
    "TrainConfig",
    "TrainData",
    "TrainingDiverged",
    "TrialResult",
    "chance_loss",
    "diagnose",
    "drain_steps",
    "evaluate",
    "fit",
    "fit_runs_steps",
    "fit_seeds_steps",
    "fit_steps",
    "metrics_on_test_split",
    "refit",
    "resolve_device",
    "seeded_model",
    "train_to_fixed_point",
]
