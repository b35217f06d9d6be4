"""Rules for ops that keep channels where they are: elementwise, normalization, pooling, reductions over
other axes, and ops that only move axes around (Transpose, Gather on another axis).

Each is called as handler(ex, node, side, index, m); see handlers.py for the contract.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.passes.prune.parts import cut, join
from onnxcomp.passes.prune.shape_entries import dim, follow_entry, rank


def unary(ex, node, side, index, m):
    """x[c] -> y[c]"""
    if node.op == "Dropout" and len(node.outputs) > 1 and ex.used(node.outputs[1]):
        ex.refuse(f"{ex.key(node)}: Dropout mask is used")
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels enter {node.op} through input {index}")
    for i, t in enumerate(node.inputs[1:], start=1):  # Clip min/max must be scalars
        if t.name and ex.size(t) not in (1, None):
            ex.refuse(f"{ex.key(node)}: {node.op} input {i} is not a scalar")
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def binary(ex, node, side, index, m):
    """a[c] op b[c] -> y[c]: a per-channel constant is sliced, two activations couple, broadcasting is kept."""
    out = node.outputs[0]
    r_out = rank(ex, out)
    src = out if side == "out" else node.inputs[index]
    a_out = m.axis + (r_out - rank(ex, src))
    c_out = dim(ex, out, a_out)
    if side == "in" and dim(ex, src, m.axis) == 1 and c_out not in (1, None):
        # A one-wide operand broadcast over the output's channels (attention scores [N, T, 1] times the
        # states [N, T, H]): its single position is not the output's channels, which start their own group.
        ex.refuse(f"{ex.key(node)}: {node.op} broadcasts the group's one position over {c_out} channels")
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


def batchnorm(ex, node, side, index, m):
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


def normalization_axis(ex, node, side, index, m):
    """LayerNormalization/Softmax/LogSoftmax: channels pass through. Over other axes that is exact; over
    the channels it is lossy, as in Torch-Pruning (the kept channels are normalized among themselves, a
    LayerNorm's scale and bias lose the removed entries)."""
    r = rank(ex, node.inputs[0])
    axis = int(node.attrs.get("axis", -1)) % r
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels enter {node.op} through a parameter")
    covers = m.axis >= axis if node.op == "LayerNormalization" else m.axis == axis
    if covers:
        if len(node.outputs) > 1 and any(ex.used(t) for t in node.outputs[1:]):
            ex.refuse(f"{ex.key(node)}: {node.op} statistics outputs are used")
        ex.lossy(f"{node.op} over the channels")
        for i, t in enumerate(node.inputs[1:3], start=1):  # LayerNorm scale and bias: per channel
            if not t.name:
                continue
            a = m.axis - (r - rank(ex, t))
            if a < 0 or dim(ex, t, a) == 1:
                continue
            const = ex.const_source(t)
            if const is None:
                ex.refuse(f"{ex.key(node)}: {node.op} parameter {i} is not a constant")
            ex.add_const("param", const, a, m, node, i, role="norm")
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def lrn(ex, node, side, index, m):
    """LRN normalizes each channel by its neighbours on axis 1: with channels removed the window (size)
    stays valid and spans the kept neighbours instead (lossy); on other axes the channels just pass."""
    if m.axis == 1:
        ex.lossy("LRN over the channels")
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def pool(ex, node, side, index, m):
    kernel = list(node.attrs.get("kernel_shape", []))
    if 2 <= m.axis < 2 + len(kernel):  # a window slides along the group (global pools have none)
        ex.window(node, m.axis, int(kernel[m.axis - 2]))
    if m.axis != 1:
        ex.refuse(f"{ex.key(node)}: {node.op} with the group on axis {m.axis}, not the channel axis")
    if len(node.outputs) > 1 and ex.used(node.outputs[1]):
        ex.refuse(f"{ex.key(node)}: {node.op} indices output is used")
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def reduce(ex, node, side, index, m):
    """ReduceMean/Sum/Max... over other axes (an SE block's pooling, a mean over time): channels stay.

    With keepdims=0 the channel axis moves left by the reduced axes before it. A reduction over the
    channels (a global min for normalizing, an L2 norm) is lossy: it is taken over the kept channels and
    its output holds none of them. ArgMax/ArgMin over the channels stay refused: they return positions.
    """
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach {node.op} through its axes")
    r = rank(ex, node.inputs[0])
    axes = _reduced_axes(ex, node, r)
    if node.op in ("ArgMax", "ArgMin") and int(node.attrs.get("select_last_index", 0)) not in (0, 1):
        ex.refuse(f"{ex.key(node)}: unknown select_last_index")
    keep = int(node.attrs.get("keepdims", 1))
    in_axis = m.axis if side == "in" else _unreduced(m.axis, axes, r, keep)
    if side == "in" and in_axis in axes and node.op not in ("ArgMax", "ArgMin"):
        ex.lossy(f"{node.op} over the channels")  # a statistic over the kept channels (a global min/max)
        ex.visit(node.inputs[0], m, node)
        return
    if in_axis is None or in_axis in axes:
        ex.refuse(f"{ex.key(node)}: {node.op} reduces the channel axis")
    out_axis = in_axis if keep else in_axis - sum(a < in_axis for a in axes)
    ex.visit(node.inputs[0], m.on_axis(in_axis), node)
    ex.visit(node.outputs[0], m.on_axis(out_axis), node)


def _reduced_axes(ex, node, r: int) -> set[int]:
    if node.op in ("ArgMax", "ArgMin"):
        return {int(node.attrs.get("axis", 0)) % r}
    if len(node.inputs) > 1 and node.inputs[1].name:
        values = ex.const_values(node.inputs[1])
        if values is None:
            ex.refuse(f"{ex.key(node)}: {node.op} axes are computed at run time")
        axes = [int(a) for a in np.reshape(values, -1)]
    else:
        axes = [int(a) for a in node.attrs.get("axes", [])]
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return set()
        return set(range(r))
    return {a % r for a in axes}


def _unreduced(out_axis: int, axes: set[int], r: int, keep: int) -> int | None:
    if keep:
        return out_axis
    kept = [a for a in range(r) if a not in axes]
    return kept[out_axis] if out_axis < len(kept) else None


def pad(ex, node, side, index, m):
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
    before, after = (int(pads[axes.index(m.axis)]), int(pads[axes.index(m.axis) + n])) if m.axis in axes else (0, 0)
    if (before, after) == (0, 0):
        ex.visit(node.inputs[0], m, node)
        ex.visit(node.outputs[0], m, node)
        return
    if before < 0 or after < 0 or node.attrs.get("mode", "constant") not in ("constant", b"constant"):
        ex.refuse(f"{ex.key(node)}: Pad crops or mirrors the channel axis")
    # Constant channels added before and after the group's: the channels move by `before`, the pads stay.
    if side == "in":
        ex.visit(node.outputs[0], join(ex, node, m, before), node)
        return
    n_in = dim(ex, node.inputs[0], m.axis)
    held = m.positions(np.arange(ex.channels))
    if held.size and (held.min() < before or held.max() >= before + n_in):
        ex.refuse(f"{ex.key(node)}: the group holds channels Pad adds")
    for _, part in cut(ex, node, m, [(before, n_in)]):
        ex.visit(node.inputs[0], part, node)


def resize(ex, node, side, index, m):
    """Resize/Upsample scale spatial axes; the channel axis must keep scale 1 (sizes are rewritten)."""
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach {node.op} through input {index}")
    scales_at = 1 if node.op == "Upsample" else 2
    if len(node.inputs) > scales_at and node.inputs[scales_at].name:
        scales = ex.const_values(node.inputs[scales_at])
        if scales is None or (scales.size and float(np.reshape(scales, -1)[m.axis]) != 1.0):
            ex.refuse(f"{ex.key(node)}: {node.op} scales the channel axis or its scales are computed")
    if node.op == "Resize" and len(node.inputs) > 3 and node.inputs[3].name:
        if node.attrs.get("axes"):
            ex.refuse(f"{ex.key(node)}: Resize with axes")
        follow_entry(ex, node, 3, m.axis, node.outputs[0], m.axis, m)
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def transpose(ex, node, side, index, m):
    perm = [int(p) for p in node.attrs.get("perm", [])] or list(reversed(range(rank(ex, node.inputs[0]))))
    if side == "in":
        ex.visit(node.outputs[0], m.on_axis(perm.index(m.axis)), node)
    else:
        ex.visit(node.inputs[0], m.on_axis(perm[m.axis]), node)


def gather(ex, node, side, index, m):
    """Gather rows along another axis (a GNN's node features by edge index, an embedding lookup): the
    channels stay; a constant table is sliced like a parameter."""
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach Gather through its indices")
    r = rank(ex, node.inputs[0])
    axis = int(node.attrs.get("axis", 0)) % r
    k = rank(ex, node.inputs[1])
    if side == "in":
        if m.axis == axis:
            ex.refuse(f"{ex.key(node)}: Gather selects along the channel axis")
        out_axis = m.axis if m.axis < axis else m.axis + k - 1
        ex.visit(node.outputs[0], m.on_axis(out_axis), node)
        return
    if axis <= m.axis < axis + k:
        ex.refuse(f"{ex.key(node)}: channels on the axes of Gather's indices")
    in_axis = m.axis if m.axis < axis else m.axis - k + 1
    const = ex.const_source(node.inputs[0])
    if const is not None:  # an embedding table: its rows hold the channels
        ex.add_const("param", const, in_axis, m, node, 0)
    else:
        ex.visit(node.inputs[0], m.on_axis(in_axis), node)


def gather_nd(ex, node, side, index, m):
    """GatherND picking rows by index tuples (a GNN's per-graph readout): axes after the indexed ones stay."""
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach GatherND through its indices")
    batch = int(node.attrs.get("batch_dims", 0))
    k = dim(ex, node.inputs[1], rank(ex, node.inputs[1]) - 1)
    shift = rank(ex, node.inputs[1]) - 1 - batch - k  # data axis a >= batch + k lands on a + shift
    in_axis = m.axis if side == "in" else m.axis - shift
    if in_axis < batch + k:
        ex.refuse(f"{ex.key(node)}: GatherND indexes the channel axis")
    ex.visit(node.inputs[0], m.on_axis(in_axis), node)
    ex.visit(node.outputs[0], m.on_axis(in_axis + shift), node)


def scatter_elements(ex, node, side, index, m):
    """ScatterElements along another axis (a GNN's scatter-add of messages onto nodes): data, indices,
    updates and output all hold the channels on the same axis (the indices are expanded along it)."""
    axis = int(node.attrs.get("axis", 0)) % rank(ex, node.inputs[0])
    if m.axis == axis:
        ex.refuse(f"{ex.key(node)}: {node.op} scatters along the channel axis")
    for i, t in enumerate(node.inputs[:3]):
        const = ex.const_source(t)
        if const is not None:  # a constant start or index table: sliced like a per-channel parameter
            ex.add_const("param", const, m.axis, m, node, i)
        else:
            ex.visit(t, m, node)
    ex.visit(node.outputs[0], m, node)
