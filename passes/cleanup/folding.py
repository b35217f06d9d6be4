"""Constants: Constant nodes become initializers, nodes that read only constants are evaluated once
with ONNX Runtime (the kernels the model will run with, so the values are the ones it computed),
and initializers with the same bytes are merged."""

from __future__ import annotations

import hashlib

import numpy as np

from onnxcomp.errors import first_line
from onnxcomp.graph.edit import replace_uses
from onnxcomp.pipeline.pass_base import PassReport

# Folding these would turn quantized weights back into float ones.
NEVER_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# A different value on every run: evaluating once would freeze one draw.
RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"})
# Protobuf cannot hold more in one model: larger constant subgraphs are left to run.
_MAX_FOLD_INPUT_BYTES = 1 << 30

_CONSTANT_ATTRS = {"value_float": np.float32, "value_floats": np.float32,
                   "value_int": np.int64, "value_ints": np.int64}


def constants_to_initializers(graph, report: PassReport) -> None:
    """Constant node -> initializer of the same name (so every pass and `inspect` sees the weights).
    Constant nodes writing a graph output, sparse or string constants stay nodes."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
    from onnx_graphsurgeon.ir.tensor import LazyValues

    outputs = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        if node.op != "Constant" or node.domain not in (None, "", "ai.onnx") or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if id(out) in outputs or isinstance(out, gs.Constant) or len(node.attrs) != 1:
            continue
        (key, value), = node.attrs.items()
        if key == "value" and isinstance(value, gs.Constant):
            proto = OnnxExporter.export_tensor_proto(value)
            if proto.data_type == 8:  # STRING
                continue
            values = LazyValues(proto)
        elif key in _CONSTANT_ATTRS:
            values = np.asarray(value, dtype=_CONSTANT_ATTRS[key])
        else:
            continue
        node.outputs.clear()
        out.to_constant(values)
        report.count("constant_nodes_to_initializers")


def _foldable(node, constant: set[int]) -> bool:
    import onnx_graphsurgeon as gs

    if node.domain not in (None, "", "ai.onnx") or node.op in NEVER_FOLD | RANDOM_OPS | {"Constant"}:
        return False
    if not node.inputs or not node.outputs:
        return False
    if any(isinstance(v, gs.Graph) or (isinstance(v, list) and any(isinstance(x, gs.Graph) for x in v))
           for v in node.attrs.values()):
        return False
    return all(isinstance(t, gs.Constant) or id(t) in constant or not t.name for t in node.inputs)


# ONNX element types ONNX Runtime hands back as numpy arrays of the same type.
_NUMPY_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15})
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}


def _estimated_bytes(t, facts) -> int:
    dims = facts.shape(t)
    if dims is None or not all(isinstance(d, int) for d in dims):
        return 0
    return int(np.prod(dims, dtype=np.int64)) * _ITEMSIZE.get(facts.dtype(t), 8)


# A Cast of a large 8-bit integer constant to a float type is a dequantization written out by hand
# (int8 embedding tables): folding it would store the weights as floats, four times the bytes.
_NARROW_INTS = frozenset({2, 3, 21, 22})  # UINT8, INT8, UINT4, INT4
_FLOATS = frozenset({1, 10, 11, 16})
_QUANTIZED_ELEMENTS = 1024


def _dequantizes(node, facts) -> bool:
    if node.op != "Cast" or int(node.attrs.get("to", 0)) not in _FLOATS:
        return False
    x = node.inputs[0]
    dims = facts.shape(x)
    return facts.dtype(x) in _NARROW_INTS and dims is not None and \
        int(np.prod([d if isinstance(d, int) else 1 for d in dims], dtype=np.int64)) > _QUANTIZED_ELEMENTS


def _candidates(graph, size_limit: int, facts, report: PassReport) -> list:
    outputs = {id(t) for t in graph.outputs}
    constant: set[int] = set()
    fold = []
    for node in graph.nodes:
        if not _foldable(node, constant) or any(id(t) in outputs for t in node.outputs):
            continue
        if _dequantizes(node, facts):
            report.skip(node.name or node.op, "Cast of 8-bit integer weights to float (a dequantization): "
                                             "kept, so the weights stay quantized")
            continue
        odd = next((t for t in node.outputs if facts.dtype(t) is not None and facts.dtype(t) not in _NUMPY_TYPES), None)
        if odd is not None:
            report.skip(node.name or node.op, f"constant {node.op} result {odd.name!r} has a type numpy does not "
                                             "hold (bfloat16, float8, int4...); left to run")
            continue
        too_big = next((t for t in node.outputs if _estimated_bytes(t, facts) > size_limit), None)
        if too_big is not None:
            report.skip(node.name or node.op, f"constant {node.op} result {too_big.name!r} would exceed "
                                             "the fold size limit; left to run")
            continue
        fold.append(node)
        constant.update(id(t) for t in node.outputs if t.name)
    return fold


def _read_outside(t, members: set[int]) -> bool:
    return any(id(c) not in members for c in t.outputs)


def fold_constant_nodes(graph, size_limit: int, facts, report: PassReport) -> int:
    """Evaluate every node whose inputs are all constant; returns how many nodes were folded.
    Results larger than `size_limit` bytes, graph outputs and Q/DQ nodes stay as they are."""
    fold = _candidates(graph, size_limit, facts, report)
    for _ in range(3):  # a result over the limit keeps its node, whose inputs must then be computed
        if not fold:
            return 0
        values, failed = _evaluate(fold, graph, report)
        kept = [n for n in fold if id(n) not in failed]
        members = {id(n) for n in kept}
        needed = [t for n in kept for t in n.outputs if t.name and _read_outside(t, members)]
        big = {id(t.inputs[0]) for t in needed if id(t) in values and values[id(t)].nbytes > size_limit}
        if not big and all(id(t) in values for t in needed):
            break
        for n in kept:
            if id(n) in big:
                report.skip(n.name or n.op, f"constant {n.op} result exceeds the fold size limit; left to run")
        fold = [n for n in kept if id(n) not in big]
    else:
        return 0
    for node in kept:
        node.outputs.clear()
    for t in needed:
        t.to_constant(values[id(t)])
    report.count("constant_nodes_folded", len(kept))
    return len(kept)


def _evaluate(fold, graph, report: PassReport) -> tuple[dict[int, np.ndarray], set[int]]:
    """(values, ids of nodes that failed): one ONNX Runtime run for the outputs read outside the
    folded nodes, or node by node (every output) when that fails, skipping what ORT cannot run."""
    members = {id(n) for n in fold}
    wanted = [t for n in fold for t in n.outputs if t.name and _read_outside(t, members)]
    if not wanted:  # nothing outside reads them: they are dead, nothing to compute
        return {}, set()
    try:
        return _run(fold, wanted, graph), set()
    except Exception as exc:
        first = f"{type(exc).__name__}: {first_line(exc, 'no message')}"
    values: dict[int, np.ndarray] = {}
    failed: set[int] = set()
    for node in fold:
        if any(t.inputs and id(t.inputs[0]) in failed for t in node.inputs):
            failed.add(id(node))
            continue
        try:
            values.update(_run([node], [t for t in node.outputs if t.name], graph, values))
        except Exception as exc:
            failed.add(id(node))
            report.skip("constant folding", f"{node.op} {node.name!r}: ONNX Runtime cannot evaluate it "
                                            f"({type(exc).__name__}: {first_line(exc, 'no message')}); left as is")
    if not failed:
        report.skip("constant folding", f"one run for all constant nodes failed ({first}); folded node by node")
    return values, failed


def _run(nodes, wanted, graph, known: dict | None = None) -> dict[int, np.ndarray]:
    import onnx
    import onnx_graphsurgeon as gs
    import onnxruntime as ort
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    known = known or {}
    produced = {id(t) for n in nodes for t in n.outputs}
    inits, seen, size = [], set(), 0
    for node in nodes:
        for t in node.inputs:
            if not t.name or id(t) in produced or t.name in seen:
                continue
            seen.add(t.name)
            if isinstance(t, gs.Constant):
                proto = OnnxExporter.export_tensor_proto(t)
            else:
                proto = onnx.numpy_helper.from_array(known[id(t)], t.name)
            size += proto.ByteSize()
            inits.append(proto)
    if size > _MAX_FOLD_INPUT_BYTES:
        raise ValueError("constant inputs too large to evaluate in one model")
    g = onnx.helper.make_graph([OnnxExporter.export_node(n) for n in nodes], "fold", [],
                               [onnx.helper.make_empty_tensor_value_info(t.name) for t in wanted], inits)
    opsets = _opsets(graph)
    model = onnx.helper.make_model(g, opset_imports=opsets)
    model.ir_version = max(8, onnx.helper.find_min_ir_version_for(opsets, ignore_unknown=True))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    results = session.run([t.name for t in wanted], {})
    out = {}
    for t, v in zip(wanted, results):
        v = np.asarray(v)
        if v.dtype == object:
            raise ValueError(f"{t.name!r} is not a numeric tensor")
        out[id(t)] = v
    return out


def _opsets(graph) -> list:
    import onnx

    found = []
    for entry in getattr(graph, "import_domains", None) or []:
        found.append(onnx.helper.make_opsetid(entry.domain, entry.version))
    if not any(o.domain in ("", "ai.onnx") for o in found):
        found.append(onnx.helper.make_opsetid("", int(graph.opset or 17)))
    return found


def _constant_key(t) -> tuple:
    from onnx_graphsurgeon.ir.tensor import LazyValues

    values = t._values
    if isinstance(values, LazyValues) and values.tensor.raw_data:
        data = values.tensor.raw_data
    else:
        data = np.ascontiguousarray(t.values).tobytes()
    try:
        dtype = np.dtype(t.dtype).num  # (str() of a numpy dtype costs more than hashing small data)
    except TypeError:  # bfloat16, float8: graphsurgeon gives an ONNX enum
        dtype = ("onnx", t.dtype)
    return (dtype, tuple(t.shape), hashlib.sha1(data).hexdigest())


def merge_duplicate_constants(graph, report: PassReport) -> int:
    """Initializers with the same dtype, shape and bytes -> one; returns how many were merged."""
    import onnx_graphsurgeon as gs

    output_ids = {id(t) for t in graph.outputs}
    canonical: dict[tuple, object] = {}
    seen: set[int] = set()
    merged = 0
    for node in graph.nodes:
        for t in node.inputs:
            if not isinstance(t, gs.Constant) or id(t) in output_ids or id(t) in seen:
                continue
            key = _constant_key(t)
            keep = canonical.setdefault(key, t)
            if keep is t:
                seen.add(id(t))
                continue
            replace_uses(t, keep)
            merged += 1
            report.count("duplicate_initializers_merged")
    return merged
