"""A tensor's value distribution as the range methods see it: histogram bins read as uniform mass.

Built from TensorStats: each occupied bin becomes [left, right) holding `mass` values spread
uniformly, with the outermost bins trimmed to the exact observed min and max, and the exact zeros
pulled out as a point mass at 0 (ReLU outputs are often half zeros, and zero is always exactly
representable, so it must not be charged rounding noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.passes.qdq.calibration.histogram import TensorStats


@dataclass
class Distribution:
    left: np.ndarray   # bin edges, sorted, bins do not overlap
    right: np.ndarray
    mass: np.ndarray   # float64 counts per bin (excluding exact zeros)
    zeros: float       # point mass at 0
    total: float       # mass.sum() + zeros

    @property
    def center(self) -> np.ndarray:
        return 0.5 * (self.left + self.right)

    @property
    def width(self) -> np.ndarray:
        return self.right - self.left

    def quantile(self, q: float) -> float:
        """Value below which a fraction q of the mass lies (linear inside a bin)."""
        target = min(max(q, 0.0), 1.0) * self.total
        # merge the zero point mass into the ordering: bins left of 0 come first
        split = int(np.searchsorted(self.left, 0.0, side="left"))
        masses = np.concatenate([self.mass[:split], [self.zeros], self.mass[split:]])
        lefts = np.concatenate([self.left[:split], [0.0], self.left[split:]])
        rights = np.concatenate([self.right[:split], [0.0], self.right[split:]])
        cum = np.cumsum(masses)
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, len(cum) - 1)
        before = cum[i] - masses[i]
        frac = 0.0 if masses[i] <= 0 else (target - before) / masses[i]
        return float(lefts[i] + (rights[i] - lefts[i]) * min(max(frac, 0.0), 1.0))

    def mean_square(self) -> float:
        """E[x^2] under the uniform-within-bin model."""
        a, b = self.left, self.right
        return float(np.sum(self.mass * (a * a + a * b + b * b) / 3.0) / self.total) if self.total else 0.0


def _counts_without_zeros(stats: TensorStats) -> tuple[np.ndarray, int]:
    """float64 bin counts with the exact zeros taken out of their bin, and that bin's index."""
    if stats.num_bins == 0 or stats.count == 0:
        raise ValueError(f"{stats.name}: no histogram")
    counts = stats.counts.astype(np.float64)
    zero_bin = -stats.offset  # the bin [0, w)
    counts[zero_bin] -= stats.zeros
    return counts, zero_bin


def signed(stats: TensorStats) -> Distribution:
    """The distribution of x."""
    counts, _zero_bin = _counts_without_zeros(stats)
    edges = stats.edges()
    occupied = np.flatnonzero(counts > 0)
    left = np.clip(edges[occupied], stats.min, stats.max)
    right = np.clip(edges[occupied + 1], stats.min, stats.max)
    return Distribution(left, right, counts[occupied], float(stats.zeros), float(stats.count))


def absolute(stats: TensorStats) -> Distribution:
    """The distribution of |x|: negative bins fold onto positive ones (the grid is symmetric about 0)."""
    counts, zero_bin = _counts_without_zeros(stats)
    folded = fold_abs(counts, zero_bin)
    amax = max(-stats.min, stats.max, 0.0)
    w = stats.width
    occupied = np.flatnonzero(folded > 0)
    left = np.minimum(occupied * w, amax)
    right = np.minimum((occupied + 1) * w, amax)
    # the innermost edge may sit below the smallest |x| when all values have one sign: keep it simple,
    # the uniform model over [k w, (k+1) w) is what the histogram knows.
    return Distribution(left.astype(np.float64), right.astype(np.float64), folded[occupied],
                        float(stats.zeros), float(stats.count))


def fold_abs(counts: np.ndarray, zero_bin: int) -> np.ndarray:
    """Counts of |x| per bin [k w, (k+1) w): positive bin zero_bin+k plus negative bin zero_bin-1-k."""
    positive = counts[zero_bin:]
    negative = counts[:zero_bin][::-1]
    size = max(len(positive), len(negative))
    folded = np.zeros(size, counts.dtype)
    folded[:len(positive)] += positive
    folded[:len(negative)] += negative
    return folded
