"""Bias correction for insert-qdq: the mean output shift of each quantized MatMul/Gemm, measured on the
calibration data, taken out of its float bias.

INT8 rounding of a layer's input and weights is not zero-mean per output channel once the input is
(ReLU/GELU outputs, LayerNorm outputs with a bias): y_q = y + e with E[e] != 0, and the shift adds
up along the network. E[e] = E[x_dq] W_dq - E[x] W is linear in the means, so it needs only the
per-channel means of each layer's input before and after its Q/DQ (one pass of the calibration data
through the quantized model, which puts upstream quantization error into the inputs as deployment
does). The shift is subtracted from the layer's float bias - the Add after a MatMul, or a Gemm's C.

Where it pays: the calibration rows are split in halves two ways - odd and even batches, and (for
[batch, sequence, channels] inputs) early and late sequence positions; a layer is corrected only
when, for each split, the shift measured on either half lowers the mean error of the other (a shift
that is noise, or that belongs to the padding positions a calibration set is full of, does not),
and then by the shift of all the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxcomp.graph.edit import NameGen, node_key, producer
from onnxcomp.passes.qdq.layer_data import as_rows, stream_values
from onnxcomp.passes.qdq.numerics import dequantize_linear


@dataclass
class Layer:
    node: object
    x: str  # the float input (what the Q reads)
    x_dq: str  # the dequantized input the layer reads
    weight: np.ndarray  # float weight as [in, out]
    weight_dq: np.ndarray  # what the runtime multiplies by, as [in, out]
    bias_owner: object  # the node holding the bias constant
    bias_index: int


def float_weights(graph, plan) -> dict[str, np.ndarray]:
    """Float weights of the planned MatMul/Gemm nodes, kept before the rewrite replaces them (as [in, out])."""
    nodes = {node_key(n): n for n in graph.nodes}
    kept = {}
    for spec in plan.weights:
        node = nodes[spec.node]
        if node.op not in ("MatMul", "Gemm") or spec.index != 1:
            continue
        w = np.asarray(node.inputs[1].values, np.float32)
        if w.ndim == 2:
            kept[spec.node] = w.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else w
    return kept


def _constant_dq(t) -> np.ndarray | None:
    """The values a DequantizeLinear of constants produces, or None."""
    import onnx_graphsurgeon as gs

    dq = producer(t)
    if dq is None or dq.op != "DequantizeLinear" or not all(isinstance(i, gs.Constant) for i in dq.inputs):
        return None
    q, scale = np.asarray(dq.inputs[0].values), np.asarray(dq.inputs[1].values)
    zero = np.asarray(dq.inputs[2].values) if len(dq.inputs) > 2 else None
    return dequantize_linear(q, scale, zero, int(dq.attrs.get("axis", 1)))


def _bias_slot(graph, node):
    """(node, input index) of the float per-output-channel bias constant of a MatMul/Gemm, or a reason."""
    import onnx_graphsurgeon as gs

    if node.op == "Gemm":
        if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant) and node.inputs[2].values.ndim == 1:
            return node, 2
        return "Gemm without a float per-channel bias (C)"
    out = node.outputs[0]
    readers = out.outputs
    if len(readers) != 1 or readers[0].op != "Add" or out.name in {t.name for t in graph.outputs}:
        return "no bias Add after the MatMul to absorb the shift"
    add = readers[0]
    index = 1 if add.inputs[0] is out else 0
    bias = add.inputs[index]
    if not isinstance(bias, gs.Constant) or np.dtype(bias.values.dtype) != np.float32 or bias.values.ndim != 1:
        return "the Add after the MatMul is not by a float per-channel bias"
    return add, index


def find_layers(graph, weights: dict[str, np.ndarray]) -> tuple[list[Layer], list[tuple[str, str]]]:
    """Quantized MatMul/Gemm nodes (DQ on input 0 and on a constant weight) with a float bias."""
    layers, skipped = [], []
    for node in graph.nodes:
        key = node_key(node)
        if key not in weights:
            continue
        dq = producer(node.inputs[0])
        q = producer(dq.inputs[0]) if dq is not None and dq.op == "DequantizeLinear" else None
        w_dq = _constant_dq(node.inputs[1])
        if q is None or q.op != "QuantizeLinear" or w_dq is None:
            skipped.append((key, "input or weight is not quantized here"))
            continue
        slot = _bias_slot(graph, node)
        if isinstance(slot, str):
            skipped.append((key, slot))
            continue
        w_dq = w_dq.T if node.op == "Gemm" and int(node.attrs.get("transB", 0)) else w_dq
        layers.append(Layer(node, q.inputs[0].name, node.inputs[0].name, weights[key], w_dq, *slot))
    return layers, skipped


# Rows are split two ways: by batch (odd/even) and, for [batch, sequence, channels] inputs, by position
# (first/second half of the sequence). A shift that is a property of the layer agrees across both;
# one that belongs to part of the data (padding positions, which calibration sets are full of) does not.
SPLITS = {"batches": ((0, 1), (2, 3)), "positions": ((0, 2), (1, 3))}  # groups: 2 * odd batch + late position


def measure_shifts(model, data, layers: list[Layer], batch_size: int = 16) -> list[dict]:
    """Per layer: {"all": mean output shift over every row, split name: (shift on one half, on the other)}."""
    names = sorted({n for layer in layers for n in (layer.x, layer.x_dq)})
    sums = {n: [0.0] * 4 for n in names}
    counts = {n: [0] * 4 for n in names}
    for i, values in enumerate(stream_values(model, data, names, batch_size)):
        for name in names:
            value = np.asarray(values[name], np.float32)
            parts = [value] if value.ndim < 3 else np.array_split(value, 2, axis=value.ndim - 2)
            for late, part in enumerate(parts):
                rows = as_rows(part)
                group = 2 * (i % 2) + late
                sums[name][group] = sums[name][group] + rows.sum(0, dtype=np.float64)
                counts[name][group] += len(rows)

    def shift(layer: Layer, groups) -> np.ndarray | None:
        n = sum(counts[layer.x][g] for g in groups)
        if not n:
            return None
        mean_x = sum(sums[layer.x][g] for g in groups) / n
        mean_dq = sum(sums[layer.x_dq][g] for g in groups) / n
        return mean_dq @ layer.weight_dq.astype(np.float64) - mean_x @ layer.weight.astype(np.float64)

    found = []
    for layer in layers:
        shifts = {"all": shift(layer, (0, 1, 2, 3))}
        for split, (a, b) in SPLITS.items():
            one, other = shift(layer, a), shift(layer, b)
            if one is not None and other is not None:
                shifts[split] = (one, other)
        found.append(shifts)
    return found


def pays(shifts: dict) -> tuple[bool, float, float]:
    """(whether every split's halves correct each other, mean error before, after: rms over the splits'
    held-out halves)."""
    before = after = 0.0
    ok, tests = True, 0
    for split in SPLITS:
        if split not in shifts:
            continue
        one, other = shifts[split]
        tests += 1
        gain_one = np.sum((one - other) ** 2) < np.sum(one ** 2)
        gain_other = np.sum((other - one) ** 2) < np.sum(other ** 2)
        ok = ok and bool(gain_one and gain_other)
        before += 0.5 * (np.sum(one ** 2) + np.sum(other ** 2))
        after += np.sum((one - other) ** 2)
    width = max(len(shifts["all"]), 1) * max(tests, 1)
    return ok and tests > 0, float(np.sqrt(before / width)), float(np.sqrt(after / width))


def correct_biases(graph, model, data, layers: list[Layer], batch_size: int = 16) -> list[dict]:
    """Subtract each layer's measured shift from its bias where it pays (see the module doc); in place."""
    import onnx_graphsurgeon as gs

    names = NameGen(graph)
    rows = []
    for layer, shifts in zip(layers, measure_shifts(model, data, layers, batch_size)):
        good, before, after = pays(shifts)
        whole = shifts["all"]
        bias = layer.bias_owner.inputs[layer.bias_index]
        rows.append({"node": node_key(layer.node), "bias": bias.name, "corrected": good,
                     "shift_rms": float(np.sqrt(np.mean(whole ** 2))),
                     "held_out_mean_error_before": before, "held_out_mean_error_after": after})
        if good:
            values = np.asarray(bias.values, np.float32) - whole.astype(np.float32)
            layer.bias_owner.inputs[layer.bias_index] = gs.Constant(names(f"{bias.name}_corrected"), values)
    return rows
