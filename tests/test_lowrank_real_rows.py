"""factorize-lowrank leaves padded positions out of its fit when the data has a padding mask (onnxcomp.measure.padding)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_model, run, run_pass, tensor
from onnx import TensorProto, helper

from onnxcomp.errors import InputError


def masked_mlp(m=24, hidden=32, n=16, seed=0, zeroed=True):
    """x [B, T, m] -> MatMul -> Relu -> MatMul -> times the mask (plus the mask, not `zeroed`: states at the
    padded positions too, as an encoder gives them)."""
    rng = np.random.default_rng(seed)
    inits = {"w0": (rng.standard_normal((m, hidden)) / np.sqrt(m)).astype(np.float32),
             "w1": (rng.standard_normal((hidden, n)) / np.sqrt(hidden)).astype(np.float32),
             "last": np.array([-1], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w1"], ["o"], name="fc1"),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["mf", "last"], ["mu"]),
             helper.make_node("Mul" if zeroed else "Add", ["o", "mu"], ["y"])]
    return make_model(nodes, [tensor("x", ["B", "T", m]), tensor("attention_mask", ["B", "T"], TensorProto.INT64)],
                      [tensor("y", None)], inits)


def padded(n=48, t=12, m=24, seed=1):
    """Real tokens in the first half of the channels; padded positions large and in the other half, as a
    [PAD] token's states are nothing like a sentence's."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, t // 2, n)
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int64)
    real = np.concatenate([rng.standard_normal((n, t, m // 2)) * np.linspace(2, 0.2, m // 2),
                           0.05 * rng.standard_normal((n, t, m // 2))], -1)
    pad = np.concatenate([0.05 * rng.standard_normal((n, t, m // 2)), 8 * rng.standard_normal((n, t, m // 2))], -1)
    x = np.where(mask[..., None] == 1, real, pad).astype(np.float32)
    return {"x": x, "attention_mask": mask}


def test_input_moments_leave_the_padded_rows_out_and_keep_the_halves_by_sample():
    import onnx_graphsurgeon as gs

    from onnxcomp.measure.samples import as_samples
    from onnxcomp.passes.lowrank.activations import input_moments
    from onnxcomp.passes.lowrank.layers import find_layers

    model = masked_mlp()
    graph = gs.import_onnx(model)
    layers, _ = find_layers(graph, 2)
    data = padded()
    full, halves = input_moments(graph, layers, as_samples(data, model), folds=True, mask="attention_mask")
    keep = data["attention_mask"].astype(bool)
    rows = data["x"][keep].astype(np.float64)
    even = data["x"][0::2][keep[0::2]].astype(np.float64)
    assert np.allclose(full["fc0"], rows.T @ rows / len(rows))
    assert np.allclose(halves[0]["fc0"], even.T @ even / len(even))
    every, _ = input_moments(graph, layers, as_samples(data, model), folds=True)
    assert not np.allclose(every["fc0"], full["fc0"])  # the padded rows would have counted


def test_input_moments_count_every_row_of_an_input_whose_second_axis_is_declared_other_than_the_sequence():
    """x declared [B, 12 heads, m] beside a mask [B, T]: twelve heads are not twelve positions."""
    import onnx_graphsurgeon as gs

    from onnxcomp.measure.samples import as_samples
    from onnxcomp.passes.lowrank.activations import input_moments
    from onnxcomp.passes.lowrank.layers import find_layers

    model = masked_mlp()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 12
    graph = gs.import_onnx(model)
    layers, _ = find_layers(graph, 2)
    data = padded(t=12)
    masked = input_moments(graph, layers, as_samples(data, model), mask="attention_mask")
    rows = data["x"].reshape(-1, data["x"].shape[-1]).astype(np.float64)
    assert np.allclose(masked["fc0"], rows.T @ rows / len(rows))


def _real_error(model, out, test) -> float:
    keep = test["attention_mask"].astype(bool)
    want, got = run(model, test)["y"][keep], run(out, test)["y"][keep]
    return float(np.sum((want - got) ** 2) / np.sum(want ** 2))


def test_with_a_padding_mask_the_factors_fit_the_real_tokens(tmp_path):
    """The same ranks (one plan), fitted with every row and with the real tokens' rows: on other sentences'
    real tokens the masked fit's error is far smaller; `auto` finds the mask and the report names it."""
    model = masked_mlp()
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "method": "whitened", "kept": 0.5, "layers": [
        {"node": "fc0", "shape": [24, 32], "rank": 6}, {"node": "fc1", "shape": [32, 16], "rank": 6}]}))
    data, test = padded(seed=1), padded(seed=2)
    errors, masks = {}, {}
    for option in ("none", "auto"):
        out, records = run_pass(model, f"factorize-lowrank{{plan={plan},mask={option}}}", data=data)
        errors[option], masks[option] = _real_error(model, out, test), records[0].report.details["mask"]
    assert masks == {"none": None, "auto": "attention_mask"}
    assert errors["auto"] < 0.5 * errors["none"], errors


def test_auto_takes_no_mask_when_nothing_is_padded():
    from onnxcomp.measure.padding import find_mask

    data = padded()
    assert find_mask(["x", "attention_mask"], [data]) == "attention_mask"
    full = dict(data, attention_mask=np.ones_like(data["attention_mask"]))
    assert find_mask(["x", "attention_mask"], [full]) is None
    assert find_mask(["x", "attention_mask"], [data], "none") is None
    assert find_mask(["x", "token_type_ids"], [{"token_type_ids": data["attention_mask"]}]) is None  # not a mask
    assert find_mask(["x", "key_padding_mask"], [{"key_padding_mask": 1 - data["attention_mask"]}]) is None  # 1 = pad


@pytest.mark.parametrize("option, message", [("nomask", "is not an input"), ("x", "not a 0/1")])
def test_a_mask_that_is_not_a_0_1_input_is_one_clear_line(option, message):
    with pytest.raises(InputError, match=message):
        run_pass(masked_mlp(), f"factorize-lowrank{{kept=0.5,mask={option}}}", data=padded())


def test_zero_padding_zeroes_the_padded_positions_of_float_outputs_only():
    from onnxcomp.measure.padding import zero_padding

    feeds = {"attention_mask": np.array([[1, 1, 0], [1, 0, 0]])}
    y = np.ones((2, 3, 4), np.float32)
    assert zero_padding(y, feeds, "attention_mask").sum() == 3 * 4
    assert zero_padding(y[:, :2], feeds, "attention_mask").sum() == 4 * 4  # not [batch, sequence]: as it is
    assert zero_padding(np.ones((2, 3), np.int64), feeds, "attention_mask").sum() == 6


def test_validation_of_a_lossy_run_also_compares_the_real_tokens_only(tmp_path):
    """`optimize --val` on padded data reports the comparison over the real tokens beside the one over every
    position, with the figures a direct computation gives."""
    import subprocess
    import sys

    import onnx

    from onnxcomp.measure.compare import cosine

    src, out, report = tmp_path / "m.onnx", tmp_path / "lr.onnx", tmp_path / "r.json"
    onnx.save(masked_mlp(zeroed=False), src)
    for name, seed in (("calib", 1), ("val", 2)):
        np.savez(tmp_path / f"{name}.npz", **padded(seed=seed))
    r = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(src), "-o", str(out), "--passes", "factorize-lowrank{kept=0.5,round_to=2}",
                        "--calib", str(tmp_path / "calib.npz"), "--val", str(tmp_path / "val.npz"),
                        "--report", str(report)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    real = json.loads(report.read_text())["validation"]["real_tokens"]
    val = padded(seed=2)
    keep = val["attention_mask"].astype(bool)
    want, got = run(masked_mlp(zeroed=False), val)["y"], run(onnx.load(out), val)["y"]
    assert (real["mask"], real["positions"], real["of"]) == ("attention_mask", int(keep.sum()), keep.size)
    zero = keep[..., None]
    assert np.isclose(real["outputs"][0]["cosine"], cosine(want * zero, got * zero), atol=1e-6)
    assert np.isclose(real["outputs"][0]["max_abs"], np.abs(want - got)[keep].max(), atol=1e-6)
    every = json.loads(report.read_text())["validation"]["outputs"][0]
    assert np.isclose(every["cosine"], cosine(want, got), atol=1e-6) and not np.isclose(every["cosine"],
                                                                                       real["outputs"][0]["cosine"])
    assert f"validation over the real tokens ({keep.sum()} of {keep.size} positions" in r.stdout
    compared = subprocess.run([sys.executable, "-m", "onnxcomp", "compare", str(src), str(out), "--data",
                               str(tmp_path / "val.npz"), "--json"], capture_output=True, text=True, check=False)
    assert compared.returncode == 4 and "outside tolerance" in compared.stderr  # lossy: the verdict stays
    assert json.loads(compared.stdout)["real_tokens"] == real


def _comparison(reference, candidate):
    from onnxcomp.measure.compare import Comparison, compare_outputs

    return Comparison(reference, candidate, compare_outputs(reference, candidate))


def test_the_real_tokens_error_figures_are_over_the_real_positions_with_the_statistic_asked():
    """Zeroed padded positions must not count as agreeing elements: with every real element off by 1, the mean
    error and the share outside tolerance over the real tokens are 1, whatever the share of padding."""
    from onnxcomp.measure.compare import Tolerances
    from onnxcomp.measure.padding import over_real_tokens

    feeds = [{"attention_mask": np.array([[1, 1, 0, 0], [1, 0, 0, 0]])}]
    y = np.ones((2, 4, 3), np.float32)
    real = over_real_tokens(masked_mlp(), feeds, _comparison({"y": y}, {"y": y + 1}), Tolerances(), "mean")
    (diff,) = real.diffs
    assert (real.positions, real.of) == (3, 8)
    assert diff.statistic == "mean" and np.isclose(diff.error_stat, 1.0) and np.isclose(diff.outside_fraction, 1.0)
    assert np.isclose(diff.max_abs, 1.0) and np.isclose(diff.cosine, 1.0)  # all ones against all twos
    (every,) = over_real_tokens(masked_mlp(), feeds, _comparison({"y": y}, {"y": y + 1}), Tolerances()).diffs
    assert every.statistic == "max" and np.isclose(every.outside_fraction, 1.0)


def test_an_output_whose_second_axis_only_happens_to_be_as_long_as_the_sequence_is_compared_whole():
    """A pooled [batch, 4] output (declared 4, the mask's sequence axis is symbolic) is not [batch, sequence]."""
    from onnxcomp.measure.compare import Tolerances
    from onnxcomp.measure.padding import over_real_tokens

    model = masked_mlp()
    model.graph.output.append(tensor("pooled", ["B", 4]))
    feeds = [{"attention_mask": np.array([[1, 1, 0, 0], [1, 0, 0, 0]])}]
    y, p = np.ones((2, 4, 3), np.float32), np.ones((2, 4), np.float32)
    q = p.copy()
    q[:, 3] = 5.0  # differs where the mask is 0, which means nothing for a pooled output
    real = over_real_tokens(model, feeds, _comparison({"y": y, "pooled": p}, {"y": y, "pooled": q}), Tolerances())
    assert np.isclose(real.diffs[1].max_abs, 4.0), real.diffs[1]


def test_the_sensitivity_drop_compares_a_pooled_output_whole():
    """A model whose output is pooled over the sequence, [batch, 12] beside 12 symbolic positions: the mask
    has no sequence axis to zero there, so the measured drops are those without a mask."""
    import onnx_graphsurgeon as gs

    from onnxcomp.measure.samples import as_samples
    from onnxcomp.passes.lowrank.layers import find_layers
    from onnxcomp.passes.lowrank.sensitivity import layer_weights

    rng = np.random.default_rng(0)
    w = {"w0": rng.standard_normal((24, 32)).astype(np.float32), "w1": rng.standard_normal((32, 12)).astype(np.float32),
         "axes": np.array([1], np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w1"], ["o"], name="fc1"),
             helper.make_node("ReduceMean", ["o"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["mf", "axes"], ["count"], keepdims=1),
             helper.make_node("Div", ["pooled", "count"], ["y"])]
    model = make_model(nodes, [tensor("x", ["B", "T", 24]), tensor("attention_mask", ["B", "T"], TensorProto.INT64)],
                       [tensor("y", ["B", 12])], w)
    layers, _ = find_layers(gs.import_onnx(model), 2)
    sources = {"fc0": w["w0"], "fc1": w["w1"]}
    data = as_samples(padded(t=12), model)
    drops = {mask: layer_weights(model, layers, lambda layer, rank: 1.0, data, 2, sources,
                                 lambda layer, rank: 0.5 * sources[layer.node] + 0.3, mask=mask)
             for mask in (None, "attention_mask")}
    assert drops[None] == pytest.approx(drops["attention_mask"], rel=1e-9), drops


def test_a_budget_measures_the_drop_at_the_real_tokens_as_the_validation_does():
    """max_drop's measured drop on padded data is 1 - cosine with the padded positions zeroed, not over every
    position (which the fit no longer serves)."""
    from onnxcomp.measure.compare import cosine

    model, data = masked_mlp(zeroed=False), padded(seed=1)
    out, records = run_pass(model, "factorize-lowrank{kept=0.5,round_to=2,max_drop=0.9}", data=data)
    keep = data["attention_mask"].astype(bool)[..., None]
    want, got = run(model, data)["y"], run(out, data)["y"]
    measured = records[0].report.stats["measured_drop"]
    assert np.isclose(measured, 1 - cosine(want * keep, got * keep), atol=1e-5)
    assert not np.isclose(measured, 1 - cosine(want, got), atol=1e-3)
