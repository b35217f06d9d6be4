"""Tiny NCHW / MLP graphs for the pruning tests, built op by op with onnx.helper.

Net keeps the channel count of every tensor it makes, so tests can compose blocks
(conv, BN, residual, concat, depthwise, split, flatten; squeeze-excitation, C2f-style splits,
grouped convs, channel shuffles, GroupNorm, LSTM-like gates, run-time views) without shape
bookkeeping. rnn_model and attention_model build the recurrent and Shape-driven attention cases.
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
        """Channels [start, end) of x (end may be a huge number meaning 'to the end'; negative bounds count
        from the end)."""
        c = self.channels[x]
        args = [self.const_int("st", [start]), self.const_int("en", [end]), self.const_int("ax", [1])]
        return self.node("Slice", [x, *args], len(range(c)[start:end]))

    def channel_pad(self, x: str, before: int = 1, after: int = 2) -> str:
        """Zero channels added before and after x's (a padded channel count), read by a conv."""
        pads = self.const_int("pads", [0, before, 0, 0, 0, after, 0, 0])
        return self.node("Pad", [x, pads], self.channels[x] + before + after)

    def channel_norm(self, x: str, op: str = "LayerNormalization") -> str:
        """A normalization across the channels: LayerNorm over C (NHWC, with scale and bias), Softmax over C,
        LRN, or x / max over all axes (a ReduceMax). Lossy to prune."""
        c = self.channels[x]
        if op == "LayerNormalization":
            t = self.node("Transpose", [x], c, perm=[0, 2, 3, 1])
            gamma, beta = self.const("g", self.rng.uniform(0.5, 1.5, c)), self.const("be", self.rng.standard_normal(c))
            t = self.node(op, [t, gamma, beta], c, axis=-1)
            return self.node("Transpose", [t], c, perm=[0, 3, 1, 2])
        if op == "Softmax":
            return self.node(op, [x], c, axis=1)
        if op == "LRN":
            return self.node(op, [x], c, size=3)
        peak = self.node("ReduceMax", [self.unary(x, "Abs")], 1, keepdims=1)
        return self.node("Div", [x, peak], c)

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

    def se(self, x: str, pool: str = "gap", fc: bool = False, gate: str = "Sigmoid") -> str:
        """Squeeze-excitation: pool -> reduce -> expand (1x1 convs or FC layers) -> gate -> Mul onto x."""
        c = self.channels[x]
        mid = max(1, c // 2)
        keep = 0 if fc else 1
        if pool == "gap" and not fc:
            pooled = self.node("GlobalAveragePool", [x], c)
        else:
            op = {"mean": "ReduceMean", "max": "ReduceMax", "sum": "ReduceSum", "gap": "ReduceMean"}[pool]
            if op == "ReduceSum":  # axes as an input from opset 13 on
                pooled = self.node(op, [x, self.const_int("axes", [2, 3])], c, keepdims=keep)
            else:
                pooled = self.node(op, [x], c, axes=[2, 3], keepdims=keep)
        if fc:
            w1 = self.const("fc", self.rng.standard_normal((mid, c)) * 0.5)
            h = self.unary(self.node("Gemm", [pooled, w1, self.const("fcb", self.rng.standard_normal(mid) * 0.1)],
                                     mid, transB=1))
            w2 = self.const("fc", self.rng.standard_normal((mid, c)) * 0.5)
            s = self.node("Gemm", [h, w2, self.const("fcb", self.rng.standard_normal(c) * 0.1)], c)
            s = self.node("Unsqueeze", [s, self.const_int("axes", [2, 3])], c)
        else:
            s = self.conv(self.unary(self.conv(pooled, mid, k=1)), c, k=1)
        return self.node("Mul", [x, self.unary(s, gate)], c)

    def c2f(self, x: str, half: int) -> str:
        """YOLOv8's C2f: one conv, Split in two, a residual bottleneck on the second half, Concat of all three."""
        a, b = self.split(self.unary(self.conv(x, 2 * half, k=1)), [half, half])
        m = self.add(b, self.conv(self.unary(self.conv(b, half)), half))
        return self.unary(self.conv(self.concat([a, b, m]), 2 * half, k=1))

    def gates(self, x: str, hidden: int, sizes: bool = True) -> str:
        """An LSTM cell written out: one conv makes 4 gates, Split(4), c = f*c0 + i*g, h = o*tanh(c)."""
        z = self.conv(x, 4 * hidden, k=1)
        if sizes:
            i, f, g, o = self.split(z, [hidden] * 4)
        else:
            outs = [self._name("split") for _ in range(4)]
            self.nodes.append(helper.make_node("Split", [z], outs, name=outs[0] + "_node", axis=1))
            for name in outs:
                self.channels[name] = hidden
            i, f, g, o = outs
        i, f, o = (self.unary(t, "Sigmoid") for t in (i, f, o))
        c0 = self.const("c0", self.rng.standard_normal((hidden, 1, 1)) * 0.5)
        c = self.add(self.node("Mul", [f, c0], hidden), self.node("Mul", [i, self.unary(g, "Tanh")], hidden))
        return self.node("Mul", [o, self.unary(c, "Tanh")], hidden)

    def sliced_gates(self, x: str, hidden: int) -> str:
        """A GRU-like cell written out with one conv and three Slices (r, z, n), as hand-written cells export."""
        z = self.conv(x, 3 * hidden, k=1)
        r, u, n = (self.slice(z, k * hidden, (k + 1) * hidden) for k in range(3))
        n = self.unary(self.node("Mul", [n, self.unary(r, "Sigmoid")], hidden), "Tanh")
        return self.node("Mul", [self.unary(u, "Sigmoid"), n], hidden)

    def shuffle(self, x: str, groups: int) -> str:
        """ShuffleNet's channel shuffle: [N, g, C/g, H, W] -> transpose -> [N, C, H, W]."""
        c = self.channels[x]
        five = self.node("Reshape", [x, self.const_int("shape", [0, groups, c // groups, self.size, self.size])], c)
        moved = self.node("Transpose", [five], c, perm=[0, 2, 1, 3, 4])
        return self.node("Reshape", [moved, self.const_int("shape", [0, c, self.size, self.size])], c)

    def shuffle_unit(self, x: str, groups: int, per: int, out_per: int) -> str:
        """ShuffleNet v1's unit without its shortcut: grouped 1x1 conv to groups*groups*per channels, shuffle,
        depthwise 3x3, grouped 1x1 conv to groups*out_per."""
        return self._shuffled(x, groups, groups * groups * per, groups * out_per)

    def shuffle_bottleneck(self, x: str, groups: int = 4, per: int = 10) -> str:
        """The model zoo's ShuffleNet stage-2 bottleneck: grouped 1x1 conv to groups*per channels (per not a
        multiple of groups), shuffle, depthwise 3x3, grouped 1x1 conv to as many channels."""
        return self._shuffled(x, groups, groups * per, groups * per)

    def _shuffled(self, x: str, groups: int, mid: int, out: int) -> str:
        """Grouped 1x1 conv to `mid`, shuffle, depthwise 3x3, grouped 1x1 conv to `out`."""
        a = self.unary(self.conv(x, mid, k=1, group=groups))
        dw = self.conv(self.shuffle(a, groups), mid, group=mid)
        return self.unary(self.conv(dw, out, k=1, group=groups))

    def shuffle_stream(self, x: str, groups: int = 4, stem: int = 12, branch: int = 56) -> str:
        """ShuffleNet v1's residual stream: a stem conv, then Concat[grouped 1x1 conv of it, its pooled copy]
        (56 + 12 = 4 x 17: the boundary is not on the next grouped conv's groups of 17) and a residual pair of
        grouped 1x1 convs on that stream."""
        s = self.maxpool(self.unary(self.conv(x, stem)))
        stream = self.unary(self.concat([self.conv(s, branch, k=1, group=groups), self.pad(s)]))
        c = self.channels[stream]
        inner = self.conv(self.unary(self.conv(stream, c, k=1, group=groups)), c, k=1, group=groups)
        return self.unary(self.add(inner, stream))

    def group_norm(self, x: str, groups: int, shape: str | None = None, back: str | None = None) -> str:
        """GroupNorm as exporters write it: Reshape [0, G, -1], InstanceNorm, Reshape back, per-channel affine.
        `shape`/`back` name shape constants shared with other GroupNorms (dynamo shares them)."""
        c = self.channels[x]
        shape = shape or self.const_int("gshape", [0, groups, -1])
        grouped = self.node("Reshape", [x, shape], c)
        normed = self.node("InstanceNormalization", [grouped, self.const("ones", np.ones(groups)),
                                                     self.const("zeros", np.zeros(groups))], c)
        back = back or self.const_int("shape", [-1, c, self.size, self.size])
        back = self.node("Reshape", [normed, back], c)
        return self.add(self.scale(back), self.const("beta", self.rng.standard_normal((c, 1, 1)) * 0.1))

    def squeeze_path(self, x: str) -> str:
        """Unsqueeze a size-1 axis in front of the channels and squeeze it away again."""
        c = self.channels[x]
        up = self.node("Unsqueeze", [x, self.const_int("axes", [1])], c)
        return self.node("Squeeze", [self.unary(up), self.const_int("axes", [1])], c)

    def runtime_view(self, x: str) -> str:
        """x.view(x.size(0), x.size(1), -1), a mean over the flat pixels, and back by Shape."""
        c = self.channels[x]
        shape = self.node("Shape", [x], 0)
        dims = self.node("Gather", [shape, self.const_int("idx", [0, 1])], 0, axis=0)
        target = self.node("Concat", [dims, self.const_int("rest", [-1])], 0, axis=0)
        flat = self.unary(self.node("Reshape", [x, target], c))
        return self.node("Reshape", [flat, shape], c)

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


def rnn_model(op: str = "LSTM", hidden: int = 6, features: int = 5, bidirectional: bool = False,
              layers: int = 2, seed: int = 0, state: str = "zeros"):
    """Stacked LSTM/GRU/RNN layers on [T, N, F] with a Gemm head on the last step; state: "none"
    (no initial state), "zeros" (a constant) or "filled" (ConstantOfShape of a Shape-built size)."""
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    dirs = 2 if bidirectional else 1
    nodes, inits = [], {}
    x, width = "x", features
    for layer in range(layers):
        w, r, b = f"W{layer}", f"R{layer}", f"B{layer}"
        inits[w] = (rng.standard_normal((dirs, gates * hidden, width)) * 0.5).astype(np.float32)
        inits[r] = (rng.standard_normal((dirs, gates * hidden, hidden)) * 0.5).astype(np.float32)
        inits[b] = (rng.standard_normal((dirs, 2 * gates * hidden)) * 0.2).astype(np.float32)
        inputs = [x, w, r, b, ""]
        if state == "zeros":
            inits[f"h{layer}"] = (rng.standard_normal((dirs, 1, hidden)) * 0.3).astype(np.float32)
            nodes.append(helper.make_node("Expand", [f"h{layer}", f"hs{layer}"], [f"h0_{layer}"]))
            inits[f"hs{layer}"] = np.array([dirs, 2, hidden], dtype=np.int64)  # batch 2 in the tests
            inputs.append(f"h0_{layer}")
        elif state == "filled":
            nodes += [helper.make_node("Shape", [x], [f"xs{layer}"]),
                      helper.make_node("Gather", [f"xs{layer}", "one"], [f"n{layer}"], axis=0),
                      helper.make_node("Unsqueeze", [f"n{layer}", "zero_axes"], [f"n1_{layer}"]),
                      helper.make_node("Concat", ["dirs", f"n1_{layer}", f"hid{layer}"], [f"hshape{layer}"], axis=0),
                      helper.make_node("ConstantOfShape", [f"hshape{layer}"], [f"h0_{layer}"])]
            inits.update({"one": np.array(1, dtype=np.int64), "zero_axes": np.array([0], dtype=np.int64),
                          "dirs": np.array([dirs], dtype=np.int64), f"hid{layer}": np.array([hidden], dtype=np.int64)})
            inputs.append(f"h0_{layer}")
        attrs = {"hidden_size": hidden, "direction": "bidirectional" if bidirectional else "forward"}
        if op == "GRU":
            attrs["linear_before_reset"] = 1
        nodes.append(helper.make_node(op, inputs, [f"y{layer}"], name=f"{op.lower()}{layer}", **attrs))
        nodes += [helper.make_node("Transpose", [f"y{layer}"], [f"yt{layer}"], perm=[0, 2, 1, 3]),
                  helper.make_node("Reshape", [f"yt{layer}", "merge"], [f"ym{layer}"])]
        inits["merge"] = np.array([0, 0, -1], dtype=np.int64)
        x, width = f"ym{layer}", dirs * hidden
    inits["fc"] = (rng.standard_normal((width, 3)) * 0.4).astype(np.float32)
    nodes += [helper.make_node("ReduceMean", [x], ["pooled"], axes=[0], keepdims=0),
              helper.make_node("MatMul", ["pooled", "fc"], ["y"])]
    return make_model(nodes, [tensor("x", ["T", "N", features])], [tensor("y", None)], inits)


def attention_model(dim: int = 16, heads: int = 4, seed: int = 0):
    """Self-attention whose Reshapes get their shapes from Shape -> Gather -> Concat (as real exports do):
    [B, S, D] -> [B, S, H, D/H] with the batch and sequence read at run time, and back with [B, S, -1]."""
    rng = np.random.default_rng(seed)
    head = dim // heads
    inits = {name: (rng.standard_normal((dim, dim)) * 0.3).astype(np.float32) for name in ("wq", "wk", "wv", "wo")}
    inits.update({"bq": (rng.standard_normal(dim) * 0.1).astype(np.float32),
                  "idx": np.array([0, 1], dtype=np.int64), "hd": np.array([heads, head], dtype=np.int64),
                  "minus": np.array([-1], dtype=np.int64), "scale": np.float32(1 / np.sqrt(head))})
    nodes = [helper.make_node("Shape", ["x"], ["xs"]),
             helper.make_node("Gather", ["xs", "idx"], ["bs"], axis=0),
             helper.make_node("Concat", ["bs", "hd"], ["split_shape"], axis=0),
             helper.make_node("Concat", ["bs", "minus"], ["merge_shape"], axis=0)]
    for name, bias in (("q", "bq"), ("k", None), ("v", None)):
        nodes.append(helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}0"], name=name))
        if bias:
            nodes.append(helper.make_node("Add", [f"{name}0", bias], [f"{name}1"]))
        nodes += [helper.make_node("Reshape", [f"{name}1" if bias else f"{name}0", "split_shape"], [f"{name}2"]),
                  helper.make_node("Transpose", [f"{name}2"], [f"{name}h"],
                                   perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3])]
    nodes += [helper.make_node("MatMul", ["qh", "kh"], ["scores0"]),
              helper.make_node("Mul", ["scores0", "scale"], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["ctx"]),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "merge_shape"], ["merged"]),
              helper.make_node("MatMul", ["merged", "wo"], ["attn"], name="o"),
              helper.make_node("Add", ["x", "attn"], ["y"])]
    return make_model(nodes, [tensor("x", ["B", "S", dim])], [tensor("y", ["B", "S", dim])], inits)


def float_input(name: str, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def gnn_model(nodes: int = 5, edges: int = 7, features: int = 3, hidden: int = 6, seed: int = 0):
    """One message-passing step as torch_geometric exports it: node features by MatMul, messages gathered
    along the edges' sources, scatter-added onto their targets (ScatterElements on a ConstantOfShape zero
    start, the index expanded along the features), a per-graph readout by GatherND, a MatMul head."""
    rng = np.random.default_rng(seed)
    inits = {"w1": (rng.standard_normal((features, hidden)) * 0.5).astype(np.float32),
             "w2": (rng.standard_normal((hidden, 2)) * 0.5).astype(np.float32),
             "src": rng.integers(0, nodes, edges).astype(np.int64),
             "dst": rng.integers(0, nodes, (edges, 1)).astype(np.int64),
             "msg_shape": np.array([edges, hidden], dtype=np.int64),
             "zero_shape": np.array([nodes, hidden], dtype=np.int64),
             "roots": np.array([[0], [nodes - 1]], dtype=np.int64)}
    graph = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"),
             helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("Gather", ["h", "src"], ["msg"], axis=0),
             helper.make_node("Expand", ["dst", "msg_shape"], ["index"]),
             helper.make_node("ConstantOfShape", ["zero_shape"], ["zeros"],
                              value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])),
             helper.make_node("ScatterElements", ["zeros", "index", "msg"], ["agg"], axis=0, reduction="add"),
             helper.make_node("Add", ["agg", "h"], ["h2"]),
             helper.make_node("GatherND", ["h2", "roots"], ["readout"]),
             helper.make_node("MatMul", ["readout", "w2"], ["y"], name="fc2")]
    return make_model(graph, [tensor("x", [nodes, features])], [tensor("y", None)], inits)


def folded_rows_model(rows: int = 8, features: int = 4, hidden: int = 6, fold: int = 4, seed: int = 0):
    """MatMul to `hidden` features per row -> Relu -> Reshape [N, rows, hidden] -> [N, rows/fold, fold*hidden]
    (magika folds rows into the features so) -> MatMul."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.standard_normal((features, hidden)).astype(np.float32) * 0.5,
             "w2": rng.standard_normal((fold * hidden, 5)).astype(np.float32) * 0.5,
             "fold": np.array([0, rows // fold, fold * hidden], dtype=np.int64)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Reshape", ["a", "fold"], ["f"], name="fold_rows"),
             helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc2")]
    return make_model(nodes, [tensor("x", ["N", rows, features])], [tensor("y", ["N", rows // fold, 5])], inits)


def head_pooling_model(heads: int = 2, head_size: int = 4, seed: int = 0):
    """trueocr_rec's attention pooling: a 1x1 conv to heads*D features, a score conv to one score per head,
    softmax over the positions, features weighted per head and summed, flattened into a Gemm."""
    rng = np.random.default_rng(seed)
    c = heads * head_size
    inits = {"wp": rng.standard_normal((c, 3, 1, 1)).astype(np.float32) * 0.5,
             "ws": rng.standard_normal((heads, c, 1, 1)).astype(np.float32) * 0.5,
             "split": np.array([0, heads, head_size, -1], np.int64), "one": np.array([0, heads, 1, -1], np.int64),
             "axes": np.array([3], np.int64), "flat": np.array([0, c], np.int64),
             "fc": rng.standard_normal((5, c)).astype(np.float32) * 0.5}
    nodes = [helper.make_node("Conv", ["x", "wp"], ["p"], name="pw"),
             helper.make_node("Conv", ["p", "ws"], ["s"], name="score"),
             helper.make_node("Reshape", ["p", "split"], ["ph"], name="heads"),
             helper.make_node("Reshape", ["s", "one"], ["sh"], name="score_heads"),
             helper.make_node("Softmax", ["sh"], ["a"], name="softmax", axis=-1),
             helper.make_node("Mul", ["ph", "a"], ["w"], name="weigh"),
             helper.make_node("ReduceSum", ["w", "axes"], ["r"], name="pool", keepdims=0),
             helper.make_node("Reshape", ["r", "flat"], ["f"], name="merge"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    return make_model(nodes, [tensor("x", ["N", 3, 4, 4])], [tensor("y", ["N", 5])], inits)


def frequency_grid_model(bins: int = 8, kernel: int = 3, drop: int | None = None, seed: int = 0):
    """A spectrogram front end (basic-pitch's CQT, DNSMOS's STFT): a filter bank conv makes `bins` output
    channels from a mono signal, a Transpose makes them the width of a one-channel image, and a 2-D Conv with
    a kernel x kernel window reads it. `drop`: the same model built without bank filter `drop` (its removal,
    done by hand)."""
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((bins, 1, 1, 4)).astype(np.float32)
    bias = rng.standard_normal(bins).astype(np.float32) * 0.1
    kept = [b for b in range(bins) if b != drop]
    inits = {"bank": bank[kept], "bank_bias": bias[kept],
             "w2": rng.standard_normal((4, 1, kernel, kernel)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "bank", "bank_bias"], ["bins"], name="bank", strides=[1, 2]),
             helper.make_node("Transpose", ["bins"], ["image"], name="to_image", perm=[0, 2, 3, 1]),
             helper.make_node("Conv", ["image", "w2"], ["y"], name="conv2d", pads=[kernel // 2] * 4)]
    return make_model(nodes, [tensor("x", ["N", 1, 1, 18])], [tensor("y", None)], inits)


def loop_model(dim: int = 4, seed: int = 0):
    """A recurrent decoder written as a Loop (PaddleOCR's table decoder): the body reads one weight from the
    outer scope and another that the Loop carries unchanged from a constant start."""
    rng = np.random.default_rng(seed)
    inits = {name: rng.standard_normal((dim, dim)).astype(np.float32) for name in ("w0", "w_outer", "w_carried")}
    inits.update(trips=np.array(3, dtype=np.int64), go=np.array(True))
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w_outer"], ["a"], name="body_fc1"),
         helper.make_node("Tanh", ["a"], ["t"], name="body_tanh"),
         helper.make_node("MatMul", ["t", "w_in"], ["h_next"], name="body_fc2"),
         helper.make_node("Identity", ["cond"], ["cond_next"], name="body_cond")],
        "body", [tensor("i", [], TensorProto.INT64), tensor("cond", [], TensorProto.BOOL), tensor("h", [1, dim]),
                 tensor("w_in", [dim, dim])],
        [tensor("cond_next", [], TensorProto.BOOL), tensor("h_next", [1, dim]), tensor("w_in", [dim, dim])])
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["h0"], name="fc0"),
             helper.make_node("Loop", ["trips", "go", "h0", "w_carried"], ["y", "w_last"], name="decode", body=body)]
    return make_model(nodes, [tensor("x", [1, dim])], [tensor("y", [1, dim])], inits)


def loop_attention_model(dim: int = 4, hidden: int = 16, zero_from: int | None = None, seed: int = 0):
    """A Loop whose body has a group of its own (two projections of the carried state added into a Tanh, read
    by a third projection) and a group that is the model's output (that projection's channels: the carried
    state, which leaves the Loop as a graph output, and each step's scan output). One weight of the internal
    group is carried by the Loop unchanged from a constant start, the others are outer initializers.
    `zero_from`: the internal channels from there on have all-zero weights (removing them changes nothing)."""
    rng = np.random.default_rng(seed)
    inits = {"w_a": rng.standard_normal((dim, hidden)), "w_b": rng.standard_normal((dim, hidden)),
             "b_b": rng.standard_normal(hidden), "w_c": rng.standard_normal((hidden, dim)) * 0.3}
    if zero_from is not None:
        for name, axis in (("w_a", 1), ("w_b", 1), ("b_b", 0), ("w_c", 0)):
            np.moveaxis(inits[name], axis, 0)[zero_from:] = 0
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    inits.update(trips=np.array(3, dtype=np.int64), go=np.array(True))
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "w_in"], ["a"], name="body_a"),
         helper.make_node("MatMul", ["h", "w_b"], ["b0"], name="body_b"),
         helper.make_node("Add", ["b0", "b_b"], ["b"], name="body_bias"),
         helper.make_node("Add", ["a", "b"], ["ab"], name="body_add"),
         helper.make_node("Tanh", ["ab"], ["t"], name="body_tanh"),
         helper.make_node("MatMul", ["t", "w_c"], ["c"], name="body_c"),
         helper.make_node("Add", ["h", "c"], ["h_next"], name="body_step"),
         helper.make_node("Identity", ["h_next"], ["step_out"], name="body_scan"),
         helper.make_node("Identity", ["cond"], ["cond_next"], name="body_cond")],
        "body", [tensor("i", [], TensorProto.INT64), tensor("cond", [], TensorProto.BOOL), tensor("h", [1, dim]),
                 tensor("w_in", [dim, hidden])],
        [tensor("cond_next", [], TensorProto.BOOL), tensor("h_next", [1, dim]), tensor("w_in", [dim, hidden]),
         tensor("step_out", [1, dim])])
    nodes = [helper.make_node("Loop", ["trips", "go", "x", "w_a"], ["h_last", "w_last", "steps"], name="decode",
                              body=body)]
    return make_model(nodes, [tensor("x", [1, dim])], [tensor("h_last", [1, dim]), tensor("steps", None)], inits)
