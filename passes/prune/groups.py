"""find_channel_groups: which output channels are coupled, and everything that must change with them.

Starting at each weighted producer's output channels, the search walks through the graph in
both directions with the per-op rules in handlers.py: forward to the ops that read the
channels, backward from coupled tensors (a residual Add's other operand) to their producers.
The closure is one group. A group that reaches something the rules do not understand, a
graph input or output, or a constant also read from outside the group, is kept whole with
the reason recorded — never pruned into a wrong model. O(nodes) per group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxcomp.graph.edit import node_key
from onnxcomp.graph.edit import producer as producer_of
from onnxcomp.passes.prune.handlers import CONST_PASSTHROUGH, HANDLERS, PRODUCERS
from onnxcomp.passes.prune.mapping import Mapping, Member


@dataclass
class ChannelGroup:
    """Coupled channels: removing channel c removes it from every member at once."""

    id: int
    channels: int
    producers: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)
    reason: str | None = None
    # Positions per channel at the producers: 1 for channels, the head size for attention heads.
    width: int = 1

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def describe(self) -> dict:
        return {"id": self.id, "channels": self.channels, "width": self.width, "producers": self.producers,
                "members": sorted({m.label() for m in self.members}), "reason": self.reason}


class Refused(Exception):
    """Raised by a handler to abandon the group being explored."""


class _Explorer:
    def __init__(self, graph, shapes: dict):
        import onnx_graphsurgeon as gs

        self.gs = gs
        self.graph = graph
        self.shapes = shapes
        self.graph_inputs = {t.name for t in graph.inputs}
        self.graph_outputs = {t.name for t in graph.outputs}
        self.claimed: dict[str, int] = {}  # producer key -> group id

    # --- services used by the handlers ---
    key = staticmethod(node_key)

    def refuse(self, reason: str):
        raise Refused(reason)

    def shape(self, tensor):
        if isinstance(tensor, self.gs.Constant):
            return tuple(tensor.shape)
        shape = self.shapes.get(tensor.name)
        if shape is None and tensor.shape is not None:
            shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in tensor.shape)
        return shape

    def size(self, tensor):
        shape = self.shape(tensor)
        return None if shape is None or None in shape else int(np.prod(shape))

    def used(self, tensor) -> bool:
        return bool(tensor.outputs) or tensor.name in self.graph_outputs

    def const_source(self, tensor):
        """(constant name, axis map, values) for a tensor computed from one constant, else None.

        Follows Identity and Transpose back to an initializer or Constant node. The values are
        given in the tensor's own layout; axis_map[a] is the constant's axis behind tensor axis a.
        """
        axes = None
        while True:
            if isinstance(tensor, self.gs.Constant):
                return self._in_layout(tensor.name, tensor.values, axes)
            node = producer_of(tensor)
            if node is None:
                return None
            if node.op == "Constant":
                value = node.attrs.get("value")
                if not isinstance(value, self.gs.Constant):
                    return None
                return self._in_layout(tensor.name, value.values, axes)
            if node.op not in CONST_PASSTHROUGH:
                return None
            if node.op == "Transpose":
                r = len(self.shape(node.inputs[0]) or ())
                perm = [int(p) for p in node.attrs.get("perm", [])] or list(reversed(range(r)))
                here = axes or list(range(len(perm)))
                axes = [perm[a] for a in here]
            tensor = node.inputs[0]

    @staticmethod
    def _in_layout(name, values, axes):
        values = np.asarray(values)
        if axes is None or axes == list(range(values.ndim)):
            return name, list(range(values.ndim)), values
        return name, axes, np.transpose(values, axes)

    def const_values(self, tensor):
        found = self.const_source(tensor)
        return None if found is None else found[2]

    def add(self, member: Member):
        self.members.setdefault((member.kind, member.tensor, member.axis, member.use, member.index), member)

    def add_const(self, kind, const, axis, m, node, index, role=""):
        name, axis_map, values = const
        c_axis = axis_map[axis]
        self.add(Member(kind, name, c_axis, Mapping(c_axis, m.offset, m.block), (node_key(node), index),
                        role=role or kind))

    def producer(self, node, channels: int, m: Mapping):
        if m.offset != 0 or channels != self.channels * m.block:
            self.refuse(f"{node_key(node)}: {node.op} with {channels} output channels coupled to a "
                        f"{self.channels}-channel group at offset {m.offset}")
        self.group_producers.append(node_key(node))

    # --- the search ---
    def visit(self, tensor, m: Mapping, via=None):
        seen = self.state.get(tensor.name)
        if seen is not None:
            if seen != m:
                self.refuse(f"{tensor.name} reached with two different channel layouts")
            return
        if isinstance(tensor, self.gs.Constant):
            self.refuse(f"constant {tensor.name} coupled as an activation")
        self.state[tensor.name] = m
        self.queue.append((tensor, m, via))

    def _steps(self, tensor, m, via):
        """The handler calls that expand one visited tensor (each may refuse on its own)."""
        if tensor.name in self.graph_outputs:
            yield lambda: self.refuse(f"reaches graph output {tensor.name}")
        if tensor.name in self.graph_inputs:
            yield lambda: self.refuse(f"coupled with graph input {tensor.name}")
        node = producer_of(tensor)
        if node is not None and node is not via:
            yield lambda: self._handle(node, "out", list(node.outputs).index(tensor), m)
        for consumer in list(tensor.outputs):
            if consumer is via:
                continue
            for i, t in enumerate(consumer.inputs):
                if t is tensor:
                    yield lambda c=consumer, i=i: self._handle(c, "in", i, m)

    def _handle(self, node, side, index, m):
        handler = HANDLERS.get(node.op)
        if handler is None or (node.domain or "") not in ("", "ai.onnx"):
            self.refuse(f"{node_key(node)}: {node.op} is not understood")
        handler(self, node, side, index, m)

    def explore(self, start, channels: int, axis: int, block: int = 1) -> str | None:
        """Walk the closure of `start`'s output channels; returns the first refusal, if any.

        After a refusal the walk goes on, so every producer of the closure lands in this one
        (refused) group instead of seeding duplicates of it.
        """
        self.channels = channels
        self.state: dict[str, Mapping] = {}
        self.queue: list = []
        self.members: dict = {}
        self.group_producers: list[str] = []
        self.split_hint: int | None = None
        reasons: list[str] = []
        self.visit(start.outputs[0], Mapping(axis, 0, block), None)
        while self.queue:
            tensor, m, via = self.queue.pop()
            for call in self._steps(tensor, m, via):
                try:
                    call()
                except Refused as exc:
                    reasons.append(str(exc))
        return reasons[0] if reasons else None


def find_channel_groups(graph, shapes: dict | None = None) -> list[ChannelGroup]:
    """Every channel group of a gs.Graph, prunable or with the reason it is not.

    `shapes` maps tensor names to static shapes (onnxcomp.graph.shapes.infer_shapes); computed when
    not given, with symbolic dims set to 1.
    """
    if shapes is None:
        from onnxcomp.graph.convert import to_model
        from onnxcomp.graph.shapes import infer_shapes

        shapes = infer_shapes(to_model(graph))
    ex = _Explorer(graph, shapes)
    groups: list[ChannelGroup] = []
    hints: dict[int, tuple] = {}
    for node in graph.nodes:
        if node.op not in PRODUCERS or node_key(node) in ex.claimed or not node.outputs:
            continue
        if node.op == "Conv" and int(node.attrs.get("group", 1)) != 1:
            continue  # depthwise convs join the group of their input
        channels = _output_channels(ex, node)
        if channels is None:
            continue  # no constant weight (e.g. attention's activation @ activation): not a producer
        group = _explore_group(ex, node, len(groups), channels, 1)
        groups.append(group)
        if group.reason and ex.split_hint and channels % ex.split_hint == 0:
            hints[group.id] = (node, ex.split_hint)
        for p in group.producers:
            ex.claimed.setdefault(p, group.id)
    groups = _head_groups(ex, groups, hints)
    _check_shared_constants(graph, groups)
    return groups


def _explore_group(ex, node, gid: int, channels: int, block: int) -> ChannelGroup:
    r = len(ex.shape(node.outputs[0]) or ()) or (2 if node.op == "Gemm" else 0)
    group = ChannelGroup(gid, channels, [node_key(node)], width=block)
    group.reason = ex.explore(node, channels, PRODUCERS[node.op](node, r), block)
    group.producers = list(dict.fromkeys([node_key(node), *ex.group_producers]))
    group.members = list(ex.members.values())
    group.tensors = list(ex.state)
    return group


def _head_groups(ex, groups: list[ChannelGroup], hints: dict) -> list[ChannelGroup]:
    """Retry groups refused at a Reshape that splits channels into heads, counting whole heads.

    Attention's q/k/v projections end in Reshape [.., H*D] -> [.., H, D]: per channel they are
    unprunable, but head h (D consecutive channels of q, k and v, and of o's input) is one unit.
    A head group that works replaces the per-channel groups of the producers it covers.
    """
    replaced: set[int] = set()
    extra: list[ChannelGroup] = []
    for gid, (node, head_dim) in hints.items():
        if gid in replaced:
            continue
        heads = groups[gid].channels // head_dim
        group = _explore_group(ex, node, -1, heads, head_dim)
        if group.reason is not None:
            continue
        covered = {ex.claimed.get(p) for p in group.producers}
        if not covered <= set(hints) or covered & replaced:
            continue
        replaced |= covered
        extra.append(group)
    kept = [g for g in groups if g.id not in replaced] + extra
    for i, g in enumerate(kept):
        g.id = i
    return kept


def _output_channels(ex, node) -> int | None:
    if len(node.inputs) < 2:
        return None
    w = ex.const_source(node.inputs[1])
    if w is None:
        return None
    values = w[2]
    if node.op == "Conv":
        return int(values.shape[0])
    if node.op == "ConvTranspose":
        return int(values.shape[1]) * int(node.attrs.get("group", 1))
    if node.op == "Gemm":
        return int(values.shape[0] if int(node.attrs.get("transB", 0)) else values.shape[1])
    return int(values.shape[-1]) if values.ndim == 2 else None


def _uses_of_constants(graph) -> dict[str, set]:
    """constant name -> {(node key, input index)} of the non-passthrough nodes reading it."""
    import onnx_graphsurgeon as gs

    uses: dict[str, set] = {}

    def reader_slots(tensor, seen=0):
        for consumer in tensor.outputs:
            if consumer.op in CONST_PASSTHROUGH and seen < 8:
                yield from reader_slots(consumer.outputs[0], seen + 1)
            else:
                for i, t in enumerate(consumer.inputs):
                    if t is tensor:
                        yield node_key(consumer), i
        if tensor.name in output_names:
            yield ("<graph output>", 0)

    output_names = {t.name for t in graph.outputs}
    in_subgraphs = _names_read_in_subgraphs(graph)
    for name, tensor in graph.tensors().items():
        produced_by_constant = tensor.inputs and tensor.inputs[0].op == "Constant"
        if isinstance(tensor, gs.Constant) or produced_by_constant:
            uses[name] = set(reader_slots(tensor))
            if name in in_subgraphs:
                uses[name].add(("<subgraph of If/Loop/Scan>", 0))
    return uses


def _names_read_in_subgraphs(graph) -> set[str]:
    """Tensor names read inside If/Loop/Scan bodies (outer-scope reads are invisible otherwise)."""
    import onnx_graphsurgeon as gs

    names: set[str] = set()
    stack = [v for n in graph.nodes for v in n.attrs.values() if isinstance(v, gs.Graph)]
    while stack:
        sub = stack.pop()
        for node in sub.nodes:
            names.update(t.name for t in node.inputs)
            stack.extend(v for v in node.attrs.values() if isinstance(v, gs.Graph))
    return names


def _check_shared_constants(graph, groups: list[ChannelGroup]) -> None:
    """A constant sliced for a group must be read only by that group's own members."""
    uses = _uses_of_constants(graph)
    for group in groups:
        if not group.prunable:
            continue
        known = {m.use for m in group.members}
        for m in group.members:
            if m.kind in ("group",):
                continue
            outside = uses.get(m.tensor, set()) - known
            if outside:
                node, slot = sorted(outside)[0]
                group.reason = f"constant {m.tensor} is also read by {node} (input {slot}) outside the group"
                break
