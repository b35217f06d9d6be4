"""Weighted nodes inside If/Loop/Scan bodies, counted as channel groups left whole so that no report hides them.

The walk does not enter bodies: a body's channels arrive through its inputs and loop-carried values, which
would have to be followed across the node and sliced there too. Each weighted node in a body whose weight is a
constant (an initializer, a Constant node, an outer-scope constant, or a loop-carried value the body passes on
unchanged from a constant start: PaddleOCR's attention decoder carries its weights that way) counts as one
group: its coupling inside the body is not walked, so coupled producers are not merged.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import node_key
from onnxcomp.graph.edit import producer as producer_of
from onnxcomp.passes.prune.recurrent import GATES

INSIDE = "inside a subgraph"
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1, **{op: 1 for op in GATES}}


def body_producers(graph) -> list[tuple[str, int, str]]:
    """(producer key, output channels, where) for every weighted node with a constant weight in any body."""
    import onnx_graphsurgeon as gs

    found = []
    stack = [(node, name, body) for node in graph.nodes for name, body in node.attrs.items()
             if isinstance(body, gs.Graph)]
    while stack:
        owner, attr, body = stack.pop()
        carried = _carried_constants(owner, body) if owner.op == "Loop" else {}
        for node in body.nodes:
            stack += [(node, name, b) for name, b in node.attrs.items() if isinstance(b, gs.Graph)]
            i = WEIGHT_INPUT.get(node.op)
            if i is None or len(node.inputs) <= i:
                continue
            values = _constant(node.inputs[i], carried)
            channels = None if values is None else _channels(node, values)
            if channels:
                found.append((node_key(node), channels, f"the {attr} of {owner.op} {node_key(owner)}"))
    return found


def _carried_constants(loop, body) -> dict[str, np.ndarray]:
    """Body inputs that hold a constant on every iteration: the Loop starts them from a constant and the
    body returns them unchanged (body input k + 2 is loop input k + 2; body output k + 1 carries it on)."""
    carried = {}
    for k in range(2, min(len(loop.inputs), len(body.inputs))):
        start = _constant(loop.inputs[k], {})
        if start is not None and k - 1 < len(body.outputs) and body.outputs[k - 1].name == body.inputs[k].name:
            carried[body.inputs[k].name] = start
    return carried


def _constant(tensor, carried: dict):
    import onnx_graphsurgeon as gs

    for _ in range(8):
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        if tensor.name in carried:
            return carried[tensor.name]
        node = producer_of(tensor)
        if node is None:
            return None
        if node.op == "Constant":
            value = node.attrs.get("value")
            return np.asarray(value.values) if isinstance(value, gs.Constant) else None
        if node.op not in ("Identity", "Transpose"):
            return None
        tensor = node.inputs[0]
    return None


def _channels(node, w: np.ndarray) -> int | None:
    if node.op in GATES:
        return int(node.attrs.get("hidden_size", 0)) or None
    if node.op == "Conv":
        return int(w.shape[0]) if w.ndim >= 3 else None
    if node.op == "ConvTranspose":
        return int(w.shape[1]) * int(node.attrs.get("group", 1)) if w.ndim >= 3 else None
    if w.ndim != 2:
        return None
    if node.op == "Gemm":
        return int(w.shape[0] if int(node.attrs.get("transB", 0)) else w.shape[1])
    return int(w.shape[1])
