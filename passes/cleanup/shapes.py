"""Shape computations folded where shapes are known.

Exporters compute shapes at run time: Shape -> Gather/Slice -> Unsqueeze -> Concat -> Reshape.
Walking the graph once, every small 1-D integer tensor gets a *partial value*: one entry per
element, an int where it is known and None where it depends on a dynamic dim. A value known in
full becomes a constant (the ops that computed it die); a Reshape whose target is known except in
one place reads a constant with -1 there. A dynamic dim is never replaced by a number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.pipeline.pass_base import PassReport

# A shape value longer than this is not tracked (shapes are short; this bounds the work per node).
_MAX_ITEMS = 64
_INT_TYPES = {6: np.int32, 7: np.int64}  # ONNX INT32, INT64: the types shapes travel in


@dataclass(frozen=True)
class Partial:
    items: tuple         # int, or None where unknown
    scalar: bool         # a 0-d tensor (one item) rather than 1-D
    dtype: type

    @property
    def known(self) -> bool:
        return all(isinstance(i, int) for i in self.items)

    def array(self) -> np.ndarray:
        values = np.array(self.items, dtype=self.dtype)
        return values.reshape(()) if self.scalar else values


def constant_ints(t) -> np.ndarray | None:
    """The values of a small integer constant, or None."""
    import onnx_graphsurgeon as gs

    if not isinstance(t, gs.Constant) or t.dtype not in (np.int32, np.int64) or len(t.shape) > 1:
        return None
    if int(np.prod(t.shape)) > _MAX_ITEMS:
        return None
    return np.asarray(t.values)


def _axes(node, index: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or the constant input `index` (newer)."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > index:
        values = constant_ints(node.inputs[index])
        return None if values is None else [int(a) for a in values.reshape(-1)]
    return []


def _shape(node, values, facts):
    dims = facts.shape(node.inputs[0])
    if dims is None:
        return None
    rank = len(dims)
    start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
    end = rank if end is None else int(end)
    start, end = (min(max(v + rank if v < 0 else v, 0), rank) for v in (start, end))
    return Partial(tuple(d if isinstance(d, int) else None for d in dims[start:end]), False, np.int64)


def _size(node, values, facts):
    dims = facts.shape(node.inputs[0])
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    return Partial((int(np.prod(dims, dtype=np.int64)),), True, np.int64)


def _gather(node, values, facts):
    data = values[0]
    indices = constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    if data is None or data.scalar or indices is None or int(node.attrs.get("axis", 0)) not in (0, -1):
        return None
    n = len(data.items)
    picked = []
    for i in indices.reshape(-1).tolist():
        i = i + n if i < 0 else i
        if not 0 <= i < n:
            return None
        picked.append(data.items[i])
    return Partial(tuple(picked), indices.ndim == 0, data.dtype)


def _unsqueeze(node, values, facts):
    data = values[0]
    if data is None or not data.scalar or _axes(node, 1) not in ([0], [-1]):
        return None
    return Partial(data.items, False, data.dtype)


def _squeeze(node, values, facts):
    data = values[0]
    if data is None or data.scalar or len(data.items) != 1 or _axes(node, 1) not in ([], [0], [-1]):
        return None
    return Partial(data.items, True, data.dtype)


def _concat(node, values, facts):
    if int(node.attrs.get("axis", 0)) not in (0, -1) or not values:
        return None
    if any(v is None or v.scalar or v.dtype is not values[0].dtype for v in values):
        return None
    return Partial(tuple(i for v in values for i in v.items), False, values[0].dtype)


def _slice(node, values, facts):
    data = values[0]
    if data is None or data.scalar or "starts" in node.attrs or len(node.inputs) < 3:
        return None
    args = [constant_ints(t) for t in node.inputs[1:5]]
    if any(a is None or a.size != 1 for a in args):
        return None
    start, end, *rest = (int(a.reshape(-1)[0]) for a in args)
    axis = rest[0] if rest else 0
    step = rest[1] if len(rest) > 1 else 1
    if axis not in (0, -1) or step == 0:
        return None
    picked = range(len(data.items))[slice(start, end, step)]
    return Partial(tuple(data.items[i] for i in picked), False, data.dtype)


def _cast(node, values, facts):
    data, to = values[0], _INT_TYPES.get(int(node.attrs.get("to", 0)))
    return None if data is None or to is None else Partial(data.items, data.scalar, to)


def _identity(node, values, facts):
    return values[0]


def _arith(node, values, facts):
    """Add/Sub/Mul/Div of shape values; Div only where floor and truncation agree."""
    a, b = values[0], values[1] if len(values) > 1 else None
    if a is None or b is None or a.dtype is not b.dtype:
        return None
    n = max(len(a.items), len(b.items))
    if {len(a.items), len(b.items)} - {1, n}:
        return None
    pairs = zip(a.items * n if len(a.items) == 1 else a.items, b.items * n if len(b.items) == 1 else b.items)
    out = []
    for x, y in pairs:
        if x is None or y is None:
            out.append(None)
        elif node.op == "Add":
            out.append(x + y)
        elif node.op == "Sub":
            out.append(x - y)
        elif node.op == "Mul":
            out.append(x * y)
        else:
            out.append(x // y if x >= 0 and y > 0 else None)
    return Partial(tuple(out), a.scalar and b.scalar, a.dtype)


# op -> (node, partial values of its inputs, facts) -> Partial of output 0, or None.
_RULES = {
    "Shape": _shape, "Size": _size, "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Concat": _concat, "Slice": _slice, "Cast": _cast, "Identity": _identity,
    "Add": _arith, "Sub": _arith, "Mul": _arith, "Div": _arith,
}


def has_shape_work(graph) -> bool:
    return any(n.op in ("Shape", "Size", "Reshape") for n in graph.nodes)


def fold_shapes(graph, facts, report: PassReport, names) -> int:
    """Replace fully known shape values by constants and give Reshapes constant targets where
    only one entry is unknown. Returns how many tensors became constants (targets included)."""
    import onnx_graphsurgeon as gs

    from onnxcomp.graph.edit import replace_uses

    outputs = {id(t) for t in graph.outputs}
    known: dict[int, Partial] = {}
    replaced = 0
    for node in graph.nodes:
        if node.op == "Reshape" and len(node.inputs) == 2 and not isinstance(node.inputs[1], gs.Constant):
            replaced += _constant_target(node, known.get(id(node.inputs[1])), facts, report, names)
        rule = _RULES.get(node.op)
        if rule is None or node.domain not in (None, "", "ai.onnx") or len(node.outputs) != 1 or not node.inputs:
            continue
        values = [_value(t, known) for t in node.inputs]
        if node.op not in ("Shape", "Size") and all(v is None for v in values):
            continue
        try:
            result = rule(node, values, facts)
        except (TypeError, ValueError, KeyError, IndexError):  # odd attributes: not a shape value
            result = None
        if result is None or len(result.items) > _MAX_ITEMS:
            continue
        out = node.outputs[0]
        known[id(out)] = result
        if result.known and id(out) not in outputs:
            const = gs.Constant(names(out.name + "_value"), result.array())
            replace_uses(out, const)
            known[id(const)] = result
            replaced += 1
            report.count("shape_values_folded")
    return replaced


def _value(t, known: dict) -> Partial | None:
    found = known.get(id(t))
    if found is not None:
        return found
    values = constant_ints(t)
    if values is None:
        return None
    return Partial(tuple(int(v) for v in values.reshape(-1)), values.ndim == 0, values.dtype.type)


def _constant_target(node, partial: Partial | None, facts, report: PassReport, names) -> int:
    """Reshape(x, computed) -> Reshape(x, constant) when the target is known but for one entry
    (that one becomes -1: the reshape infers it from x's size, which is what it was)."""
    import onnx_graphsurgeon as gs

    target = None
    out_dims = facts.shape(node.outputs[0])
    if out_dims is not None:
        target = [d if isinstance(d, int) else None for d in out_dims]
    unknown = sum(d is None for d in target) if target is not None else None
    if partial is not None and (unknown is None or sum(d is None for d in partial.items) < unknown):
        target = list(partial.items)
    if target is None or sum(d is None for d in target) > 1 or any(d is not None and d <= 0 for d in target):
        return 0  # 0 and -1 entries mean "copy" and "infer": they would have to be proven the same here
    node.inputs[1] = gs.Constant(names(node.outputs[0].name + "_shape"),
                                 np.array([-1 if d is None else d for d in target], dtype=np.int64))
    report.count("reshape_target_made_constant")
    return 1
