"""smooth-quant (exact scale folding, per-site alpha), INT8 embedding tables and bias correction (insert-qdq)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import make_model, rng_array, run, tensor
from onnx import TensorProto, helper

from onnxcomp.errors import InputError
from onnxcomp.measure.host import host_needs_reduced_range

D, H = 16, 32  # width and FFN width of the post-LN block


def post_ln_block(seed=0):
    """x -> LayerNorm -> FFN (exported GELU: Div/Erf/Add/Mul/Mul 0.5) -> + LayerNorm output (residual) ->
    Mul/Add affine (a decomposed LayerNorm's tail) -> MatMul: every kind of site smooth-quant folds into."""
    rng = np.random.default_rng(seed)
    inits = {"g1": (1 + rng.standard_normal(D)).astype(np.float32), "b1": rng_array(D, seed + 1, 0.1),
             "w1": rng_array((D, H), seed + 2, 0.3), "c1": rng_array(H, seed + 3, 0.1),
             "w2": rng_array((H, D), seed + 4, 0.3), "c2": rng_array(D, seed + 5, 0.1),
             "sqrt2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5),
             "g2": (1 + rng.standard_normal(D)).astype(np.float32), "b2": rng_array(D, seed + 6, 0.1),
             "w3": rng_array((D, 8), seed + 7, 0.3)}
    nodes = [helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["h"], axis=-1),
             helper.make_node("MatMul", ["h", "w1"], ["m1"]), helper.make_node("Add", ["m1", "c1"], ["u"]),
             helper.make_node("Div", ["u", "sqrt2"], ["ud"]), helper.make_node("Erf", ["ud"], ["ue"]),
             helper.make_node("Add", ["ue", "one"], ["ua"]), helper.make_node("Mul", ["u", "ua"], ["um"]),
             helper.make_node("Mul", ["um", "half"], ["gelu"]),
             helper.make_node("MatMul", ["gelu", "w2"], ["m2"]), helper.make_node("Add", ["m2", "c2"], ["f"]),
             helper.make_node("Add", ["h", "f"], ["r"]),
             helper.make_node("Mul", ["r", "g2"], ["ra"]), helper.make_node("Add", ["ra", "b2"], ["rb"]),
             helper.make_node("MatMul", ["rb", "w3"], ["y"])]
    return make_model(nodes, [tensor("x", ["n", 4, D])], [tensor("y", ["n", 4, 8])], inits)


def outlier_block(channels=64, outliers=(3, 17), gain=40.0, seed=0):
    """x -> LayerNorm (a few channels scaled by `gain`, as trained transformers have) -> MatMul."""
    gamma = np.ones(channels, np.float32)
    gamma[list(outliers)] = gain
    inits = {"g": gamma, "b": np.zeros(channels, np.float32), "w": rng_array((channels, channels), seed, 0.1)}
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    return make_model(nodes, [tensor("x", ["n", 8, channels])], [tensor("y", ["n", 8, channels])], inits)


def embedding_model(rows=4000, width=32, seed=0):
    """ids -> Gather(constant table) -> MatMul: a lookup big enough to be stored INT8."""
    inits = {"table": rng_array((rows, width), seed, 0.5), "w": rng_array((width, 16), seed + 1, 0.3)}
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], axis=0), helper.make_node("MatMul", ["e", "w"], ["y"])]
    return make_model(nodes, [tensor("ids", ["n", 8], TensorProto.INT64)], [tensor("y", ["n", 8, 16])], inits)


def data(shape, n, seed, low=None):
    rng = np.random.default_rng(seed)
    x = rng.uniform(low, 1.0, (n, *shape)) if low is not None else rng.standard_normal((n, *shape))
    return {"x": x.astype(np.float32)}


def optimize(model, pipeline, calib=None, **kwargs):
    import onnxcomp

    return onnxcomp.optimize(model, None, pipeline, data=calib, **{"check_output": False, **kwargs})


def cosine(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def details(result, name="insert-qdq"):
    record = next(r for r in result.records if r.name == name)
    return record, record.report.details[name]


# ---------- the exact part ----------

@pytest.mark.parametrize("fold", ["insert", "duplicate"])
def test_folding_any_scale_leaves_outputs_unchanged(fold):
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.graph.edit import NameGen
    from onnxcomp.passes.qdq.smoothquant import apply_scale, find_sites, fold_mode

    model = post_ln_block()
    graph = to_graph(model)
    sites, _ = find_sites(graph)
    modes = {s.name: fold_mode(s, fold) for s in sites}
    # LayerNorm also feeds the residual; GELU's x0.5 is a scalar fusions match; the affine is alone.
    assert modes == {"h": fold, "gelu": "insert", "rb": "in-place"}
    rng = np.random.default_rng(1)
    names = NameGen(graph)
    for site in sites:
        apply_scale(graph, site, rng.uniform(0.2, 5.0, site.channels).astype(np.float32), names, modes[site.name])
    graph.cleanup().toposort()
    smoothed = to_model(graph)
    onnx.checker.check_model(smoothed)
    feeds = data((4, D), 16, seed=2)
    np.testing.assert_allclose(run(smoothed, feeds)["y"], run(model, feeds)["y"], atol=1e-5, rtol=1e-5)
    ops = [n.op_type for n in smoothed.graph.node]
    assert ops.count("LayerNormalization") == (2 if fold == "duplicate" else 1)
    assert ops.count("Mul") == 3 + (2 if fold == "insert" else 1)  # GELU's two, the affine's, the inserted ones


def test_transformer_block_smoothing_is_exact_and_a_second_run_changes_nothing(models_dir):
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import load_data

    block = load_model(models_dir / "transformer_block.onnx")
    calib = {k: v[:32] for k, v in load_data(models_dir / "transformer_calib.npz", block).items()}
    test = load_data(models_dir / "transformer_test.npz", block)
    base = optimize(block, "cleanup").model
    result = optimize(base, "smooth-quant{min_gain=0}", calib, check_output=True, val_data=test)
    record, info = details(result, "smooth-quant")
    assert record.exact and record.report.stats["smoothed_sites"] >= 2  # ln1 -> q, k, v and ln2 -> fc1
    (fold,) = info["attention_scales"]  # q @ k^T / sqrt(16): the Div is gone, /q/MatMul's weight took it
    assert fold["projection"] == "/q/MatMul" and fold["factor"] == pytest.approx(0.25)
    assert "/Div" not in [n.name for n in result.model.graph.node]  # (GELU keeps its /act/Div)
    biases = {row["projection"]: row["kind"] for row in info["attention_biases"]}  # exact: checked below
    assert biases == {"/k/MatMul": "key dropped", "/v/MatMul": "value moved"}
    rows = {row["tensor"]: row for row in info["sites"]}
    ln1 = rows["/ln1/LayerNormalization_output_0"]
    assert ln1["fold"] == "in-place" and sorted(ln1["readers"]) == ["/k/MatMul", "/q/MatMul", "/v/MatMul"]
    assert all(row["error_after"] <= row["error_before"] for row in rows.values())
    for out in result.validation["outputs"]:  # the exact pipeline was compared with the original
        assert out["max_abs"] < 1e-5
    again = optimize(result.model, "smooth-quant", calib)
    assert not details(again, "smooth-quant")[0].report.modified


def attention_block(masked_by_where=False, seed=0, heads=2, d=4):
    """x -> q, k, v projections (with biases) -> heads (Reshape [0, 0, heads, d], Transpose) -> softmax(q k^T + mask)
    -> P v -> merge heads -> output projection (+ bias). `masked_by_where`: the scores pass a Where before the
    softmax that sets the masked ones (masked_fill): a per-row constant in the others no longer cancels."""
    width = heads * d
    rng = np.random.default_rng(seed)
    inits = {f"w{n}": rng_array((width, width), seed + i, 0.5) for i, n in enumerate("qkvo")}
    inits.update({f"b{n}": (rng.standard_normal(width) * 2).astype(np.float32) for n in "qkvo"})
    inits.update({"split": np.array([0, 0, heads, d], np.int64), "merge": np.array([0, 0, width], np.int64),
                  "minus_one": np.float32(-1.0), "low": np.float32(-3.0)})
    nodes = []
    for n in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{n}"], [f"{n}m"]), helper.make_node("Add", [f"{n}m", f"b{n}"], [f"{n}a"]),
                  helper.make_node("Reshape", [f"{n}a", "split"], [f"{n}r"]),
                  helper.make_node("Transpose", [f"{n}r"], [f"{n}t"], perm=[0, 2, 3, 1] if n == "k" else [0, 2, 1, 3])]
    nodes += [helper.make_node("MatMul", ["qt", "kt"], ["scores"]), helper.make_node("Add", ["scores", "mask"], ["masked"])]
    last = "masked"
    if masked_by_where:
        nodes += [helper.make_node("Less", ["mask", "minus_one"], ["hidden"]),
                  helper.make_node("Where", ["hidden", "low", "masked"], ["replaced"])]
        last = "replaced"
    nodes += [helper.make_node("Softmax", [last], ["p"], axis=-1), helper.make_node("MatMul", ["p", "vt"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctxt", "merge"], ["ctxm"]),
              helper.make_node("MatMul", ["ctxm", "wo"], ["om"]), helper.make_node("Add", ["om", "bo"], ["y"])]
    return make_model(nodes, [tensor("x", ["n", "s", width]), tensor("mask", ["n", 1, 1, "s"])],
                      [tensor("y", ["n", "s", width])], inits)


def attention_feeds(n=3, seq=4, width=8, seed=1):
    rng = np.random.default_rng(seed)
    mask = np.where(rng.uniform(size=(n, 1, 1, seq)) < 0.3, -1e4, 0.0).astype(np.float32)
    return {"x": rng.standard_normal((n, seq, width)).astype(np.float32), "mask": mask}


@pytest.mark.parametrize("masked_by_where", [False, True])
def test_attention_biases_are_folded_exactly_and_only_where_exact(masked_by_where):
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.passes.qdq.attention_bias import fold_attention_biases
    from onnxcomp.passes.qdq.attention_paths import probe_shapes

    model = attention_block(masked_by_where)
    graph = to_graph(model)
    rows = fold_attention_biases(graph, probe_shapes(model))
    folded = to_model(graph)
    kinds = {row["bias"]: row["kind"] for row in rows}
    # the key bias cancels only when nothing but Adds lies between Q K^T and the softmax
    assert kinds == ({"bv": "value moved"} if masked_by_where else {"bk": "key dropped", "bv": "value moved"})
    adds = [n.op_type for n in folded.graph.node].count("Add")
    assert adds == [n.op_type for n in model.graph.node].count("Add") - len(rows)
    feeds = attention_feeds()
    np.testing.assert_allclose(run(folded, feeds)["y"], run(model, feeds)["y"], atol=1e-4, rtol=1e-4)
    unfolded = copy_with_zero("bk", model)  # the key bias matters when the Where stands in the way
    changed = np.abs(run(unfolded, feeds)["y"] - run(model, feeds)["y"]).max()
    assert changed > 1e-3 if masked_by_where else changed < 1e-4


def copy_with_zero(name, model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    init = next(i for i in out.graph.initializer if i.name == name)
    init.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(init)), name))
    return out


def test_value_site_scale_goes_into_the_value_projection_exactly():
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.graph.edit import NameGen
    from onnxcomp.passes.qdq.attention_paths import probe_shapes
    from onnxcomp.passes.qdq.smoothquant import apply_scale, find_sites, fold_mode

    model = attention_block()
    graph = to_graph(model)
    assert "ctxm" not in {s.name for s in find_sites(graph)[0]}  # without shapes: not looked for
    (site,) = [s for s in find_sites(graph, shapes=probe_shapes(model))[0] if s.name == "ctxm"]
    assert fold_mode(site) == "in-place" and site.upstream.name == "va"
    assert sorted(n.inputs[i].name for n, i in site.slots) == ["bv", "wv"]
    scale = np.random.default_rng(3).uniform(0.2, 5.0, site.channels).astype(np.float32)
    apply_scale(graph, site, scale, NameGen(graph), "in-place")
    graph.cleanup().toposort()
    feeds = attention_feeds()
    np.testing.assert_allclose(run(to_model(graph), feeds)["y"], run(model, feeds)["y"], atol=1e-4, rtol=1e-4)


# ---------- the lossy choice: INT8 error with an outlier channel ----------

@pytest.mark.parametrize("target", ["ort", "tensorrt"])
def test_smoothing_an_outlier_channel_improves_int8_cosine(target):
    model = outlier_block()
    calib, test = data((8, 64), 64, seed=0), data((8, 64), 32, seed=1)
    ref = run(model, test)["y"]
    plain = optimize(model, f"insert-qdq{{target={target}}}", calib).model
    result = optimize(model, f"smooth-quant,insert-qdq{{target={target}}}", calib)
    _, info = details(result, "smooth-quant")
    (site,) = info["sites"]
    assert site["alpha"] is not None and site["error_after"] < 0.5 * site["error_before"]
    before, after = 1 - cosine(ref, run(plain, test)["y"]), 1 - cosine(ref, run(result.model, test)["y"])
    print(f"{target}: 1 - cosine {before:.2e} without smoothing, {after:.2e} with")
    assert after < 0.5 * before


def test_smoothing_needs_data_and_leaves_models_without_sites_alone():
    with pytest.raises(InputError, match="calibration data is required"):
        optimize(outlier_block(), "smooth-quant")
    result = optimize(embedding_model(), "smooth-quant", {"ids": np.zeros((4, 8), np.int64)})
    record, info = details(result, "smooth-quant")
    assert not record.report.modified and info["sites"] == [] and "note" in info


# ---------- INT8 embedding tables ----------

def test_embedding_table_is_stored_int8_per_row():
    model = embedding_model()
    ids = {"ids": np.random.default_rng(0).integers(0, 4000, (64, 8)).astype(np.int64)}
    ref = run(model, ids)["y"]
    result = optimize(model, "insert-qdq{embeddings=true}", ids)
    record, info = details(result)
    (row,) = info["embeddings"]
    assert record.report.stats["int8_tables"] == 1 and row["layout"] == "gather" and row["sqnr_db"] > 35
    assert row["bytes_after"] < 0.3 * row["bytes_before"]
    assert result.model.ByteSize() < 0.35 * model.ByteSize()
    tables = [t for t in result.model.graph.initializer if tuple(t.dims) == (4000, 32)]
    assert [t.data_type for t in tables] == [TensorProto.INT8]
    assert cosine(ref, run(result.model, ids)["y"]) > 0.999
    plain = optimize(model, "insert-qdq", ids).model  # the option is off by default
    assert [t.data_type for t in plain.graph.initializer if tuple(t.dims) == (4000, 32)] == [TensorProto.FLOAT]


def test_both_table_layouts_compute_the_same_values():
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.passes.qdq.embedding import quantize_tables

    model = embedding_model()
    ids = {"ids": np.random.default_rng(1).integers(0, 4000, (16, 8)).astype(np.int64)}
    outs = {}
    for layout in ("gather", "dequantize"):
        graph = to_graph(model)
        rows, skipped = quantize_tables(graph, layout)
        assert len(rows) == 1 and skipped == []
        quantized = to_model(graph)
        onnx.checker.check_model(quantized)
        outs[layout] = run(quantized, ids)["y"]
        ops = [n.op_type for n in quantized.graph.node]
        assert ("DequantizeLinear" in ops) == (layout == "dequantize")
    np.testing.assert_allclose(outs["gather"], outs["dequantize"], atol=1e-6)


def test_small_tied_and_tensorrt_tables_stay_float():
    ids = {"ids": np.zeros((4, 8), np.int64)}
    small = optimize(embedding_model(rows=100), "insert-qdq{embeddings=true}", ids)
    assert details(small)[1]["embeddings"] == []
    trt = optimize(embedding_model(), "insert-qdq{embeddings=true,target=tensorrt}", ids)
    record, info = details(trt)
    assert info["embeddings"] == [] and any("TensorRT" in s.reason for s in record.report.skipped)


# ---------- bias correction ----------

def biased_layer(k=32, n=8, seed=0):
    """x (positive) -> MatMul -> Add bias, with weights that all round the same way in INT8: every column
    has one entry at 127 steps of its scale and the others 0.45 of a step above an integer."""
    rng = np.random.default_rng(seed)
    step = 0.01
    w = (rng.integers(-60, 60, (k, n)) + 0.45) * step
    w[0] = 127 * step
    inits = {"w": w.astype(np.float32), "bias": rng_array(n, seed, 0.1)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["y"])]
    return make_model(nodes, [tensor("x", ["n", 8, k])], [tensor("y", ["n", 8, n])], inits)


def test_bias_correction_removes_the_mean_output_shift():
    model = biased_layer()
    calib, test = data((8, 32), 64, seed=0, low=0.0), data((8, 32), 64, seed=1, low=0.0)
    ref = run(model, test)["y"]

    def mean_error(pipeline):
        result = optimize(model, pipeline, calib)
        error = run(result.model, test)["y"] - ref
        return float(np.sqrt(np.mean(error.reshape(-1, error.shape[-1]).mean(0) ** 2))), result

    # full-range weights only where ORT's int8 kernels take them (VNNI); an AVX2 host saturates them (host.py)
    reduce = str(host_needs_reduced_range()).lower()
    before, _ = mean_error(f"insert-qdq{{scheme=inputs,reduce_range={reduce}}}")
    after, result = mean_error(f"insert-qdq{{scheme=inputs,reduce_range={reduce},bias_correction=true}}")
    record, info = details(result)
    (row,) = info["bias_correction"]
    assert row["corrected"] and record.report.stats["corrected_biases"] == 1
    assert row["held_out_mean_error_after"] < row["held_out_mean_error_before"]
    print(f"mean output error {before:.4f} -> {after:.4f}")
    assert after < 0.2 * before


def test_bias_correction_leaves_a_noise_shift_alone():
    """Weights that round both ways: the measured shift is noise, so the halves disagree and nothing changes."""
    rng = np.random.default_rng(3)
    inits = {"w": rng_array((32, 8), 3, 0.3), "bias": np.zeros(8, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "bias"], ["y"])]
    model = make_model(nodes, [tensor("x", ["n", 8, 32])], [tensor("y", ["n", 8, 8])], inits)
    calib = {"x": rng.standard_normal((64, 8, 32)).astype(np.float32)}
    _, info = details(optimize(model, "insert-qdq{scheme=inputs,bias_correction=true}", calib))
    (row,) = info["bias_correction"]
    assert not row["corrected"]


# ---------- TensorRT rules and the command line ----------

def test_tensorrt_profile_output_passes_the_rules():
    from onnxcomp.checks import run_checks

    pipeline = ("smooth-quant{min_gain=0,extra_op_gain=0,extra_op_sqnr_db=200},"
                "insert-qdq{target=tensorrt,embeddings=true,bias_correction=true}")
    for model, calib, inserted in ((post_ln_block(), data((4, D), 32, seed=0), 2),
                                   (outlier_block(), data((8, 64), 32, seed=0), 0)):
        result = optimize(model, pipeline, calib, target="tensorrt")
        stats = details(result, "smooth-quant")[0].report.stats
        assert stats.get("smoothed_sites") and stats.get("insert_folds", 0) == inserted
        assert [f.line() for f in run_checks(result.model, "tensorrt") if f.severity != "info"] == []


def test_cli_smooth_flag_and_preset_expand(digits_cnn):
    def pipeline(*args):
        proc = subprocess.run([sys.executable, "-m", "onnxcomp", "optimize", str(digits_cnn), "--print-pipeline",
                               *args], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert pipeline("--passes", "cleanup", "--quantize", "int8", "--smooth", "--quantize-embeddings") == \
        "cleanup,smooth-quant,insert-qdq{embeddings=true}"
    assert pipeline("--passes", "int8-transformer", "--bias-correction", "--target", "tensorrt") == \
        "cleanup,smooth-quant{target=tensorrt},insert-qdq{target=tensorrt,bias_correction=true,embeddings=true}"


# ---------- `--quantize int8`: smooth-quant's folds and INT8 tables by default ----------

def test_quantize_int8_sets_smooth_and_embeddings_unless_a_smooth_quant_pass_does_it(digits_cnn):
    from onnxcomp.cli.optimize import command
    from onnxcomp.cli.shortcuts import apply_shortcuts
    from onnxcomp.pipeline.text import format_pipeline, parse_pipeline

    def pipeline(*args):
        params = dict(command.make_context("optimize", [str(digits_cnn), *args]).params)
        text = params.pop("pipeline") or "cleanup"
        return format_pipeline(apply_shortcuts(parse_pipeline(text), params, text))

    assert pipeline("--passes", "cleanup", "--quantize", "int8") == "cleanup,insert-qdq{embeddings=true,smooth=true}"
    assert pipeline("--passes", "cleanup,smooth-quant", "--quantize", "int8") == \
        "cleanup,smooth-quant,insert-qdq{embeddings=true}"


def test_insert_qdq_smooth_matches_the_smooth_quant_pass_and_leaves_a_cnn_alone():
    model, calib, test = outlier_block(), data((8, 64), 64, seed=0), data((8, 64), 32, seed=1)
    two = optimize(model, "smooth-quant,insert-qdq", calib).model
    one = optimize(model, "insert-qdq{smooth=true}", calib)
    record, _ = details(one)
    assert record.report.stats["smoothed_sites"] == 1
    assert [r["tensor"] for r in record.report.details["smooth-quant"]["sites"]] == ["h"]
    np.testing.assert_allclose(run(one.model, test)["y"], run(two, test)["y"], atol=1e-6)  # the same folds
    ref, plain = run(model, test)["y"], run(optimize(model, "insert-qdq", calib).model, test)["y"]
    assert 1 - cosine(run(one.model, test)["y"], ref) < 0.5 * (1 - cosine(plain, ref))
    # a model without LayerNorm/affine -> MatMul sites: nothing folded, no smooth-quant details
    conv = make_model([helper.make_node("Conv", ["x", "w"], ["y"])], [tensor("x", ["n", 3, 8, 8])],
                      [tensor("y", ["n", 4, 6, 6])], {"w": rng_array((4, 3, 3, 3), 0, 0.3)})
    cnn = optimize(conv, "insert-qdq{smooth=true,embeddings=true}", {"x": rng_array((16, 3, 8, 8), 1, 1.0)})
    record, _ = details(cnn)
    assert "smooth-quant" not in record.report.details and not record.report.stats.get("smoothed_sites")
