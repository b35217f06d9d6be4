"""How much worse a layer's factors do on rows they were not fitted on: the ranks are shared out by that.

The whitened factors fit the sample data's rows, and a layer's error on those same rows (and the
model's drop measured on them, sensitivity.py) flatters the wide layers most: a few thousand rows in
1536 dimensions leave directions the fit never sees. Measured on the real MiniLM at 0.75 kept, each layer
alone: the output drop on held-out calibration sentences is 1.4 to 3 times the drop on the fitted ones,
the most for the FFN layers. Here the data's two halves (even and odd samples, activations.py) give the
held-out error: factors fitted on one half, the error measured on the other, both ways. The layer's error
curve is scaled, rank by rank, by held-out over in-sample error of its own output (the plain metric).
"""

from __future__ import annotations

import numpy as np

from onnxcomp.passes.lowrank.factors import spectrum, whitening

MOST = 10.0  # the largest scale: a rank whose in-sample error is ~0 must not take the whole budget


def held_out_error(w: np.ndarray, fit_on: np.ndarray, measure_on: np.ndarray, output_weight=None,
                   right=None) -> np.ndarray:
    """[relative error at rank r for r = 0..k] of the factors fitted on `fit_on`, on `measure_on`'s rows
    (`right`: whitening(output_weight), when the caller has it)."""
    s = spectrum(w, fit_on, output_weight, right)
    m = np.eye(w.shape[1]) if output_weight is None else output_weight
    g = s.u.T @ measure_on @ s.u  # k x k
    h = s.vt @ m @ s.vt.T
    parts = np.outer(s.s, s.s) * g * h  # the tail after rank r is parts[r:, r:].sum()
    tails = np.cumsum(np.cumsum(parts[::-1, ::-1], 0), 1)[::-1, ::-1].diagonal()
    energy = float(np.trace(w.T @ measure_on @ w @ m))
    return np.append(tails, 0.0) / max(energy, 1e-30)


def overfit_scales(w: np.ndarray, full: np.ndarray, halves: list, output_weight=None, own=None) -> np.ndarray:
    """[held-out over in-sample relative error, rank by rank], each at least 1 and at most MOST
    (all 1 when a half has no rows: one call the samples cannot be split in). `own`: spectrum(w, full,
    output_weight) when the caller has it."""
    if not all(np.any(half) for half in halves):
        return np.ones(min(w.shape) + 1)
    right = whitening(output_weight) if output_weight is not None else None
    held = 0.5 * (held_out_error(w, halves[0], halves[1], output_weight, right)
                  + held_out_error(w, halves[1], halves[0], output_weight, right))
    own = own if own is not None else spectrum(w, full, output_weight, right)
    inside = np.array([own.relative_error(r) for r in range(len(own.s) + 1)])
    return np.clip(held / np.maximum(inside, 1e-30), 1.0, MOST)
