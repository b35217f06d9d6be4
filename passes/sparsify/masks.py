"""Keep-masks (True = keep) for weight tensors: per-tensor magnitude, global, and N:M.

Every mask zeroes an exact count: per tensor round(ratio * size) elements, globally
round(ratio * total) elements, N:M exactly M - N of every M. Ties break by position, so
a mask is deterministic and a second application changes nothing (existing zeros score
lowest and are chosen first).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from onnxcomp.passes.sparsify.nm import nm_groups

Normalization = Literal["lamp", "rms", "none"]
NORMALIZATIONS: tuple[str, ...] = get_args(Normalization)


def prune_count(ratio: float, size: int) -> int:
    """Elements to zero for `ratio` of `size` (round half up, never more than size)."""
    return min(size, int(np.floor(ratio * size + 0.5)))


def magnitude_mask(values: np.ndarray, ratio: float) -> np.ndarray:
    """Zero the round(ratio * size) smallest-magnitude elements of one tensor."""
    flat = np.abs(np.asarray(values, dtype=np.float32)).ravel()
    k = prune_count(ratio, flat.size)
    keep = np.ones(flat.size, dtype=bool)
    if k:
        keep[np.argsort(flat, kind="stable")[:k]] = False
    return keep.reshape(np.shape(values))


def nm_mask(values: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Keep the N largest magnitudes in every M consecutive elements along `axis`."""
    values = np.asarray(values)
    groups = np.abs(nm_groups(values.astype(np.float32), axis, m))
    order = np.argsort(groups, axis=-1, kind="stable")  # ascending: the first M - N are dropped
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., : m - n], False, axis=-1)
    moved_shape = np.moveaxis(values, axis, -1).shape
    return np.moveaxis(keep.reshape(moved_shape), -1, axis)


def scores(values: np.ndarray, normalize: str = "lamp") -> np.ndarray:
    """Per-element importance comparable across tensors (flattened, float64).

    lamp: w² / (sum of w² over elements of the same tensor at least as large) — layer-adaptive
    magnitude pruning (Lee et al., ICLR 2021); each tensor's largest weight scores 1, so no
    tensor is emptied, and small tensors are not drained first as raw magnitudes would be.
    rms: |w| / rms(w). none: |w| (plain global magnitude).
    """
    flat = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    if normalize == "none":
        return flat
    if normalize == "rms":
        rms = np.sqrt(np.mean(flat**2)) if flat.size else 0.0
        return flat / rms if rms > 0 else flat
    if normalize == "lamp":
        order = np.argsort(flat, kind="stable")
        squares = flat[order] ** 2
        suffix = np.cumsum(squares[::-1])[::-1]
        out = np.empty_like(flat)
        out[order] = np.divide(squares, suffix, out=np.zeros_like(squares), where=suffix > 0)
        return out
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")


def global_masks(tensors: dict[str, np.ndarray], ratio: float, normalize: str = "lamp",
                 max_tensor_sparsity: float = 0.98) -> dict[str, np.ndarray]:
    """Zero round(ratio * total) elements across all tensors, lowest normalised score first.

    No tensor loses more than `max_tensor_sparsity` of its elements; the count it cannot take
    goes to the others (so the total stays exact while any tensor has room).
    """
    names = list(tensors)
    if not names:
        return {}
    sizes = np.array([np.size(tensors[n]) for n in names], dtype=np.int64)
    all_scores = np.concatenate([scores(tensors[n], normalize) for n in names])
    owner = np.repeat(np.arange(len(names)), sizes)
    caps = np.array([int(np.floor(max_tensor_sparsity * s)) for s in sizes], dtype=np.int64)
    k = min(prune_count(ratio, int(sizes.sum())), int(caps.sum()))
    order = np.argsort(all_scores, kind="stable")
    # Rank of each element within its own tensor, in global score order.
    owner_sorted = owner[order]
    by_owner = np.argsort(owner_sorted, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty_like(by_owner)
    rank[by_owner] = np.arange(by_owner.size) - starts[owner_sorted[by_owner]]
    allowed = rank < caps[owner_sorted]
    chosen = order[allowed][:k]
    keep = np.ones(all_scores.size, dtype=bool)
    keep[chosen] = False
    ends = np.cumsum(sizes)
    return {n: keep[s:e].reshape(np.shape(tensors[n])) for n, s, e in zip(names, starts, ends)}
