"""Nodes that compute nothing: their output equals an input (or an earlier tensor), so readers
are pointed there. One table of local rules, each `(node, facts) -> tensor the output equals`;
three more merge a pair into one node (Transpose, Reshape and Unsqueeze pairs).

A rule that needs a shape or dtype asks the shape facts and refuses when they do not prove it.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import is_pass_through, producer, replace_output, replace_uses
from onnxcomp.pipeline.pass_base import PassReport

from .shapes import constant_ints

# Slice ends at or past this mean "to the end" whatever the dim (exporters write INT32/INT64 max).
_TO_THE_END = 2**31 - 1

# ONNX element types -> the wider types that hold each of their values exactly (so a Cast there
# and back returns the input). Lossy pairs (int32 -> float, int64 -> double ...) are not here.
_F16, _BF16, _F32, _F64 = 10, 16, 1, 11
_I8, _U8, _I16, _U16, _I32, _U32, _I64, _U64, _BOOL = 3, 2, 5, 4, 6, 12, 7, 13, 9
_EXACT_WIDER = {
    _F16: {_F32, _F64}, _BF16: {_F32, _F64}, _F32: {_F64},
    _I8: {_I16, _I32, _I64, _F16, _F32, _F64},
    _U8: {_I16, _U16, _I32, _U32, _I64, _U64, _F16, _F32, _F64},
    _I16: {_I32, _I64, _F32, _F64}, _U16: {_I32, _U32, _I64, _U64, _F32, _F64},
    _I32: {_I64, _F64}, _U32: {_I64, _U64, _F64},
    _BOOL: {_I8, _U8, _I16, _U16, _I32, _U32, _I64, _U64, _F16, _BF16, _F32, _F64},
}


def _is_constant(t, value: float) -> bool:
    import onnx_graphsurgeon as gs

    if not isinstance(t, gs.Constant) or int(np.prod(t.shape)) > 1 << 16:
        return False
    try:
        values = np.asarray(t.values)
    except Exception:  # types numpy cannot read (bfloat16, float8)
        return False
    return values.dtype.kind in "fiub" and bool(np.all(values == value))


def _keeps_shape(c, x, facts) -> bool:
    """Whether broadcasting constant `c` against `x` leaves x's shape as it is."""
    cs, xs = tuple(c.shape), facts.shape(x)
    if xs is None:
        return False
    if len(cs) > len(xs):
        return False
    return all(a == 1 or a == b for a, b in zip(reversed(cs), reversed(xs)))


def _neutral(node, facts, value: float, commutes: bool):
    """x op c (or c op x when `commutes`) with c all `value` and broadcast-neutral -> x."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    for x, c in ((a, b), (b, a)) if commutes else ((a, b),):
        if _is_constant(c, value) and _keeps_shape(c, x, facts) and facts.dtype(c) == facts.dtype(x):
            return x
    return None


def _same_shape(node, facts):
    """Reshape/Flatten/Squeeze/Expand/Tile whose output has exactly its input's shape -> input."""
    x = node.inputs[0]
    return x if facts.same_dims(facts.shape(x), facts.shape(node.outputs[0])) else None


def _identity(node, facts):
    return node.inputs[0] if is_pass_through(node) else None


def _cast(node, facts):
    x, to = node.inputs[0], int(node.attrs.get("to", -1))
    if facts.dtype(x) == to:
        return x  # Cast(x, type(x)) -> x
    inner = producer(x)
    if inner is not None and inner.op == "Cast" and inner.inputs:
        source = inner.inputs[0]  # Cast(Cast(x, wider), type(x)) -> x
        if facts.dtype(source) == to and int(inner.attrs.get("to", -1)) in _EXACT_WIDER.get(to, ()):
            return source
    return None


def _reshape(node, facts):
    """Reshape to x's own shape -> x; also Reshape(x, t) where t equals x's dims but for one -1
    (the -1 then has to be that dim: the element count is the same)."""
    x = node.inputs[0]
    if _same_shape(node, facts) is not None:
        return x
    target = constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    dims = facts.shape(x)
    if target is None or dims is None or len(dims) != target.size:
        return None
    target = target.reshape(-1).tolist()
    if target.count(-1) != 1 or 0 in target and not int(node.attrs.get("allowzero", 0)):
        return None
    if all(t == -1 or isinstance(d, int) and t == d for t, d in zip(target, dims)):
        return x
    return None


def _transpose(node, facts):
    perm = node.attrs.get("perm")
    if perm is not None and list(perm) == list(range(len(perm))):
        return node.inputs[0]  # Transpose(x, identity perm) -> x
    return None


def _axes(node) -> list[int] | None:
    if "axes" in node.attrs:
        return sorted(int(a) for a in node.attrs["axes"])
    if len(node.inputs) > 1:
        values = constant_ints(node.inputs[1])
        return None if values is None else sorted(int(a) for a in values.reshape(-1))
    return None


def _squeeze_pair(node, facts):
    """Squeeze(Unsqueeze(x, a), a) -> x and Unsqueeze(Squeeze(x, a), a) -> x. Both axes lists are
    relative to the same rank (the middle tensor's), so equal lists mean the same axes."""
    other = {"Squeeze": "Unsqueeze", "Unsqueeze": "Squeeze"}[node.op]
    inner = producer(node.inputs[0])
    if inner is None or inner.op != other or not inner.inputs:
        return None
    axes = _axes(node)
    if axes is None or axes != _axes(inner):
        return None
    return inner.inputs[0]


def _squeeze(node, facts):
    return _squeeze_pair(node, facts) or _same_shape(node, facts)


_VIEWS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def _view_chain(node, facts):
    """A chain of views (Reshape/Flatten/Squeeze/Unsqueeze keep the elements in order) that ends
    in the shape it started from -> its start: Unsqueeze(Reshape(x, []), 0) with x of shape [1]."""
    out = facts.shape(node.outputs[0])
    current = node
    for _ in range(4):
        x = current.inputs[0]
        if facts.same_dims(facts.shape(x), out):
            return x
        current = producer(x)
        if current is None or current.op not in _VIEWS or not current.inputs:
            return None
    return None


def _view(rule):
    return lambda node, facts: rule(node, facts) or _view_chain(node, facts)


def _expand(node, facts):
    x = node.inputs[0]
    shape = constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    rank = facts.rank(x)
    if shape is not None and rank is not None and shape.size <= rank and np.all(shape == 1):
        return x  # Expand(x, [1, ..]) no longer than x's rank -> x
    return _same_shape(node, facts)


def _tile(node, facts):
    repeats = constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None
    if repeats is not None and np.all(repeats == 1):
        return node.inputs[0]  # Tile(x, ones) -> x
    return None


def _concat(node, facts):
    """Concat(x) -> x, also when every other input is empty along the axis."""
    axis = int(node.attrs.get("axis", 0))
    left = [t for t in node.inputs if len(node.inputs) == 1 or not _empty_along(t, axis, facts)]
    return left[0] if len(left) == 1 and facts.same_dims(facts.shape(left[0]), facts.shape(node.outputs[0])) \
        or len(node.inputs) == 1 else None


def _empty_along(t, axis: int, facts) -> bool:
    dims = facts.shape(t)
    if dims is None or not -len(dims) <= axis < len(dims):
        return False
    return dims[axis] == 0


def _known_value(node, facts):
    """And(x, all False) -> that False constant, Or(x, all True) -> that True constant, when the
    constant already has the output's shape; Where(all True/False, a, b) -> a/b of the output's shape."""
    import onnx_graphsurgeon as gs

    out = facts.shape(node.outputs[0])
    if node.op in ("And", "Or") and len(node.inputs) == 2:
        absorbing = node.op == "Or"
        for c in node.inputs:
            if isinstance(c, gs.Constant) and facts.same_dims(tuple(c.shape), out) and _is_constant(c, absorbing) \
                    and facts.dtype(c) == 9:
                return c
    if node.op == "Where" and len(node.inputs) == 3:
        for value, pick in ((True, node.inputs[1]), (False, node.inputs[2])):
            if _is_constant(node.inputs[0], value) and facts.same_dims(facts.shape(pick), out):
                return pick
    return None


def _split(node, facts):
    return node.inputs[0] if len(node.outputs) == 1 else None  # Split(x) into one -> x


def _slice_params(node):
    if "starts" in node.attrs:  # opset < 10
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes = node.attrs.get("axes", list(range(len(starts))))
        return list(starts), list(ends), list(axes), [1] * len(starts)
    if len(node.inputs) < 3:
        return None
    args = [constant_ints(t) if t.name else None for t in node.inputs[1:5]]
    if any(a is None for a in args[:2]) or any(a is None and t.name for a, t in zip(args[2:], node.inputs[3:5])):
        return None
    starts, ends = args[0].reshape(-1).tolist(), args[1].reshape(-1).tolist()
    axes = args[2].reshape(-1).tolist() if len(args) > 2 and args[2] is not None else list(range(len(starts)))
    steps = args[3].reshape(-1).tolist() if len(args) > 3 and args[3] is not None else [1] * len(starts)
    return starts, ends, axes, steps


def _slice(node, facts):
    """Slice(x) from 0 to the end with step 1 on every sliced axis -> x."""
    params = _slice_params(node)
    if params is None:
        return None
    dims = facts.shape(node.inputs[0])
    for start, end, axis, step in zip(*params):
        if step != 1 or start != 0:
            return None
        if end >= _TO_THE_END:
            continue
        if dims is None or not -len(dims) <= axis < len(dims) or not isinstance(dims[axis], int) or end < dims[axis]:
            return None
    return node.inputs[0]


def _pad(node, facts):
    pads = node.attrs.get("pads") if "pads" in node.attrs else (
        constant_ints(node.inputs[1]) if len(node.inputs) > 1 else None)
    if pads is not None and np.all(np.asarray(pads) == 0):
        return node.inputs[0]  # Pad(x, zeros) -> x
    return None


# op -> rule: (node, facts) -> the tensor node.outputs[0] equals, or None.
RULES = {
    "Identity": _identity,                                  # Identity(x) -> x
    "Dropout": _identity,                                   # Dropout(x) at inference -> x
    "Cast": _cast,                                          # Cast(x, type(x)) -> x; exact Cast pairs -> x
    "Reshape": _view(_reshape),                             # Reshape to x's own shape -> x
    "Flatten": _view(_same_shape),                          # Flatten of an already 2-D x -> x
    "Transpose": _transpose,                                # Transpose(x, identity) -> x
    "Squeeze": _view(_squeeze),                             # Squeeze(Unsqueeze(x, a), a) -> x
    "Unsqueeze": _view(_squeeze_pair),                      # Unsqueeze(Squeeze(x, a), a) -> x
                                                            # and views ending where they began -> x
    "Expand": _expand,                                      # Expand(x, x's shape or ones) -> x
    "Tile": _tile,                                          # Tile(x, ones) -> x
    "Concat": _concat,                                      # Concat(x, empty) -> x
    "And": _known_value,                                    # And(x, False) -> False
    "Or": _known_value,                                     # Or(x, True) -> True
    "Where": _known_value,                                  # Where(True, a, b) -> a
    "Split": _split,                                        # Split(x) into one -> x
    "Slice": _slice,                                        # Slice(x) over all of x -> x
    "Pad": _pad,                                            # Pad(x, zeros) -> x
    "Mul": lambda n, f: _neutral(n, f, 1, True),            # x * 1 -> x
    "Div": lambda n, f: _neutral(n, f, 1, False),           # x / 1 -> x
    "Add": lambda n, f: _neutral(n, f, 0, True),            # x + 0 -> x
    "Sub": lambda n, f: _neutral(n, f, 0, False),           # x - 0 -> x
}

# Ops whose rules (or the shape folding) read shape facts.
_SHAPE_READERS = frozenset({"Shape", "Size", "Reshape", "Flatten", "Squeeze", "Expand", "Cast", "Slice", "Concat"})


def _reads_facts(node) -> bool:
    import onnx_graphsurgeon as gs

    if node.op in _SHAPE_READERS:
        return True
    if node.op == "Transpose":
        return "perm" not in node.attrs
    if node.op == "Unsqueeze":
        return producer(node.inputs[0]) is not None and producer(node.inputs[0]).op in _VIEWS
    if node.op in ("And", "Or", "Where"):
        return any(isinstance(t, gs.Constant) for t in node.inputs)
    if node.op in ("Mul", "Div", "Add", "Sub"):
        return any(_is_constant(t, 0) or _is_constant(t, 1) for t in node.inputs)
    if node.op == "BatchNormalization":  # the fusion with a following Mul/Add needs its rank
        return any(c.op in ("Mul", "Add") for t in node.outputs[:1] for c in t.outputs)
    return False


def wants_facts(graph) -> bool:
    """Whether any node could use shape facts (inference costs a model export: skip it otherwise)."""
    return any(node.inputs and _reads_facts(node) for node in graph.nodes)


_COUNT_AS = {"Dropout": "dropout_removed", "Identity": "identity_removed"}


def _merge_transposes(node, facts, report: PassReport) -> bool:
    """Transpose(Transpose(x, p), q) -> Transpose(x, p[q]) (the first stays if others read it)."""
    inner = producer(node.inputs[0])
    if inner is None or inner.op != "Transpose" or not inner.inputs:
        return False
    x = inner.inputs[0]
    rank = facts.rank(x)
    p, q = inner.attrs.get("perm"), node.attrs.get("perm")
    n = len(p) if p is not None else len(q) if q is not None else rank
    if n is None:
        return False
    p = list(p) if p is not None else list(reversed(range(n)))
    q = list(q) if q is not None else list(reversed(range(n)))
    if len(p) != len(q) or sorted(p) != list(range(n)) or sorted(q) != list(range(n)):
        return False
    node.inputs[0] = x
    node.attrs["perm"] = [p[i] for i in q]
    report.count("transpose_pairs_merged")
    return True


def _merge_reshapes(node, facts, report: PassReport) -> bool:
    """Reshape(Reshape(x, a), b) -> Reshape(x, b): the result depends only on x's element count,
    which the first Reshape kept, except where b has a 0 ("copy this dim"): see _zeros_agree."""
    inner = producer(node.inputs[0])
    if inner is None or inner.op not in ("Reshape", "Flatten", "Squeeze", "Unsqueeze") or not inner.inputs:
        return False
    if len(node.inputs) < 2 or not (int(node.attrs.get("allowzero", 0)) or _zeros_agree(node, inner, facts)):
        return False
    node.inputs[0] = inner.inputs[0]
    report.count(f"{inner.op.lower()}_reshape_pairs_merged")
    return True


def _target_entries(t, facts) -> list | None:
    """The entries of a Reshape target: ints for a constant, the dims (int or symbol) of y for
    Shape(y); None when unknown."""
    values = constant_ints(t)
    if values is not None:
        return values.reshape(-1).tolist()
    shape_node = producer(t)
    if shape_node is None or shape_node.op != "Shape" or shape_node.attrs.get("start") or "end" in shape_node.attrs:
        return None
    dims = facts.shape(shape_node.inputs[0])
    return None if dims is None or None in dims else list(dims)


def _zeros_agree(node, inner, facts) -> bool:
    """Whether b's entries that are (or may be, for a symbol) 0 copy the same dim from x as from
    the first Reshape's output m. A literal 0 at i needs m[i] == x[i]. A symbol s = y[i] of
    b = Shape(y) is 0 only when s is: then x[i] must be s too, and m[i] must be s, or m is 1-D
    (its one dim is x's element count, then 0), or m has no dim i (then the original fails)."""
    entries = _target_entries(node.inputs[1], facts)
    if entries is None:
        return False
    x, m = facts.shape(inner.inputs[0]), facts.shape(node.inputs[0])
    for i, e in enumerate(entries):
        if isinstance(e, int) and e != 0:
            continue
        if x is None or m is None or i >= len(x) or x[i] is None:
            return False
        if e == 0:
            if i >= len(m) or m[i] != x[i]:
                return False
        elif x[i] != e or not (i >= len(m) or len(m) == 1 or m[i] == e):
            return False
    return True


def _merge_unsqueezes(node, facts, report: PassReport, names) -> bool:
    """Unsqueeze(Unsqueeze(x, a), b) -> Unsqueeze(x, a+b): the inner axes are positions in its own
    output, which are the outer output's positions outside b, in order."""
    import onnx_graphsurgeon as gs

    inner = producer(node.inputs[0])
    if inner is None or inner.op != "Unsqueeze" or not inner.inputs:
        return False
    a, b = _axes(inner), _axes(node)
    if not a or not b:
        return False
    rank = facts.rank(inner.inputs[0])
    final = None if rank is None else rank + len(a) + len(b)
    if final is None and (min(a) < 0 or min(b) < 0):
        return False
    if final is not None:
        a = sorted(x % (final - len(b)) for x in a)
        b = sorted(x % final for x in b)
    free = (i for i in range(max(b) + max(a) + 2) if i not in set(b))
    free = [next(free) for _ in range(max(a) + 1)]
    axes = sorted(set(b) | {free[i] for i in a})
    node.inputs[0] = inner.inputs[0]
    if "axes" in node.attrs:
        node.attrs["axes"] = axes
    else:
        node.inputs[1] = gs.Constant(names(f"{node.outputs[0].name}_axes"), np.array(axes, dtype=np.int64))
    report.count("unsqueeze_pairs_merged")
    return True


def _is_dead(node, graph_outputs: set[int]) -> bool:
    return not any(t.outputs or id(t) in graph_outputs for t in node.outputs)


def bypass(node, src, graph_inputs: set[int], graph_outputs: set[int]) -> bool:
    """Make every reader of node.outputs[0] read `src` instead. A graph output keeps its name: the
    producer of `src` writes it directly (refused when src is an input, a constant or an output)."""
    import onnx_graphsurgeon as gs

    dst = node.outputs[0]
    if id(dst) not in graph_outputs:
        replace_uses(dst, src)
        return True
    if isinstance(src, gs.Constant) or id(src) in graph_inputs or id(src) in graph_outputs or not src.inputs:
        return False
    if any(id(t) in graph_outputs or t.outputs for t in node.outputs[1:]):
        return False
    src_producer = producer(src)
    replace_uses(src, dst, except_node=node)
    node.inputs.clear()
    node.outputs.clear()
    replace_output(src_producer, src, dst)
    return True


def remove_pass_through(graph, report: PassReport) -> int:
    """Identity and inference Dropout nodes only (they need no shape facts): one cheap walk."""
    graph_inputs = {id(t) for t in graph.inputs}
    graph_outputs = {id(t) for t in graph.outputs}
    removed = 0
    for node in [n for n in graph.nodes if n.op in ("Identity", "Dropout")]:
        if is_pass_through(node) and node.domain in (None, "", "ai.onnx"):
            if bypass(node, node.inputs[0], graph_inputs, graph_outputs):
                report.count(_COUNT_AS[node.op])
                removed += 1
    return removed


def remove_noops(graph, facts, report: PassReport, names) -> int:
    """One walk in graph order applying RULES and the pair merges; returns how many changed."""
    graph_inputs = {id(t) for t in graph.inputs}
    graph_outputs = {id(t) for t in graph.outputs}
    changed = 0
    for node in list(graph.nodes):
        for _ in range(2):  # a merged pair can leave a no-op (an identity perm): one more look
            if not node.inputs or not node.outputs or node.domain not in (None, "", "ai.onnx") \
                    or _is_dead(node, graph_outputs):
                break
            try:
                if _apply(node, facts, report, names, graph_inputs, graph_outputs):
                    changed += 1
                    continue
            except (TypeError, ValueError, KeyError, IndexError):  # odd attributes or inputs: leave it
                pass
            break
    return changed


def _apply(node, facts, report: PassReport, names, graph_inputs: set[int], graph_outputs: set[int]) -> bool:
    rule = RULES.get(node.op)
    src = rule(node, facts) if rule is not None else None
    if src is not None and src is not node.outputs[0]:
        if any(t.outputs or id(t) in graph_outputs for t in node.outputs[1:]):
            return False
        if bypass(node, src, graph_inputs, graph_outputs):
            report.count(_COUNT_AS.get(node.op, f"noop_{node.op.lower()}_removed"))
            return True
        report.skip(node.name or node.op, f"a no-op {node.op}, kept: it writes graph output {node.outputs[0].name!r} "
                                         "straight from an input, a constant or another output")
        return False
    if node.op == "Transpose":
        return _merge_transposes(node, facts, report)
    if node.op == "Reshape":
        return _merge_reshapes(node, facts, report)
    if node.op == "Unsqueeze":
        return _merge_unsqueezes(node, facts, report, names)
    return False
