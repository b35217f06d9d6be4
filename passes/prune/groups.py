"""find_channel_groups: which output channels are coupled, and everything that must change with them.

Starting at each weighted producer's output channels, the search walks through the graph in
both directions with the per-op rules in handlers.py: forward to the ops that read the
channels, backward from coupled tensors (a residual Add's other operand) to their producers.
The closure is one group. A group that reaches something the rules do not understand, a
graph input or output, or a constant also read from outside the group, is kept whole with
the reason recorded — never pruned into a wrong model. O(nodes) per group.

A tensor may hold several pieces of one group (the parts of a Split joined again by a
Concat); pieces must not overlap. Where per-channel pruning is refused because the channels
only move in units (attention heads and GroupNorm groups behind a Reshape, an LSTM's gates
behind a Split, a grouped Conv's groups), the handlers leave a hint and the group is explored
again in those units.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from onnxcomp.graph.edit import nested_bodies, node_key
from onnxcomp.graph.edit import producer as producer_of
from onnxcomp.passes.prune.conv_groups import balanced_sets, matched
from onnxcomp.passes.prune.handlers import CONST_PASSTHROUGH, HANDLERS, PRODUCERS
from onnxcomp.passes.prune.mapping import Mapping, Member, Unit
from onnxcomp.passes.prune.subgraphs import REACHES_OUTPUT, body_groups

MAX_PIECES = 16  # pieces of one group on one tensor before the walk gives up
RETRIES = 4  # unit hints tried per refused group
COUPLED_INPUT = "coupled with graph input"  # with REACHES_OUTPUT: the interface refusals
# A window (a Conv kernel, a pooling window) slides along the group's axis: its positions are a grid (frequency
# bins, time steps) whose neighbours the window mixes, not independent channels.
NOT_CHANNELS = "not channels"


@dataclass
class ChannelGroup:
    """Coupled channels: removing channel c removes it from every member at once."""

    id: int
    channels: int
    producers: list[str] = field(default_factory=list)
    members: list[Member] = field(default_factory=list)
    tensors: list[str] = field(default_factory=list)
    reason: str | None = None
    # Positions per channel at the producers: 1 for channels, the head size for attention heads,
    # times the repeat count for units laid out several times (an LSTM's gates).
    width: int = 1
    unit: str = "channel"
    # Why removing channels changes what the kept ones compute (a LayerNorm, Softmax or LRN over the
    # channels): prunable all the same, like any structured pruning, but not exact.
    lossy: list[str] = field(default_factory=list)
    # Every refusal the walk met (reason is the first): a group left whole only because it reaches the
    # model's interface (a graph input or output) says so in all of them.
    refusals: list[str] = field(default_factory=list)
    # Channels removed only together (a grouped Conv that reads them at the same place of its conv groups
    # loses one weight column for all of them; or one that slices each conv group on its own and must lose as
    # many columns from each, conv_groups.py): each list is one such set.
    ties: list[list[int]] = field(default_factory=list)
    # Of those, sets made of one channel of each of these classes (the conv groups of such a reader) may be
    # formed anew from the scores (conv_groups.matched); empty when other checks need the sets as listed.
    matched: list[list[int]] = field(default_factory=list)
    # Not a channel group at all: somewhere its positions are an axis a window slides along (a CQT's
    # frequency bins read by a 2-D Conv), so removing one shifts the neighbours of the others.
    on_grid: bool = False

    @property
    def prunable(self) -> bool:
        return self.reason is None

    @property
    def interface_only(self) -> bool:
        """Left whole by design: its channels are a graph input or output, and nothing else refused it."""
        return bool(self.refusals) and self.reason == self.refusals[0] and all(
            r.startswith((REACHES_OUTPUT, COUPLED_INPUT)) for r in self.refusals)

    def describe(self) -> dict:
        return {"id": self.id, "channels": self.channels, "width": self.width, "unit": self.unit,
                "producers": self.producers, "members": sorted({m.label() for m in self.members}),
                "reason": self.reason, "lossy": self.lossy}


class Refused(Exception):
    """Raised by a handler to abandon the group being explored."""


class _Explorer:
    def __init__(self, graph, shapes: dict, exact: bool = False, scope=None):
        import onnx_graphsurgeon as gs

        self.exact = exact
        # A body walked for its own groups (subgraphs.BodyScope): constants the body reads through its inputs,
        # and what each of its inputs and outputs is outside (the refusal when the walk reaches one).
        self.carried = scope.constants if scope is not None else {}
        self.edges = scope.edges if scope is not None else {}
        # The walk stays in its graph: a value made outside a body, or read inside one, is not followed there.
        self.local_nodes = {id(n) for n in graph.nodes}
        self.local_values = ({t.name for t in graph.inputs} | {t.name for n in graph.nodes for t in n.outputs}
                             if scope is not None else None)
        self.unit = Unit()  # set per exploration
        self.regroup_norms = False  # set per exploration from its Unit
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

    def lossy(self, what: str):
        """Removing the group's channels changes `what` computes for the kept ones (a normalization over
        them): allowed, recorded on the group, refused when the search must stay exact."""
        if self.exact:
            self.refuse(f"{what} (exact search)")
        self.lossy_notes.append(what)

    def window(self, node, axis: int, kernel: int):
        """The group sits on spatial axis `axis` of `node`'s input or output, along which a window of `kernel`
        slides: refused as no channels at all when the window spans, strides or pads that axis (removing a
        position would shift what its neighbours meet). A 1-wide, unstrided, unpadded window passes (the
        caller refuses it in its own words)."""
        s = axis - 2
        strides, pads = list(node.attrs.get("strides", [])), list(node.attrs.get("pads", []))
        strided = len(strides) > s and strides[s] > 1
        padded = len(pads) > s and bool(pads[s] or pads[s + len(pads) // 2])
        if kernel > 1 or strided or padded:  # (SAME auto-padding and dilation matter only for kernel > 1)
            self.grid_reasons.append(f"{node_key(node)}: {NOT_CHANNELS}: {node.op} slides a window of {kernel} "
                                     f"along the group's axis {axis}")
            self.refuse(self.grid_reasons[-1])

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
            if tensor.name in self.carried:
                return self._in_layout(*self.carried[tensor.name], axes)
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
        self.members.setdefault((member.kind, member.tensor, member.axis, member.use, member.index,
                                 member.mapping), member)

    def add_const(self, kind, const, axis, m, node, index, role=""):
        name, axis_map, _ = const
        c_axis = axis_map[axis]
        self.add(Member(kind, name, c_axis, m.on_axis(c_axis), (node_key(node), index), role=role or kind))

    def producer(self, node, channels: int, m: Mapping, output: int = 0):
        """`node` makes the group's channels on output `output`; they must cover its `channels` exactly
        (checked once the walk is over, as several pieces may cover them together)."""
        self.group_producers.append(node_key(node))
        self.coverage.append((node, node.outputs[output].name, m.axis, channels))

    def hint(self, unit: Unit):
        """The walk would work if the producer's channels were counted in `unit`s (heads, gates, groups)."""
        if unit not in self.hints and (unit.block > 1 or unit.repeat > 1 or unit.regroup_norms):
            self.hints.append(unit)

    def follows(self, out_name: str, axis: int, source, source_axis: int, what: str):
        """Axis `axis` of `out_name` is sized at run time by axis `source_axis` of `source`: after the
        walk both must lose the same count for every channel (else the run-time size is wrong).
        source_axis -1: the axis must not change at all."""
        self.follow_checks.append((out_name, axis, source.name, source_axis, what))

    def reads_size(self, tensor_name: str, axis: int, reader: str):
        """`reader` (a Reshape) reads the run-time size of axis `axis` of `tensor_name`, checked by follows()."""
        self.size_readers.add((tensor_name, axis, reader))

    def needs_reader(self, tensor_name: str, axis: int, reader: str, what: str):
        """A Shape reads this axis and feeds `reader`: fine only if `reader` checks it with follows()."""
        self.size_uses.append((tensor_name, axis, reader, what))

    def even_parts(self, node, axis: int, starts: list[int], sizes: list[int]):
        """A Split without sizes: every part must lose as many positions as the others, per channel."""
        self.even_checks[(node_key(node), axis)] = (node, axis, starts, sizes)

    def tie_conv_groups(self, node, name: str, axis: int, groups: int, size: int):
        """A grouped Conv reads `name` and keeps `group`: whatever one conv group loses at place j, all lose
        there. The channels at place j of every conv group are tied (checked once the walk is over)."""
        self.tie_checks[(node_key(node), name)] = (node, name, axis, groups, size)

    def balance_conv_groups(self, node, name: str, axis: int, groups: int, size: int):
        """A grouped Conv makes `name`: every set of tied channels must take as many of its filters from each
        conv group (checked once the walk is over)."""
        self.balance_checks[(node_key(node), name)] = (node, name, axis, groups, size)

    def pieces(self, name: str) -> list[Mapping]:
        return self.state.get(name, [])

    # --- the search ---
    def visit(self, tensor, m: Mapping, via=None):
        pieces = self.state.setdefault(tensor.name, [])
        if m in pieces:
            return
        if isinstance(tensor, self.gs.Constant):
            self.refuse(f"constant {tensor.name} coupled as an activation")
        for p in pieces:
            if p.axis != m.axis:
                self.refuse(f"{tensor.name} reached on two axes ({p.axis} and {m.axis})")
            if np.intersect1d(p.positions(np.arange(self.channels)), m.positions(np.arange(self.channels))).size:
                self.refuse(f"{tensor.name} reached with two different channel layouts")
        if len(pieces) >= MAX_PIECES:
            self.refuse(f"{tensor.name} holds more than {MAX_PIECES} pieces of the group")
        pieces.append(m)
        self.queue.append((tensor, m, via))

    def _steps(self, tensor, m, via):
        """The handler calls that expand one visited tensor (each may refuse on its own)."""
        if tensor.name in self.graph_outputs:
            yield lambda: self.refuse(self.edges.get(tensor.name) or f"{REACHES_OUTPUT} {tensor.name}")
        if tensor.name in self.graph_inputs:
            yield lambda: self.refuse(self.edges.get(tensor.name) or f"{COUPLED_INPUT} {tensor.name}")
        if self.local_values is not None and tensor.name not in self.local_values:
            yield lambda: self.refuse(f"{tensor.name}: a value of the outer graph read inside a body")
            return
        node = producer_of(tensor)
        if node is not None and node is not via:
            yield lambda: self._handle(node, "out", list(node.outputs).index(tensor), m)
        for consumer in list(tensor.outputs):
            if consumer is via:
                continue
            if id(consumer) not in self.local_nodes:
                yield lambda c=consumer: self.refuse(f"{tensor.name} is read inside an If/Loop/Scan body ({node_key(c)})")
                continue
            for i, t in enumerate(consumer.inputs):
                if t is tensor:
                    yield lambda c=consumer, i=i: self._handle(c, "in", i, m)

    def _handle(self, node, side, index, m):
        handler = HANDLERS.get(node.op)
        if handler is None or (node.domain or "") not in ("", "ai.onnx"):
            self.refuse(f"{node_key(node)}: {node.op} is not understood")
        handler(self, node, side, index, m)

    def explore(self, start, channels: int, output: int, m: Mapping) -> list[str]:
        """Walk the closure of `start`'s output channels; returns every refusal, in the order met.

        After a refusal the walk goes on, so every producer of the closure lands in this one
        (refused) group instead of seeding duplicates of it.
        """
        self.channels = channels
        self.state: dict[str, list[Mapping]] = {}
        self.queue: list = []
        self.members: dict = {}
        self.group_producers: list[str] = []
        self.crossed: list[str] = []  # grouped convs the walk went through in whole conv groups
        self.coverage: list = []
        self.hints: list[Unit] = []
        self.follow_checks: list = []
        self.size_readers: set = set()
        self.size_uses: list = []
        self.even_checks: dict = {}
        self.tie_checks: dict = {}
        self.balance_checks: dict = {}
        self.ties: list[list[int]] = []
        self.matched: list[list[int]] = []
        self.lossy_notes: list[str] = []
        self.grid_reasons: list[str] = []
        reasons: list[str] = []
        self.visit(start.outputs[output], m, None)
        while self.queue:
            tensor, m, via = self.queue.pop()
            for call in self._steps(tensor, m, via):
                try:
                    call()
                except Refused as exc:
                    reasons.append(str(exc))
        reasons.extend(self._final_checks())
        return reasons

    def held(self, name: str, axis: int):
        """(channels, their positions per row) of each piece of the group on one axis of a tensor."""
        for p in self.pieces(name):
            if p.axis == axis:
                present = p.present(np.arange(self.channels))
                yield present, p.by_channel(present)

    def counts(self, name: str, axis: int, start: int = 0, size: int = 2**62) -> np.ndarray:
        """Positions per channel the group holds on one axis of a tensor, within [start, start + size)."""
        total = np.zeros(self.channels, dtype=np.int64)
        for present, rows in self.held(name, axis):
            total[present] += ((rows >= start) & (rows < start + size)).sum(1)
        return total

    def _final_checks(self) -> list[str]:
        reasons = []
        for node, name, axis, channels in self.coverage:
            pos = np.sort(np.concatenate([p.positions(np.arange(self.channels)) for p in self.pieces(name)
                                          if p.axis == axis] or [np.zeros(0, np.int64)]))
            if pos.size != channels or not np.array_equal(pos, np.arange(channels)):
                reasons.append(f"{node_key(node)}: {node.op} with {channels} output channels coupled to "
                               f"{pos.size} positions of a {self.channels}-channel group")
        for out_name, axis, source, source_axis, what in self.follow_checks:
            other = self.counts(source, source_axis) if source_axis >= 0 else np.zeros(self.channels, np.int64)
            if not np.array_equal(self.counts(out_name, axis), other):
                reasons.append(f"{what}: the size read at run time from {source} does not follow the group")
        for node, axis, starts, sizes in self.even_checks.values():
            per_part = [self.counts(node.inputs[0].name, axis, start, size) for start, size in zip(starts, sizes)]
            if any(not np.array_equal(c, per_part[0]) for c in per_part):
                reasons.append(f"{node_key(node)}: Split without explicit sizes would shrink its parts unevenly")
        for name, axis, reader, what in self.size_uses:
            if (name, axis, reader) not in self.size_readers:
                reasons.append(f"{what}: the channel count is read by Shape")
        if self.tie_checks or self.balance_checks:
            reasons.extend(self._tied_conv_groups())
        return reasons

    def _tied_conv_groups(self) -> list[str]:
        """Ties from grouped Conv readers (union of the channels at each place of their conv groups), then
        every tied set checked against grouped Conv producers (as many filters from each conv group). When
        one reader's places would tie every channel (or hold other channels), that reader may instead slice
        each conv group on its own: the ties become sets balanced over its conv groups (conv_groups.py)."""
        atoms, reasons = self._place_ties()
        if reasons and len(self.tie_checks) == 1:
            split = self._split_conv_groups(*next(iter(self.tie_checks.values())))
            if split is not None:
                atoms, reasons = split, []
        self.ties = [a.tolist() for a in atoms if a.size > 1]
        for node, name, axis, groups, size in self.balance_checks.values():
            for atom in atoms:
                pos = np.concatenate([p.by_channel(p.present(atom)).reshape(-1) for p in self.pieces(name)
                                      if p.axis == axis])
                if len(set(np.bincount(pos // size, minlength=groups).tolist())) > 1:
                    reasons.append(f"{node_key(node)}: grouped Conv (group={groups}) would lose unequal numbers "
                                   f"of filters from its conv groups")
                    break
        return reasons

    def _place_ties(self) -> tuple[list[np.ndarray], list[str]]:
        """The channels at one place of every conv group of each reader, united (removed together)."""
        parent = list(range(self.channels))

        def root(c):
            while parent[c] != c:
                parent[c] = parent[parent[c]]
                c = parent[c]
            return c

        reasons = []
        for node, name, axis, groups, size in self.tie_checks.values():
            owner = np.full(groups * size, -1, dtype=np.int64)
            for present, rows in self.held(name, axis):
                owner[rows] = present[:, None]
            for j in range(size):
                held = owner[j::size]
                if (held < 0).all():
                    continue
                if (held < 0).any():
                    reasons.append(f"{node_key(node)}: grouped Conv (group={groups}) reads other channels at the "
                                   f"group's places of its conv groups")
                    break
                for c in held[1:]:
                    parent[root(int(c))] = root(int(held[0]))
        roots = np.array([root(c) for c in range(self.channels)])
        atoms = [np.flatnonzero(roots == r) for r in np.unique(roots)]
        if len(atoms) == 1 and self.channels > 1:
            reasons.append("grouped Convs tie every channel of the group together (nothing could be removed)")
        return atoms, reasons

    def _split_conv_groups(self, node, name: str, axis: int, groups: int, size: int) -> list[np.ndarray] | None:
        """The reader keeps `group` and slices each conv group on its own: its weight member counts input
        channels instead of places, and the channels go in sets that take as many columns from every conv
        group. None when no such sets exist, or when the group does not hold all of the reader's input."""
        profile = np.zeros((self.channels, groups), dtype=np.int64)
        for present, rows in self.held(name, axis):
            np.add.at(profile, (np.repeat(present, rows.shape[1]), rows.reshape(-1) // size), 1)
        if profile.sum() != groups * size:  # other groups' channels there too: they could not follow
            return None
        found = balanced_sets(profile)
        if found is None:
            return None
        fixed, classes = found
        self.matched = [] if self.balance_checks else classes  # producers checked against the sets as listed
        for k, m in list(self.members.items()):
            if m.kind == "in" and m.use == (node_key(node), 1) and m.mapping.modulo:
                del self.members[k]
                self.add(replace(m, mapping=replace(m.mapping, modulo=0), conv_groups=groups))
        return [np.asarray(s, dtype=np.int64) for s in fixed + matched(classes)]


def find_channel_groups(graph, shapes: dict | None = None, exact: bool = False, scope=None) -> list[ChannelGroup]:
    """Every channel group of a gs.Graph, prunable or with the reason it is not.

    `shapes` maps tensor names to static shapes (onnxcomp.graph.shapes.infer_shapes); computed when
    not given, with symbolic dims set to 1. `exact`: refuse groups whose removal changes what the
    kept channels compute (normalizations over the channels) instead of marking them lossy. `scope`: the
    graph is an If/Loop/Scan body (subgraphs.BodyScope); the groups of bodies follow the graph's own.
    """
    if shapes is None:
        from onnxcomp.graph.convert import to_model
        from onnxcomp.graph.shapes import infer_shapes

        shapes = infer_shapes(to_model(graph))
    ex = _Explorer(graph, shapes, exact, scope)
    groups: list[ChannelGroup] = []
    hints: dict[int, tuple] = {}
    for node in graph.nodes:
        if node.op not in PRODUCERS or node_key(node) in ex.claimed or not node.outputs:
            continue
        start = PRODUCERS[node.op](ex, node)
        if start is None:
            continue  # no constant weight (attention's activation @ activation), a grouped Conv: not a producer
        channels, output, axis = start
        group = _explore_group(ex, node, len(groups), channels, output, axis, Unit())
        groups.append(group)
        if group.reason and ex.hints:
            hints[group.id] = (node, start, list(ex.hints))
        for p in group.producers + (ex.crossed if group.prunable else []):
            ex.claimed.setdefault(p, group.id)
    groups = _unit_groups(ex, groups, hints)
    _refuse_overlaps(groups)
    _check_shared_constants(graph, groups)
    for group in body_groups(graph, shapes, exact, find_channel_groups, top=scope is None):
        group.id = len(groups)
        groups.append(group)
    return groups


def _explore_group(ex, node, gid: int, channels: int, output: int, axis: int, unit: Unit) -> ChannelGroup:
    per = unit.block * unit.repeat
    m = Mapping(axis, 0, unit.block, unit.repeat, channels // unit.repeat if unit.repeat > 1 else 0)
    ex.unit, ex.regroup_norms = unit, unit.regroup_norms
    group = ChannelGroup(gid, channels // per, [node_key(node)], width=per, unit=unit.describe())
    group.refusals = ex.explore(node, channels // per, output, m)
    group.on_grid = bool(ex.grid_reasons)
    group.reason = (ex.grid_reasons or group.refusals or [None])[0]  # not channels: the decisive reason
    group.producers = list(dict.fromkeys([node_key(node), *ex.group_producers]))
    group.members = list(ex.members.values())
    group.tensors = list(ex.state)
    group.lossy = sorted(set(ex.lossy_notes))
    group.ties, group.matched = ex.ties, ex.matched
    return group


def _unit_groups(ex, groups: list[ChannelGroup], hints: dict) -> list[ChannelGroup]:
    """Retry refused groups in the units their walk hinted at (heads, gates, conv groups).

    Attention's q/k/v projections end in Reshape [.., H*D] -> [.., H, D]: per channel they are
    unprunable, but head h (D consecutive channels of q, k and v, and of o's input) is one unit.
    An LSTM written out as Gemm -> Split(4) prunes hidden unit u as channels u, H+u, 2H+u, 3H+u.
    A retried group that works replaces the refused groups of the producers it covers.
    """
    replaced: set[int] = set()
    extra: list[ChannelGroup] = []
    # A producer a prunable group already takes along (a per-head score conv's group taking the projection
    # it weighs, head by head) is pruned: its own refused per-channel group is no group of its own.
    pruned_by = {p for g in groups if g.prunable for p in g.producers}
    replaced |= {g.id for g in groups if not g.prunable and g.producers and set(g.producers) <= pruned_by}
    for gid, (node, (channels, output, axis), first) in hints.items():
        if gid in replaced:
            continue
        tried, todo, tied = set(), list(first), None
        while todo and len(tried) < RETRIES:
            unit = todo.pop(0)
            if unit in tried or channels % (unit.block * unit.repeat):
                continue
            tried.add(unit)
            group = _explore_group(ex, node, -1, channels, output, axis, unit)
            if group.reason is None:
                covered = {ex.claimed.get(p) for p in group.producers}
                covered |= {ex.claimed[p] for p in ex.crossed if p in ex.claimed}  # grouped convs it takes along
                ok = None not in covered and not covered & replaced and not pruned_by & set(group.producers)
                if ok and all(groups[c].reason for c in covered):
                    if group.ties:  # channels that go only together: a unit without ties may still come
                        tied = tied or (group, covered)
                        continue
                    tied = (group, covered)
                    break
                continue  # it would take producers another retry already won: try the next unit
            if group.interface_only and not (groups[gid].interface_only or groups[gid].on_grid):  # in these units
                groups[gid].reason, groups[gid].refusals = group.reason, group.refusals  # only the interface is left
            todo += [_combined(unit, h) for h in ex.hints]
        if tied is not None:
            replaced |= tied[1]
            extra.append(tied[0])
    kept = [g for g in groups if g.id not in replaced] + extra
    for i, g in enumerate(kept):
        g.id = i
    return kept


def _refuse_overlaps(groups: list[ChannelGroup]) -> None:
    """Two prunable groups must never slice the same positions of one constant (a grouped conv crossed in
    whole conv groups by a retried group and also starting a group of its own): the later one stays whole."""
    taken: dict[tuple, tuple[int, np.ndarray]] = {}
    for g in groups:
        if not g.prunable:
            continue
        mine: dict[tuple, np.ndarray] = {}
        for m in g.members:
            if m.kind in ("out", "in"):
                k = (m.tensor, m.axis, m.use)
                mine[k] = np.concatenate([mine.get(k, np.zeros(0, np.int64)), m.mapping.positions(np.arange(g.channels))])
        clash = next((k for k, pos in mine.items() if k in taken and np.intersect1d(taken[k][1], pos).size), None)
        if clash is not None:
            g.reason = f"slices {clash[0]} where group {taken[clash][0]} does"
            g.refusals = [g.reason]
            continue
        for k, pos in mine.items():
            taken[k] = (g.id, np.concatenate([taken[k][1], pos]) if k in taken else pos)


def _combined(unit: Unit, more: Unit) -> Unit:
    return Unit(max(unit.block, more.block), max(unit.repeat, more.repeat), unit.regroup_norms or more.regroup_norms)


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
    return {t.name for body in nested_bodies(graph) for node in body.nodes for t in node.inputs}


def _check_shared_constants(graph, groups: list[ChannelGroup]) -> None:
    """A constant sliced for a group must be sliced alike for every reader, or copied per reader.

    Small per-channel constants shared with other readers are fine: shape entries (Reshape
    shapes, Split sizes), normalization parameters and biases. The plan gives the group's
    readers their own sliced copy (exporters share one [0, 32, -1] and one ones(32) among every
    GroupNorm). A tied weight (cleanup merges equal weights; exporters tie layers) read directly
    by Convs or MatMuls that slice it differently gets one copy per reader too, as long as every
    reader belongs to a prunable group (then each copy is smaller than the weight). A weight also
    read by a node no prunable group covers stays a refusal: copying it would not compress.
    Weights read through a Transpose stay a refusal as well (a copy would sit in the wrong layout).
    """
    uses = _uses_of_constants(graph)
    nodes = {node_key(n): n for n in graph.nodes}
    covered: dict[str, set] = {}  # constant -> reader slots some prunable group slices
    for group in groups:
        if group.prunable:
            for m in group.members:
                if m.kind in ("out", "in", "param"):
                    covered.setdefault(m.tensor, set()).add(m.use)
    for group in groups:
        if not group.prunable:
            continue
        known = {m.use for m in group.members}
        tied = _tied(group, uses)
        for i, m in enumerate(group.members):
            if m.kind == "attr":
                continue
            outside = uses.get(m.tensor, set()) - known
            if not outside and m.tensor not in tied:
                continue
            weight_ok = not outside - covered.get(m.tensor, set())
            if _copyable(m, nodes, weight_ok) and not {u for u in outside if u[0].startswith("<")}:
                group.members[i] = replace(m, private=True)
                continue
            node, slot = min(outside or uses[m.tensor] - {m.use})
            group.reason = (f"constant {m.tensor} is also read by {node} (input {slot}) outside the group"
                            if outside else f"constant {m.tensor} is read by {node} (input {slot}) sliced another way")
            break


def _tied(group: ChannelGroup, uses: dict) -> set[str]:
    """Constants the group slices differently for different readers (or not at all for some)."""
    cuts: dict[str, dict] = {}
    for m in group.members:
        if m.kind in ("out", "in", "param"):
            cuts.setdefault(m.tensor, {}).setdefault(m.use, set()).add((m.axis, m.mapping))
    tied = set()
    for name, by_use in cuts.items():
        readers = uses.get(name) or set(by_use)
        if len(readers) > 1 and len({frozenset(by_use.get(u, ())) for u in readers}) > 1:
            tied.add(name)
    return tied


def _copyable(m: Member, nodes: dict, weights: bool = False) -> bool:
    """Constants a reader reads directly (no Transpose between) may get a private copy: small ones
    always, weights (`weights`) where their readers slice them differently."""
    reader = nodes.get(m.use[0])
    direct = reader is not None and 0 <= m.use[1] < len(reader.inputs) and reader.inputs[m.use[1]].name == m.tensor
    return direct and (m.kind in ("value", "param") or (m.kind == "out" and m.role == "bias")
                       or (weights and m.kind in ("out", "in")))
