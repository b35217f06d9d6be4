"""The ONNX -> torch interpreter reproduces ONNX Runtime, trains through its parameters, refuses what it lacks."""

import numpy as np
import onnx
import pytest
import torch
from helpers import make_model, rng_array, run, tensor
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.distill.onnx_to_torch import OnnxModule, check_supported
from onnxcomp.errors import InputError

torch.set_num_threads(2)


def interpret(model, feeds, train=False):
    module = OnnxModule(model)
    module.train(train)
    with torch.no_grad():
        outs = module(*[torch.from_numpy(feeds[name]) for name in module.input_names])
    return dict(zip(module.output_names, [o.numpy() for o in outs]))


def assert_matches_ort(model, feeds, atol=1e-5, rtol=1e-5):
    expected, got = run(model, feeds), interpret(model, feeds)
    assert expected.keys() == got.keys()
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        np.testing.assert_allclose(got[name], expected[name], atol=atol, rtol=rtol, err_msg=name)


@pytest.mark.parametrize("name,shape", [("digits_cnn", (5, 1, 32, 32)), ("mlp", (5, 64)),
                                        ("transformer_block", (3, 16, 64)), ("transformer_block", (2, 7, 64))])
def test_models_match_ort(models_dir, name, shape):
    model = onnx.load(str(models_dir / f"{name}.onnx"))
    feeds = {model.graph.input[0].name: rng_array(shape, seed=len(shape))}
    assert_matches_ort(model, feeds)


def test_digits_real_data_matches_ort(models_dir):
    model = onnx.load(str(models_dir / "digits_cnn.onnx"))
    x = np.load(models_dir / "digits_test.npz")["input"][:64]
    expected, got = run(model, {"input": x})["logits"], interpret(model, {"input": x})["logits"]
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_parameters_are_the_weights_and_train(models_dir):
    model = onnx.load(str(models_dir / "digits_cnn.onnx"))
    module = OnnxModule(model)
    names = set(module.parameter_names.values())
    assert "fc.weight" in names and "fc.bias" in names
    stats = {n for n, (kind, _) in module.key_of.items() if kind == "stat"}
    assert len(stats) == 18  # 9 BatchNorms x (running mean, running var): buffers, not parameters
    assert not names & stats
    x = torch.from_numpy(rng_array((4, 1, 32, 32)))
    module.train()
    module(x)[0].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
    mean = module.initializer_tensor(sorted(stats)[0]).clone()
    module(x)
    assert not torch.equal(mean, module.initializer_tensor(sorted(stats)[0]))  # running stats update in train mode


def _single(op_type, inputs, outputs, inits=(), **attrs):
    node = helper.make_node(op_type, [i for i in [n for n, *_ in inputs] + [n for n, _ in inits]],
                            [n for n, _ in outputs], **attrs)
    return make_model([node], [tensor(n, s) for n, s in inputs], [tensor(n, s) for n, s in outputs], inits)


OP_CASES = [
    ("Gemm-trans-alpha-beta", lambda: _single("Gemm", [("a", [6, 3])], [("y", None)],
                                              [("b", rng_array((5, 6), 1)), ("c", rng_array((5,), 2))],
                                              transA=1, transB=1, alpha=0.5, beta=2.0), {"a": (6, 3)}),
    ("Conv-stride-pads-group", lambda: _single("Conv", [("x", [2, 4, 9, 9])], [("y", None)],
                                               [("w", rng_array((6, 2, 3, 3), 1)), ("b", rng_array((6,), 2))],
                                               strides=[2, 2], pads=[1, 0, 1, 0], group=2), {"x": (2, 4, 9, 9)}),
    ("Conv-same-upper", lambda: _single("Conv", [("x", [1, 2, 8, 8])], [("y", None)],
                                        [("w", rng_array((3, 2, 4, 4), 1))], auto_pad="SAME_UPPER", strides=[2, 2]),
     {"x": (1, 2, 8, 8)}),
    ("ConvTranspose", lambda: _single("ConvTranspose", [("x", [1, 4, 5, 5])], [("y", None)],
                                      [("w", rng_array((4, 3, 3, 3), 1)), ("b", rng_array((3,), 2))],
                                      strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]), {"x": (1, 4, 5, 5)}),
    ("MaxPool-asym-ceil", lambda: _single("MaxPool", [("x", [1, 2, 7, 7])], [("y", None)], kernel_shape=[3, 3],
                                          strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1), {"x": (1, 2, 7, 7)}),
    ("AveragePool-pads-exclude", lambda: _single("AveragePool", [("x", [1, 2, 6, 6])], [("y", None)],
                                                 kernel_shape=[3, 3], pads=[1, 1, 1, 1]), {"x": (1, 2, 6, 6)}),
    ("AveragePool-pads-include", lambda: _single("AveragePool", [("x", [1, 2, 6, 6])], [("y", None)],
                                                 kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
     {"x": (1, 2, 6, 6)}),
    ("LeakyRelu", lambda: _single("LeakyRelu", [("x", [3, 4])], [("y", None)], alpha=0.2), {"x": (3, 4)}),
    ("Sigmoid", lambda: _single("Sigmoid", [("x", [3, 4])], [("y", None)]), {"x": (3, 4)}),
    ("Tanh", lambda: _single("Tanh", [("x", [3, 4])], [("y", None)]), {"x": (3, 4)}),
    ("Clip", lambda: _single("Clip", [("x", [3, 4])], [("y", None)],
                             [("lo", np.array(-0.5, np.float32)), ("hi", np.array(0.7, np.float32))]), {"x": (3, 4)}),
    ("Softmax-axis1", lambda: _single("Softmax", [("x", [2, 3, 4])], [("y", None)], axis=1), {"x": (2, 3, 4)}),
    ("Split", lambda: make_model([helper.make_node("Split", ["x", "s"], ["a", "b"], axis=1)],
                                 [tensor("x", [2, 5])], [tensor("a", None), tensor("b", None)],
                                 [("s", np.array([2, 3], np.int64))]), {"x": (2, 5)}),
    ("Slice-Concat", lambda: make_model(
        [helper.make_node("Slice", ["x", "st", "en", "ax"], ["s"]),
         helper.make_node("Concat", ["s", "x"], ["y"], axis=1)],
        [tensor("x", [2, 6])], [tensor("y", None)],
        [("st", np.array([1], np.int64)), ("en", np.array([-1], np.int64)), ("ax", np.array([1], np.int64))]),
     {"x": (2, 6)}),
    ("LayerNorm-decomposed", lambda: make_model(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]), helper.make_node("Sub", ["x", "m"], ["d"]),
         helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["v"], axes=[-1]),
         helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
         helper.make_node("Div", ["d", "sd"], ["n"]), helper.make_node("Mul", ["n", "g"], ["y"])],
        [tensor("x", [2, 3, 8])], [tensor("y", None)],
        [("two", np.array(2.0, np.float32)), ("eps", np.array(1e-5, np.float32)), ("g", rng_array((8,), 3))]),
     {"x": (2, 3, 8)}),
    ("Reshape-zero-Transpose-Flatten", lambda: make_model(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
         helper.make_node("Flatten", ["t"], ["y"], axis=1)],
        [tensor("x", [2, 12])], [tensor("y", None)], [("shape", np.array([0, 3, -1], np.int64))]), {"x": (2, 12)}),
    ("Cast-Gather-Unsqueeze", lambda: make_model(
        [helper.make_node("Gather", ["x", "idx"], ["g"], axis=1), helper.make_node("Unsqueeze", ["g", "axes"], ["u"]),
         helper.make_node("Cast", ["u"], ["y"], to=TensorProto.FLOAT)],
        [tensor("x", [2, 5])], [tensor("y", None)],
        [("idx", np.array([4, 0, -1], np.int64)), ("axes", np.array([0], np.int64))]), {"x": (2, 5)}),
]


@pytest.mark.parametrize("name,build,shapes", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_ops_match_ort(name, build, shapes):
    model = build()
    feeds = {k: rng_array(s, seed=7) for k, s in shapes.items()}
    assert_matches_ort(model, feeds)


def test_unsupported_op_is_named():
    model = make_model([helper.make_node("Relu", ["x"], ["r"], name="fine"),
                        helper.make_node("TopK", ["r", "k"], ["v", "i"], name="the_topk")],
                       [tensor("x", [2, 6])], [tensor("v", None), tensor("i", None, TensorProto.INT64)],
                       [("k", np.array([2], np.int64))])
    with pytest.raises(InputError, match=r"unsupported op\(s\).*TopK.*the_topk"):
        check_supported(model)
    with pytest.raises(InputError, match="TopK"):
        OnnxModule(model)


def _ints(shape, seed=0, low=-3, high=4):
    return np.random.default_rng(seed).integers(low, high, shape).astype(np.int64)


def _bools(shape, seed=0):
    return np.random.default_rng(seed).random(shape) < 0.5


# Ops of real exports' mask and position subgraphs, and of signal/vision models: explicit feeds, since
# integer and boolean inputs need their own values (broadcasting on purpose).
FED_CASES = [
    ("Range-int", lambda: make_model([helper.make_node("Range", ["s", "l", "d"], ["y"])],
                                     [tensor("s", [], TensorProto.INT64), tensor("l", [], TensorProto.INT64),
                                      tensor("d", [], TensorProto.INT64)], [tensor("y", None, TensorProto.INT64)]),
     {"s": np.array(7, np.int64), "l": np.array(-4, np.int64), "d": np.array(-3, np.int64)}),
    ("Range-float", lambda: make_model([helper.make_node("Range", ["s", "l", "d"], ["y"])],
                                       [tensor("s", []), tensor("l", []), tensor("d", [])], [tensor("y", None)]),
     {"s": np.array(0.5, np.float32), "l": np.array(3.2, np.float32), "d": np.array(0.7, np.float32)}),
    ("Compare-logic-broadcast", lambda: make_model(
        [helper.make_node("GreaterOrEqual", ["a", "b"], ["ge"]), helper.make_node("Less", ["a", "b"], ["lt"]),
         helper.make_node("Greater", ["a", "b"], ["gt"]), helper.make_node("LessOrEqual", ["a", "b"], ["le"]),
         helper.make_node("And", ["ge", "m"], ["and"]), helper.make_node("Or", ["lt", "m"], ["or"]),
         helper.make_node("Xor", ["gt", "le"], ["xor"]), helper.make_node("Not", ["and"], ["y"])],
        [tensor("a", [3, 4], TensorProto.INT64), tensor("b", [4], TensorProto.INT64), tensor("m", [3, 1], TensorProto.BOOL)],
        [tensor(n, None, TensorProto.BOOL) for n in ("y", "or", "xor")]),
     {"a": _ints((3, 4), 1), "b": _ints((4,), 2), "m": _bools((3, 1), 3)}),
    ("Mask-subgraph-Where", lambda: make_model(
        [helper.make_node("Cast", ["mask"], ["mb"], to=TensorProto.BOOL),
         helper.make_node("Range", ["zero", "n", "one"], ["pos"]),
         helper.make_node("GreaterOrEqual", ["pos", "zero"], ["valid"]),
         helper.make_node("And", ["mb", "valid"], ["keep"]),
         helper.make_node("Where", ["keep", "x", "low"], ["y"])],
        [tensor("mask", [2, 5], TensorProto.INT64), tensor("x", [2, 5])], [tensor("y", None)],
        [("zero", np.array(0, np.int64)), ("n", np.array(5, np.int64)), ("one", np.array(1, np.int64)),
         ("low", np.array(np.finfo(np.float32).min, np.float32))]),
     {"mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int64), "x": rng_array((2, 5), 4)}),
    ("Max-Min-Sum-variadic", lambda: make_model(
        [helper.make_node("Max", ["a", "b", "c"], ["mx"]), helper.make_node("Min", ["a", "c"], ["mn"]),
         helper.make_node("Sum", ["mx", "mn", "b"], ["y"])],
        [tensor("a", [2, 3, 4]), tensor("b", [3, 1]), tensor("c", [4])], [tensor("y", None)]),
     {"a": rng_array((2, 3, 4), 1), "b": rng_array((3, 1), 2), "c": rng_array((4,), 3)}),
    ("Sin-Cos", lambda: make_model([helper.make_node("Sin", ["x"], ["s"]), helper.make_node("Cos", ["x"], ["c"]),
                                    helper.make_node("Mul", ["s", "c"], ["y"])],
                                   [tensor("x", [3, 4])], [tensor("y", None)]), {"x": rng_array((3, 4), 5, 3.0)}),
    ("ReduceMin-axes-input", lambda: make_model(
        [helper.make_node("ReduceMin", ["x", "axes"], ["y"], keepdims=0)], [tensor("x", [2, 3, 4])],
        [tensor("y", None)], [("axes", np.array([-1, 0], np.int64))], opset=18), {"x": rng_array((2, 3, 4), 6)}),
    ("ReduceMin-opset13-attr", lambda: make_model(
        [helper.make_node("ReduceMin", ["x"], ["y"], axes=[1])], [tensor("x", [2, 3, 4])], [tensor("y", None)]),
     {"x": rng_array((2, 3, 4), 7)}),
]
for _mode in ("exclusive", "reverse", "both", "plain"):
    FED_CASES.append((f"CumSum-{_mode}", lambda mode=_mode: make_model(
        [helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=int(mode in ("exclusive", "both")),
                          reverse=int(mode in ("reverse", "both")))],
        [tensor("x", [2, 5], TensorProto.INT64)], [tensor("y", None, TensorProto.INT64)],
        [("axis", np.array(-1, np.int64))]), {"x": _ints((2, 5), 8)}))
FED_CASES.append(("CumSum-float-axis0", lambda: make_model(
    [helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1)], [tensor("x", [4, 3])], [tensor("y", None)],
    [("axis", np.array(0, np.int32))]), {"x": rng_array((4, 3), 9)}))
for _mode, _pads in (("constant", [1, 0, 2, 0, -1, 3]), ("reflect", [0, 2, 1, 0, 3, 2]),
                     ("edge", [1, 0, 2, 2, 1, -1]), ("wrap", [0, 1, 3, 0, 2, 1])):
    FED_CASES.append((f"Pad-{_mode}", lambda mode=_mode, pads=_pads: make_model(
        [helper.make_node("Pad", ["x", "pads", "value"], ["y"], mode=mode)], [tensor("x", [2, 4, 5])],
        [tensor("y", None)], [("pads", np.array(pads, np.int64)), ("value", np.array(0.5, np.float32))],
        opset=19), {"x": rng_array((2, 4, 5), 10)}))
FED_CASES += [
    ("Constant-scalar-Gather-Concat", lambda: make_model(  # a scalar Constant stays 0-D: Gather then drops the axis
        [helper.make_node("Constant", [], ["i"], value=numpy_helper.from_array(np.array(1, np.int64))),
         helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "i"], ["g"]),
         helper.make_node("Unsqueeze", ["g", "ax"], ["u"]), helper.make_node("Concat", ["u", "rest"], ["c"], axis=0),
         helper.make_node("Reshape", ["x", "c"], ["y"])],
        [tensor("x", [2, 3])], [tensor("y", None)], [("ax", np.array([0], np.int64)), ("rest", np.array([-1], np.int64))]),
     {"x": rng_array((2, 3), 13)}),
    ("Pad-axes-opset18", lambda: make_model(
        [helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="reflect")], [tensor("x", [2, 3, 6])],
        [tensor("y", None)], [("pads", np.array([2, 1], np.int64)), ("axes", np.array([-1], np.int64))], opset=18),
     {"x": rng_array((2, 3, 6), 11)}),
    ("Pad-opset2-attr", lambda: make_model(
        [helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 1, 0], value=-2.0)], [tensor("x", [3, 4])],
        [tensor("y", None)], opset=10), {"x": rng_array((3, 4), 12)}),
]


@pytest.mark.parametrize("name,build,feeds", FED_CASES, ids=[c[0] for c in FED_CASES])
def test_fed_ops_match_ort(name, build, feeds):
    model = build()
    expected, got = run(model, feeds), interpret(model, feeds)
    for out in expected:
        assert got[out].dtype == expected[out].dtype, out
        assert got[out].shape == expected[out].shape, out
        np.testing.assert_allclose(got[out], expected[out], atol=1e-6, rtol=1e-5, err_msg=out)


def test_pad_reflect_and_max_pass_gradients():
    model = make_model([helper.make_node("Pad", ["x", "pads"], ["p"], mode="reflect"),
                        helper.make_node("Max", ["p", "w"], ["y"])],
                       [tensor("x", [2, 4])], [tensor("y", None)],
                       [("pads", np.array([0, 2, 0, 1], np.int64)), ("w", rng_array((7,), 1))])
    module = OnnxModule(model)
    x = torch.from_numpy(rng_array((2, 4), 2)).requires_grad_(True)
    module(x)[0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in module.parameters())
