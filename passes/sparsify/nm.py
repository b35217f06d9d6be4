"""N:M sparsity arithmetic: parsing 2:4, grouping along an axis, counting violations."""

from __future__ import annotations

import numpy as np


def parse_nm(text: str) -> tuple[int, int] | None:
    """`"2:4"` -> (2, 4); None when `text` is not N:M. Raises ValueError for malformed N:M."""
    if ":" not in str(text):
        return None
    left, _, right = str(text).strip().partition(":")
    try:
        n, m = int(left), int(right)
    except ValueError:
        raise ValueError(f"{text!r} is not N:M with integers N and M (e.g. 2:4)") from None
    if m <= 0:
        raise ValueError(f"{text!r}: M must be positive")
    if not 1 <= n < m:
        raise ValueError(f"{text!r}: N (non-zeros kept per group of M) must satisfy 1 <= N < M")
    return n, m


def nm_groups(values: np.ndarray, axis: int, m: int) -> np.ndarray:
    """View `values` as [..., groups of M consecutive elements along `axis`]; axis length % M == 0."""
    moved = np.moveaxis(np.asarray(values), axis, -1)
    if moved.shape[-1] % m:
        raise ValueError(f"axis length {moved.shape[-1]} is not a multiple of {m}")
    return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))


def nm_violations(values: np.ndarray, axis: int, n: int, m: int) -> tuple[int, int]:
    """(groups with more than N non-zeros, total groups) along `axis`."""
    groups = nm_groups(values, axis, m)
    nonzero = np.count_nonzero(groups, axis=-1)
    return int(np.count_nonzero(nonzero > n)), int(nonzero.size)


def satisfies_nm(values: np.ndarray, axis: int, n: int, m: int) -> bool:
    values = np.asarray(values)
    if values.ndim == 0 or values.shape[axis] % m:
        return False
    bad, _total = nm_violations(values, axis, n, m)
    return bad == 0


def zero_fraction(values: np.ndarray) -> float:
    values = np.asarray(values)
    return float(1.0 - np.count_nonzero(values) / values.size) if values.size else 0.0
