"""Per-op rules: how a group's channels pass through a node, and what in it must be sliced.

Each handler is called as handler(ex, node, side, index, m): the group's channels sit on
`node.inputs[index]` (side "in") or `node.outputs[index]` (side "out") with Mapping `m`.
It visits the tensors the channels couple to (ex.visit), records what must be sliced
(ex.add) and calls ex.refuse(reason) for anything it does not fully understand — a group
with one refusal is left alone, so an unknown pattern costs compression, never correctness.
The weighted producers (Conv, ConvTranspose, Gemm, MatMul) are where groups start.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import producer
from onnxcomp.passes.prune.mapping import Mapping, Member

# Elementwise on one data input: channels pass straight through.       # x[c] -> y[c]
UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "ThresholdedRelu", "Identity", "Cast", "Dropout", "Clip", "Not", "Sin", "Cos",
})
# Broadcasting binary ops: a per-channel constant is sliced; two activations couple.  # a[c] op b[c] -> y[c]
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Sum", "Mean"})
POOL = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
# Ops whose constant inputs may be traced through to an initializer when resolving weights.
CONST_PASSTHROUGH = frozenset({"Identity", "Transpose"})


def rank(ex, tensor) -> int:
    shape = ex.shape(tensor)
    if shape is None:
        ex.refuse(f"rank of {tensor.name} unknown")
    return len(shape)


def dim(ex, tensor, axis: int) -> int:
    shape = ex.shape(tensor)
    if shape is None or shape[axis] is None:
        ex.refuse(f"size of {tensor.name} on axis {axis} unknown")
    return int(shape[axis])


def _unary(ex, node, side, index, m):
    if node.op == "Dropout" and len(node.outputs) > 1 and ex.used(node.outputs[1]):
        ex.refuse(f"{ex.key(node)}: Dropout mask is used")
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels enter {node.op} through input {index}")
    for i, t in enumerate(node.inputs[1:], start=1):  # Clip min/max must be scalars
        if t.name and ex.size(t) not in (1, None):
            ex.refuse(f"{ex.key(node)}: {node.op} input {i} is not a scalar")
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def _binary(ex, node, side, index, m):
    out = node.outputs[0]
    r_out = rank(ex, out)
    src = out if side == "out" else node.inputs[index]
    a_out = m.axis + (r_out - rank(ex, src))
    c_out = dim(ex, out, a_out)
    ex.visit(out, m.on_axis(a_out), node)
    for i, t in enumerate(node.inputs):
        if side == "in" and i == index:
            continue
        a = a_out - (r_out - rank(ex, t))
        if a < 0 or dim(ex, t, a) == 1:
            continue  # broadcast along the channel axis: not coupled
        if dim(ex, t, a) != c_out:
            ex.refuse(f"{ex.key(node)}: input {i} has {dim(ex, t, a)} positions on the channel axis, output {c_out}")
        const = ex.const_source(t)
        if const is not None:
            ex.add_const("param", const, a, m, node, i)
        else:
            ex.visit(t, m.on_axis(a), node)


def _batchnorm(ex, node, side, index, m):
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels enter {node.op} through a parameter")
    if node.op == "BatchNormalization" and len(node.outputs) > 1 and any(ex.used(t) for t in node.outputs[1:]):
        ex.refuse(f"{ex.key(node)}: BatchNormalization statistics outputs are used")
    n_params = 4 if node.op == "BatchNormalization" else 2
    if m.axis != 1:
        if node.op != "BatchNormalization":
            ex.refuse(f"{ex.key(node)}: {node.op} normalizes over the channel axis")
    else:
        for i in range(1, 1 + n_params):
            const = ex.const_source(node.inputs[i])
            if const is None:
                ex.refuse(f"{ex.key(node)}: {node.op} parameter {i} is not a constant")
            ex.add_const("param", const, 0, m.on_axis(0), node, i, role=("scale" if i == 1 else "bn"))
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def _normalization_axis(ex, node, side, index, m):
    """LayerNormalization/Softmax: fine if they work on other axes than the channels."""
    r = rank(ex, node.inputs[0])
    axis = int(node.attrs.get("axis", -1)) % r
    covers = m.axis >= axis if node.op == "LayerNormalization" else m.axis == axis
    if covers:
        ex.refuse(f"{ex.key(node)}: {node.op} works across the channel axis")
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels enter {node.op} through a parameter")
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def _pool(ex, node, side, index, m):
    if m.axis != 1:
        ex.refuse(f"{ex.key(node)}: {node.op} with the group on axis {m.axis}, not the channel axis")
    if len(node.outputs) > 1 and ex.used(node.outputs[1]):
        ex.refuse(f"{ex.key(node)}: {node.op} indices output is used")
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def _pad(ex, node, side, index, m):
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels enter Pad through input {index}")
    r = rank(ex, node.inputs[0])
    pads = ex.const_values(node.inputs[1]) if len(node.inputs) > 1 else np.asarray(node.attrs.get("pads", []))
    if pads is None:
        ex.refuse(f"{ex.key(node)}: Pad amounts are computed at run time")
    axes = list(range(r))
    if len(node.inputs) > 3 and node.inputs[3].name:
        values = ex.const_values(node.inputs[3])
        if values is None:
            ex.refuse(f"{ex.key(node)}: Pad axes are computed at run time")
        axes = [int(a) % r for a in values]
    n = len(axes)
    if m.axis in axes:
        k = axes.index(m.axis)
        if int(pads[k]) != 0 or int(pads[k + n]) != 0:
            ex.refuse(f"{ex.key(node)}: Pad pads the channel axis")
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def _resize(ex, node, side, index, m):
    """Resize/Upsample scale spatial axes; the channel axis must keep scale 1 (sizes are rewritten)."""
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach {node.op} through input {index}")
    scales_at = 1 if node.op == "Upsample" else 2
    if len(node.inputs) > scales_at and node.inputs[scales_at].name:
        scales = ex.const_values(node.inputs[scales_at])
        if scales is None or (scales.size and float(np.reshape(scales, -1)[m.axis]) != 1.0):
            ex.refuse(f"{ex.key(node)}: {node.op} scales the channel axis or its scales are computed")
    if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
        sizes = ex.const_source(node.inputs[3])
        if sizes is None or node.attrs.get("axes"):
            ex.refuse(f"{ex.key(node)}: Resize sizes computed at run time")
        ex.add(Member("value", sizes[0], index=m.axis, lo=0, hi=2**62, use=(ex.key(node), 3), mapping=m))
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def _transpose(ex, node, side, index, m):
    perm = [int(p) for p in node.attrs.get("perm", [])] or list(reversed(range(rank(ex, node.inputs[0]))))
    if side == "in":
        ex.visit(node.outputs[0], m.on_axis(perm.index(m.axis)), node)
    else:
        ex.visit(node.inputs[0], m.on_axis(perm[m.axis]), node)


def _flatten(ex, node, side, index, m):
    if side == "out":
        ex.refuse(f"{ex.key(node)}: flattened features coupled from downstream")
    shape = ex.shape(node.inputs[0])
    if shape is None or any(d is None for d in shape):
        ex.refuse(f"{ex.key(node)}: Flatten input shape unknown")
    k = int(node.attrs.get("axis", 1)) % max(len(shape), 1)
    if m.axis < k or int(np.prod(shape[k:m.axis])) != 1:
        ex.refuse(f"{ex.key(node)}: Flatten(axis={k}) does not keep channel {m.axis} outermost")
    inner = int(np.prod(shape[m.axis + 1:]))
    ex.visit(node.outputs[0], Mapping(1, m.offset, m.block * inner), node)


def _reshape(ex, node, side, index, m):
    """Reshape keeping, merging (Flatten-like) or splitting into heads the channel axis.

    Shapes are compared from the right (the channel axis and what follows it), so unknown
    batch/sequence dims do not matter: equal element counts then force equal outer parts.
    """
    if index != 0 and side == "in":
        ex.refuse(f"{ex.key(node)}: channels reach Reshape through its shape")
    src, dst = ex.shape(node.inputs[0]), ex.shape(node.outputs[0])
    if src is None or dst is None:
        ex.refuse(f"{ex.key(node)}: Reshape ranks unknown")
    dst = tuple(d if d is not None else _positive_entry(ex, node, i) for i, d in enumerate(dst))
    if side == "out":
        return _reshape_heads_backward(ex, node, src, dst, m)
    tail = src[m.axis:]
    if None in tail:
        ex.refuse(f"{ex.key(node)}: Reshape input shape unknown from the channel axis on")
    for t in range(1, len(tail) + 1):  # merge src[axis:axis+t] into dst[k]
        rest = tuple(tail[t:])
        k = len(dst) - len(rest) - 1
        if k < 0 or tuple(dst[k + 1:]) != rest or dst[k] != int(np.prod(tail[:t])):
            continue
        inner = int(np.prod(tail[1:t]))
        out_m = Mapping(k, m.offset, m.block * inner)
        entry = _shape_entry(ex, node.inputs[1], k, (ex.key(node), 1))
        if entry is None:
            ex.refuse(f"{ex.key(node)}: Reshape's entry for the channel axis is computed at run time")
        name, i, value, use = entry
        if value > 0:
            ex.add(Member("value", name, index=i, lo=0, hi=2**62, use=use, mapping=out_m))
        elif value == 0 and not (k == m.axis and t == 1):
            ex.refuse(f"{ex.key(node)}: Reshape copies a dimension that changes meaning")
        ex.visit(node.outputs[0], out_m, node)
        return
    rest = tuple(tail[1:])  # split [.., H*D, rest] -> [.., H, D, rest]: a group of heads keeps going
    k = len(dst) - len(rest) - 2
    dst = _minus_one_heads(ex, node, dst, k, m.axis, tail[0])
    if k >= 0 and tuple(dst[k + 2:]) == rest and None not in dst[k:k + 2] and dst[k] * dst[k + 1] == tail[0]:
        if m.block == dst[k + 1]:
            out_m = Mapping(k, m.offset, 1)
            _head_count_member(ex, node, k, out_m)
            ex.visit(node.outputs[0], out_m, node)
            return
        if m.block == 1 and ex.split_hint is None:
            ex.split_hint = int(dst[k + 1])  # find_channel_groups retries with heads of this size
    ex.refuse(f"{ex.key(node)}: Reshape splits or reorders the channel axis")


def _minus_one_heads(ex, node, dst, k: int, src_axis: int, channels: int):
    """[.., -1, D, ..]: the head count is inferred; with the same leading rank it is channels / D.

    Nothing needs rewriting then, as ONNX Runtime infers the smaller head count itself.
    """
    if 0 <= k < len(dst) - 1 and dst[k] is None and k == src_axis and dst[k + 1]:
        entry = _shape_entry(ex, node.inputs[1], k, (ex.key(node), 1))
        if entry is not None and entry[2] == -1 and channels % dst[k + 1] == 0:
            return dst[:k] + (channels // dst[k + 1],) + dst[k + 1:]
    return dst


def _positive_entry(ex, node, i: int):
    entry = _shape_entry(ex, node.inputs[1], i, (ex.key(node), 1))
    return entry[2] if entry is not None and entry[2] > 0 else None


def _head_count_member(ex, node, k: int, m: Mapping):
    entry = _shape_entry(ex, node.inputs[1], k, (ex.key(node), 1))
    if entry is None or entry[2] == 0:
        ex.refuse(f"{ex.key(node)}: Reshape's head count is computed at run time")
    if entry[2] > 0:
        ex.add(Member("value", entry[0], index=entry[1], lo=0, hi=2**62, use=entry[3], mapping=m))


def _reshape_heads_backward(ex, node, src, dst, m):
    """Reached from the head axis of [.., H, D, rest]: the input holds the heads as blocks of D."""
    k = m.axis
    rest = tuple(dst[k + 2:])
    a = len(src) - len(rest) - 1
    if 0 <= a < len(src) and src[a] is not None:
        dst = _minus_one_heads(ex, node, dst, k, a, src[a])
    if m.block != 1 or k + 1 >= len(dst) or None in dst[k:]:
        ex.refuse(f"{ex.key(node)}: Reshape reached from its output")
    if a < 0 or tuple(src[a + 1:]) != rest or src[a] != dst[k] * dst[k + 1]:
        ex.refuse(f"{ex.key(node)}: Reshape reached from its output")
    _head_count_member(ex, node, k, m)
    ex.visit(node.inputs[0], Mapping(a, m.offset, int(dst[k + 1])), node)


def _shape_entry(ex, tensor, k: int, use, depth: int = 0):
    """(constant name, flat index, value, reading slot) behind entry k of a 1-D shape tensor, or None if computed.

    Follows Concat/Unsqueeze/Cast of shape pieces, so `x.view(x.size(0), -1)` exports (batch from
    Shape, -1 constant) are understood; the batch entry may stay computed.
    """
    found = ex.const_source(tensor)
    if found is not None:
        flat = np.asarray(found[2]).reshape(-1)
        return (found[0], k, int(flat[k]), use) if found[1] == list(range(found[2].ndim)) and k < flat.size else None
    node = producer(tensor)
    if node is None or depth > 8:
        return None
    if node.op == "Concat":
        start = 0
        for i, part in enumerate(node.inputs):
            shape = ex.shape(part)
            n = int(np.prod(shape)) if shape is not None and None not in shape else None
            if n is None:
                return None
            if k < start + n:
                return _shape_entry(ex, part, k - start, (ex.key(node), i), depth + 1)
            start += n
        return None
    if node.op in ("Unsqueeze", "Cast", "Identity", "Squeeze") and k == 0:
        return _shape_entry(ex, node.inputs[0], 0, (ex.key(node), 0), depth + 1)
    return None


def _concat(ex, node, side, index, m):
    r = rank(ex, node.outputs[0])
    axis = int(node.attrs.get("axis", 0)) % r
    if axis != m.axis:  # concatenation along another axis: all inputs share the channels
        for t in node.inputs:
            ex.visit(t, m, node)
        ex.visit(node.outputs[0], m, node)
        return
    if side == "out":
        ex.refuse(f"{ex.key(node)}: concatenated channels coupled with another tensor")
    before = sum(dim(ex, t, axis) for t in node.inputs[:index])
    if before % m.block:
        ex.refuse(f"{ex.key(node)}: Concat offset {before} is not a multiple of the block {m.block}")
    ex.visit(node.outputs[0], Mapping(axis, m.offset + before // m.block, m.block), node)


def _split(ex, node, side, index, m):
    r = rank(ex, node.inputs[0])
    axis = int(node.attrs.get("axis", 0)) % r
    if axis != m.axis:
        for t in [node.inputs[0], *node.outputs]:
            ex.visit(t, m, node)
        return
    if side == "out":
        ex.refuse(f"{ex.key(node)}: split channels coupled from downstream")
    if len(node.inputs) < 2 or not node.inputs[1].name:
        ex.refuse(f"{ex.key(node)}: Split without explicit sizes")
    source = ex.const_source(node.inputs[1])
    if source is None:
        ex.refuse(f"{ex.key(node)}: Split sizes are computed at run time")
    sizes = source[2]
    lo, hi = m.span(ex.channels)
    start = 0
    for k, size in enumerate(int(s) for s in sizes):
        if start <= lo and hi <= start + size:
            if start % m.block:
                ex.refuse(f"{ex.key(node)}: Split boundary {start} cuts a channel block")
            ex.add(Member("value", source[0], index=k, lo=start, hi=start + size, use=(ex.key(node), 1),
                          mapping=m))
            ex.visit(node.outputs[k], Mapping(axis, m.offset - start // m.block, m.block), node)
            return
        start += size
    ex.refuse(f"{ex.key(node)}: the group spans several Split outputs")


def _slice(ex, node, side, index, m):
    if side == "out" or index != 0:
        ex.refuse(f"{ex.key(node)}: Slice reached from its output or parameters")
    r = rank(ex, node.inputs[0])
    n = dim(ex, node.inputs[0], m.axis)
    sources = [ex.const_source(t) if t.name else None for t in node.inputs[1:5]]
    params = [None if src is None else src[2] for src in sources]
    starts, ends = params[0], params[1]
    if starts is None or ends is None:
        ex.refuse(f"{ex.key(node)}: Slice bounds are computed at run time")
    axes = [int(a) % r for a in params[2]] if len(params) > 2 and params[2] is not None else list(range(len(starts)))
    if m.axis not in axes:
        ex.visit(node.outputs[0], m, node)
        return
    k = axes.index(m.axis)
    steps = params[3] if len(params) > 3 and params[3] is not None else None
    if steps is not None and int(steps[k]) != 1:
        ex.refuse(f"{ex.key(node)}: Slice with step {int(steps[k])} on the channel axis")
    start, end = int(starts[k]), int(ends[k])
    if start < 0 or end < 0:
        ex.refuse(f"{ex.key(node)}: Slice with negative bounds on the channel axis")
    end = min(end, n)
    lo, hi = m.span(ex.channels)
    inside, outside = start <= lo and hi <= end, hi <= start or lo >= end
    if not (inside or outside):
        ex.refuse(f"{ex.key(node)}: Slice cuts through the group's channels")
    src_starts, src_ends = sources[0], sources[1]
    ex.add(Member("value", src_starts[0], index=k, lo=0, hi=start, use=(ex.key(node), 1), mapping=m))
    if int(ends[k]) <= n:
        ex.add(Member("value", src_ends[0], index=k, lo=0, hi=end, use=(ex.key(node), 2), mapping=m))
    if inside:
        if start % m.block:
            ex.refuse(f"{ex.key(node)}: Slice start {start} cuts a channel block")
        ex.visit(node.outputs[0], Mapping(m.axis, m.offset - start // m.block, m.block), node)


def _shape(ex, node, side, index, m):
    """Shape read only for its other dimensions (e.g. the batch size) is harmless."""
    for gather in node.outputs[0].outputs:
        idx = ex.const_values(gather.inputs[1]) if gather.op == "Gather" and len(gather.inputs) > 1 else None
        start = int(node.attrs.get("start", 0))
        if idx is None or any(int(i) + start == m.axis for i in np.reshape(idx, -1)):
            ex.refuse(f"{ex.key(node)}: the channel count is read by Shape")


# ---- weighted nodes: producers (output channels) and readers (input channels) ----

def _weight(ex, node, i: int, what: str):
    const = ex.const_source(node.inputs[i]) if len(node.inputs) > i and node.inputs[i].name else None
    if const is None:
        ex.refuse(f"{ex.key(node)}: {node.op} {what} is not a constant")
    return const


def _bias(ex, node, i, m_out, axis_of):
    """Record the bias (input i) of a producer if present; axis_of(rank) picks its channel axis."""
    if len(node.inputs) > i and node.inputs[i].name:
        const = _weight(ex, node, i, "bias")
        shape = const[2].shape
        if int(np.prod(shape)) == 1:
            return
        ex.add_const("out", const, axis_of(len(shape)), m_out, node, i, role="bias")


def _conv(ex, node, side, index, m):
    w = _weight(ex, node, 1, "weight")
    groups = int(node.attrs.get("group", 1))
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach Conv through its weight or bias")
    c_in = w[2].shape[1] * groups
    c_out = w[2].shape[0]
    if groups == 1:
        if side == "in":
            if m.axis != 1:
                ex.refuse(f"{ex.key(node)}: Conv input channels on axis {m.axis}")
            ex.add_const("in", w, 1, m.on_axis(1), node, 1)
            return
        ex.producer(node, c_out, m)
        ex.add_const("out", w, 0, m.on_axis(0), node, 1)
        _bias(ex, node, 2, m.on_axis(0), lambda r: 0)
        return
    if groups != c_in or m.axis != 1:
        ex.refuse(f"{ex.key(node)}: grouped Conv (group={groups}) couples channels in blocks")
    mult = c_out // groups
    if side == "in":
        if m.block != 1:
            ex.refuse(f"{ex.key(node)}: depthwise Conv on a blocked mapping")
        out_m = Mapping(1, m.offset, mult)
    else:
        if m.block != mult:
            ex.refuse(f"{ex.key(node)}: depthwise Conv output reached with block {m.block}, multiplier {mult}")
        out_m = m
    ex.add_const("out", w, 0, out_m.on_axis(0), node, 1)
    _bias(ex, node, 2, out_m.on_axis(0), lambda r: 0)
    ex.add(Member("group", ex.key(node), mapping=Mapping(0, out_m.offset, 1), use=(ex.key(node), -1)))
    ex.visit(node.inputs[0], Mapping(1, out_m.offset, 1), node)
    ex.visit(node.outputs[0], out_m, node)


def _conv_transpose(ex, node, side, index, m):
    w = _weight(ex, node, 1, "weight")
    if int(node.attrs.get("group", 1)) != 1:
        ex.refuse(f"{ex.key(node)}: grouped ConvTranspose")
    if side == "in":
        if index != 0 or m.axis != 1:
            ex.refuse(f"{ex.key(node)}: channels reach ConvTranspose through input {index} axis {m.axis}")
        ex.add_const("in", w, 0, m.on_axis(0), node, 1)
        return
    ex.producer(node, w[2].shape[1], m)
    ex.add_const("out", w, 1, m.on_axis(1), node, 1)
    _bias(ex, node, 2, m.on_axis(0), lambda r: 0)


def _gemm(ex, node, side, index, m):
    w = _weight(ex, node, 1, "weight B")
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    if side == "in":
        if index != 0:
            ex.refuse(f"{ex.key(node)}: channels reach Gemm through input {index}")
        if m.axis != (0 if trans_a else 1):
            ex.refuse(f"{ex.key(node)}: Gemm reads the group on its batch axis")
        ex.add_const("in", w, 1 if trans_b else 0, m.on_axis(1 if trans_b else 0), node, 1)
        return
    if m.axis != 1:
        ex.refuse(f"{ex.key(node)}: Gemm output features on axis {m.axis}")
    ex.producer(node, w[2].shape[0] if trans_b else w[2].shape[1], m)
    ex.add_const("out", w, 0 if trans_b else 1, m.on_axis(0 if trans_b else 1), node, 1)
    if len(node.inputs) > 2 and node.inputs[2].name:
        const = _weight(ex, node, 2, "bias C")
        shape = const[2].shape
        if int(np.prod(shape)) != 1:
            if len(shape) == 2 and shape[0] != 1:
                ex.refuse(f"{ex.key(node)}: Gemm bias C has shape {shape}")
            ex.add_const("out", const, len(shape) - 1, m.on_axis(len(shape) - 1), node, 2, role="bias")


def _matmul_activations(ex, node, side, index, m):
    """A @ B of two activations (attention): batch axes couple both sides, rows/columns pass through."""
    a, b, out = node.inputs[0], node.inputs[1], node.outputs[0]
    r_a, r_b, r_out = rank(ex, a), rank(ex, b), rank(ex, out)
    if min(r_a, r_b) < 2:
        ex.refuse(f"{ex.key(node)}: MatMul with a vector operand")
    src_rank = r_out if side == "out" else (r_a if index == 0 else r_b)
    a_out = m.axis + (r_out - src_rank)
    if side == "in" and index == 0 and m.axis == r_a - 1 or side == "in" and index == 1 and m.axis == r_b - 2:
        ex.refuse(f"{ex.key(node)}: channels contracted by a MatMul of two activations")
    if a_out < r_out - 2:  # batch axis: both operands (unless broadcast) and the output
        ex.visit(out, m.on_axis(a_out), node)
        for t, r in ((a, r_a), (b, r_b)):
            axis = a_out - (r_out - r)
            if axis >= 0 and dim(ex, t, axis) != 1:
                ex.visit(t, m.on_axis(axis), node)
    elif a_out == r_out - 2:  # rows of A
        ex.visit(out, m.on_axis(a_out), node)
        ex.visit(a, m.on_axis(r_a - 2), node)
    else:  # columns of B
        ex.visit(out, m.on_axis(a_out), node)
        ex.visit(b, m.on_axis(r_b - 1), node)


def _matmul(ex, node, side, index, m):
    w = ex.const_source(node.inputs[1]) if len(node.inputs) >= 2 else None
    if w is None:
        if len(node.inputs) == 2 and ex.const_source(node.inputs[0]) is None:
            return _matmul_activations(ex, node, side, index, m)
        ex.refuse(f"{ex.key(node)}: MatMul with a constant first operand")
    if w[2].ndim != 2:
        ex.refuse(f"{ex.key(node)}: MatMul weight of rank {w[2].ndim}")
    if side == "in":
        if index != 0 or m.axis != rank(ex, node.inputs[0]) - 1:
            ex.refuse(f"{ex.key(node)}: MatMul reads the group on a non-feature axis")
        ex.add_const("in", w, 0, m.on_axis(0), node, 1)
        return
    if m.axis != rank(ex, node.outputs[0]) - 1:
        ex.refuse(f"{ex.key(node)}: MatMul output reached on axis {m.axis}")
    ex.producer(node, w[2].shape[1], m)
    ex.add_const("out", w, 1, m.on_axis(1), node, 1)


HANDLERS = {
    **{op: _unary for op in UNARY},
    **{op: _binary for op in BINARY},
    **{op: _pool for op in POOL},
    "BatchNormalization": _batchnorm, "InstanceNormalization": _batchnorm,
    "LayerNormalization": _normalization_axis, "Softmax": _normalization_axis, "LogSoftmax": _normalization_axis,
    "Pad": _pad, "Resize": _resize, "Upsample": _resize, "Transpose": _transpose, "Flatten": _flatten, "Reshape": _reshape,
    "Concat": _concat, "Split": _split, "Slice": _slice, "Shape": _shape,
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _matmul,
}

# Where a group starts: the node's output channel axis, given the output rank.
PRODUCERS = {
    "Conv": lambda node, r: 1, "ConvTranspose": lambda node, r: 1,
    "Gemm": lambda node, r: 1, "MatMul": lambda node, r: r - 1,
}
