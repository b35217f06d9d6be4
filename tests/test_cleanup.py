"""cleanup: identities, dead nodes, duplicate initializers and constant folding, all exact."""

import numpy as np
from helpers import assert_same_outputs, make_model, rng_array, run_pass, tensor
from onnx import TensorProto, helper


def test_removes_identity_dead_nodes_and_duplicates():
    w = rng_array((4, 4), 1)
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"], name="id0"),
        helper.make_node("MatMul", ["x_id", "w1"], ["a"], name="mm1"),
        helper.make_node("MatMul", ["a", "w2"], ["b"], name="mm2"),  # w2 == w1 byte for byte
        helper.make_node("Relu", ["a"], ["dead"], name="dead_relu"),  # output used by nobody
        helper.make_node("Identity", ["b"], ["y"], name="id_out"),  # feeds the graph output
    ]
    model = make_model(nodes, [tensor("x", [2, 4])], [tensor("y", [2, 4])], {"w1": w, "w2": w.copy()})
    out, records = run_pass(model, "cleanup")
    stats = records[0].report.stats
    assert [n.op_type for n in out.graph.node] == ["MatMul", "MatMul"]
    assert stats["identity_removed"] == 2 and stats["duplicate_initializers_merged"] == 1
    assert len(out.graph.initializer) == 1
    assert [o.name for o in out.graph.output] == ["y"]  # the interface keeps its names
    assert_same_outputs(model, out)


def test_folds_constant_subgraph():
    nodes = [
        helper.make_node("Transpose", ["wt"], ["w"], name="t", perm=[1, 0]),
        helper.make_node("Mul", ["w", "two"], ["w2"], name="scale"),
        helper.make_node("MatMul", ["x", "w2"], ["y"], name="mm"),
    ]
    model = make_model(nodes, [tensor("x", ["N", 3])], [tensor("y", None)],
                       {"wt": rng_array((5, 3)), "two": np.float32(2.0)})
    out, records = run_pass(model, "cleanup")
    assert [n.op_type for n in out.graph.node] == ["MatMul"]
    assert records[0].report.stats["constant_nodes_folded"] == 2
    assert_same_outputs(model, out)


def test_quantized_weights_are_not_folded_back_to_float():
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], name="dq"),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    model = make_model(nodes, [tensor("x", [1, 4])], [tensor("y", None)],
                       {"wq": np.arange(16, dtype=np.int8).reshape(4, 4), "ws": np.float32(0.1), "wz": np.int8(0)})
    out, records = run_pass(model, "cleanup")
    assert [n.op_type for n in out.graph.node] == ["DequantizeLinear", "MatMul"]
    assert not records[0].report.modified


def test_second_run_is_a_no_op_and_untouched_models_stay_identical():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = make_model(nodes, [tensor("x", [2, 3])], [tensor("y", [2, 3])])
    out, records = run_pass(model, "cleanup")
    assert not records[0].report.modified
    assert [n.op_type for n in out.graph.node] == ["Relu"]


def test_identity_between_input_and_output_is_kept():
    nodes = [helper.make_node("Identity", ["x"], ["y"], name="id")]
    model = make_model(nodes, [tensor("x", [2], TensorProto.FLOAT)], [tensor("y", [2])])
    out, _ = run_pass(model, "cleanup")
    assert [n.op_type for n in out.graph.node] == ["Identity"]
    assert_same_outputs(model, out)
