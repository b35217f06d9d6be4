"""Factors fitted in order on the inputs the already-factorized model really gives each layer.

Fitting every layer on the original model's inputs ignores that the layers before it are
factorized too: its inputs drift, and the errors add up through the depth. Here the layers go in
graph order, one stage (the layers reading one tensor: q, k, v) at a time. With X the stage's
input in the original model and X' the same input in the model factorized so far, the layer's
new weight minimizes ||X' W' - X W||^2 + lambda ||W' - W||^2: the full-rank optimum is
W* = (X'^T X' + lambda)^-1 (X'^T X W + lambda W), and the rank-r factors are the SVD of W* whitened
by X'^T X' (factors.spectrum). Without the pull towards W (lambda) the fit overfits a few hundred
sentences: measured on MiniLM at 0.75 kept, 0.893 mean cosine against 0.933 without refitting. One run of the
original and one of the model so far per stage.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import copy_with_outputs
from onnxcomp.measure.padding import kept_rows, sequence_tensors
from onnxcomp.passes.lowrank.activations import conv_patches
from onnxcomp.passes.lowrank.factors import spectrum
from onnxcomp.passes.lowrank.layers import as_matrix
from onnxcomp.passes.lowrank.ranks import WHOLE

DAMPING_CROSS = 0.1  # pull of W* towards W, of the mean diagonal of X'^T X' (a free fit overfits the samples)


def corrected_spectra(before, layers, weights: dict, ranks: dict, spectra: dict, data, build,
                      say=lambda message: None, batch: int = 32, out_weights: dict | None = None,
                      covariances: dict | None = None, mask: str | None = None) -> dict:
    """spectra with every factorized layer's entry refitted on the drifted inputs (a new dict).

    `weights` maps each layer's node to its weight as the node reads it; `build(ranks, spectra)`
    gives a model with those layers factorized from those spectra; `out_weights` {node: output weight}
    keeps each layer's weighting of its output errors, and `covariances` {node: input covariance} the
    input side that goes with it where that is not the layer's own inputs (an attention block's key and
    value: attention.py). Whitening those by their drifted inputs instead paired an output weight with
    the wrong input covariance.
    """
    from onnxcomp.measure.runtime import session

    spectra = dict(spectra)
    stages: dict[str, list] = {}
    for layer in layers:
        if ranks.get(layer.node, WHOLE) != WHOLE:
            stages.setdefault(layer.input, []).append(layer)
    original = session(copy_with_outputs(before, list(stages)))
    done: dict[str, int] = {}
    for i, (name, stage) in enumerate(stages.items()):
        now = session(copy_with_outputs(build(done, spectra), [name])) if done else original
        sums = _cross_moments(original, now, name, stage, data, batch, mask, name in sequence_tensors(before, [name], mask))
        for layer in stage:
            own, cross = sums[layer.node]
            w = as_matrix(layer.op, weights[layer.node], layer.attrs)
            ridge = np.eye(len(own)) * DAMPING_CROSS * max(float(np.mean(np.diag(own))), 1e-12)
            target = np.linalg.solve(own + ridge, cross @ w + ridge @ w)
            whiten = (covariances or {}).get(layer.node)
            spectra[layer.node] = spectrum(target, own if whiten is None else whiten,
                                           (out_weights or {}).get(layer.node))
            done[layer.node] = ranks[layer.node]
        if (i + 1) % 4 == 0 or i + 1 == len(stages):
            say(f"factorize-lowrank: {i + 1}/{len(stages)} stages refitted on the factorized model's inputs")
    return spectra


def _cross_moments(original, now, name: str, stage, data, batch: int, mask: str | None = None,
                   sequence: bool = True) -> dict:
    """{layer node: (X'^T X', X'^T X) / rows} for the stage's input `name` (the real tokens' rows;
    `sequence`: whether its axis 1 may be the mask's sequence axis)."""
    from onnxcomp.measure.runtime import run

    sums = {layer.node: [0.0, 0.0] for layer in stage}
    rows = dict.fromkeys(sums, 0)
    for k, feeds in enumerate(data.batches(batch)):
        x = np.asarray(run(original, feeds, [name])[name], dtype=np.float64)
        x_now = np.asarray(run(now, feeds, [name])[name], dtype=np.float64)
        for layer in stage:
            a, b = _rows(layer, x, k, feeds, mask, sequence), _rows(layer, x_now, k, feeds, mask, sequence)
            sums[layer.node][0] = sums[layer.node][0] + b.T @ b
            sums[layer.node][1] = sums[layer.node][1] + b.T @ a
            rows[layer.node] += len(b)
    return {key: (own / max(rows[key], 1), cross / max(rows[key], 1)) for key, (own, cross) in sums.items()}


def _rows(layer, x: np.ndarray, seed: int, feeds: dict, mask: str | None, sequence: bool) -> np.ndarray:
    """The layer's input rows, the real tokens' only; a Conv's patches at the same positions for both models
    (same seed), every one counted."""
    if layer.op != "Conv":
        return kept_rows(x, feeds, mask, sequence)
    return conv_patches(x, layer, np.random.default_rng(seed))

