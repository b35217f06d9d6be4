"""sparsify-initializers: which weights change, to what pattern, with what fidelity; bad input."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import make_model, rng_array, run, run_pass, tensor
from onnx import helper, numpy_helper

from onnxcomp.errors import InputError, ToleranceError
from onnxcomp.passes.sparsify.nm import satisfies_nm, zero_fraction


def inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def small_net(c_in=8, bias=True):
    """Conv(8->16, 3x3) + BN + Relu -> GlobalAveragePool -> Flatten -> Gemm(transB=1, 16->12) + MatMul(12x8)."""
    rng = np.random.default_rng(0)
    values = {"w": rng_array((16, c_in, 3, 3), 1), "cb": rng_array((16,), 2),
              "s": rng.uniform(0.5, 2, 16).astype(np.float32), "b": rng_array((16,), 3),
              "m": rng_array((16,), 4), "v": rng.uniform(0.5, 2, 16).astype(np.float32),
              "fw": rng_array((12, 16), 5), "fb": rng_array((12,), 6), "mw": rng_array((12, 8), 7),
              "shape": np.array([-1, 16], dtype=np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w", "cb"] if bias else ["x", "w"], ["c"], name="conv", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["g"], name="fc", transB=1),
             helper.make_node("MatMul", ["g", "mw"], ["y"], name="mm")]
    return make_model(nodes, [tensor("x", ["N", c_in, 6, 6])], [tensor("y", None)], values)


def sparsify(model, spec="", **ctx):
    out, records = run_pass(model, "sparsify-initializers" + ("{" + spec + "}" if spec else ""), **ctx)
    onnx.checker.check_model(out)
    return out, records[-1].report


def test_nm_pattern_on_reduction_axes_and_nothing_else_changes():
    model = small_net()
    out, report = sparsify(model, "sparsity=2:4,min_size=0")
    before, after = inits(model), inits(out)
    assert satisfies_nm(after["w"], 1, 2, 4)  # Conv: input channels
    assert not satisfies_nm(after["w"], 0, 2, 4)  # ... and not by accident along the output axis
    assert satisfies_nm(after["fw"], 1, 2, 4)  # Gemm transB=1: axis 1 is K
    assert satisfies_nm(after["mw"], 0, 2, 4)  # MatMul B [K, N]: axis 0
    for name in ("w", "fw", "mw"):
        assert zero_fraction(after[name]) == 0.5
        kept = after[name] != 0
        np.testing.assert_array_equal(after[name][kept], before[name][kept])  # magnitude: kept values unchanged
        assert np.all(np.abs(after[name][~kept]).max(initial=0) == 0)
    for name in ("cb", "s", "b", "m", "v", "fb", "shape"):
        np.testing.assert_array_equal(after[name], before[name])
    rows = {r["name"]: r for r in report.details["tensors"]}
    assert all(rows[n]["pattern_verified"] and rows[n]["groups_violating"] == 0 for n in ("w", "fw", "mw"))
    assert rows["w"]["axis"] == 1 and rows["fw"]["axis"] == 1 and rows["mw"]["axis"] == 0
    assert report.stats["sparsified"] == 3 and report.modified
    feeds = {"x": rng_array((2, 8, 6, 6), 9)}
    assert np.all(np.isfinite(run(out, feeds)["y"]))


def test_nm_matches_bruteforce_keep_two_largest_of_four():
    model = small_net()
    out, _ = sparsify(model, "sparsity=2:4,min_size=0")
    w, got = inits(model)["mw"], inits(out)["mw"]  # [12, 8]: groups of 4 along axis 0
    for col in range(w.shape[1]):
        for g in range(0, 12, 4):
            group = w[g:g + 4, col]
            expected = np.where(np.isin(np.arange(4), np.argsort(-np.abs(group))[:2]), group, 0)
            np.testing.assert_array_equal(got[g:g + 4, col], expected)


def test_skip_reasons_small_excluded_and_not_multiple():
    model = small_net(c_in=6)  # Conv input channels 6: not a multiple of 4
    _, report = sparsify(model, "sparsity=2:4,min_size=100,exclude=[mm]")
    reasons = {s.name: s.reason for s in report.skipped}
    assert "not a multiple of 4" in reasons["w"] and "input channels" in reasons["w"]
    assert "excluded by 'mm'" in reasons["mw"]
    assert report.stats["sparsified"] == 1  # only the Gemm weight (192 elements)
    assert "fb" not in reasons and "cb" not in reasons  # biases are not weights: never candidates


def test_exclude_by_op_type_and_glob():
    model = small_net()
    out, report = sparsify(model, "sparsity=0.5,min_size=0,exclude_op=[Conv],exclude=[f*]")
    after = inits(out)
    assert zero_fraction(after["w"]) == 0 and zero_fraction(after["fw"]) == 0
    assert zero_fraction(after["mw"]) == 0.5


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_ratio_is_exact(scope):
    model = small_net()
    out, report = sparsify(model, f"sparsity=0.3,scope={scope},min_size=0")
    after = inits(out)
    sizes = {n: after[n].size for n in ("w", "fw", "mw")}
    zeros = {n: int(after[n].size - np.count_nonzero(after[n])) for n in sizes}
    if scope == "layer":
        assert all(zeros[n] == int(np.floor(0.3 * sizes[n] + 0.5)) for n in sizes)
    else:
        assert sum(zeros.values()) == int(np.floor(0.3 * sum(sizes.values()) + 0.5))
        assert all(zeros[n] < sizes[n] for n in sizes)  # no tensor emptied
    assert report.stats["zero_fraction"] == pytest.approx(sum(zeros.values()) / sum(sizes.values()), abs=1e-4)


@pytest.mark.parametrize("spec", ["sparsity=2:4,min_size=0", "sparsity=0.6,min_size=0",
                                  "sparsity=0.6,scope=layer,min_size=0"])
def test_second_run_changes_nothing(spec):
    once, _ = sparsify(small_net(), spec)
    twice, report = sparsify(once, spec)
    for name, value in inits(once).items():
        np.testing.assert_array_equal(inits(twice)[name], value)
    assert not report.modified


def test_sparsity_zero_is_exact():
    model = small_net()
    out, report = sparsify(model, "sparsity=0,min_size=0")
    for name, value in inits(model).items():
        np.testing.assert_array_equal(inits(out)[name], value)
    assert not report.modified
    feeds = {"x": rng_array((2, 8, 6, 6), 9)}
    np.testing.assert_array_equal(run(out, feeds)["y"], run(model, feeds)["y"])


def test_matmul_weight_through_transpose_uses_input_axis():
    """PyTorch Linear on 3-D input: MatMul(x, Transpose(W[out, in])) -> 2:4 along W's axis 1."""
    w = rng_array((8, 16), 1)
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["x", "wt"], ["y"], name="mm")]
    model = make_model(nodes, [tensor("x", [2, 3, 16])], [tensor("y", None)], {"w": w})
    out, report = sparsify(model, "sparsity=2:4,min_size=0")
    got = inits(out)["w"]
    assert satisfies_nm(got, 1, 2, 4) and not satisfies_nm(got, 0, 2, 4)
    assert report.details["tensors"][0]["axis"] == 1


def test_weight_shared_with_non_weight_use_is_left_alone():
    w = rng_array((8, 8), 1)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
             helper.make_node("Add", ["a", "w"], ["y"], name="add")]
    model = make_model(nodes, [tensor("x", [8, 8])], [tensor("y", None)], {"w": w})
    out, report = sparsify(model, "sparsity=0.5,min_size=0")
    np.testing.assert_array_equal(inits(out)["w"], w)
    assert "also read by Add" in report.skipped[0].reason


def test_int_weights_and_runtime_weights_get_reasons():
    nodes = [helper.make_node("MatMul", ["x", "b"], ["y"], name="act_mm")]
    model = make_model(nodes, [tensor("x", [4, 8]), tensor("b", [8, 4])], [tensor("y", None)])
    _, report = sparsify(model, "sparsity=0.5,min_size=0")
    assert "graph input" in report.skipped[0].reason and not report.modified


def digits_data(models_dir, name, n=64):
    from onnxcomp.measure.data import load_npz

    data = load_npz(models_dir / name)
    return {k: v[:n] for k, v in data.items()}


def test_obs_beats_magnitude_on_digits_2_4(models_dir, digits_cnn):
    """With sample data the default is data-aware (OBS + reconstruction): far closer to dense than magnitude."""
    from onnxcomp.measure.compare import measure

    model = onnx.load(str(digits_cnn))
    folded, _ = run_pass(model, "cleanup,fold-bn")
    calib = digits_data(models_dir, "digits_calib.npz", 32)
    test = digits_data(models_dir, "digits_test.npz", 200)
    magnitude, _ = sparsify(folded, "sparsity=2:4,method=magnitude")
    obs, report = sparsify(folded, "sparsity=2:4", data=calib)
    assert report.details["method"] == "obs"
    assert all(r["pattern_verified"] and r["method"] == "obs" for r in report.details["tensors"])
    fm, fo = measure(model, magnitude, test), measure(model, obs, test)
    print(f"2:4 digits test: magnitude acc {fm.accuracy:.3f} cos {fm.cosine:.3f}; obs acc {fo.accuracy:.3f} "
          f"cos {fo.cosine:.3f}")
    assert fo.cosine > fm.cosine + 0.2 and fo.accuracy > fm.accuracy + 0.3
    assert report.details["fidelity"]["cosine"] > 0.85


def test_max_drop_leaves_sensitive_tensors_dense_within_budget(models_dir, digits_cnn):
    model = onnx.load(str(digits_cnn))
    folded, _ = run_pass(model, "cleanup,fold-bn")
    calib = {k: v for k, v in digits_data(models_dir, "digits_calib.npz", 64).items() if k != "labels"}
    out, report = sparsify(folded, "sparsity=0.8,method=magnitude,max_drop=0.02", data=calib)
    assert report.stats["left_dense"] >= 1 and report.details["fidelity"]["drop"] <= 0.02
    dense = [s.name for s in report.skipped if s.reason.startswith("left dense")]
    assert len(dense) == report.stats["left_dense"]
    for name in dense:
        np.testing.assert_array_equal(inits(out)[name], inits(folded)[name])
    from onnxcomp.measure.compare import (
        measure,  # the reported drop is what the same data measures
    )
    assert 1 - measure(folded, out, calib).cosine == pytest.approx(report.details["fidelity"]["drop"], abs=1e-6)


def test_max_drop_impossible_raises_with_figures(models_dir, digits_cnn):
    model = onnx.load(str(digits_cnn))
    calib = {k: v for k, v in digits_data(models_dir, "digits_calib.npz", 32).items() if k != "labels"}
    with pytest.raises(ToleranceError, match="no tensor can be sparsified within max_drop 1e-09"):
        sparsify(model, "sparsity=0.9,method=magnitude,max_drop=1e-9", data=calib)


@pytest.mark.parametrize("spec,message", [
    ("sparsity=1.0", "must be in"), ("sparsity=-0.1", "must be in"), ("sparsity=4:4", "1 <= N < M"),
    ("sparsity=0:4", "1 <= N < M"), ("sparsity=2:0", "M must be positive"), ("sparsity=abc", "neither a ratio"),
    ("sparsity=2:x", "integers"), ("sparsity=2:4,scope=global", "scope=global applies to a ratio"),
    ("sparsity=0.5,max_drop=0.1", "needs sample data"), ("sparsity=0.5,method=obs", "needs sample data"),
])
def test_bad_input_is_one_clear_error(spec, message):
    with pytest.raises(InputError, match=message):
        sparsify(small_net(), spec)


def test_cli_end_to_end_2_4_and_global(tmp_path, models_dir, digits_cnn):
    out = tmp_path / "s.onnx"
    for flags in (["--sparsify", "2:4"], ["--sparsify", "0.5", "--sparsify-scope", "global"]):
        proc = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(digits_cnn), "-o", str(out),
                               "--val", str(models_dir / "digits_test.npz"), "-q", *flags],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert "accuracy: original" in proc.stdout and "sparsify-initializers" in proc.stdout
        assert "zero_fraction=0.5" in proc.stdout
    check = subprocess.run([sys.executable, "-m", "onnxcomp", "check", str(out), "--target", "tensorrt"],
                           capture_output=True, text=True)
    assert check.returncode == 0


def test_cli_bad_sparsity_exits_2_without_traceback(tmp_path, digits_cnn):
    proc = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(digits_cnn), "-o",
                           str(tmp_path / "s.onnx"), "--sparsify", "4:2", "-q"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "N < M" in proc.stderr
    assert not (tmp_path / "s.onnx").exists()


def test_check_reports_2_4_weights(tmp_path):
    from onnxcomp.checks import run_checks

    model = small_net()
    dense = {(f.rule, f.node) for f in run_checks(model, "tensorrt") if f.rule.startswith("SPARSE")}
    assert ("SPARSE-02", "model") in dense  # none sparse yet: one summary note
    out, _ = sparsify(model, "sparsity=2:4,min_size=0,exclude=[mm]")
    findings = [f for f in run_checks(out, "tensorrt") if f.rule.startswith("SPARSE")]
    sparse = {f.node for f in findings if f.rule == "SPARSE-01"}
    assert sparse == {"conv", "fc"}
    broken = [f for f in findings if f.rule == "SPARSE-02"]
    assert [f.node for f in broken] == ["mm"] and broken[0].severity == "warning"


def test_zeros_survive_int8_qdq_and_check_sees_them():
    """Sparsify then quantize (the shortcut order): symmetric INT8 weights keep every zero, and the
    TensorRT check traces the 2:4 pattern through DequantizeLinear."""
    from onnxcomp.checks import run_checks
    from onnxcomp.pipeline.registry import all_passes

    if "insert-qdq" not in all_passes():
        pytest.skip("insert-qdq is not available in this build")
    model = small_net()
    calib = {"x": rng_array((16, 8, 6, 6), 11)}
    sparse, _ = sparsify(model, "sparsity=2:4,min_size=0,method=magnitude")
    quantized, _ = run_pass(sparse, "insert-qdq{target=tensorrt}", data=calib)
    float_w = inits(sparse)["w"]
    int_weights = [v for v in inits(quantized).values() if v.dtype == np.int8 and v.shape == float_w.shape]
    assert int_weights, "the Conv weight was not quantized"
    np.testing.assert_array_equal(int_weights[0] == 0, float_w == 0)
    sparse_nodes = {f.node for f in run_checks(quantized, "tensorrt") if f.rule == "SPARSE-01"}
    assert "conv" in sparse_nodes


@pytest.mark.parametrize("strides,pads,dilations", [([1, 1], [1, 1, 1, 1], [1, 1]), ([2, 1], [0, 1, 1, 0], [1, 2])])
def test_conv_hessian_matches_conv_output_energy(strides, pads, dilations):
    """trace(W H Wᵀ) = ||conv(x, W)||²: the im2col geometry and (r, s, c) column order are right."""
    from onnxcomp.passes.sparsify.obs import conv_hessian, to_matrix

    w, x = rng_array((5, 4, 3, 3), 1), rng_array((3, 4, 9, 8), 2)
    attrs = {"strides": strides, "pads": pads, "dilations": dilations}
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attrs)
    model = make_model([node], [tensor("x", [3, 4, 9, 8])], [tensor("y", None)], {"w": w})
    y = run(model, {"x": x})["y"].astype(np.float64)
    mat = to_matrix(w, "Conv", 1).astype(np.float64)
    h = conv_hessian(x, w.shape, attrs)
    assert np.trace(mat @ h @ mat.T) == pytest.approx(float((y**2).sum()), rel=1e-4)


@pytest.mark.parametrize("kind", ["ratio", "nm"])
def test_obs_reconstruction_beats_plain_masking_on_the_layer(kind):
    """Same sparsity; the kept weights absorb the error, so ||X(W - W')ᵀ||² is smaller than magnitude's."""
    from onnxcomp.passes.sparsify.masks import magnitude_mask, nm_mask
    from onnxcomp.passes.sparsify.obs import prune_matrix

    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 32)) @ rng.standard_normal((32, 32))  # correlated inputs
    w = rng.standard_normal((16, 32))
    h = x.T @ x
    if kind == "ratio":
        got = prune_matrix(w, h, ratio=0.5)
        base = np.where(magnitude_mask(w, 0.5), w, 0)
        assert int((got == 0).sum()) == w.size // 2
    else:
        got = prune_matrix(w, h, nm=(2, 4))
        base = np.where(nm_mask(w, 1, 2, 4), w, 0)
        assert satisfies_nm(got, 1, 2, 4)
    err = lambda v: float(((x @ (w - v).T) ** 2).sum())  # noqa: E731
    assert err(got) < 0.7 * err(base)
    again = prune_matrix(got, h, ratio=0.5) if kind == "ratio" else prune_matrix(got, h, nm=(2, 4))
    np.testing.assert_allclose(again, got, atol=1e-9)  # already sparse: nothing to prune or absorb


@pytest.mark.parametrize("spec", ["sparsity=2:4,min_size=0", "sparsity=0.6,min_size=0"])
def test_obs_on_small_net_pattern_counts_and_second_run(spec):
    model = small_net()
    data = {"x": rng_array((24, 8, 6, 6), 12)}
    once, report = sparsify(model, spec, data=data)
    assert report.details["method"] == "obs"
    assert {r["method"] for r in report.details["tensors"]} == {"obs"}
    after = inits(once)
    if "2:4" in spec:
        assert satisfies_nm(after["w"], 1, 2, 4) and satisfies_nm(after["fw"], 1, 2, 4)
        assert satisfies_nm(after["mw"], 0, 2, 4)
    else:
        total = sum(after[n].size for n in ("w", "fw", "mw"))
        zeros = sum(after[n].size - np.count_nonzero(after[n]) for n in ("w", "fw", "mw"))
        assert zeros == int(np.floor(0.6 * total + 0.5))
    for name in ("cb", "s", "b", "m", "v", "fb"):
        np.testing.assert_array_equal(after[name], inits(model)[name])
    twice, again = sparsify(once, spec, data=data)
    assert not again.modified
    for name, value in after.items():
        np.testing.assert_array_equal(inits(twice)[name], value)


def test_conv_transpose_nm_along_input_channels_and_depthwise_refused():
    w = rng_array((8, 4, 3, 3), 1)  # ConvTranspose [C_in, C_out/g, R, S]: reduction over C_in (axis 0)
    dw = rng_array((8, 1, 3, 3), 2)  # depthwise Conv (group=4 over 4 channels): one input channel per group
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["t"], name="deconv"),
             helper.make_node("Conv", ["t", "dw"], ["y"], name="dwconv", group=4)]
    model = make_model(nodes, [tensor("x", [1, 8, 5, 5])], [tensor("y", None)], {"w": w, "dw": dw[:4]})
    out, report = sparsify(model, "sparsity=2:4,min_size=0")
    assert satisfies_nm(inits(out)["w"], 0, 2, 4)
    assert "input channels per group 1" in {s.name: s.reason for s in report.skipped}["dw"]
