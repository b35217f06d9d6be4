"""quantize-auto: per layer the cheapest number format that keeps the whole model within max_drop (lossy).

Candidates per layer (MatMul/Gemm with a constant weight, Gather on a constant table): int8 (dynamic,
the ort target only), int4 (block-wise weights; MatMul/Gemm only on tensorrt), fp16 (weights, and on
tensorrt the compute) and float. Chosen from measurements, never assumed:

1. sensitivity: each layer alone in each format, every other layer float, the model's drop measured
   on the sample data (one trial per layer and format);
2. a per-layer threshold t: every layer takes, among its formats whose own drop is at most t, the one
   the objective prefers (size: fewest weight bytes; latency: int8, then int4, then fp16), else float.
   The largest t whose whole model fits max_drop is found by bisection over the measured drops
   (the cheapest-error layers are quantized first; a larger t never quantizes less);
3. the chosen model's drop is its own trial. Nothing fits (not even the least sensitive layer alone)
   is exit 4.

Each format is applied by its own pass's rewrite (quantize_dynamic, quantize_int4, convert_float16),
restricted to the layers that chose it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from onnxcomp.errors import InputError, ToleranceError
from onnxcomp.graph.edit import node_key
from onnxcomp.measure.host import host_needs_reduced_range
from onnxcomp.passes.precision.common import constant_input, exclusion, refuse_quantized, require_data
from onnxcomp.passes.precision.convert_float16 import ConvertFloat16Options, Float16Conversion
from onnxcomp.passes.precision.quantize_dynamic import DynamicRewrite, QuantizeDynamicOptions
from onnxcomp.passes.precision.quantize_int4 import Int4Plan, QuantizeInt4Options
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
from onnxcomp.progress import bar

FORMATS = ("int8", "int4", "fp16")
LAYER_OPS = ("MatMul", "Gemm", "Gather", "Conv", "ConvTranspose")  # the layers: ops with a constant weight
# Preference among formats that fit, per objective (float is always the last resort).
LATENCY_ORDER = {"ort": ("int8", "int4", "fp16"), "tensorrt": ("fp16", "int4")}


@dataclass(frozen=True)
class QuantizeAutoOptions:
    max_drop: Optional[float] = max_drop_option()
    objective: Literal["size", "latency"] = field(
        default="size", metadata={"help": "what the per-layer choice minimises: weight bytes, or latency "
                                          "(int8, then int4, then fp16 on ort)"})
    formats: tuple[str, ...] = field(default=FORMATS, metadata={"help": "formats to choose among besides float, "
                                                                       "of " + ", ".join(FORMATS)})
    target: Optional[Target] = target_option()
    block_size: Literal[32, 64, 128] = field(default=32, metadata={"help": "int4 weights per scale"})
    exclude: tuple[str, ...] = exclude_option()
    exclude_op: tuple[str, ...] = exclude_op_option()
    sensitivity_samples: int = field(default=64, metadata={"help": "samples each trial is measured on",
                                                           "range": Range(1)})

    def __post_init__(self):
        check_ranges(self, "quantize-auto")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise InputError(f"quantize-auto.formats: {', '.join(unknown) or 'none given'}; choose from "
                             f"{', '.join(FORMATS)}")


@register_pass
class QuantizeAutoPass(Pass):
    """Per layer int8, int4, fp16 or float, chosen from measured sensitivity to meet max_drop (lossy)."""

    name = "quantize-auto"
    exact = False
    Options = QuantizeAutoOptions

    @property
    def min_opset(self) -> int:
        """DynamicQuantizeLinear is opset 11; INT4 DequantizeLinear with block_size (tensorrt) 21."""
        return 21 if self.options.target == "tensorrt" and "int4" in self.options.formats else 11

    def run(self, graph, ctx: PassContext) -> PassReport:
        from onnxcomp.graph.convert import to_graph, to_model
        from onnxcomp.pipeline.budget import BudgetSearch, drop_measure

        opts = self.options
        if opts.max_drop is None:
            raise InputError("quantize-auto: needs --max-drop D (the drop the per-layer choice must stay within)")
        target = opts.target or ctx.target or "ort"
        refuse_quantized(graph, self.name)
        data = require_data(ctx, self.name, "choosing formats from measured sensitivity").first(
            opts.sensitivity_samples)
        exclude = exclusion(opts, graph, self.name)
        rewrites = _Rewrites(opts, target, exclude, graph)
        if not rewrites.allowed:
            raise InputError(f"{self.name}: no layer can take any of {', '.join(opts.formats)} on target {target}")
        reference = to_model(graph)

        def build(choice: dict):
            trial = to_graph(reference)
            rewrites.apply(trial, choice)
            return to_model(trial)

        search = BudgetSearch(self.name, build, drop_measure(reference, data), opts.max_drop,
                              key=lambda choice: frozenset(choice.items()))
        pairs = [(u, f) for u, fmts in rewrites.allowed.items() for f in fmts]
        ctx.say(f"{self.name}: measuring {len(pairs)} (layer, format) pairs on {len(data)} samples")
        alone = {pair: search.trial({pair[0]: pair[1]}, f"only {pair[0]} as {pair[1]}").drop
                 for pair in bar(pairs, desc=f"{self.name}: sensitivity", total=len(pairs))}
        thresholds = sorted(set(alone.values()))
        prefer = rewrites.preference()

        def choice_at(t: float) -> dict:
            chosen = {}
            for unit, fmts in rewrites.allowed.items():
                fits = [f for f in fmts if alone[(unit, f)] <= t]
                if fits:
                    chosen[unit] = min(fits, key=lambda f: prefer(unit, f))
            return chosen

        best = None
        lo, hi = 0, len(thresholds) - 1  # the largest index whose choice fits
        top = choice_at(thresholds[hi])
        fid = search.trial(top, f"all at their preferred format ({len(top)} layers)")
        if search.fits(fid):
            best = (top, fid)
        else:
            hi -= 1
            while lo <= hi:
                mid = (lo + hi) // 2
                candidate = choice_at(thresholds[mid])
                fid = search.trial(candidate, f"threshold {thresholds[mid]:.3g}: {len(candidate)} layers")
                if search.fits(fid):
                    best, lo = (candidate, fid), mid + 1
                else:
                    hi = mid - 1
        if best is None:
            raise ToleranceError(f"{self.name}: --max-drop {opts.max_drop} cannot be met with any layer quantized: "
                                 f"the least sensitive alone drops {thresholds[0]:.4f}")
        choice, fid = best
        rewrites.apply(graph, choice)
        rows = rewrites.rows(choice, alone)
        for row in rows:
            ctx.say(f"  {row['node']:<56} {row['format']:<5} {row['bytes_before']:>10} -> {row['bytes_after']:>10} B"
                    + "".join(f"  {f} {d:.2e}" for f, d in row["drop_alone"].items()))
        report = PassReport(modified=bool(choice))
        for fmt in ("int8", "int4", "fp16", "float"):
            report.count(f"{fmt}_layers", sum(r["format"] == fmt for r in rows))
        before, after = sum(r["bytes_before"] for r in rows), sum(r["bytes_after"] for r in rows)
        report.details[self.name] = {
            "target": target, "objective": opts.objective, "max_drop": opts.max_drop, "drop": fid.drop,
            "cosine": fid.cosine, "trials": len(search.trials), "samples": len(data),
            "weight_bytes_before": before, "weight_bytes_after": after, "layers": rows}
        return report


class _Rewrites:
    """The three formats' rewrites, each restricted to the layers that chose it."""

    def __init__(self, opts: QuantizeAutoOptions, target: str, exclude, graph):
        from onnxcomp.pipeline.options import NO_EXCLUSION

        self.opts, self.target = opts, target
        self.dynamic = QuantizeDynamicOptions(op_types=("MatMul", "Gemm", "Gather"))
        self.int4 = QuantizeInt4Options(block_size=opts.block_size, method="rtn", target=target)
        self.fp16 = ConvertFloat16Options(target=target)
        self.qmax = 63 if host_needs_reduced_range() else 127
        self.none = NO_EXCLUSION
        self.int4_cache: dict = {}
        candidates = {"int8": set(), "int4": set(), "fp16": set()}
        if "int8" in opts.formats and target == "ort":  # TensorRT runs no dynamic quantization
            candidates["int8"] = set(DynamicRewrite(self.dynamic, exclude, self.qmax).eligible(graph))
        if "int4" in opts.formats:
            candidates["int4"] = set(Int4Plan(self.int4, target, exclude).eligible(graph))
        if "fp16" in opts.formats:
            candidates["fp16"] = set(Float16Conversion(self.fp16, target, exclude).plan(graph))
        self.nodes = {node_key(n): n for n in graph.nodes}
        self.fp16_all = candidates["fp16"]
        weighted = {node_key(n) for n in graph.nodes if n.op in LAYER_OPS
                    and constant_input(n, 0 if n.op == "Gather" else 1) is not None}
        self.units = {"int8": candidates["int8"], "int4": candidates["int4"], "fp16": candidates["fp16"] & weighted}
        self.allowed = {}
        for key in self.nodes:
            fmts = tuple(f for f in FORMATS if f in opts.formats and key in self.units[f])
            if fmts:
                self.allowed[key] = fmts
        self.weights = {key: _weight(self.nodes[key]) for key in self.allowed}

    def apply(self, graph, choice: dict) -> None:
        """Edit `graph`: every layer in `choice` to its format (fp16 first, on the float graph)."""
        picked = {f: frozenset(u for u, g in choice.items() if g == f) for f in FORMATS}
        if picked["fp16"]:
            Float16Conversion(self.fp16, self.target, self.none, frozenset(self.fp16_all - picked["fp16"])).apply(graph)
        if picked["int8"]:
            DynamicRewrite(self.dynamic, self.none, self.qmax, frozenset(self.units["int8"] - picked["int8"])).apply(graph)
        if picked["int4"]:
            Int4Plan(self.int4, self.target, self.none, frozenset(self.units["int4"] - picked["int4"]),
                     self.int4_cache).apply(graph)

    def weight_bytes(self, unit: str, fmt: str) -> int:
        n, channels = self.weights[unit]
        if fmt == "int8":
            return n + 4 * channels
        if fmt == "int4":
            return n // 2 + 4 * -(-n // self.opts.block_size)
        return 2 * n if fmt == "fp16" else 4 * n

    def preference(self):
        """Sort key of (unit, format): smaller is preferred by the objective."""
        if self.opts.objective == "size":
            return lambda unit, fmt: (self.weight_bytes(unit, fmt), FORMATS.index(fmt))
        order = LATENCY_ORDER.get(self.target, FORMATS)
        return lambda unit, fmt: (order.index(fmt) if fmt in order else len(order), self.weight_bytes(unit, fmt))

    def rows(self, choice: dict, alone: dict) -> list[dict]:
        out = []
        for unit, fmts in self.allowed.items():
            fmt = choice.get(unit, "float")
            out.append({"node": unit, "op": self.nodes[unit].op, "format": fmt,
                        "drop_alone": {f: alone[(unit, f)] for f in fmts},
                        "bytes_before": self.weight_bytes(unit, "float"), "bytes_after": self.weight_bytes(unit, fmt)})
        return out


def _weight(node) -> tuple[int, int]:
    """(values, output channels) of a layer's constant weight or table."""
    t = constant_input(node, 0 if node.op == "Gather" else 1)
    shape = np.shape(t.values) if t is not None else (0,)
    channels = shape[0] if node.op == "Gather" else shape[-1]
    return int(np.prod(shape)), int(channels)
