"""The budget search of lossy passes: the most compression whose measured drop fits max_drop.

Technique-free: a pass says what a candidate is and how to build one (a model with some layers
left float, some tensors left dense, a pruning plan at some ratio); `BudgetSearch` measures
candidates (each distinct one once), keeps every trial for the report and chooses. Two shapes:

- `hold_back(units)`: compress every unit; if that is over budget, rank the units by the drop
  each causes alone and leave the most sensitive ones uncompressed, as few as the budget allows.
- `hold_back_estimated(units, estimate)`: the same choice with the ranking and the count searched
  on a cheap stand-in for building (one gated session), and only its picks built and measured.
- `back_off(level)`: one compression level (a ratio); bisect between 0 and it for the largest
  level that fits.

Nothing is assumed that was not measured: the chosen candidate's figures are its own trial.
Trials are logged on the `onnxcomp` logger (debug) and the loops show a progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from onnxcomp.measure.compare import Fidelity, fidelity, labels_of, outputs_of
from onnxcomp.progress import bar, logger


def drop_measure(reference_model, data) -> Callable[[Any], Fidelity]:
    """Fidelity of a model against `reference_model` on `data` (Samples: each call at the model's
    own batch size; or a stacked dict; labels used when present); the reference runs once, here,
    not once per trial. On padded sequence data the outputs are compared at the real tokens only
    (onnxcomp.measure.padding): the drop a budget holds is the one the validation reports there."""
    from onnxcomp.measure.padding import real_positions_only

    real = real_positions_only(reference_model, data)
    reference = real(outputs_of(reference_model, data))
    labels = labels_of(data)
    return lambda model: fidelity(reference, real(outputs_of(model, data)), labels)


def one_minus_cosine(fid: Fidelity) -> float:
    return 1.0 - fid.cosine


@dataclass
class Trial:
    step: Any  # what was varied: the held-back units, or the level
    fidelity: Fidelity

    @property
    def drop(self) -> float:
        return self.fidelity.drop


@dataclass
class HoldBack:
    """What `hold_back` chose. `fidelity` is None when no candidate met the budget."""

    held_back: list  # units left uncompressed, most sensitive first ([] when everything fits, all when nothing does)
    fidelity: Fidelity | None
    full: Fidelity  # every unit compressed
    alone: dict = field(default_factory=dict)  # unit -> fidelity with only that unit compressed
    order: list = field(default_factory=list)  # units, most sensitive first (empty when everything fits)
    trials: int = 0
    estimates: int = 0  # runs of a stand-in (hold_back_estimated), besides the trials built and measured

    @property
    def met(self) -> bool:
        return self.fidelity is not None


@dataclass
class BackOff:
    """What `back_off` chose. `candidate` and `fidelity` are None when no level met the budget."""

    level: float  # the level used: the one asked for when it fits, else the bisection's lower end
    candidate: Any
    fidelity: Fidelity | None
    trials: list[Trial]

    @property
    def met(self) -> bool:
        return self.fidelity is not None


class BudgetSearch:
    """Measure candidates against max_drop: build(candidate) -> ModelProto, measure(model) -> Fidelity.

    `key(candidate)` identifies candidates that build the same model (default: the candidate
    itself, which must then be hashable); a repeated candidate counts as a trial but is not re-run.
    """

    def __init__(self, name: str, build: Callable[[Any], Any], measure: Callable[[Any], Fidelity],
                 max_drop: float, key: Callable[[Any], Hashable] | None = None):
        self.name = name
        self.build = build
        self.measure = measure
        self.max_drop = max_drop
        self.key = key or (lambda candidate: candidate)
        self.trials: list[Trial] = []
        self._seen: dict = {}

    def fits(self, fid: Fidelity) -> bool:
        return fid.drop <= self.max_drop

    def trial(self, candidate, label: str, step=None) -> Fidelity:
        """The fidelity of one candidate (built and measured unless seen before), logged and recorded
        with `step` (default: the candidate)."""
        key = self.key(candidate)
        if key not in self._seen:
            self._seen[key] = self.measure(self.build(candidate))
        fid = self._seen[key]
        self.trials.append(Trial(candidate if step is None else step, fid))
        logger.debug("%s: %s: drop %.4g, 1-cos %.2e (max_drop %g)", self.name, label, fid.drop,
                     1.0 - fid.cosine, self.max_drop)
        return fid

    def hold_back(self, units: list, rank: Callable[[Fidelity], Any] = one_minus_cosine,
                  search: Literal["first-fit", "bisect"] = "first-fit", retries: int = 0) -> HoldBack:
        """Which units to leave uncompressed; candidates are frozensets of held-back units.

        The units are ranked by `rank` of their own trial (only that unit compressed), highest =
        most sensitive. `first-fit` tries holding back 1, 2, ... of the most sensitive and takes the
        first count that fits (no assumption about the drop, up to n trials); `bisect` finds that
        count in about log2(n) trials, assuming more held back never drops more, then tries to
        compress again up to `retries` held-back units, least sensitive first. At least one unit
        stays compressed: a candidate with everything held back is not compression.
        """
        everything = frozenset(units)
        full = self.trial(frozenset(), f"all {len(units)} compressed")
        logger.info("%s: all %d compressed: drop %.4f (max_drop %g)", self.name, len(units), full.drop,
                    self.max_drop)
        if self.fits(full):
            return HoldBack([], full, full, trials=len(self.trials))
        alone = {}
        for unit in bar(units, desc=f"{self.name}: sensitivity", total=len(units)):
            alone[unit] = self.trial(everything - {unit}, f"only {unit} compressed")
        order = sorted(units, key=lambda u: rank(alone[u]), reverse=True)
        head = ", ".join(f"{u} (drop {alone[u].drop:.2e})" for u in order[:5])
        logger.debug("%s: most sensitive: %s%s", self.name, head, " ..." if len(order) > 5 else "")

        def tried(held: list) -> Fidelity:
            return self.trial(frozenset(held), f"{len(held)} held back")

        count, best = _smallest_count(tried, order, self.fits, search, self.name)
        if best is None:
            return HoldBack(list(order), None, full, alone, order, len(self.trials))
        held = list(order[:count])
        for unit in bar(sorted(held, key=lambda u: rank(alone[u]))[:retries], desc=f"{self.name}: retries"):
            fid = tried([u for u in held if u != unit])
            if self.fits(fid):
                held.remove(unit)
                best = fid
        logger.info("%s: %d of %d held back: drop %.4f within %g", self.name, len(held), len(units), best.drop,
                    self.max_drop)
        return HoldBack(held, best, full, alone, order, len(self.trials))

    def hold_back_estimated(self, units: list, estimate: Callable[[list], Fidelity],
                            estimate_alone: Callable[[list], Fidelity] | None = None,
                            rank: Callable[[Fidelity], Any] = one_minus_cosine, checks: int = 4) -> HoldBack:
        """`hold_back` when building a candidate costs far more than `estimate(compressed units)`.

        The units are ranked by `estimate_alone([unit])` (default `estimate`), and the smallest count of
        the most sensitive held back that fits on the estimate is bisected; only that candidate is
        built and measured. Where the two disagree, the budget the estimate is held to is rescaled by
        the last built candidate's measured / estimated drop and the count searched again, between the
        largest count measured over budget and the smallest measured within it, up to `checks` builds.
        What those leave open (between the two counts; from n - 1 held back when none fit) is settled
        on built models, one fewer than the smallest fit first, then by bisection, assuming more held
        back never drops more. So the answer is always a measured
        trial, the fewest the built models allow under that assumption, and with an estimate that
        tracks the model a handful of models are built instead of about n.
        """
        full = self.trial(frozenset(), f"all {len(units)} compressed")
        logger.info("%s: all %d compressed: drop %.4f (max_drop %g)", self.name, len(units), full.drop,
                    self.max_drop)
        if self.fits(full):
            return HoldBack([], full, full, trials=len(self.trials))
        first = estimate_alone or estimate
        alone = {u: first([u]) for u in bar(units, desc=f"{self.name}: sensitivity (estimated)", total=len(units))}
        order = sorted(units, key=lambda u: rank(alone[u]), reverse=True)
        n, estimated = len(order), {}

        def guess(count: int) -> Fidelity:
            if count not in estimated:
                estimated[count] = estimate(order[count:])
            return estimated[count]

        def built(count: int) -> Fidelity:
            return self.trial(frozenset(order[:count]), f"{count} held back")

        over, within, target = 0, None, self.max_drop  # counts measured over / within budget (count, fidelity)
        for _ in range(checks):
            top = within[0] if within else n
            lo, hi = over + 1, top  # the smallest count in [lo, top) whose estimate fits target; top: none
            while lo < hi:
                mid = (lo + hi) // 2
                if guess(mid).drop <= target:
                    hi = mid
                else:
                    lo = mid + 1
            count = min(hi, n - 1)
            if count <= over or (within and count >= within[0]):
                break  # the estimate has nothing between what was measured
            fid = built(count)
            logger.debug("%s: %d held back: estimated drop %.4g (target %.4g), measured %.4g", self.name, count,
                         guess(count).drop, target, fid.drop)
            if self.fits(fid):
                within = (count, fid)
            else:
                over = count
            if within and within[0] == over + 1:
                break
            ratio = guess(count).drop / fid.drop if fid.drop > 0 and guess(count).drop > 0 else 1.0
            target = self.max_drop * min(max(ratio, 1e-3), 1e3)
        if within is None:  # the estimate misled every check: the last resort, then bisect on built models
            last = built(n - 1) if n - 1 > over else None
            if last is None or not self.fits(last):
                return HoldBack(list(order), None, full, alone, order, len(self.trials), n + len(estimated))
            within = (n - 1, last)
        lo = over + 1  # counts the checks left open, between over and within budget: on built models,
        below = True  # one fewer first (where the estimate puts the edge), then bisection
        while lo < within[0]:
            mid, below = within[0] - 1 if below else (lo + within[0]) // 2, False
            fid = built(mid)
            if self.fits(fid):
                within = (mid, fid)
            else:
                lo = mid + 1
        count, fid = within
        logger.info("%s: %d of %d held back: drop %.4f within %g (%d built, %d estimated)", self.name, count, n,
                    fid.drop, self.max_drop, len(self.trials), n + len(estimated))
        return HoldBack(list(order[:count]), fid, full, alone, order, len(self.trials), n + len(estimated))

    def back_off(self, level: float, steps: int, candidate_at: Callable[[float], Any]) -> BackOff:
        """The largest level in (0, level] that fits: `level` itself, else `steps` bisections of (0, level).

        candidate_at(level) -> the candidate at that level, or None when it compresses nothing
        (not measured; such a level counts as low enough).
        """
        first = candidate_at(level)
        trials_before = len(self.trials)
        fid = self.trial(first, f"level {level:.3f}", step=level)
        if self.fits(fid):
            return BackOff(level, first, fid, self.trials[trials_before:])
        lo, hi, best = 0.0, level, None
        for _ in bar(range(steps), desc=f"{self.name}: backing off", total=steps):
            mid = (lo + hi) / 2
            candidate = candidate_at(mid)
            if candidate is None:
                lo = mid
                continue
            fid = self.trial(candidate, f"level {mid:.3f}", step=mid)
            if self.fits(fid):
                lo, best = mid, (candidate, fid)
            else:
                hi = mid
        found = self.trials[trials_before:]
        if best is None:
            return BackOff(lo, None, None, found)
        logger.info("%s: level %.3f fits: drop %.4f within %g", self.name, lo, best[1].drop, self.max_drop)
        return BackOff(lo, best[0], best[1], found)


def _smallest_count(tried: Callable[[list], Fidelity], order: list, fits, search: str, name: str):
    """(k, fidelity) for the smallest k in [1, n-1] whose candidate order[:k] fits, or (n, None)."""
    n = len(order)
    if search == "first-fit":
        for k in bar(range(1, n), desc=f"{name}: budget", total=max(n - 1, 0)):
            fid = tried(order[:k])
            if fits(fid):
                return k, fid
        return n, None
    lo, hi, best = 1, n, None
    for _ in bar(range((n - 1).bit_length()), desc=f"{name}: budget"):  # the interval halves each step
        if lo >= hi:
            break
        mid = (lo + hi) // 2
        fid = tried(order[:mid])
        if fits(fid):
            hi, best = mid, fid
        else:
            lo = mid + 1
    return hi, best
