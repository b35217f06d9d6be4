"""Properties of the sparsity masks on random tensors (hypothesis)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxcomp.passes.sparsify.masks import (
    global_masks,
    magnitude_mask,
    nm_mask,
    prune_count,
)
from onnxcomp.passes.sparsify.nm import nm_violations, satisfies_nm

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def nm_case(draw):
    m = draw(st.sampled_from([2, 4, 8]))
    n = draw(st.integers(1, m - 1))
    rank = draw(st.integers(2, 4))
    shape = [draw(st.integers(1, 5)) for _ in range(rank)]
    axis = draw(st.integers(0, rank - 1))
    shape[axis] = m * draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if draw(st.booleans()):  # ties and existing zeros
        values = np.round(values).astype(np.float32)
    return values, axis, n, m


@SETTINGS
@given(nm_case())
def test_nm_mask_satisfies_pattern_on_every_group(case):
    values, axis, n, m = case
    keep = nm_mask(values, axis, n, m)
    sparse = np.where(keep, values, 0)
    assert satisfies_nm(sparse, axis, n, m)
    bad, groups = nm_violations(sparse, axis, n, m)
    assert bad == 0 and groups == values.size // m
    assert int((~keep).sum()) == groups * (m - n)  # exactly M - N dropped per group
    # every kept magnitude is >= every dropped one within its group
    moved_v = np.moveaxis(np.abs(values), axis, -1).reshape(-1, m)
    moved_k = np.moveaxis(keep, axis, -1).reshape(-1, m)
    for v, k in zip(moved_v, moved_k):
        assert v[k].min() >= v[~k].max()
    np.testing.assert_array_equal(nm_mask(sparse, axis, n, m) | (sparse == 0), np.ones_like(keep))  # idempotent


@st.composite
def tensor_and_ratio(draw):
    shape = [draw(st.integers(1, 7)) for _ in range(draw(st.integers(1, 3)))]
    seed = draw(st.integers(0, 2**16))
    ratio = draw(st.floats(0, 0.999))
    values = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if draw(st.booleans()):
        values = np.round(values * 2).astype(np.float32)
    return values, ratio


@SETTINGS
@given(tensor_and_ratio())
def test_magnitude_mask_count_is_exact_and_idempotent(case):
    values, ratio = case
    keep = magnitude_mask(values, ratio)
    k = prune_count(ratio, values.size)
    assert int((~keep).sum()) == k
    assert k == int(np.floor(ratio * values.size + 0.5)) or k == values.size
    sparse = np.where(keep, values, 0)
    again = np.where(magnitude_mask(sparse, ratio), sparse, 0)
    np.testing.assert_array_equal(again, sparse)
    if ratio == 0:
        assert keep.all()


@SETTINGS
@given(st.lists(tensor_and_ratio(), min_size=1, max_size=4), st.floats(0, 0.95),
       st.sampled_from(["lamp", "rms", "none"]))
def test_global_masks_total_exact_and_no_tensor_emptied(cases, ratio, normalize):
    tensors = {f"t{i}": v for i, (v, _r) in enumerate(cases)}
    masks = global_masks(tensors, ratio, normalize, max_tensor_sparsity=0.9)
    total = sum(v.size for v in tensors.values())
    caps = sum(int(np.floor(0.9 * v.size)) for v in tensors.values())
    dropped = sum(int((~m).sum()) for m in masks.values())
    assert dropped == min(prune_count(ratio, total), caps)
    for name, mask in masks.items():
        assert int((~mask).sum()) <= int(np.floor(0.9 * tensors[name].size))
    sparse = {n: np.where(masks[n], tensors[n], 0) for n in tensors}
    again = global_masks(sparse, ratio, normalize, max_tensor_sparsity=0.9)
    for n in tensors:  # idempotent: the zeros are chosen again
        np.testing.assert_array_equal(np.where(again[n], sparse[n], 0), sparse[n])
