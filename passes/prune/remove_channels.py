"""remove-channels: structured channel pruning on the ONNX graph itself (lossy).

Needs only the model: channel groups come from find_channel_groups, importance from the
weights, and the removal is a PruningPlan applied with shape re-inference. With `max_drop`
it also needs sample data (ctx.data) and backs the ratio off until the measured drop
(onnxcomp.fidelity) fits, or stops with ToleranceError and the figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from onnxcomp.errors import InputError, ToleranceError
from onnxcomp.passes.prune.groups import find_channel_groups, node_key
from onnxcomp.passes.prune.importance import (
    channel_importance,
    keep_global,
    keep_uniform,
)
from onnxcomp.passes.prune.plan import (
    ConstantTable,
    PruningPlan,
    apply_plan,
    build_plan,
    reinfer_shapes,
)
from onnxcomp.pipeline.pass_base import Pass, PassContext, PassReport
from onnxcomp.pipeline.registry import register_pass

BACKOFF_STEPS = 6


@dataclass(frozen=True)
class RemoveChannelsOptions:
    ratio: float = field(default=0.5, metadata={"help": "fraction of channels to remove per group (0 <= ratio < 1)"})
    importance: Literal["l1", "l2", "bn-scale"] = field(
        default="l2", metadata={"help": "how channels are ranked: weight magnitude over the group, or BN scale"})
    round_to: int = field(default=8, metadata={
        "help": "kept channel counts are multiples of this (blocked kernels want it; odd widths can be slower)"})
    global_ranking: bool = field(default=False, metadata={
        "help": "rank channels across groups (layers lose different fractions) instead of per group"})
    exclude: tuple[str, ...] = field(default=(), metadata={
        "help": "node or initializer names whose groups are left whole"})
    max_drop: Optional[float] = field(default=None, metadata={
        "help": "largest allowed accuracy (or 1-cosine) drop on the sample data; the ratio backs off to fit"})
    plan: Optional[str] = field(default=None, metadata={"help": "apply this JSON PruningPlan instead of choosing"})
    write_plan: Optional[str] = field(default=None, metadata={"help": "write the chosen PruningPlan here (JSON)"})


@register_pass
class RemoveChannelsPass(Pass):
    """Remove whole channels (conv filters, hidden features) with their coupled weights (lossy)."""

    name = "remove-channels"
    exact = False
    Options = RemoveChannelsOptions

    def run(self, graph, ctx: PassContext) -> PassReport:
        from onnxcomp.graph.convert import to_model
        from onnxcomp.graph.shapes import infer_shapes
        from onnxcomp.measure.counts import estimate_macs, graph_counts

        o = self.options
        report = PassReport()
        _check_options(o, graph)
        before_model = to_model(graph)
        macs_before = estimate_macs(before_model, ctx.dims)["macs"]
        params_before = graph_counts(graph)["params"]
        if o.plan:
            plan = PruningPlan.load(o.plan)
            groups = []
        else:
            groups = find_channel_groups(graph, infer_shapes(before_model, ctx.dims))
            _apply_exclude(groups, o.exclude, graph)
            live = [g for g in groups if g.prunable]
            if not live:
                reasons = "; ".join(sorted({g.reason for g in groups}))[:300]
                raise InputError(f"remove-channels: no prunable channel group in the model ({len(groups)} "
                                 f"found: {reasons or 'no Conv/ConvTranspose/Gemm/MatMul with constant weights'})")
            values_of = ConstantTable(graph).get
            scores, used = {}, set()
            for g in live:
                scores[g.id], criterion = channel_importance(g, values_of, o.importance)
                used.add(criterion)
            report.details["importance"] = sorted(used)
            widths = {g.id: g.width for g in live}
            choose = lambda ratio: build_plan(graph, groups, (keep_global if o.global_ranking else keep_uniform)(
                scores, ratio, max(1, o.round_to), widths))
            plan = choose(o.ratio)
            if o.max_drop is not None and plan.slices:
                plan = _fit_budget(choose, o.ratio, o.max_drop, before_model, ctx, report)
        predicted = plan.removed_params(ConstantTable(graph).get)
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


def _check_options(o: RemoveChannelsOptions, graph) -> None:
    if not 0.0 <= o.ratio < 1.0:
        raise InputError(f"remove-channels: ratio must be in [0, 1), got {o.ratio}")
    if o.round_to < 1:
        raise InputError(f"remove-channels: round_to must be at least 1, got {o.round_to}")
    if o.max_drop is not None and o.max_drop < 0:
        raise InputError(f"remove-channels: max_drop must be >= 0, got {o.max_drop}")
    if o.exclude:
        known = {n.name for n in graph.nodes} | {node_key(n) for n in graph.nodes} | set(graph.tensors())
        missing = [name for name in o.exclude if name not in known]
        if missing:
            raise InputError(f"remove-channels: exclude names not in the model: {', '.join(missing)}")


def _apply_exclude(groups, exclude, graph) -> None:
    if not exclude:
        return
    wanted = set(exclude)
    by_output = {t.name: node_key(n) for n in graph.nodes for t in n.outputs}
    for g in groups:
        names = set(g.producers) | {m.tensor for m in g.members} | {m.use[0] for m in g.members}
        names |= {by_output.get(t, "") for t in g.tensors}
        hit = sorted(names & wanted)
        if hit and g.prunable:
            g.reason = f"excluded ({', '.join(hit)})"


def _fit_budget(choose, ratio, max_drop, before_model, ctx: PassContext, report: PassReport) -> PruningPlan:
    """Largest ratio (bisected, at most BACKOFF_STEPS+1 evaluations) whose drop fits max_drop."""
    from onnxcomp.measure.fidelity import measure, outputs_of

    if ctx.data is None:
        raise InputError("remove-channels: max_drop needs sample data (give --calib) to measure the drop")
    reference = outputs_of(before_model, ctx.data)
    tried: dict[str, float] = {}
    trials = []

    def drop_of(plan) -> float:
        key = plan.to_json()
        if key not in tried:
            candidate = _applied_copy(before_model, plan)
            tried[key] = measure(before_model, candidate, ctx.data, reference_outputs=reference).drop
        return tried[key]

    plan = choose(ratio)
    d = drop_of(plan)
    trials.append({"ratio": ratio, "drop": d})
    ctx.say(f"remove-channels: ratio {ratio:.3f} -> drop {d:.4f}")
    if d <= max_drop:
        report.details["backoff"] = trials
        report.stats["measured_drop"] = round(d, 6)
        return plan
    lo, hi, best = 0.0, ratio, None
    for _ in range(BACKOFF_STEPS):
        mid = (lo + hi) / 2
        candidate = choose(mid)
        if not candidate.slices:
            lo = mid
            continue
        d = drop_of(candidate)
        trials.append({"ratio": mid, "drop": d})
        ctx.say(f"remove-channels: ratio {mid:.3f} -> drop {d:.4f}")
        if d <= max_drop:
            lo, best = mid, (candidate, d)
        else:
            hi = mid
    report.details["backoff"] = trials
    if best is None:
        worst = min(trials, key=lambda t: t["drop"])
        raise ToleranceError(f"remove-channels: no ratio fits max_drop {max_drop}: ratio {worst['ratio']:.3g} "
                             f"already drops {worst['drop']:.4f} (ratio {ratio} drops {trials[0]['drop']:.4f})")
    report.stats["ratio_used"] = round(lo, 6)
    report.stats["measured_drop"] = round(best[1], 6)
    return best[0]


def _applied_copy(model, plan: PruningPlan):
    import onnx

    from onnxcomp.graph.convert import to_graph, to_model

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = to_graph(copy)
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
