"""The second moment X^T X of every layer's real inputs, from sample data in one streamed pass.

MatMul/Gemm rows are the input's last axis; a Conv's rows are its input patches (the same
padding, strides and dilations), a random subset of positions per batch so a large feature
map does not cost a huge matrix. A layer whose output goes into a LayerNorm (norms.py) has its
rows divided by the standard deviation of the norm's input row: the norm divides its error so.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.measure.padding import row_keep, sequence_tensors
from onnxcomp.measure.samples import in_batches
from onnxcomp.passes.lowrank.layers import Layer

CONV_ROWS = 4096  # patch rows per batch and Conv layer


def input_moments(graph, layers: list[Layer], data, batch: int = 32, seed: int = 0,
                  norms: dict | None = None, folds: bool = False, mask: str | None = None):
    """{layer node: X^T X / rows} over `data` (onnxcomp Samples), the graph as it is now; `norms`
    {layer node: NormAfter} weights those layers' rows by 1 / the norm input's row deviation;
    `mask`: the padding mask input, whose padded positions' rows are left out (onnxcomp.measure.padding).
    With `folds`, (that dict, [the same over the even samples, over the odd ones]): two halves of the
    data for measuring how the factors do on rows they were not fitted on (overfit.py)."""
    from onnxcomp.graph.convert import to_model
    from onnxcomp.graph.edit import add_outputs
    from onnxcomp.measure.runtime import session

    model = to_model(graph)
    norms = {node: norm for node, norm in (norms or {}).items() if norm is not None}
    names = sorted({layer.input for layer in layers} | {norm.input for norm in norms.values()})
    sess = session(add_outputs(model, names))
    along = sequence_tensors(model, names, mask)  # the inputs laid out [batch, sequence, ...] by the mask
    sums, rows = in_batches(data, batch, lambda calls: _accumulate(sess, layers, names, calls, seed, norms, mask,
                                                                   along))
    full = {key: (sums[0][key] + sums[1][key]) / max(rows[0][key] + rows[1][key], 1) for key in sums[0]}
    if not folds:
        return full
    return full, [{key: sums[f][key] / max(rows[f][key], 1) for key in sums[f]} for f in (0, 1)]


def _accumulate(sess, layers: list[Layer], names: list[str], calls, seed: int, norms: dict, mask: str | None,
                along: set | None = None):
    """({fold: {layer node: X^T X}}, {fold: {layer node: rows}}), fold 0/1 the even/odd samples
    (the even/odd calls where a call's rows are not split by sample)."""
    from onnxcomp.measure.runtime import run

    first, owner = {}, {}  # layers reading one tensor with the same row weights (query, key, value) share a sum
    for layer in layers:
        norm = norms[layer.node].input if layer.node in norms else None
        owner[layer.node] = layer.node if layer.op == "Conv" else first.setdefault((layer.input, norm), layer.node)
    own = [layer for layer in layers if owner[layer.node] == layer.node]
    sums = {f: {layer.node: np.zeros((layer.m, layer.m)) for layer in own} for f in (0, 1)}
    rows = {f: dict.fromkeys(sums[f], 0) for f in (0, 1)}
    rng = np.random.default_rng(seed)
    for call, feeds in enumerate(calls):
        values = run(sess, feeds, names)
        for layer in own:
            value = np.asarray(values[layer.input], dtype=np.float64)
            x = _rows(layer, value, rng)
            if layer.node in norms and layer.op != "Conv":
                x = x / _row_deviation(np.asarray(values[norms[layer.node].input], dtype=np.float64), len(x))
            keep = None if layer.op == "Conv" else row_keep(feeds, mask, value.shape,
                                                                   along is None or layer.input in along)
            for f, part in _folds(x, value, layer, call, keep):
                sums[f][layer.node] += part.T @ part
                rows[f][layer.node] += len(part)
    return ({f: {layer.node: sums[f][owner[layer.node]] for layer in layers} for f in (0, 1)},
            {f: {layer.node: rows[f][owner[layer.node]] for layer in layers} for f in (0, 1)})


def _folds(x: np.ndarray, value: np.ndarray, layer: Layer, call: int, keep: np.ndarray | None = None):
    """[(fold, rows)]: by sample (axis 0) where the rows are the samples' in order, else the call's parity;
    only the rows `keep` marks (all without it)."""
    keep = np.ones(len(x), bool) if keep is None or len(keep) != len(x) else keep
    samples = value.shape[0] if value.ndim >= 3 else 0
    if layer.op == "Conv" or samples < 2 or len(x) % samples:
        return [(call % 2, x[keep])]
    fold = (np.arange(len(x)) // (len(x) // samples)) % 2
    return [(f, x[keep & (fold == f)]) for f in (0, 1)]


def _row_deviation(z: np.ndarray, rows: int) -> np.ndarray:
    """The standard deviation of each row of the norm's input (as a column), 1 where the rows do not match."""
    z = z.reshape(-1, z.shape[-1]) if z.ndim else z.reshape(1, 1)
    if len(z) != rows:
        return np.ones((rows, 1))
    sd = z.std(axis=1, keepdims=True)
    return np.maximum(sd, 1e-3 * float(sd.mean()) + 1e-12)  # a flat row must not take the whole fit


def _rows(layer: Layer, x: np.ndarray, rng) -> np.ndarray:
    if layer.op != "Conv":
        return x.reshape(-1, x.shape[-1])
    return conv_patches(x, layer, rng)


def conv_patches(x: np.ndarray, layer: Layer, rng, max_rows: int = CONV_ROWS) -> np.ndarray:
    """Rows of the patch matrix (in_channels * kernel, in the weight's order) at random output positions."""
    from numpy.lib.stride_tricks import sliding_window_view

    kernel = list(layer.attrs["kernel"])
    d = len(kernel)
    pads = list(layer.attrs.get("pads") or [0] * (2 * d))
    strides = list(layer.attrs.get("strides") or [1] * d)
    dilations = list(layer.attrs.get("dilations") or [1] * d)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + d]) for i in range(d)])
    extent = [(k - 1) * dl + 1 for k, dl in zip(kernel, dilations)]
    win = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + d)))
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
              + tuple(slice(None, None, dl) for dl in dilations)]
    out = win.shape[2:2 + d]
    total = int(np.prod(out))
    chosen = np.sort(rng.choice(total, min(total, max(1, max_rows // max(1, len(x)))), replace=False))
    idx = np.unravel_index(chosen, out)
    patches = win[(slice(None), slice(None)) + idx]  # N, C, positions, *kernel
    patches = np.moveaxis(patches, 2, 1)  # N, positions, C, *kernel
    return patches.reshape(-1, int(np.prod(patches.shape[2:])))
