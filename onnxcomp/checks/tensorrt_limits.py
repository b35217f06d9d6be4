"""The limits each TensorRT importer puts on a node (onnxcomp.checks.tensorrt_table's ConstInput,
AttrIn, KernelRank ... per operator and release), as rules TRT-34..37 and the TRT-39 notes.

Each kind of limit is one branch of check_limit; shapes and value origins come from
onnxcomp.checks.value_facts, so a limit on a shape nobody can infer is skipped, not guessed.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.checks import tensorrt_table as table
from onnxcomp.checks.tensorrt_rules import release_of
from onnxcomp.checks.value_facts import FROM_SHAPES, RUNTIME, origin, value_facts
from onnxcomp.passes.qdq.rule_facts import attr, node_id
from onnxcomp.pipeline.rules import rule


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
            for rule_id, message, *severity in check_limit(index, facts, r, node, limit):
                found[rule_id].append((node_id(node), message, severity[0] if severity else None))
        if node.op_type in r.deferred:
            found["TRT-39"].append((node_id(node), f"{node.op_type} has a data-dependent output shape: TensorRT "
                                    f"{r.version} parses it, but supportsModel (Polygraphy's capability report, ORT's "
                                    "TensorRT provider) leaves it to another runtime", "info"))
    index.cache["trt_limit_findings"] = found
    return found


def check_limit(index, facts, r, node, limit):
    """(rule id, message[, severity]) for each way `node` breaks `limit`: one branch per kind of limit."""
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
