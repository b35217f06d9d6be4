"""factorize-lowrank: MatMul/Gemm/Conv weights replaced by two thin factors under a parameter budget (lossy).

Without data the factors are the weight's own SVD; with sample data (ctx.data) they are
activation-whitened (the layer's output error on its real inputs is what is minimized), and the
ranks are shared out across layers by that measured error, as it is on rows the factors were not
fitted on (overfit.py); the LayerNorms after them are refitted in closed form (norm_refit.py).
`kept` is the fraction of the factorizable weights' parameters the factors may hold; layers where no rank pays
(r * (m + n) >= m * n) and layers the budget leaves whole are reported with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.passes.lowrank.factors import spectrum
from onnxcomp.passes.lowrank.layers import Layer, as_matrix, find_layers, from_matrix, weight_source
from onnxcomp.passes.lowrank.plan import LowRankPlan
from onnxcomp.passes.lowrank.ranks import WHOLE, allocate
from onnxcomp.passes.lowrank.rewrite import factorize
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
class FactorizeLowRankOptions:
    kept: float = field(default=0.75, metadata={
        "help": "fraction of the factorizable weights' parameters the two factors keep (0.75 = a quarter fewer)",
        "range": Range(0, 1, lo_open=True, hi_open=True), "metavar": "FRACTION"})
    method: Literal["auto", "svd", "whitened"] = field(default="auto", metadata={
        "help": "svd: the weights' own SVD (no data); whitened: SVD weighted by each layer's real inputs, "
                "ranks shared out by the measured output error (needs sample data); auto = whitened with data"})
    round_to: int = field(default=8, metadata={"help": "ranks are multiples of this (blocked kernels want it)",
                                               "range": Range(1)})
    sensitivity: Literal["model", "layer"] = field(default="model", metadata={
        "help": "with sample data, how the ranks are shared out: model = by the drop of the model's outputs each "
                "layer causes alone (one measured run per layer), layer = by the layers' own output errors"})
    refit: bool = field(default=False, metadata={
        "help": "with sample data, fit each layer's factors in graph order on the inputs the already-factorized "
                "layers give it (the errors do not add up through the depth)"})
    held_out: bool = field(default=True, metadata={
        "help": "with sample data, share the ranks out by each layer's error on rows its factors were not fitted on "
                "(two halves of the data, fitted on one and measured on the other), not on the fitted rows"})
    refit_norms: bool = field(default=True, metadata={
        "help": "with sample data, refit the LayerNorms' scales and shifts after factorizing (least squares per "
                "channel, so each norm gives the original model's output back)"})
    downstream: bool = field(default=True, metadata={
        "help": "with sample data, fit an attention block's query, key and value, and a feed-forward block's up "
                "projection, to the error the block's output sees, not to their own outputs"})
    mask: str = field(default="auto", metadata={
        "help": "with sample data, the padding mask input whose padded positions (0) the fit leaves out: auto = the "
                "one input named *mask* holding 0/1 per [batch, sequence] with padding in the data; none = every row"})
    exclude: tuple[str, ...] = exclude_option()
    exclude_op: tuple[str, ...] = exclude_op_option()
    max_drop: float | None = max_drop_option()
    plan: str | None = field(default=None, metadata={"help": "apply this JSON LowRankPlan instead of choosing"})
    write_plan: str | None = field(default=None, metadata={"help": "write the chosen LowRankPlan here (JSON)"})

    def __post_init__(self):
        check_ranges(self, "factorize-lowrank")


@register_pass
class FactorizeLowRankPass(Pass):
    """Replace MatMul/Gemm weights by two thin factors and Conv by a kxk conv to r channels and a 1x1 conv (lossy)."""

    name = "factorize-lowrank"
    exact = False
    Options = FactorizeLowRankOptions

    def run(self, graph, ctx: PassContext) -> PassReport:
        from onnxcomp.graph.convert import to_model
        from onnxcomp.graph.edit import NameGen
        from onnxcomp.measure.counts import estimate_macs, graph_counts

        o = self.options
        report = PassReport()
        layers, skipped = find_layers(graph, o.round_to if not o.plan else 1)
        layers, excluded = _exclude(o, graph, layers)
        skipped += excluded
        plan = LowRankPlan.load(o.plan) if o.plan else None
        if not layers:
            reasons = "; ".join(sorted({r for _, r in skipped}))[:300]
            raise InputError(f"factorize-lowrank: nothing to factorize ({len(skipped)} weighted nodes: "
                             f"{reasons or 'no MatMul/Gemm/Conv with a constant weight'})")
        method = plan.method if plan else _method(o.method, ctx.data)
        if method == "whitened" and ctx.data is None:
            raise InputError("factorize-lowrank: whitened factors need sample data (give --calib)")
        original = to_model(graph)
        macs_before = estimate_macs(original, ctx.dims)["macs"]
        params_before = graph_counts(graph)["params"]
        nodes = {(n.name or n.outputs[0].name): n for n in graph.nodes}
        moments, norms, halves = {}, {}, None
        mask = _mask(graph, o.mask, ctx) if method == "whitened" else None
        if method == "whitened":
            from onnxcomp.passes.lowrank.activations import input_moments
            from onnxcomp.passes.lowrank.norms import norm_after

            norms = {layer.node: norm_after(nodes[layer.node], layer.n) for layer in layers if layer.op != "Conv"}
            ctx.say(f"factorize-lowrank: input statistics of {len(layers)} layers "
                    f"({sum(v is not None for v in norms.values())} before a LayerNorm)")
            moments, halves = input_moments(graph, layers, ctx.data, norms=norms, folds=True, mask=mask)
        matrices = {layer.node: as_matrix(layer.op, weight_source(nodes[layer.node])[1], layer.attrs)
                    for layer in layers}
        fits = {layer.node: (moments.get(layer.node), _output_weight(norms.get(layer.node))) for layer in layers}
        downstream = _downstream_fits(graph, layers, matrices, fits, ctx, mask) if method == "whitened" and o.downstream \
            else {}
        fits.update(downstream)
        spectra = {layer.node: spectrum(matrices[layer.node], *fits[layer.node]) for layer in layers}
        error = lambda layer, rank: spectra[layer.node].relative_error(rank)
        if not plan and ctx.data is not None and o.sensitivity == "model":
            from onnxcomp.passes.lowrank.sensitivity import layer_weights

            sources = {layer.node: weight_source(nodes[layer.node])[1] for layer in layers}
            weights = layer_weights(original, layers, error, ctx.data, o.round_to, sources,
                                    lambda layer, rank: _dense(layer, spectra, rank, sources[layer.node]), ctx.say,
                                    mask if method == "whitened" else None)
            own = error
            error = lambda layer, rank: weights[layer.node] * own(layer, rank)
        overfit = None
        if not plan and halves is not None and o.held_out:
            error, overfit = _held_out(layers, matrices, norms, moments, halves, error,
                                       {node: fit for node, fit in spectra.items() if node not in downstream})
        if plan:
            ranks = plan.ranks_for(layers)
        else:
            ranks = _ranks(layers, error, o.kept, o.round_to)
            if o.max_drop is not None:
                ranks = _fit_budget(o, original, layers, spectra, error, ctx, report)
        if method == "whitened" and o.refit:
            from onnxcomp.passes.lowrank.sequential import corrected_spectra

            spectra = corrected_spectra(original, layers, {layer.node: weight_source(nodes[layer.node])[1]
                                                         for layer in layers}, ranks, spectra, ctx.data,
                                        lambda done, fitted: _build(original, layers, fitted, done), ctx.say,
                                        out_weights={node: fit[1] for node, fit in fits.items()},
                                        covariances={node: fit[0] for node, fit in fits.items()
                                                     if fit[0] is not moments.get(node)}, mask=mask)
        names = NameGen(graph)
        rows = []
        for layer in layers:
            rank = ranks.get(layer.node, WHOLE)
            if rank == WHOLE:
                skipped.append((layer.node, "kept whole: the budget does better elsewhere" if not plan
                                else "not in the plan"))
                continue
            _factorize_layer(graph, nodes[layer.node], layer, spectra, rank, names)
            rows.append({"node": layer.node, "op": layer.op, "shape": [layer.m, layer.n], "rank": rank,
                         "params_before": layer.params, "params_after": layer.cost(rank),
                         "error": round(error(layer, rank), 6)})
        graph.cleanup().toposort()
        if overfit is not None and rows:
            _say_overfit(report, ctx, [overfit(r["node"], r["rank"]) for r in rows])
        if method == "whitened" and o.refit_norms and rows:
            from onnxcomp.passes.lowrank.norm_refit import refit_norms

            report.stats["norms_refitted"] = refit_norms(graph, original, ctx.data, ctx.say, mask=mask)
        chosen = LowRankPlan(method, o.kept, [{"node": r["node"], "weight": _weight_of(layers, r["node"]),
                                               "op": r["op"], "shape": r["shape"], "rank": r["rank"]} for r in rows])
        if o.write_plan:
            chosen.save(o.write_plan)
        for key, reason in skipped:
            report.skip(key, reason)
        factor_params = sum(r["params_after"] for r in rows)
        report.modified = bool(rows)
        report.stats.update({
            "layers": len(layers), "factorized": len(rows), "left_whole": len(skipped),
            "params_before": params_before, "params_after": graph_counts(graph)["params"],
            "macs_before": macs_before, "macs_after": estimate_macs(to_model(graph), ctx.dims)["macs"],
        })
        report.details["method"] = method
        report.details["mask"] = mask
        report.details["layers"] = rows
        report.details["weights"] = {"before": sum(layer.params for layer in layers if ranks.get(layer.node)),
                                     "after": factor_params,
                                     "budget": sum(layer.params for layer in layers)}
        for r in rows:
            ctx.say(f"factorize-lowrank: {r['node']} {r['shape'][0]}x{r['shape'][1]} -> rank {r['rank']} "
                    f"({r['params_after'] / r['params_before']:.0%} of its weights, error {r['error']:.3g})")
        return report


BACKOFF_STEPS = 6


def _ranks(layers, error, kept: float, round_to: int) -> dict[str, int]:
    return allocate(layers, error, int(kept * sum(layer.params for layer in layers)), round_to)


def _factorize_layer(graph, node, layer: Layer, spectra: dict, rank: int, names) -> None:
    p, q = spectra[layer.node].factors(rank)
    _, values = weight_source(node)
    factorize(graph, node, p, q, values, layer.weight, names)


def _dense(layer: Layer, spectra: dict, rank: int, like):
    """The product of the layer's factors at `rank`, as the node reads its weight (for measuring a candidate)."""
    p, q = spectra[layer.node].factors(rank)
    return from_matrix(layer.op, p @ q, like, layer.attrs)


def _build(before, layers, spectra, ranks: dict):
    """A copy of `before` with the layers in `ranks` factorized (for measuring a candidate)."""
    import onnx

    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.graph.edit import NameGen

    copy = onnx.ModelProto()
    copy.CopyFrom(before)
    g = to_graph(copy)
    nodes = {(n.name or n.outputs[0].name): n for n in g.nodes}
    names = NameGen(g)
    for layer in layers:
        if ranks.get(layer.node, WHOLE) != WHOLE:
            _factorize_layer(g, nodes[layer.node], layer, spectra, ranks[layer.node], names)
    return to_model(g.cleanup().toposort())


def _fit_budget(o, before, layers, spectra, error, ctx: PassContext, report: PassReport) -> dict[str, int]:
    """The ranks at the smallest kept fraction (from `kept` up) whose measured drop fits max_drop, `before`
    the ModelProto not yet factorized: bisections of the removed fraction 1 - kept (onnxcomp.pipeline.budget)."""
    from onnxcomp.errors import ToleranceError
    from onnxcomp.pipeline.budget import BudgetSearch, drop_measure

    if ctx.data is None:
        raise InputError("factorize-lowrank: max_drop needs sample data (give --calib) to measure the drop")
    build = lambda ranks: _build(before, layers, spectra, ranks)

    def candidate_at(level: float):
        ranks = _ranks(layers, error, 1.0 - level, o.round_to)
        return ranks if any(r != WHOLE for r in ranks.values()) else None

    search = BudgetSearch("factorize-lowrank", build, drop_measure(before, ctx.data), o.max_drop,
                          key=lambda ranks: tuple(sorted(ranks.items())))
    result = search.back_off(1.0 - o.kept, BACKOFF_STEPS, candidate_at)
    trials = [{"kept": round(1.0 - t.step, 6), "drop": t.drop} for t in result.trials]
    report.details["backoff"] = trials
    if not result.met:
        best = min(trials, key=lambda t: t["drop"])
        raise ToleranceError(f"factorize-lowrank: no kept fraction fits max_drop {o.max_drop}: kept {best['kept']:.3g} "
                             f"already drops {best['drop']:.4f} (kept {o.kept} drops {trials[0]['drop']:.4f})")
    if result.level < 1.0 - o.kept:
        report.stats["kept_used"] = round(1.0 - result.level, 6)
    report.stats["measured_drop"] = round(result.fidelity.drop, 6)
    return result.candidate


def _downstream_fits(graph, layers, matrices: dict, fits: dict, ctx: PassContext, mask: str | None) -> dict:
    """{layer: (input covariance, output weight)} for the attention blocks' query, key and value and the
    feed-forward blocks' up projections: the errors as the block's output sees them."""
    from onnxcomp.passes.lowrank.attention import attention_fits, find_attention
    from onnxcomp.passes.lowrank.ffn import ffn_fits, find_ffn

    out_weights = {node: fit[1] for node, fit in fits.items()}
    blocks, ffns = find_attention(graph, layers), find_ffn(graph, layers)
    found = attention_fits(graph, blocks, layers, matrices, out_weights, ctx.data, mask=mask) if blocks else {}
    ups = ffn_fits(graph, ffns, matrices, out_weights, ctx.data, mask=mask)
    ctx.say(f"factorize-lowrank: {len(found) // 3} of {len(blocks)} attention blocks and {len(ups)} of "
            f"{len(ffns)} feed-forward up projections fitted at the block's output")
    new = {node: (fits[node][0] if covariance is None else covariance, weight)
           for node, (covariance, weight) in found.items()}
    return new | {node: (fits[node][0], weight) for node, weight in ups.items() if node not in new}


def _held_out(layers, matrices: dict, norms: dict, moments: dict, halves: list, error, plain: dict):
    """`error` scaled, rank by rank, by how much worse each layer's factors do on held-out rows (overfit.py),
    and that scale (layer node, rank) -> held-out / in-sample error;
    measured in the layer's own output metric (its inputs, its LayerNorm), the one both halves give.
    `plain`: {layer node: its spectrum} for the layers fitted in that metric already."""
    from onnxcomp.passes.lowrank.overfit import overfit_scales

    scales = {layer.node: overfit_scales(matrices[layer.node], moments[layer.node],
                                         [half[layer.node] for half in halves], _output_weight(norms.get(layer.node)),
                                         plain.get(layer.node))
              for layer in layers}
    scale = lambda node, rank: float(scales[node][min(rank, len(scales[node]) - 1)])
    return (lambda layer, rank: error(layer, rank) * scale(layer.node, rank)), scale


NARROW = 1.5  # median held-out / in-sample error of the factorized layers above which the data is called narrow


def _say_overfit(report, ctx: PassContext, ratios: list[float]) -> None:
    """Record how much worse the chosen factors do on held-out rows, and say so when the sample data is too
    narrow for them. On the real MiniLM at 0.75 kept: 64 inputs of 60 sentences, median 1.96 and 0.947 pooled
    cosine on test sentences; 510 inputs of 255 sentences at the test's lengths, median 1.04 and 0.962
    (1008 inputs: 1.03, 0.964)."""
    ratio = float(np.median(ratios))
    report.stats["held_out_ratio"] = round(ratio, 3)
    if ratio > NARROW:
        from onnxcomp.passes.lowrank.overfit import MOST

        worse = f"at least {MOST:.0f}x" if ratio >= MOST else f"{ratio:.1f}x"  # the scales stop at MOST
        ctx.say(f"factorize-lowrank: the factors do {worse} worse on held-out sample rows than on the rows "
                f"they were fitted on (median over layers): the sample data is narrow for these fits; a few hundred "
                f"distinct inputs of the deployment's kind and lengths fit better (docs/lowrank.md)")


def _mask(graph, option: str, ctx: PassContext) -> str | None:
    """The padding mask input the statistics leave the padded rows out by (onnxcomp.measure.padding), said once."""
    from onnxcomp.measure.padding import AUTO, NONE, check_mask, find_mask

    inputs = [t.name for t in graph.inputs]
    if option not in (AUTO, NONE):
        check_mask(option, inputs, ctx.data, "factorize-lowrank")
    mask = find_mask(inputs, ctx.data, option)
    if mask is not None:
        ctx.say(f"factorize-lowrank: rows of padded positions ({mask} = 0) left out of the fit")
    return mask


def _output_weight(norm):
    return norm.output_weight() if norm is not None else None


def _method(method: str, data) -> str:
    if method == "auto":
        return "whitened" if data is not None else "svd"
    return method


def _exclude(o, graph, layers: list[Layer]):
    exclude = Exclusion(tuple(o.exclude), tuple(o.exclude_op))
    exclude.check("factorize-lowrank", graph)
    if not exclude:
        return layers, []
    kept, skipped = [], []
    for layer in layers:
        reason = exclude.reason([layer.node, layer.weight], [layer.op])
        if reason:
            skipped.append((layer.node, reason))
        else:
            kept.append(layer)
    return kept, skipped


def _weight_of(layers: list[Layer], node: str) -> str:
    return next(layer.weight for layer in layers if layer.node == node)
