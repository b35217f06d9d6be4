"""Common-subexpression elimination: nodes with the same op, the same input tensors and the same
attributes compute the same values, so readers of the later one read the first one instead.

Exporters repeat Shape(x) and its Gathers for every use of a dim; after initializers with equal
bytes are merged, repeated constant expressions share inputs too. One walk in graph order with a
dict keyed by (op, inputs, attributes): linear, and a merge makes its readers' keys match in turn.
Two Conv/Gemm producers each read only by its own (different) BatchNormalization stay apart: fold-bn
folds each BN into its producer, which a shared producer would prevent.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from onnxcomp.graph.edit import replace_uses
from onnxcomp.pipeline.pass_base import PassReport

from .folding import RANDOM_OPS


# fold-bn folds a BatchNormalization into the one of these before it, when the BN is its only reader.
_BN_FOLDABLE = frozenset({"Conv", "ConvTranspose", "Gemm"})


class _Unkeyable(Exception):
    pass


def _freeze(value):
    """A hashable stand-in for an attribute value."""
    import onnx_graphsurgeon as gs

    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, hashlib.sha1(value.tobytes()).hexdigest())
    if isinstance(value, gs.Constant):
        return ("tensor", _freeze(np.asarray(value.values)))
    if isinstance(value, (gs.Graph, gs.Tensor)) or not isinstance(value, (int, float, str, bytes, bool, type(None))):
        raise _Unkeyable
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return value


def _key(node) -> tuple | None:
    if node.op in RANDOM_OPS or not node.outputs:
        return None
    try:
        attrs = tuple(sorted((k, _freeze(v)) for k, v in node.attrs.items()))
    except _Unkeyable:  # subgraphs, attribute references: not compared
        return None
    return (node.op, node.domain, tuple(id(t) if t.name else "" for t in node.inputs), attrs, len(node.outputs))


def _own_bn(node, outputs: set[int]):
    """The BatchNormalization that is the only reader of a Conv/ConvTranspose/Gemm, or None."""
    out = node.outputs[0]
    if node.op not in _BN_FOLDABLE or id(out) in outputs or len(out.outputs) != 1:
        return None
    bn = out.outputs[0]
    return bn if bn.op == "BatchNormalization" and bn.inputs and bn.inputs[0] is out else None


def _blocks_bn_folds(keep, node, outputs: set[int]) -> bool:
    """Whether merging would stop fold-bn: two producers, each read only by its own BN, the BNs
    different. Merged, the one producer would feed two BNs and fold neither (one node more)."""
    a, b = _own_bn(keep, outputs), _own_bn(node, outputs)
    if a is None or b is None:
        return False
    key_a, key_b = _key(a), _key(b)
    return key_a is None or key_b is None or key_a[2][1:] != key_b[2][1:] or key_a[3] != key_b[3]


def dedupe_nodes(graph, report: PassReport) -> int:
    """Merge identical nodes; returns how many were merged. A node writing a graph output is kept
    as the one the others merge into (two graph outputs are never merged: both names stay)."""
    outputs = {id(t) for t in graph.outputs}
    first: dict[tuple, object] = {}
    merged = 0
    for node in graph.nodes:
        key = _key(node)
        if key is None:
            continue
        keep = first.setdefault(key, node)
        if keep is node or _blocks_bn_folds(keep, node, outputs):
            continue
        writes_output = any(id(t) in outputs for t in node.outputs)
        if writes_output:
            if any(id(t) in outputs for t in keep.outputs):
                continue
            first[key], keep, node = node, node, keep  # the graph output's writer stays
        for kept, dup in zip(keep.outputs, node.outputs):
            if dup.name and kept.name:
                replace_uses(dup, kept)
            elif dup.name:  # the kept node omitted an optional output the other wrote
                break
        else:
            merged += 1
            report.count("duplicate_nodes_merged")
    return merged
