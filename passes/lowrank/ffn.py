"""A feed-forward block's up projection fitted at the down projection's output, through the activation's slope.

In y = act(x W1 + b1) W2 an error e of the up projection's output reaches y as (act'(z) * e) W2
(linearized at z = x W1 + b1). With the expectation over rows taken apart (E[a b] ~ E[a] E[b]), the
output weight of the up projection is (W2 M W2^T) * E[act'(z) act'(z)^T] (elementwise), M being
the down projection's own output weight (its LayerNorm, norms.py) or the identity. The activation
is recognized on the data, not by its nodes: the down projection's input must be GELU (erf) or
ReLU of z, row for row; anything else leaves the layer to its plain fit.
"""

from __future__ import annotations

from math import sqrt

import numpy as np

from onnxcomp.measure.padding import kept_rows, sequence_tensors
from onnxcomp.measure.samples import in_batches
from onnxcomp.passes.lowrank.layers import Layer
from onnxcomp.passes.lowrank.norms import seen_through

HOPS = 6  # elementwise nodes from z to the down projection's input (erf GELU takes five)
ELEMENTWISE = ("Add", "Mul", "Div", "Erf", "Gelu", "Relu", "Sub", "Pow", "Tanh", "Sigmoid")


def _slope_gelu(z):
    return 0.5 * (1.0 + _erf(z / sqrt(2.0))) + z * np.exp(-0.5 * z * z) / sqrt(2.0 * np.pi)


def _erf(z):
    """erf to 1.5e-7 (Abramowitz and Stegun 7.1.26): numpy has none."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(z))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.sign(z) * (1.0 - poly * np.exp(-z * z))


def _gelu(z):
    return 0.5 * z * (1.0 + _erf(z / sqrt(2.0)))


ACTIVATIONS = {"gelu": (_gelu, _slope_gelu), "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(float))}


def find_ffn(graph, layers: list[Layer]) -> list[tuple[str, str, str, str]]:
    """[(up layer, down layer, z tensor, act tensor)] candidates: the up projection's bias-added output
    reaches the down projection's input through elementwise nodes only."""
    import onnx_graphsurgeon as gs

    layers = [layer for layer in layers if layer.op != "Conv"]  # rows are the last axis
    by_input = {}
    for layer in layers:
        by_input.setdefault(layer.input, []).append(layer.node)
    names = {layer.node for layer in layers}
    found = []
    for node in graph.nodes:
        key = node.name or node.outputs[0].name
        if key not in names or len(node.outputs[0].outputs) != 1:
            continue
        z = node.outputs[0]
        bias = z.outputs[0]
        if bias.op == "Add" and any(isinstance(t, gs.Constant) for t in bias.inputs):
            z = bias.outputs[0]
        frontier, seen = [z], set()
        for _ in range(HOPS):
            nxt = []
            for t in frontier:
                for reader in t.outputs:
                    if reader.op in ELEMENTWISE and id(reader) not in seen:
                        seen.add(id(reader))
                        nxt.append(reader.outputs[0])
            hits = [t for t in nxt if len(by_input.get(t.name, ())) == 1]
            if hits:
                found.append((key, by_input[hits[0].name][0], z.name, hits[0].name))
                break
            frontier = nxt
    return found


def ffn_fits(graph, blocks, matrices: dict, out_weights: dict, data, batch: int = 32,
             mask: str | None = None) -> dict[str, np.ndarray]:
    """{up layer: output weight} for the blocks whose activation checks out on the data (the real tokens'
    rows where `mask` names the padding mask input, onnxcomp.measure.padding)."""
    from onnxcomp.graph.convert import to_model
    from onnxcomp.graph.edit import add_outputs
    from onnxcomp.measure.runtime import session

    if not blocks:
        return {}
    names = sorted({n for _, _, z, a in blocks for n in (z, a)})
    model = add_outputs(to_model(graph), names)
    sess, along = session(model), sequence_tensors(model, names, mask)
    sums, rows, kinds = in_batches(data, batch, lambda calls: _slopes(sess, names, calls, blocks, mask, along))
    fits = {}
    for up, down, _, _ in blocks:
        if kinds.get(up) is None or up not in sums:
            continue
        seen = seen_through(matrices[down], out_weights.get(down))
        if seen.shape != sums[up].shape:
            continue
        fits[up] = seen * (sums[up] / rows[up])
    return fits


def _slopes(sess, names, calls, blocks, mask=None, along=frozenset()) -> tuple[dict, dict, dict]:
    """({up: sum of act'(z) act'(z)^T}, {up: rows}, {up: activation kind or None}) over the calls (the real
    tokens' rows; `along`: the z tensors whose axis 1 may be the sequence)."""
    from onnxcomp.measure.runtime import run

    sums, rows, kinds = {}, {}, {}
    for feeds in calls:
        values = run(sess, feeds, names)
        for up, _, z_name, a_name in blocks:
            z = np.asarray(values[z_name], dtype=np.float64)
            z = z.reshape(-1, z.shape[-1]) if z.ndim else z.reshape(1, 1)
            a = np.asarray(values[a_name], dtype=np.float64).reshape(z.shape) if np.size(values[a_name]) == z.size \
                else None
            if up not in kinds:  # recognized on the first call, not recomputed on every one
                kinds[up] = _kind(z, a)
            kind = kinds[up]
            if kind is None:
                continue
            g = kept_rows(ACTIVATIONS[kind][1](z).reshape(np.shape(values[z_name])), feeds, mask, z_name in along)
            sums[up] = sums.get(up, 0.0) + g.T @ g
            rows[up] = rows.get(up, 0) + len(g)
    return sums, rows, kinds


def _kind(z: np.ndarray, a: np.ndarray | None) -> str | None:
    if a is None:
        return None
    for kind, (f, _) in ACTIVATIONS.items():
        if np.allclose(f(z), a, rtol=1e-3, atol=1e-4 * (float(np.abs(a).max()) + 1e-12)):
            return kind
    return None
