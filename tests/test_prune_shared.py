"""remove-channels on constants read by several nodes: tied weights and shared shape constants.

cleanup merges equal initializers (the model zoo's dummy weights, repeated layers), so one
weight may be the output weight of one Conv and the input weight of the next, or be read by
two Convs whose groups differ. Each reader must end up with the slice its own groups need.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import make_model, random_feeds, run, run_pass, tensor
from onnx import helper
from prune_builders import Net

from onnxcomp.errors import InputError


def prune(model, options: str = "ratio=0.5,round_to=2"):
    out, records = run_pass(model, f"remove-channels{{{options}}}")
    onnx.checker.check_model(out, full_check=True)
    return out, records[-1].report


def readers_of(model) -> dict[str, list[str]]:
    inits = {i.name for i in model.graph.initializer}
    found: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits:
                found.setdefault(name, []).append(node.name)
    return found


def shapes(model) -> dict[str, tuple]:
    return {i.name: tuple(i.dims) for i in model.graph.initializer}


def test_a_weight_tied_between_consecutive_convs_gets_a_copy_per_reader():
    # zfnet after cleanup: conv4 and conv5 are equal, so one [8, 8, 3, 3] weight is the output
    # weight of c2 and the input weight of c3 (and c3's output weight)
    net = Net(3)
    x = net.unary(net.conv(net.x, 8))
    tied = net.const("tied", net.rng.standard_normal((8, 8, 3, 3)) * 0.3)
    y = net.unary(net.node("Conv", [x, tied], 8, pads=[1] * 4))
    z = net.unary(net.node("Conv", [y, tied], 8, pads=[1] * 4))
    model = net.model(net.head(z))
    out, report = prune(model)
    assert report.stats["groups_pruned"] == 3  # c1, c2 and c3's outputs all lose half
    widths = [shapes(out)[n.input[1]] for n in out.graph.node if n.op_type == "Conv"]
    assert widths == [(4, 3, 3, 3), (4, 4, 3, 3), (4, 4, 3, 3)]
    assert "tied" not in readers_of(out)  # each reader has its own sliced copy, the original is gone
    feeds = random_feeds(model)
    assert run(out, feeds)[out.graph.output[0].name].shape == run(model, feeds)[model.graph.output[0].name].shape
    assert report.details["params"]["removed_predicted"] == report.details["params"]["before"] - \
        report.details["params"]["after"]


def test_a_weight_tied_with_a_reader_no_group_prunes_stays_whole():
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 4, 1, 1)).astype(np.float32),
             "w2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
             helper.make_node("Relu", ["a"], ["r"], name="r1"),
             helper.make_node("Conv", ["r", "w2"], ["b"], name="c2"),
             helper.make_node("Conv", ["x", "w"], ["y2"], name="c3")]  # c3's output is a graph output
    model = make_model(nodes, [tensor("x", [1, 4, 3, 3])], [tensor("b", None), tensor("y2", None)], inits)
    with pytest.raises(InputError, match="constant w is also read by c3"):
        prune(model, "ratio=0.5,round_to=1")  # a copy for c1 alone would add parameters, not remove them


def test_two_convs_reading_one_weight_in_one_group_share_one_slice():
    net = Net(4)
    tied = net.const("tied", net.rng.standard_normal((8, 4, 3, 3)) * 0.3)
    a = net.node("Conv", [net.x, tied], 8, pads=[1] * 4)
    b = net.node("Conv", [net.unary(net.x, "Sigmoid"), tied], 8, pads=[1] * 4)
    model = net.model(net.head(net.unary(net.conv(net.unary(net.add(a, b)), 8))))
    out, report = prune(model)
    assert report.stats["groups_pruned"] == 2
    assert shapes(out)[tied] == (4, 4, 3, 3) and len(readers_of(out)[tied]) == 2  # still tied


def test_a_reshape_shape_shared_by_two_groups_is_rewritten_per_reader():
    net = Net(3)
    shape = net.const_int("shape", [0, 8, -1])
    pruned = net.node("Reshape", [net.unary(net.conv(net.x, 8)), shape], 8)
    flat = net.node("Flatten", [net.node("ReduceMean", [pruned], 8, axes=[2], keepdims=0)], 8, axis=1)
    logits = net.node("Gemm", [flat, net.const("fc", net.rng.standard_normal((4, 8))), net.const("fcb", np.zeros(4))],
                      4, transB=1)
    whole = net.node("Reshape", [net.unary(net.conv(net.x, 8)), shape], 8)  # a graph output: stays whole
    model = make_model(net.nodes, net.inputs, [tensor(logits, None), tensor(whole, None)], net.inits)
    out, report = prune(model)
    assert report.stats["groups_pruned"] == 1
    values = {n.name: onnx.numpy_helper.to_array(next(i for i in out.graph.initializer if i.name == n.input[1])).tolist()
              for n in out.graph.node if n.op_type == "Reshape"}
    assert sorted(values.values()) == [[0, 4, -1], [0, 8, -1]]
    feeds = random_feeds(model)
    got, want = run(out, feeds), run(model, feeds)
    assert got[whole].shape == want[whole].shape and got[logits].shape == want[logits].shape


def test_resize_sizes_from_shape_slices_of_two_tensors():
    # PaddleOCR's FPN: Resize(top, sizes=Concat(Shape(top)[0:2], Shape(lateral)[2:4])) then Concat with lateral:
    # the lateral's Shape gives only spatial sizes, the top's gives the channel count the Resize must follow
    net = Net(3)
    lateral = net.unary(net.conv(net.x, 16))
    top = net.unary(net.conv(net.node("MaxPool", [lateral], 16, kernel_shape=[2, 2], strides=[2, 2]), 16))
    pieces = []
    for t, (lo, hi) in ((top, (0, 2)), (lateral, (2, 4))):
        shape = net.node("Shape", [t], 0)
        pieces.append(net.node("Slice", [net.node("Cast", [shape], 0, to=onnx.TensorProto.INT32),
                                         net.const_int("lo", [lo]), net.const_int("hi", [hi]),
                                         net.const_int("ax", [0])], 0))
    sizes = net.node("Cast", [net.node("Concat", pieces, 0, axis=0)], 0, to=onnx.TensorProto.INT64)
    up = net.node("Resize", [top, "", "", sizes], 16, mode="nearest")
    model = net.model(net.head(net.unary(net.conv(net.concat([up, lateral]), 16))))
    out, report = prune(model, "ratio=0.5,round_to=4")
    wide = [r for r in report.details["groups"] if r["channels"] == 16]
    assert len(wide) == 3 and all(r["reason"] is None and r["after"] == 8 for r in wide), wide
    feeds = random_feeds(model)
    assert run(out, feeds)[out.graph.output[0].name].shape == run(model, feeds)[model.graph.output[0].name].shape
