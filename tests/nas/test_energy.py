from __future__ import annotations

import math

import pytest

from nas.energy import FrontPoint, best_so_far, bound_excludes, dominating_trial, energy, hypervolume, pareto_front


def _p(n: int, macs: float, err: float) -> FrontPoint:
    return FrontPoint(trial_number=n, macs=macs, val_error=err)


def test_energy_adds_scaled_complexity():
    # F = E_CNN + λ·E_comp/scale (paper eq. 31)
    assert energy(0.5, 2e6, 0.1, 1e6) == pytest.approx(0.7)


def test_bound_excludes_only_when_complexity_term_reaches_best_f():
    # λ·E_comp/scale = 0.2 cannot beat a best F of 0.15, whatever the loss
    assert bound_excludes(2e6, 0.1, 1e6, best_f=0.15)
    # ... but could beat 0.25 with a small enough loss
    assert not bound_excludes(2e6, 0.1, 1e6, best_f=0.25)
    # no best F yet: nothing is excluded
    assert not bound_excludes(2e6, 0.1, 1e6, best_f=None)
    assert not bound_excludes(2e6, 0.1, 1e6, best_f=math.inf)


def test_pareto_front_keeps_non_dominated_points_sorted_by_macs():
    points = [_p(0, 100, 0.5), _p(1, 200, 0.3), _p(2, 150, 0.6), _p(3, 300, 0.3), _p(4, 50, 0.9), _p(5, 400, 0.1)]
    front = pareto_front(points)
    # 2 is dominated by 0 (cheaper and better), 3 by 1 (same error, cheaper)
    assert [p.trial_number for p in front] == [4, 0, 1, 5]


def test_pareto_front_of_duplicates_keeps_the_earliest_trial():
    front = pareto_front([_p(7, 100, 0.2), _p(3, 100, 0.2)])
    assert [p.trial_number for p in front] == [3]


def test_hypervolume_of_a_staircase_is_the_dominated_share_of_the_box():
    front = [_p(0, 0.25, 0.5), _p(1, 0.5, 0.25)]
    # box 1x1: [0.25,1]x[0.5,1] = 0.375, plus [0.5,1]x[0.25,0.5] = 0.125
    assert hypervolume(front, (1.0, 1.0)) == pytest.approx(0.5)
    # the same in raw units (MACs up to 1e6, error up to 1) normalises to the same share
    scaled = [_p(0, 0.25e6, 0.5), _p(1, 0.5e6, 0.25)]
    assert hypervolume(scaled, (1e6, 1.0)) == pytest.approx(0.5)


def test_hypervolume_ignores_points_outside_the_reference_box():
    assert hypervolume([_p(0, 2e6, 0.1)], (1e6, 1.0)) == 0.0
    assert hypervolume([], (1e6, 1.0)) == 0.0


def test_best_so_far_carries_the_lowest_error_over_unknown_values() -> None:
    assert best_so_far([0.5, None, 0.6, 0.3, float("nan"), 0.4]) == [0.5, 0.5, 0.5, 0.3, 0.3, 0.3]
    assert best_so_far([None, 0.2]) == [math.inf, 0.2]
    assert best_so_far([]) == []


def test_dominating_trial_projects_the_running_trial_with_the_best_improvement_seen_after_as_many_epochs() -> None:
    # final / after 2 epochs: 0.2 / 0.3 = 0.667, 0.1 / 0.1 = 1, 0.6 / 0.8 = 0.75 -> the best improvement is x0.667
    completed = [(0, 1000.0, [0.5, 0.3, 0.2]), (1, 5000.0, [0.4, 0.1]), (2, 200.0, [0.9, 0.8, 0.7, 0.6])]
    # 6,000 MACs, 0.3 after 2 epochs -> projected 0.2 > 0.1 (trial 1, the best with no more MACs)
    assert dominating_trial(completed, 6000.0, [0.5, 0.3]) == (1, 0.1)
    # 0.14 after 2 epochs -> projected 0.093: below trial 1's 0.1, so it may still join the front
    assert dominating_trial(completed, 6000.0, [0.2, 0.14]) is None
    # 1,000 MACs: only trials 0 (0.2) and 2 (0.6) cost no more; projected 0.4 * 0.667 = 0.267 > 0.2
    assert dominating_trial(completed, 1000.0, [0.5, 0.4]) == (0, 0.2)
    # after 4 epochs trials 0 and 1 have stopped: improvement 1 for them, 0.6 / 0.6 for trial 2 -> projected as is
    assert dominating_trial(completed, 1000.0, [0.5, 0.4, 0.3, 0.25]) == (0, 0.2)
    assert dominating_trial(completed, 1000.0, [0.5, 0.4, 0.3, 0.2]) is None  # equal is not above
    assert dominating_trial(completed, 150.0, [0.99]) is None  # cheaper than every completed trial
    assert dominating_trial(completed, 1000.0, []) is None
    assert dominating_trial([], 1000.0, [0.9]) is None
    assert dominating_trial(completed, 1000.0, [math.inf]) is None  # no error known yet
