"""How much each layer's factorization costs the model's outputs, measured one layer at a time.

A layer's own relative output error says how well its factors fit its inputs, not how much the
model's outputs care: an error early in a transformer is amplified differently than one in its
last FFN. Each layer alone is factorized at a probe rank (half its parameters) and the drop of
the model's outputs (1 - cosine, mean over samples and float outputs) on a few calls of the
sample data is measured; the layer's error curve is then scaled so that it gives that drop at
the probe rank. The ranks are shared out on the scaled curves. The calls are run as one batch where
the model takes it, all layers in one session (probe.py).
"""

from __future__ import annotations

import numpy as np

from onnxcomp.passes.lowrank.ranks import WHOLE, options

# 64 calls, not 16: on the real MiniLM at 0.75 kept 0.9468 pooled embedding cosine against 0.9448, and with the
# padding cut (trim.py) in 1.9x the time 16 took uncut
PROBE_CALLS = 64
PIECE = 16  # rows per measured run, sorted by length and cut after the last real token (trim.py)


def probe_rank(layer, round_to: int) -> int:
    ranks = [r for r in options(layer, round_to) if r != WHOLE]
    fitting = [r for r in ranks if layer.cost(r) <= layer.params // 2]
    return fitting[-1] if fitting else ranks[0]


def output_drop(reference: list, candidate: list) -> float:
    from onnxcomp.measure.compare import per_sample_cosine

    cosines = [per_sample_cosine(a, b).mean() for call_a, call_b in zip(reference, candidate)
               for a, b in zip(call_a, call_b) if np.asarray(a).dtype.kind == "f"]
    return float(1.0 - np.mean(cosines)) if cosines else 0.0


def layer_weights(before, layers, error, data, round_to: int, sources: dict, candidate,
                  say=lambda message: None, mask: str | None = None) -> dict[str, float]:
    """{layer node: factor turning its relative error into the model-output drop it causes}.
    `sources`: {layer node: its weight as the node reads it}; candidate(layer, rank): the same at `rank`.
    The reference is run in the same session (probe.py) with the weights as they are; `mask`: the padding
    mask input, whose padded positions the drop does not compare (onnxcomp.measure.padding)."""
    from onnxcomp.measure.padding import sequence_axis
    from onnxcomp.measure.samples import in_batches
    from onnxcomp.measure.trim import Trim
    from onnxcomp.passes.lowrank.probe import Probe

    probe = Probe(before, {(layer.node, 1): sources[layer.node] for layer in layers})
    first = data.take(PROBE_CALLS)  # merged into one call where the model takes it
    # the outputs whose axis 1 may be the sequence (a pooled [batch, 64] output is compared whole)
    positional = [mask is not None and sequence_axis(before, o.name, mask) for o in before.graph.output]
    trim = Trim(before, mask)  # padding past the last real token is not computed
    pieces = lambda calls: [piece for feeds in calls for piece in trim.pieces(feeds, PIECE, probe.run)]
    return in_batches(first, first.samples, lambda calls: _measured(probe, pieces(calls), layers, error, round_to,
                                                                    candidate, say, mask, positional))


def _measured(probe, calls: list, layers, error, round_to: int, candidate, say, mask=None,
              positional=()) -> dict[str, float]:
    from onnxcomp.measure.padding import zero_padding

    real = lambda feeds, outputs: [zero_padding(value, feeds, mask) if i < len(positional) and positional[i] else value
                                   for i, value in enumerate(outputs)]
    reference = [real(feeds, probe.run(feeds)) for feeds in calls]
    weights = {}
    for i, layer in enumerate(layers):
        rank = probe_rank(layer, round_to)
        drop = output_drop(reference, [real(feeds, probe.run(feeds, {(layer.node, 1): candidate(layer, rank)}))
                                       for feeds in calls])
        weights[layer.node] = max(drop, 1e-12) / max(error(layer, rank), 1e-12)
        if (i + 1) % 8 == 0 or i + 1 == len(layers):
            say(f"factorize-lowrank: sensitivity of {i + 1}/{len(layers)} layers measured")
    return weights
