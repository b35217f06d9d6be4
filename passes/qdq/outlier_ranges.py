"""Which activations keep their full observed range under a clipping calibration method.

A transformer's LayerNorm and GELU outputs carry a few outlier channels that hold real signal (the
"emergent features" of LLM.int8): clipping them at a percentile saves resolution for the many small
values and loses the few that matter. Measured on MiniLM for target tensorrt (symmetric INT8; each
kind's percentile scales swapped into the all-minmax model, mean embedding cosine 0.99751): the
LayerNorm->QKV input 0.99609, the LayerNorm->FFN input 0.99716, the GELU output 0.99673, while the
attention internals gained from percentile (V 0.99761, context 0.99759, Softmax 0.99756). So with the
target's default method, these tensors take minmax and the rest keep percentile.
"""

from __future__ import annotations

from onnxcomp.graph.edit import producer

_OUTLIER_OPS = ("LayerNormalization", "Gelu")
_GELU_MARKERS = ("Erf", "Tanh")


def full_range_tensors(graph, names) -> set[str]:
    """The tensors among `names` that a LayerNorm or GELU produces (possibly through a Mul by a
    constant, as smooth-quant's scale)."""
    tensors = graph.tensors()
    return {name for name in names if name in tensors and _from_outlier_op(tensors[name])}


def _from_outlier_op(tensor, depth: int = 0) -> bool:
    import onnx_graphsurgeon as gs

    node = producer(tensor)
    if node is None:
        return False
    if node.op in _OUTLIER_OPS:
        return True
    if node.op != "Mul":
        return False
    if closes_gelu(node):
        return True
    data = [t for t in node.inputs if not isinstance(t, gs.Constant) and not _is_constant_node(producer(t))]
    return depth < 2 and len(data) == 1 and _from_outlier_op(data[0], depth + 1)


def _is_constant_node(node) -> bool:
    return node is not None and node.op == "Constant"


def closes_gelu(mul) -> bool:
    """The closing Mul of a decomposed GELU, x * 0.5 * (1 + erf(x / sqrt 2)) or its tanh form: within
    three nodes up, an Add of an Erf/Tanh output (so x * tanh(softplus(x)), Mish, is not one)."""
    frontier = [mul]
    for _ in range(3):
        frontier = [p for n in frontier for t in n.inputs if (p := producer(t)) is not None][:8]
        if any(n.op == "Add" and any((p := producer(t)) is not None and p.op in _GELU_MARKERS for t in n.inputs)
               for n in frontier):
            return True
    return False
