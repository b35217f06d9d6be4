"""Facts about weight sparsity shared by the sparsify pass and the TensorRT check.

Which axis of a weighted op's constant input is the reduction (dot-product) axis, and
whether a tensor follows an N:M pattern along it. TensorRT's sparse kernels need, along
that axis, at most N non-zeros in every M consecutive elements (2:4), the axis length a
multiple of M. The reduction axes: Conv weight [K, C/g, R, S] axis 1 (input channels);
ConvTranspose weight [C, K/g, R, S] axis 0; Gemm B axis 0 (axis 1 with transB=1), Gemm A
axis 1 (axis 0 with transA=1); MatMul B axis -2, MatMul A axis -1.
"""

from __future__ import annotations

import numpy as np

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops a weight may pass through on its way to a weighted op without changing its values;
# Transpose moves the reduction axis (handled by the walkers), the others keep it.
AXIS_KEEPING_OPS = ("Identity", "Cast")


def reduction_axis(op: str, input_index: int, attrs: dict, rank: int) -> int | None:
    """The reduction axis of input `input_index` of `op`, or None if that input is not a weight."""
    if rank < 1:
        return None
    if op == "Conv" and input_index == 1 and rank >= 3:
        return 1
    if op == "ConvTranspose" and input_index == 1 and rank >= 3:
        return 0
    if op == "Gemm" and rank == 2:
        if input_index == 0:
            return 0 if int(attrs.get("transA", 0)) else 1
        if input_index == 1:
            return 1 if int(attrs.get("transB", 0)) else 0
    if op == "MatMul":
        if input_index == 0 and rank >= 1:
            return rank - 1
        if input_index == 1:
            return 0 if rank == 1 else rank - 2
    return None


def through_transpose(axis: int, perm: list[int] | None, rank: int) -> int:
    """Axis of a Transpose's input that becomes `axis` of its output."""
    perm = list(perm) if perm else list(reversed(range(rank)))
    return perm[axis]


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
