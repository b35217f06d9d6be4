"""What cleanup knows about every tensor's shape and dtype: ONNX shape inference, then ONNX Runtime's
symbolic shape inference where the first gives up.

Facts are kept beside the graph, never written into it: the model's own value_info and its interface
stay as they were. A dim is an int (static), a str (a symbol: equal names are equal sizes) or None
(unknown: equal to nothing). ONNX's inference is sound. The symbolic one (auto_merge) can *assume*
that two dims are equal where it sees them broadcast, which is not a fact; so its results are used
only where they add to the first's, are dropped when it assumed anything about a graph input or
merged a dim with a number, and the symbols it merged count as unknown.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from onnxcomp.errors import first_line

# Initializers larger than this reach shape inference as typed graph inputs (no data copied).
_KEEP_BYTES = 4096


@dataclass
class ShapeFacts:
    shapes: dict[str, tuple] = field(default_factory=dict)
    dtypes: dict[str, int] = field(default_factory=dict)   # ONNX element types
    notes: list[str] = field(default_factory=list)         # why a source of facts was not used

    def shape(self, tensor) -> tuple | None:
        """The tensor's shape: its values' for constants, else inferred (never the model's own
        value_info, which exporters sometimes get wrong)."""
        import onnx_graphsurgeon as gs

        if isinstance(tensor, gs.Constant):
            return tuple(int(d) for d in tensor.shape)
        return self.shapes.get(tensor.name)

    def rank(self, tensor) -> int | None:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def dtype(self, tensor) -> int | None:
        """ONNX element type of `tensor` (its values' for constants, else inferred), or None."""
        import onnx_graphsurgeon as gs
        from onnx_graphsurgeon.exporters.onnx_exporter import dtype_to_onnx

        if not isinstance(tensor, gs.Constant):
            return self.dtypes.get(tensor.name)
        try:
            return int(dtype_to_onnx(tensor.export_dtype))
        except Exception:  # graphsurgeon leaves some types as ONNX enums
            return None

    def same_dims(self, a: tuple | None, b: tuple | None) -> bool:
        """Whether two shapes are provably equal: same rank, every dim an equal int or symbol."""
        if a is None or b is None or len(a) != len(b):
            return False
        return all(x == y and x is not None for x, y in zip(a, b))


def _dims(value: onnx.ValueInfoProto) -> tuple | None:
    t = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without value_info and with its large initializers as typed graph inputs."""
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    g = out.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    for value in model.graph.output:  # declared output shapes are the exporter's claim: infer them
        g.output.add().CopyFrom(value)
        if g.output[-1].type.HasField("tensor_type"):
            g.output[-1].type.tensor_type.ClearField("shape")
    declared = {v.name for v in model.graph.input}
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL or init.ByteSize() > _KEEP_BYTES:
            if init.name not in declared:
                g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            g.initializer.add().CopyFrom(init)
    return out


def _collect(model: onnx.ModelProto) -> tuple[dict, dict]:
    shapes, dtypes = {}, {}
    for value in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input):
        if not value.type.HasField("tensor_type"):
            continue
        if value.type.tensor_type.elem_type:
            dtypes[value.name] = value.type.tensor_type.elem_type
        dims = _dims(value)
        if dims is not None:
            shapes[value.name] = dims
    return shapes, dtypes


# CPU seconds the symbolic inference may take: it is pure Python and sympy, seconds on some
# detectors (Resize with float scales); past this, what it inferred so far is used.
_SYMBOLIC_SECONDS = 5.0


def _limit_time(inference, seconds: float) -> None:
    """Stop `inference` between two nodes once `seconds` of CPU time have passed."""
    import time

    deadline = time.process_time() + seconds
    per_node = inference._onnx_infer_single_node

    def checked(node):
        if time.process_time() > deadline:
            raise TimeoutError(f"over its {seconds:.0f} s budget")
        return per_node(node)

    inference._onnx_infer_single_node = checked


@functools.lru_cache(maxsize=1)
def _symbolic_module():
    """onnxruntime/tools/symbolic_shape_infer.py, loaded from its file: importing it by name runs
    onnxruntime.tools/__init__.py, which imports torch when torch is installed (seconds, and torch
    has no business here). The module itself needs only numpy, onnx and sympy."""
    import sys

    name = "onnxruntime.tools.symbolic_shape_infer"
    if name in sys.modules:
        return sys.modules[name]
    import onnxruntime

    path = Path(onnxruntime.__file__).parent / "tools" / "symbolic_shape_infer.py"
    spec = importlib.util.spec_from_file_location("onnxcomp_ort_symbolic_shape_infer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _symbolic(model: onnx.ModelProto):
    """ONNX Runtime's symbolic shape inference: (model, merges, error). Run step by step so that a
    failure part-way still yields what was inferred before it (the public infer_shapes raises, and
    writes a file into the working folder first)."""
    module = _symbolic_module()
    SymbolicShapeInference = module.SymbolicShapeInference
    getattr(module, "logger", logging.getLogger(module.__name__)).setLevel(logging.ERROR)
    inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
    steps = ("_preprocess", "_infer_impl", "_onnx_infer_single_node", "suggested_merge_")
    if not all(hasattr(inference, s) for s in steps):
        with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True), {}, None
    error = None
    inference._preprocess(model)
    _limit_time(inference, _SYMBOLIC_SECONDS)
    try:
        with warnings.catch_warnings():  # its numpy/sympy warnings on odd values are not the user's
            warnings.simplefilter("ignore")
            while inference.run_:
                inference._infer_impl()
            inference._update_output_from_vi()
        out = inference.out_mp_
    except Exception as exc:
        error = f"{type(exc).__name__}: {first_line(exc, 'no message')}"
        out = onnx.ModelProto()
        out.graph.input.extend(model.graph.input)
        out.graph.value_info.extend(getattr(inference, "known_vi_", {}).values())
    return out, dict(inference.suggested_merge_), error


# Nodes whose tensors' shapes the rules read: where ONNX inference left a gap among these, the
# symbolic inference is worth its time (it is pure Python: seconds on some detectors).
_SHAPE_OPS = frozenset({"Shape", "Size", "Reshape", "Expand", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Concat"})


def _has_gaps(model: onnx.ModelProto, facts: ShapeFacts) -> bool:
    """Whether a shape the rules read has a dim that is neither a number nor a graph input's symbol
    (ONNX names the dims it cannot infer unk__N: sound, but each one unknown)."""
    named = {d.dim_param for v in model.graph.input for d in v.type.tensor_type.shape.dim if d.dim_param}
    for node in model.graph.node:
        if node.op_type in _SHAPE_OPS:
            for name in list(node.input[:1]) + list(node.output[:1]):
                dims = facts.shapes.get(name)
                if name and (dims is None or any(d is None or isinstance(d, str) and d not in named for d in dims)):
                    return True
    return False


def infer_facts(model: onnx.ModelProto, previous: ShapeFacts | None = None, symbolic: bool = True) -> ShapeFacts:
    """Shapes and dtypes of the model's values; a failing inference leaves a note, never raises.
    `previous` facts (of an earlier version of the same graph) still hold for the names left."""
    facts = ShapeFacts()
    skeleton = _skeleton(model)
    try:
        static = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception as exc:
        facts.notes.append(f"ONNX shape inference failed ({first_line(exc, type(exc).__name__)})")
        static = skeleton
    facts.shapes, facts.dtypes = _collect(static)
    if previous is not None:
        for name, dims in previous.shapes.items():
            facts.shapes[name] = _merge(facts.shapes.get(name), dims)
        for name, dtype in previous.dtypes.items():
            facts.dtypes.setdefault(name, dtype)
    if symbolic and _has_gaps(static, facts):
        _add_symbolic(static, facts)
    return facts


def _add_symbolic(static: onnx.ModelProto, facts: ShapeFacts) -> None:
    try:
        inferred, merges, error = _symbolic(static)
    except Exception as exc:
        facts.notes.append(f"symbolic shape inference failed ({type(exc).__name__}: "
                           f"{first_line(exc, 'no message')}); static shapes only")
        return
    if inferred is None:
        facts.notes.append("symbolic shape inference refused the model (opset); static shapes only")
        return
    if error:
        facts.notes.append(f"symbolic shape inference stopped part-way ({error}); what it inferred before is used")
    reason = _assumption(static, inferred, merges)
    if reason:
        facts.notes.append(f"symbolic shape inference {reason}; static shapes only")
        return
    merged = set(merges) | {v for v in merges.values() if isinstance(v, str)}
    shapes, dtypes = _collect(inferred)
    for name, dims in shapes.items():
        # A symbol the inference merged by assumption is not a fact: unknown.
        dims = tuple(None if isinstance(d, str) and d in merged else d for d in dims)
        facts.shapes[name] = _merge(facts.shapes.get(name), dims)
    for name, dtype in dtypes.items():
        facts.dtypes.setdefault(name, dtype)


def _assumption(before: onnx.ModelProto, after: onnx.ModelProto, merges: dict) -> str | None:
    """Why the symbolic result rests on an assumption, or None."""
    for a, b in zip(before.graph.input, after.graph.input):
        if any(not isinstance(x, int) and isinstance(y, int) for x, y in zip(_dims(a) or (), _dims(b) or ())):
            return f"assumed a size for graph input {a.name!r} ({_dims(a)} -> {_dims(b)})"
    literal = sorted(k for k, v in merges.items() if not isinstance(v, str))
    if literal:
        return f"assumed dim {literal[0]!r} == {merges[literal[0]]}"
    return None


def _merge(known: tuple | None, other: tuple) -> tuple:
    """Per dim: a number from either, else a symbol from `known`, else one from `other`."""
    if known is None or len(known) != len(other):
        return other if known is None else known
    return tuple(s if isinstance(s, int) else y if isinstance(y, int) else s if s is not None else y
                 for s, y in zip(known, other))
