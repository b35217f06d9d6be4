"""factorize-lowrank: ranks shared out by the held-out error, and LayerNorms refitted after factorizing."""

from __future__ import annotations

import numpy as np
import onnx
from helpers import make_model, run, run_pass, tensor
from onnx import helper

from onnxcomp.passes.lowrank.factors import spectrum
from onnxcomp.passes.lowrank.overfit import held_out_error, overfit_scales


def _halves(rows: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, m)) * np.exp(rng.uniform(-2, 1, m))
    a, b = x[0::2], x[1::2]
    return x.T @ x / rows, [a.T @ a / len(a), b.T @ b / len(b)]


def test_held_out_error_is_the_error_of_one_halfs_factors_on_the_other_half():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((20, 12))
    _, (a, b) = _halves(60, 20, 1)
    m = np.diag(rng.uniform(0.5, 2, 12))
    curve = held_out_error(w, a, b, m)
    fit = spectrum(w, a, m)
    for r in (0, 3, 7, 12):
        p, q = fit.factors(r)
        d = w - p @ q
        assert np.isclose(curve[r], np.trace(d.T @ b @ d @ m) / np.trace(w.T @ b @ w @ m), rtol=1e-6, atol=1e-12)


def test_few_rows_in_many_dimensions_overfit_and_many_rows_do_not():
    """The scale (held-out over in-sample error) is large when the rows barely cover the inputs and near 1
    with plenty of rows; a half without rows (one call) scales nothing."""
    w = np.random.default_rng(2).standard_normal((48, 48))
    few = overfit_scales(w, *_halves(80, 48, 3))
    many = overfit_scales(w, *_halves(20_000, 48, 3))
    assert few[24] > 1.5 and many[24] < 1.1, (few[24], many[24])
    assert np.all(few >= 1) and np.all(many >= 1)
    full, (a, _) = _halves(80, 48, 3)
    assert np.all(overfit_scales(w, full, [a, np.zeros_like(a)]) == 1)


def test_input_moments_give_two_halves_whose_mean_is_the_whole():
    import onnx_graphsurgeon as gs

    from onnxcomp.measure.samples import as_samples
    from onnxcomp.passes.lowrank.activations import input_moments
    from onnxcomp.passes.lowrank.layers import find_layers

    model = _residual_norm()
    graph = gs.import_onnx(model)
    layers, _ = find_layers(graph, 2)
    x = np.random.default_rng(4).standard_normal((10, 5, 16)).astype(np.float32)
    full, halves = input_moments(graph, layers, as_samples({"x": x}, model), folds=True)
    rows = x.reshape(-1, 16).astype(np.float64)
    even = x[0::2].reshape(-1, 16).astype(np.float64)
    assert np.allclose(full["fc"], rows.T @ rows / len(rows))
    assert np.allclose(halves[0]["fc"], even.T @ even / len(even))
    assert np.allclose((halves[0]["fc"] + halves[1]["fc"]) / 2, full["fc"])


def _residual_norm(m=16, n=24, seed=5):
    """x [B, T, m] -> MatMul (n) -> + bias -> + residual r (x @ E) -> LayerNorm -> y."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((m, n)) / np.sqrt(m)
    u, _, vt = np.linalg.svd(w, full_matrices=False)
    inits = {"w": ((u * 0.8 ** np.arange(m)) @ vt * 3).astype(np.float32),
             "b": (rng.standard_normal(n) * 0.1).astype(np.float32),
             "e": (rng.standard_normal((m, n)) * 0.3).astype(np.float32),
             "gamma": rng.uniform(0.5, 2, n).astype(np.float32), "beta": (rng.standard_normal(n) * 0.1).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
             helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Mul", ["x", "x"], ["x2"]),
             helper.make_node("MatMul", ["x2", "e"], ["r"], name="side"),
             helper.make_node("Add", ["hb", "r"], ["z"]),
             helper.make_node("LayerNormalization", ["z", "gamma", "beta"], ["y"], name="norm", axis=-1)]
    return make_model(nodes, [tensor("x", ["B", "T", m])], [tensor("y", None)], inits, opset=17)


def test_layernorm_refit_gives_the_original_norm_output_back_better_on_the_fitted_rows(tmp_path):
    """The refit is the least-squares gamma and beta per channel, so on the calibration rows the norm's
    output error can only fall (the old gamma and beta are one candidate); params stay what they were."""
    import json

    model = _residual_norm()
    data = {"x": np.random.default_rng(6).standard_normal((32, 5, 16)).astype(np.float32)}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "method": "whitened", "kept": 0.5,
                                "layers": [{"node": "fc", "shape": [16, 24], "rank": 3}]}))
    errors, params = {}, {}
    for refit in ("false", "true"):
        out, records = run_pass(model, f"factorize-lowrank{{plan={plan},refit_norms={refit}}}", data=data)
        onnx.checker.check_model(out, full_check=True)
        want, got = run(model, data)["y"], run(out, data)["y"]
        errors[refit] = float(np.sum((want - got) ** 2))
        params[refit] = records[0].report.stats["params_after"]
        assert records[0].report.stats.get("norms_refitted", 0) == (1 if refit == "true" else 0)
    assert errors["true"] < 0.99 * errors["false"], errors
    assert params["true"] == params["false"]


def test_narrow_sample_data_is_reported_and_said():
    """The report holds the factorized layers' median held-out / in-sample error; above NARROW the pass says the
    data is narrow for its fits. 20 rows in 48 dimensions are; 4000 rows of the same distribution are not."""
    rng = np.random.default_rng(7)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")], [tensor("x", ["B", "T", 48])],
                       [tensor("y", None)], {"w": rng.standard_normal((48, 48)).astype(np.float32)}, opset=17)
    spread = np.exp(rng.uniform(-2, 1, 48)).astype(np.float32)
    ratios, said = {}, {}
    for name, batch in (("few", 4), ("many", 800)):
        lines = []
        data = {"x": rng.standard_normal((batch, 5, 48)).astype(np.float32) * spread}
        _, records = run_pass(model, "factorize-lowrank{kept=0.5,sensitivity=layer,mask=none}", data=data,
                              progress=lines.append)
        ratios[name] = records[0].report.stats["held_out_ratio"]
        said[name] = any("narrow" in line for line in lines)
    assert ratios["few"] > 1.5 > ratios["many"], ratios
    assert said == {"few": True, "many": False}
