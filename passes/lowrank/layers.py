"""Which weighted nodes can be factorized, each seen as one matrix Y = X W (W: inputs x outputs).

MatMul with a constant 2-D right operand, Gemm with a constant B (not transA), Conv with a
constant weight and group 1 (W: in_channels * kernel x filters, the patches being the rows
of X). Everything else is left whole with the reason; so is a layer where no rank pays:
r * (m + n) >= m * n already at the smallest rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxcomp.graph.edit import node_key

OPS = ("MatMul", "Gemm", "Conv")


@dataclass
class Layer:
    """One factorizable weight: node, its weight constant, and the matrix view m x n."""

    node: str
    op: str
    weight: str
    m: int
    n: int
    input: str
    attrs: dict = field(default_factory=dict)

    @property
    def params(self) -> int:
        return self.m * self.n

    def cost(self, rank: int) -> int:
        """Parameters (and MACs per output row or pixel) of the two factors at `rank`."""
        return rank * (self.m + self.n)

    def pays(self, rank: int) -> bool:
        return self.cost(rank) < self.params


def weight_source(node):
    """(constant name, values as the node reads them) behind input 1, through Identity/Transpose, or None.

    Every tensor on the way must be read by this chain alone, so the factors can replace it.
    """
    import onnx_graphsurgeon as gs

    t = node.inputs[1] if len(node.inputs) > 1 else None
    perm = None
    while t is not None:
        if len(t.outputs) != 1:
            return None
        if isinstance(t, gs.Constant):
            values = np.asarray(t.values)
            return t.name, values if perm is None else np.transpose(values, perm)
        prod = t.inputs[0] if t.inputs else None
        if prod is None:
            return None
        if prod.op == "Constant" and isinstance(prod.attrs.get("value"), gs.Constant):
            values = np.asarray(prod.attrs["value"].values)
            return t.name, values if perm is None else np.transpose(values, perm)
        if prod.op == "Transpose":
            p = [int(a) for a in prod.attrs.get("perm", [])] or list(reversed(range(len(t.shape or ()) or 2)))
            perm = p if perm is None else [p[a] for a in perm]
        elif prod.op != "Identity":
            return None
        t = prod.inputs[0]
    return None


def as_matrix(op: str, values: np.ndarray, attrs: dict) -> np.ndarray:
    """The weight as W (inputs x outputs) in float64."""
    v = np.asarray(values, dtype=np.float64)
    if op == "Conv":
        return v.reshape(v.shape[0], -1).T
    if op == "Gemm" and int(attrs.get("transB", 0)):
        return v.T
    return v


def from_matrix(op: str, w: np.ndarray, like: np.ndarray, attrs: dict) -> np.ndarray:
    """W (inputs x outputs) back in the layout and dtype the node reads, `like` its weight (as_matrix undone)."""
    if op == "Conv":
        w = w.T.reshape(like.shape)
    elif op == "Gemm" and int(attrs.get("transB", 0)):
        w = w.T
    return np.ascontiguousarray(w, dtype=like.dtype)


def find_layers(graph, smallest_rank: int) -> tuple[list[Layer], list[tuple[str, str]]]:
    """(factorizable layers, [(node, reason)] for weighted nodes left whole)."""
    layers, skipped = [], []
    for node in graph.nodes:
        if node.op not in OPS:
            continue
        key = node_key(node)
        source = weight_source(node)
        reason = _refusal(node, source)
        if reason:
            skipped.append((key, reason))
            continue
        name, values = source
        attrs = dict(node.attrs)
        if node.op == "Conv":
            attrs["kernel"] = tuple(int(k) for k in values.shape[2:])
        m, n = as_matrix(node.op, np.zeros(values.shape, dtype=np.float32), node.attrs).shape
        layer = Layer(key, node.op, name, int(m), int(n), node.inputs[0].name, attrs)
        if not layer.pays(smallest_rank):
            skipped.append((key, (f"would not pay: rank {smallest_rank} * ({layer.m} + {layer.n}) >= "
                                  f"{layer.m} * {layer.n}")))
            continue
        layers.append(layer)
    return layers, skipped


def _no_weight(t) -> str:
    import onnx_graphsurgeon as gs

    for _ in range(8):
        if isinstance(t, gs.Constant) or (t.inputs and t.inputs[0].op == "Constant"):
            return "weight shared with other nodes"
        if len(t.outputs) != 1 and t.inputs and t.inputs[0].op in ("Transpose", "Identity"):
            return "weight shared with other nodes"
        if not t.inputs or t.inputs[0].op not in ("Transpose", "Identity"):
            return "no constant weight (an activation operand)"
        t = t.inputs[0].inputs[0]
    return "no constant weight (an activation operand)"


def _refusal(node, source) -> str | None:
    if len(node.inputs) < 2:
        return "no weight input"
    if source is None:
        return _no_weight(node.inputs[1])
    values = source[1]
    if values.dtype.kind != "f":
        return f"weight of type {values.dtype}"
    if node.op == "MatMul" and values.ndim != 2:
        return f"MatMul weight of rank {values.ndim}"
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return "Gemm with transA"
    if node.op == "Conv":
        if int(node.attrs.get("group", 1)) != 1:
            return "grouped Conv"
        if str(node.attrs.get("auto_pad", "NOTSET")) not in ("NOTSET", "VALID"):
            return "Conv with auto_pad"
    return None
