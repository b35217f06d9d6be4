"""fold-bn: folds BN into Conv/ConvTranspose/Gemm exactly, refuses with reasons otherwise."""

import numpy as np
import pytest
from helpers import assert_same_outputs, make_model, rng_array, run_pass, tensor
from onnx import helper


def bn_params(prefix: str, c: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {f"{prefix}_scale": rng.uniform(0.5, 2, c).astype(np.float32),
            f"{prefix}_bias": rng.standard_normal(c).astype(np.float32),
            f"{prefix}_mean": rng.standard_normal(c).astype(np.float32),
            f"{prefix}_var": rng.uniform(0.1, 3, c).astype(np.float32)}


def bn_node(x: str, y: str, prefix: str, **attrs):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")],
                            [y], name=f"{prefix}_bn", **attrs)


def conv_bn_model(bias: bool, group: int = 1):
    inits = {"w": rng_array((8, 4 // group, 3, 3), 1), **bn_params("b", 8, 2)}
    ins = ["x", "w"]
    if bias:
        inits["cb"] = rng_array((8,), 3)
        ins.append("cb")
    nodes = [helper.make_node("Conv", ins, ["c"], name="conv", pads=[1, 1, 1, 1], group=group),
             bn_node("c", "y", "b", epsilon=1e-3)]
    return make_model(nodes, [tensor("x", ["N", 4, 6, 6])], [tensor("y", None)], inits)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("group", [1, 2])
def test_conv_bn_folds_exactly(bias, group):
    model = conv_bn_model(bias, group)
    out, records = run_pass(model, "fold-bn")
    assert [n.op_type for n in out.graph.node] == ["Conv"]
    assert records[0].report.stats["folded"] == 1 and records[0].report.modified
    assert_same_outputs(model, out)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_bn_folds_exactly(group):
    inits = {"w": rng_array((4, 6 // group, 3, 3), 1), **bn_params("b", 6, 2)}
    nodes = [helper.make_node("ConvTranspose", ["x", "w"], ["c"], name="deconv", strides=[2, 2], group=group),
             bn_node("c", "y", "b")]
    model = make_model(nodes, [tensor("x", [1, 4, 5, 5])], [tensor("y", None)], inits)
    out, _ = run_pass(model, "fold-bn")
    assert [n.op_type for n in out.graph.node] == ["ConvTranspose"]
    assert_same_outputs(model, out)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("with_c", [True, False])
def test_gemm_bn_folds_exactly(trans_b, with_c):
    w = rng_array((5, 7) if trans_b else (7, 5), 1)
    inits = {"w": w, **bn_params("b", 5, 2)}
    ins = ["x", "w"]
    if with_c:
        inits["c"] = rng_array((5,), 3)
        ins.append("c")
    nodes = [helper.make_node("Gemm", ins, ["g"], name="gemm", transB=trans_b, alpha=0.7, beta=1.3),
             bn_node("g", "y", "b")]
    model = make_model(nodes, [tensor("x", ["N", 7])], [tensor("y", None)], inits)
    out, _ = run_pass(model, "fold-bn")
    assert [n.op_type for n in out.graph.node] == ["Gemm"]
    assert_same_outputs(model, out)


def test_refuses_when_conv_output_is_shared():
    inits = {"w": rng_array((8, 4, 3, 3), 1), **bn_params("b", 8, 2)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             bn_node("c", "y", "b"), helper.make_node("Relu", ["c"], ["r"], name="relu")]
    model = make_model(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", None), tensor("r", None)], inits)
    out, records = run_pass(model, "fold-bn")
    report = records[0].report
    assert not report.modified
    assert report.skipped[0].name == "b_bn" and "other consumers" in report.skipped[0].reason
    assert sum(n.op_type == "BatchNormalization" for n in out.graph.node) == 1


def test_refuses_bn_after_non_weighted_op():
    inits = bn_params("b", 4, 2)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), bn_node("r", "y", "b")]
    model = make_model(nodes, [tensor("x", [1, 4, 3, 3])], [tensor("y", None)], inits)
    _, records = run_pass(model, "fold-bn")
    assert "comes from Relu" in records[0].report.skipped[0].reason


def test_second_run_changes_nothing(digits_cnn):
    from onnxcomp.graph.load import load_model

    model = load_model(digits_cnn)
    once, first = run_pass(model, "cleanup,fold-bn")
    assert not any(n.op_type == "BatchNormalization" for n in once.graph.node)
    assert first[1].report.stats["folded"] == 9
    twice, second = run_pass(once, "cleanup,fold-bn")
    assert not any(r.report.modified for r in second)
    assert len(twice.graph.node) == len(once.graph.node)
    assert_same_outputs(model, once, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("between", ["identity", "dead_reader"])
def test_folds_without_cleanup_first(between):
    """fold-bn looks through Identity and ignores dead readers, so "fold-bn,cleanup" is idempotent."""
    inits = {"w": rng_array((8, 4, 3, 3), 1), **bn_params("b", 8, 2)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    if between == "identity":
        nodes += [helper.make_node("Identity", ["c"], ["i"], name="id"), bn_node("i", "y", "b")]
    else:
        nodes += [helper.make_node("Relu", ["c"], ["unused"], name="dead"), bn_node("c", "y", "b")]
    model = make_model(nodes, [tensor("x", [1, 4, 6, 6])], [tensor("y", None)], inits)
    out, records = run_pass(model, "fold-bn")
    assert records[0].report.stats["folded"] == 1
    assert [n.op_type for n in out.graph.node] == ["Conv"]
    assert_same_outputs(model, out)
