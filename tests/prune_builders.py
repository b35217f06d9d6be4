"""Tiny NCHW / MLP graphs for the pruning tests, built op by op with onnx.helper.

Net keeps the channel count of every tensor it makes, so tests can compose blocks
(conv, BN, residual, concat, depthwise, split, flatten) without shape bookkeeping.
"""

from __future__ import annotations

import numpy as np
from helpers import make_model, tensor
from onnx import TensorProto, helper


class Net:
    def __init__(self, channels: int = 3, size: int = 6, seed: int = 0, input_name: str = "x"):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], {}, 0
        self.size = size
        self.channels = {input_name: channels}
        self.inputs = [tensor(input_name, ["N", channels, size, size])]
        self.x = input_name

    def _name(self, base: str) -> str:
        self.n += 1
        return f"{base}{self.n}"

    def const(self, base: str, values) -> str:
        name = self._name(base)
        self.inits[name] = np.asarray(values, dtype=np.float32)
        return name

    def node(self, op: str, inputs, channels: int, **attrs) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out + "_node", **attrs))
        self.channels[out] = channels
        return out

    def conv(self, x: str, cout: int, k: int = 3, group: int = 1, bias: bool = True) -> str:
        cin = self.channels[x]
        w = self.const("w", self.rng.standard_normal((cout, cin // group, k, k)) * 0.5)
        inputs = [x, w] + ([self.const("b", self.rng.standard_normal(cout) * 0.1)] if bias else [])
        return self.node("Conv", inputs, cout, pads=[k // 2] * 4, group=group)

    def bn(self, x: str) -> str:
        c = self.channels[x]
        params = [self.rng.uniform(0.5, 1.5, c), self.rng.standard_normal(c) * 0.1,
                  self.rng.standard_normal(c) * 0.1, self.rng.uniform(0.5, 1.5, c)]
        return self.node("BatchNormalization", [x] + [self.const("bn", p) for p in params], c)

    def unary(self, x: str, op: str = "Relu") -> str:
        return self.node(op, [x], self.channels[x])

    def scale(self, x: str) -> str:
        c = self.channels[x]
        return self.node("Mul", [x, self.const("s", self.rng.uniform(0.5, 1.5, (c, 1, 1)))], c)

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b], self.channels[a])

    def concat(self, parts) -> str:
        return self.node("Concat", parts, sum(self.channels[p] for p in parts), axis=1)

    def split(self, x: str, sizes) -> list[str]:
        outs = [self._name("split") for _ in sizes]
        name = self.const_int("sizes", sizes)
        self.nodes.append(helper.make_node("Split", [x, name], outs, name=outs[0] + "_node", axis=1))
        for o, s in zip(outs, sizes):
            self.channels[o] = s
        return outs

    def slice(self, x: str, start: int, end: int) -> str:
        """Channels [start, end) of x (end may be a huge number meaning 'to the end')."""
        c = self.channels[x]
        args = [self.const_int("st", [start]), self.const_int("en", [end]), self.const_int("ax", [1])]
        return self.node("Slice", [x, *args], min(end, c) - start)

    def const_int(self, base: str, values) -> str:
        name = self._name(base)
        self.inits[name] = np.asarray(values, dtype=np.int64)
        return name

    def resize(self, x: str, sizes: bool = False) -> str:
        """Nearest 2x upsampling and back down (keeps the spatial size), by scales or by sizes."""
        c = self.channels[x]
        if sizes:
            up = self.node("Resize", [x, "", "", self.const_int("sz", [1, c, 2 * self.size, 2 * self.size])], c,
                           mode="nearest")
        else:
            up = self.node("Resize", [x, "", self.const("sc", [1, 1, 2, 2])], c, mode="nearest")
        return self.node("MaxPool", [up], c, kernel_shape=[2, 2], strides=[2, 2])

    def maxpool(self, x: str) -> str:
        return self.node("MaxPool", [x], self.channels[x], kernel_shape=[3, 3], pads=[1, 1, 1, 1])

    def pad(self, x: str) -> str:
        pads = self.const_int("pads", [0, 0, 1, 1, 0, 0, 1, 1])
        out = self.node("Pad", [x, pads], self.channels[x])
        return self.node("AveragePool", [out], self.channels[x], kernel_shape=[3, 3])

    def head(self, x: str, classes: int = 4, flatten: bool = False, reshape: bool = False, view: str = "") -> str:
        """Classifier head; view="-1" or "features" builds torch's x.view(x.size(0), ...) shape at run time."""
        c = self.channels[x]
        if view:
            features = c * self.size * self.size
            shape = self.node("Shape", [x], 0)
            batch = self.node("Gather", [shape, self.const_int("zero", 0)], 0, axis=0)
            batch = self.node("Unsqueeze", [batch, self.const_int("axes", [0])], 0)
            rest = self.const_int("rest", [-1 if view == "-1" else features])
            target = self.node("Concat", [batch, rest], 0, axis=0)
            flat = self.node("Reshape", [x, target], features)
        elif flatten or reshape:
            features = c * self.size * self.size
            if reshape:
                flat = self.node("Reshape", [x, self.const_int("shape", [-1, features])], features)
            else:
                flat = self.node("Flatten", [x], features, axis=1)
        else:
            flat = self.node("Flatten", [self.node("GlobalAveragePool", [x], c)], c, axis=1)
            features = c
        w = self.const("fc", self.rng.standard_normal((classes, features)) * 0.3)
        return self.node("Gemm", [flat, w, self.const("fcb", np.zeros(classes))], classes, transB=1)

    def model(self, output: str):
        return make_model(self.nodes, self.inputs, [tensor(output, None)], self.inits)


def ffn_model(dim: int = 8, hidden: int = 24, seed: int = 0, gelu: bool = True):
    """MatMul -> bias Add -> Gelu (Erf form) or Relu -> MatMul -> bias Add -> residual Add."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.standard_normal((dim, hidden)).astype(np.float32) * 0.4,
             "b1": rng.standard_normal(hidden).astype(np.float32) * 0.1,
             "w2": rng.standard_normal((hidden, dim)).astype(np.float32) * 0.4,
             "b2": rng.standard_normal(dim).astype(np.float32) * 0.1,
             "sqrt2": np.float32(np.sqrt(2.0)), "one": np.float32(1.0), "half": np.float32(0.5)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["b1", "h0"], ["h1"], name="fc1_bias")]
    if gelu:
        nodes += [helper.make_node("Div", ["h1", "sqrt2"], ["g0"], name="g_div"),
                  helper.make_node("Erf", ["g0"], ["g1"], name="g_erf"),
                  helper.make_node("Add", ["g1", "one"], ["g2"], name="g_add"),
                  helper.make_node("Mul", ["h1", "g2"], ["g3"], name="g_mul"),
                  helper.make_node("Mul", ["g3", "half"], ["act"], name="g_half")]
    else:
        nodes.append(helper.make_node("Relu", ["h1"], ["act"], name="relu"))
    nodes += [helper.make_node("MatMul", ["act", "w2"], ["o0"], name="fc2"),
              helper.make_node("Add", ["o0", "b2"], ["o1"], name="fc2_bias"),
              helper.make_node("Add", ["x", "o1"], ["y"], name="residual")]
    return make_model(nodes, [tensor("x", ["B", "S", dim])], [tensor("y", ["B", "S", dim])], inits)


def float_input(name: str, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
