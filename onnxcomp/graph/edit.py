"""Small onnx-graphsurgeon edits used by many passes.

gs keeps producer/consumer links in synchronized lists that support item assignment but
not slice assignment; these helpers do the index-wise edits once, correctly.
"""

from __future__ import annotations

import itertools


def node_key(node) -> str:
    """A stable name for a node: its name, or its first output's (tensor names are unique)."""
    return node.name or (node.outputs[0].name if node.outputs else "")


def producer(tensor):
    """The node that produces `tensor`, or None for inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def nested_bodies(graph) -> list:
    """Every If/Loop/Scan body inside `graph`, at any depth (a graph attribute or a list of them)."""
    import onnx_graphsurgeon as gs

    found, stack = [], [graph]
    while stack:
        for node in stack.pop().nodes:
            for value in node.attrs.values():
                subs = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, gs.Graph)]
                found += subs
                stack += subs
    return found


def replace_input(node, old, new) -> int:
    """Make `node` read `new` wherever it read `old`; returns how many slots changed."""
    changed = 0
    for i, t in enumerate(node.inputs):
        if t is old:
            node.inputs[i] = new
            changed += 1
    return changed


def replace_uses(old, new, except_node=None) -> int:
    """Point every consumer of `old` (but `except_node`) at `new`."""
    changed = 0
    for consumer in list(old.outputs):
        if consumer is not except_node:
            changed += replace_input(consumer, old, new)
    return changed


def replace_output(node, old, new) -> None:
    for i, t in enumerate(node.outputs):
        if t is old:
            node.outputs[i] = new


class NameGen:
    """Fresh tensor/node names that never collide with the graph's existing ones."""

    def __init__(self, graph):
        self.taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
        self.counter = itertools.count()

    def __call__(self, base: str) -> str:
        name = base
        while name in self.taken:
            name = f"{base}_{next(self.counter)}"
        self.taken.add(name)
        return name


def is_pass_through(node) -> bool:
    """Identity, or an inference Dropout (mask unused, no training_mode input): output == input."""
    if node.op == "Identity":
        return bool(node.inputs and node.outputs)
    if node.op == "Dropout":
        mask_used = len(node.outputs) > 1 and bool(node.outputs[1].outputs)
        return bool(node.inputs and node.outputs) and not mask_used and len(node.inputs) <= 2
    return False


def add_outputs(model, names):
    """Expose tensors `names` as (untyped: ONNX Runtime infers the type) outputs of a ModelProto, in
    place, skipping those already outputs; returns the model. Copy first to keep the original."""
    import onnx

    present = {o.name for o in model.graph.output}
    for name in dict.fromkeys(names):
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return model


def copy_with_outputs(model, names):
    """A copy of a ModelProto with `names` added as outputs (see add_outputs)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return add_outputs(copy, names)


def keep_declared_interface(graph, model) -> None:
    """Give the graph's inputs and outputs the dtype and shape the model declares for them.

    graphsurgeon takes a tensor's type from the last value_info naming it, and exporters sometimes
    repeat an output there with fewer dims known (seen: a YOLO export's output lost its 'batch').
    """
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.importers.onnx_importer import get_onnx_tensor_dtype, get_onnx_tensor_shape

    declared = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    for t in list(graph.inputs) + list(graph.outputs):
        value = declared.get(t.name)
        if isinstance(t, gs.Variable) and value is not None and value.type.HasField("tensor_type"):
            t.dtype, t.shape = get_onnx_tensor_dtype(value), get_onnx_tensor_shape(value)


def live_nodes(graph) -> set[int]:
    """ids of the nodes some graph output depends on (subgraph reads included): the others are
    dead, and graph.cleanup() would remove them. One walk back from the outputs."""
    from onnxcomp.graph.toposort import subgraph_reads

    producers = {id(t): node for node in graph.nodes for t in node.outputs}
    live: set[int] = set()
    stack = [producers.get(id(t)) for t in graph.outputs]
    while stack:
        node = stack.pop()
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(producers.get(id(t)) for t in list(node.inputs) + subgraph_reads(node))
    return live
