"""Training one candidate to a fixed point. Imports neither Ray nor MLflow.

The fixed point of training is judged every epoch by two residuals:

* the loss residual: the relative improvement of the best validation loss over the last ``patience``
  epochs, ``(best before the window - best in the window) / best before the window``;
* the update residual: the relative weight update of the epoch, ``||θ_t - θ_{t-1}|| / ||θ_{t-1}||``
  (Scellier & Bengio's dlogW).

With a constant step the update never vanishes (Adam's steps have a size of about ``lr`` whatever the
gradient), so a validation plateau alone cannot tell a fixed point from noise. The rule is therefore
"reduce on plateau, stop at a fixed point": when the loss residual falls below ``loss_tol`` and the update
residual is still above ``update_tol``, the learning rate is multiplied by ``lr_factor`` and the plateau
window starts again; when both residuals are below their tolerances, the run has reached a fixed point
and stops. ``max_epochs`` caps every run (then ``fixed_point_reached`` is false). The weights returned
are those of the best validation loss, and E_CNN is that loss.

Chance guard: a plateau at chance level is not a fixed point. A network whose best validation loss is
still within ``chance_tol`` of the chance loss (the cross-entropy of predicting the training class
frequencies, ``ln K`` for balanced classes) sits on the flat region of a saturated or badly scaled start,
where the gradient, and with it the update residual, is tiny for many epochs before the loss falls
(measured: a depth-4 sigmoid CNN on digits stays at 10% for ~45 epochs, then reaches 95%). There the rule
neither stops nor cuts the learning rate; only ``max_epochs`` (or the search's pruner) ends such a run.
``chance_tol = 0`` turns the guard off.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Generator, Protocol

import numpy as np
import torch
from torch import nn

from search_spaces import Architecture, build_model

__all__ = [
    "TrainConfig",
    "TrainData",
    "TrialResult",
    "TrainingDiverged",
    "chance_loss",
    "train_to_fixed_point",
    "fit",
    "drain_steps",
    "fit_steps",
    "fit_seeds_steps",
    "fit_runs_steps",
    "refit",
    "seeded_model",
    "evaluate",
    "resolve_device",
]

Report = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    """How a candidate is trained (the ``train:`` section of a config)."""

    optimizer: str = "adam"
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 60
    patience: int = 3
    loss_tol: float = 0.01
    update_tol: float = 0.01
    lr_factor: float = 0.3
    chance_tol: float = 0.05
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.optimizer in ("adam", "sgd"), "optimizer", f"must be one of ['adam', 'sgd'], but got {self.optimizer!r}"),
            (self.device in ("auto", "cpu", "cuda"), "device", f"must be one of ['auto', 'cpu', 'cuda'], but got {self.device!r}"),
            (self.lr > 0, "lr", f"must be positive, but got {self.lr}"),
            (0 <= self.momentum < 1, "momentum", f"must be in [0, 1), but got {self.momentum}"),
            (self.weight_decay >= 0, "weight_decay", f"must be >= 0, but got {self.weight_decay}"),
            (self.batch_size >= 1, "batch_size", f"must be at least 1, but got {self.batch_size}"),
            (self.max_epochs >= 1, "max_epochs", f"must be at least 1, but got {self.max_epochs}"),
            (self.patience >= 1, "patience", f"must be at least 1, but got {self.patience}"),
            (self.loss_tol >= 0, "loss_tol", f"must be >= 0, but got {self.loss_tol}"),
            (self.update_tol >= 0, "update_tol", f"must be >= 0, but got {self.update_tol}"),
            (0 < self.lr_factor < 1, "lr_factor", f"must be in (0, 1), but got {self.lr_factor}"),
            (0 <= self.chance_tol < 1, "chance_tol", f"must be in [0, 1), but got {self.chance_tol}"),
        ]
        for ok, key, message in checks:
            if not ok:
                raise ValueError(f"train.{key} {message}")


class TrainData(Protocol):
    """What the trainer reads of a dataset: train and validation splits (never the test split)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial fails with reason ``diverged``."""

    def __init__(self, message: str, epoch: int = 0) -> None:
        super().__init__(message)
        self.epoch = epoch

    @classmethod
    def at(cls, epoch: int, what: str, value: float) -> "TrainingDiverged":
        return cls(f"diverged: {what} is {value} at epoch {epoch}", epoch)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions cross process boundaries (Ray) by pickling their constructor arguments.
        return (type(self), (str(self), self.epoch))


@dataclass(frozen=True)
class TrialResult:
    """The outcome of one training run; E_CNN is ``val_loss``."""

    val_loss: float
    val_error: float
    train_loss: float
    epochs: int
    best_epoch: int
    fixed_point_reached: bool
    loss_residual: float
    update_residual: float
    final_lr: float
    wall_time: float
    seed: int
    device: str
    history: list[dict[str, float]] = field(default_factory=list)
    # when the result averages several training runs (`fit_seeds_steps`): each run's own outcome; else empty
    runs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA when a GPU is visible to this process, else the CPU.

    Raises:
        ValueError: if ``cuda`` is asked for and no GPU is visible.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device is 'cuda' but no CUDA device is visible to this worker")
    return torch.device(name)


def _param_vector(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]) if any(
        True for _ in model.parameters()) else torch.zeros(1)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and error rate of `model` on (x, y), in eval mode.

    Returns:
        (loss, error) with error the fraction of misclassified samples.
    """
    was_training = model.training
    model.eval()
    total_loss, wrong = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        total_loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        wrong += int((logits.argmax(dim=1) != target).sum())
    model.train(was_training)
    return total_loss / len(y), wrong / len(y)


def metrics_on_test_split(model: nn.Module, data: TrainData) -> dict[str, float]:
    """The test loss and accuracy of `model` on `data`'s test split, evaluated once, on the model's device."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    test_loss, test_error = evaluate(model, torch.as_tensor(data.x_test, device=device),
                                     torch.as_tensor(data.y_test, device=device))
    return {"test_loss": test_loss, "test_accuracy": 1.0 - test_error}


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _loss_residual(val_losses: list[float], window_start: int, patience: int) -> float:
    """Relative improvement of the best validation loss over the last `patience` epochs (inf until known)."""
    if len(val_losses) - window_start <= patience:
        return math.inf
    before = min(val_losses[:-patience])
    recent = min(val_losses[-patience:])
    return (before - recent) / max(abs(before), 1e-12)


def chance_loss(y: np.ndarray, num_classes: int) -> float:
    """The cross-entropy of predicting the class frequencies of `y`: the loss of a network that learned nothing."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def train_to_fixed_point(
    arch: Architecture,
    data: TrainData,
    cfg: TrainConfig,
    report: Report | None = None,
    *,
    seed: int = 0,
) -> TrialResult:
    """Build `arch` for the data and train it to a fixed point of training (see the module docstring).

    Deterministic: the same arch, data, config and seed give the same numbers on the same machine.

    Args:
        arch: the architecture to train.
        data: train and validation splits (the test split is never read here).
        cfg: training settings.
        report: called as ``report(epoch, metrics)`` after every epoch (1-based epochs).
        seed: the trial's seed (derived from the study seed and the trial number by the caller).

    Returns:
        The `TrialResult`; E_CNN is its ``val_loss``.

    Raises:
        TrainingDiverged: when a training or validation loss becomes NaN or infinite.
        InfeasibleArchitecture: when `arch` cannot be built for the data's shape.
    """
    result, _ = fit(seeded_model(arch, data, seed), data, cfg, report, seed=seed)
    return result


def seeded_model(arch: Architecture, data: TrainData, seed: int) -> nn.Module:
    """Build `arch` for `data` with its initial weights drawn from `seed`."""
    torch.manual_seed(seed)
    return build_model(arch, tuple(data.x_train.shape[1:]), int(data.num_classes))


def fit(
    model: nn.Module,
    data: TrainData,
    cfg: TrainConfig,
    report: Report | None = None,
    *,
    seed: int = 0,
) -> tuple[TrialResult, nn.Module]:
    """Train `model` until a fixed point of training (see the module docstring) or ``cfg.max_epochs``.

    The caller builds the model after seeding (see `seeded_model`) so that the same trial gives
    the same numbers; this function seeds the batch order from `seed` too.

    Args:
        model: a freshly initialised network.
        data: train and validation splits (the test split is never read here).
        cfg: training settings.
        report: called as ``report(epoch, metrics)`` after every epoch (1-based epochs).
        seed: the trial's seed.

    Returns:
        The `TrialResult` and the model holding the weights of the best validation loss.

    Raises:
        TrainingDiverged: when a training or validation loss becomes NaN or infinite.
    """
    return drain_steps(fit_steps(model, data, cfg, seed=seed), report)


def drain_steps(steps: Generator[tuple[int, dict[str, float]], None, Any], report: Report | None = None) -> Any:
    """Run a `fit_steps` / `fit_seeds_steps` generator to its end, calling ``report(epoch, metrics)`` for each
    epoch; returns what the generator returns."""
    while True:
        try:
            epoch, metrics = next(steps)
        except StopIteration as done:
            return done.value
        if report is not None:
            report(epoch, metrics)


def _device_for(cfg: TrainConfig) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        # The determinism promise (same trial, same machine, same numbers) holds on a GPU only with cuDNN's
        # deterministic kernels and without its autotuner, which may pick different kernels per run.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return device


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int, order_rng: np.random.Generator, epoch: int, no_single_batch: bool = False) -> float:
    """One pass over (x, y) in an order drawn from `order_rng`; returns the mean training loss.

    `no_single_batch`: a last batch of one sample joins the batch before it (batch norm cannot train on one
    sample of a 1x1 map); the refit sets it, as its sample count is not the one the search's runs trained on.
    """
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    n = len(y)
    order = torch.as_tensor(order_rng.permutation(n), device=x.device)
    starts = list(range(0, n, batch_size))
    if no_single_batch and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    ends = starts[1:] + [n]
    running, seen = 0.0, 0
    for start, end in zip(starts, ends):
        idx = order[start:end]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        optimizer.step()
        running += float(loss.detach()) * len(idx)
        seen += len(idx)
    train_loss = running / seen
    if not math.isfinite(train_loss):
        raise TrainingDiverged.at(epoch, "the training loss", train_loss)
    return train_loss


def refit(model: nn.Module, data: TrainData, cfg: TrainConfig, lrs: list[float], *, seed: int = 0) -> nn.Module:
    """Train a fresh `model` on the training and validation splits together, replaying a run's schedule.

    The final evaluation of a chosen architecture (the usual protocol of architecture search): once the
    validation split has done its work (choosing the architecture, the learning-rate cuts and the epoch at
    which the run reached its fixed point), the network is trained again on all labelled data with that
    schedule, one epoch per entry of `lrs` (a run's per-epoch ``lr`` history), and the last weights are
    kept: with no validation split left, nothing else could choose them.

    Raises:
        ValueError: when `lrs` is empty.
        TrainingDiverged: when the training loss becomes NaN or infinite.
    """
    if not lrs:
        raise ValueError("refit needs the schedule of at least one epoch")
    device = _device_for(cfg)
    model = model.to(device)
    x = torch.as_tensor(np.concatenate([data.x_train, data.x_val]), device=device)
    y = torch.as_tensor(np.concatenate([data.y_train, data.y_val]), device=device)
    order_rng = np.random.default_rng(seed)
    optimizer = _optimizer(model, cfg)
    for epoch, lr in enumerate(lrs, start=1):
        for group in optimizer.param_groups:
            group["lr"] = lr
        _train_epoch(model, optimizer, x, y, cfg.batch_size, order_rng, epoch, no_single_batch=True)
    model.eval()
    return model


def fit_steps(
    model: nn.Module, data: TrainData, cfg: TrainConfig, *, seed: int = 0
) -> Generator[tuple[int, dict[str, float]], None, tuple[TrialResult, nn.Module]]:
    """`fit` as a generator: yields ``(epoch, metrics)`` after every epoch and returns ``(result, model)``.

    A generator lets a caller (the Ray adapter) stream the reports and stop the run between epochs
    without threads.
    """
    started = time.perf_counter()
    device = _device_for(cfg)
    model = model.to(device)
    x_train = torch.as_tensor(data.x_train, device=device)
    y_train = torch.as_tensor(data.y_train, device=device)
    x_val = torch.as_tensor(data.x_val, device=device)
    y_val = torch.as_tensor(data.y_val, device=device)
    order_rng = np.random.default_rng(seed)
    optimizer = _optimizer(model, cfg)
    # Below this best validation loss the network has left chance level (see the chance guard above).
    chance_bar = (1.0 - cfg.chance_tol) * chance_loss(data.y_train, int(data.num_classes)) if cfg.chance_tol else math.inf

    val_losses: list[float] = []
    history: list[dict[str, float]] = []
    best_loss, best_error, best_epoch = math.inf, 1.0, 0
    best_state: dict[str, torch.Tensor] | None = None
    window_start = 0
    lr = cfg.lr
    loss_residual = update_residual = math.inf
    fixed_point = False
    train_loss = math.nan
    epoch = 0
    for epoch in range(1, cfg.max_epochs + 1):
        before = _param_vector(model).clone()
        train_loss = _train_epoch(model, optimizer, x_train, y_train, cfg.batch_size, order_rng, epoch)
        val_loss, val_error = evaluate(model, x_val, y_val)
        if not math.isfinite(val_loss):
            raise TrainingDiverged.at(epoch, "the validation loss", val_loss)
        after = _param_vector(model)
        update_residual = float(torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before).clamp_min(1e-12))
        val_losses.append(val_loss)
        if val_loss < best_loss:
            best_loss, best_error, best_epoch = val_loss, val_error, epoch
            best_state = copy.deepcopy(model.state_dict())
        loss_residual = _loss_residual(val_losses, window_start, cfg.patience)
        metrics = {
            "train_loss": train_loss, "val_loss": val_loss, "val_error": val_error, "lr": lr,
            "loss_residual": loss_residual if math.isfinite(loss_residual) else math.nan,
            "update_residual": update_residual,
        }
        history.append({"epoch": epoch, **metrics})
        yield epoch, metrics
        if loss_residual < cfg.loss_tol and best_loss < chance_bar:
            if update_residual < cfg.update_tol:
                fixed_point = True
                break
            # A plateau while the weights still move by more than update_tol: shrink the step and look again.
            lr *= cfg.lr_factor
            for group in optimizer.param_groups:
                group["lr"] = lr
            window_start = len(val_losses)
    if best_state is not None:
        model.load_state_dict(best_state)
    result = TrialResult(
        val_loss=best_loss, val_error=best_error, train_loss=train_loss, epochs=epoch, best_epoch=best_epoch,
        fixed_point_reached=fixed_point,
        loss_residual=loss_residual if math.isfinite(loss_residual) else math.nan,
        update_residual=update_residual, final_lr=lr, wall_time=time.perf_counter() - started, seed=seed,
        device=str(device), history=history,
    )
    return result, model


def fit_seeds_steps(
    models: list[nn.Module], data: TrainData, cfg: TrainConfig, seeds: list[int]
) -> Generator[tuple[int, dict[str, float]], None, tuple[TrialResult, list[nn.Module]]]:
    """Several training runs of one architecture, one per seed, in lockstep; yields their mean metrics.

    One run's validation error is a noisy measure of an architecture: on a small validation split the training
    seed alone moves it by more than the difference between neighbouring architectures (docs/SEARCH_QUALITY.md).
    Each of `models` (the architecture built from the matching seed of `seeds`, see `seeded_model`) trains with
    `fit_steps` and that seed, one epoch of each in turn; after every epoch this yields ``(epoch, metrics)`` with
    the mean of the runs' metrics, plus ``seeds_training``, the number of runs that trained in that epoch. A run
    that has stopped (at its fixed point) holds its last metrics until the others stop too.

    Returns:
        ``(result, models)``, the models holding their best weights. The result's ``val_loss`` and
        ``val_error`` are the means of the runs' own (each at its best epoch), ``train_loss`` the mean of their
        last; ``epochs`` is the longest run's, ``fixed_point_reached`` whether every run reached its fixed point,
        the residuals the largest (unknown if one is); ``best_epoch``, ``final_lr`` and ``seed`` are the first
        run's; ``wall_time`` is the whole; ``history`` the yielded means; ``runs`` each run's own outcome.

    Raises:
        ValueError: when `models` is empty or its length is not that of `seeds`.
        TrainingDiverged: when a run diverges (its message names the run), which ends them all.
    """
    if not models or len(models) != len(seeds):
        raise ValueError(f"fit_seeds_steps needs one seed per model, but got {len(models)} models and "
                         f"{len(seeds)} seeds")
    started = time.perf_counter()
    k = len(models)
    runs = [fit_steps(model, data, cfg, seed=seed) for model, seed in zip(models, seeds)]
    last: list[dict[str, float]] = [{} for _ in runs]
    ended: list[tuple[TrialResult, nn.Module] | None] = [None] * k
    history: list[dict[str, float]] = []
    epoch = 0
    while True:
        training = 0
        for i, run in enumerate(runs):
            if ended[i] is not None:
                continue
            try:
                _, last[i] = next(run)
            except StopIteration as done:
                ended[i] = done.value
                continue
            except TrainingDiverged as exc:
                raise TrainingDiverged(f"{exc} (training run {i + 1} of {k}, seed {seeds[i]})", exc.epoch) from exc
            training += 1
        if not training:
            break
        epoch += 1
        metrics = {key: float(np.mean([m[key] for m in last])) for key in last[0]}
        metrics["seeds_training"] = float(training)
        history.append({"epoch": epoch, **metrics})
        yield epoch, metrics
    results = [r for r, _ in ended]  # type: ignore[misc]

    def largest(values: list[float]) -> float:
        return math.nan if any(math.isnan(v) for v in values) else max(values)

    first = results[0]
    result = TrialResult(
        val_loss=float(np.mean([r.val_loss for r in results])), val_error=float(np.mean([r.val_error for r in results])),
        train_loss=float(np.mean([r.train_loss for r in results])), epochs=max(r.epochs for r in results),
        best_epoch=first.best_epoch, fixed_point_reached=all(r.fixed_point_reached for r in results),
        loss_residual=largest([r.loss_residual for r in results]),
        update_residual=largest([r.update_residual for r in results]), final_lr=first.final_lr,
        wall_time=time.perf_counter() - started, seed=first.seed, device=first.device, history=history,
        runs=[{"seed": r.seed, "val_loss": r.val_loss, "val_error": r.val_error, "epochs": r.epochs,
               "best_epoch": r.best_epoch, "fixed_point_reached": r.fixed_point_reached} for r in results],
    )
    return result, [model for _, model in ended]  # type: ignore[misc]


def fit_runs_steps(
    models: list[nn.Module], data: TrainData, cfg: TrainConfig, seeds: list[int]
) -> Generator[tuple[int, dict[str, float]], None, tuple[TrialResult, list[nn.Module]]]:
    """The training of a trial: one run (`fit_steps`) for one seed, runs in lockstep (`fit_seeds_steps`) for more.

    The search's worker and `nas reproduce` both train a trial through this, so a reproduction takes the
    same path (and the same per-run result or mean) as the trial it reproduces.

    Returns:
        ``(result, models)``: the one run's result or the runs' mean, and every model with its best weights.

    Raises:
        ValueError: when `models` is empty or its length is not that of `seeds`.
    """
    if len(models) == 1 and len(seeds) == 1:
        result, model = yield from fit_steps(models[0], data, cfg, seed=seeds[0])
        return result, [model]
    return (yield from fit_seeds_steps(models, data, cfg, seeds))
