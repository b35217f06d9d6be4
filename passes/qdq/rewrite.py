"""Turn a QdqPlacement into Q/DQ nodes: one Q->DQ pair per activation, INT8 weights behind a DQ.

Every lookup is through dicts built once, so the rewrite is O(nodes + edges); the graph is
topologically sorted once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnxcomp.graph.edit import NameGen, node_key, producer, replace_input
from onnxcomp.passes.qdq.numerics import WEIGHT_QMAX, ActivationFormat, quantize_bias, quantize_weight
from onnxcomp.passes.qdq.overrides import quantize_with_scale, weight_axis, weight_scale
from onnxcomp.passes.qdq.placement import QdqPlacement


@dataclass
class RewriteResult:
    activations: int = 0
    weights: list[dict] = field(default_factory=list)
    biases: int = 0
    float_bias: list[str] = field(default_factory=list)


def insert_qdq_pairs(graph, plan: QdqPlacement, params: dict[str, tuple[np.float32, np.integer]],
                     fmt: ActivationFormat, quantize_biases: bool, weight_qmax: int = WEIGHT_QMAX,
                     weight_overrides: dict | None = None) -> RewriteResult:
    """Edit `graph` in place. params: range key -> (scale, zero point) of the activation format (the
    zero point's dtype is the quantized type: an override may pick the other 8-bit type);
    weight_overrides: initializer name -> passes.qdq.overrides.TensorOverride."""
    import onnx_graphsurgeon as gs

    names = NameGen(graph)
    tensors = graph.tensors()
    nodes = {node_key(n): n for n in graph.nodes}
    result = RewriteResult()
    constants: dict[str, tuple] = {}
    new_nodes = []

    def qparams(key: str):
        if key not in constants:
            scale, zp = params[key]
            zp_type = getattr(zp, "dtype", fmt.dtype)
            constants[key] = (gs.Constant(names(f"{key}_scale"), np.asarray(scale, np.float32)),
                              gs.Constant(names(f"{key}_zero_point"), np.asarray(zp, zp_type)))
        return constants[key]

    graph_outputs = {t.name for t in graph.outputs}
    for name, spec in plan.activations.items():
        t = tensors[name]
        scale, zp = qparams(spec.key)
        if name in graph_outputs and spec.consumers is None and t.inputs:
            # A fused producer may feed only its Q: the graph output becomes the DQ output (same name).
            q_in = gs.Variable(names(f"{name}_float"), dtype=t.dtype, shape=t.shape)
            maker = t.inputs[0]
            maker.outputs[maker.outputs.index(t)] = q_in
            dq_out, readers = t, []
        else:
            q_in = t
            dq_out = gs.Variable(names(f"{name}_dequantized"), dtype=np.float32, shape=t.shape)
            readers = [c for c in list(t.outputs) if spec.consumers is None or node_key(c) in spec.consumers]
        q_out = gs.Variable(names(f"{name}_quantized"), dtype=zp.values.dtype, shape=t.shape)
        new_nodes.append(gs.Node("QuantizeLinear", names(f"{name}_QuantizeLinear"), inputs=[q_in, scale, zp],
                                 outputs=[q_out]))
        new_nodes.append(gs.Node("DequantizeLinear", names(f"{name}_DequantizeLinear"), inputs=[q_out, scale, zp],
                                 outputs=[dq_out]))
        for consumer in readers:
            replace_input(consumer, t, dq_out)
        result.activations += 1

    weight_scales: dict[str, np.ndarray] = {}
    cache: dict[tuple, object] = {}
    for spec in plan.weights:
        node = nodes[spec.node]
        w = node.inputs[spec.index]
        override = (weight_overrides or {}).get(w.name)
        axis = spec.axis if override is None else weight_axis(override, np.asarray(w.values), spec.axis)
        key = (w.name, axis)
        if key not in cache:
            fixed = None if override is None else weight_scale(override, np.asarray(w.values), axis, weight_qmax)
            qw = quantize_weight(np.asarray(w.values), axis, weight_qmax) if fixed is None else \
                quantize_with_scale(np.asarray(w.values), fixed, axis, weight_qmax)
            q_const = gs.Constant(names(f"{w.name}_quantized"), qw.values)
            s_const = gs.Constant(names(f"{w.name}_scale"), qw.scale)
            z_const = gs.Constant(names(f"{w.name}_zero_point"), np.zeros(qw.scale.shape, np.int8))
            out = gs.Variable(names(f"{w.name}_dequantized"), dtype=np.float32, shape=list(w.shape))
            attrs = {"axis": axis} if axis is not None else {}
            new_nodes.append(gs.Node("DequantizeLinear", names(f"{w.name}_DequantizeLinear"), attrs=attrs,
                                     inputs=[q_const, s_const, z_const], outputs=[out]))
            cache[key] = (out, qw)
            result.weights.append({"weight": w.name, "node": spec.node, "axis": axis,
                                   "channels": int(qw.scale.size), "sqnr_db": round(qw.sqnr_db, 2)})
        out, qw = cache[key]
        node.inputs[spec.index] = out
        weight_scales[spec.node] = qw.scale

    for spec in plan.biases:
        node = nodes[spec.node]
        bias = node.inputs[spec.index]
        act = plan.activations.get(spec.activation)
        if not quantize_biases or act is None or spec.node not in weight_scales:
            result.float_bias.append(spec.node)
            continue
        x_scale = params[act.key][0]
        w_scale = weight_scales[spec.node]
        values = np.asarray(bias.values, np.float32)
        if w_scale.size not in (1, values.size):
            result.float_bias.append(spec.node)
            continue
        q, scale = quantize_bias(values, x_scale, w_scale)
        q_const = gs.Constant(names(f"{bias.name}_quantized"), q)
        s_const = gs.Constant(names(f"{bias.name}_scale"), scale)
        z_const = gs.Constant(names(f"{bias.name}_zero_point"), np.zeros(scale.shape, np.int32))
        out = gs.Variable(names(f"{bias.name}_dequantized"), dtype=np.float32, shape=list(bias.shape))
        attrs = {"axis": 0} if scale.ndim == 1 else {}
        new_nodes.append(gs.Node("DequantizeLinear", names(f"{bias.name}_DequantizeLinear"), attrs=attrs,
                                 inputs=[q_const, s_const, z_const], outputs=[out]))
        node.inputs[spec.index] = out
        result.biases += 1

    _insert_in_order(graph, new_nodes)
    return result


def _insert_in_order(graph, new_nodes) -> None:
    """Place each new node right after the producer of its data input (O(nodes); no global toposort).

    A Q follows the node that makes the tensor it quantizes, its DQ follows it; weight/bias DQs
    and Qs of graph inputs go first. The original order stays topological, so the result is too.
    Tensors nothing reads any more (the float weights) are not exported by onnx-graphsurgeon.
    """
    after: dict[int, list] = {}
    first = []
    for node in new_nodes:
        maker = producer(node.inputs[0])
        if maker is None:
            first.append(node)
        else:
            after.setdefault(id(maker), []).append(node)
    ordered = list(first)

    def emit(node) -> None:
        ordered.append(node)
        for follower in after.pop(id(node), ()):
            emit(follower)

    for node in first:  # a Q of a graph input is followed by its DQ
        for follower in after.pop(id(node), ()):
            emit(follower)
    for node in list(graph.nodes):
        emit(node)
    graph.nodes = ordered
