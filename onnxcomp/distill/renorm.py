"""Trainable BatchNorm for students whose BatchNorm was folded away, folded back after training.

A pruned student whose BatchNormalization was folded into its convolutions trains badly: without
batch statistics nothing re-standardizes the activations that pruning distorted, layer after layer
(the digits CNN pruned to half, 3 epochs: 0.46 accuracy folded, 0.93 with BN kept). So for training a
BatchNormalization goes back after each such layer, and when the weights are written it is folded
into the layer's weight and bias (exact): the written model has the student's own graph.

Where the teacher still has that BN, the student gets it back exactly. Folding and pruning leave a
kept channel's bias equal to the teacher's folded bias (to rounding), so an ONNX teacher whose tensor
of the same name is Conv -> BatchNormalization maps every student channel to its teacher channel;
the layer is then unfolded with that BN's parameters (weight / s, BN scale, shift, mean, variance):
the student a kept BN would have given, which trains the same way. Layers without such a match get a
standard BN (scale 1, shift 0, running statistics measured on the data), which recovers nearly as
well; a BN set to the identity instead kept the distortion and trained worse than none (0.20).

Which layers: only in a student that has no BatchNormalization left (folded, or never there), each
Conv or Gemm with a weight and a bias of its own whose output is not a graph output (a classifier
head keeps its scale). Integer (QDQ) weights are never renormalized: their grid is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

EPSILON = 1e-5
STAT_SAMPLES = 512  # enough samples for per-channel mean/variance


@dataclass
class Layer:
    """One renormalized layer: its weight/bias initializers, the output channel axis of the weight,
    the names of the BatchNormalization's scale, shift, mean and variance, its epsilon, and whether
    it is the teacher's BN restored (else a standard one)."""

    node: str
    weight: str
    bias: str
    axis: int
    bn: tuple[str, str, str, str]
    epsilon: float = EPSILON
    restored: bool = False


@dataclass
class Renormalized:
    model: onnx.ModelProto  # the student with a BatchNormalization after each layer
    layers: list[Layer] = field(default_factory=list)

    def fold_back(self, trained: onnx.ModelProto, student: onnx.ModelProto) -> onnx.ModelProto:
        """A copy of `student` holding `trained`'s values, each inserted BN folded into its layer."""
        values = {t.name: numpy_helper.to_array(t) for t in trained.graph.initializer}
        folded: dict[str, np.ndarray] = {}
        for layer in self.layers:
            scale, shift, mean, var = (values[n].astype(np.float64) for n in layer.bn)
            factor = scale / np.sqrt(var + layer.epsilon)
            weight, bias = values[layer.weight], values[layer.bias]
            folded[layer.weight] = (weight * _along(factor, weight.ndim, layer.axis)).astype(weight.dtype)
            folded[layer.bias] = ((bias - mean) * factor + shift).astype(bias.dtype)
        out = onnx.ModelProto()
        out.CopyFrom(student)
        for init in out.graph.initializer:
            value = folded.get(init.name, values.get(init.name))
            if value is not None:
                init.CopyFrom(numpy_helper.from_array(value.reshape(tuple(init.dims)), init.name))
        return out


@dataclass
class TeacherBN:
    """A Conv -> BatchNormalization of the teacher, as numbers: the folded bias identifies its channels."""

    scale: np.ndarray
    shift: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    epsilon: float

    @property
    def factor(self) -> np.ndarray:
        return self.scale / np.sqrt(self.var + self.epsilon)

    def folded_bias(self, conv_bias) -> np.ndarray:
        return self.shift + (conv_bias - self.mean) * self.factor


def candidates(model: onnx.ModelProto) -> list[tuple[int, onnx.NodeProto, int]]:
    """(position, node, output-channel axis of its weight) for every layer to renormalize; see the
    module docstring."""
    graph = model.graph
    if any(n.op_type == "BatchNormalization" for n in graph.node):
        return []
    inits = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    found = []
    for i, n in enumerate(graph.node):
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.output[0] in outputs:
            continue
        weight, bias = inits.get(n.input[1]), inits.get(n.input[2])
        if weight is None or bias is None or any(uses.get(t.name) != 1 for t in (weight, bias)):
            continue
        if weight.data_type != onnx.TensorProto.FLOAT or bias.data_type != onnx.TensorProto.FLOAT:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
            axis = 0 if attrs.get("transB", 0) else 1
        else:
            axis = 0
        if len(bias.dims) != 1 or bias.dims[0] < 2 or weight.dims[axis] != bias.dims[0]:
            continue
        found.append((i, n, axis))
    return found


def renormalize(student: onnx.ModelProto, module, inputs: dict[str, np.ndarray],
                teacher: onnx.ModelProto | None = None) -> Renormalized | None:
    """The student with a BatchNormalization after each layer to renormalize (None when none qualify).

    `teacher`: the teacher's ONNX model, whose BNs are restored where they match (see the module
    docstring). `module` (the student's OnnxModule) measures the running statistics of the other
    layers' standard BNs once, on up to STAT_SAMPLES of `inputs` (one array per model input).
    """
    layers = candidates(student)
    if not layers:
        return None
    found = teacher_batchnorms(teacher) if teacher is not None else {}
    values = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in student.graph.initializer}
    plans = {}  # output tensor -> (weight, bias, scale, shift, mean, var, epsilon, restored)
    for _, node, axis in layers:
        weight, bias = values[node.input[1]], values[node.input[2]]
        match = found.get(node.output[0])
        channels = None if match is None else channel_map(bias, match[1])
        if channels is not None and np.all(match[0].factor[channels] != 0):
            bn, factor = match[0], match[0].factor[channels]
            unfolded = weight / _along(factor, weight.ndim, axis)
            conv_bias = (bias - bn.shift[channels]) / factor + bn.mean[channels]
            plans[node.output[0]] = (unfolded, conv_bias, bn.scale[channels], bn.shift[channels], bn.mean[channels],
                                     bn.var[channels], bn.epsilon, True)
    standard = [n.output[0] for _, n, _ in layers if n.output[0] not in plans]
    if standard:
        sample = {k: _float32(v[:STAT_SAMPLES]) for k, v in inputs.items()}
        for name, (mean, var) in _student_stats(module, standard, sample).items():
            plans[name] = (None, None, np.ones_like(mean), np.zeros_like(mean), mean, var, EPSILON, False)

    out = onnx.ModelProto()
    out.CopyFrom(student)
    graph = out.graph
    nodes = [_copy(n) for n in graph.node]
    by_name = {t.name: t for t in graph.initializer}
    result = Renormalized(out)
    taken = set(by_name) | {o for n in nodes for o in n.output} | {i.name for i in graph.input}
    inserted: dict[int, onnx.NodeProto] = {}
    for index, node, axis in layers:
        name = node.output[0]
        weight, bias, scale, shift, mean, var, epsilon, restored = plans[name]
        for tensor, value in ((node.input[1], weight), (node.input[2], bias)):
            if value is not None:
                by_name[tensor].CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor))
        base = _unique(f"{node.name or name}/renorm", taken)
        bn = tuple(_unique(f"{base}.{part}", taken) for part in ("scale", "shift", "mean", "var"))
        pre = _unique(f"{name}/before_renorm", taken)
        graph.initializer.extend(numpy_helper.from_array(np.asarray(v, np.float32), n)
                                 for n, v in zip(bn, (scale, shift, mean, var)))
        nodes[index].output[0] = pre
        inserted[index] = helper.make_node("BatchNormalization", [pre, *bn], [name], name=base,
                                           epsilon=float(epsilon), momentum=0.9)
        result.layers.append(Layer(node.name, node.input[1], node.input[2], axis, bn, float(epsilon), restored))
    del graph.node[:]
    graph.node.extend(n for i, node in enumerate(nodes) for n in (node, inserted.get(i)) if n is not None)
    return result


def channel_map(student_bias: np.ndarray, teacher_bias: np.ndarray) -> np.ndarray | None:
    """For each student channel, the teacher channel with the same folded bias, in order (pruning keeps
    the order of what it keeps); None when some channel has no match within rounding."""
    if len(student_bias) > len(teacher_bias):
        return None
    found, at = [], 0
    for value in student_bias:
        close = np.abs(teacher_bias[at:] - value) <= 1e-5 * (1.0 + abs(value))
        if not close.any():
            return None
        at += int(np.argmax(close))
        found.append(at)
        at += 1
    return np.asarray(found)


def teacher_batchnorms(model: onnx.ModelProto) -> dict[str, tuple[TeacherBN, np.ndarray]]:
    """{BN output tensor: (its BN, the folded bias of its channels)} for each Conv -> BatchNormalization
    of `model` whose parameters are constants."""
    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}

    def value(name):  # an initializer, directly or through Identity (exporters share weights that way)
        while name not in inits and name in producer and producer[name].op_type == "Identity":
            name = producer[name].input[0]
        return numpy_helper.to_array(inits[name]).astype(np.float64) if name in inits else None

    found = {}
    for node in model.graph.node:
        conv = producer.get(node.input[0]) if node.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or len(node.input) < 5:
            continue
        params = [value(n) for n in node.input[1:5]]
        conv_bias = value(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else 0.0
        if any(p is None for p in params) or conv_bias is None:
            continue
        bn = TeacherBN(*params, next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5))
        found[node.output[0]] = (bn, bn.folded_bias(conv_bias))
    return found


def _along(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


class _Moments:
    """Per-channel (axis 1) mean and variance, accumulated over batches."""

    def __init__(self):
        self.sum, self.squares, self.count = 0.0, 0.0, 0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        axes = tuple(d for d in range(x.ndim) if d != 1)
        self.sum = self.sum + x.sum(axes)
        self.squares = self.squares + (x * x).sum(axes)
        self.count += x.size // x.shape[1]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.sum / self.count
        return mean, np.maximum(self.squares / self.count - mean * mean, 0.0)


def _student_stats(module, names: list[str], sample: dict) -> dict:
    import torch

    moments = {n: _Moments() for n in names}
    module.eval()
    module.capture = set(names)
    count = len(next(iter(sample.values())))
    with torch.no_grad():
        for start in range(0, count, 128):
            module(*[torch.from_numpy(sample[k][start:start + 128]) for k in module.input_names])
            for n in names:
                moments[n].add(module.captured[n].numpy())
    module.capture, module.captured = set(), {}
    return {n: m.result() for n, m in moments.items()}


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def _float32(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    return array.astype(np.float32) if array.dtype == np.float64 else array


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    return out
