"""Rules for the weighted nodes: where groups start (output channels) and what readers slice (input channels).

A grouped Conv (1 < group < C) couples its input and output in whole conv groups: removing
group g removes its cin/group input channels, its cout/group filters and one from `group`
(a depthwise Conv is the case cin/group = 1). Reached per channel, it leaves a hint so the
group is explored again in blocks of cin/group channels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnxcomp.passes.prune.mapping import Member, Unit
from onnxcomp.passes.prune.shape_entries import dim, rank


def weight(ex, node, i: int, what: str):
    const = ex.const_source(node.inputs[i]) if len(node.inputs) > i and node.inputs[i].name else None
    if const is None:
        ex.refuse(f"{ex.key(node)}: {node.op} {what} is not a constant")
    return const


def _bias(ex, node, i, m_out, axis_of):
    """Record the bias (input i) of a producer if present; axis_of(rank) picks its channel axis."""
    if len(node.inputs) > i and node.inputs[i].name:
        const = weight(ex, node, i, "bias")
        shape = const[2].shape
        if int(np.prod(shape)) == 1:
            return
        ex.add_const("out", const, axis_of(len(shape)), m_out, node, i, role="bias")


def conv(ex, node, side, index, m):
    w = weight(ex, node, 1, "weight")
    groups = int(node.attrs.get("group", 1))
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach Conv through its weight or bias")
    if m.axis != 1:
        if 2 <= m.axis < w[2].ndim:
            ex.window(node, m.axis, int(w[2].shape[m.axis]))
        ex.refuse(f"{ex.key(node)}: Conv channels on axis {m.axis}")
    c_out = w[2].shape[0]
    if groups == 1:
        _by_filters(ex, node, side, m, w)
        return
    _grouped_conv(ex, node, side, m, w, groups, w[2].shape[1], c_out // groups)


def _by_filters(ex, node, side, m, w):
    """As an ungrouped Conv: the weight loses input columns at `m` (a reader), or filters and bias entries
    (a producer)."""
    if side == "in":
        ex.add_const("in", w, 1, m.on_axis(1), node, 1)
        return
    ex.producer(node, w[2].shape[0], m)
    ex.add_const("out", w, 0, m.on_axis(0), node, 1)
    _bias(ex, node, 2, m.on_axis(0), lambda r: 0)


def _grouped_conv(ex, node, side, m, w, groups: int, cin_g: int, cout_g: int):
    """Whole conv groups: input blocks of cin_g channels <-> output blocks of cout_g filters; or the same
    positions taken from every conv group (see _in_every_conv_group)."""
    here, per = (cin_g, cout_g) if side == "in" else (cout_g, cin_g)
    if m.block % here or m.period % here:
        within = _in_every_conv_group(ex, m, groups, here)
        if within is not None:
            _by_filters(ex, node, side, within if side == "in" else m, w)
            return
        if ex.unit.repeat > 1 and here > 1:  # walking the same filters of every conv group (a ShuffleNet stream)
            _conv_groups_alike(ex, node, side, m, w, groups, here)
            return
        if m.block == 1 and m.repeat == 1:
            ex.hint(Unit(block=here))
            if side == "out" and here > 1:  # the same filters of every conv group (twice over for a shuffle)
                ex.hint(Unit(repeat=groups))
                ex.hint(Unit(repeat=groups * groups))
        ex.refuse(f"{ex.key(node)}: grouped Conv (group={groups}) couples channels in blocks of {here}")
    ex.crossed.append(ex.key(node))  # its filters go with this group: it starts no group of its own
    unit = replace(m, block=m.block // here, period=m.period // here)  # one position per conv group
    other = unit.scaled(per)
    in_m, out_m = (m, other) if side == "in" else (other, m)
    ex.add_const("out", w, 0, out_m.on_axis(0), node, 1)
    _bias(ex, node, 2, out_m.on_axis(0), lambda r: 0)
    ex.add(Member("attr", ex.key(node), mapping=unit.on_axis(0), use=(ex.key(node), -1), role="group"))
    ex.visit(node.inputs[0], in_m, node)
    ex.visit(node.outputs[0], out_m, node)


def _conv_groups_alike(ex, node, side, m, w, groups: int, size: int):
    """A piece of the group that is not the same places of every conv group by itself (a ShuffleNet stream
    whose Concat joins a grouped conv's filters and a pooled shortcut). As a reader, the conv keeps `group`
    and loses weight column j where every conv group loses its place j: the channels at place j of each
    conv group are tied (removed together), and all of them must be the group's. As a producer, each conv
    group must lose as many filters as the others, whichever: checked per tied set once the walk is over."""
    if side == "in":
        _by_filters(ex, node, side, replace(m, modulo=size), w)
        ex.tie_conv_groups(node, node.inputs[0].name, m.axis, groups, size)
        return
    _by_filters(ex, node, side, m, w)
    ex.balance_conv_groups(node, node.outputs[0].name, m.axis, groups, size)


def _in_every_conv_group(ex, m, groups: int, size: int):
    """The mapping inside one conv group when every group of `size` channels holds the same positions of
    each channel (a ShuffleNet unit: the same filters of every group, read back after the shuffle at the same
    places of every group): the conv keeps `group`, its weight loses those filters or input columns."""
    if m.repeat % groups:
        return None
    within = replace(m, repeat=m.repeat // groups, period=m.period if m.repeat > groups else 0)
    channels = np.arange(ex.channels)
    inside = within.positions(channels)
    every = np.add.outer(np.arange(groups) * size, inside).reshape(-1)
    if inside.size == 0 or inside.max() >= size or not np.array_equal(np.sort(every), np.sort(m.positions(channels))):
        return None
    return within


def conv_transpose(ex, node, side, index, m):
    w = weight(ex, node, 1, "weight")
    if int(node.attrs.get("group", 1)) != 1:
        ex.refuse(f"{ex.key(node)}: grouped ConvTranspose")
    if index == 0 and 2 <= m.axis < w[2].ndim:
        ex.window(node, m.axis, int(w[2].shape[m.axis]))
    if side == "in":
        if index != 0 or m.axis != 1:
            ex.refuse(f"{ex.key(node)}: channels reach ConvTranspose through input {index} axis {m.axis}")
        ex.add_const("in", w, 0, m.on_axis(0), node, 1)
        return
    if m.axis != 1:
        ex.refuse(f"{ex.key(node)}: ConvTranspose output reached on axis {m.axis}")
    ex.producer(node, w[2].shape[1], m)
    ex.add_const("out", w, 1, m.on_axis(1), node, 1)
    _bias(ex, node, 2, m.on_axis(0), lambda r: 0)


def gemm(ex, node, side, index, m):
    w = weight(ex, node, 1, "weight B")
    trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
    if side == "in":
        if index != 0:
            ex.refuse(f"{ex.key(node)}: channels reach Gemm through input {index}")
        if m.axis != (0 if trans_a else 1):
            ex.refuse(f"{ex.key(node)}: Gemm reads the group on its batch axis")
        ex.add_const("in", w, 1 if trans_b else 0, m, node, 1)
        return
    if m.axis != 1:
        ex.refuse(f"{ex.key(node)}: Gemm output features on axis {m.axis}")
    ex.producer(node, w[2].shape[0] if trans_b else w[2].shape[1], m)
    ex.add_const("out", w, 0 if trans_b else 1, m, node, 1)
    if len(node.inputs) > 2 and node.inputs[2].name:
        const = weight(ex, node, 2, "bias C")
        shape = const[2].shape
        if int(np.prod(shape)) != 1:
            if len(shape) == 2 and shape[0] != 1:
                ex.refuse(f"{ex.key(node)}: Gemm bias C has shape {shape}")
            ex.add_const("out", const, len(shape) - 1, m, node, 2, role="bias")


def _matmul_activations(ex, node, side, index, m):
    """A @ B of two activations (attention): batch axes couple both sides, rows/columns pass through, and
    the contracted axis couples A's columns with B's rows."""
    a, b, out = node.inputs[0], node.inputs[1], node.outputs[0]
    r_a, r_b, r_out = rank(ex, a), rank(ex, b), rank(ex, out)
    if min(r_a, r_b) < 2:
        ex.refuse(f"{ex.key(node)}: MatMul with a vector operand")
    src_rank = r_out if side == "out" else (r_a if index == 0 else r_b)
    a_out = m.axis + (r_out - src_rank)
    if side == "in" and (index == 0 and m.axis == r_a - 1 or index == 1 and m.axis == r_b - 2):
        # Contracted (q @ k^T over the features): feature c of A meets feature c of B, so the two couple;
        # without c the sum just loses its term, as with a weight that reads c. The output holds none.
        if a is b:
            ex.refuse(f"{ex.key(node)}: MatMul of a tensor with itself")
        other, axis = (b, r_b - 2) if index == 0 else (a, r_a - 1)
        ex.visit(other, m.on_axis(axis), node)
        return
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


def einsum(ex, node, side, index, m):
    """Einsum: the channel letter couples every operand that has it (unless broadcast) and the output;
    a contracted channel letter (absent from the output) is refused."""
    equation = str(node.attrs.get("equation", "")).replace(" ", "")
    if "..." in equation or "->" not in equation:
        ex.refuse(f"{ex.key(node)}: Einsum equation {equation!r} without explicit output or with ellipsis")
    lhs, out_letters = equation.split("->")
    operands = lhs.split(",")
    here = out_letters if side == "out" else operands[index]
    if m.axis >= len(here):
        ex.refuse(f"{ex.key(node)}: Einsum operand rank does not match its equation")
    letter = here[m.axis]
    if letter not in out_letters:
        ex.refuse(f"{ex.key(node)}: channels contracted by Einsum")
    size = dim(ex, node.outputs[0], out_letters.index(letter))
    ex.visit(node.outputs[0], m.on_axis(out_letters.index(letter)), node)
    for i, (t, letters) in enumerate(zip(node.inputs, operands)):
        if letter not in letters or (side == "in" and i == index):
            continue
        a = letters.index(letter)
        if dim(ex, t, a) == 1 and size != 1:
            continue
        const = ex.const_source(t)
        if const is not None:
            ex.add_const("param", const, a, m, node, i)
        else:
            ex.visit(t, m.on_axis(a), node)


def matmul(ex, node, side, index, m):
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


def output_channels(ex, node) -> tuple[int, int, int] | None:
    """(channels, output index, channel axis) where `node` starts a group, or None if it does not."""
    if len(node.inputs) < 2:
        return None
    w = ex.const_source(node.inputs[1])
    if w is None:
        return None
    values = w[2]
    if node.op == "Conv" and int(node.attrs.get("group", 1)) != 1 and values.shape[1] == 1:
        return None  # depthwise convs join the group of their input
    r = len(ex.shape(node.outputs[0]) or ()) or 2
    if node.op == "Conv":
        return int(values.shape[0]), 0, 1
    if node.op == "ConvTranspose":
        return int(values.shape[1]) * int(node.attrs.get("group", 1)), 0, 1
    if node.op == "Gemm":
        return int(values.shape[0] if int(node.attrs.get("transB", 0)) else values.shape[1]), 0, 1
    return (int(values.shape[-1]), 0, r - 1) if values.ndim == 2 else None
