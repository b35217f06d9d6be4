"""factorize-lowrank: the factors are the best of their rank, the rewrite computes exactly P @ Q,
the parameter and MAC bookkeeping is exact, the budget holds, plans replay, bad input is one line."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import make_model, run, run_pass, tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxcomp.errors import InputError
from onnxcomp.measure.counts import model_counts
from onnxcomp.passes.lowrank.factors import spectrum
from onnxcomp.passes.lowrank.layers import Layer, as_matrix
from onnxcomp.passes.lowrank.ranks import WHOLE, allocate


def mlp(dims=(32, 48, 40, 16), seed=0, gemm=False, decay=None):
    """x [B, S, d0] -> MatMul/Gemm chain with Relu; Gemm (transB) takes [B, d0]. With `decay`, the
    weights' singular values fall as decay**i (trained weights are closer to low rank than noise)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], {}, "x"
    for i, (m, n) in enumerate(itertools.pairwise(dims)):
        w = rng.standard_normal((n, m) if gemm else (m, n)) / np.sqrt(m)
        if decay:
            u, _, vt = np.linalg.svd(w, full_matrices=False)
            w = (u * decay ** np.arange(len(vt))) @ vt
        w = w.astype(np.float32)
        inits[f"w{i}"], inits[f"b{i}"] = w, (rng.standard_normal(n) * 0.1).astype(np.float32)
        if gemm:
            nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"], name=f"fc{i}", transB=1))
        else:
            nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"fc{i}"),
                      helper.make_node("Add", [f"m{i}", f"b{i}"], [f"h{i}"])]
        last = i == len(dims) - 2
        if not last:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
        x = f"h{i}" if last else f"r{i}"
    shape = ["B", dims[0]] if gemm else ["B", "S", dims[0]]
    return make_model(nodes, [tensor("x", shape)], [tensor(x, None)], inits)


def conv_net(seed=0):
    rng = np.random.default_rng(seed)
    inits = {"w0": (rng.standard_normal((24, 8, 3, 3)) * 0.2).astype(np.float32),
             "b0": (rng.standard_normal(24) * 0.1).astype(np.float32),
             "w1": (rng.standard_normal((32, 24, 3, 3)) * 0.2).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c0"], ["r0"]),
             helper.make_node("Conv", ["r0", "w1"], ["y"], name="conv1", pads=[2, 2, 2, 2], dilations=[2, 2])]
    return make_model(nodes, [tensor("x", ["N", 8, 9, 9])], [tensor("y", None)], inits)


def feeds_of(model, n=16, seed=0):
    rng = np.random.default_rng(seed)
    inp = model.graph.input[0]
    shape = [d.dim_value or {"B": n, "N": n, "S": 6}.get(d.dim_param, 1) for d in inp.type.tensor_type.shape.dim]
    return {inp.name: rng.standard_normal(shape).astype(np.float32)}


def lowrank(model, options="", **ctx):
    out, records = run_pass(model, f"factorize-lowrank{{{options}}}" if options else "factorize-lowrank", **ctx)
    return out, records[0].report


def weights(model):
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}


@settings(max_examples=25, deadline=None)
@given(m=st.integers(2, 24), n=st.integers(2, 24), rows=st.integers(30, 80), seed=st.integers(0, 2**16))
def test_factors_are_the_best_of_their_rank_plain_and_whitened(m, n, rows, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n))
    x = rng.standard_normal((rows, m)) * rng.uniform(0.1, 3, m)  # unequal input scales: whitening matters
    plain, white = spectrum(w), spectrum(w, x.T @ x)
    for r in range(1, min(m, n) + 1):
        p, q = plain.factors(r)
        assert np.linalg.matrix_rank(p @ q) <= r
        err = np.sum((w - p @ q) ** 2) / np.sum(w ** 2)
        assert np.isclose(err, plain.relative_error(r), atol=1e-9)
        p2, q2 = white.factors(r)
        out_err = np.sum((x @ (w - p2 @ q2)) ** 2) / np.sum((x @ w) ** 2)
        assert np.isclose(out_err, white.relative_error(r), rtol=1e-4, atol=1e-6)
        plain_out_err = np.sum((x @ (w - p @ q)) ** 2) / np.sum((x @ w) ** 2)
        assert out_err <= plain_out_err + 1e-9  # whitened is optimal on the data it was given


@pytest.mark.parametrize("gemm", [False, True])
def test_rewrite_computes_exactly_the_factors_and_counts_params_and_macs(gemm):
    model = mlp(gemm=gemm)
    out, report = lowrank(model, "kept=0.5,round_to=4,method=svd")
    rows = report.details["layers"]
    assert rows and report.modified
    # the reference: each factorized weight replaced by P @ Q of the same rank, in the original graph
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    by_name = {i.name: i for i in reference.graph.initializer}
    removed = 0
    for row in rows:
        name = "w" + row["node"][2:]
        values = onnx.numpy_helper.to_array(by_name[name])
        attrs = {"transB": 1} if gemm else {}
        p, q = spectrum(as_matrix("Gemm" if gemm else "MatMul", values, attrs)).factors(row["rank"])
        approx = (p @ q).T if gemm else p @ q
        by_name[name].CopyFrom(onnx.numpy_helper.from_array(approx.astype(np.float32), name))
        m, n = row["shape"]
        assert row["params_after"] == row["rank"] * (m + n) < m * n
        removed += m * n - row["rank"] * (m + n)
    feeds = feeds_of(model)
    want, got = run(reference, feeds), run(out, feeds)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=1e-5, rtol=1e-5)
    assert model_counts(model)["params"] - model_counts(out)["params"] == removed
    assert report.stats["params_before"] - report.stats["params_after"] == removed
    assert report.stats["macs_before"] - report.stats["macs_after"] == removed  # one row per sample
    onnx.checker.check_model(out)


def test_conv_becomes_kxk_to_rank_then_1x1_and_matches_the_low_rank_kernel():
    model = conv_net()
    out, report = lowrank(model, "kept=0.5,round_to=4,method=svd")
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("Conv") == 2 + len(report.details["layers"])
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    by_name = {i.name: i for i in reference.graph.initializer}
    for row in report.details["layers"]:
        name = "w" + row["node"][-1]
        values = onnx.numpy_helper.to_array(by_name[name])
        p, q = spectrum(as_matrix("Conv", values, {})).factors(row["rank"])
        by_name[name].CopyFrom(onnx.numpy_helper.from_array((p @ q).T.reshape(values.shape).astype(np.float32), name))
    feeds = feeds_of(model, n=2)
    np.testing.assert_allclose(run(out, feeds)["y"], run(reference, feeds)["y"], atol=1e-4, rtol=1e-4)


def test_budget_holds_and_layers_that_would_not_pay_stay_whole_with_the_reason():
    model = mlp(dims=(32, 48, 40, 6))  # the 40 x 6 head cannot pay at rank 8: 8 * 46 >= 240
    _, report = lowrank(model, "kept=0.6")
    layers = report.details["weights"]
    assert layers["after"] <= 0.6 * layers["budget"]
    reasons = {s.name: s.reason for s in report.skipped}
    assert "would not pay" in reasons["fc2"] and "8 * (40 + 6) >= 40 * 6" in reasons["fc2"]
    assert all(r["rank"] % 8 == 0 for r in report.details["layers"])


def test_allocation_spends_where_the_error_falls_most():
    big = Layer("a", "MatMul", "wa", 64, 64, "x")
    small = Layer("b", "MatMul", "wb", 64, 64, "x")
    # layer a loses much with every rank it gives up, layer b nothing: b gets the smallest rank
    error = lambda layer, r: (1 - r / 64) if layer.node == "a" else 0.001 * (1 - r / 64)
    ranks = allocate([big, small], error, budget=int(0.5 * 2 * 64 * 64), round_to=8)
    assert ranks["b"] == 8 and (ranks["a"] == WHOLE or ranks["a"] > 8)
    with pytest.raises(InputError, match="below the smallest ranks"):
        allocate([big, small], error, budget=100, round_to=8)


def test_whitened_factors_use_the_data_and_beat_plain_svd_on_it():
    model = mlp(dims=(32, 64, 16))
    rng = np.random.default_rng(1)
    scales = np.exp(rng.uniform(-2, 2, 32)).astype(np.float32)  # few input directions matter
    data = {"x": (rng.standard_normal((64, 6, 32)) * scales).astype(np.float32)}
    test = {"x": (rng.standard_normal((32, 6, 32)) * scales).astype(np.float32)}
    errors = {}
    for method in ("svd", "whitened"):
        out, report = lowrank(model, f"kept=0.5,method={method}", data=data)
        assert report.details["method"] == method
        want, got = run(model, test)["h1"], run(out, test)["h1"]
        errors[method] = float(np.sum((want - got) ** 2) / np.sum(want ** 2))
    assert errors["whitened"] < errors["svd"]
    _, auto_report = lowrank(model, "kept=0.5", data=data)
    assert auto_report.details["method"] == "whitened"
    with pytest.raises(InputError, match="need sample data"):
        lowrank(model, "kept=0.5,method=whitened")


def test_model_sensitivity_gives_the_ranks_to_the_layer_the_outputs_care_about():
    """Two equal layers, one scaled down by 0.01 before the sum: measured on the model's outputs, the
    quiet one gets the smallest rank; by their own errors alone they are alike."""
    rng = np.random.default_rng(0)
    w = {name: (rng.standard_normal((32, 32)) / 6).astype(np.float32) for name in ("wa", "wb")}
    nodes = [helper.make_node("MatMul", ["x", "wa"], ["a"], name="loud"),
             helper.make_node("MatMul", ["x", "wb"], ["b0"], name="quiet"),
             helper.make_node("Mul", ["b0", "small"], ["b"]), helper.make_node("Add", ["a", "b"], ["y"])]
    model = make_model(nodes, [tensor("x", ["B", 32])], [tensor("y", None)], {**w, "small": np.float32(0.01)})
    data = {"x": rng.standard_normal((64, 32)).astype(np.float32)}
    ranks = {}
    for how in ("model", "layer"):
        _, report = lowrank(model, f"kept=0.5,round_to=4,sensitivity={how}", data=data)
        ranks[how] = {r["node"]: r["rank"] for r in report.details["layers"]}
        ranks[how].update({s.name: 0 for s in report.skipped})
    assert ranks["model"]["quiet"] == 4 and ranks["model"]["loud"] > ranks["layer"]["loud"]


def test_max_drop_keeps_more_until_the_measured_drop_fits():
    from onnxcomp.errors import ToleranceError

    model = mlp(dims=(32, 64, 16), decay=0.7)
    data = {"x": np.random.default_rng(0).standard_normal((32, 6, 32)).astype(np.float32)}
    _, report = lowrank(model, "kept=0.3,round_to=4,max_drop=0.5", data=data)
    assert report.stats["measured_drop"] <= 0.5
    _, report = lowrank(model, "kept=0.3,round_to=4,max_drop=0.002", data=data)
    assert report.stats["measured_drop"] <= 0.002 and report.stats["kept_used"] > 0.3
    assert report.details["backoff"][0]["kept"] == 0.3
    with pytest.raises(ToleranceError, match="no kept fraction fits"):
        lowrank(model, "kept=0.3,round_to=4,max_drop=0", data=data)
    with pytest.raises(InputError, match="needs sample data"):
        lowrank(model, "kept=0.5,max_drop=0.01")


def test_the_plan_replays_to_the_same_model_and_a_changed_shape_is_refused(tmp_path):
    model = mlp()
    path = tmp_path / "plan.json"
    first, _ = lowrank(model, f"kept=0.5,write_plan={path}")
    plan = json.loads(path.read_text())
    assert plan["method"] == "svd" and all({"node", "shape", "rank"} <= set(e) for e in plan["layers"])
    again, _ = lowrank(model, f"plan={path}")
    assert {k: v.tolist() for k, v in weights(first).items()} == {k: v.tolist() for k, v in weights(again).items()}
    other = mlp(dims=(32, 56, 40, 16))
    with pytest.raises(InputError, match="fc0 has a 32x56 weight, the plan expects 32x48"):
        lowrank(other, f"plan={path}")
    plan["layers"][0]["rank"] = 10_000
    path.write_text(json.dumps(plan))
    with pytest.raises(InputError, match="rank 10000 of fc"):
        lowrank(model, f"plan={path}")


@pytest.mark.parametrize("options, message", [("kept=1", r"kept must be in \(0, 1\)"),
                                              ("kept=0", r"kept must be in \(0, 1\)"),
                                              ("kept=0.5,round_to=0", "round_to must be at least 1")])
def test_fractions_and_ranks_out_of_range_are_one_clear_line(options, message):
    with pytest.raises(InputError, match=message):
        lowrank(mlp(), options)


def test_a_model_with_nothing_to_factorize_is_a_clear_error():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 4])], [tensor("y", None)])
    with pytest.raises(InputError, match="nothing to factorize"):
        lowrank(model, "kept=0.5")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxcomp", *map(str, args)], check=False, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": ""})


def test_cli_shortcut_adds_the_pass_before_fold_bn_and_bad_input_exits_2(tmp_path):
    src = tmp_path / "mlp.onnx"
    onnx.save(mlp(), src)
    r = cli("optimize", src, "-o", tmp_path / "lr.onnx", "--lowrank", "0.5", "--print-pipeline")
    assert r.returncode == 0 and r.stdout.strip() == "cleanup,factorize-lowrank{kept=0.5},fold-bn", r.stdout
    r = cli("optimize", src, "-o", tmp_path / "lr.onnx", "--lowrank", "0.5")
    assert r.returncode == 0, r.stderr
    assert "factorize-lowrank" in r.stdout and (tmp_path / "lr.onnx").exists()
    plan = tmp_path / "plan.json"
    assert cli("optimize", src, "-o", tmp_path / "lr2.onnx", "--passes", f"factorize-lowrank{{write_plan={plan}}}"
               ).returncode == 0
    other = tmp_path / "other.onnx"
    onnx.save(mlp(dims=(32, 56, 40, 16)), other)
    for args, message in ((("--lowrank", "1.5"), "kept must be in (0, 1)"),
                          (("--passes", f"factorize-lowrank{{plan={tmp_path / 'no.json'}}}"), "no such low-rank plan"),
                          (("--passes", f"factorize-lowrank{{plan={plan}}}", "--input-model", other), "plan expects")):
        if "--input-model" in args:
            args, model = args[:2], args[3]
        else:
            model = src
        out = tmp_path / "bad.onnx"
        r = cli("optimize", model, "-o", out, *args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert [line for line in r.stderr.splitlines() if line.startswith("onnxcomp:")] == [r.stderr.strip().splitlines()[-1]]
        assert not out.exists()
    relu = tmp_path / "relu.onnx"
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [1, 4])], [tensor("y", None)]), relu)
    r = cli("optimize", relu, "-o", tmp_path / "none.onnx", "--lowrank", "0.5")
    assert r.returncode == 2 and "nothing to factorize" in r.stderr and not (tmp_path / "none.onnx").exists()


def test_refit_fits_later_layers_on_the_factorized_inputs():
    """With refit, a layer downstream of a factorized one is fitted to give the original outputs from
    the inputs it now gets: the model's output error on the calibration data falls."""
    model = mlp(dims=(32, 48, 40, 16), decay=0.9)
    rng = np.random.default_rng(2)
    data = {"x": rng.standard_normal((64, 6, 32)).astype(np.float32)}
    errors = {}
    for refit in ("false", "true"):
        out, report = lowrank(model, f"kept=0.5,method=whitened,sensitivity=layer,refit={refit}", data=data)
        onnx.checker.check_model(out, full_check=True)
        want, got = run(model, data)["h2"], run(out, data)["h2"]
        errors[refit] = float(np.sum((want - got) ** 2) / np.sum(want ** 2))
        ranks = {r["node"]: r["rank"] for r in report.details["layers"]}
        assert len(ranks) >= 2
    assert errors["true"] < errors["false"], errors


def layer_norm(z, gamma):
    return gamma * (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)


def test_factors_before_a_layernorm_fit_what_the_norm_passes_on():
    """Rows weighted by 1/sigma of the norm's input and the output weight G^T G (G = diag(gamma) centred):
    the exact optimum of that weighted error, and a smaller error after the LayerNorm than input whitening alone."""
    from onnxcomp.passes.lowrank.norms import NormAfter

    rng = np.random.default_rng(3)
    h, d, rows = 48, 24, 600
    w = rng.standard_normal((h, d)) / np.sqrt(h)
    x = rng.standard_normal((rows, h)) * rng.uniform(0.2, 2, h)
    residual = rng.standard_normal((rows, d)) * np.exp(rng.uniform(-1, 2, (rows, 1))) + rng.uniform(-3, 3, d)
    gamma = np.exp(rng.uniform(-2, 1, d))
    z = x @ w + residual
    weighted = x / z.std(1, keepdims=True)
    aware, plain = spectrum(w, weighted.T @ weighted, NormAfter("z", gamma).output_weight()), spectrum(w, x.T @ x)
    g = gamma[:, None] * (np.eye(d) - 1.0 / d)
    for r in (4, 8, 16):
        p, q = aware.factors(r)
        err = np.sum((weighted @ (w - p @ q) @ g.T) ** 2) / np.sum((weighted @ w @ g.T) ** 2)
        assert np.isclose(err, aware.relative_error(r), rtol=1e-3, atol=1e-7)
        after = {}
        for name, s in (("aware", aware), ("plain", plain)):
            p, q = s.factors(r)
            after[name] = np.sum((layer_norm(x @ p @ q + residual, gamma) - layer_norm(z, gamma)) ** 2)
        assert after["aware"] < after["plain"]


def test_the_norm_a_layer_feeds_is_found_through_its_bias_and_residual_adds_only():
    from onnxcomp.graph.convert import to_graph
    from onnxcomp.passes.lowrank.norms import norm_after

    rng = np.random.default_rng(0)
    d = 16
    inits = {"w": rng.standard_normal((d, d)).astype(np.float32), "b": np.zeros(d, np.float32),
             "g": np.ones(d, np.float32), "beta": np.zeros(d, np.float32)}

    def block(axis=-1, extra_reader=False):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
                 helper.make_node("Add", ["m", "b"], ["mb"]), helper.make_node("Add", ["mb", "x"], ["z"]),
                 helper.make_node("LayerNormalization", ["z", "g", "beta"], ["y"], axis=axis)]
        outs = [tensor("y", None)]
        if extra_reader:
            nodes.append(helper.make_node("Relu", ["mb"], ["side"]))
            outs.append(tensor("side", None))
        return to_graph(make_model(nodes, [tensor("x", ["B", 4, d])], outs, inits, opset=17))

    graph = block()
    found = norm_after(next(n for n in graph.nodes if n.name == "fc"), d)
    assert found is not None and found.input == "z" and found.gamma.shape == (d,)
    assert np.allclose(found.output_weight() @ np.ones(d), 0)  # the mean over the channels does not count
    for graph in (block(axis=1), block(extra_reader=True)):
        assert norm_after(next(n for n in graph.nodes if n.name == "fc"), d) is None


def attention_block(m=32, heads=4, seed=0, decay=0.85):
    """x [B, T, m] -> q, k, v projections split into heads -> softmax(q k^T / sqrt(d)) v -> output projection."""
    rng = np.random.default_rng(seed)
    d = m // heads
    inits, nodes = {}, []
    for name in ("q", "k", "v", "o"):
        w = rng.standard_normal((m, m)) / np.sqrt(m)
        u, _, vt = np.linalg.svd(w)
        inits[f"w{name}"] = ((u * decay ** np.arange(m)) @ vt * 3).astype(np.float32)
        inits[f"b{name}"] = (rng.standard_normal(m) * 0.1).astype(np.float32)
    inits["split"] = np.array([0, 0, heads, d], np.int64)
    inits["merge"] = np.array([0, 0, m], np.int64)
    inits["scale"] = np.array(1 / np.sqrt(d), np.float32)
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}m"], name=f"{name}_proj"),
                  helper.make_node("Add", [f"{name}m", f"b{name}"], [f"{name}b"]),
                  helper.make_node("Reshape", [f"{name}b", "split"], [f"{name}r"]),
                  helper.make_node("Transpose", [f"{name}r"], [f"{name}h"], perm=perm)]
    nodes += [helper.make_node("MatMul", ["qh", "kh"], ["s"], name="scores"),
              helper.make_node("Mul", ["s", "scale"], ["ss"]),
              helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["ctx"], name="mix"),
              helper.make_node("Transpose", ["ctx"], ["ct"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ct", "merge"], ["cm"]),
              helper.make_node("MatMul", ["cm", "wo"], ["om"], name="o_proj"),
              helper.make_node("Add", ["om", "bo"], ["y"])]
    return make_model(nodes, [tensor("x", ["B", "T", m])], [tensor("y", None)], inits)


def test_attention_blocks_are_found_and_their_projections_fitted_at_the_block_output(tmp_path):
    """The query, key and value fitted to the error the block's output sees (through softmax and the
    output projection) leave a smaller output error than fitted to their own outputs, at the same ranks."""
    import onnx_graphsurgeon as gs

    from onnxcomp.passes.lowrank.attention import find_attention
    from onnxcomp.passes.lowrank.layers import find_layers

    model = attention_block()
    layers, _ = find_layers(gs.import_onnx(model), 4)
    blocks = find_attention(gs.import_onnx(model), layers)
    assert [(b.q, b.k, b.v, b.o) for b in blocks] == [("q_proj", "k_proj", "v_proj", "o_proj")]
    rng = np.random.default_rng(1)
    x = rng.standard_normal((48, 10, 32)) * rng.uniform(0.3, 2.0, 32) + rng.standard_normal(32)
    data, test = {"x": x[:32].astype(np.float32)}, {"x": x[32:].astype(np.float32)}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "method": "whitened", "kept": 0.5, "layers": [
        {"node": node, "shape": [32, 32], "rank": 6} for node in ("q_proj", "k_proj", "v_proj")]}))
    errors = _errors_without_and_with_downstream(model, plan, data, test, "y")
    assert errors["true"] < 0.9 * errors["false"], errors


def _errors_without_and_with_downstream(model, plan, data, test, output: str) -> dict:
    """Relative squared error of `output` on `test` after the plan's factorization, fitted at each
    layer's own output (downstream=false) and at what the block's output sees (true)."""
    errors = {}
    for downstream in ("false", "true"):
        out, _ = lowrank(model, f"plan={plan},downstream={downstream}", data=data)
        want, got = run(model, test)[output], run(out, test)[output]
        errors[downstream] = float(np.sum((want - got) ** 2) / np.sum(want ** 2))
    return errors


def test_a_feed_forward_up_projection_is_fitted_through_the_activation_and_the_down_projection(tmp_path):
    """x -> fc0 -> Relu -> fc1: fc0 fitted at fc1's output (its slope and weight) gives fc1 a smaller
    output error than fc0 fitted at its own output, at the same rank; no activation recognized, no change."""
    from onnxcomp.passes.lowrank.ffn import _kind

    model = mlp(dims=(32, 48, 16), decay=0.9)
    rng = np.random.default_rng(4)
    data = {"x": (rng.standard_normal((64, 6, 32)) + 0.5).astype(np.float32)}
    test = {"x": (rng.standard_normal((16, 6, 32)) + 0.5).astype(np.float32)}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "method": "whitened", "kept": 0.5,
                                "layers": [{"node": "fc0", "shape": [32, 48], "rank": 8}]}))
    errors = _errors_without_and_with_downstream(model, plan, data, test, "h1")
    assert errors["true"] < 0.9 * errors["false"], errors
    z = rng.standard_normal((5, 7))
    assert _kind(z, np.maximum(z, 0)) == "relu" and _kind(z, np.tanh(z)) is None


def test_attention_key_rows_equal_the_per_query_sums_they_expand():
    """head_key_rows (T x T products) gives the query's sum of A_i^T S A_i and the key's of D_i^T S D_i as the
    per-query definitions do, padded keys (p = 0) included."""
    from onnxcomp.passes.lowrank.attention import head_key_rows

    rng = np.random.default_rng(0)
    nb, t, d, m = 3, 7, 4, 6
    p = rng.random((nb, t, t))
    p[..., -2:] = 0
    p /= p.sum(-1, keepdims=True)
    v, k = rng.standard_normal((2, nb, t, d))
    x = rng.standard_normal((nb, t, m))
    w = rng.standard_normal((d, 5))
    s = w @ w.T
    rows = head_key_rows(p, v, s)
    query, key = np.zeros((d, d)), np.zeros((m, m))
    for b in range(nb):
        for i in range(t):
            c = p[b, i][:, None] * (v[b] - p[b, i] @ v[b])  # t x d: c_ij
            a, dd = c.T @ k[b], c.T @ x[b]  # A_i (d x d), D_i (d x m)
            query += a.T @ s @ a
            key += dd.T @ s @ dd
    assert np.allclose(np.einsum("bjd,bjk,bke->de", k, rows, k), query, rtol=1e-10, atol=1e-12)
    assert np.allclose(np.einsum("bjm,bjk,bkn->mn", x, rows, x), key, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(40, 12), (12, 40), (16, 16)])
def test_gram_svd_gives_the_svd_lapack_gives(shape):
    """The same singular values and the same rank-r products (directions up to sign), wide and tall."""
    from onnxcomp.passes.lowrank.factors import gram_svd

    rng = np.random.default_rng(1)
    a = (rng.standard_normal(shape) * np.exp(-0.2 * np.arange(shape[1]))) @ rng.standard_normal((shape[1],) * 2)
    u, s, vt = gram_svd(a)
    u0, s0, vt0 = np.linalg.svd(a, full_matrices=False)
    assert np.allclose(s, s0, rtol=1e-8, atol=1e-10 * s0[0])
    for r in (1, 5, min(shape)):
        assert np.allclose((u[:, :r] * s[:r]) @ vt[:r], (u0[:, :r] * s0[:r]) @ vt0[:r], atol=1e-8 * s0[0])


def test_probe_feeds_a_candidate_weight_as_a_model_built_with_it_computes(tmp_path):
    """One session, weights fed: the candidate's outputs equal the rebuilt model's; without one, the model's own."""
    from onnxcomp.measure.runtime import session
    from onnxcomp.passes.lowrank.probe import Probe

    for gemm in (False, True):
        model = mlp(gemm=gemm)
        w = weights(model)
        x = feeds_of(model, 4)
        probe = Probe(model, {("fc0", 1): w["w0"], ("fc1", 1): w["w1"]})
        own = session(model).run(None, x)[0]
        assert np.allclose(probe.run(x)[0], own, atol=1e-5)
        candidate = (w["w1"] * 0.5).astype(np.float32)
        changed = onnx.ModelProto()
        changed.CopyFrom(model)
        next(i for i in changed.graph.initializer if i.name == "w1").CopyFrom(onnx.numpy_helper.from_array(candidate, "w1"))
        got = probe.run(x, {("fc1", 1): candidate})[0]
        assert np.allclose(got, session(changed).run(None, x)[0], atol=1e-5) and not np.allclose(got, own, atol=1e-3)
        assert np.allclose(probe.run(x)[0], own, atol=1e-5)  # a candidate is for one run only


def test_probe_run_failure_is_one_input_error_line():
    """A feed the model cannot take fails as measure.runtime.run says it (one line), which in_batches retries on."""
    from onnxcomp.errors import InputError
    from onnxcomp.passes.lowrank.probe import Probe

    model = mlp()
    probe = Probe(model, {("fc0", 1): weights(model)["w0"]})
    bad = {k: v[..., :1] for k, v in feeds_of(model, 2).items()}
    with pytest.raises(InputError, match="ONNX Runtime failed to run the model") as info:
        probe.run(bad)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("op,shape,attrs", [("MatMul", (6, 4), {}), ("Gemm", (4, 6), {"transB": 1}),
                                            ("Conv", (5, 3, 2, 2), {})])
def test_from_matrix_undoes_as_matrix_in_the_node_layout_and_dtype(op, shape, attrs):
    """A probed candidate (sensitivity.py) is fed where the node reads its weight: the layout and dtype it had."""
    from onnxcomp.passes.lowrank.layers import as_matrix, from_matrix

    w = np.random.default_rng(2).standard_normal(shape).astype(np.float16)
    back = from_matrix(op, as_matrix(op, w, attrs), w, attrs)
    assert back.dtype == w.dtype and back.shape == w.shape and np.array_equal(back, w)
