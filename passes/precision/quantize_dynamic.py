"""quantize-dynamic: INT8 weights per channel, activations quantized at run time (lossy, no calibration).

Each MatMul/Gemm with a constant 2-D weight becomes the standard ONNX pattern

    x -> DynamicQuantizeLinear -> MatMulInteger(x_q, W_q, x_zp) -> Cast -> Mul(x_scale * w_scale) [-> Add(bias)]

which ONNX Runtime fuses into MatMulIntegerToFloat / DynamicQuantizeMatMul (one DynamicQuantizeLinear is
shared by every quantized reader of the same activation, as Q, K and V read one tensor). The output keeps
its name, so per-layer comparison lines up. Other forms:

- Gather on a constant [rows, width] table (embeddings): weight-only INT8 per row, gathered as INT8 and
  scaled after the lookup (the whole table is never dequantized at run time);
- LSTM: ONNX Runtime's com.microsoft DynamicQuantizeLSTM (INT8 W and R per gate channel);
- Conv: ConvInteger, off by default: on ONNX Runtime CPU it measured slower than the float Conv.

Weights are symmetric INT8 ([-127, 127], or [-63, 63] with reduce_range, for x86 CPUs without VNNI whose
u8s8 kernels can saturate). No calibration data is needed; with max_drop it is used to measure.
By default (keep_outliers) the few layers whose INT8 alone costs a large share of the drop are found
on one gated model (sensitivity.py, on the run's data or generated inputs) and run INT8 with their
outlier input channels in float, or stay float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.graph.edit import NameGen, node_key
from onnxcomp.measure.host import host_needs_reduced_range
from onnxcomp.passes.precision.common import (
    budget_details,
    constant_input,
    excluded,
    exclusion,
    hold_back,
    refuse_quantized,
)
from onnxcomp.passes.precision.numerics import int8_per_channel, sqnr_db
from onnxcomp.passes.precision.sensitivity import hold_back_gated, outliers
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

SUPPORTED = ("MatMul", "Gemm", "Gather", "LSTM", "Conv")
DEFAULT_OPS = ("MatMul", "Gemm", "Gather", "LSTM")
TENSORRT_REFUSAL = ("quantize-dynamic: TensorRT runs no dynamic quantization (DynamicQuantizeLinear, MatMulInteger); "
                    "for TensorRT use --quantize int8 (static Q/DQ), fp16 or int4")
_FLOAT = 1  # onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class QuantizeDynamicOptions:
    op_types: tuple[str, ...] = field(
        default=DEFAULT_OPS, metadata={"help": "op types to quantize, of " + ", ".join(SUPPORTED) + " (Conv runs as "
                                                "ConvInteger, slower than float on ORT CPU: not by default)"})
    target: Optional[Target] = target_option()
    per_channel: bool = field(default=True, metadata={"help": "one weight scale per output channel (else per tensor)"})
    reduce_range: Optional[bool] = field(
        default=None, metadata={"help": "7-bit weights (|q| <= 63) for x86 CPUs without VNNI, whose u8s8 kernels "
                                        "can saturate; default: on for such a host"})
    exclude: tuple[str, ...] = exclude_option()
    exclude_op: tuple[str, ...] = exclude_op_option()
    keep_outliers: bool = field(
        default=True, metadata={"help": "without max_drop: the few layers whose INT8 alone costs a large share of "
                                        "the drop (measured on the run's data or generated inputs) run their "
                                        "outlier input channels in float, or stay float"})
    max_drop: Optional[float] = max_drop_option()
    sensitivity_samples: int = field(default=256, metadata={"help": "samples used by the max_drop search",
                                                            "range": Range(1)})

    def __post_init__(self):
        check_ranges(self, "quantize-dynamic")
        if self.target == "tensorrt":
            raise InputError(TENSORRT_REFUSAL)
        unknown = [op for op in self.op_types if op not in SUPPORTED]
        if unknown:
            raise InputError(f"quantize-dynamic.op_types: {', '.join(unknown)} not supported; "
                             f"choose from {', '.join(SUPPORTED)}")


@register_pass
class QuantizeDynamicPass(Pass):
    """INT8 per-channel weights with activations quantized at run time (MatMulInteger et al.; lossy)."""

    name = "quantize-dynamic"
    exact = False
    min_opset = 11  # DynamicQuantizeLinear
    Options = QuantizeDynamicOptions

    def run(self, graph, ctx: PassContext) -> PassReport:
        opts = self.options
        if (opts.target or ctx.target) == "tensorrt":
            raise InputError(TENSORRT_REFUSAL)
        refuse_quantized(graph, self.name)
        exclude = exclusion(opts, graph, self.name)
        qmax = 63 if (opts.reduce_range if opts.reduce_range is not None else host_needs_reduced_range()) else 127
        report = PassReport()
        budget, found, held, split = None, None, [], {}
        units = DynamicRewrite(opts, exclude, qmax).eligible(graph)

        def apply(g, kept, channels=None):
            DynamicRewrite(opts, exclude, qmax, kept, split=channels).apply(g)

        if opts.max_drop is not None and units:
            budget = hold_back_gated(self.name, graph, apply, units, ctx, opts.max_drop, opts.sensitivity_samples)
            if budget is None:  # a unit the gated model cannot tap (LSTM): one model per trial
                budget = hold_back(self.name, graph, apply, units, ctx, opts.max_drop, opts.sensitivity_samples)
            held = budget.held_back
        elif opts.keep_outliers and units:
            held, split, found = outliers(self.name, graph, apply, units, ctx)
        rewrite = DynamicRewrite(opts, exclude, qmax, frozenset(held), "kept float by max_drop (most sensitive)"
                                 if budget is not None else "kept float: a clear outlier of INT8 error", split)
        rewrite.apply(graph)
        for name, reason in rewrite.skipped:
            report.skip(name, reason)
        report.modified = bool(rewrite.rows)
        report.count("int8_nodes", len({r["node"] for r in rewrite.rows}))
        report.count("dynamic_activations", rewrite.activations)
        report.count("float_nodes", len(rewrite.skipped))
        details = {"op_types": list(opts.op_types), "per_channel": opts.per_channel, "weight_qmax": qmax,
                   "nodes": rewrite.rows}
        if budget is not None:
            details["budget"] = budget_details(budget, opts.max_drop)
        if found is not None:
            details["outliers"] = found
        report.details[self.name] = details
        return report


class DynamicRewrite:
    """One application of the pass to a graph: which nodes, and the edits."""

    def __init__(self, opts: QuantizeDynamicOptions, exclude, qmax: int, held: frozenset = frozenset(),
                 held_reason: str = "kept float", split: dict | None = None):
        self.opts, self.exclude, self.qmax, self.held, self.held_reason = opts, exclude, qmax, held, held_reason
        self.split = split or {}  # MatMul -> input channels computed in float (outliers of its activation)
        self.rows: list[dict] = []
        self.skipped: list[tuple[str, str]] = []
        self.activations = 0

    def refusal(self, node) -> str | None:
        """Why `node` is not quantized (None: it is)."""
        reason = excluded(node, self.exclude)
        if reason:
            return reason
        if node_key(node) in self.held:
            return self.held_reason
        if node.op == "MatMul":
            w = constant_input(node, 1)
            if w is None:
                return "weight is not a float32 initializer (activation x activation stays float)"
            if w.values.ndim != 2:
                return f"weight has rank {w.values.ndim}; per-channel INT8 needs a 2-D weight"
        elif node.op == "Gemm":
            if int(node.attrs.get("transA", 0)):
                return "Gemm with transA=1"
            if constant_input(node, 1) is None:
                return "weight is not a float32 initializer"
        elif node.op == "Gather":
            table = constant_input(node, 0)
            if table is None or table.values.ndim != 2 or int(node.attrs.get("axis", 0)) != 0:
                return "not a lookup in a constant 2-D table along axis 0"
        elif node.op == "Conv":
            w = constant_input(node, 1)
            if w is None or w.values.ndim < 3:
                return "weight is not a float32 initializer"
        elif node.op == "LSTM":
            if constant_input(node, 1) is None or constant_input(node, 2) is None:
                return "W and R are not float32 initializers"
            if int(node.attrs.get("layout", 0)):
                return "LSTM with layout=1 (DynamicQuantizeLSTM takes layout 0)"
        dtype = getattr(node.inputs[0], "dtype", None) if node.op != "Gather" else None
        if dtype is not None and np.dtype(dtype) != np.float32:
            return f"input is {np.dtype(dtype)}, not float32"
        return None

    def eligible(self, graph) -> list[str]:
        return [node_key(n) for n in graph.nodes if n.op in self.opts.op_types and self.refusal(n) is None]

    def apply(self, graph) -> None:
        self.names = NameGen(graph)
        self.quantized_inputs: dict[str, tuple] = {}
        self.new_nodes = []
        for node in list(graph.nodes):
            if node.op not in self.opts.op_types:
                continue
            reason = self.refusal(node)
            if reason:
                self.skipped.append((node_key(node), reason))
                continue
            getattr(self, f"_{node.op.lower()}")(node)
        graph.nodes.extend(self.new_nodes)
        graph.cleanup().toposort()

    # ---- building blocks ----

    def node(self, op: str, inputs: list, outputs: list | None = None, dtype=np.float32, domain=None, **attrs):
        import onnx_graphsurgeon as gs

        base = f"{op}_{inputs[0].name}"
        outputs = outputs or [gs.Variable(self.names(base + "_out"), dtype=dtype)]
        self.new_nodes.append(gs.Node(op, self.names(base), attrs=attrs, inputs=inputs, outputs=outputs,
                                      domain=domain))
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, base: str, values: np.ndarray):
        import onnx_graphsurgeon as gs

        return gs.Constant(self.names(base), np.ascontiguousarray(values))

    def dynamic(self, x):
        """(x_q, x_scale, x_zero_point) of activation x, one DynamicQuantizeLinear per tensor."""
        import onnx_graphsurgeon as gs

        if x.name not in self.quantized_inputs:
            outs = [gs.Variable(self.names(f"{x.name}_quantized"), dtype=np.uint8),
                    gs.Variable(self.names(f"{x.name}_scale"), dtype=np.float32, shape=[]),
                    gs.Variable(self.names(f"{x.name}_zero_point"), dtype=np.uint8, shape=[])]
            self.node("DynamicQuantizeLinear", [x], outs)
            self.quantized_inputs[x.name] = tuple(outs)
            self.activations += 1
        return self.quantized_inputs[x.name]

    def detach(self, node):
        """Remove `node` from the data flow; its outputs, to be produced by the new nodes."""
        outputs = list(node.outputs)
        node.inputs.clear()
        node.outputs.clear()
        return outputs

    def row(self, node, weight, q, scale, w_float, axis) -> None:
        """The report row of one quantized weight (its SQNR from the codes and scales as stored)."""
        shape = [1] * q.ndim
        if axis is not None:
            shape[axis] = -1
        w_hat = q.astype(np.float32) * (scale.reshape(shape) if axis is not None else scale.reshape(-1)[0])
        self.rows.append({"node": node_key(node), "op": node.op, "weight": weight.name, "axis": axis,
                          "channels": int(np.size(scale)), "sqnr_db": round(sqnr_db(w_float, w_hat), 2)})

    def integer_matmul(self, x, w_kn: np.ndarray, extra_scale: float = 1.0):
        """MatMulInteger of x with W [K, N] as INT8, rescaled to float: (output, codes, scale)."""
        axis = 1 if self.opts.per_channel else None
        q, scale = int8_per_channel(w_kn, axis, self.qmax)
        x_q, x_scale, x_zp = self.dynamic(x)
        w_q = self.const(f"{x.name}_weight_quantized", q)
        acc = self.node("MatMulInteger", [x_q, w_q, x_zp], dtype=np.int32)
        as_float = self.node("Cast", [acc], to=_FLOAT)
        combined = self.node("Mul", [x_scale, self.const("weight_scale", (scale * extra_scale).astype(np.float32))])
        return as_float, combined, q, scale

    # ---- one method per op ----

    def _matmul(self, node) -> None:
        x, w = node.inputs[0], constant_input(node, 1)
        w_kn = np.asarray(w.values, np.float32)
        (y,) = self.detach(node)
        channels = self.split.get(node_key(node))
        if channels:
            x, w_kn, side = self.float_channels(x, w_kn, channels)
        as_float, combined, q, scale = self.integer_matmul(x, w_kn)
        if channels:
            self.node("Add", [self.node("Mul", [as_float, combined]), side], [y])
        else:
            self.node("Mul", [as_float, combined], [y])
        self.row(node, w, q, scale, w_kn, 1 if self.opts.per_channel else None)

    def float_channels(self, x, w_kn: np.ndarray, channels: list[int]):
        """(x with `channels` zeroed, W with those rows zeroed, their product in float): x @ W is the
        sum of the two parts exactly, and the run-time INT8 range of the rest is no longer set by
        the few channels (LLM.int8()'s decomposition, with the channels fixed at rewrite time)."""
        idx = np.asarray(channels, np.int64)
        mask = np.ones(w_kn.shape[0], np.float32)
        mask[idx] = 0.0
        rest = self.node("Mul", [x, self.const("outlier_mask", mask)])
        picked = self.node("Gather", [x, self.const("outlier_channels", idx)], axis=-1)
        side = self.node("MatMul", [picked, self.const("outlier_rows", w_kn[idx])])
        return rest, w_kn * mask[:, None], side

    def _gemm(self, node) -> None:
        x, b = node.inputs[0], constant_input(node, 1)
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        w_kn = np.asarray(b.values, np.float32)
        w_kn = w_kn.T if int(node.attrs.get("transB", 0)) else w_kn
        (y,) = self.detach(node)
        as_float, combined, q, scale = self.integer_matmul(x, w_kn, alpha)
        if bias is None:
            self.node("Mul", [as_float, combined], [y])
        else:
            scaled = self.node("Mul", [as_float, combined])
            if beta != 1.0:
                bias = self.node("Mul", [bias, self.const("gemm_beta", np.float32(beta))])
            self.node("Add", [scaled, bias], [y])
        self.row(node, b, q, scale, w_kn, 1 if self.opts.per_channel else None)

    def _gather(self, node) -> None:
        table, ids = constant_input(node, 0), node.inputs[1]
        values = np.asarray(table.values, np.float32)
        axis = 0 if self.opts.per_channel else None
        q, scale = int8_per_channel(values, axis, 127)  # weight-only: no u8s8 product, full range
        (y,) = self.detach(node)
        codes = self.node("Gather", [self.const(f"{table.name}_quantized", q), ids], dtype=np.int8, axis=0)
        as_float = self.node("Cast", [codes], to=_FLOAT)
        if axis is None:
            self.node("Mul", [as_float, self.const(f"{table.name}_scale", scale)], [y])
        else:
            row_scale = self.node("Gather", [self.const(f"{table.name}_scale", scale.reshape(-1, 1)), ids], axis=0)
            self.node("Mul", [as_float, row_scale], [y])
        self.row(node, table, q, scale, values, axis)

    def _conv(self, node) -> None:
        x, w = node.inputs[0], constant_input(node, 1)
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        values = np.asarray(w.values, np.float32)
        axis = 0 if self.opts.per_channel else None
        q, scale = int8_per_channel(values, axis, self.qmax)
        x_q, x_scale, x_zp = self.dynamic(x)
        (y,) = self.detach(node)
        attrs = {k: v for k, v in node.attrs.items() if k in ("auto_pad", "dilations", "group", "kernel_shape",
                                                              "pads", "strides")}
        acc = self.node("ConvInteger", [x_q, self.const(f"{w.name}_quantized", q), x_zp], dtype=np.int32, **attrs)
        as_float = self.node("Cast", [acc], to=_FLOAT)
        shape = [1, -1] + [1] * (values.ndim - 2)
        combined = self.node("Mul", [x_scale, self.const(f"{w.name}_scale", np.reshape(scale, shape))])
        if bias is None:
            self.node("Mul", [as_float, combined], [y])
        else:
            scaled = self.node("Mul", [as_float, combined])
            constant = constant_input(node, 2)
            bias = bias if constant is None else self.const(f"{bias.name}_reshaped",
                                                              np.asarray(constant.values, np.float32).reshape(shape))
            if constant is None:  # a computed bias: broadcast it per channel at run time
                bias = self.node("Reshape", [bias, self.const("bias_shape", np.asarray(shape, np.int64))])
            self.node("Add", [scaled, bias], [y])
        self.row(node, w, q, scale, values, axis)

    def _lstm(self, node) -> None:
        import onnx_graphsurgeon as gs

        w, r = constant_input(node, 1), constant_input(node, 2)
        ins = list(node.inputs) + [gs.Variable.empty()] * (8 - len(node.inputs))
        quantized = []
        for t in (w, r):  # ONNX [dirs, 4H, in] -> DynamicQuantizeLSTM's [dirs, in, 4H], scale per (dir, gate row)
            t_in = np.ascontiguousarray(np.transpose(np.asarray(t.values, np.float32), (0, 2, 1)))
            per_dir = [int8_per_channel(d, 1 if self.opts.per_channel else None, self.qmax) for d in t_in]
            q = np.stack([p[0] for p in per_dir])
            scale = np.stack([np.broadcast_to(p[1], (t_in.shape[2],)) if self.opts.per_channel else p[1].reshape(1)
                              for p in per_dir]).astype(np.float32)
            quantized.append((self.const(f"{t.name}_quantized", q), self.const(f"{t.name}_scale", scale),
                              self.const(f"{t.name}_zero_point", np.zeros(scale.shape, np.int8))))
            w_hat = q.astype(np.float32) * scale.reshape(len(scale), 1, -1)
            self.rows.append({"node": node_key(node), "op": node.op, "weight": t.name,
                              "axis": 2 if self.opts.per_channel else None, "channels": int(scale.size),
                              "sqnr_db": round(sqnr_db(t_in, w_hat), 2)})
        attrs = {k: v for k, v in node.attrs.items() if k != "layout"}
        outputs = self.detach(node)
        (wq, ws, wz), (rq, rs, rz) = quantized
        self.node("DynamicQuantizeLSTM", [ins[0], wq, rq, *ins[3:8], ws, wz, rs, rz], outputs,
                  domain="com.microsoft", **attrs)
