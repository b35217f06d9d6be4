"""Where the entries of a shape tensor come from, and what must change when a group shrinks an axis.

Reshape, ConstantOfShape and Expand take their target shape from a 1-D int64 tensor: a constant
(rewritten by the plan), or a Concat of pieces that exporters build from Shape -> Gather ->
Unsqueeze (torch's x.view(x.size(0), x.size(1), -1)). A piece read at run time from Shape(t)
is right after pruning only if axis a of t shrinks exactly like the axis the entry sizes; the
explorer checks that once the walk is over (ex.follows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.graph.edit import producer
from onnxcomp.passes.prune.mapping import ALL, Member

PIECE_OPS = ("Unsqueeze", "Cast", "Identity", "Squeeze")  # ops that pass a one-element shape piece on


@dataclass(frozen=True)
class Entry:
    """One entry of a shape tensor: a constant's flat `index` (value known), or axis `axis` of `source`."""

    kind: str  # "const", "size", or "product" (a size times the constant entry: batch * heads)
    name: str = ""
    index: int = 0
    value: int = 0
    use: tuple = ("", 0)
    source: object = None
    axis: int = 0


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


def shape_entry(ex, tensor, k: int, use, depth: int = 0) -> Entry | None:
    """Entry k of a 1-D shape tensor: a constant's entry, a run-time size Shape(t)[a], or None if computed."""
    found = ex.const_source(tensor)
    if found is not None:
        flat = np.asarray(found[2]).reshape(-1)
        if found[1] != list(range(found[2].ndim)) or k >= flat.size:
            return None
        return Entry("const", found[0], k, int(flat[k]), use)
    node = producer(tensor)
    if node is None or depth > 8:
        return None
    if node.op == "Concat":
        start = 0
        for i, part in enumerate(node.inputs):
            n = ex.size(part)
            if n is None:
                return None
            if k < start + n:
                return shape_entry(ex, part, k - start, (ex.key(node), i), depth + 1)
            start += n
        return None
    if (node.op in PIECE_OPS or node.op == "Reshape" and ex.size(node.inputs[0]) == 1) and k == 0:
        return shape_entry(ex, node.inputs[0], 0, (ex.key(node), 0), depth + 1)
    if node.op in ("Cast", "Identity"):  # entry by entry
        return shape_entry(ex, node.inputs[0], k, (ex.key(node), 0), depth + 1)
    if node.op == "Slice":  # shape[0:2] of one tensor joined with shape[2:4] of another (Resize sizes)
        source = _slice_source(ex, node, k)
        return None if source is None else shape_entry(ex, node.inputs[0], source, (ex.key(node), 0), depth + 1)
    if node.op == "Mul" and k == 0 and all(ex.size(t) == 1 for t in node.inputs):
        a, b = (shape_entry(ex, t, 0, (ex.key(node), i), depth + 1) for i, t in enumerate(node.inputs))
        size, factor = (a, b) if b is not None and b.kind == "const" else (b, a)
        if size is not None and size.kind == "size" and factor is not None and factor.kind == "const":
            return Entry("product", factor.name, factor.index, factor.value, factor.use, size.source, size.axis)
    if node.op == "Shape":
        axis = _shape_axis(ex, node, k)
        return None if axis is None else Entry("size", source=node.inputs[0], axis=axis)
    if node.op == "Gather" and int(node.attrs.get("axis", 0)) == 0:
        data = producer(node.inputs[0])
        idx = ex.const_values(node.inputs[1])
        if data is None or data.op != "Shape" or idx is None or k >= np.asarray(idx).size:
            return None
        axis = _shape_axis(ex, data, int(np.reshape(idx, -1)[k]))
        return None if axis is None else Entry("size", source=data.inputs[0], axis=axis)
    return None


def sliced_positions(ex, node) -> list[int] | None:
    """The entries of a 1-D vector that Slice `node` keeps, in order (constant bounds), else None."""
    n = ex.size(node.inputs[0])
    params = [ex.const_values(t) if t.name else None for t in node.inputs[1:5]]
    params += [None] * (4 - len(params))
    starts, ends, axes, steps = (None if v is None else int(np.reshape(v, -1)[0]) for v in params)
    if starts is None or ends is None or n is None or axes not in (None, 0, -1) or steps == 0:
        return None
    return list(range(n))[slice(starts, ends, steps or 1)]


def _slice_source(ex, node, k: int) -> int | None:
    picked = sliced_positions(ex, node)
    return picked[k] if picked is not None and 0 <= k < len(picked) else None


def _shape_axis(ex, shape_node, k: int) -> int | None:
    """The axis of Shape's input behind entry k of its output (start/end attributes honoured)."""
    shape = ex.shape(shape_node.inputs[0])
    if shape is None:
        return None
    r = len(shape)
    start, end = (int(shape_node.attrs.get(a, d)) for a, d in (("start", 0), ("end", r)))
    start, end = (max(0, min(r, v + r if v < 0 else v)) for v in (start, end))
    k = k + (end - start) if k < 0 else k
    return start + k if 0 <= k < end - start else None


def follow_entry(ex, node, input_index: int, k: int, out, axis: int, m, zero_copies: bool = False,
                 minus_one: bool = False) -> None:
    """Entry k of node.inputs[input_index] sizes axis `axis` of `out`, which the group holds with `m`.

    A positive constant becomes a "value" member (rewritten by the plan), a run-time size is checked
    to follow the group, -1 (inferred) needs nothing where `minus_one` allows it, 0 (copy) where
    `zero_copies` allows it; anything else is refused.
    """
    use = (ex.key(node), input_index)
    entry = shape_entry(ex, node.inputs[input_index], k, use)
    what = f"{ex.key(node)}: {node.op}"
    if entry is None:
        ex.refuse(f"{what}'s entry for the channel axis is computed at run time")
    if entry.kind == "size":
        ex.follows(out.name, axis, entry.source, entry.axis, what)
        ex.reads_size(entry.source.name, entry.axis, ex.key(node))
    elif entry.kind == "product":  # batch * heads: the head count is the constant, the batch must not change
        ex.add(Member("value", entry.name, index=entry.index, lo=0, hi=ALL, use=entry.use, mapping=m))
        ex.follows(entry.source.name, entry.axis, entry.source, -1, what)
    elif entry.value > 0:
        ex.add(Member("value", entry.name, index=entry.index, lo=0, hi=ALL, use=entry.use, mapping=m))
    elif not ((entry.value == -1 and minus_one) or (entry.value == 0 and zero_copies)):
        ex.refuse(f"{what} has entry {entry.value} for the channel axis")


def fixed_entries_stay(ex, node, input_index: int, n: int, skip: int, changing_axis: int | None) -> None:
    """No entry but `skip` may copy (0) or read the size of the axis that changes."""
    for i in range(n):
        if i == skip:
            continue
        entry = shape_entry(ex, node.inputs[input_index], i, (ex.key(node), input_index))
        if entry is None:
            continue  # a computed entry that the group does not feed (e.g. the batch size)
        if entry.kind == "const" and entry.value == 0 and i == changing_axis and not int(node.attrs.get("allowzero", 0)):
            ex.refuse(f"{ex.key(node)}: {node.op} copies the channel axis into entry {i}")
