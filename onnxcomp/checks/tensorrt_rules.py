"""TensorRT's ONNX parser, applied without TensorRT: opsets, importers, element types and the limits
of each importer, for the release in the table (onnxcomp.checks.tensorrt_table) that the check
names (`--trt-version`, default the newest).

One finding per operator, attribute, input, type or opset the release rejects (errors), or
accepts only with a cast, a clamp or a caveat (warnings and infos). The Q/DQ-format rules
(TRT-01..21) live with the quantizer in onnxcomp.passes.qdq.rules_tensorrt.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.checks import tensorrt_table as table
from onnxcomp.checks.value_facts import FROM_SHAPES, RUNTIME, origin, value_facts
from onnxcomp.passes.qdq.rule_facts import attr, node_id
from onnxcomp.pipeline.rules import all_rules, rule

RELEASE_KEY = "tensorrt_release"  # index.cache key run_checks sets to the release asked for
_INT32 = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)
_FLT_MAX = float(np.finfo(np.float32).max)


def release_of(index) -> table.Release:
    return table.release(index.cache.get(RELEASE_KEY))


def type_name(elem_type: int) -> str:
    """The matrices' name of an ONNX element type (FP32, INT64 ...), else ONNX's own (STRING ...)."""
    if elem_type in table.TYPE_NAMES:
        return table.TYPE_NAMES[elem_type]
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


def _later_release_with(op: str, current: table.Release) -> str:
    later = [r.version for r in table.RELEASES.values() if r.ops.get(op) is not None and r is not current]
    return f" (TensorRT {', '.join(later)} imports it)" if later else ""


def _walk(graph, parent=None):
    """(node, the main-graph node it belongs to) for every node, subgraph bodies included."""
    for node in graph.node:
        yield node, parent or node
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _walk(sub, parent or node)


@rule("TRT-30", targets=("tensorrt",), severity="error", summary="default-domain opset in the release's range")
def opset_in_range(index):
    r, version = release_of(index), index.opset.get("ai.onnx")
    if version is None:
        return  # GEN-01
    lo, hi = r.opsets
    takers = table.releases_taking_opset(version)
    where = (f"TensorRT {', '.join(takers)} reads it" if takers else
             "no TensorRT release in the table reads it; convert it (onnx.version_converter)")
    if version > hi:
        yield ("model", f"opset {version} is newer than TensorRT {r.version} reads (opsets {lo}-{hi}); {where}")
    elif version < lo:
        yield ("model", f"opset {version} is older than TensorRT {r.version} documents (opsets {lo}-{hi}); the "
                        "parser warns and may misread old operator versions", "warning")


@rule("TRT-31", targets=("tensorrt",), severity="error", summary="every operator has an importer in the release")
def has_importer(index):
    """Nodes TRT-01 reports (QOperator ops: it says what to export instead) are left to it."""
    r = release_of(index)
    qoperator = {f.node if hasattr(f, "node") else f[0] for f in all_rules()["TRT-01"].fn(index) or ()}
    for node, top in _walk(index.graph):
        domain = node.domain or "ai.onnx"
        if node is top and node_id(node) in qoperator:
            continue
        where = "" if node is top else f"{node.op_type} {node_id(node)} in its body: "
        if domain != "ai.onnx":
            yield (node_id(top), f"{where}{node.op_type} ({domain}) has no TensorRT importer: it needs a plugin "
                                 "registered under that name, or another runtime")
        elif node.op_type not in r.ops:
            yield (node_id(top), f"{where}{node.op_type} is not in TensorRT {r.version}'s operator matrix: it needs "
                                 f"a plugin or another runtime{_later_release_with(node.op_type, r)}")
        elif r.ops[node.op_type] is None:
            yield (node_id(top), f"{where}TensorRT {r.version} has no importer for {node.op_type}: it needs a "
                                 f"plugin or another runtime{_later_release_with(node.op_type, r)}")


# ---------- element types ----------

_NO_INPUT_TYPE = {"If", "Loop", "Scan"}  # their types are those of their bodies


def _typed_values(node, facts) -> list[tuple[str, int]]:
    """(what, ONNX element type) of the values whose type the matrix constrains for `node`."""
    op = node.op_type
    if op == "Constant":
        value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        return [("its value", value.data_type)] if value is not None else []
    if op in ("ConstantOfShape", "RandomNormal", "RandomUniform"):
        out = node.output[0] if node.output else ""
        return [(f"output {out!r}", facts.types[out])] if out in facts.types else []
    if op in _NO_INPUT_TYPE:
        return []
    picks = {"Where": (1,), "CastLike": (0, 1)}.get(op, (0,))
    found = [(f"input {node.input[i]!r}", facts.types[node.input[i]]) for i in picks
             if i < len(node.input) and node.input[i] in facts.types]
    if op == "Cast":
        to = attr(node, "to")
        if to is not None:
            found.append(("its target type", to))
    return found


@rule("TRT-32", targets=("tensorrt",), severity="error", summary="element types each operator takes in the release")
def element_types(index):
    """A type TensorRT lacks, a quantized type outside Q/DQ or a UINT8 inside the network is an error;
    a TensorRT type the matrix does not list for the operator is a warning (the matrices lag the
    importers: e.g. ConstantOfShape is documented FP32-only before 10.15, yet takes INT64).
    Q/DQ types are TRT-03's."""
    r, facts = release_of(index), value_facts(index)
    for node in index.graph.node:
        types = r.ops.get(node.op_type) if not node.domain or node.domain == "ai.onnx" else None
        if types is None or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue  # TRT-31, TRT-03
        for what, elem in _typed_values(node, facts):
            name = type_name(elem)
            seen = r.cast_down.get(name, name)
            if seen in types:
                continue
            if seen not in r.types:
                yield (node_id(node), f"{what} of {node.op_type} is {name}, a type TensorRT {r.version} lacks")
            elif seen in r.quantized:
                yield (node_id(node), f"{what} of {node.op_type} is {name}, a quantized type in TensorRT {r.version}: "
                                      "only a DequantizeLinear reads it")
            elif seen in r.io_only:
                yield (node_id(node), f"{what} of {node.op_type} is {name}; TensorRT {r.version} has {name} only at "
                                      "the network's inputs and outputs (Cast it there)")
            else:
                yield (node_id(node), f"{what} of {node.op_type} is {name}; TensorRT {r.version}'s matrix lists "
                                      f"{', '.join(sorted(types))} for {node.op_type}", "warning")
        for limit in r.limits.get(node.op_type, ()):
            if isinstance(limit, table.InputType) and limit.index < len(node.input) and node.input[limit.index]:
                elem = facts.types.get(node.input[limit.index])
                if elem is not None and type_name(elem) != limit.dtype:
                    yield (node_id(node), f"{limit.name} of {node.op_type} is {type_name(elem)}; TensorRT "
                                          f"{r.version} needs {limit.dtype}")


@rule("TRT-33", targets=("tensorrt",), severity="warning", summary="values TensorRT casts down (INT64, DOUBLE), clamping")
def cast_down(index):
    r, facts = release_of(index), value_facts(index)
    narrowed = {}
    for name, elem in facts.types.items():
        source = type_name(elem)
        if source in r.cast_down:
            narrowed.setdefault(source, []).append(name)
    for source, names in sorted(narrowed.items()):
        target = r.cast_down[source]
        first = ", ".join(repr(n) for n in sorted(names)[:3]) + (" ..." if len(names) > 3 else "")
        severity = "warning" if source == "DOUBLE" else "info"
        yield ("model", f"{len(names)} {source} value(s) ({first}) become {target} in TensorRT {r.version}", severity)
    constants = [(init.name, init.data_type) for init in index.graph.initializer]
    constants += [(n.output[0], facts.types.get(n.output[0])) for n in index.graph.node
                  if n.op_type == "Constant" and n.output]
    for name, elem in constants:
        source = type_name(elem) if elem is not None else ""
        if source not in r.cast_down:
            continue
        value = index.constant(name)
        if value is None or value.size == 0:
            continue
        if source == "INT64":
            outside = value[(value < _INT32[0]) | (value > _INT32[1])]
            limit = "INT32's range (+-2^31)"
        else:
            outside = value[np.isfinite(value) & (np.abs(value) > _FLT_MAX)]
            limit = "FLT_MAX"
        if outside.size:
            yield (name, f"{outside.size} value(s) beyond {limit} (e.g. {outside.flat[0]}) are clamped when TensorRT "
                         f"{r.version} casts {source} to {r.cast_down[source]}")


@rule("TRT-38", targets=("tensorrt",), severity="error", summary="network inputs and outputs have types TensorRT binds")
def io_types(index):
    r, facts = release_of(index), value_facts(index)
    initializers = set(index.initializers)
    values = [(v.name, "input") for v in index.graph.input if v.name not in initializers]
    values += [(v.name, "output") for v in index.graph.output]
    for name, kind in values:
        elem = facts.types.get(name)
        if elem is None:
            continue
        t = type_name(elem)
        if t not in r.types:
            yield (name, f"network {kind} {name!r} is {t}; TensorRT {r.version} has no such type")
        elif t in r.quantized:
            yield (name, f"network {kind} {name!r} is {t}, a quantized type in TensorRT {r.version}: reachable only "
                         "through Q/DQ from a float tensor, not at the network's edge")


# ---------- the limits of each importer ----------

def _const_value(index, name: str):
    value = index.constant(name)
    return None if value is None else np.asarray(value)


def _shape(facts, node, i):
    return facts.shapes.get(node.input[i]) if i < len(node.input) and node.input[i] else None


def _limit_findings(index) -> dict[str, list]:
    """{rule id: [(node, message, severity)]} of every importer limit, computed once per index."""
    cached = index.cache.get("trt_limit_findings")
    if cached is not None:
        return cached
    r, facts = release_of(index), value_facts(index)
    found: dict[str, list] = {"TRT-34": [], "TRT-35": [], "TRT-36": [], "TRT-37": [], "TRT-39": []}
    for node in index.graph.node:
        if node.domain and node.domain != "ai.onnx":
            continue
        for limit in r.limits.get(node.op_type, ()):
            for rule_id, message, *severity in _check_limit(index, facts, r, node, limit):
                found[rule_id].append((node_id(node), message, severity[0] if severity else None))
        if node.op_type in r.deferred:
            found["TRT-39"].append((node_id(node), f"{node.op_type} has a data-dependent output shape: TensorRT "
                                    f"{r.version} parses it, but supportsModel (Polygraphy's capability report, ORT's "
                                    "TensorRT provider) leaves it to another runtime", "info"))
    index.cache["trt_limit_findings"] = found
    return found


def _check_limit(index, facts, r, node, limit):  # noqa: C901 - one branch per limit kind, as in the table
    """(rule id, message[, severity]) for each way `node` breaks `limit`."""
    op, v = node.op_type, r.version
    if isinstance(limit, table.ConstInput):
        if limit.index < len(node.input) and node.input[limit.index]:
            when = origin(index, node.input[limit.index])
            if when == RUNTIME:
                yield ("TRT-34", f"{limit.name} (input {limit.index}) of {op} is computed at run time; TensorRT {v} "
                                 "needs it when the engine is built: make it an initializer")
            elif when == FROM_SHAPES:
                yield ("TRT-34", f"{limit.name} (input {limit.index}) of {op} comes from tensor shapes; TensorRT {v} "
                                 "needs it when the engine is built: fine only if those shapes are static", "warning")
    elif isinstance(limit, table.ConstFalse):
        if limit.index < len(node.input) and node.input[limit.index]:
            value = _const_value(index, node.input[limit.index])
            if value is None:
                yield ("TRT-34", f"{limit.name} of {op} is not a constant; TensorRT {v} needs a constant false")
            elif np.any(value):
                yield ("TRT-35", f"{limit.name} of {op} is true; TensorRT {v} runs inference only (false)")
    elif isinstance(limit, table.ConstBelow):
        if limit.index < len(node.input) and node.input[limit.index]:
            value = _const_value(index, node.input[limit.index])
            if value is not None and value.size and np.max(value) >= limit.limit:
                yield ("TRT-35", f"{limit.name} of {op} is {int(np.max(value))}; TensorRT {v} needs it below "
                                 f"{limit.limit}")
    elif isinstance(limit, table.AttrIn):
        value = attr(node, limit.name, limit.default)
        value = value.decode() if isinstance(value, bytes) else value
        if value not in limit.allowed:
            allowed = ", ".join(str(a) for a in limit.allowed)
            yield ("TRT-35", f"{op} {limit.name}={value!r}: TensorRT {v} takes {allowed}")
    elif isinstance(limit, table.AttrOnes):
        value = attr(node, limit.name)
        if value is not None and any(int(x) != 1 for x in value):
            yield ("TRT-35", f"{op} {limit.name}={list(value)}: TensorRT {v} takes none but ones")
    elif isinstance(limit, table.AttrAbsent):
        for name in limit.names:
            if attr(node, name) is not None:
                yield ("TRT-35", f"{op} with attribute {name}: TensorRT {v} does not import it")
    elif isinstance(limit, table.SameDirections):
        acts = [a.decode().lower() if isinstance(a, bytes) else str(a).lower() for a in attr(node, "activations", [])]
        direction = attr(node, "direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        half = len(acts) // 2
        if direction == "bidirectional" and acts and acts[:half] != acts[half:]:
            yield ("TRT-35", f"bidirectional {op} with activations {acts[:half]} forward and {acts[half:]} backward; "
                             f"TensorRT {v} needs the same set for both directions")
    elif isinstance(limit, table.SymmetricPads):
        pads = list(attr(node, "pads", []) or [])
        if pads and pads[:len(pads) // 2] != pads[len(pads) // 2:]:
            yield ("TRT-35", f"{op} pads={pads}: TensorRT {v} needs the same padding at both ends of each axis")
    elif isinstance(limit, table.IotaAxes):
        axes = attr(node, "axes")
        shape = _shape(facts, node, 0)
        if axes is not None and len(node.input) > 2 and node.input[2]:
            rank = len(shape) if shape is not None else len(axes)
            if [int(a) % rank for a in axes] != list(range(rank)):
                yield ("TRT-35", f"{op} axes={list(axes)} with scales: TensorRT {v} needs every axis in order "
                                 f"(0..{rank - 1})")
    elif isinstance(limit, table.PlainEinsum):
        equation = attr(node, "equation", b"")
        equation = equation.decode() if isinstance(equation, bytes) else equation
        terms = equation.split("->")[0].replace(" ", "").split(",")
        if "..." in equation:
            yield ("TRT-35", f"{op} {equation!r} uses an ellipsis; TensorRT {v} does not import it")
        elif any(len(set(t)) != len(t) for t in terms):
            yield ("TRT-35", f"{op} {equation!r} takes a diagonal (an index repeated in one operand); TensorRT {v} "
                             "does not import it")
    elif isinstance(limit, table.KernelRank):
        kernel = attr(node, "kernel_shape")
        if kernel is not None and len(kernel) not in limit.ranks:
            yield ("TRT-36", f"{op} over {len(kernel)} spatial dims; TensorRT {v} pools over "
                             f"{', '.join(map(str, limit.ranks))}")
    elif isinstance(limit, table.InputRank):
        shape = _shape(facts, node, limit.index)
        if shape is not None and len(shape) not in limit.ranks:
            yield ("TRT-36", f"{limit.name} of {op} has rank {len(shape)}; TensorRT {v} needs rank "
                             f"{' or '.join(map(str, limit.ranks))}")
    elif isinstance(limit, table.StaticDims):
        shape = _shape(facts, node, limit.index)
        if shape is not None and shape:
            if limit.axis_attr:
                axis = int(attr(node, limit.axis_attr, limit.axis_default)) % len(shape)
                if shape[axis] is None:
                    yield ("TRT-36", f"{op}: dim {axis} of {limit.name} is dynamic; TensorRT {v} needs its size when "
                                     "the engine is built")
            elif any(d is None for d in shape):
                yield ("TRT-36", f"{op}: {limit.name} has dynamic dims; TensorRT {v} needs static ones")
    elif isinstance(limit, table.NoInput):
        if limit.index < len(node.input) and node.input[limit.index]:
            yield ("TRT-37", f"{op} with input {limit.name}: TensorRT {v} does not import it")
    elif isinstance(limit, table.UnusedOutput):
        if limit.index < len(node.output) and node.output[limit.index]:
            out = node.output[limit.index]
            if index.consumers.get(out) or out in index.graph_outputs:
                yield ("TRT-37", f"output {limit.name} of {op} is used; TensorRT {v} does not produce it")
    elif isinstance(limit, table.DistinctBranchOutputs):
        branches = {a.name: [o.name for o in a.g.output] for a in node.attribute if a.HasField("g")}
        shared = set(branches.get("then_branch", [])) & set(branches.get("else_branch", []))
        if shared:
            yield ("TRT-37", f"both branches of {op} output {sorted(shared)[0]!r}; TensorRT {v} needs distinct "
                             "names")
    elif isinstance(limit, table.SeedIgnored):
        if attr(node, "seed") is not None:
            yield ("TRT-39", f"{op} seed is ignored by TensorRT {v}: the engine draws other numbers", "info")


def _limit_rule(rule_id: str, severity: str, summary: str):
    @rule(rule_id, targets=("tensorrt",), severity=severity, summary=summary)
    def check(index):
        for node, message, severity_override in _limit_findings(index)[rule_id]:
            yield (node, message) if severity_override is None else (node, message, severity_override)

    return check


_limit_rule("TRT-34", "error", "inputs needed at build time are constants (Slice/Squeeze axes, CumSum axis ...)")
_limit_rule("TRT-35", "error", "attribute and constant values the importer takes (Resize modes, TopK K ...)")
_limit_rule("TRT-36", "error", "ranks and static dims the importer needs (pooling 1-3-D, GridSample 4-D ...)")
_limit_rule("TRT-37", "error", "optional inputs and outputs the importer leaves out (MaxPool Indices ...)")
_limit_rule("TRT-39", "info", "what TensorRT parses with a caveat (ignored seeds, data-dependent shapes)")
