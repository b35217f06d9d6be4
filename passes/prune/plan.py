"""PruningPlan: the decision as plain data, and apply_plan, which carries it out on a graph.

A plan lists, for every constant that changes, the axis and the indices kept on it; the
int64 entries to rewrite (Reshape shapes, Split sizes, Slice bounds); and node attributes
to rewrite (a depthwise Conv's `group`). It is JSON, so it can be written, inspected,
edited, and replayed on the same model (e.g. before fine-tuning, by the distillation sidecar).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.graph.weights import store_values
from onnxcomp.graph.edit import nested_bodies, node_key
from onnxcomp.passes.prune.group_norm import regrouped_count
from onnxcomp.passes.prune.groups import ChannelGroup
from onnxcomp.passes.prune.subgraphs import refresh_bodies

PLAN_VERSION = 1


@dataclass
class PruningPlan:
    # {"tensor": name, "axis": int, "size": int (before), "keep": [sorted indices]}; with "conv_groups": G
    # (a grouped Conv's weight, each conv group keeping its own columns) keep counts the conv's input
    # channels: conv group k keeps columns i - k * size for the kept i in [k * size, (k + 1) * size)
    slices: list[dict] = field(default_factory=list)
    # {"tensor": name, "index": flat index, "value": new int}
    values: list[dict] = field(default_factory=list)
    # {"node": name (or first output name), "name": attribute, "value": new int}
    attributes: list[dict] = field(default_factory=list)
    # For people: {"id", "producers", "channels", "kept"} per pruned group.
    groups: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"version": PLAN_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "PruningPlan":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"pruning plan is not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            raise InputError(f"pruning plan: expected an object with version {PLAN_VERSION}")
        try:
            return cls(**{k: list(data.get(k, [])) for k in ("slices", "values", "attributes", "groups")})
        except TypeError as exc:
            raise InputError(f"pruning plan: {exc}") from None

    def save(self, path) -> None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> "PruningPlan":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such pruning plan")
        return cls.from_json(path.read_text())

    @property
    def removed(self) -> int:
        """Positions removed over all sliced constants (not parameters: see removed_params)."""
        return sum(s["size"] * int(s.get("conv_groups", 1)) - len(s["keep"]) for s in self.slices)

    def removed_params(self, values_of, readers_of=None) -> int:
        """Parameters this plan removes: each constant's size before minus after all its slices.

        A slice for one reader (`node`/`input`) makes a sliced copy for it: the copy's size is
        added, and the original is removed once every reader has its copy (`readers_of(name)`
        counts a constant's reader slots; without it the original is taken to stay).
        """
        by_tensor: dict[str, list[dict]] = {}
        copies: dict[tuple[str, str, int], list[dict]] = {}
        for s in self.slices:
            if "node" in s:
                copies.setdefault((s["tensor"], s["node"], int(s["input"])), []).append(s)
            else:
                by_tensor.setdefault(s["tensor"], []).append(s)
        total = 0
        for name, entries in by_tensor.items():
            total += _size(values_of(name)) - _size(values_of(name), entries)
        per_original: dict[str, int] = {}
        for (name, _, _), entries in copies.items():
            total -= _size(values_of(name), entries)
            per_original[name] = per_original.get(name, 0) + 1
        for name, n in per_original.items():
            if readers_of is not None and n >= readers_of(name):
                total += _size(values_of(name))
        return total


def _size(values, slices=()) -> int:
    shape = list(np.shape(values))
    for s in slices:
        shape[s["axis"]] = len(s["keep"]) // int(s.get("conv_groups", 1))
    return int(np.prod(shape))


def readers_in(graph):
    """name -> number of (node, input) slots reading that constant directly (for removed_params)."""
    counts: dict[str, int] = {}
    for node in graph.nodes:
        for t in node.inputs:
            counts[t.name] = counts.get(t.name, 0) + 1
    return lambda name: counts.get(name, 0)


def build_plan(graph, groups: list[ChannelGroup], kept: dict[int, np.ndarray]) -> PruningPlan:
    """Merge per-group decisions (kept channel indices by group id) into one plan.

    Several groups may slice one constant on one axis (a Conv reading a Concat): their
    removed positions are united, so the plan holds one entry per (constant, axis). A shape
    entry shrinks, for each reader, by the removed positions of the pieces that reader sees.
    What each reader of a constant needs is worked out per reader (a group that owns every
    reader of a weight slices it for all, a `private` member for its own reader only); when
    the readers end up needing different values, each changed reader gets its own copy.
    """
    values_of = ConstantTable(graph).get
    readers = constant_readers(graph)
    drops: dict[tuple[str, int], dict] = {}  # (constant, axis) -> {reader: removed positions}
    split: dict[tuple[str, int], int] = {}  # (grouped Conv weight, axis) -> conv groups, sliced each on its own
    split_drops: dict[tuple[str, int], dict] = {}  # the same, removed positions as the conv's input channels
    deltas: dict[tuple[str, int], dict] = {}  # (constant, entry) -> {reader: decrease}
    attr_delta: dict[tuple[str, str], int] = {}
    regrouped: dict[tuple, tuple] = {}  # a regrouped GroupNorm's member -> (member, removed channels)
    plan = PruningPlan()
    for group in groups:
        if group.id not in kept:
            continue
        keep = np.asarray(kept[group.id], dtype=np.int64)
        removed = np.setdiff1d(np.arange(group.channels), keep)
        if removed.size == 0:
            continue
        plan.groups.append({"id": group.id, "producers": group.producers, "channels": group.channels,
                            "kept": int(keep.size)})
        for m in group.members:
            pos = m.mapping.positions(removed)
            if m.role == "groups":  # a regrouped GroupNorm: counted over all groups, resolved below
                key = (m.kind, m.tensor, m.index if m.kind == "value" else m.axis, m.use)
                first, gone = regrouped.get(key, (m, 0))
                regrouped[key] = (first, gone + int(pos.size))
            elif m.kind in ("out", "in", "param"):
                if m.conv_groups:
                    split[(m.tensor, m.axis)] = m.conv_groups
                table = split_drops if m.conv_groups else drops
                for use in ([m.use] if m.private else readers.get(m.tensor) or [m.use]):
                    table.setdefault((m.tensor, m.axis), {}).setdefault(use, set()).update(int(p) for p in pos)
            elif m.kind == "value":  # each reader counts the pieces it sees; a shared entry is one reader's
                per_reader = deltas.setdefault((m.tensor, m.index), {})
                per_reader[m.use] = per_reader.get(m.use, 0) + m.sign * int(np.sum((pos >= m.lo) & (pos < m.hi)))
            elif m.kind == "attr":
                attr_delta[(m.tensor, m.role)] = attr_delta.get((m.tensor, m.role), 0) + int(pos.size)
    for (kind, name, at, use), (m, gone) in regrouped.items():
        _regroup(kind, name, at, [use] if m.private else readers.get(name) or [use], m.hi, gone, values_of,
                 deltas, drops)
    for (name, axis), flat in split_drops.items():  # columns other groups remove go from every conv group
        size, groups, columns = int(np.shape(values_of(name))[axis]), split[(name, axis)], drops.get((name, axis), {})
        drops[(name, axis)] = {use: flat.get(use, set()) | {k * size + c for k in range(groups)
                                                            for c in columns.get(use, ())}
                               for use in set(flat) | set(columns)}
    for (name, axis), by_reader in sorted(drops.items()):
        size = int(np.shape(values_of(name))[axis])
        groups = split.get((name, axis), 0)
        for use, removed_pos in _per_reader(by_reader, readers.get(name), set()):
            entry = {"tensor": name, "axis": axis, "size": size,
                     "keep": [i for i in range(size * max(groups, 1)) if i not in removed_pos]}
            if groups:
                entry["conv_groups"] = groups
            plan.slices.append(_for_reader(entry, use))
    for (name, index), by_reader in sorted(deltas.items()):
        old = int(np.asarray(values_of(name)).reshape(-1)[index])
        for use, delta in _per_reader(by_reader, readers.get(name), 0):
            if delta:
                plan.values.append(_for_reader({"tensor": name, "index": index, "value": old - delta}, use))
    nodes = {node_key(n): n for n in graph.nodes}
    for (key, attr), delta in sorted(attr_delta.items()):
        default = 1 if attr == "group" else 0
        plan.attributes.append({"node": key, "name": attr, "value": int(nodes[key].attrs.get(attr, default)) - delta})
    return plan


def _regroup(kind, name, at, uses, channels: int, gone: int, values_of, deltas: dict, drops: dict) -> None:
    """A regrouped GroupNorm's group count entry (value) or per-group scale and bias (param), for each reader:
    G' from every channel it loses, those of regrouping groups (`gone`) and the whole GroupNorm groups that
    exact groups take (already in deltas/drops, in units of groups), which it replaces."""
    values = np.asarray(values_of(name))
    old = int(values.reshape(-1)[at]) if kind == "value" else int(values.shape[at])
    per = channels // old
    for u in uses:
        if kind == "value":
            whole = deltas.get((name, at), {}).get(u, 0)
            deltas.setdefault((name, at), {})[u] = old - regrouped_count(channels, old, channels - gone - whole * per)
        else:
            whole = len(drops.get((name, at), {}).get(u, ()))
            new = regrouped_count(channels, old, channels - gone - whole * per)
            drops.setdefault((name, at), {})[u] = set(range(new, old))


def _per_reader(by_reader: dict, all_readers, unchanged):
    """[(None, change)] when every reader of the constant sees the same change, else [(reader, change)]."""
    everyone = set(all_readers or by_reader)
    changes = [by_reader.get(use, unchanged) for use in everyone]
    if all(c == changes[0] for c in changes) and set(by_reader) <= everyone:
        return [(None, changes[0])]
    return [(use, change) for use, change in sorted(by_reader.items()) if change != unchanged]


def _for_reader(entry: dict, use) -> dict:
    if use is not None:
        entry.update(node=use[0], input=int(use[1]))
    return entry


def constant_readers(graph) -> dict[str, list[tuple[str, int]]]:
    """constant name -> the (node key, input) slots that read it, directly or through Identity."""
    import onnx_graphsurgeon as gs

    found: dict[str, list] = {}
    for node in graph.nodes:
        for i, t in enumerate(node.inputs):
            source = t
            while not isinstance(source, gs.Constant) and source.inputs and source.inputs[0].op == "Identity":
                source = source.inputs[0].inputs[0]
            if isinstance(source, gs.Constant) or (source.inputs and source.inputs[0].op == "Constant"):
                if node.op != "Identity":
                    found.setdefault(source.name, []).append((node_key(node), i))
    return found


class ConstantTable:
    """Find constants by name: initializers and Constant-node outputs."""

    def __init__(self, graph):
        import onnx_graphsurgeon as gs

        self.gs = gs
        self.tensors = graph.tensors()
        for body in nested_bodies(graph):  # constants read in bodies (an outer weight, a body's Constant node)
            for name, t in body.tensors().items():
                self.tensors.setdefault(name, t)

    def get(self, name):
        t = self.tensors.get(name)
        if isinstance(t, self.gs.Constant):
            return np.asarray(t.values)
        if t is not None and t.inputs and t.inputs[0].op == "Constant":
            return np.asarray(t.inputs[0].attrs["value"].values)
        raise InputError(f"pruning plan names {name!r}, which is not a constant of this model")

    def set(self, name, values: np.ndarray) -> None:
        t = self.tensors[name]
        if isinstance(t, self.gs.Constant):
            store_values(t, values)  # weights kept on disk go straight back there (graph/weights.py)
        else:
            t.inputs[0].attrs["value"] = self.gs.Constant(name, values)


def apply_plan(graph, plan: PruningPlan, infer: bool = True) -> None:
    """Slice, rewrite and re-infer shapes in place. Raises InputError if the plan does not fit."""
    consts = ConstantTable(graph)
    for s in plan.slices:
        if "node" not in s:
            consts.set(s["tensor"], _sliced(consts.get(s["tensor"]), s))
    private = [s for s in plan.slices if "node" in s]
    for s in plan.values:
        if "node" not in s:
            values = consts.get(s["tensor"]).copy()
            _set_entry(values, s)
            consts.set(s["tensor"], values)
    _private_copies(graph, consts, private + [v for v in plan.values if "node" in v])
    refresh_bodies(graph, {s["tensor"] for s in plan.slices})
    nodes = {node_key(n): n for n in graph.nodes}
    for a in plan.attributes:
        if a["node"] not in nodes:
            raise InputError(f"pruning plan names node {a['node']!r}, which this model lacks")
        nodes[a["node"]].attrs[a["name"]] = int(a["value"])
    if infer:
        reinfer_shapes(graph)


def _sliced(values: np.ndarray, s: dict) -> np.ndarray:
    axis, keep = int(s["axis"]), [int(i) for i in s["keep"]]
    groups = int(s.get("conv_groups", 1))
    if not 0 <= axis < values.ndim or values.shape[axis] != int(s["size"]):
        raise InputError(f"pruning plan: {s['tensor']} has shape {values.shape}, plan expects "
                         f"{s['size']} on axis {axis}")
    if not keep or keep != sorted(set(keep)) or keep[0] < 0 or keep[-1] >= values.shape[axis] * groups:
        raise InputError(f"pruning plan: kept indices of {s['tensor']} must be sorted, unique, in range")
    if groups == 1:
        return np.ascontiguousarray(np.take(values, keep, axis=axis))
    return _sliced_per_conv_group(values, s["tensor"], axis, np.asarray(keep), groups)


def _sliced_per_conv_group(values: np.ndarray, name: str, axis: int, keep: np.ndarray, groups: int) -> np.ndarray:
    """Conv group k (block k of the filters on axis 0) keeps its own columns on `axis`."""
    size = values.shape[axis]
    columns = [keep[(keep >= k * size) & (keep < (k + 1) * size)] - k * size for k in range(groups)]
    if axis == 0 or values.shape[0] % groups or len({len(c) for c in columns}) > 1:
        raise InputError(f"pruning plan: {name} must keep as many columns in each of its {groups} conv groups")
    rows = values.shape[0] // groups
    return np.ascontiguousarray(np.concatenate(
        [np.take(values[k * rows:(k + 1) * rows], c, axis=axis) for k, c in enumerate(columns)], axis=0))


def _set_entry(values: np.ndarray, v: dict) -> None:
    flat = values.reshape(-1)
    if not 0 <= int(v["index"]) < flat.size:
        raise InputError(f"pruning plan: {v['tensor']} has no entry {v['index']}")
    flat[int(v["index"])] = int(v["value"])


def _private_copies(graph, consts, entries: list[dict]) -> None:
    """Slices and shape entries for one reader only: that reader gets its own copy of the constant."""
    import onnx_graphsurgeon as gs

    from onnxcomp.graph.edit import NameGen

    nodes = {node_key(n): n for n in graph.nodes}
    fresh = NameGen(graph)
    copies: dict[tuple[str, int], np.ndarray] = {}
    for v in entries:
        node, slot = nodes.get(v["node"]), int(v["input"])
        if node is None or not 0 <= slot < len(node.inputs):
            raise InputError(f"pruning plan names input {slot} of node {v['node']!r}, which this model lacks")
        values = copies.get((v["node"], slot), consts.get(v["tensor"]))
        if "keep" in v:
            copies[(v["node"], slot)] = _sliced(values, v)
        else:
            copies[(v["node"], slot)] = values = values.copy()
            _set_entry(values, v)
    for (key, slot), values in copies.items():
        nodes[key].inputs[slot] = gs.Constant(fresh(f"{key}_in{slot}"), values)


def reinfer_shapes(graph):
    """Forget the intermediate static shapes (they changed) and infer them again.

    Returns the model exported for the inference (intermediate shapes left out), so a caller
    that needs the pruned model (e.g. to count MACs) need not export it again."""
    import onnx_graphsurgeon as gs

    from onnxcomp.graph.convert import to_model
    from onnxcomp.graph.shapes import skeleton, value_shapes

    io = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    variables = [t for t in graph.tensors().values() if isinstance(t, gs.Variable) and t.name not in io]
    for t in variables:
        t.shape = None
    model = to_model(graph)
    known = value_shapes(skeleton(model))  # symbolic dims (batch) stay symbolic
    if known is None:
        return model  # shapes stay unknown; ONNX Runtime infers them itself
    for t in variables:
        if t.name in known:
            t.shape = known[t.name]
    return model
