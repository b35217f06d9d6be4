"""Constants: Constant nodes become initializers, nodes that read only constants are evaluated once
with ONNX Runtime (the kernels the model will run with, so the values are the ones it computed),
and initializers with the same bytes are merged. A result that repeats one value (dummy weights,
zero buffers) stays a ConstantOfShape past `splat_limit_kb`: a node of a few bytes, not a tensor
of megabytes in the file (onnxslim writes them out: 4 KB model files grow to 349 MB)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from onnxcomp.errors import first_line
from onnxcomp.graph.edit import replace_uses
from onnxcomp.graph.op_facts import BIASED_OPS, WEIGHT_INPUTS
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
    return facts.dtype(x) in _NARROW_INTS and facts.shape(x) is not None and _elements(x, facts) > _QUANTIZED_ELEMENTS


def _elements(t, facts) -> int:
    """Elements of `t`, a symbolic dim counted as 1."""
    return int(np.prod([d if isinstance(d, int) else 1 for d in facts.shape(t)], dtype=np.int64))


def _dequantized_growth(node, facts) -> int:
    """Bytes a folded dequantization adds: the float result minus the integer weights it replaces."""
    x = node.inputs[0]
    elements = _elements(x, facts)
    bits = 4 if facts.dtype(x) in (21, 22) else 8
    return elements * _ITEMSIZE[int(node.attrs["to"])] - elements * bits // 8


def splat_bytes(node) -> int:
    """Bytes a ConstantOfShape with a constant shape would fill (0 for any other node)."""
    import onnx_graphsurgeon as gs

    if node.op != "ConstantOfShape" or not node.inputs or not isinstance(node.inputs[0], gs.Constant):
        return 0
    dims = np.asarray(node.inputs[0].values).reshape(-1)
    value = node.attrs.get("value")
    itemsize = np.dtype(value.dtype).itemsize if isinstance(value, gs.Constant) else 4
    return int(np.prod(dims, dtype=np.int64)) * itemsize if dims.size and np.all(dims >= 0) else 0


# fold-bn scales the weight and bias of these per output channel when a BatchNormalization follows.
_BN_FOLDABLE = frozenset({"Conv", "ConvTranspose", "Gemm"})


def _rescaled_per_channel(t) -> bool:
    """Whether `t` is the weight or bias of a Conv/ConvTranspose/Gemm whose one reader is a
    BatchNormalization: fold-bn needs it as an initializer, and scales it per channel (then it
    is no splat: its bytes are the folded layer's, as in any model with real weights)."""
    for reader in t.outputs:
        if reader.op in _BN_FOLDABLE and any(x is t for x in reader.inputs[1:3]) and reader.outputs:
            readers = reader.outputs[0].outputs
            if len(readers) == 1 and readers[0].op == "BatchNormalization":
                return True
    return False


def _is_parameter(t) -> bool:
    """Whether `t` is read as the weight or bias of a Conv/ConvTranspose/Gemm/MatMul: a parameter,
    which pruning, quantization and sparsification rewrite only as an initializer."""
    for reader in t.outputs:
        slots = set(WEIGHT_INPUTS.get(reader.op, ())) | ({2} if reader.op in BIASED_OPS else set())
        if any(i in slots for i, x in enumerate(reader.inputs) if x is t):
            return True
    return False


def _wanted_as_initializer(t, limits: "FoldLimits") -> bool:
    return _rescaled_per_channel(t) or (limits.weights and _is_parameter(t))


# Ops that give a splat back as a splat (the same value, moved or cast): folded together with it,
# the result is again one ConstantOfShape (Reshape(ConstantOfShape(s), t) -> ConstantOfShape(t)).
_KEEP_SPLATS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Transpose", "Cast", "Identity"})


def _only_moved(t) -> bool:
    return bool(t.outputs) and all(r.op in _KEEP_SPLATS and r.inputs and r.inputs[0] is t for r in t.outputs)


def _candidates(graph, limits: "FoldLimits", facts, report: PassReport) -> list:
    outputs = {id(t) for t in graph.outputs}
    constant: set[int] = set()
    fold = []
    for node in graph.nodes:
        if not _foldable(node, constant) or any(id(t) in outputs for t in node.outputs):
            continue
        wanted = _wanted_as_initializer(node.outputs[0], limits) if node.outputs else False
        if splat_bytes(node) > limits.splat and not wanted and not _only_moved(node.outputs[0]):
            continue  # one value repeated: the node is smaller than its tensor (stats: splats_kept_compact)
        if not limits.dequantization and _dequantizes(node, facts):
            report.skip(node.name or node.op, "Cast of 8-bit integer weights to float (a dequantization): "
                                             "kept, so the weights stay quantized (fold_dequantization=false)")
            continue
        odd = next((t for t in node.outputs if facts.dtype(t) is not None and facts.dtype(t) not in _NUMPY_TYPES), None)
        if odd is not None:
            report.skip(node.name or node.op, f"constant {node.op} result {odd.name!r} has a type numpy does not "
                                             "hold (bfloat16, float8, int4...); left to run")
            continue
        too_big = next((t for t in node.outputs if _estimated_bytes(t, facts) > _size_limit(t, limits)), None)
        if too_big is not None:
            report.skip(node.name or node.op, f"constant {node.op} result {too_big.name!r} would exceed "
                                             "the fold size limit; left to run")
            continue
        fold.append(node)
        constant.update(id(t) for t in node.outputs if t.name)
    return fold


def _read_outside(t, members: set[int]) -> bool:
    return any(id(c) not in members for c in t.outputs)


def fold_constant_nodes(graph, limits: FoldLimits, facts, report: PassReport, names) -> int:
    """Evaluate every node whose inputs are all constant; returns how many nodes were folded.
    Results larger than the size limit, graph outputs and Q/DQ nodes stay as they are; a result
    that repeats one value and is larger than the splat limit becomes a ConstantOfShape."""
    fold = _candidates(graph, limits, facts, report)
    for _ in range(3):  # a result over the limit keeps its node, whose inputs must then be computed
        if not fold:
            return 0
        values, failed = _evaluate(fold, graph, report)
        kept = [n for n in fold if id(n) not in failed]
        members = {id(n) for n in kept}
        needed = [t for n in kept for t in n.outputs if t.name and _read_outside(t, members)]
        big = {id(t.inputs[0]) for t in needed
               if id(t) in values and values[id(t)].nbytes > _size_limit(t, limits)}
        if not big and all(id(t) in values for t in needed):
            break
        for n in kept:
            if id(n) in big:
                report.skip(n.name or n.op, f"constant {n.op} result exceeds the fold size limit; left to run")
        fold = [n for n in kept if id(n) not in big]
    else:
        return 0
    for node in kept:
        if _dequantizes(node, facts):
            report.count("dequantizations_folded")
            report.count("dequantized_bytes_added", _dequantized_growth(node, facts))
        node.outputs.clear()
    for t in needed:
        value = values[id(t)]
        if value.nbytes > limits.splat and _is_splat(value) and not _wanted_as_initializer(t, limits):
            graph.nodes.append(_constant_of_shape(t, value, names))
        else:
            t.to_constant(value)
    report.count("constant_nodes_folded", len(kept))
    return len(kept)


@dataclass(frozen=True)
class FoldLimits:
    size: int                    # bytes: larger results stay computed
    splat: int                   # bytes: larger one-value results become a ConstantOfShape
    dequantization: bool = True  # fold Casts of 8-bit weights to float too
    weights: bool = True          # a constant weight or bias becomes an initializer whatever its size


def _size_limit(t, limits: FoldLimits) -> int:
    """The fold size limit, except for a weight (when asked): up to what one model file can hold."""
    return _MAX_FOLD_INPUT_BYTES if limits.weights and _is_parameter(t) else limits.size


def _is_splat(value: np.ndarray) -> bool:
    """Every element the same bytes (so -0.0 is not 0.0, and NaNs of one payload match)."""
    if value.size < 2 or value.dtype.kind not in "fiub":
        return False
    rows = np.ascontiguousarray(value).reshape(-1).view(np.uint8).reshape(value.size, -1)
    return bool(np.all(rows == rows[0]))


def _constant_of_shape(t, value: np.ndarray, names):
    """ConstantOfShape(shape of value) writing `t`: the few bytes of one value, not all of them."""
    import onnx_graphsurgeon as gs

    shape = gs.Constant(names(f"{t.name}_shape"), np.array(value.shape, dtype=np.int64))
    fill = gs.Constant(names(f"{t.name}_value"), value.reshape(-1)[:1].copy())
    return gs.Node("ConstantOfShape", name=names(f"{t.name}_fill"), attrs={"value": fill},
                   inputs=[shape], outputs=[t])


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

    from onnxcomp.graph.weights import in_store

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
                if in_store(proto):  # a weight kept on disk: the fold model carries its values
                    proto = onnx.numpy_helper.from_array(np.asarray(t.values), t.name)
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
    """Initializers with the same dtype, shape and bytes -> one; returns how many were merged.
    Weights of two different layers are merged too (valid, and their bytes saved once, as onnxslim
    does): a pass that rewrites a weight for one reader must write it a copy of its own (fold-bn does)."""
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
