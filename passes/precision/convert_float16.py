"""convert-float16: weights and compute in float16 or bfloat16, the graph's interface unchanged (lossy).

What stays float32, and why (each such node is in the report's `skipped` with its reason):

- numerically sensitive ops (keep_sensitive): Softmax, normalizations and reductions (their sums lose
  small terms in float16), Exp/Log/Pow/Sqrt (float16 overflows above 65504);
- index and random sources (Range, Random*, EyeLike, TopK, NonMaxSuppression, RoiAlign), control
  flow, recurrent ops (GRU, LSTM, RNN), ops of other domains, and anything a subgraph reads;
- on the ort target, ops ONNX Runtime's CPU provider has no kernel for at that type (asked of the
  installed runtime: today that is nearly all arithmetic, MatMul and Conv included). Their weights
  are still stored at the low type with a Cast to float32, which ONNX Runtime folds at load: the
  file halves and the compute stays float32. For float16 compute use target tensorrt (what TensorRT
  builds with --fp16); ONNX Runtime CPU then runs the model, slowly, by casting around each op.

Data-movement ops (Reshape, Transpose, Gather, Concat, ...) follow their input: low when it is low.
Casts are inserted on every edge between the two precisions, once per tensor, and at the graph's
edges, so inputs and outputs keep their float32 type and names: the result is a drop-in. float16
constants beyond +-65504 are clamped (counted in the report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.graph.edit import NameGen, node_key
from onnxcomp.passes.precision.common import budget_details, excluded, exclusion, hold_back, refuse_quantized
from onnxcomp.passes.precision.kernels import has_cpu_kernel
from onnxcomp.pipeline.options import (
    Range,
    Target,
    check_ranges,
    exclude_op_option,
    exclude_option,
    max_drop_option,
    target_option,
)
from onnxcomp.pipeline.pass_base import Pass, PassContext, PassReport
from onnxcomp.pipeline.registry import register_pass

Dtype = Literal["float16", "bfloat16"]
FLOAT16_MAX = 65504.0
_ONNX = {"float16": 10, "bfloat16": 16, "float32": 1}  # onnx.TensorProto element types

SENSITIVE = {
    **dict.fromkeys(("Softmax", "LogSoftmax"), "kept float32: softmax (exponentials of large logits, a sum)"),
    **dict.fromkeys(("LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization",
                     "RMSNormalization"), "kept float32: normalization statistics (mean and variance sums)"),
    **dict.fromkeys(("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
                     "ReduceLogSumExp", "ReduceProd", "CumSum"), "kept float32: a reduction (float16 sums lose "
                                                                 "the small terms)"),
    **dict.fromkeys(("Pow", "Sqrt", "Reciprocal", "Exp", "Log"),
                    "kept float32: squares and exponentials overflow float16 above 65504"),
}
FLOAT_ONLY = {
    **dict.fromkeys(("Range", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Bernoulli", "Multinomial"), "kept float32: an index or random source"),
    **dict.fromkeys(("TopK", "NonMaxSuppression", "RoiAlign"), "kept float32: index arithmetic on scores/boxes"),
    **dict.fromkeys(("If", "Loop", "Scan"), "kept float32: control flow"),
    # Their state accumulates rounding over the time steps; and ONNX Runtime 1.32 crashed loading a
    # float16 GRU (the corpus's lac_bigru) rather than casting around it.
    **dict.fromkeys(("GRU", "LSTM", "RNN"), "kept float32: a recurrent op (its state accumulates rounding)"),
}
# Data movement: exact at any type, so they take their input's precision instead of forcing Casts.
FOLLOWERS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Concat", "Split", "Slice",
             "Gather", "GatherElements", "GatherND", "Expand", "Tile", "Pad", "Dropout", "DepthToSpace",
             "SpaceToDepth", "Where", "IsNaN", "IsInf")
# Read any input type and make no float32 output: nothing to convert, no Cast before them.
ANY_INPUT = ("Shape", "Size")
# Inputs that stay float32 by the operator's definition whatever the data type.
FLOAT32_SLOTS = {"Resize": (1, 2), "Upsample": (1,)}
# Constants this small feeding float32 ops stay float32 (no Cast for a scalar).
SMALL = 16


@dataclass(frozen=True)
class ConvertFloat16Options:
    dtype: Dtype = field(default="float16", metadata={"help": "the low-precision type"})
    target: Optional[Target] = target_option()
    keep_sensitive: bool = field(
        default=True, metadata={"help": "keep Softmax, normalizations, reductions and Exp/Log/Pow/Sqrt in float32"})
    exclude: tuple[str, ...] = exclude_option()
    exclude_op: tuple[str, ...] = exclude_op_option()
    max_drop: Optional[float] = max_drop_option()
    sensitivity_samples: int = field(default=256, metadata={"help": "samples used by the max_drop search",
                                                            "range": Range(1)})

    def __post_init__(self):
        check_ranges(self, "convert-float16")


@register_pass
class ConvertFloat16Pass(Pass):
    """float16/bfloat16 weights and compute, sensitive ops and the graph's I/O kept float32 (lossy)."""

    name = "convert-float16"
    exact = False
    Options = ConvertFloat16Options

    def run(self, graph, ctx: PassContext) -> PassReport:
        opts = self.options
        target = opts.target or ctx.target or "ort"
        refuse_quantized(graph, self.name)
        low = next((t for t in graph.tensors().values() if _is_low(getattr(t, "dtype", None))), None)
        if low is not None:
            raise InputError(f"{self.name}: the model already has {np.dtype(low.dtype)} tensors ({low.name!r}); "
                             "convert the float32 model")
        exclude = exclusion(opts, graph, self.name)
        if target == "tensorrt" and opts.dtype == "bfloat16":
            probe = Float16Conversion(opts, target, exclude)
            probe.plan(graph)
            if probe.ort_missing:
                raise InputError(f"{self.name}: bfloat16 compute for TensorRT: ONNX Runtime CPU has no bfloat16 kernel "
                                 f"for {', '.join(sorted(probe.ort_missing))}, so the result could not be run or "
                                 "checked here; give TensorRT the float32 model and build with --bf16, or use "
                                 "target ort (bfloat16 weights)")
        budget = None
        if opts.max_drop is not None:
            units = Float16Conversion(opts, target, exclude).plan(graph)
            budget = hold_back(self.name, graph, lambda g, held: Float16Conversion(opts, target, exclude, held).apply(g),
                               units, ctx, opts.max_drop, opts.sensitivity_samples)
        conversion = Float16Conversion(opts, target, exclude, frozenset(budget.held_back) if budget else frozenset())
        conversion.apply(graph)
        report = PassReport(modified=bool(conversion.low_nodes or conversion.weights))
        for name, reason in conversion.kept:
            report.skip(name, reason)
        report.count("low_nodes", len(conversion.low_nodes))
        report.count("float32_nodes", len(conversion.kept))
        report.count("weights_converted", conversion.weights)
        report.count("casts", conversion.casts)
        if conversion.clamped:
            report.count("clamped_values", conversion.clamped)
        no_kernel = sorted({op for op in conversion.no_kernel_ops})
        notes = []
        if no_kernel:
            notes.append(f"ONNX Runtime CPU has no {opts.dtype} kernel for {', '.join(no_kernel)}: those nodes compute "
                         f"in float32 (weights stored in {opts.dtype}, cast at load); target tensorrt converts them")
        missing = sorted(conversion.ort_missing)
        if target == "tensorrt":
            notes.append(f"for TensorRT (builds with --fp16); ONNX Runtime CPU runs this model by casting around the "
                         f"ops it has no float16 kernel for ({', '.join(missing) or 'none'}): slowly")
        details = {"dtype": opts.dtype, "target": target, "keep_sensitive": opts.keep_sensitive,
                   "low_nodes": conversion.low_nodes, "notes": notes}
        if budget is not None:
            details["budget"] = budget_details(budget, opts.max_drop)
        report.details[self.name] = details
        return report


def _is_low(dtype) -> bool:
    if dtype is None or isinstance(dtype, int):
        return dtype in (_ONNX["float16"], _ONNX["bfloat16"])
    return np.dtype(dtype) == np.float16 or np.dtype(dtype).name == "bfloat16"


def _element_types(graph) -> dict[str, int]:
    """ONNX element type of every value shape inference can type (on a weightless copy)."""
    import onnx

    from onnxcomp.graph.convert import to_model
    from onnxcomp.graph.shapes import skeleton

    model = to_model(graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
    except Exception:
        inferred = model
    values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in values
             if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


class Float16Conversion:
    """One application of the pass: the precision of every node, then the edits."""

    def __init__(self, opts: ConvertFloat16Options, target: str, exclude, held: frozenset = frozenset()):
        self.opts, self.target, self.exclude, self.held = opts, target, exclude, held
        self.np_low = np.float16 if opts.dtype == "float16" else _bfloat16()
        self.low_nodes: list[str] = []
        self.kept: list[tuple[str, str]] = []
        self.no_kernel_ops: set[str] = set()  # kept float32 for want of an ORT CPU kernel (target ort)
        self.ort_missing: set[str] = set()  # computing low without an ORT CPU kernel (target tensorrt)
        self.weights = self.casts = self.clamped = 0

    # ---- deciding ----

    def plan(self, graph) -> list[str]:
        """Decide every node's precision; returns the nodes the conversion changes (max_drop's units)."""
        import onnx_graphsurgeon as gs

        self.gs = gs
        self.types = _element_types(graph)
        self.pinned = _read_in_subgraphs(graph)
        self.low: set[str] = set()  # names of tensors that will hold the low type
        self.state: dict[int, str] = {}  # id(node) -> low | keep | weights | neutral | source
        opset = graph.opset
        for node in graph.nodes:
            kind, reason = self._decide(node, opset)
            self.state[id(node)] = kind
            if kind == "low":
                self.low.update(t.name for t in node.outputs if self._f32(t))
            elif kind in ("keep", "weights"):
                self.kept.append((node_key(node), reason))
        for node in reversed(graph.nodes):  # constants and casts into float become low when every reader is
            if self.state[id(node)] == "source":
                out = node.outputs[0]
                readers = out.outputs
                if readers and out.name not in self.pinned and not any(out is o for o in graph.outputs) and \
                        all(self.state.get(id(r)) == "low" for r in readers):
                    self.state[id(node)] = "low-source"
                    self.low.add(out.name)
        self.low_nodes = [node_key(n) for n in graph.nodes if self.state[id(n)] == "low"]
        return self.low_nodes + [node_key(n) for n in graph.nodes if self.state[id(n)] == "weights"]

    def _f32(self, t) -> bool | None:
        """Whether tensor t is float32 (None: unknown)."""
        if isinstance(t, self.gs.Constant):
            return t.values.dtype == np.float32
        if not t.name:
            return False
        kind = self.types.get(t.name)
        if kind is None and t.dtype is not None:
            return np.dtype(t.dtype) == np.float32 if not isinstance(t.dtype, int) else t.dtype == 1
        return None if kind is None else kind == _ONNX["float32"]

    def _low_input(self, t) -> bool:
        if isinstance(t, self.gs.Constant):
            return t.values.dtype == np.float32 and t.values.size >= SMALL and t.name not in self.pinned
        return t.name in self.low

    def _decide(self, node, opset) -> tuple[str, str]:
        ins = [t for i, t in enumerate(node.inputs) if i not in FLOAT32_SLOTS.get(node.op, ())]
        facts = [self._f32(t) for t in ins + list(node.outputs)]
        if node.op == "Constant" or node.op == "ConstantOfShape" or \
                (node.op == "Cast" and int(node.attrs.get("to", 0)) == _ONNX["float32"]
                 and ins and self._f32(ins[0]) is False):
            return ("source", "") if any(self._f32(t) for t in node.outputs) else ("neutral", "")
        if not any(facts) and None not in facts:
            return "neutral", ""
        if node.op in ANY_INPUT or (node.op == "Cast" and not any(self._f32(t) for t in node.outputs)):
            return "neutral", ""
        reason = excluded(node, self.exclude)
        if reason:
            return "keep", reason
        if node_key(node) in self.held:
            return "keep", "kept float32 by max_drop (most sensitive)"
        if None in facts:
            return "keep", "kept float32: element types unknown (shape inference could not type them)"
        if node.domain not in (None, "", "ai.onnx"):
            return "keep", f"kept float32: op of domain {node.domain}"
        if any(t.name in self.pinned for t in node.outputs):
            return "keep", "kept float32: read inside a subgraph"
        if node.op in FLOAT_ONLY:
            return "keep", FLOAT_ONLY[node.op]
        if self.opts.keep_sensitive and node.op in SENSITIVE:
            return "keep", SENSITIVE[node.op]
        if node.op in FOLLOWERS and not any(self._low_input(t) for t in ins if self._f32(t)):
            return "keep", "float32 input (data movement follows its input)"
        if self.target == "ort" and not has_cpu_kernel(node.op, node.domain, opset, self.opts.dtype):
            self.no_kernel_ops.add(node.op)
            weighty = any(isinstance(t, self.gs.Constant) and self._low_input(t) for t in ins)
            return ("weights" if weighty else "keep"), f"kept float32: ONNX Runtime CPU has no {self.opts.dtype} kernel"
        if not has_cpu_kernel(node.op, node.domain, opset, self.opts.dtype):
            self.ort_missing.add(node.op)
        return "low", ""

    # ---- editing ----

    def apply(self, graph) -> None:
        self.plan(graph)
        self.names = NameGen(graph)
        self.cast_cache: dict[tuple[str, int], object] = {}
        new_nodes = []
        self._convert_constants(graph, new_nodes)
        for node in list(graph.nodes):
            kind = self.state[id(node)]
            if kind == "low":
                for i, t in enumerate(node.inputs):
                    if i in FLOAT32_SLOTS.get(node.op, ()) or not t.name:
                        continue
                    if self._f32(t) and not self._is_low_now(t):
                        node.inputs[i] = self._cast(t, self.opts.dtype, new_nodes)
                for t in node.outputs:
                    if t.name in self.low:
                        t.dtype = self.np_low
                if node.op == "Cast":  # a float32 -> float32 Cast computing low now casts to the low type
                    node.attrs["to"] = _ONNX[self.opts.dtype]
            elif kind == "low-source":
                self._lower_source(node)
            elif kind != "neutral":  # neutral nodes read no float32, or any type (Shape, Cast)
                for i, t in enumerate(node.inputs):
                    if t.name and self._is_low_now(t):
                        node.inputs[i] = self._cast(t, "float32", new_nodes)
        self._keep_outputs_float32(graph, new_nodes)
        graph.nodes.extend(new_nodes)
        graph.cleanup().toposort()

    def _is_low_now(self, t) -> bool:
        if isinstance(t, self.gs.Constant):
            return _is_low(t.values.dtype)
        return t.name in self.low

    def _convert_constants(self, graph, new_nodes: list) -> None:
        """Store at the low type every float32 constant read by a low node, or a large one read by a
        node kept only for want of a kernel (a Cast back to float32 follows)."""
        for t in list(graph.tensors().values()):
            if not isinstance(t, self.gs.Constant) or t.values.dtype != np.float32 or t.name in self.pinned:
                continue
            readers = [(n, i) for n in t.outputs for i, x in enumerate(n.inputs) if x is t]
            wanted = any(self.state.get(id(n)) == "low" and i not in FLOAT32_SLOTS.get(n.op, ()) for n, i in readers)
            wanted = wanted or (t.values.size >= SMALL and any(self.state.get(id(n)) == "weights" for n, _ in readers))
            if not wanted:
                continue
            t.values = self._lowered(np.asarray(t.values))
            self.weights += 1
            for n, i in readers:
                if self.state.get(id(n)) != "low" or i in FLOAT32_SLOTS.get(n.op, ()):
                    n.inputs[i] = self._cast(t, "float32", new_nodes)

    def _lowered(self, values: np.ndarray) -> np.ndarray:
        if self.opts.dtype == "float16":
            over = np.abs(values) > FLOAT16_MAX
            if over.any():
                self.clamped += int(np.count_nonzero(over & np.isfinite(values)))
                values = np.clip(values, -FLOAT16_MAX, FLOAT16_MAX)
        return values.astype(self.np_low)

    def _lower_source(self, node) -> None:
        if node.op == "Cast":
            node.attrs["to"] = _ONNX[self.opts.dtype]
        else:
            value = node.attrs.get("value")
            values = np.zeros(1, np.float32) if value is None else np.asarray(value.values)
            node.attrs["value"] = self.gs.Constant(value.name if value is not None else self.names("value"),
                                                   self._lowered(values))
        node.outputs[0].dtype = self.np_low

    def _cast(self, t, to: str, new_nodes):
        key = (t.name, _ONNX[to])
        if key not in self.cast_cache:
            dtype = np.float32 if to == "float32" else self.np_low
            out = self.gs.Variable(self.names(f"{t.name}_{to}"), dtype=dtype, shape=t.shape)
            cast = self.gs.Node("Cast", self.names(f"{t.name}_to_{to}"), attrs={"to": _ONNX[to]}, inputs=[t],
                                outputs=[out])
            new_nodes.append(cast)
            self.cast_cache[key] = out
            self.casts += 1
        return self.cast_cache[key]

    def _keep_outputs_float32(self, graph, new_nodes) -> None:
        """A graph output computed at the low type: its producer writes a new tensor, a Cast writes the
        output (same name, float32), and readers inside the graph take the low tensor."""
        for out in list(graph.outputs):
            if not self._is_low_now(out) or isinstance(out, self.gs.Constant):
                continue
            inner = self.gs.Variable(self.names(f"{out.name}_{self.opts.dtype}"), dtype=self.np_low, shape=out.shape)
            maker = out.inputs[0]
            maker.outputs[maker.outputs.index(out)] = inner
            for reader in list(out.outputs):
                for i, x in enumerate(reader.inputs):
                    if x is out:
                        reader.inputs[i] = inner
            out.dtype = np.float32
            new_nodes.append(self.gs.Node("Cast", self.names(f"{out.name}_to_float32"), attrs={"to": 1},
                                          inputs=[inner], outputs=[out]))
            self.low.discard(out.name)
            self.low.add(inner.name)
            self.casts += 1


def _bfloat16():
    import ml_dtypes

    return ml_dtypes.bfloat16


def _read_in_subgraphs(graph) -> set[str]:
    """Names of outer tensors that nodes inside If/Loop/Scan bodies read (they must keep their type)."""
    import onnx_graphsurgeon as gs

    found = set()

    def walk(g, inner: set[str]) -> None:
        for node in g.nodes:
            for t in node.inputs:
                if t.name and t.name not in inner:
                    found.add(t.name)
            for value in node.attrs.values():
                for sub in value if isinstance(value, list) else [value]:
                    if isinstance(sub, gs.Graph):
                        walk(sub, {t.name for t in sub.inputs} | {o.name for n in sub.nodes for o in n.outputs})

    for node in graph.nodes:
        for value in node.attrs.values():
            for sub in value if isinstance(value, list) else [value]:
                if isinstance(sub, gs.Graph):
                    walk(sub, {t.name for t in sub.inputs} | {o.name for n in sub.nodes for o in n.outputs})
    return found
