"""remove-channels: structured channel pruning on the ONNX graph itself (lossy).

Needs only the model: channel groups come from find_channel_groups, importance from the
weights, and the removal is a PruningPlan applied with shape re-inference. With `max_drop`
it also needs sample data (ctx.data) and backs the ratio off until the measured drop
(onnxcomp.pipeline.budget) fits, or stops with ToleranceError and the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from onnxcomp.errors import InputError, ToleranceError
from onnxcomp.passes.prune.groups import find_channel_groups, node_key
from onnxcomp.passes.prune.importance import (
    channel_importance,
    keep_each_part,
    keep_global,
    keep_uniform,
    keep_whole_ties,
)
from onnxcomp.passes.prune.plan import (
    ConstantTable,
    PruningPlan,
    apply_plan,
    build_plan,
    readers_in,
    reinfer_shapes,
)
from onnxcomp.pipeline.budget import BudgetSearch, drop_measure
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

BACKOFF_STEPS = 6


@dataclass(frozen=True)
class RemoveChannelsOptions:
    ratio: float = field(default=0.5, metadata={"help": "fraction of channels to remove per group",
                                                "range": Range(0, 1, hi_open=True)})
    importance: Literal["auto", "l1", "l2", "bn-scale", "activation"] = field(
        default="auto", metadata={"help": "how channels are ranked: weight magnitude over the group, BN scale, or "
                                          "activation: each channel's share of its readers' output energy on the "
                                          "sample data (needs --calib; the real tokens only where the data pads); "
                                          "auto = activation with sample data, else l2"})
    round_to: int = field(default=8, metadata={
        "help": "kept channel counts are multiples of this (blocked kernels want it; odd widths can be slower)",
        "range": Range(1)})
    refit: bool = field(default=False, metadata={
        "help": "with sample data, refit the kept input rows of the pruned channels' MatMul/Gemm readers by least "
                "squares, so the kept channels make up for the removed ones (the real tokens only where the data pads)"})
    global_ranking: bool = field(default=False, metadata={
        "help": "rank channels across groups (layers lose different fractions) instead of per group"})
    kept_channels_exact: bool = field(default=False, metadata={
        "help": "leave whole the groups whose removal changes what the kept channels compute (LayerNorm, "
                "GroupNorm, Softmax, LRN or a reduction over the channels) instead of pruning them lossily"})
    exclude: tuple[str, ...] = exclude_option()  # a group with a matching member is left whole
    exclude_op: tuple[str, ...] = exclude_op_option()
    max_drop: Optional[float] = max_drop_option()
    plan: Optional[str] = field(default=None, metadata={"help": "apply this JSON PruningPlan instead of choosing"})
    write_plan: Optional[str] = field(default=None, metadata={"help": "write the chosen PruningPlan here (JSON)"})

    def __post_init__(self):
        check_ranges(self, "remove-channels")


def _reader_inputs(graph, before_model, ctx: PassContext):
    """The ReaderInputs that importance=activation, the refit and the budget's refitted trials share
    (input_statistics.py), or None without sample data."""
    from onnxcomp.measure.padding import find_mask
    from onnxcomp.passes.prune.input_statistics import ReaderInputs

    if ctx.data is None:
        return None
    return ReaderInputs(before_model, ctx.data, find_mask([t.name for t in graph.inputs], ctx.data))


def _refit_readers(graph, plan, ctx: PassContext, inputs) -> list[str]:
    from onnxcomp.passes.prune.reader_refit import refit_readers

    if inputs is None:
        raise InputError("remove-channels: refit needs sample data (give --calib)")
    refitted = refit_readers(graph, plan, inputs)
    ctx.say(f"remove-channels: {len(refitted)} readers of pruned channels refitted on the sample data")
    return refitted


def _activation_scores(graph, live, values_of, l2_scores: dict, ctx: PassContext, inputs,
                       refit: bool) -> tuple[dict, set]:
    """(scores, criteria used): a group with no reader to measure keeps its l2 score, and the report says so.
    With `refit`, the same run over the data gathers the moments the refit reads."""
    from onnxcomp.passes.prune.activation_importance import activation_scores

    if inputs is None:
        raise InputError("remove-channels: importance=activation needs sample data (give --calib)")
    ctx.say("remove-channels: channel importance measured on the sample data"
            + (f" (real tokens: {inputs.mask} = 1)" if inputs.mask else ""))
    scores = activation_scores(graph, live, values_of, inputs, l2_scores, with_moments=refit)
    return scores, {"l2" if scores[g.id] is l2_scores[g.id] else "activation" for g in live}


@register_pass
class RemoveChannelsPass(Pass):
    """Remove whole channels (conv filters, hidden features) with their coupled weights (lossy)."""

    name = "remove-channels"
    exact = False
    Options = RemoveChannelsOptions

    def run(self, graph, ctx: PassContext) -> PassReport:
        from onnxcomp.graph.convert import to_model
        from onnxcomp.measure.counts import estimate_macs, graph_counts
        from onnxcomp.passes.prune.probe import search_shapes

        o = self.options
        report = PassReport()
        exclude = _exclusion(o, graph)
        before_model = to_model(graph)
        macs_before = estimate_macs(before_model, ctx.dims)["macs"]
        params_before = graph_counts(graph)["params"]
        importance = o.importance if o.importance != "auto" else "activation" if ctx.data is not None else "l2"
        inputs = _reader_inputs(graph, before_model, ctx) if o.refit or importance == "activation" else None
        if o.plan:
            plan = PruningPlan.load(o.plan)
            groups = []
        else:
            groups = find_channel_groups(graph, search_shapes(before_model, ctx.dims), exact=o.kept_channels_exact)
            _apply_exclude(groups, exclude, graph)
            live = [g for g in groups if g.prunable]
            if not live:
                reasons = "; ".join(sorted({g.reason for g in groups}))[:300]
                raise InputError(f"remove-channels: no prunable channel group in the model ({len(groups)} "
                                 f"found: {reasons or 'no Conv/ConvTranspose/Gemm/MatMul with constant weights'})")
            values_of = ConstantTable(graph).get
            scores, used = {}, set()
            for g in live:
                scores[g.id], criterion = channel_importance(g, values_of, "l2" if importance == "activation"
                                                             else importance)
                used.add(criterion)
            if importance == "activation":
                scores, used = _activation_scores(graph, live, values_of, scores, ctx, inputs, o.refit)
            report.details["importance"] = sorted(used)
            widths = {g.id: g.width for g in live}
            by_id = {g.id: g for g in live}

            def choose(ratio):
                kept = (keep_global if o.global_ranking else keep_uniform)(scores, ratio, max(1, o.round_to), widths)
                kept = {gid: keep_whole_ties(by_id[gid], keep_each_part(by_id[gid], k, scores[gid]), scores[gid])
                        for gid, k in kept.items()}
                return build_plan(graph, groups, kept)

            plan = choose(o.ratio)
            if o.max_drop is not None and plan.slices:
                plan = _fit_budget(choose, o.ratio, o.max_drop, before_model, ctx, report, inputs if o.refit else None)
        predicted = plan.removed_params(ConstantTable(graph).get, readers_in(graph))
        if o.refit:
            report.stats["readers_refitted"] = len(_refit_readers(graph, plan, ctx, inputs))
        apply_plan(graph, plan, infer=False)
        graph.cleanup().toposort()
        after_model = reinfer_shapes(graph)  # the one export of the pruned graph, also used for MACs
        if o.write_plan:
            plan.save(o.write_plan)
        params_after = graph_counts(graph)["params"]
        macs_after = estimate_macs(after_model, ctx.dims)["macs"]
        _fill_report(report, groups, plan, params_before, params_after, macs_before, macs_after, predicted)
        for row in report.details["groups"]:
            head = row["producers"][0] + (f" +{len(row['producers']) - 1}" if len(row["producers"]) > 1 else "")
            ctx.say(f"remove-channels: group {row['id']} [{head}]: {row['channels']} -> {row['after']}"
                    + (f" (left alone: {row['reason']})" if row["reason"] else ""))
        return report


def _exclusion(o: RemoveChannelsOptions, graph) -> Exclusion:
    exclude = Exclusion(tuple(o.exclude), tuple(o.exclude_op))
    exclude.check("remove-channels", graph)
    return exclude


def _apply_exclude(groups, exclude: Exclusion, graph) -> None:
    """Leave whole every group whose producers, consumers, nodes in between or weights match."""
    if not exclude:
        return
    by_output = {t.name: node_key(n) for n in graph.nodes for t in n.outputs}
    op_of = {node_key(n): n.op for n in graph.nodes}
    for g in groups:
        if not g.prunable:
            continue
        nodes = set(g.producers) | {m.use[0] for m in g.members} | {by_output.get(t, "") for t in g.tensors}
        nodes.discard("")
        reason = exclude.reason(sorted(nodes) + sorted({m.tensor for m in g.members}),
                                sorted({op_of[n] for n in nodes if n in op_of}))
        if reason:
            g.reason = reason


def _fit_budget(choose, ratio, max_drop, before_model, ctx: PassContext, report: PassReport,
                refit_inputs=None) -> PruningPlan:
    """The plan at the largest ratio whose measured drop fits max_drop: `ratio` itself, else the best of
    BACKOFF_STEPS bisections below it (onnxcomp.pipeline.budget); a candidate is the plan at a ratio, its
    readers refitted as the output's will be (on `refit_inputs`, the ReaderInputs of `before_model`), so
    the drop measured is the output's."""
    if ctx.data is None:
        raise InputError("remove-channels: max_drop needs sample data (give --calib) to measure the drop")
    search = BudgetSearch("remove-channels", lambda plan: _applied_copy(before_model, plan, refit_inputs),
                          drop_measure(before_model, ctx.data), max_drop, key=PruningPlan.to_json)
    result = search.back_off(ratio, BACKOFF_STEPS, lambda r: _removing(choose(r)))
    trials = [{"ratio": t.step, "drop": t.drop} for t in result.trials]
    report.details["backoff"] = trials
    if not result.met:
        worst = min(trials, key=lambda t: t["drop"])
        raise ToleranceError(f"remove-channels: no ratio fits max_drop {max_drop}: ratio {worst['ratio']:.3g} "
                             f"already drops {worst['drop']:.4f} (ratio {ratio} drops {trials[0]['drop']:.4f})")
    if result.level < ratio:
        report.stats["ratio_used"] = round(result.level, 6)
    report.stats["measured_drop"] = round(result.fidelity.drop, 6)
    return result.candidate


def _removing(plan: PruningPlan) -> PruningPlan | None:
    """The plan, or None when it removes no channel (a ratio too small to matter)."""
    return plan if plan.slices else None


def _applied_copy(model, plan: PruningPlan, refit_inputs=None):
    """`model` with `plan` applied, its readers refitted first on `refit_inputs` (the ReaderInputs of
    `model`) when given."""
    import onnx

    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.passes.prune.reader_refit import refit_readers

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = to_graph(copy)
    if refit_inputs is not None:
        refit_readers(graph, plan, refit_inputs)
    apply_plan(graph, plan, infer=False)
    return to_model(graph.cleanup())


def _fill_report(report, groups, plan, params_before, params_after, macs_before, macs_after, predicted) -> None:
    kept = {g["id"]: g["kept"] for g in plan.groups}
    table = []
    for g in groups:
        row = g.describe()
        row["after"] = kept.get(g.id, g.channels)
        table.append(row)
        if not g.prunable:
            report.skip(", ".join(g.producers), g.reason)
    report.details["groups"] = table
    report.details["plan"] = {"slices": len(plan.slices), "values": plan.values, "attributes": plan.attributes}
    report.details["params"] = {"before": params_before, "after": params_after, "removed_predicted": predicted}
    report.details["channels"] = {"before": sum(g["channels"] for g in plan.groups),
                                  "after": sum(g["kept"] for g in plan.groups)}
    report.stats.update({
        "groups": len(groups) if groups else len(plan.groups),
        "groups_pruned": len(plan.groups),
        "groups_refused": sum(1 for g in groups if not g.prunable),
        "macs_before": macs_before, "macs_after": macs_after,
    })
    report.modified = bool(plan.slices or plan.values or plan.attributes)
