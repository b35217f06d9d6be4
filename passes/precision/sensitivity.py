"""Which layers a lossy precision rewrite leaves float, from one gated model (gated.py): few runs, one build.

- by default, clear outliers: a layer whose drop alone is a large share of the whole rewrite's drop
  and far above the typical layer's. On MiniLM that is the first FFN's output projection (GELU
  outliers stretch its per-tensor activation range): 39% of the summed per-layer drops on its
  sentences, 46% on 8 generated samples of 32 tokens; the next layer 9% / 11%. Measured on the
  run's data when given, else on generated inputs (no calibration data needed). A MatMul so found
  whose activation has a few outlier channels runs INT8 with just those channels in float;
- with max_drop: the layers ranked by their drop alone, the fewest most sensitive held back
  (bisection over the count), both on the gated model and the first PROBE_SAMPLES samples; the
  chosen model is then built and measured on all `sensitivity_samples`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxcomp.errors import InputError
from onnxcomp.graph.edit import node_key
from onnxcomp.passes.precision.common import refuse_unmet, require_data
from onnxcomp.pipeline.gated import GatedModel
from onnxcomp.progress import logger

OUTLIER_SHARE = 0.25  # of the summed drops of the layers alone
OUTLIER_OVER_MEDIAN = 10.0  # times the median layer's drop
OUTLIER_FLOOR = 1e-3  # a drop below this (cosine 0.999) is nothing to keep float for
PROBE_SAMPLES = 16  # of the user's data
PROBE_BATCH = 8  # generated samples
PROBE_LENGTH = 32  # generated size of symbolic dims other than the batch (a sequence of 1 token has no attention)
MAX_PROBED_UNITS = 256  # beyond these, one run per layer is too slow for a default: use max_drop
MAX_PROBED_BYTES = 1 << 30  # of weights
MAX_SPLIT_CHANNELS = 8  # input channels of a held MatMul computed in float instead of keeping it all float
CHANNEL_OVER_BULK = 2.0  # a channel is an outlier when its peak |x| is this many times the 9th largest
SPLIT_RECOVERS = 0.75  # of the float layer's gain, for the split to replace it


def probe_data(ctx, model, sized: bool = True):
    """(samples, description): the first samples of the run's data, else seeded generated inputs with
    symbolic non-batch dims at PROBE_LENGTH (unless --dim sets them; sized=False: at 1)."""
    from onnxcomp.graph.signature import input_specs
    from onnxcomp.measure.runtime import random_inputs
    from onnxcomp.measure.samples import generated_calls

    given = ctx.data if ctx.data is not None else ctx.val_data
    if given is not None:
        data = given.first(PROBE_SAMPLES)
        return data, f"{data.describe()} of the given data"
    dims = {}
    if sized:
        dims = {d: PROBE_LENGTH for s in input_specs(model) for d in s.shape[1:] if isinstance(d, str) and d != "?"}
    dims.update(ctx.dims)
    feeds = random_inputs(model, dims, seed=ctx.seed, batch=PROBE_BATCH, values=ctx.input_values)
    return generated_calls(feeds, model), f"{PROBE_BATCH} generated samples"


def outliers(owner: str, graph, rewrite: Callable, units: list[str], ctx) -> tuple[list[str], dict, dict]:
    """(layers to keep float, {MatMul: input channels to compute in float}, the report's `outliers`
    object). rewrite(graph, held, split=None) is the pass's rewrite."""
    import onnx_graphsurgeon as gs

    from onnxcomp.graph.convert import to_model

    if len(units) > MAX_PROBED_UNITS:
        return [], {}, {"held_back": [], "skipped": f"{len(units)} layers: more than {MAX_PROBED_UNITS} to probe one "
                                                "by one; give --max-drop to choose with data"}
    size = sum(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize for t in graph.tensors().values()
               if isinstance(t, gs.Constant) and t.dtype is not None)
    if size > MAX_PROBED_BYTES:
        return [], {}, {"held_back": [], "skipped": f"{size / 2**30:.1f} GB of weights: too slow to probe one layer at a "
                                                "time by default; give --max-drop to choose with data"}
    model = to_model(graph)
    probe = None
    for sized in (True, False):  # generated inputs at PROBE_LENGTH, else at 1 (a model that fixes a dim inside)
        try:
            data, source = probe_data(ctx, model, sized)
            probe = GatedModel(graph, units, rewrite, data)
            break
        except InputError as exc:
            reason = str(exc)
            if ctx.data is not None or ctx.val_data is not None:
                break
    if probe is None:
        return [], {}, {"held_back": [], "skipped": f"not probed: {reason}"}
    if not probe.units:
        return [], {}, {"held_back": [], "skipped": "no layer with one output to probe (LSTM is not gated)"}
    full = probe.fidelity(probe.units)
    details = {"samples": source, "drop_all": full.drop, "drop": full.drop, "held_back": [], "runs": 2}
    if full.drop < OUTLIER_FLOOR or len(probe.units) < 3:
        return [], {}, details
    alone = probe.alone()
    drops = list(alone.values())
    threshold = max(OUTLIER_FLOOR, OUTLIER_SHARE * sum(drops), OUTLIER_OVER_MEDIAN * float(np.median(drops)))
    held = sorted((u for u in probe.units if alone[u] >= threshold), key=alone.get, reverse=True)
    details.update(runs=2 + len(drops), sensitivity=alone)
    if held:
        chosen = probe.fidelity(set(probe.units) - set(held))
        details["runs"] += 1
        if chosen.drop < full.drop:  # kept only when measured to help
            details.update(drop=chosen.drop, held_back=held)
            ctx.say(f"{owner}: kept float (clear outliers on {source}): {', '.join(held)}; drop {full.drop:.4f} -> "
                    f"{chosen.drop:.4f}")
            held, split = _split_instead(graph, model, rewrite, probe, held, full.drop, chosen.drop, details)
            if split:
                ctx.say(f"{owner}: INT8 after all, a few input channels in float: "
                        + ", ".join(f"{u} {c}" for u, c in split.items()) + f"; drop {details['drop']:.4f}")
            return held, split, details
        held = []
    return held, {}, details


def _split_instead(graph, model, rewrite, probe, held, drop_all, drop_float, details):
    """Held layers whose activation has a few outlier input channels run INT8 with those channels in
    float instead (most of the float layer's gain at a fraction of its cost: on MiniLM, one GELU
    channel reaches 24.6 where the next reaches 6.1). Kept when the model measured so recovers at
    least SPLIT_RECOVERS of what keeping the layers float recovered; (still held, split)."""
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.graph.edit import copy_with_outputs
    from onnxcomp.measure.compare import fidelity
    from onnxcomp.measure.runtime import run_model

    nodes = {node_key(n): n for n in graph.nodes}
    inputs = {u: nodes[u].inputs[0].name for u in held if nodes[u].op == "MatMul"}
    if not inputs:
        return held, {}
    seen = run_model(copy_with_outputs(model, list(inputs.values())), probe.data)
    split = {}
    for unit, name in inputs.items():
        peak = np.abs(seen[name]).reshape(-1, seen[name].shape[-1]).max(axis=0)
        order = np.argsort(-peak)
        if len(peak) > 2 * MAX_SPLIT_CHANNELS:
            bulk = peak[order[MAX_SPLIT_CHANNELS]]
            picked = [int(c) for c in order[:MAX_SPLIT_CHANNELS] if peak[c] > CHANNEL_OVER_BULK * bulk]
            if picked:
                split[unit] = sorted(picked)
    if not split:
        return held, {}
    rest = [u for u in held if u not in split]
    trial = to_graph(model)
    rewrite(trial, frozenset(rest), split)
    drop = fidelity(probe.reference, run_model(to_model(trial), probe.data), probe.labels).drop
    details["runs"] += 2
    if drop > drop_float + (1 - SPLIT_RECOVERS) * (drop_all - drop_float):
        return held, {}
    details.update(drop=drop, held_back=rest, split=split)
    return rest, split


def hold_back_gated(owner: str, graph, rewrite: Callable, units: list[str], ctx, max_drop: float, samples: int):
    """max_drop from the gated model: rank by drop alone and bisect the count held back, both on the
    first PROBE_SAMPLES samples; then measure the chosen model as built on all `samples` (one more
    held back while it misses, up to 3). A HoldBack (onnxcomp.pipeline.budget), or None when some
    unit cannot be gated (use common.hold_back); refused as common.hold_back refuses when unmet."""
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.measure.compare import fidelity, outputs_of
    from onnxcomp.pipeline.budget import BudgetSearch, HoldBack

    data = require_data(ctx, owner, "max_drop").first(samples)
    probe = GatedModel(graph, units, rewrite, data)  # its reference: the float model's outputs on `data`
    if set(probe.units) != set(units):
        return None
    few = probe.on(data.first(PROBE_SAMPLES)) if data.samples > PROBE_SAMPLES else probe
    reference = probe.model

    def build(held):
        trial = to_graph(reference)
        rewrite(trial, frozenset(held))
        return to_model(trial)

    real = BudgetSearch(owner, build, lambda model: fidelity(probe.reference, outputs_of(model, data), probe.labels),
                        max_drop)
    runs = 1
    full = probe.fidelity(units)
    if full.drop <= max_drop:
        fid = real.trial(frozenset(), f"all {len(units)} converted")
        if real.fits(fid):
            return HoldBack([], fid, fid, trials=runs + len(real.trials))
    alone = {u: few.fidelity([u]) for u in units}
    runs += len(units)
    order = sorted(units, key=lambda u: (alone[u].drop, 1.0 - alone[u].cosine), reverse=True)
    lo, hi = 1, len(order)  # the smallest count in [1, n - 1] that fits on the gated model; n: none
    while lo < hi:
        mid = (lo + hi) // 2
        runs += 1
        if few.fidelity(order[mid:]).drop <= max_drop:
            hi = mid
        else:
            lo = mid + 1
    for count in range(min(hi, len(order) - 1), min(hi + 3, len(order))):  # all samples can need a few more
        fid = real.trial(frozenset(order[:count]), f"{count} held back")
        if real.fits(fid):
            logger.info("%s: %d of %d held back: drop %.4f within %g", owner, count, len(units), fid.drop, max_drop)
            return HoldBack(order[:count], fid, full, alone, order, runs + len(real.trials))
    return refuse_unmet(owner, HoldBack(list(order), None, full, alone, order, runs + len(real.trials)), max_drop)
