"""The channel groups of If/Loop/Scan bodies, found by the same walk as the graph's own.

Each body is walked as a graph of its own (find_channel_groups with a BodyScope), so coupled producers merge
into one group as they do outside. Two things differ from a top-level graph. A body reads weights through its
inputs: a value the Loop carries unchanged from a constant start (PaddleOCR's attention decoder carries its
weights that way) counts as that constant. And a body's inputs and outputs are not the model's: one whose
value leaves the node as a graph output (a decoder's class scores, the buffer a Loop fills with them) is the
interface, like a graph output; any other (a recurrent state carried to the next iteration, a value the outer
graph goes on computing with) is a refusal, as the walk does not follow channels across the node.
A group internal to a body (its channels made and read within one iteration) is pruned when its weights are
read by it alone: constants of the outer graph read in the body, or started by the Loop and carried unchanged.
The plan slices them at their source, and refresh_bodies fixes the body's declared shapes. Other body groups are
left whole as `inside a subgraph`, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxcomp.graph.edit import nested_bodies, node_key
from onnxcomp.graph.edit import producer as producer_of

INSIDE = "inside a subgraph"
REACHES_OUTPUT = "reaches graph output"  # an interface refusal (groups.py uses it for graph outputs too)


@dataclass
class BodyScope:
    """What a body's walk needs from outside: body input name -> (constant name, values) for the weights it
    reads through its inputs, and body input/output name -> the refusal when the walk reaches it."""

    constants: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    edges: dict[str, str] = field(default_factory=dict)


def body_groups(graph, shapes: dict, exact: bool, find_channel_groups, top: bool = True) -> list:
    """The groups of every If/Loop/Scan body of `graph` (and of their bodies), ids to be set by the caller;
    `find_channel_groups` is groups.find_channel_groups (which calls this: passed in, not imported)."""
    import onnx_graphsurgeon as gs

    owned = [(node, attr, body) for node in graph.nodes for attr, body in node.attrs.items()
             if isinstance(body, gs.Graph)]
    if not owned:
        return []
    if top:
        shapes = {**body_shapes(graph), **shapes}
    outputs = {t.name for t in graph.outputs}
    found = []
    readers = model_readers(graph) if top else {}
    for owner, attr, body in owned:
        where = f"the {attr} of {owner.op} {node_key(owner)}"
        scope = _scope(owner, body, outputs, where)
        for group in find_channel_groups(body, shapes, exact, scope):
            why = _unsliceable(group, owner, body, scope, readers) if top else "a body inside a body"
            if group.prunable and why:
                group.reason = f"{group.producers[0]}: {INSIDE} ({where}): {why}"
                group.refusals = [group.reason]
            found.append(group)
    return found


def _unsliceable(group, owner, body, scope: BodyScope, readers: dict) -> str | None:
    """Why a body group that the walk found prunable cannot be sliced, or None. Its weights must be read by the
    group alone: a constant read directly in the body, or carried by this Loop (then every reader of the carried
    value is the group's, and the Loop's last value of it is not used). Shape entries, attributes and private
    copies inside a body are not rewritten by the plan."""
    if any(m.kind in ("value", "attr") or m.private for m in group.members):
        return "its shape entries, attributes or shared constants would be rewritten inside the body"
    carried_by = {scope.constants[b.name][0]: k for k, b in enumerate(body.inputs) if b.name in scope.constants}
    uses = {m.use for m in group.members}
    for name in sorted({m.tensor for m in group.members}):
        if name in readers.get("<graph outputs>", ()):
            return f"constant {name} is also a graph output"
        outside = set()
        for use in readers.get(name, set()):
            if use[0] == node_key(owner) and carried_by.get(name) == use[1]:
                k = use[1]
                outside |= readers.get(body.inputs[k].name, set()) - uses
                last = owner.outputs[k - 2] if k - 2 < len(owner.outputs) else None
                if last is not None and (last.outputs or last.name in readers.get("<graph outputs>", ())):
                    return f"the Loop's last value of {name} ({last.name}) is used"
            elif use not in uses:
                outside.add(use)
        if outside:
            node, slot = min(outside)
            return f"constant {name} is also read by {node} (input {slot}) outside the group"
    return None


def model_readers(graph) -> dict[str, set]:
    """tensor name -> (node key, input) slots reading it in the graph and every body, past Identity/Transpose
    (a weight's reader is the node that uses it); "<graph outputs>" -> the graph's output names."""
    found: dict[str, set] = {"<graph outputs>": {t.name for t in graph.outputs}}
    for g in [graph, *nested_bodies(graph)]:
        for node in g.nodes:
            if node.op in ("Identity", "Transpose"):
                continue
            for i, t in enumerate(node.inputs):
                for source in _sources(t):
                    found.setdefault(source, set()).add((node_key(node), i))
    return found


def _sources(tensor, steps: int = 8) -> list[str]:
    """The tensor and what it is an Identity or Transpose of (a weight read through them)."""
    names = [tensor.name]
    for _ in range(steps):
        node = producer_of(tensor)
        if node is None or node.op not in ("Identity", "Transpose") or not node.inputs:
            break
        tensor = node.inputs[0]
        names.append(tensor.name)
    return names


def refresh_bodies(graph, sliced: set[str]) -> None:
    """After slicing constants that bodies read (directly or as a Loop's carried start): each carried body input
    takes its constant's new shape, and the body's intermediate shapes and the Loop's outputs are forgotten (ONNX
    shape inference and ONNX Runtime find them again)."""
    import onnx_graphsurgeon as gs

    for owner in graph.nodes:
        for body in (b for b in owner.attrs.values() if isinstance(b, gs.Graph)):
            carried = _carried_constants(owner, body) if owner.op == "Loop" else {}
            starts = {n for n, _ in carried.values()}
            read = {t.name for n in body.nodes for t in n.inputs}
            if not (starts | read) & sliced:
                continue
            for t in body.inputs:
                if t.name in carried:
                    t.shape = list(carried[t.name][1].shape)
            io = {t.name for t in body.inputs} | {t.name for t in body.outputs}
            for t in (t for n in body.nodes for t in n.outputs):  # the body's own values, not outer ones it reads
                if t.name not in io:
                    t.shape = None
            outputs = {t.name for t in graph.outputs}
            for t in owner.outputs:
                if t.name not in outputs:
                    t.shape = None


def _scope(owner, body, outputs: set, where: str) -> BodyScope:
    scope = BodyScope(_carried_constants(owner, body) if owner.op == "Loop" else {})
    for inner, outer in _edges(owner, body):
        reached = _output_reached(outer, outputs) if outer is not None else None
        if reached is not None:
            scope.edges[inner.name] = f"{REACHES_OUTPUT} {reached} (through {where})"
        else:
            scope.edges[inner.name] = (f"{inner.name}: a value of {where} (the walk does not follow channels "
                                       f"across the {owner.op})")
    return scope


def _edges(owner, body):
    """(body input or output, the outer tensor it stands for or None): a Loop's carried input k is its loop input
    k and leaves as loop output k - 2, as body output k - 1 does; a Scan's and an If's outputs are the node's."""
    outs = list(owner.outputs)
    if owner.op == "Loop":
        pairs = [(t, outs[k - 2] if k - 2 < len(outs) else None) for k, t in enumerate(body.inputs) if k >= 2]
        pairs += [(t, outs[j - 1] if j - 1 < len(outs) else None) for j, t in enumerate(body.outputs) if j >= 1]
        return pairs + [(t, None) for t in body.inputs[:2]] + [(t, None) for t in body.outputs[:1]]
    return [(t, None) for t in body.inputs] + [(t, outs[j] if j < len(outs) else None) for j, t in enumerate(body.outputs)]


def _output_reached(tensor, outputs: set, steps: int = 8) -> str | None:
    """The graph output the value is, or becomes through a chain of single readers (a Softmax of the scores)."""
    for _ in range(steps):
        if tensor.name in outputs:
            return tensor.name
        if len(tensor.outputs) != 1 or len(tensor.outputs[0].outputs) != 1:
            return None
        tensor = tensor.outputs[0].outputs[0]
    return None


def body_shapes(graph) -> dict[str, tuple]:
    """Static shapes of every value inside the bodies, from ONNX shape inference (symbolic dims as None)."""
    import onnx

    from onnxcomp.graph.convert import to_model
    from onnxcomp.graph.shapes import skeleton

    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(to_model(graph)), data_prop=True)
    except Exception:  # noqa: BLE001 - no inferred shapes: the walk falls back to the declared ones
        return {}
    shapes, stack = {}, [a.g for n in inferred.graph.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    while stack:
        sub = stack.pop()
        for value in list(sub.value_info) + list(sub.input) + list(sub.output):
            t = value.type.tensor_type
            if t.HasField("shape"):
                shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
        stack += [a.g for n in sub.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    return shapes


def _carried_constants(loop, body) -> dict[str, tuple[str, np.ndarray]]:
    """Body inputs that hold a constant on every iteration: the Loop starts them from a constant and the
    body returns them unchanged (body input k + 2 is loop input k + 2; body output k + 1 carries it on)."""
    carried = {}
    for k in range(2, min(len(loop.inputs), len(body.inputs))):
        start = _constant(loop.inputs[k])
        if start is not None and k - 1 < len(body.outputs) and body.outputs[k - 1].name == body.inputs[k].name:
            carried[body.inputs[k].name] = start
    return carried


def _constant(tensor):
    """(name, values) of the constant behind `tensor` (through Identity), else None."""
    import onnx_graphsurgeon as gs

    for _ in range(8):
        if isinstance(tensor, gs.Constant):
            return tensor.name, np.asarray(tensor.values)
        node = producer_of(tensor)
        if node is None:
            return None
        if node.op == "Constant":
            value = node.attrs.get("value")
            return (tensor.name, np.asarray(value.values)) if isinstance(value, gs.Constant) else None
        if node.op != "Identity":
            return None
        tensor = node.inputs[0]
    return None
