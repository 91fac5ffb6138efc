"""The energy of a structure (paper eq. 31) and the minimal-complexity front.

    F(θ) = E_CNN(θ, s*) + λ · E_comp(θ) / scale

E_CNN is the validation loss at the fixed point of training, E_comp the curve's length in MACs.
The front is the Pareto set of (E_comp, validation error): the least compute for each error level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

__all__ = ["energy", "complexity_term", "bound_excludes", "FrontPoint", "pareto_front", "hypervolume",
           "best_so_far", "dominating_trial"]


def complexity_term(e_comp: float, lam: float, scale: float) -> float:
    """λ · E_comp / scale: the part of F known before any training."""
    return lam * e_comp / scale


def energy(e_cnn: float, e_comp: float, lam: float, scale: float) -> float:
    """F = E_CNN + λ · E_comp / scale (paper eq. 31)."""
    return e_cnn + complexity_term(e_comp, lam, scale)


def bound_excludes(e_comp: float, lam: float, scale: float, best_f: float | None) -> bool:
    """True when the candidate cannot beat `best_f` whatever its training gives.

    E_CNN (a cross-entropy) is never negative, so F >= λ·E_comp/scale; a candidate whose complexity term
    alone reaches the best F so far is never worth training.
    """
    return best_f is not None and math.isfinite(best_f) and complexity_term(e_comp, lam, scale) >= best_f


@dataclass(frozen=True)
class FrontPoint:
    """One completed trial as a point of the (E_comp, validation error) plane."""

    trial_number: int
    macs: float
    val_error: float
    params: int = 0
    arch_id: str = ""
    summary: str = ""
    extra: dict[str, Any] | None = None


def pareto_front(points: Iterable[FrontPoint]) -> list[FrontPoint]:
    """The points not dominated in (macs, val_error), both minimized, sorted by increasing MACs.

    A point is dominated when another is no worse in both and better in one. Of exact duplicates the
    earliest trial is kept.
    """
    ordered = sorted(points, key=lambda p: (p.macs, p.val_error, p.trial_number))
    front: list[FrontPoint] = []
    best_error = math.inf
    for point in ordered:
        # Sorted by MACs, a point is on the front iff its error is below every cheaper point's error.
        if point.val_error < best_error:
            front.append(point)
            best_error = point.val_error
    return front


def hypervolume(front: Sequence[FrontPoint], reference: tuple[float, float]) -> float:
    """The share of the reference box [0, ref_macs] x [0, ref_error] that the front dominates (0..1).

    Normalising by the box makes runs with the same reference point comparable; points outside the box
    add nothing.
    """
    ref_macs, ref_error = reference
    inside = sorted((p for p in front if p.macs < ref_macs and p.val_error < ref_error), key=lambda p: p.macs)
    area = 0.0
    previous_error = ref_error
    for point in inside:
        if point.val_error < previous_error:
            area += (ref_macs - point.macs) * (previous_error - point.val_error)
            previous_error = point.val_error
    return area / (ref_macs * ref_error)


def best_so_far(errors: Iterable[float | None]) -> list[float]:
    """The lowest validation error after each epoch (unknown values carry the previous best; inf before any)."""
    out: list[float] = []
    best = math.inf
    for error in errors:
        if error is not None and math.isfinite(error):
            best = min(best, error)
        out.append(best)
    return out


def dominating_trial(completed: Iterable[tuple[int, float, Sequence[float]]], macs: float, errors: Sequence[float],
                     ) -> tuple[int, float] | None:
    """A completed trial that a running one will not overtake, or None (the dominance pruner).

    The running trial has `macs` and its `best_so_far` validation errors after each of its epochs so far (t of
    them). Each completed trial ``(number, macs, best_so_far errors)`` says how much a run still improved after
    t epochs: its final best error over its best error after t epochs (its last value if it stopped earlier).
    The running trial is projected with the largest such improvement seen (an optimistic guess: no completed
    run did better); if even that projection stays above the final error of a completed trial that costs no
    more MACs, the running trial will not join the front there, and that trial is returned. A trial cheaper
    than every completed one is never dominated, so the cheap end of the front is never pruned.

    Returns:
        (number, final error) of the best completed trial with no more MACs (ties: the cheaper, then the
        lower number), when it dominates the projection.
    """
    if not errors or not math.isfinite(errors[-1]):
        return None
    epoch, error = len(errors), errors[-1]
    completed = [(number, other_macs, other) for number, other_macs, other in completed if other]
    ratios = [other[-1] / other[min(epoch, len(other)) - 1] for _, _, other in completed
              if math.isfinite(other[min(epoch, len(other)) - 1]) and other[min(epoch, len(other)) - 1] > 0]
    if not ratios:
        return None
    projected = error * min(ratios)
    cheaper = [(other[-1], other_macs, number) for number, other_macs, other in completed if other_macs <= macs]
    if not cheaper:
        return None
    best_error, _, number = min(cheaper)
    return (number, best_error) if projected > best_error else None
