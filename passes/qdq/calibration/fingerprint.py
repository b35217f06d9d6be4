"""graph_fingerprint: a hash of what decides a graph's activations, so statistics meet only their model.

Statistics collected on one machine are applied on another, after files were copied around: a shard
of another model (or of another checkpoint of the same architecture, or of the same model through
another pipeline) would merge and quantize without complaint yet be wrong. The fingerprint covers
everything the calibrated values depend on: the opsets, the graph inputs (names, element types,
shapes), every node (op type, domain, inputs, outputs, attributes, subgraphs included), every
initializer (name, type, shape and contents) and the names of the calibrated tensors. The element
types of those tensors follow from the inputs and the nodes. Names of nodes, doc strings, metadata,
value_info and the graph outputs are left out: they change no value.
"""

from __future__ import annotations

import hashlib

import onnx


def graph_fingerprint(model: onnx.ModelProto, tensors) -> str:
    """Hex digest of `model`'s computation and the calibrated `tensors` (any order)."""
    h = hashlib.blake2b(digest_size=16)

    def put(*parts) -> None:
        for part in parts:
            data = part if isinstance(part, bytes) else str(part).encode()
            h.update(len(data).to_bytes(8, "little"))  # length-prefixed: no two sequences collide
            h.update(data)

    put("opsets", *sorted(f"{o.domain}:{o.version}" for o in model.opset_import))
    graph = model.graph
    for value in graph.input:
        t = value.type.tensor_type
        put("input", value.name, t.elem_type, *(d.dim_param or d.dim_value for d in t.shape.dim))
    for init in graph.initializer:
        put("initializer", init.name, init.data_type, *init.dims)
        put(_contents(init))
    for node in graph.node:
        put("node", node.domain, node.op_type, len(node.input), *node.input, len(node.output), *node.output)
        for attr in node.attribute:
            put(_attribute_bytes(attr))
    put("tensors", *sorted(tensors))
    return h.hexdigest()


def _contents(init: onnx.TensorProto) -> bytes:
    """The tensor's values as stored (external data: where they are, since they are not loaded)."""
    if init.data_location == onnx.TensorProto.EXTERNAL:
        return repr([(e.key, e.value) for e in init.external_data]).encode()
    if init.raw_data:
        return hashlib.blake2b(init.raw_data, digest_size=16).digest()
    copy = onnx.TensorProto()
    copy.CopyFrom(init)
    copy.name = ""
    return hashlib.blake2b(copy.SerializeToString(), digest_size=16).digest()


def _attribute_bytes(attr: onnx.AttributeProto) -> bytes:
    copy = onnx.AttributeProto()
    copy.CopyFrom(attr)
    copy.doc_string = ""
    return copy.SerializeToString()
