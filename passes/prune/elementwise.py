"""Rules for ops that keep channels where they are: elementwise, normalization, pooling, reductions over
other axes, and ops that only move axes around (Transpose, Gather on another axis).

Each is called as handler(ex, node, side, index, m); see handlers.py for the contract.
"""

from __future__ import annotations

import numpy as np

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


def pool(ex, node, side, index, m):
    if m.axis != 1:
        ex.refuse(f"{ex.key(node)}: {node.op} with the group on axis {m.axis}, not the channel axis")
    if len(node.outputs) > 1 and ex.used(node.outputs[1]):
        ex.refuse(f"{ex.key(node)}: {node.op} indices output is used")
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


def reduce(ex, node, side, index, m):
    """ReduceMean/Sum/Max... over other axes (an SE block's pooling, a mean over time): channels stay.

    With keepdims=0 the channel axis moves left by the reduced axes before it.
    """
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach {node.op} through its axes")
    r = rank(ex, node.inputs[0])
    axes = _reduced_axes(ex, node, r)
    if node.op in ("ArgMax", "ArgMin") and int(node.attrs.get("select_last_index", 0)) not in (0, 1):
        ex.refuse(f"{ex.key(node)}: unknown select_last_index")
    keep = int(node.attrs.get("keepdims", 1))
    in_axis = m.axis if side == "in" else _unreduced(m.axis, axes, r, keep)
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
    if m.axis in axes:
        k = axes.index(m.axis)
        if int(pads[k]) != 0 or int(pads[k + n]) != 0:
            ex.refuse(f"{ex.key(node)}: Pad pads the channel axis")
    ex.visit(node.inputs[0], m, node)
    ex.visit(node.outputs[0], m, node)


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
    """Gather rows along another axis (a GNN's node features by edge index): the channels stay."""
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
    ex.visit(node.inputs[0], m.on_axis(in_axis), node)
