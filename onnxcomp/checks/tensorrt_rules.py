"""TensorRT's ONNX parser, applied without TensorRT: opsets, importers, element types and the limits
of each importer, for the release in the table (onnxcomp.checks.tensorrt_table) that the check
names (`--trt-version`, default the newest).

One finding per operator, type or opset the release rejects (errors), or accepts only with a
cast or a clamp (warnings and infos); the limits of single importers (attributes, constant
inputs, ranks) are tensorrt_limits.py's. The Q/DQ-format rules (TRT-01..21) live with the
quantizer in onnxcomp.passes.qdq.rules_tensorrt.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxcomp.checks import tensorrt_table as table
from onnxcomp.checks.value_facts import value_facts
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


def _imported_by_others(op: str, current: table.Release) -> str:
    others = [r.version for r in table.RELEASES.values() if r.ops.get(op) is not None and r is not current]
    return f" (imported by TensorRT {', '.join(others)})" if others else ""


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
                                 f"a plugin or another runtime{_imported_by_others(node.op_type, r)}")
        elif r.ops[node.op_type] is None:
            yield (node_id(top), f"{where}TensorRT {r.version} has no importer for {node.op_type}: it needs a "
                                 f"plugin or another runtime{_imported_by_others(node.op_type, r)}")


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


@rule("TRT-33", targets=("tensorrt",), severity="warning", summary="values TensorRT casts down (INT64, DOUBLE)")
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
