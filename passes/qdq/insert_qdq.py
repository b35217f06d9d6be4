"""insert-qdq: calibrated static INT8 quantization as QuantizeLinear/DequantizeLinear pairs (lossy)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Optional

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.graph.edit import node_key
from onnxcomp.passes.qdq.bias_correction import correct_biases, find_layers, float_weights
from onnxcomp.passes.qdq.calibration.ranges import Method, default_method
from onnxcomp.passes.qdq.cast_dequant import dequantize_cast_weights
from onnxcomp.passes.qdq.edge_casts import move_casts_to_edge
from onnxcomp.passes.qdq.embedding import eligible_gathers, quantize_tables
from onnxcomp.passes.qdq.numerics import (
    REDUCED_WEIGHT_QMAX,
    WEIGHT_QMAX,
    activation_format,
    activation_params,
    host_needs_reduced_range,
)
from onnxcomp.passes.qdq.overrides import activation_params as override_params
from onnxcomp.passes.qdq.overrides import check_names, load_overrides
from onnxcomp.passes.qdq.placement import PlacementOptions, QdqPlacement, is_weight_dequantize, plan_placement
from onnxcomp.passes.qdq.rewrite import insert_qdq_pairs
from onnxcomp.passes.qdq.sensitivity import choose_float_layers, sensitivity_table
from onnxcomp.pipeline.options import (
    Exclusion,
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

_QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
            "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "MatMulIntegerToFloat")


@dataclass(frozen=True)
class InsertQdqOptions:
    method: Optional[Method] = field(
        default=None, metadata={"help": "activation range choice (auto: per tensor the lowest error); default "
                                        "percentile for target tensorrt (symmetric INT8), minmax for ort"})
    target: Optional[Target] = target_option()
    scheme: Literal["auto", "full", "inputs"] = field(
        default="auto", metadata={"help": "ort placement: full (all int8 kernels), inputs (MatMul/Gemm inputs "
                                          "only); auto picks inputs for transformers"})
    per_channel: bool = field(default=True, metadata={"help": "per-output-channel weight scales"})
    exclude: tuple[str, ...] = exclude_option()
    exclude_op: tuple[str, ...] = exclude_op_option()
    op_types: tuple[str, ...] = field(default=(), metadata={"help": "quantize only these op types (empty: all the "
                                                                     "placement supports)"})
    max_drop: Optional[float] = max_drop_option()
    reduce_range: Optional[bool] = field(
        default=None, metadata={"help": "7-bit weights (|q| <= 63) so ORT's u8s8 kernels cannot saturate on x86 "
                                        "CPUs without VNNI; default: on for target ort on such a host"})
    percentile: float = field(default=99.99, metadata={"help": "percentile for method=percentile",
                                                       "range": Range(0, 100, lo_open=True)})
    calib_batch_size: int = field(default=16, metadata={"help": "samples per calibration batch", "range": Range(1)})
    sensitivity_samples: int = field(default=256, metadata={"help": "samples used by the max_drop search",
                                                            "range": Range(1)})
    overrides: Optional[str] = field(
        default=None, metadata={"help": "JSON or TOML file of per-tensor overrides (dtype, symmetric, axis, "
                                        "rmin/rmax, scale/zero_point), like ORT's TensorQuantOverrides",
                                "metavar": "PATH"})
    stats: Optional[str] = field(
        default=None, metadata={"help": "calibration statistics from `onnxcomp calibrate` (one run, or shards "
                                        "merged with --merge) used instead of calibrating on --calib data",
                                "metavar": "PATH"})
    calib_cache: Optional[str] = field(
        default=None, metadata={"help": "activation ranges from a TensorRT calibration cache or ORT's calibration.json "
                                        "(`onnxcomp calibrate --export-trt/--export-ort`) instead of calibrating",
                                "metavar": "PATH"})
    bias_correction: bool = field(
        default=False, metadata={"help": "take each quantized MatMul/Gemm's mean output shift, measured on the "
                                         "calibration data, out of its float bias where that pays on held-out batches"})
    embeddings: bool = field(
        default=False, metadata={"help": "also store constant Gather tables (embeddings) as INT8 per row: a quarter "
                                         "of their bytes (target ort; TensorRT keeps them float)"})
    smooth: bool = field(
        default=False, metadata={"help": "first run smooth-quant's folds (its default options, this target) where "
                                         "they measure a gain: what `--quantize int8` does; none on a CNN"})
    sites: Literal["all", "measured"] = field(
        default="all", metadata={"help": "all: every site the placement allows; measured (ort transformer "
                                         "placement): per kind of site, float where INT8 measures slower on this "
                                         "host and less accurate on the calibration data, else INT8"})

    def __post_init__(self):
        check_ranges(self, "insert-qdq")
        if self.calib_cache is not None:  # a bad file is refused before the model is loaded
            from onnxcomp.passes.qdq.calibration.cache_formats import read_cache

            read_cache(self.calib_cache)


@register_pass
class InsertQdqPass(Pass):
    """Calibrated static INT8 quantization as Q/DQ pairs, placed for ORT CPU or TensorRT (lossy)."""

    name = "insert-qdq"
    exact = False
    min_opset = 13  # DequantizeLinear gained per-channel `axis` in opset 13
    Options = InsertQdqOptions

    def run(self, graph, ctx: PassContext) -> PassReport:
        from onnxcomp.graph.convert import to_model

        target = self.options.target or ctx.target or "ort"
        opts = with_default_method(self.options, target)
        _check_model(graph, ctx, opts)
        report = PassReport()
        exclude = Exclusion(tuple(opts.exclude), tuple(opts.exclude_op))
        exclude.check("insert-qdq", graph)
        rewrites = _prepare(graph, target)
        report.modified = bool(rewrites)
        overrides = load_overrides(opts.overrides) if opts.overrides else {}
        check_names(overrides, graph)
        if opts.smooth:
            _smooth(graph, ctx, opts, target, report)
        placement = _placement(opts, target, exclude)
        plan = plan_placement(graph, placement)
        if not plan.nodes:
            _nothing_quantized(report, plan)
            report.details["insert-qdq"] = {"target": target, "scheme": plan.scheme,
                                            "note": _nothing("nothing to quantize", rewrites)}
            if opts.embeddings:
                _quantize_embeddings(graph, target, exclude, report)
            return report
        fmt = activation_format(target)
        float_model = to_model(graph)
        ctx.say(f"insert-qdq: calibrating {len(plan.range_groups())} activation ranges ({opts.method})")
        full_range = _full_range(graph, plan, opts, self.options.method is None)
        ranges = _calibrate(float_model, ctx.data, plan, opts, fmt.symmetric, ctx, full_range)
        placement, plan = _without_uncalibrated(graph, placement, plan, ranges)
        if not plan.nodes:
            _nothing_quantized(report, plan)
            report.details["insert-qdq"] = {"target": target, "scheme": plan.scheme,
                                            "note": _nothing("nothing to quantize: no calibrated input", rewrites)}
            return report
        weight_qmax = _weight_qmax(target, opts)  # reads /proc/cpuinfo: once, not per --max-drop trial
        build = _builder(float_model, placement, ranges, fmt, weight_qmax, overrides)
        sites = _choose_sites(graph, plan, build, float_model, opts, ctx) if opts.sites == "measured" else None
        if sites is not None and sites["float_nodes"]:
            placement = replace(placement, site_float=frozenset(sites["float_nodes"]))
            plan = plan_placement(graph, placement)
            build = _builder(float_model, placement, ranges, fmt, weight_qmax, overrides)
        budget = None
        if opts.max_drop is not None:
            budget = _fit_budget(float_model, plan, placement, build, opts, ctx)
            plan = plan_placement(graph, _with_float(placement, budget.held_back))
        params, table = _params(plan, ranges, fmt, overrides)
        kept = float_weights(graph, plan) if opts.bias_correction else {}
        result = insert_qdq_pairs(graph, plan, params, fmt, quantize_biases=plan.scheme == "full",
                                  weight_qmax=weight_qmax, weight_overrides=overrides)
        _fill_report(report, plan, result, table, target, weight_qmax, opts, budget)
        if sites is not None:
            report.details["insert-qdq"]["site_choice"] = sites
        if full_range:
            report.details["insert-qdq"]["notes"].append(
                f"{len(full_range)} LayerNorm/GELU output(s) calibrated with minmax: percentile would clip "
                "their outlier channels")
        report.details["insert-qdq"]["notes"][:0] = rewrites
        if opts.bias_correction:
            _correct_biases(graph, kept, ctx, opts, report)
        if opts.embeddings:
            _quantize_embeddings(graph, target, exclude, report)
        if overrides:
            report.details["insert-qdq"]["overrides"] = _overrides_used(overrides, plan, table, result)
        return report


def _smooth(graph, ctx: PassContext, opts: InsertQdqOptions, target: str, report: PassReport) -> None:
    """smooth-quant's folds before placement; details only where there was something to fold."""
    from onnxcomp.passes.qdq.smoothquant import SmoothQuantOptions, find_sites, smooth

    if ctx.data is None or opts.stats is not None or opts.calib_cache is not None:  # the folds need samples, and would rename what stats hold
        if find_sites(graph)[0]:
                report.details["smooth-quant"] = {"target": target, "sites": [],
                                              "note": "not smoothed: calibration statistics given (--calib-stats)"}
        return
    sq = SmoothQuantOptions(target=target, exclude=opts.exclude, exclude_op=opts.exclude_op,
                            calib_batch_size=opts.calib_batch_size)
    details = smooth(graph, ctx, sq, report)
    if details["sites"] or details.get("attention_scales") or details.get("attention_biases"):
        report.details["smooth-quant"] = details


def with_default_method(opts: InsertQdqOptions, target: str) -> InsertQdqOptions:
    """`opts` with its calibration method set: the target's default when none was given."""
    from dataclasses import replace

    return opts if opts.method else replace(opts, method=default_method(activation_format(target).symmetric))


def _placement(opts: InsertQdqOptions, target: str, exclude: Exclusion) -> PlacementOptions:
    return PlacementOptions(target=target, scheme=opts.scheme, per_channel=opts.per_channel,
                            op_types=tuple(opts.op_types), exclude=exclude)


def calibrated_tensors(graph, opts: InsertQdqOptions, ctx: PassContext) -> list[str]:
    """The activations insert-qdq with `opts` calibrates on `graph` (after the model checks it makes):
    what `onnxcomp calibrate` collects, so statistics made ahead of time hold exactly the tensors the
    pass asks for, fetched together as the pass would fetch them."""
    _check_model(graph, ctx, opts)
    exclude = Exclusion(tuple(opts.exclude), tuple(opts.exclude_op))
    exclude.check("insert-qdq", graph)
    target = opts.target or ctx.target or "ort"
    _prepare(graph, target)
    plan = plan_placement(graph, _placement(opts, target, exclude))
    return _range_tensors(plan)


def _nothing_quantized(report: PassReport, plan: QdqPlacement) -> None:
    for name, reason in plan.skipped:
        report.skip(name, reason)
    for key in ("int8_nodes", "qdq_activations", "int8_weights"):
        report.count(key, 0)
    report.count("float_nodes", len(plan.skipped))


def _nothing(why: str, rewrites: list[str]) -> str:
    return why if not rewrites else f"{why} ({len(rewrites)} exact rewrite(s) made: {'; '.join(rewrites[:3])})"


def _prepare(graph, target: str) -> list[str]:
    """Exact rewrites before placement: the model's own Cast+Mul INT8 weights as DequantizeLinear
    (kept as they are, not quantized twice), and for TensorRT its UINT8 Casts moved to the edge."""
    notes = dequantize_cast_weights(graph)
    if target == "tensorrt":
        notes += move_casts_to_edge(graph)
    return notes


def _range_tensors(plan: QdqPlacement) -> list[str]:
    return sorted({t for names in plan.range_groups().values() for t in names})


def histogram_bins(method: str) -> int:
    """Histogram bins calibration keeps for `method`: minmax needs none, which makes it several times cheaper."""
    return 0 if method == "minmax" else 2048  # None (the target's default, not known here): keep histograms


def _check_model(graph, ctx: PassContext, opts: InsertQdqOptions) -> None:
    found = next((n for n in graph.nodes if n.op in _QDQ_OPS and not is_weight_dequantize(n)), None)
    if found is not None:
        raise InputError(f"insert-qdq: the model is already quantized ({found.op} node {found.name!r}); "
                         "quantize the float model instead")
    opset = graph.opset
    if opset is not None and opset < 13:
        raise InputError(f"insert-qdq: model opset {opset} < 13 (per-channel Q/DQ needs 13); convert it first, "
                         "e.g. onnx.version_converter.convert_version(model, 13)")
    if ctx.data is None and opts.stats is None and opts.calib_cache is None:
        raise InputError("insert-qdq: calibration data is required: pass --calib FILE.npz (one array per model "
                         "input, first axis = samples) or --calib FILE.py:FUNCTION (feed dicts, one per model call), "
                         "or --calib-stats FILE from `onnxcomp calibrate`")
    needs = "max_drop" if opts.max_drop is not None else "bias_correction" if opts.bias_correction else None
    if ctx.data is None and needs:
        raise InputError(f"insert-qdq: {needs} measures on samples, and a statistics file holds none: "
                         "pass --calib data too")


def _weight_qmax(target: str, opts: InsertQdqOptions) -> int:
    reduce = opts.reduce_range
    if reduce is None:
        reduce = target == "ort" and host_needs_reduced_range()
    return REDUCED_WEIGHT_QMAX if reduce else WEIGHT_QMAX


def _without_uncalibrated(graph, placement: PlacementOptions, plan: QdqPlacement, ranges: dict):
    """Re-plan until every range group has a calibrated tensor: a tensor calibration never saw (not
    float after all, or on a path the data never takes) leaves the nodes reading it in float, each
    with its reason in the report, instead of failing the pass."""
    from dataclasses import replace

    for _ in range(8):  # each round only removes tensors; two rounds are the most seen
        missing = {n for names in plan.range_groups().values() if not any(t in ranges for t in names)
                   for n in names}
        if not missing:
            break
        placement = replace(placement, uncalibrated=placement.uncalibrated | frozenset(missing))
        plan = plan_placement(graph, placement)
    return placement, plan


def _with_float(placement: PlacementOptions, nodes) -> PlacementOptions:
    from dataclasses import replace

    return replace(placement, float_nodes=frozenset(nodes))


def _full_range(graph, plan: QdqPlacement, opts: InsertQdqOptions, default_method: bool) -> set[str]:
    """Tensors calibrated with minmax although the method clips: LayerNorm/GELU outputs under the
    target's default percentile (passes/qdq/outlier_ranges.py); none when the method was chosen."""
    from onnxcomp.passes.qdq.outlier_ranges import full_range_tensors

    if not default_method or opts.method != "percentile" or opts.calib_cache is not None:
        return set()  # (a calibration cache holds ranges, not statistics to choose from)
    return full_range_tensors(graph, _range_tensors(plan))


def _calibrate(model, data, plan: QdqPlacement, opts: InsertQdqOptions, symmetric: bool, ctx: PassContext,
               full_range: set[str] = frozenset()) -> dict:
    from onnxcomp.passes.qdq.calibration import choose_ranges, collect_stats

    tensors = _range_tensors(plan)
    if opts.calib_cache is not None:
        from onnxcomp.passes.qdq.calibration.cache_formats import cached_ranges

        return cached_ranges(opts.calib_cache, tensors)
    if opts.stats is not None:
        from onnxcomp.passes.qdq.calibration.stats import read_stats

        stats = read_stats(opts.stats, model, tensors, opts.method)
        ctx.say(f"insert-qdq: statistics of {stats.samples} samples from {opts.stats}")
    else:
        stats = collect_stats(model, data, tensors=tensors, batch_size=opts.calib_batch_size,
                              num_bins=histogram_bins(opts.method), progress=ctx.progress)
    ranges = choose_ranges(stats, method=opts.method, percentile=opts.percentile, symmetric=symmetric, bits=8)
    kept = [t for t in stats.names() if t in full_range]
    if kept:
        ranges.update(choose_ranges(stats, method="minmax", symmetric=symmetric, bits=8, names=kept))
    return ranges


def _params(plan: QdqPlacement, ranges: dict, fmt, overrides: dict | None = None) -> tuple[dict, list[dict]]:
    """One (scale, zero point) per range group: the union of its tensors' calibrated ranges, or what an
    override of one of its tensors fixes."""
    params, table = {}, []
    for key, names in plan.range_groups().items():
        found = [ranges[n] for n in names if n in ranges]
        if not found:
            raise InputError(f"insert-qdq: no calibration range for tensor {key!r} (it never ran on the data)")
        lo = min(float(r.lo) for r in found)
        hi = max(float(r.hi) for r in found)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise InputError(f"insert-qdq: calibrated range of {key!r} is not finite ({lo}, {hi})")
        scale, zp = activation_params(lo, hi, fmt)
        fixed = next((overrides[n] for n in [key, *names] if overrides and n in overrides), None)
        if fixed is not None:
            scale, zp, _ = override_params(fixed, lo, hi, fmt)
        params[key] = (scale, zp)
        own = ranges.get(key, found[0])
        table.append({"tensor": key, "shared_by": sorted(n for n in names if n != key),
                      "lo": lo, "hi": hi, "scale": float(scale), "zero_point": int(zp),
                      "method": getattr(own, "method", None), "sqnr_db": _round(getattr(own, "sqnr_db", None)),
                      "clipped": _round(getattr(own, "clipped", None), 6),
                      "outliers_ignored": int(getattr(own, "outliers", 0) or 0)})
    return params, table


def _round(x, digits: int = 2):
    if x is None or not np.isfinite(float(x)):
        return None
    return round(float(x), digits)


def _builder(float_model, placement: PlacementOptions, ranges: dict, fmt, weight_qmax: int, overrides: dict):
    """build(float_nodes) -> the quantized ModelProto with those nodes (and the placement's own) left float;
    its `rewrite(graph, float_nodes)` does the same edits in place (what the gated max_drop search taps)."""
    from onnxcomp.graph.convert import to_graph, to_model

    def rewrite(graph, float_nodes):
        trial = plan_placement(graph, _with_float(placement, float_nodes))
        params, _ = _params(trial, ranges, fmt, overrides)
        insert_qdq_pairs(graph, trial, params, fmt, quantize_biases=trial.scheme == "full", weight_qmax=weight_qmax,
                         weight_overrides=overrides)

    def build(float_nodes):
        graph = to_graph(float_model)
        rewrite(graph, float_nodes)
        return to_model(graph)

    build.rewrite = rewrite
    return build


def _fit_budget(float_model, plan: QdqPlacement, placement: PlacementOptions, build, opts: InsertQdqOptions,
                ctx: PassContext):
    from onnxcomp.graph.convert import to_graph

    data = ctx.data.first(opts.sensitivity_samples)
    graph = to_graph(float_model)  # planned on, never edited

    def plan_of(float_nodes):
        return plan_placement(graph, _with_float(placement, float_nodes))

    return choose_float_layers(float_model, build, list(plan.nodes), data, opts.max_drop, build.rewrite, plan_of)


def _choose_sites(graph, plan: QdqPlacement, build, float_model, opts: InsertQdqOptions, ctx: PassContext):
    """The measured per-kind choice (passes/qdq/site_choice.py), as report details (a note where it does not apply)."""
    from onnxcomp.passes.qdq.site_choice import SiteChoiceLimits, choose_sites, site_kinds
    from onnxcomp.pipeline.budget import drop_measure

    if plan.scheme != "inputs" or ctx.data is None:
        why = "needs calibration samples" if ctx.data is None else f"only for the ort transformer placement " \
                                                                   f"(scheme inputs), not {plan.scheme}"
        return {"note": f"sites=measured not applied: {why}", "kinds": [], "float_nodes": []}
    limits = SiteChoiceLimits()
    data = ctx.data.first(limits.samples)
    feeds = next(iter(ctx.data.first(limits.latency_batch).batches(limits.latency_batch)))
    choice = choose_sites(build, site_kinds(graph, list(plan.nodes)), drop_measure(float_model, data), feeds,
                          limits, ctx.say)
    return choice.as_dict(limits, {k: list(np.shape(v)) for k, v in feeds.items()})


def _fill_report(report: PassReport, plan: QdqPlacement, result, table, target: str, weight_qmax: int,
                 opts: InsertQdqOptions, budget) -> None:
    report.modified = True
    report.count("int8_nodes", len(plan.nodes))
    report.count("qdq_activations", result.activations)
    report.count("int8_weights", len(result.weights))
    if result.biases:
        report.count("int32_biases", result.biases)
    for name, reason in plan.skipped:
        report.skip(name, reason)
    report.count("float_nodes", len(plan.skipped))
    details = {"target": target, "scheme": plan.scheme, "method": opts.method, "per_channel": opts.per_channel,
               "weight_qmax": weight_qmax,
               "int8_nodes": list(plan.nodes), "activations": table, "weights": result.weights,
               "notes": list(plan.notes)}
    if opts.stats is not None:
        details["stats"] = str(opts.stats)
    if result.float_bias and plan.scheme == "full":
        details["float_bias"] = result.float_bias
    if budget is not None:
        details["budget"] = {"max_drop": opts.max_drop, "float_nodes": budget.held_back,
                             "drop_all_int8": budget.full.drop, "drop": budget.fidelity.drop,
                             "fidelity": budget.fidelity.as_dict(), "trials": budget.trials,
                             "sensitivity": sensitivity_table(budget), "measured_on": "calibration data",
                             "estimated_runs": budget.estimates}  # runs of the gated session (sensitivity.py)
    report.details["insert-qdq"] = details


def _correct_biases(graph, kept: dict, ctx: PassContext, opts: InsertQdqOptions, report: PassReport) -> None:
    from onnxcomp.graph.convert import to_model

    layers, skipped = find_layers(graph, kept)
    for name, reason in skipped:
        report.skip(name, f"bias correction: {reason}")
    ctx.say(f"insert-qdq: measuring the output shift of {len(layers)} quantized layers")
    rows = correct_biases(graph, to_model(graph), ctx.data, layers, opts.calib_batch_size) if layers else []
    report.count("corrected_biases", sum(row["corrected"] for row in rows))
    report.details["insert-qdq"]["bias_correction"] = rows


def _quantize_embeddings(graph, target: str, exclude: Exclusion, report: PassReport) -> None:
    if target == "tensorrt":
        why = "kept float for TensorRT (it takes INT8 weights only into its weighted layers)"
        rows, skipped = [], [(node_key(n), why) for n in eligible_gathers(graph, exclude)[0]]
    else:
        rows, skipped = quantize_tables(graph, "gather", exclude)
    for name, reason in skipped:
        report.skip(name, f"embedding table: {reason}")
    if rows:
        report.modified = True
    report.count("int8_tables", len(rows))
    report.details["insert-qdq"]["embeddings"] = rows


def _overrides_used(overrides: dict, plan: QdqPlacement, table: list[dict], result) -> list[dict]:
    """Each override and what it set: the range group it fixed, the weight, or nothing (not quantized)."""
    groups = {n: row["tensor"] for row in table for n in [row["tensor"], *row["shared_by"]]}
    weights = {w["weight"] for w in result.weights}
    return [{"tensor": name, "applied_to": groups.get(name, name if name in weights else None)}
            for name in overrides]
