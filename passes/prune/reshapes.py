"""Rules for ops that change the shape around the channels: Reshape, Flatten, Squeeze/Unsqueeze, Expand,
ConstantOfShape, DepthToSpace, and Shape (which reads the channel count at run time).

A Reshape keeps the channels findable when the flat order from some axis on is the same on both
sides (regroup): merging the channel axis with the axes after it (Flatten-like: a channel becomes
a block), merging it with axes before it (a channel appears once per outer index: repeat), or
splitting it into [groups, per group] (attention heads, GroupNorm, channel shuffle), which works
only for whole groups: then the walk leaves a hint and the group is explored again in those units.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnxcomp.passes.prune import group_norm
from onnxcomp.passes.prune.mapping import Mapping, Unit
from onnxcomp.passes.prune.shape_entries import (
    dim,
    fixed_entries_stay,
    follow_entry,
    rank,
    shape_entry,
    sliced_positions,
)


def regroup(src, axis: int, m: Mapping, dst):
    """Where the group's positions on `axis` of a tensor shaped `src` land once it is reshaped to `dst`.

    Returns (dst axis, mapping), or (None, head size) when only whole groups of that size would
    land (a hint), or (None, None). Found from the flat order: for some a0 <= axis and k,
    prod(src[a0:]) == prod(dst[k:]), so the outer parts line up and the suffixes are the same
    elements in the same order.
    """
    if None in src[axis:]:
        return None, None
    inner = int(np.prod(src[axis + 1:]))
    channels = src[axis]
    known = [k for k in range(len(dst)) if None not in dst[k:]]  # unknown outer dims (batch) do not matter
    for a0 in range(axis, -1, -1):
        if None in src[a0:axis]:
            break
        total = int(np.prod(src[a0:]))
        ks = [k for k in known if int(np.prod(dst[k:])) == total and dst[k] != 1]
        if not ks:
            continue
        k = max(ks)
        inner_d = int(np.prod(dst[k + 1:]))
        outer = int(np.prod(src[a0:axis]))
        if inner % inner_d == 0:  # merge with what follows (block), and with what precedes (repeat)
            merged = m.scaled(inner // inner_d)
            if outer == 1:
                return k, merged.on_axis(k)
            if m.repeat != 1:
                return None, None
            return k, replace(merged, axis=k, repeat=outer, period=channels * (inner // inner_d))
        if outer == 1 and inner_d % inner == 0:  # split [.., G*S, ..] -> [.., G, S, ..]: whole groups only
            h = inner_d // inner
            if m.block % h == 0 and m.period % h == 0:
                return k, replace(m, axis=k, block=m.block // h, period=m.period // h)
            if m.repeat % dst[k] == 0 and m.period * (m.repeat // dst[k]) == h:
                # [3 * D] -> [3, D]: the repeats get their own axis; a shuffle's [g * g * P] -> [g, g * P] keeps
                # g repeats of period P inside each of the g parts
                inside = m.repeat // dst[k]
                sub_k, sub_m = regroup((h, *src[axis + 1:]), 0,
                                       replace(m, repeat=inside, period=m.period if inside > 1 else 0), dst[k + 1:])
                return (None, None) if sub_k is None else (k + 1 + sub_k, sub_m.on_axis(k + 1 + sub_k))
            return None, h
        q = inner_d // (channels * inner) if inner_d % (channels * inner) == 0 else 0
        if q > 1 and outer % q == 0 and m.repeat == 1 and len(dst) == k + 2:
            # [.., R, C] -> [.., R/q, q*C]: q rows fold into the features, each channel q times, C apart
            return k + 1, replace(m.scaled(inner), axis=k + 1, repeat=q, period=channels * inner)
        return None, None
    return None, None


def split_hints(src, axis: int, dst) -> list[Unit]:
    """Units that would carry a per-channel walk through a Reshape splitting the channel axis:
    whole groups of the split (heads, GroupNorm groups), or, for [.., R*G*S] -> [.., R, G, S]
    (q, k and v packed together), R repeats of a head of S."""
    k, h = regroup(src, axis, Mapping(axis), dst)
    if k is not None or h is None:
        return []
    hints = [Unit(block=h)]
    heads = [j for j in range(len(dst)) if None not in dst[j:] and int(np.prod(dst[j:])) == int(np.prod(src[axis:]))
             and dst[j] != 1]
    j = max(heads)
    inner = int(np.prod(src[axis + 1:]))
    for n in range(j + 2, len(dst) + 1):
        block = int(np.prod(dst[n:])) // inner if int(np.prod(dst[n:])) % inner == 0 else 0
        if block and src[axis] % (dst[j] * block) == 0:
            hints.append(Unit(block=block, repeat=dst[j]))
    return hints
    return None, None


def reshape(ex, node, side, index, m):
    """Reshape keeping, merging or splitting the channel axis (see regroup); the shape entry sizing
    the channels' new axis is rewritten, followed at run time, or inferred (-1)."""
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach Reshape through its shape")
    src, dst = ex.shape(node.inputs[0]), ex.shape(node.outputs[0])
    if src is None or dst is None:
        ex.refuse(f"{ex.key(node)}: Reshape ranks unknown")
    dst = _fill_inferred(src, tuple(d if d is not None else _positive_entry(ex, node, i) for i, d in enumerate(dst)))
    if side == "in":
        src = _with_inferred(ex, node, src, m.axis)
        dst = _fill_heads(ex, node, src, dst, m.axis)
        k, out_m = regroup(src, m.axis, m, dst)
        in_axis, in_m = m.axis, m
    else:
        in_axis, in_m = regroup(dst, m.axis, m, src)
        k, out_m = m.axis, m
    if in_axis is None or k is None:
        opener = node if side == "in" else group_norm.opener(node)
        norm = opener is not None and group_norm.pattern(ex, opener, m) is not None
        if norm and ex.regroup_norms:
            group_norm.regroup(ex, opener, m)
            return
        if m.block == 1 and m.repeat == 1 and side == "in":
            for unit in split_hints(src, m.axis, dst):
                ex.hint(unit)
        if norm and m.block == 1 and m.repeat == 1:
            ex.hint(Unit(regroup_norms=True))  # after whole GroupNorm groups, which stay exact
        where = "the channel axis" if src[in_axis if in_axis is not None else m.axis] is not None else "unknown sizes"
        ex.refuse(f"{ex.key(node)}: Reshape splits or reorders {where}")
    copies = k == in_axis and src[in_axis] == dst[k] and not int(node.attrs.get("allowzero", 0))
    follow_entry(ex, node, 1, k, node.outputs[0], k, out_m, zero_copies=copies, minus_one=True)
    fixed_entries_stay(ex, node, 1, len(dst), k, in_axis)
    ex.visit(node.inputs[0], in_m, node)
    ex.visit(node.outputs[0], out_m, node)


def _with_inferred(ex, node, src, axis):
    if None in src[axis:]:
        ex.refuse(f"{ex.key(node)}: Reshape input shape unknown from the channel axis on")
    return src


def _fill_heads(ex, node, src, dst, axis: int):
    """[a, b, -1, D] after [A, B, H*D] (an export's view(x.size(0), x.size(1), -1, D)): with the leading
    entries sized like the input's leading axes, the -1 is H*D / D. Unknown batch and sequence sizes
    then do not matter."""
    if len(dst) <= axis or dst[axis] is not None or [d is None for d in dst[axis:]].count(True) != 1:
        return dst
    entries = [shape_entry(ex, node.inputs[1], i, (ex.key(node), 1)) for i in range(axis + 1)]
    if entries[axis] is None or entries[axis].kind != "const" or entries[axis].value != -1:
        return dst
    for i, e in enumerate(entries[:axis]):
        same = e is not None and (e.kind == "size" and e.axis == i or e.kind == "const" and e.value == src[i])
        if not same:
            return dst
    tail, rest = int(np.prod(src[axis:])), int(np.prod(dst[axis + 1:]))
    return dst if tail % rest else dst[:axis] + (tail // rest,) + dst[axis + 1:]


def _fill_inferred(src, dst):
    """dst with its one unknown entry (a -1 the shape inference could not size) computed from src."""
    if [d is None for d in dst].count(True) != 1 or None in src:
        return dst
    known = int(np.prod([d for d in dst if d is not None]))
    total = int(np.prod(src))
    if known == 0 or total % known:
        return dst
    return tuple(total // known if d is None else d for d in dst)


def _positive_entry(ex, node, i: int):
    """Entry i of a Reshape's shape when static inference left it unknown: a positive constant, or a
    run-time size (times a constant) whose source dimension is known."""
    entry = shape_entry(ex, node.inputs[1], i, (ex.key(node), 1))
    if entry is None:
        return None
    if entry.kind == "const":
        return entry.value if entry.value > 0 else None
    shape = ex.shape(entry.source)
    size = shape[entry.axis] if shape is not None and shape[entry.axis] is not None else None
    if size is None:
        return None
    return size * entry.value if entry.kind == "product" else size


def flatten(ex, node, side, index, m):
    shape = ex.shape(node.inputs[0])
    if shape is None or any(d is None for d in shape):
        ex.refuse(f"{ex.key(node)}: Flatten input shape unknown")
    k = int(node.attrs.get("axis", 1)) % max(len(shape), 1)
    out_shape = (int(np.prod(shape[:k])), int(np.prod(shape[k:])))
    if side == "in":
        axis, out_m = regroup(shape, m.axis, m, out_shape)
        if axis is None:
            ex.refuse(f"{ex.key(node)}: Flatten(axis={k}) mixes the channel axis with the batch axes")
        ex.visit(node.outputs[0], out_m, node)
    else:
        axis, in_m = regroup(out_shape, m.axis, m, shape)
        if axis is None:
            ex.refuse(f"{ex.key(node)}: flattened features coupled from downstream")
        ex.visit(node.inputs[0], in_m, node)


def squeeze(ex, node, side, index, m):
    """Squeeze/Unsqueeze drop or add size-1 axes: the channel axis moves by the ones before it."""
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach {node.op} through its axes")
    r_in = rank(ex, node.inputs[0])
    r_out = rank(ex, node.outputs[0])
    if len(node.inputs) > 1 and node.inputs[1].name:
        values = ex.const_values(node.inputs[1])
        if values is None:
            ex.refuse(f"{ex.key(node)}: {node.op} axes are computed at run time")
        axes = [int(a) for a in np.reshape(values, -1)]
    else:
        axes = [int(a) for a in node.attrs.get("axes", [])]
    if node.op == "Squeeze":
        if not axes:
            axes = [a for a in range(r_in) if dim(ex, node.inputs[0], a) == 1]
        gone = {a % r_in for a in axes}
        kept = [a for a in range(r_in) if a not in gone]  # kept[out axis] = in axis
    else:
        added = {a % r_out for a in axes}
        rest = iter(range(r_in))
        kept = [None if a in added else next(rest) for a in range(r_out)]
    if side == "in":
        if m.axis not in kept:
            ex.refuse(f"{ex.key(node)}: Squeeze removes the channel axis")
        ex.visit(node.outputs[0], m.on_axis(kept.index(m.axis)), node)
    else:
        if kept[m.axis] is None:
            ex.refuse(f"{ex.key(node)}: channels on an axis Unsqueeze adds")
        ex.visit(node.inputs[0], m.on_axis(kept[m.axis]), node)


def constant_of_shape(ex, node, side, index, m):
    """A filled tensor (an RNN's zero state) sized along the channel axis: its shape entry follows the group."""
    if side == "in":
        ex.refuse(f"{ex.key(node)}: channels reach ConstantOfShape through its shape")
    follow_entry(ex, node, 0, m.axis, node.outputs[0], m.axis, m)


def expand(ex, node, side, index, m):
    """Expand broadcasts x to a shape: the channel axis keeps its place from the right."""
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach Expand through its shape")
    x, out = node.inputs[0], node.outputs[0]
    r_x, r_out = rank(ex, x), rank(ex, out)
    n = ex.size(node.inputs[1])
    if n is None:
        ex.refuse(f"{ex.key(node)}: Expand shape length unknown")
    a_out = m.axis + (r_out - r_x) if side == "in" else m.axis
    a_x = a_out - (r_out - r_x)
    j = a_out - (r_out - n)
    if j >= 0:
        entry = shape_entry(ex, node.inputs[1], j, (ex.key(node), 1))
        if entry is None or not (entry.kind == "const" and entry.value == 1):
            follow_entry(ex, node, 1, j, out, a_out, m.on_axis(a_out))
    ex.visit(out, m.on_axis(a_out), node)
    const = ex.const_source(x)
    if a_x >= 0 and dim(ex, x, a_x) != 1:
        if const is not None:
            ex.add_const("param", const, a_x, m, node, 0)
        else:
            ex.visit(x, m.on_axis(a_x), node)
    elif side == "in":
        ex.refuse(f"{ex.key(node)}: Expand input broadcast on the channel axis")


def shape(ex, node, side, index, m):
    """Shape reading the channel count is fine where that count only sizes Reshapes the group
    rewrites consistently (checked at the end of the walk); other dimensions are harmless."""
    start = int(node.attrs.get("start", 0))
    r = rank(ex, node.inputs[0])
    start = start + r if start < 0 else start
    end = int(node.attrs.get("end", r))
    end = end + r if end < 0 else end
    if not start <= m.axis < min(end, r):
        return
    _trace_size(ex, node.outputs[0], m.axis - start, node.inputs[0].name, m.axis, ex.key(node), 0)


SIZE_SINKS = {"Reshape": 1, "ConstantOfShape": 0, "Expand": 1, "Resize": 3}  # op -> the input that takes a shape


def _trace_size(ex, tensor, k: int, name: str, axis: int, what: str, depth: int):
    """Follow entry k of a shape vector to the nodes it sizes; each must be one the walk checks."""
    if depth > 8:
        ex.refuse(f"{what}: the channel count is read by Shape")
    for consumer in tensor.outputs:
        op = consumer.op
        if op in SIZE_SINKS and consumer.inputs[SIZE_SINKS[op]] is tensor:
            ex.needs_reader(name, axis, ex.key(consumer), f"{what} -> {ex.key(consumer)}")
        elif op == "Gather" and consumer.inputs[0] is tensor and int(consumer.attrs.get("axis", 0)) == 0:
            idx = ex.const_values(consumer.inputs[1])
            if idx is None:
                ex.refuse(f"{what}: the channel count is read by Shape")
            n = ex.size(tensor)
            for j, i in enumerate(np.reshape(idx, -1)):
                if int(i) % (n or 2**62) == k:
                    _trace_size(ex, consumer.outputs[0], j, name, axis, what, depth + 1)
        elif op in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
            _trace_size(ex, consumer.outputs[0], k, name, axis, what, depth + 1)
        elif op == "Slice" and consumer.inputs[0] is tensor:
            picked = sliced_positions(ex, consumer)
            if picked is None:
                ex.refuse(f"{what}: the channel count is read by Shape (used by Slice {ex.key(consumer)})")
            if k in picked:  # else the Slice drops the entry, e.g. shape[2:4] for a Resize
                _trace_size(ex, consumer.outputs[0], picked.index(k), name, axis, what, depth + 1)
        elif op == "Concat":
            before = 0
            for part in consumer.inputs:
                if part is tensor:
                    _trace_size(ex, consumer.outputs[0], before + k, name, axis, what, depth + 1)
                n = ex.size(part)
                if n is None:
                    ex.refuse(f"{what}: the channel count is read by Shape")
                before += n
        else:
            ex.refuse(f"{what}: the channel count is read by Shape (used by {op} {ex.key(consumer)})")


def depth_to_space(ex, node, side, index, m):
    """DepthToSpace moves b*b channels into a b x b spatial block. CRD: output channel c is input channels
    c*b*b .. c*b*b + b*b - 1 (a block); DCR: input channels k*C + c for k < b*b (b*b repeats of period C).
    A per-channel walk from the input leaves a hint for those units."""
    if m.axis != 1:
        ex.refuse(f"{ex.key(node)}: DepthToSpace reached on axis {m.axis}")
    b2 = int(node.attrs.get("blocksize", 1)) ** 2
    crd = str(node.attrs.get("mode", "DCR")).upper() == "CRD"
    c_out = dim(ex, node.outputs[0], 1)
    if side == "out":
        if crd:
            ex.visit(node.inputs[0], m.scaled(b2), node)
        elif m.repeat == 1 and c_out is not None:
            ex.visit(node.inputs[0], replace(m, repeat=b2, period=c_out), node)
        else:
            ex.refuse(f"{ex.key(node)}: DepthToSpace (DCR) output reached in repeats")
        return
    if crd and m.block % b2 == 0 and m.period % b2 == 0:
        ex.visit(node.outputs[0], replace(m, block=m.block // b2, period=m.period // b2), node)
    elif not crd and m.repeat == b2 and c_out is not None and m.period == c_out:
        ex.visit(node.outputs[0], replace(m, repeat=1, period=0), node)
    else:
        if m.block == 1 and m.repeat == 1:
            ex.hint(Unit(block=b2) if crd else Unit(repeat=b2))
        ex.refuse(f"{ex.key(node)}: DepthToSpace ({'CRD' if crd else 'DCR'}) moves channels in units of {b2}")
