"""quantize-int4-weights: block-wise INT4 weights of MatMul/Gemm and embedding tables (lossy, weight-only).

Every `block_size` consecutive values along a weight's reduction axis share one float32 scale (and,
unless symmetric, a 4-bit zero point), so 4.5-5 bits per weight instead of 32. Two forms:

- target ort: ONNX Runtime's com.microsoft MatMulNBits (packed 4-bit weights, dequantized inside
  the kernel) and GatherBlockQuantized for embedding tables;
- target tensorrt: DequantizeLinear with an INT4 weight and `block_size` (opset 21) in front of the
  MatMul/Gemm, TensorRT's weight-only form (symmetric only; embedding tables stay float: TensorRT
  takes block-quantized weights only into MatMul/Gemm).

Rounding: `rtn` rounds to nearest with a per-block scale search (a slightly clipped range often has
less error); `gptq` (needs sample data) quantizes one input channel at a time and moves each rounding
error onto the channels not yet rounded, weighted by the layer's input statistics (GPTQ, Frantar et
al. 2022). `auto` measures both on the sample data per layer, as the output error sum ||X (W - W_q)||^2,
and keeps the smaller; without data it is rtn. Tables are always rtn (a lookup has no input statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.graph.edit import NameGen, node_key
from onnxcomp.passes.precision.common import (
    budget_details,
    constant_input,
    excluded,
    exclusion,
    hold_back,
    proto_constant,
    refuse_quantized,
    require_data,
)
from onnxcomp.passes.precision.numerics import (
    Blocks,
    gptq,
    inverse_cholesky_upper,
    output_error,
    pack_nibbles,
    rtn,
    sqnr_db,
)
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

SUPPORTED = ("MatMul", "Gemm", "Gather")
QDQ_OPSET = 21  # DequantizeLinear with INT4 and block_size


@dataclass(frozen=True)
class QuantizeInt4Options:
    block_size: Literal[32, 64, 128] = field(default=32, metadata={"help": "weights per scale along the reduction axis"})
    symmetric: bool = field(default=True, metadata={"help": "zero point fixed at 0 (else a 4-bit zero point per block)"})
    method: Literal["auto", "rtn", "gptq"] = field(
        default="auto", metadata={"help": "rounding: rtn, gptq (needs data) or auto (per layer the one with less "
                                          "measured output error; rtn without data)"})
    target: Optional[Target] = target_option()
    op_types: tuple[str, ...] = field(default=SUPPORTED, metadata={"help": "op types to quantize, of "
                                                                          + ", ".join(SUPPORTED)})
    accuracy_level: int = field(
        default=0, metadata={"help": "MatMulNBits accuracy_level (ort): 0 float32 compute, 4 int8 activations "
                                     "(faster, less accurate)", "range": Range(0, 4)})
    calib_samples: int = field(default=128, metadata={"help": "samples whose layer inputs gptq/auto measure",
                                                      "range": Range(1)})
    exclude: tuple[str, ...] = exclude_option()
    exclude_op: tuple[str, ...] = exclude_op_option()
    max_drop: Optional[float] = max_drop_option()
    sensitivity_samples: int = field(default=256, metadata={"help": "samples used by the max_drop search",
                                                            "range": Range(1)})

    def __post_init__(self):
        check_ranges(self, "quantize-int4-weights")
        unknown = [op for op in self.op_types if op not in SUPPORTED]
        if unknown:
            raise InputError(f"quantize-int4-weights.op_types: {', '.join(unknown)} not supported; "
                             f"choose from {', '.join(SUPPORTED)}")


@register_pass
class QuantizeInt4WeightsPass(Pass):
    """Block-wise INT4 weights (RTN or GPTQ) as MatMulNBits (ort) or INT4 DequantizeLinear (tensorrt; lossy)."""

    name = "quantize-int4-weights"
    exact = False
    Options = QuantizeInt4Options

    @property
    def min_opset(self) -> int:
        """INT4 DequantizeLinear with block_size (tensorrt) is opset 21: optimize() converts the model up."""
        return QDQ_OPSET if self.options.target == "tensorrt" else 10

    def run(self, graph, ctx: PassContext) -> PassReport:
        opts = self.options
        target = opts.target or ctx.target or "ort"
        refuse_quantized(graph, self.name)
        if target == "tensorrt":
            if not opts.symmetric:
                raise InputError(f"{self.name}: TensorRT takes only symmetric INT4 weights (zero point 0); "
                                 "drop symmetric=false or use target ort")
            if graph.opset is not None and graph.opset < QDQ_OPSET:
                raise InputError(f"{self.name}: model opset {graph.opset} < {QDQ_OPSET}: INT4 DequantizeLinear "
                                 f"with block_size needs opset {QDQ_OPSET}; convert it first, e.g. "
                                 f"onnx.version_converter.convert_version(model, {QDQ_OPSET})")
        if opts.method == "gptq":
            require_data(ctx, self.name, "method gptq")
        exclude = exclusion(opts, graph, self.name)
        plan = Int4Plan(opts, target, exclude)
        units = plan.eligible(graph)
        if units and (opts.method == "gptq" or (opts.method == "auto" and ctx.data is not None)):
            ctx.say(f"{self.name}: measuring layer inputs on {opts.calib_samples} samples")
            plan.hessians = _input_hessians(graph, plan, ctx.data, opts.calib_samples)
        budget = None
        if opts.max_drop is not None:
            budget = hold_back(self.name, graph, lambda g, held: plan.copy(held).apply(g), units, ctx,
                               opts.max_drop, opts.sensitivity_samples)
        final = plan.copy(frozenset(budget.held_back) if budget else frozenset())
        final.apply(graph)
        report = PassReport(modified=bool(final.rows))
        for name, reason in final.skipped:
            report.skip(name, reason)
        report.count("int4_weights", len(final.rows))
        report.count("float_nodes", len(final.skipped))
        report.count("gptq_weights", sum(r["method"] == "gptq" for r in final.rows))
        details = {"target": target, "format": "MatMulNBits" if target == "ort" else "DequantizeLinear",
                   "block_size": opts.block_size, "symmetric": opts.symmetric, "method": opts.method,
                   "weights": final.rows}
        if budget is not None:
            details["budget"] = budget_details(budget, opts.max_drop)
        report.details[self.name] = details
        return report


class Int4Plan:
    """Which weights, their INT4 codes (computed once, reused by every max_drop trial), and the edits."""

    def __init__(self, opts: QuantizeInt4Options, target: str, exclude, held: frozenset = frozenset(),
                 cache: dict | None = None):
        self.opts, self.target, self.exclude, self.held = opts, target, exclude, held
        self.cache = {} if cache is None else cache  # (weight name, op) -> (Blocks, row facts); "upper", input -> U
        self.hessians: dict[str, np.ndarray] = {}
        self.rows: list[dict] = []
        self.skipped: list[tuple[str, str]] = []

    def copy(self, held: frozenset) -> Int4Plan:
        twin = Int4Plan(self.opts, self.target, self.exclude, held, self.cache)
        twin.hessians = self.hessians
        return twin

    def refusal(self, node) -> str | None:
        reason = excluded(node, self.exclude)
        if reason:
            return reason
        if node_key(node) in self.held:
            return "kept float by max_drop (most sensitive)"
        if node.op == "Gather":
            if self.target == "tensorrt":
                return "kept float: TensorRT takes block-quantized INT4 weights only into MatMul/Gemm"
            table = constant_input(node, 0)
            if table is None or table.values.ndim != 2 or int(node.attrs.get("axis", 0)) != 0:
                return "not a lookup in a constant 2-D table along axis 0"
            return None
        if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
            return "Gemm with transA=1"
        w = constant_input(node, 1)
        if w is None:
            return "weight is not a float32 initializer (activation x activation stays float)"
        if w.values.ndim != 2:
            return f"weight has rank {w.values.ndim}; block-wise INT4 needs a 2-D weight"
        return None

    def eligible(self, graph) -> list[str]:
        return [node_key(n) for n in graph.nodes if n.op in self.opts.op_types and self.refusal(n) is None]

    def rows_by_k(self, node) -> np.ndarray:
        """The weight as [rows = outputs, k = reduction axis] (the Blocks layout)."""
        if node.op == "Gather":
            return np.asarray(constant_input(node, 0).values, np.float32)
        w = np.asarray(constant_input(node, 1).values, np.float32)
        transposed = node.op == "Gemm" and int(node.attrs.get("transB", 0))
        return w if transposed else w.T

    def quantized(self, node) -> tuple[Blocks, dict]:
        weight = constant_input(node, 0 if node.op == "Gather" else 1)
        key = (weight.name, node.op)
        if key not in self.cache:
            w = self.rows_by_k(node)
            block, sym = self.opts.block_size, self.opts.symmetric
            h = self.hessians.get(node.inputs[0].name) if node.op != "Gather" else None
            facts = {"error_rtn": None, "error_gptq": None}
            candidates = {}
            if self.opts.method in ("auto", "rtn") or h is None:
                candidates["rtn"] = rtn(w, block, sym)
            if h is not None and self.opts.method in ("auto", "gptq"):
                factor = ("upper", node.inputs[0].name)  # Q, K and V read one input: one factorisation
                if factor not in self.cache:
                    self.cache[factor] = inverse_cholesky_upper(h)
                candidates["gptq"] = gptq(w, h, block, sym, upper=self.cache[factor])
            if h is not None:
                for method, blocks in candidates.items():
                    facts[f"error_{method}"] = output_error(w, blocks.dequantize(), h)
                method = min(candidates, key=lambda m: facts[f"error_{m}"])
                signal = float(np.sum((w.astype(np.float64) @ h) * w))
                facts["output_sqnr_db"] = round(10 * math.log10(signal / facts[f"error_{method}"]), 2) \
                    if facts[f"error_{method}"] > 0 and signal > 0 else None
            else:
                method = next(iter(candidates))
                facts["output_sqnr_db"] = None
            blocks = candidates[method]
            facts.update(method=method, sqnr_db=round(sqnr_db(w, blocks.dequantize()), 2))
            self.cache[key] = (blocks, facts)
        return self.cache[key]

    def apply(self, graph) -> None:
        import onnx_graphsurgeon as gs

        self.gs, self.names, new_nodes = gs, NameGen(graph), []
        for node in list(graph.nodes):
            if node.op not in self.opts.op_types:
                continue
            reason = self.refusal(node)
            if reason:
                self.skipped.append((node_key(node), reason))
                continue
            blocks, facts = self.quantized(node)
            weight = constant_input(node, 0 if node.op == "Gather" else 1)
            if self.target == "tensorrt":
                self._dequantize_linear(node, weight, blocks, new_nodes)
            elif node.op == "Gather":
                self._gather_block_quantized(node, weight, blocks, new_nodes)
            else:
                self._matmul_nbits(node, blocks, new_nodes)
            self.rows.append({"node": node_key(node), "op": node.op, "weight": weight.name,
                              "shape": list(weight.values.shape), **facts})
        graph.nodes.extend(new_nodes)
        graph.cleanup().toposort()

    # ---- the forms ----

    def _matmul_nbits(self, node, blocks: Blocks, new_nodes: list) -> None:
        gs = self.gs
        x = node.inputs[0]
        bias = node.inputs[2] if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name else None
        alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
        beta = float(node.attrs.get("beta", 1.0)) if node.op == "Gemm" else 1.0
        rows = len(blocks.codes)
        inputs = [x, gs.Constant(self.names(f"{node_key(node)}_weight_int4"), pack_nibbles(blocks.codes)),
                  gs.Constant(self.names(f"{node_key(node)}_scales"), (blocks.scales * alpha).reshape(-1))]
        if not blocks.symmetric:
            inputs.append(gs.Constant(self.names(f"{node_key(node)}_zero_points"),
                                      pack_nibbles(blocks.zero_points).reshape(-1)))
        (y,) = list(node.outputs)
        node.inputs.clear()
        node.outputs.clear()
        out = y if bias is None else gs.Variable(self.names(f"{y.name}_matmul"), dtype=np.float32)
        attrs = {"K": blocks.k, "N": rows, "bits": 4, "block_size": blocks.block}
        if self.opts.accuracy_level:
            attrs["accuracy_level"] = self.opts.accuracy_level
        new_nodes.append(gs.Node("MatMulNBits", self.names(f"{node_key(node)}_MatMulNBits"), attrs=attrs,
                                 inputs=inputs, outputs=[out], domain="com.microsoft"))
        if bias is not None:
            if beta != 1.0:
                scaled = gs.Variable(self.names(f"{bias.name}_beta"), dtype=np.float32)
                new_nodes.append(gs.Node("Mul", self.names(f"{bias.name}_Mul_beta"),
                                         inputs=[bias, gs.Constant(self.names("beta"), np.float32(beta))],
                                         outputs=[scaled]))
                bias = scaled
            new_nodes.append(gs.Node("Add", self.names(f"{node_key(node)}_bias"), inputs=[out, bias], outputs=[y]))

    def _gather_block_quantized(self, node, table, blocks: Blocks, new_nodes: list) -> None:
        import onnx
        from onnx import helper

        gs = self.gs
        rows, width = table.values.shape
        codes = blocks.codes.reshape(rows, -1)[:, :width]
        if blocks.symmetric:  # signed INT4: code - 8, the nibble is code ^ 8
            data = helper.make_tensor("data", onnx.TensorProto.INT4, [rows, width],
                                      pack_nibbles((codes ^ 8).reshape(-1)).tobytes(), raw=True)
        else:
            data = helper.make_tensor("data", onnx.TensorProto.UINT4, [rows, width],
                                      pack_nibbles(codes.reshape(-1)).tobytes(), raw=True)
        inputs = [proto_constant(self.names(f"{table.name}_int4"), data), node.inputs[1],
                  gs.Constant(self.names(f"{table.name}_scales"), blocks.scales)]
        if not blocks.symmetric:
            zp = helper.make_tensor("zp", onnx.TensorProto.UINT4, list(blocks.zero_points.shape),
                                    pack_nibbles(blocks.zero_points.reshape(-1)).tobytes(), raw=True)
            inputs.append(proto_constant(self.names(f"{table.name}_zero_points"), zp))
        (y,) = list(node.outputs)
        node.inputs.clear()
        node.outputs.clear()
        new_nodes.append(gs.Node("GatherBlockQuantized", self.names(f"{node_key(node)}_GatherBlockQuantized"),
                                 attrs={"gather_axis": 0, "quantize_axis": 1, "block_size": blocks.block},
                                 inputs=inputs, outputs=[y], domain="com.microsoft"))

    def _dequantize_linear(self, node, weight, blocks: Blocks, new_nodes: list) -> None:
        """INT4 weight in its own layout, DequantizeLinear along the reduction axis, into the same node."""
        import onnx
        from onnx import helper

        gs = self.gs
        rows = len(blocks.codes)
        signed = (blocks.codes.reshape(rows, -1)[:, : blocks.k] ^ 8)  # nibbles of code - 8
        scales = blocks.scales
        transposed = node.op == "Gemm" and int(node.attrs.get("transB", 0))
        if not transposed:  # the weight is [k, rows]: blocks run along axis 0
            signed, scales = signed.T, scales.T
        data = helper.make_tensor("q", onnx.TensorProto.INT4, list(signed.shape),
                                  pack_nibbles(np.ascontiguousarray(signed).reshape(-1)).tobytes(), raw=True)
        # An explicit all-zero INT4 zero point: TensorRT reads a missing one as UINT8's (TRT-05).
        zero = helper.make_tensor("zp", onnx.TensorProto.INT4, list(scales.shape),
                                  np.zeros(-(-scales.size // 2), np.uint8).tobytes(), raw=True)
        out = gs.Variable(self.names(f"{weight.name}_dequantized"), dtype=np.float32, shape=list(weight.values.shape))
        new_nodes.append(gs.Node("DequantizeLinear", self.names(f"{weight.name}_DequantizeLinear"),
                                 attrs={"axis": 1 if transposed else 0, "block_size": blocks.block},
                                 inputs=[proto_constant(self.names(f"{weight.name}_int4"), data),
                                         gs.Constant(self.names(f"{weight.name}_scale"),
                                                     np.ascontiguousarray(scales, np.float32)),
                                         proto_constant(self.names(f"{weight.name}_zero_point"), zero)],
                                 outputs=[out]))
        node.inputs[1] = out


def _input_hessians(graph, plan: Int4Plan, data, samples: int, batch: int = 16) -> dict[str, np.ndarray]:
    """H = X^T X / n for the input X of every eligible MatMul/Gemm, from the sample data (Samples) under ORT."""
    from onnxcomp.graph.convert import to_model
    from onnxcomp.measure.runtime import run, session

    names = sorted({n.inputs[0].name for n in graph.nodes if n.op in ("MatMul", "Gemm")
                    and n.op in plan.opts.op_types and plan.refusal(n) is None})
    model = to_model(graph)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.add().name = name  # untyped: ONNX Runtime infers it
    sess = session(model)
    from onnxcomp.errors import InputError

    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    taken = data.first(samples)
    try:
        runs = [run(sess, feeds, names) for feeds in taken.batches(batch)]
    except InputError:  # a model whose declared dynamic batch is not (a Reshape to batch 1): call by call
        runs = [run(sess, feeds, names) for feeds in taken.batches()]
    for values in runs:
        for name, x in values.items():
            x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
            sums[name] = sums.get(name, 0.0) + x.T @ x
            rows[name] = rows.get(name, 0) + len(x)
    return {name: sums[name] / max(rows[name], 1) for name in sums}
