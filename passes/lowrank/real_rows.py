"""Which rows of an activation the fit counts: the real tokens, where the sample data pads its sequences.

The padded positions (onnxcomp.measure.padding) can be most of the rows (the real MiniLM's calibration
sentences: 16 real tokens of 64), so factors, sensitivities and LayerNorms fitted on every row spend the
fit on rows that nothing reads. With a padding mask among the inputs, a row of an activation shaped
[batch, sequence, ...] counts where the mask is 1.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.measure.padding import mask_of


def row_keep(feeds: dict, mask: str | None, shape: tuple) -> np.ndarray | None:
    """[rows] bool, True for the rows of an activation of `shape` (rows = its last axis' vectors) that are
    real tokens; None when every row counts (no mask, or the activation is not [batch, sequence, ...])."""
    m = mask_of(feeds, mask)
    if m is None or len(shape) < 2:
        return None
    if len(shape) >= 3 and tuple(shape[:2]) == m.shape:  # [batch, sequence, ..., channels]: each position's rows
        return np.repeat(m.reshape(-1), int(np.prod(shape[2:-1])))
    if len(shape) == 2 and shape[0] == m.size:  # [batch * sequence, channels]
        return m.reshape(-1)
    return None


def query_keep(feeds: dict, mask: str | None) -> np.ndarray | None:
    """[batch, sequence] 0/1 weights of the positions (an attention block's queries), or None."""
    m = mask_of(feeds, mask)
    return None if m is None else m.astype(np.float64)
