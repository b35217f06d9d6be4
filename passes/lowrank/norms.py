"""The LayerNorm a layer's output goes into, and how much each output error counts there.

A transformer's attention output and FFN down projections end in bias Add -> residual Add ->
LayerNormalization over the channels. The norm divides every row by its standard deviation and
removes the error's mean over the channels, then scales channel j by gamma_j: the error that
reaches the next layer is gamma * (e - mean(e)) / sigma_row. So the factors are fitted on rows
weighted by 1 / sigma (activations.py) and with the output weight G^T G, G = diag(gamma) (I - 11^T/n)
(factors.py). Measured on the real MiniLM at 0.75 kept, same ranks: 0.9219 mean cosine against 0.9208.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HOPS = 2  # Adds between the layer and the norm: its bias and the residual


@dataclass(frozen=True)
class NormAfter:
    input: str  # the LayerNorm's input tensor (its rows' standard deviation scales the error)
    gamma: np.ndarray  # n

    def output_weight(self) -> np.ndarray:
        n = len(self.gamma)
        g = self.gamma[:, None] * (np.eye(n) - 1.0 / n)
        return g.T @ g


def norm_after(node, n: int) -> NormAfter | None:
    """The LayerNormalization over the last axis that `node`'s output reaches through at most HOPS Adds
    (each its only reader), with a constant scale of n channels; else None."""
    import onnx_graphsurgeon as gs

    t = node.outputs[0]
    for _ in range(HOPS + 1):
        if len(t.outputs) != 1:
            return None
        reader = t.outputs[0]
        if reader.op == "LayerNormalization":
            scale = reader.inputs[1] if len(reader.inputs) > 1 else None
            if (reader.inputs[0] is not t or int(reader.attrs.get("axis", -1)) != -1
                    or not isinstance(scale, gs.Constant) or np.asarray(scale.values).shape != (n,)):
                return None
            return NormAfter(t.name, np.asarray(scale.values, dtype=np.float64))
        if reader.op != "Add":
            return None
        t = reader.outputs[0]
    return None


def seen_through(w: np.ndarray, m: np.ndarray | None) -> np.ndarray:
    """W M W^T (W W^T without M): the output weight of the layer before W, given W's own output weight M."""
    return w @ w.T if m is None else w @ m @ w.T
