"""sparsify-initializers: zero weight elements by magnitude, per tensor, globally, or N:M (lossy)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.graph.convert import to_model
from onnxcomp.graph.op_facts import WEIGHTED_OPS
from onnxcomp.graph.weights import on_disk
from onnxcomp.passes.sparsify.budget import choose_dense_tensors, sensitivity, with_sparse
from onnxcomp.passes.sparsify.eligibility import find_weights, nm_refusal, values_of
from onnxcomp.passes.sparsify.masks import (
    NORMALIZATIONS,
    Normalization,
    global_masks,
    magnitude_mask,
    nm_mask,
)
from onnxcomp.passes.sparsify.nm import nm_violations, parse_nm, zero_fraction
from onnxcomp.passes.sparsify.streaming import sparsify_on_disk
from onnxcomp.pipeline.budget import drop_measure
from onnxcomp.pipeline.options import (
    Exclusion,
    Range,
    check_ranges,
    exclude_op_option,
    exclude_option,
    max_drop_option,
)
from onnxcomp.pipeline.pass_base import Pass, PassContext, PassReport
from onnxcomp.pipeline.registry import register_pass


@dataclass(frozen=True)
class SparsifyOptions:
    sparsity: str = field(default="0.5", metadata={
        "help": "fraction of zeros, 0 <= r < 1 (e.g. 0.5 or 50%), or an N:M pattern: at most N non-zeros in "
                "every M consecutive weights along the reduction axis (2:4 for TensorRT sparse kernels)",
        "metavar": "RATIO|N:M"})
    scope: Optional[Literal["layer", "global"]] = field(default=None, metadata={
        "help": "ratio per tensor (layer) or across all eligible tensors (global, ranked by normalised "
                "magnitude); default global for a ratio. N:M is always per group"})
    exclude: tuple[str, ...] = exclude_option()  # matches the weighted node or the weight itself
    exclude_op: tuple[str, ...] = exclude_op_option()
    max_drop: Optional[float] = max_drop_option()
    min_size: int = field(default=256, metadata={"help": "leave tensors with fewer elements dense", "range": Range(0)})
    ops: tuple[str, ...] = field(default=WEIGHTED_OPS, metadata={"help": "op types whose weights qualify"})
    normalize: Normalization = field(default="lamp", metadata={
        "help": "global scope: how magnitudes are made comparable across tensors (lamp: layer-adaptive "
                "magnitude scores; rms: |w|/rms; none: raw |w|)"})
    max_tensor_sparsity: float = field(default=0.98, metadata={
        "help": "global scope: no tensor loses more than this fraction", "range": Range(0, 1, lo_open=True)})
    method: Literal["auto", "magnitude", "obs"] = field(default="auto", metadata={
        "help": "which weights to zero: magnitude (no data needed) or obs (needs sample data: choose by "
                "output-error saliency and let the kept weights absorb the error, layer by layer, like "
                "SparseGPT); auto = obs when sample data is given"})
    samples: int = field(default=512, metadata={"help": "sample-data rows used for obs, fidelity and max_drop",
                                                "range": Range(1)})

    def __post_init__(self) -> None:
        check_ranges(self, "sparsify-initializers")
        object.__setattr__(self, "sparsity", str(self.sparsity).strip())
        parse_spec(self.sparsity)
        if self.scope == "global" and parse_spec(self.sparsity)[0] == "nm":
            raise InputError(f"sparsify-initializers: scope=global applies to a ratio; {self.sparsity} is "
                             "per group of M weights")
        if self.normalize not in NORMALIZATIONS:
            raise InputError(f"sparsify-initializers: normalize must be one of {', '.join(NORMALIZATIONS)}")


def parse_spec(text: str) -> tuple:
    """("ratio", r) or ("nm", n, m); a one-line InputError for anything else."""
    try:
        nm = parse_nm(text)
    except ValueError as exc:
        raise InputError(f"sparsify-initializers: sparsity {exc}") from None
    if nm:
        return ("nm",) + nm
    raw = text[:-1] if text.endswith("%") else text
    try:
        ratio = float(raw) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise InputError(f"sparsify-initializers: sparsity {text!r} is neither a ratio (0.5) nor N:M (2:4)") from None
    if not 0 <= ratio < 1:
        raise InputError(f"sparsify-initializers: sparsity {text!r} must be in [0, 1)")
    return ("ratio", ratio)


@register_pass
class SparsifyInitializersPass(Pass):
    """Zero the smallest weights of Conv/ConvTranspose/Gemm/MatMul: a ratio (per tensor or global) or N:M (lossy).

    Needs nothing but the graph; with sample data it reports fidelity and, given max_drop,
    leaves the most sensitive tensors dense until the measured drop is within budget.
    Guarantees: only weights of the chosen ops change, only to exact zeros; N:M patterns are
    verified on every group; a second run changes nothing.
    """

    name = "sparsify-initializers"
    exact = False
    Options = SparsifyOptions

    def run(self, graph, ctx: PassContext) -> PassReport:
        o = self.options
        spec = parse_spec(o.sparsity)
        scope = "group" if spec[0] == "nm" else (o.scope or "global")
        if o.max_drop is not None and ctx.data is None:
            raise InputError("sparsify-initializers: max_drop needs sample data (pass --calib FILE.npz)")
        if o.method == "obs" and ctx.data is None:
            raise InputError("sparsify-initializers: method=obs needs sample data (pass --calib FILE.npz)")
        method = "obs" if o.method == "obs" or (o.method == "auto" and ctx.data is not None) else "magnitude"
        if method == "magnitude" and o.method == "auto":
            ctx.say("sparsify-initializers: no sample data, choosing weights by magnitude alone "
                    "(pass --calib FILE.npz for data-aware selection and reconstruction)")
        report = PassReport()
        exclude = Exclusion(tuple(o.exclude), tuple(o.exclude_op))
        exclude.check("sparsify-initializers", graph)
        survey = find_weights(graph, tuple(o.ops), exclude, o.min_size)
        for name, reason in survey.skipped:
            report.skip(name, reason)
        candidates = []
        for cand in survey.candidates:
            reason = nm_refusal(cand, spec[2]) if spec[0] == "nm" else None
            if reason:
                report.skip(cand.name, reason)
            else:
                candidates.append(cand)
        if on_disk(graph) and method == "magnitude" and o.max_drop is None:
            return _on_disk(graph, spec, scope, candidates, o, report, ctx)
        dense = {c.name: values_of(c.constant) for c in candidates}
        keep = _masks(spec, scope, candidates, dense, o)
        sparse = {n: np.where(keep[n], dense[n], np.zeros((), dense[n].dtype)).astype(dense[n].dtype)
                  for n in dense}
        methods = {n: "magnitude" for n in dense}
        samples = ctx.data.first(o.samples) if ctx.data is not None else None  # obs, fidelity, max_drop
        if method == "obs" and candidates:
            _data_aware(graph, spec, candidates, dense, keep, sparse, methods, samples, ctx)
        changed = [n for n in dense if not np.array_equal(sparse[n], dense[n])]
        constants = {c.name: c.constant for c in candidates}
        chosen, budget, measure = changed, None, None
        if samples is not None and changed:
            measure = drop_measure(to_model(graph), samples)  # against the dense graph, which runs once
        if measure is not None and o.max_drop is not None:
            budget = choose_dense_tensors(with_sparse(graph, constants, dense, sparse, changed), measure, changed,
                                          o.max_drop)
            chosen = [name for name in changed if name not in budget.held_back]
            alone = sensitivity(budget)
            for name in budget.held_back:
                report.skip(name, f"left dense: most sensitive (1-cosine {alone[name]:.2e} alone) "
                                  f"for max_drop {o.max_drop}")
        for name in chosen:
            constants[name].values = sparse[name]
        _describe(report, spec, scope, candidates, dense, sparse, set(chosen), graph)
        for row in report.details["tensors"]:
            row["method"] = methods[row["name"]]
        report.details["method"] = method
        if measure is not None:
            fid = budget.fidelity if budget is not None else measure(to_model(graph))  # graph already sparse
            report.details["fidelity"] = fid.as_dict()
            report.details["fidelity_samples"] = samples.samples
            report.stats["drop"] = round(float(fid.drop), 5)
            report.stats["cosine"] = round(float(fid.cosine), 6)
            if budget is not None:
                report.details["sensitivity"] = sensitivity(budget)
                report.stats["left_dense"] = len(budget.held_back)
                report.stats["trials"] = budget.trials
        report.modified = bool(chosen)
        ctx.say(f"sparsify-initializers: {len(chosen)} tensor(s) sparsified ({o.sparsity}, {scope}), "
                f"zero fraction {report.stats.get('zero_fraction', 0):.3f}")
        return report


def _on_disk(graph, spec, scope, candidates, o, report, ctx) -> PassReport:
    """The pass for a graph whose weights stay on disk: one tensor in memory at a time (streaming.py)."""
    rows, storage, zeros, total = sparsify_on_disk(spec, scope, candidates, o)
    chosen = sum(r["sparsified"] for r in rows)
    report.details.update(tensors=rows, scope=scope, storage=storage, method="magnitude")
    report.stats.update(sparsified=chosen, eligible=len(candidates),
                        zero_fraction=round(float(zeros / total), 4) if total else 0.0,
                        model_zero_fraction=round(float(_model_zero_fraction(graph)), 4))
    report.modified = bool(chosen)
    ctx.say(f"sparsify-initializers: {chosen} tensor(s) sparsified ({o.sparsity}, {scope}, one at a time: "
            f"weights on disk), zero fraction {report.stats['zero_fraction']:.3f}")
    return report


def _masks(spec, scope, candidates, dense, o) -> dict:
    if spec[0] == "nm":
        _, n, m = spec
        return {c.name: nm_mask(dense[c.name], next(iter(c.axes)), n, m) for c in candidates}
    ratio = spec[1]
    if scope == "global":
        return global_masks(dense, ratio, o.normalize, o.max_tensor_sparsity)
    return {name: magnitude_mask(values, ratio) for name, values in dense.items()}


def _data_aware(graph, spec, candidates, dense, keep, sparse, methods, data, ctx) -> None:
    """Replace magnitude results by OBS-reconstructed ones where the layer allows, in graph order."""
    from onnxcomp.passes.sparsify.data_aware import refusal, sparsify_with_data

    try:
        for index, cand in enumerate(candidates):
            name = cand.name
            reason = refusal(cand, dense[name])
            if reason:
                methods[name] = f"magnitude ({reason})"
            else:
                ctx.say(f"obs {index + 1}/{len(candidates)}: {name}")
                if spec[0] == "nm":
                    sparse[name] = sparsify_with_data(graph, cand, dense[name], data, nm=spec[1:])
                else:
                    ratio = 1.0 - np.count_nonzero(keep[name]) / keep[name].size  # exact per-tensor count
                    sparse[name] = sparsify_with_data(graph, cand, dense[name], data, ratio=ratio)
                methods[name] = "obs"
            cand.constant.values = sparse[name]  # later layers see this layer sparse
    finally:
        for cand in candidates:
            cand.constant.values = dense[cand.name]


def _describe(report, spec, scope, candidates, dense, sparse, chosen, graph) -> None:
    rows, zeros, total = [], 0, 0
    for cand in candidates:
        name = cand.name
        after = sparse[name] if name in chosen else dense[name]
        row = {"name": name, "ops": cand.ops, "nodes": [u.node for u in cand.uses], "shape": list(cand.shape),
               "sparsity_before": round(zero_fraction(dense[name]), 5),
               "sparsity_after": round(zero_fraction(after), 5),
               "pattern": "unstructured" if spec[0] == "ratio" else f"{spec[1]}:{spec[2]}",
               "sparsified": name in chosen}
        if spec[0] == "nm":
            axis = next(iter(cand.axes))
            bad, groups = nm_violations(after, axis, spec[1], spec[2])
            row.update(axis=axis, groups=groups, groups_violating=bad, pattern_verified=bad == 0)
            if name in chosen and bad:
                raise AssertionError(f"{name}: {bad} of {groups} groups break {spec[1]}:{spec[2]}")  # a bug, not input
        rows.append(row)
        zeros += after.size - np.count_nonzero(after)
        total += after.size
    report.details["tensors"] = rows
    report.details["scope"] = scope
    report.details["storage"] = _storage(candidates, dense, sparse, chosen)
    report.stats["sparsified"] = len(chosen)
    report.stats["eligible"] = len(candidates)
    report.stats["zero_fraction"] = round(float(zeros / total), 4) if total else 0.0
    report.stats["model_zero_fraction"] = round(float(_model_zero_fraction(graph)), 4)


def _storage(candidates, dense, sparse, chosen, limit: int = 256 * 2**20) -> dict:
    """Bytes of the eligible weights: raw, gzip before/after, and as ONNX sparse_initializers.

    Zeros do not make ONNX Runtime faster on CPU, but they compress; gzip is skipped above
    `limit` bytes to keep the pass fast on large models.
    """
    import gzip

    from onnxcomp.passes.sparsify.storage import sparse_bytes

    after = [sparse[c.name] if c.name in chosen else dense[c.name] for c in candidates]
    raw = sum(a.nbytes for a in after)
    info = {"raw_bytes": raw, "sparse_initializer_bytes": sum(min(sparse_bytes(a), a.nbytes) for a in after)}
    if raw <= limit:
        info["gzip_bytes_before"] = len(gzip.compress(b"".join(dense[c.name].tobytes() for c in candidates), 6))
        info["gzip_bytes_after"] = len(gzip.compress(b"".join(a.tobytes() for a in after), 6))
    return info


def _model_zero_fraction(graph) -> float:
    """Zeros among all floating-point initializer elements of the graph (after the pass)."""
    import onnx_graphsurgeon as gs

    zeros = total = 0
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and np.dtype(tensor.dtype).kind == "f":
            values = values_of(tensor)
            zeros += values.size - np.count_nonzero(values)
            total += values.size
    return zeros / total if total else 0.0
