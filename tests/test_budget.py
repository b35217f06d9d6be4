"""The shared budget search (onnxcomp.pipeline.budget) on synthetic candidates: no model needed.

A "model" here is the candidate itself and its drop is a known function of it, so each test can
say exactly which candidate must win and how many trials it takes.
"""

from __future__ import annotations

from onnxcomp.measure.compare import Fidelity
from onnxcomp.pipeline.budget import BudgetSearch


def fid(cosine_loss: float, accuracy_loss: float | None = None) -> Fidelity:
    if accuracy_loss is None:
        return Fidelity(1.0 - cosine_loss, 0.0, None, None, None)
    return Fidelity(1.0 - cosine_loss, 0.0, None, 1.0 - accuracy_loss, 1.0)


def units_search(losses: dict, max_drop: float, with_accuracy: bool = False):
    """Compressing unit u costs losses[u] = (1-cosine, accuracy loss); costs add up."""
    built = []

    def build(held_back):
        built.append(held_back)
        return held_back

    def measure(held_back):
        cos = sum(c for u, (c, _) in losses.items() if u not in held_back)
        acc = sum(a for u, (_, a) in losses.items() if u not in held_back)
        return fid(cos, acc if with_accuracy else None)

    return BudgetSearch("test", build, measure, max_drop), built


LOSSES = {"a": (0.5, 0.3), "b": (0.1, 0.1), "c": (0.3, 0.0), "d": (0.05, 0.0)}


def test_everything_compressed_when_it_fits():
    search, built = units_search(LOSSES, max_drop=1.0)
    result = search.hold_back(list(LOSSES))
    assert result.met and result.held_back == [] and result.trials == 1 == len(built)
    assert result.fidelity.drop == result.full.drop


def test_first_fit_holds_back_the_fewest_most_sensitive_units():
    search, _ = units_search(LOSSES, max_drop=0.2)
    result = search.hold_back(list(LOSSES))
    assert result.order == ["a", "c", "b", "d"]  # by 1-cosine alone, highest first
    assert result.held_back == ["a", "c"] and abs(result.fidelity.drop - 0.15) < 1e-12
    assert result.trials == 1 + 4 + 2  # all, each alone, then 1 and 2 held back
    assert [t.step for t in search.trials[-2:]] == [frozenset("a"), frozenset("ac")]


def test_bisection_then_retries_release_a_unit_the_ranking_misjudged():
    # ranked by 1-cosine, budget on accuracy: c looks sensitive but costs no accuracy
    search, _ = units_search(LOSSES, max_drop=0.05, with_accuracy=True)
    result = search.hold_back(list(LOSSES), search="bisect", retries=8)
    assert result.order == ["a", "c", "b", "d"]
    # bisection: 2 held back (drop 0.1) fails, 3 fits; retries (b, c, a) release c only
    assert result.held_back == ["a", "b"] and result.fidelity.drop == 0.0
    assert result.trials == 1 + 4 + 2 + 3
    chosen = [t for t in search.trials if t.step == frozenset(result.held_back)]
    assert chosen and all(search.fits(t.fidelity) for t in chosen)  # what is reported was measured


def test_nothing_fits_is_reported_not_raised():
    search, _ = units_search(LOSSES, max_drop=0.01)
    result = search.hold_back(list(LOSSES))
    assert not result.met and result.fidelity is None and result.order[-1] == "d"


def level_search(max_drop: float):
    """A level snaps down to a grid of 1/8 (None below the first step); drop = 4 * snapped^2."""
    built = []

    def candidate_at(level):
        snapped = int(level * 8) / 8
        return snapped or None

    def build(snapped):
        built.append(snapped)
        return snapped

    return BudgetSearch("test", build, lambda snapped: fid(4 * snapped ** 2), max_drop), candidate_at, built


def test_back_off_finds_the_largest_fitting_level_and_measures_each_candidate_once():
    search, candidate_at, built = level_search(max_drop=0.1)
    result = search.back_off(0.5, 6, candidate_at)
    assert result.met and result.candidate == 0.125 and 0.125 <= result.level < 0.25
    assert [t.step for t in result.trials][:3] == [0.5, 0.25, 0.125]
    assert len(result.trials) == 7 and sorted(built) == [0.125, 0.25, 0.5]  # repeats are looked up


def test_back_off_keeps_the_asked_level_when_it_fits_and_reports_failure():
    search, candidate_at, _ = level_search(max_drop=0.1)
    result = search.back_off(0.15, 6, candidate_at)
    assert result.met and result.level == 0.15 and len(result.trials) == 1
    search, candidate_at, _ = level_search(max_drop=0.01)
    result = search.back_off(0.2, 6, candidate_at)
    assert not result.met and result.candidate is None
    assert all(t.step >= 0.125 for t in result.trials)  # levels that compress nothing are never measured
