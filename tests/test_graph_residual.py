"""onnxcomp.graph.residual: which residual branches can be dropped whole, and dropping them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import make_model, rng_array, tensor
from onnx import helper

from onnxcomp.graph.residual import drop_branches, residual_branches, shared_joins
from onnxcomp.measure.runtime import run_model


def block(leak: bool = False, projection: bool = False) -> onnx.ModelProto:
    """x -> Relu -> [Conv -> Relu -> Conv] + skip -> Relu; the skip is a 1x1 Conv when `projection`."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Conv", ["r", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["a"]),
             helper.make_node("Conv", ["a", "w2"], ["c2"], pads=[1, 1, 1, 1])]
    skip = "r"
    if projection:
        nodes.append(helper.make_node("Conv", ["r", "wp"], ["p"]))
        skip = "p"
    nodes += [helper.make_node("Add", ["c2", skip], ["s"], name="add"), helper.make_node("Relu", ["s"], ["y"])]
    outputs = [tensor("y", ["n", 4, 6, 6])] + ([tensor("a", ["n", 4, 6, 6])] if leak else [])
    weights = {"w1": rng_array((4, 4, 3, 3), 1), "w2": rng_array((4, 4, 3, 3), 2), "wp": rng_array((4, 4, 1, 1), 3)}
    if not projection:
        del weights["wp"]
    return make_model(nodes, [tensor("x", ["n", 4, 6, 6])], outputs, weights)


def test_an_identity_skip_branch_is_found_and_dropping_it_leaves_the_skip():
    model = block()
    [branch] = residual_branches(model)
    assert branch.add == "add" and branch.skip == "r" and branch.convs == 2 and len(branch.nodes) == 3
    dropped = drop_branches(model, ["add"])
    onnx.checker.check_model(dropped)
    assert [n.op_type for n in dropped.graph.node] == ["Relu", "Relu"]
    assert {t.name for t in dropped.graph.initializer} == set()
    x = rng_array((2, 4, 6, 6), 4)
    np.testing.assert_array_equal(run_model(dropped, {"x": x})["y"], np.maximum(x, 0))


@pytest.mark.parametrize("kind", ["projection", "leak"])
def test_a_branch_that_is_not_droppable_is_not_found(kind):
    model = block(leak=kind == "leak", projection=kind == "projection")
    assert residual_branches(model) == []
    with pytest.raises(ValueError, match="no droppable residual branch at add"):
        drop_branches(model, ["add"])


def test_the_digits_cnn_has_one_droppable_block(digits_cnn):
    model = onnx.load(str(digits_cnn))
    assert [b.add for b in residual_branches(model)] == ["/layer1/Add"]  # the stride-2 blocks have projections


def test_the_features_to_match_are_the_joins_the_student_kept_after_their_activation(digits_cnn):
    teacher = onnx.load(str(digits_cnn))
    after = ["/layer1/relu_1/Relu_output_0", "/layer2/relu_1/Relu_output_0", "/layer3/relu_1/Relu_output_0"]
    assert shared_joins(teacher, teacher) == after  # what the next block reads, not the Add before the ReLU
    student = drop_branches(teacher, ["/layer1/Add"])
    assert shared_joins(teacher, student) == after[1:]  # the dropped block joins nothing any more
    assert shared_joins(teacher, student, limit=1) == after[2:]


def test_a_join_the_teacher_lacks_or_shapes_that_differ_beyond_channels_are_not_matched():
    student = block()
    renamed = block()
    for n in renamed.graph.node:
        n.output[:] = [f"t_{o}" if o == "y" else o for o in n.output]
    renamed.graph.output[0].name = "t_y"
    assert shared_joins(block(), student) == ["y"] and shared_joins(renamed, student) == []
    pooled = block()
    pooled.graph.node[-1].op_type = "MaxPool"  # the teacher's "y" pooled: same name, another shape
    for k, v in {"kernel_shape": [2, 2], "strides": [2, 2]}.items():
        pooled.graph.node[-1].attribute.append(helper.make_attribute(k, v))
    assert shared_joins(pooled, block()) == []  # the teacher's "y" is 3x3, the student's 6x6
