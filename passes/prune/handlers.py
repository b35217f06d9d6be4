"""The table of per-op rules: how a group's channels pass through a node, and what in it must be sliced.

Each handler is called as handler(ex, node, side, index, m): the group's channels sit on
`node.inputs[index]` (side "in") or `node.outputs[index]` (side "out") with Mapping `m`.
It visits the tensors the channels couple to (ex.visit), records what must be sliced
(ex.add) and calls ex.refuse(reason) for anything it does not fully understand — a group
with one refusal is left alone, so an unknown pattern costs compression, never correctness.
The rules live by kind in elementwise.py, reshapes.py, parts.py, weighted.py and recurrent.py;
the weighted producers (Conv, ConvTranspose, Gemm, MatMul, LSTM/GRU/RNN) are where groups start.
"""

from __future__ import annotations

from onnxcomp.passes.prune import elementwise, parts, recurrent, reshapes, weighted

# Elementwise on one data input: channels pass straight through.       # x[c] -> y[c]
UNARY = frozenset({
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus",
    "Softsign", "Mish", "Gelu", "Erf", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Floor", "Ceil",
    "Round", "Sign", "ThresholdedRelu", "Identity", "Cast", "Dropout", "Clip", "Not", "Sin", "Cos", "IsNaN",
    "IsInf",
})
# Broadcasting ops: a per-channel constant is sliced; activations couple.  # a[c] op b[c] -> y[c]
BINARY = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "PRelu", "Sum", "Mean", "Mod", "Where", "Equal", "Greater",
    "Less", "GreaterOrEqual", "LessOrEqual", "And", "Or", "Xor",
})
POOL = frozenset({"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
# Reductions and arg-reductions over other axes than the channels.      # x[c, ...] -> y[c]
REDUCE = frozenset({
    "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin",
})
# Ops whose constant inputs may be traced through to an initializer when resolving weights.
CONST_PASSTHROUGH = frozenset({"Identity", "Transpose"})

HANDLERS = {
    **{op: elementwise.unary for op in UNARY},
    **{op: elementwise.binary for op in BINARY},
    **{op: elementwise.pool for op in POOL},
    **{op: elementwise.reduce for op in REDUCE},
    "BatchNormalization": elementwise.batchnorm, "InstanceNormalization": elementwise.batchnorm,
    "LayerNormalization": elementwise.normalization_axis, "Softmax": elementwise.normalization_axis,
    "LogSoftmax": elementwise.normalization_axis, "LRN": elementwise.lrn,
    "Pad": elementwise.pad, "Resize": elementwise.resize, "Upsample": elementwise.resize,
    "Transpose": elementwise.transpose, "Gather": elementwise.gather, "GatherND": elementwise.gather_nd,
    "ScatterElements": elementwise.scatter_elements,
    "Flatten": reshapes.flatten, "Reshape": reshapes.reshape, "Squeeze": reshapes.squeeze,
    "Unsqueeze": reshapes.squeeze, "Shape": reshapes.shape, "ConstantOfShape": reshapes.constant_of_shape,
    "Expand": reshapes.expand, "DepthToSpace": reshapes.depth_to_space,
    "Concat": parts.concat, "Split": parts.split, "Slice": parts.slice_,
    "Conv": weighted.conv, "ConvTranspose": weighted.conv_transpose, "Gemm": weighted.gemm, "MatMul": weighted.matmul,
    "Einsum": weighted.einsum,
    **{op: recurrent.recurrent for op in recurrent.GATES},
}

# Where a group starts: (channels, output index, channel axis) of the node, or None.
PRODUCERS = {
    "Conv": weighted.output_channels, "ConvTranspose": weighted.output_channels,
    "Gemm": weighted.output_channels, "MatMul": weighted.output_channels,
    **{op: recurrent.output_channels for op in recurrent.GATES},
}
