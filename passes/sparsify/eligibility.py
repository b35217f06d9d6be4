"""Which initializers may be sparsified, along which axis, and why the others may not.

Only weights of weighted ops (Conv, ConvTranspose, Gemm, MatMul by default) qualify: the
constant that reaches a weight slot directly or through Transpose/Identity/Cast. Biases,
BatchNorm parameters, shape constants and anything read by other ops are never touched.
Each weight slot that does not qualify gets a reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxcomp.graph.edit import producer as producer_of
from onnxcomp.graph.op_facts import AXIS_KEEPING_OPS, WEIGHT_INPUTS, reduction_axis, through_transpose
from onnxcomp.pipeline.options import NO_EXCLUSION, Exclusion

# Slots that are a weight by role even when not constant (worth a skip reason).
_PRIMARY_SLOT = 1


@dataclass
class WeightUse:
    node: str
    op: str
    axis: int  # reduction axis in the initializer's own coordinates


@dataclass
class Candidate:
    """One initializer that may be sparsified, with every weighted use of it."""

    name: str
    constant: object  # gs.Constant
    uses: list[WeightUse] = field(default_factory=list)
    first_hops: set = field(default_factory=set)  # ids of the nodes that read the constant
    node: object = None  # the first weighted node using it, and the input slot there
    slot: int = -1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.constant.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def axes(self) -> set[int]:
        return {u.axis for u in self.uses}

    @property
    def ops(self) -> str:
        return "/".join(sorted({u.op for u in self.uses}))


@dataclass
class Survey:
    candidates: list[Candidate]
    skipped: list[tuple[str, str]]


def values_of(constant) -> np.ndarray:
    values = constant.values
    return values.load() if hasattr(values, "load") else np.asarray(values)


def find_weights(graph, ops: tuple[str, ...], exclude: Exclusion = NO_EXCLUSION, min_size: int = 0) -> Survey:
    """Walk the weighted ops once (O(nodes)) and classify every constant that reaches a weight slot."""
    import onnx_graphsurgeon as gs

    found: dict[int, Candidate] = {}
    refused: dict[int, tuple[str, str]] = {}
    skipped: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op not in ops or node.op not in WEIGHT_INPUTS:
            continue
        label = node.name or node.outputs[0].name
        for slot in WEIGHT_INPUTS[node.op]:
            if slot >= len(node.inputs):
                continue
            traced = _trace(node, slot)
            if isinstance(traced, str):
                if slot == _PRIMARY_SLOT and not _has_constant_slot(node):
                    skipped.append((label, traced))
                continue
            constant, axis, first_hop = traced
            key = id(constant)
            if key in refused:
                continue
            reason = _refusal(constant, node, axis, exclude, min_size)
            if reason:
                refused[key] = (constant.name, reason)
                found.pop(key, None)
                continue
            cand = found.setdefault(key, Candidate(constant.name, constant, node=node, slot=slot))
            cand.uses.append(WeightUse(label, node.op, axis))
            cand.first_hops.add(id(first_hop))
    for key, cand in list(found.items()):
        others = [n for n in cand.constant.outputs if id(n) not in cand.first_hops]
        if others:
            other = others[0]
            refused[key] = (cand.name, f"also read by {other.op} {other.name or other.outputs[0].name!r}, "
                                       "which is not a weight use")
            del found[key]
    skipped.extend(refused.values())
    assert all(isinstance(c.constant, gs.Constant) for c in found.values())
    return Survey(list(found.values()), skipped)


def _has_constant_slot(node) -> bool:
    """True when another weight slot of this node holds a constant (e.g. MatMul with a constant A)."""
    return any(not isinstance(_trace(node, s), str) for s in WEIGHT_INPUTS[node.op] if s != _PRIMARY_SLOT
               and s < len(node.inputs))


def _trace(node, slot: int):
    """(constant, reduction axis in its coordinates, node reading it) or a reason string."""
    import onnx_graphsurgeon as gs

    tensor, chain, reader = node.inputs[slot], [], node
    while not isinstance(tensor, gs.Constant):
        producer = producer_of(tensor)
        if producer is None:
            return "weight is a graph input, computed at run time"
        if producer.op == "DequantizeLinear":
            return "weight is already quantized (DequantizeLinear); sparsify before insert-qdq"
        if producer.op == "Constant":
            return "weight is held in a Constant node; run cleanup first to make it an initializer"
        if producer.op != "Transpose" and producer.op not in AXIS_KEEPING_OPS:
            return f"weight is computed at run time (by {producer.op})"
        chain.append(producer)
        reader = producer
        tensor = producer.inputs[0]
    rank = len(tensor.shape)  # Transpose, Identity and Cast keep the rank
    axis = reduction_axis(node.op, slot, node.attrs, rank)
    if axis is None:
        return f"input {slot} of {node.op} with rank {rank} has no reduction axis"
    for producer in chain:  # from the consumer back to the constant
        if producer.op == "Transpose":
            axis = through_transpose(axis, producer.attrs.get("perm"), rank)
    return tensor, axis, reader


def _refusal(constant, node, axis: int, exclude: Exclusion, min_size: int) -> str | None:
    excluded = exclude.reason((node.name or node.outputs[0].name, constant.name), (node.op,))
    if excluded:
        return excluded
    dtype = np.dtype(constant.dtype) if not isinstance(constant.dtype, np.dtype) else constant.dtype
    if dtype.kind != "f":
        return f"dtype {dtype} is not floating point"
    size = int(np.prod(constant.shape)) if len(constant.shape) else 1
    if size < min_size:
        return f"{size} elements < min_size {min_size} (too small to matter; usually sensitive)"
    if not 0 <= axis < len(constant.shape):
        return f"reduction axis {axis} outside shape {tuple(constant.shape)}"
    return None


def nm_refusal(cand: Candidate, m: int) -> str | None:
    """Why `cand` cannot take an N:M pattern with group size M along its reduction axis."""
    if len(cand.axes) > 1:
        return f"used with different reduction axes {sorted(cand.axes)} by {cand.ops}"
    axis = next(iter(cand.axes))
    length = cand.shape[axis]
    if length % m:
        what = "input channels per group" if cand.ops in ("Conv", "ConvTranspose") else "reduction length"
        return f"{what} {length} (axis {axis}) is not a multiple of {m}"
    return None
