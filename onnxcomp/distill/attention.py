"""Which attention distributions a teacher and its student share: found by graph, not by model names.

A transformer's attention distributions are the outputs of its Softmax nodes over the last axis
([B, H, T, T]: each query row a distribution over the keys). Compression keeps node and tensor names,
so a tensor that both graphs compute by Softmax under one name is the same layer's attention; whether
the shapes agree (a student with fewer heads has other maps) is checked on a probe batch (api.py).
No torch import: this reads ONNX graphs only.
"""

from __future__ import annotations

import onnx


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def last_axis_softmax_outputs(model: onnx.ModelProto) -> list[str]:
    """Output names of the Softmax nodes over the last axis, in graph order (before opset 13 the default axis
    is 1 over a flattened 2-D view: only an explicit axis -1 counts there)."""
    names = []
    for node in model.graph.node:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if axis == -1 or (axis is None and _opset(model) >= 13):
            names.append(node.output[0])
    return names


def shared_softmax_outputs(teacher: onnx.ModelProto, student: onnx.ModelProto) -> list[str]:
    """Softmax outputs (last axis) both graphs compute under the same name, in the teacher's order."""
    in_student = set(last_axis_softmax_outputs(student))
    return [name for name in last_axis_softmax_outputs(teacher) if name in in_student]


def value_inputs(model: onnx.ModelProto, softmax_outputs: list[str]) -> dict[str, str]:
    """For each Softmax output, the tensor it weighs (the second input of the MatMul reading it: V [B, H, T, d]);
    outputs no MatMul reads first are left out."""
    wanted, found = set(softmax_outputs), {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[0] in wanted and node.input[0] not in found:
            found[node.input[0]] = node.input[1]
    return {name: found[name] for name in softmax_outputs if name in found}


def shared_values(teacher: onnx.ModelProto, student: onnx.ModelProto, softmax_outputs: list[str]) -> list[str]:
    """The value tensors the given Softmax outputs weigh in both graphs, where both name the same tensor."""
    t, s = value_inputs(teacher, softmax_outputs), value_inputs(student, softmax_outputs)
    return [t[name] for name in softmax_outputs if name in t and t[name] == s.get(name)]
