"""Sparsification one tensor at a time, for graphs whose weights stay on disk (onnxcomp.graph.weights).

The in-memory path holds every eligible weight dense and sparse at once, plus the global scores
and their sorts: 17x the weights, measured on a 0.3 GB model. Here a tensor is read, masked and
written back to the store before the next one is read. A global ratio needs one threshold
across tensors: each tensor's scores are kept sorted in float32 (the weights' own size, once)
and the threshold is found by bisection on their bit patterns (float32 bits of non-negative
numbers sort like the numbers), which makes the count exact. Ties at the threshold go to the
tensors in graph order.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.weights import store_values
from onnxcomp.passes.sparsify.eligibility import values_of
from onnxcomp.passes.sparsify.masks import magnitude_mask, nm_mask, prune_count
from onnxcomp.passes.sparsify.nm import nm_violations, zero_fraction
from onnxcomp.passes.sparsify.storage import sparse_bytes


def global_counts(candidates, ratio: float, normalize: str, max_tensor_sparsity: float) -> dict[str, int]:
    """Elements to zero in each tensor for `ratio` of all of them, lowest normalised score first,
    no tensor past `max_tensor_sparsity` (as masks.global_masks, with float32 scores)."""
    bits = {cand.name: sorted_scores(values_of(cand.constant), normalize).view(np.int32) for cand in candidates}
    caps = {c.name: int(np.floor(max_tensor_sparsity * c.size)) for c in candidates}
    k = min(prune_count(ratio, sum(c.size for c in candidates)), sum(caps.values()))

    def taken(t: int, side: str) -> dict[str, int]:
        return {n: min(int(np.searchsorted(b, t, side=side)), caps[n]) for n, b in bits.items()}

    lo, hi = -1, int(np.float32(np.inf).view(np.int32))  # f(lo) < k <= f(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sum(taken(mid, "right").values()) >= k:
            hi = mid
        else:
            lo = mid
    counts = taken(hi, "left")  # strictly below the threshold
    left = k - sum(counts.values())
    for name, most in taken(hi, "right").items():  # ties at the threshold, in graph order
        extra = min(left, most - counts[name])
        counts[name] += extra
        left -= extra
    return counts


def sorted_scores(values: np.ndarray, normalize: str) -> np.ndarray:
    """masks.scores of one tensor in ascending order, float32. Every normalisation is increasing in
    |w| within a tensor, so one sort of |w| gives them all (lamp from suffix sums of the squares)."""
    flat = np.sort(np.abs(np.asarray(values, dtype=np.float32)).ravel())
    if normalize == "none" or not flat.size:
        return flat
    if normalize == "rms":
        rms = np.float32(np.sqrt(np.mean(flat.astype(np.float64) ** 2)))
        return flat / rms if rms > 0 else flat
    squares = flat.astype(np.float64) ** 2
    suffix = np.cumsum(squares[::-1])[::-1]
    out = np.divide(squares, suffix, out=np.zeros_like(squares), where=suffix > 0).astype(np.float32)
    return np.maximum.accumulate(out)  # rounding must not unsort it


def lowest(values: np.ndarray, count: int) -> np.ndarray:
    """Keep-mask zeroing `count` smallest-magnitude elements of one tensor (lowest score: every
    normalisation is increasing in |w| within a tensor)."""
    keep = np.ones(values.size, dtype=bool)
    if count >= values.size:
        keep[:] = False
    elif count:
        keep[np.argpartition(np.abs(values).ravel(), count - 1)[:count]] = False
    return keep.reshape(values.shape)


def sparsify_on_disk(spec, scope: str, candidates, options) -> tuple[list[dict], dict, int, int]:
    """Sparsify every candidate in place, one at a time; returns (report rows, storage, zeros, total)."""
    counts = (global_counts(candidates, spec[1], options.normalize, options.max_tensor_sparsity)
              if spec[0] == "ratio" and scope == "global" else None)
    rows, raw, encoded, zeros, total = [], 0, 0, 0, 0
    for cand in candidates:
        dense = values_of(cand.constant)
        if spec[0] == "nm":
            keep = nm_mask(dense, next(iter(cand.axes)), spec[1], spec[2])
        elif counts is not None:
            keep = lowest(dense, counts[cand.name])
        else:
            keep = magnitude_mask(dense, spec[1])
        sparse = np.where(keep, dense, np.zeros((), dense.dtype)).astype(dense.dtype)
        del keep
        changed = not np.array_equal(sparse, dense)
        row = {"name": cand.name, "ops": cand.ops, "nodes": [u.node for u in cand.uses], "shape": list(cand.shape),
               "sparsity_before": round(zero_fraction(dense), 5), "sparsity_after": round(zero_fraction(sparse), 5),
               "pattern": "unstructured" if spec[0] == "ratio" else f"{spec[1]}:{spec[2]}", "sparsified": changed,
               "method": "magnitude"}
        if spec[0] == "nm":
            axis = next(iter(cand.axes))
            bad, groups = nm_violations(sparse, axis, spec[1], spec[2])
            row.update(axis=axis, groups=groups, groups_violating=bad, pattern_verified=bad == 0)
            if changed and bad:
                raise AssertionError(f"{cand.name}: {bad} of {groups} groups break {spec[1]}:{spec[2]}")
        rows.append(row)
        after = sparse if changed else dense
        raw += after.nbytes
        encoded += min(sparse_bytes(after), after.nbytes)
        zeros += after.size - np.count_nonzero(after)
        total += after.size
        if changed:
            store_values(cand.constant, sparse)
        del dense, sparse, after
    return rows, {"raw_bytes": raw, "sparse_initializer_bytes": encoded}, zeros, total
