"""Running statistics of one tensor: min/max, counts, and a histogram that merges exactly.

The histogram lives on a grid anchored at zero whose bin width is a power of two, `2**exponent`.
Bin `j` covers `[(offset + j) * w, (offset + j + 1) * w)`; the grid always spans zero, so
`offset <= 0`. When the observed range outgrows `num_bins` bins the width doubles (or more) and
neighbouring bins are summed: because edges sit on a power-of-two grid, a value's bin at the
coarser width is its fine bin index shifted right, so coarsening is exact. The width is always the
smallest power of two that fits the data seen so far, which depends only on the data's min and max,
never on arrival order: collecting in any order, in any split, then merging gives identical counts.

Values that are NaN, infinite, or of magnitude >= `EXTREME` (attention masks add -3.4e38) are
counted as outliers and kept out of min/max and the histogram, so one mask value cannot stretch
the range over 38 orders of magnitude. `raw_min`/`raw_max` still record them.
"""

from __future__ import annotations

import math

import numpy as np

EXTREME = 1e30
_EMPTY = -(2**31)  # exponent of a histogram that has not seen a finite value yet
_MIN_EXPONENT = -100  # bins narrower than 2**-100 buy nothing, and 2**100 still fits float32
# Values binned per pass: the work buffers (and bincount's own int64 copy) then stay in the core's
# L2 cache instead of streaming a whole activation through memory once per step; np.bincount over a
# multi-megabyte array measured several times slower per element than over 32k-element pieces.
CHUNK = 32768


class TensorStats:
    """Streaming statistics of one tensor's values (see the module docstring for the grid)."""

    __slots__ = ("name", "num_bins", "count", "zeros", "outliers", "nans", "min", "max",
                 "raw_min", "raw_max", "exponent", "offset", "counts")

    def __init__(self, name: str, num_bins: int = 2048):
        if num_bins < 0 or (num_bins and num_bins < 16):
            raise ValueError(f"num_bins must be 0 (min/max only) or at least 16, got {num_bins}")
        self.name = name
        self.num_bins = int(num_bins)
        self.count = 0          # finite, non-extreme values folded in
        self.zeros = 0          # of which exactly zero (representable without error)
        self.outliers = 0       # NaN, +-inf and |x| >= EXTREME, excluded from everything below
        self.nans = 0
        self.min = math.inf     # over the kept values
        self.max = -math.inf
        self.raw_min = math.inf  # over every non-NaN value, outliers included
        self.raw_max = -math.inf
        self.exponent = _EMPTY
        self.offset = 0
        self.counts = np.zeros(self.num_bins, np.int64)

    # -- folding data in ---------------------------------------------------------------------

    def update(self, values: np.ndarray, scratch: Scratch | None = None) -> None:
        """Fold a batch of values in; the batch itself is not kept."""
        x = np.asarray(values)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        x = x.reshape(-1)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (-EXTREME < lo and hi < EXTREME):  # also true for NaN
            x, lo, hi = self._drop_outliers(x)
            if x.size == 0:
                return
        scratch = scratch or Scratch()
        self.raw_min, self.raw_max = min(self.raw_min, lo), max(self.raw_max, hi)
        self.count += x.size
        self._extend(lo, hi)
        if self.num_bins:
            for start in range(0, x.size, CHUNK):
                self._bin(x[start:start + CHUNK], scratch)

    def _drop_outliers(self, x: np.ndarray):
        nans = int(np.count_nonzero(np.isnan(x)))
        if nans < x.size:
            self.raw_min = min(self.raw_min, float(np.fmin.reduce(x)))
            self.raw_max = max(self.raw_max, float(np.fmax.reduce(x)))
        keep = np.abs(x) < EXTREME  # False for NaN
        kept = x[keep]
        self.outliers += x.size - kept.size
        self.nans += nans
        if kept.size == 0:
            return kept, math.inf, -math.inf
        return kept, float(kept.min()), float(kept.max())

    def _extend(self, lo: float, hi: float) -> None:
        new_min, new_max = min(self.min, lo), max(self.max, hi)
        if self.num_bins:
            exponent = max(self.exponent, fitting_exponent(new_min, new_max, self.num_bins))
            offset = math.floor(math.ldexp(min(new_min, 0.0), -exponent))
            self._regrid(exponent, offset)
        self.min, self.max = new_min, new_max

    def _regrid(self, exponent: int, offset: int) -> None:
        """Move the counts to a coarser (or shifted) grid; exact, see the module docstring."""
        if exponent == self.exponent and offset == self.offset:
            return
        if self.exponent != _EMPTY and self.counts.any():
            used = np.flatnonzero(self.counts)  # empty bins past the data may fall off the new grid
            coarse = ((self.offset + used) >> min(exponent - self.exponent, 63)) - offset
            # `coarse` never decreases along `used`: each run of equal bins sums into one coarse bin
            # (np.add.reduceat over the runs, exact in int64 and far quicker than np.add.at).
            starts = np.flatnonzero(np.concatenate(([True], coarse[1:] != coarse[:-1])))
            moved = np.zeros(self.num_bins, np.int64)
            moved[coarse[starts]] = np.add.reduceat(self.counts[used], starts)
            self.counts = moved
        self.exponent, self.offset = exponent, offset

    def _bin(self, x: np.ndarray, scratch: Scratch) -> None:
        """Count one chunk's exact zeros and add its values to their bins."""
        counts = np.bincount(self.bin_indices(x, scratch), minlength=self.num_bins)
        self.counts += counts
        # Exact zeros can only sit in the bin [0, w): when the chunk put nothing there (most
        # activations that are not ReLU outputs), there is no zero to count and no pass to make.
        if counts[-self.offset]:
            self.zeros += int(np.count_nonzero(np.equal(x, 0.0, out=scratch.mask(x.size))))

    def bin_indices(self, x: np.ndarray, scratch: Scratch) -> np.ndarray:
        """Each value's bin on the current grid, as int32 in `scratch`'s buffer (valid until its next use)."""
        # floor(x / 2**e) is exact in float32 (a power-of-two scaling) unless it underflows to -0,
        # which only wide grids (e > 0) on tiny negative values can do: use float64 there.
        # Subtracting the offset is exact in floating point too (both are integers of magnitude at
        # most num_bins: the grid spans zero), and a float -> int32 copy is a vectorised loop where
        # a cast to int64 is not: about 15% of the binning time.
        dtype = np.float64 if self.exponent > 0 else np.float32
        work = scratch.floats(x.size, dtype)
        np.multiply(x, dtype(math.ldexp(1.0, -self.exponent)), out=work)
        np.floor(work, out=work)
        np.subtract(work, dtype(self.offset), out=work)
        index = scratch.indices(x.size)
        np.copyto(index, work, casting="unsafe")
        return index

    # -- combining ---------------------------------------------------------------------------

    def merge(self, other: TensorStats) -> TensorStats:
        """A new TensorStats equal to having folded both inputs' data into one."""
        if other.num_bins != self.num_bins:
            raise ValueError(f"{self.name}: cannot merge histograms of {self.num_bins} and {other.num_bins} bins")
        out = TensorStats(self.name, self.num_bins)
        for field in ("count", "zeros", "outliers", "nans"):
            setattr(out, field, getattr(self, field) + getattr(other, field))
        out.raw_min, out.raw_max = min(self.raw_min, other.raw_min), max(self.raw_max, other.raw_max)
        if out.count == 0:
            return out
        new_min, new_max = min(self.min, other.min), max(self.max, other.max)
        out._extend(new_min, new_max)
        if self.num_bins:
            for part in (self, other):
                if part.count:
                    tmp = part.copy()
                    tmp._regrid(out.exponent, out.offset)
                    out.counts += tmp.counts
        return out

    def copy(self) -> TensorStats:
        out = TensorStats(self.name, self.num_bins)
        for field in self.__slots__:
            setattr(out, field, getattr(self, field))
        out.counts = self.counts.copy()
        return out

    # -- reading -----------------------------------------------------------------------------

    @property
    def saw_outliers(self) -> bool:
        return self.outliers > 0

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exponent) if self.exponent != _EMPTY else 0.0

    def edges(self) -> np.ndarray:
        """Bin edges in value units (num_bins + 1 of them)."""
        return (self.offset + np.arange(self.num_bins + 1, dtype=np.float64)) * self.width

    def __eq__(self, other) -> bool:
        if not isinstance(other, TensorStats):
            return NotImplemented
        scalars = ("name", "num_bins", "count", "zeros", "outliers", "nans", "min", "max",
                   "raw_min", "raw_max", "exponent", "offset")
        return (all(getattr(self, f) == getattr(other, f) for f in scalars)
                and np.array_equal(self.counts, other.counts))

    def __repr__(self) -> str:
        return (f"TensorStats({self.name!r}, count={self.count}, min={self.min:.6g}, max={self.max:.6g}, "
                f"outliers={self.outliers}, bin_width={self.width:.3g})")


def fitting_exponent(lo: float, hi: float, num_bins: int) -> int:
    """Smallest e such that [min(lo,0), max(hi,0)] fits in num_bins bins of width 2**e anchored at 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = hi - lo
    if span == 0.0:
        return _MIN_EXPONENT  # all zeros so far: any width fits; the finest keeps it monotone
    exponent = max(math.floor(math.log2(span / (num_bins + 1))), _MIN_EXPONENT)
    while math.floor(math.ldexp(hi, -exponent)) - math.floor(math.ldexp(lo, -exponent)) + 1 > num_bins:
        exponent += 1
    return exponent


class Scratch:
    """Reusable work buffers for binning, so a batch of many tensors does not allocate per tensor."""

    def __init__(self):
        self._buffers: dict = {}

    def _get(self, kind, size: int, dtype) -> np.ndarray:
        buf = self._buffers.get(kind)
        if buf is None or buf.size < size:
            buf = np.empty(max(size, 1024), dtype)
            self._buffers[kind] = buf
        return buf[:size]

    def floats(self, size: int, dtype=np.float32) -> np.ndarray:
        return self._get(np.dtype(dtype).char, size, dtype)

    def indices(self, size: int) -> np.ndarray:
        return self._get("index", size, np.int32)

    def mask(self, size: int) -> np.ndarray:
        return self._get("mask", size, np.bool_)
