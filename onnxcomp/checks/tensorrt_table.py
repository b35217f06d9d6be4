"""TensorRT's ONNX parser, release by release: the opsets it reads, the operators it imports, the
element types each operator takes and the limits its importers put on attributes and inputs.

Facts restated in our own structure and words (nothing pasted), from:

- onnx/onnx-tensorrt `docs/operators.md`, the parser's support matrix, one per release: branch
  8.6-GA (commit ee0b139), branch 10.0-GA (commit 73f629e) and the TensorRT 10.15 GA revision
  (released 2026-02-02 per `docs/Changelog.md`; it documents opsets 9 to 24).
- onnx/onnx-tensorrt sources, where the matrix is silent: `ModelImporter.cpp` at 8.6-GA and
  10.0-GA/10.1-GA (below opset 7 the parser only warns; `supportsModel` cuts the graph in
  topological order and, from 10.0, leaves NonMaxSuppression, NonZero and RoiAlign out of its
  subgraphs), and `poolingHelper` (1-D pooling is unsqueezed to 2-D, so 1-D to 3-D pooling imports).
- NVIDIA's TensorRT Support Matrix (8.6.1, 10.0.x, 10.15.1) and ONNX Opset Guide: the parser
  ships on every platform and reads opsets back to 9 for TensorRT 10 (7 for 8.x).

TensorRT 11.x (opset 25 from 11.5) is not here: no operator matrix of it was available to us.
The Q/DQ-specific facts (zero points all zero, INT8 only in 8.6) are the TRT-0x rules of
onnxcomp.passes.qdq.rules_tensorrt, not repeated here.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx import TensorProto

# ONNX element type -> the name the matrices use. Types missing here TensorRT never reads.
TYPE_NAMES = {
    TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
    TensorProto.DOUBLE: "DOUBLE", TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8",
    TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.BOOL: "BOOL",
    TensorProto.FLOAT8E4M3FN: "FP8",
}
for _name, _short in (("INT4", "INT4"), ("FLOAT4E2M1", "FP4")):
    if hasattr(TensorProto, _name):
        TYPE_NAMES[getattr(TensorProto, _name)] = _short


# ---------- the limits an importer puts on one node (checked by onnxcomp.checks.tensorrt_rules) ----------

@dataclass(frozen=True)
class ConstInput:
    """Input `index` (`name`) must be known when the engine is built: an initializer, a Constant, or
    folded from those (a value computed from static shapes only draws a warning)."""
    index: int
    name: str


@dataclass(frozen=True)
class ConstBelow:
    """Input `index` (`name`), when constant, holds values below `limit`."""
    index: int
    name: str
    limit: int


@dataclass(frozen=True)
class ConstFalse:
    """Input `index` (`name`) is absent, or a constant that is false."""
    index: int
    name: str


@dataclass(frozen=True)
class AttrIn:
    """Attribute `name` is one of `allowed` (`default` when the attribute is absent)."""
    name: str
    allowed: tuple
    default: object


@dataclass(frozen=True)
class AttrOnes:
    """Attribute `name` is absent or all ones (pooling dilations)."""
    name: str


@dataclass(frozen=True)
class AttrAbsent:
    """None of the attributes `names` is set."""
    names: tuple


@dataclass(frozen=True)
class KernelRank:
    """The kernel (len(kernel_shape)) has one of `ranks` spatial dims."""
    ranks: tuple


@dataclass(frozen=True)
class InputRank:
    """Input `index` (`name`), when present and of known rank, has one of `ranks` dims."""
    index: int
    name: str
    ranks: tuple


@dataclass(frozen=True)
class StaticDims:
    """Input `index` (`name`) has static dims: all of them, or the one attribute `axis` names."""
    index: int
    name: str
    axis_attr: str | None = None
    axis_default: int = -1


@dataclass(frozen=True)
class InputType:
    """Input `index` (`name`), when present, has element type `dtype`."""
    index: int
    name: str
    dtype: str


@dataclass(frozen=True)
class NoInput:
    """Optional input `index` (`name`) is not given."""
    index: int
    name: str


@dataclass(frozen=True)
class UnusedOutput:
    """Optional output `index` (`name`) is not produced, or nothing reads it."""
    index: int
    name: str


@dataclass(frozen=True)
class SameDirections:
    """A bidirectional RNN/GRU/LSTM uses the same activations forward and backward."""


@dataclass(frozen=True)
class SymmetricPads:
    """`pads` are the same at the start and the end of every spatial axis."""


@dataclass(frozen=True)
class IotaAxes:
    """Resize's `axes` attribute, when given, is 0, 1, ..., rank-1 (every axis, in order)."""


@dataclass(frozen=True)
class PlainEinsum:
    """An Einsum equation without an ellipsis and without a repeated index in one operand (diagonal)."""


@dataclass(frozen=True)
class DistinctBranchOutputs:
    """If: the then and else branches name their outputs differently."""


@dataclass(frozen=True)
class SeedIgnored:
    """The `seed` attribute is ignored (an info: the engine draws other numbers)."""


@dataclass(frozen=True)
class Release:
    """What one TensorRT release's ONNX parser takes."""

    version: str
    opsets: tuple[int, int]          # documented default-domain opsets (below: the parser only warns)
    types: frozenset                 # element types it reads at all
    cast_down: dict                  # types it narrows on import, clamping: {"INT64": "INT32", ...}
    io_only: frozenset               # types allowed only as network inputs and outputs
    quantized: frozenset             # types reachable only through Q/DQ, never at the network's edges
    ops: dict                        # operator -> frozenset of element types; None: no importer
    limits: dict                     # operator -> tuple of limits (the dataclasses above)
    deferred: frozenset              # ops parse() takes but supportsModel() leaves out of its subgraphs
    source: str

    def takes_opset(self, version: int) -> bool:
        return self.opsets[0] <= version <= self.opsets[1]


# ---------- operator -> element types, per release (None: listed without an importer) ----------

# TensorRT 8.6: operators.md at onnx/onnx-tensorrt branch 8.6-GA.
_OPS_8_6 = {
    "Abs": "FP32 FP16 INT32",
    "Acos": "FP32 FP16",
    "Acosh": "FP32 FP16",
    "Add": "FP32 FP16 INT32",
    "And": "BOOL",
    "ArgMax": "FP32 FP16 INT32",
    "ArgMin": "FP32 FP16 INT32",
    "Asin": "FP32 FP16",
    "Asinh": "FP32 FP16",
    "Atan": "FP32 FP16",
    "Atanh": "FP32 FP16",
    "AveragePool": "FP32 FP16 INT8 INT32",
    "BatchNormalization": "FP32 FP16",
    "Bernoulli": None,
    "BitShift": None,
    "BlackmanWindow": None,
    "Cast": "FP32 FP16 INT8 INT32 UINT8 BOOL",
    "Ceil": "FP32 FP16",
    "Celu": "FP32 FP16",
    "Clip": "FP32 FP16 INT8",
    "Compress": None,
    "Concat": "FP32 FP16 INT8 INT32 BOOL",
    "ConcatFromSequence": None,
    "Constant": "FP32 FP16 INT8 INT32 BOOL",
    "ConstantOfShape": "FP32",
    "Conv": "FP32 FP16 INT8",
    "ConvInteger": None,
    "ConvTranspose": "FP32 FP16 INT8",
    "Cos": "FP32 FP16",
    "Cosh": "FP32 FP16",
    "CumSum": "FP32 FP16",
    "DepthToSpace": "FP32 FP16 INT32",
    "DequantizeLinear": "INT8",
    "Det": None,
    "DFT": None,
    "Div": "FP32 FP16 INT32",
    "Dropout": "FP32 FP16",
    "DynamicQuantizeLinear": None,
    "Einsum": "FP32 FP16",
    "Elu": "FP32 FP16 INT8",
    "Equal": "FP32 FP16 INT32",
    "Erf": "FP32 FP16",
    "Exp": "FP32 FP16",
    "Expand": "FP32 FP16 INT32 BOOL",
    "EyeLike": "FP32 FP16 INT32 BOOL",
    "Flatten": "FP32 FP16 INT32 BOOL",
    "Floor": "FP32 FP16",
    "Gather": "FP32 FP16 INT8 INT32 BOOL",
    "GatherElements": "FP32 FP16 INT8 INT32 BOOL",
    "GatherND": "FP32 FP16 INT8 INT32 BOOL",
    "Gemm": "FP32 FP16 INT8",
    "GlobalAveragePool": "FP32 FP16 INT8",
    "GlobalLpPool": "FP32 FP16 INT8",
    "GlobalMaxPool": "FP32 FP16 INT8",
    "Greater": "FP32 FP16 INT32",
    "GreaterOrEqual": "FP32 FP16 INT32",
    "GridSample": "FP32 FP16",
    "GroupNormalization": "FP32 FP16",
    "GRU": "FP32 FP16",
    "HammingWindow": None,
    "HannWindow": None,
    "Hardmax": None,
    "HardSigmoid": "FP32 FP16 INT8",
    "HardSwish": "FP32 FP16 INT8",
    "Identity": "FP32 FP16 INT8 INT32 BOOL",
    "If": "FP32 FP16 INT32 BOOL",
    "ImageScaler": "FP32 FP16",
    "InstanceNormalization": "FP32 FP16",
    "IsInf": "FP32 FP16",
    "IsNaN": "FP32 FP16 INT32",
    "LayerNormalization": "FP32 FP16",
    "LeakyRelu": "FP32 FP16 INT8",
    "Less": "FP32 FP16 INT32",
    "LessOrEqual": "FP32 FP16 INT32",
    "Log": "FP32 FP16",
    "LogSoftmax": "FP32 FP16",
    "Loop": "FP32 FP16 INT32 BOOL",
    "LpNormalization": "FP32 FP16",
    "LpPool": "FP32 FP16 INT8",
    "LRN": "FP32 FP16",
    "LSTM": "FP32 FP16",
    "MatMul": "FP32 FP16",
    "MatMulInteger": None,
    "Max": "FP32 FP16 INT32",
    "MaxPool": "FP32 FP16 INT8",
    "MaxRoiPool": None,
    "MaxUnpool": None,
    "Mean": "FP32 FP16 INT32",
    "MeanVarianceNormalization": "FP32 FP16",
    "MelWeightMatrix": None,
    "Min": "FP32 FP16 INT32",
    "Mod": "FP32 FP16 INT32",
    "Mul": "FP32 FP16 INT32",
    "Multinomial": None,
    "Neg": "FP32 FP16 INT32",
    "NegativeLogLikelihoodLoss": None,
    "NonMaxSuppression": "FP32 FP16",
    "NonZero": "FP32 FP16",
    "Not": "BOOL",
    "OneHot": "FP32 FP16 INT32 BOOL",
    "Optional": None,
    "OptionalGetElement": None,
    "OptionalHasElement": None,
    "Or": "BOOL",
    "Pad": "FP32 FP16 INT8 INT32",
    "ParametricSoftplus": "FP32 FP16 INT8",
    "Pow": "FP32 FP16",
    "PRelu": "FP32 FP16 INT8",
    "QLinearConv": None,
    "QLinearMatMul": None,
    "QuantizeLinear": "FP32 FP16",
    "RandomNormal": "FP32 FP16",
    "RandomNormalLike": "FP32 FP16",
    "RandomUniform": "FP32 FP16",
    "RandomUniformLike": "FP32 FP16",
    "Range": "FP32 FP16 INT32",
    "Reciprocal": "FP32 FP16",
    "ReduceL1": "FP32 FP16",
    "ReduceL2": "FP32 FP16",
    "ReduceLogSum": "FP32 FP16",
    "ReduceLogSumExp": "FP32 FP16",
    "ReduceMax": "FP32 FP16",
    "ReduceMean": "FP32 FP16",
    "ReduceMin": "FP32 FP16",
    "ReduceProd": "FP32 FP16",
    "ReduceSum": "FP32 FP16",
    "ReduceSumSquare": "FP32 FP16",
    "Relu": "FP32 FP16 INT8",
    "Reshape": "FP32 FP16 INT8 INT32 BOOL",
    "Resize": "FP32 FP16",
    "ReverseSequence": "FP32 FP16 INT8 INT32 BOOL",
    "RNN": "FP32 FP16",
    "RoiAlign": "FP32 FP16",
    "Round": "FP32 FP16 INT8",
    "ScaledTanh": "FP32 FP16 INT8",
    "Scan": "FP32 FP16",
    "Scatter": "FP32 FP16 INT8 INT32",
    "ScatterElements": "FP32 FP16 INT8 INT32",
    "ScatterND": "FP32 FP16 INT8 INT32",
    "Selu": "FP32 FP16 INT8",
    "SequenceAt": None,
    "SequenceConstruct": None,
    "SequenceEmpty": None,
    "SequenceErase": None,
    "SequenceInsert": None,
    "SequenceLength": None,
    "SequenceMap": None,
    "Shape": "FP32 FP16 INT8 INT32 BOOL",
    "Shrink": "FP32 FP16 INT32",
    "Sigmoid": "FP32 FP16 INT8",
    "Sign": "FP32 FP16 INT8 INT32",
    "Sin": "FP32 FP16",
    "Sinh": "FP32 FP16",
    "Size": "FP32 FP16 INT8 INT32 BOOL",
    "Slice": "FP32 FP16 INT8 INT32 BOOL",
    "Softmax": "FP32 FP16",
    "SoftmaxCrossEntropyLoss": None,
    "Softplus": "FP32 FP16 INT8",
    "Softsign": "FP32 FP16 INT8",
    "SpaceToDepth": "FP32 FP16 INT32",
    "Split": "FP32 FP16 INT32 BOOL",
    "SplitToSequence": None,
    "Sqrt": "FP32 FP16",
    "Squeeze": "FP32 FP16 INT8 INT32 BOOL",
    "STFT": None,
    "StringNormalizer": None,
    "Sub": "FP32 FP16 INT32",
    "Sum": "FP32 FP16 INT32",
    "Tan": "FP32 FP16",
    "Tanh": "FP32 FP16 INT8",
    "TfIdfVectorizer": None,
    "ThresholdedRelu": "FP32 FP16 INT8",
    "Tile": "FP32 FP16 INT32 BOOL",
    "TopK": "FP32 FP16 INT32",
    "Transpose": "FP32 FP16 INT8 INT32 BOOL",
    "Trilu": "FP32 FP16 INT8 INT32 BOOL",
    "Unique": None,
    "Unsqueeze": "FP32 FP16 INT8 INT32 BOOL",
    "Upsample": "FP32 FP16",
    "Where": "FP32 FP16 INT32 BOOL",
    "Xor": "BOOL",
}

# TensorRT 10.0: operators.md at branch 10.0-GA.
_OPS_10_0 = {
    "Abs": "FP32 FP16 BF16 INT32 INT64",
    "Acos": "FP32 FP16 BF16",
    "Acosh": "FP32 FP16 BF16",
    "Add": "FP32 FP16 BF16 INT32 INT64",
    "AffineGrid": None,
    "And": "BOOL",
    "ArgMax": "FP32 FP16 BF16 INT32 INT64",
    "ArgMin": "FP32 FP16 BF16 INT32 INT64",
    "Asin": "FP32 FP16 BF16",
    "Asinh": "FP32 FP16 BF16",
    "Atan": "FP32 FP16 BF16",
    "Atanh": "FP32 FP16 BF16",
    "AveragePool": "FP32 FP16 BF16",
    "BatchNormalization": "FP32 FP16 BF16",
    "Bernoulli": None,
    "BitShift": None,
    "BitwiseAnd": None,
    "BitwiseNot": None,
    "BitwiseOr": None,
    "BitwiseXor": None,
    "BlackmanWindow": None,
    "Cast": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL",
    "CastLike": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL",
    "Ceil": "FP32 FP16 BF16",
    "Celu": "FP32 FP16 BF16",
    "CenterCropPad": None,
    "Clip": "FP32 FP16 BF16",
    "Col2Im": None,
    "Compress": None,
    "Concat": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "ConcatFromSequence": None,
    "Constant": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "ConstantOfShape": "FP32",
    "Conv": "FP32 FP16 BF16",
    "ConvInteger": None,
    "ConvTranspose": "FP32 FP16 BF16",
    "Cos": "FP32 FP16 BF16",
    "Cosh": "FP32 FP16 BF16",
    "CumSum": "FP32 FP16 BF16",
    "DepthToSpace": "FP32 FP16 BF16 INT32 INT64",
    "DequantizeLinear": "FP8 INT4 INT8",
    "Det": None,
    "DFT": None,
    "Div": "FP32 FP16 BF16 INT32 INT64",
    "Dropout": "FP32 FP16 BF16",
    "DynamicQuantizeLinear": None,
    "Einsum": "FP32 FP16 BF16",
    "Elu": "FP32 FP16 BF16",
    "Equal": "FP32 FP16 BF16 INT32 INT64",
    "Erf": "FP32 FP16 BF16",
    "Exp": "FP32 FP16 BF16",
    "Expand": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "EyeLike": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Flatten": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Floor": "FP32 FP16 BF16",
    "Gather": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "GatherElements": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "GatherND": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Gelu": "FP32 FP16 BF16 INT8 INT32 INT64",
    "Gemm": "FP32 FP16 BF16",
    "GlobalAveragePool": "FP32 FP16 BF16",
    "GlobalLpPool": "FP32 FP16 BF16",
    "GlobalMaxPool": "FP32 FP16 BF16",
    "Greater": "FP32 FP16 BF16 INT32 INT64",
    "GreaterOrEqual": "FP32 FP16 BF16 INT32 INT64",
    "GridSample": "FP32 FP16",
    "GroupNormalization": "FP32 FP16 BF16",
    "GRU": "FP32 FP16 BF16",
    "HammingWindow": None,
    "HannWindow": None,
    "Hardmax": "FP32 FP16 BF16",
    "HardSigmoid": "FP32 FP16 BF16",
    "HardSwish": "FP32 FP16 BF16",
    "Identity": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "If": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "ImageDecoder": None,
    "ImageScaler": "FP32 FP16 BF16",
    "InstanceNormalization": "FP32 FP16 BF16",
    "IsInf": "FP32 FP16 BF16",
    "IsNaN": "FP32 FP16 BF16 INT32 INT64",
    "LayerNormalization": "FP32 FP16 BF16",
    "LeakyRelu": "FP32 FP16 BF16",
    "Less": "FP32 FP16 BF16 INT32 INT64",
    "LessOrEqual": "FP32 FP16 BF16 INT32 INT64",
    "Log": "FP32 FP16 BF16",
    "LogSoftmax": "FP32 FP16 BF16",
    "Loop": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "LpNormalization": "FP32 FP16 BF16",
    "LpPool": "FP32 FP16 BF16",
    "LRN": "FP32 FP16 BF16",
    "LSTM": "FP32 FP16 BF16",
    "MatMul": "FP32 FP16 BF16",
    "MatMulInteger": None,
    "Max": "FP32 FP16 BF16 INT32 INT64",
    "MaxPool": "FP32 FP16 BF16",
    "MaxRoiPool": None,
    "MaxUnpool": None,
    "Mean": "FP32 FP16 BF16 FP8 INT32 INT64",
    "MeanVarianceNormalization": "FP32 FP16 BF16",
    "MelWeightMatrix": None,
    "Min": "FP32 FP16 BF16 INT32 INT64",
    "Mish": "FP32 FP16",
    "Mod": "FP32 FP16 BF16 INT32 INT64",
    "Mul": "FP32 FP16 BF16 INT32 INT64",
    "Multinomial": None,
    "Neg": "FP32 FP16 BF16 INT32 INT64",
    "NegativeLogLikelihoodLoss": None,
    "NonMaxSuppression": "FP32 FP16",
    "NonZero": "FP32 FP16",
    "Not": "BOOL",
    "OneHot": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Optional": None,
    "OptionalGetElement": None,
    "OptionalHasElement": None,
    "Or": "BOOL",
    "Pad": "FP32 FP16 BF16 INT32 INT64",
    "ParametricSoftplus": "FP32 FP16 BF16",
    "Pow": "FP32 FP16 BF16",
    "PRelu": "FP32 FP16 BF16",
    "QLinearConv": None,
    "QLinearMatMul": None,
    "QuantizeLinear": "FP32 FP16 BF16",
    "RandomNormal": "FP32 FP16 BF16",
    "RandomNormalLike": "FP32 FP16 BF16",
    "RandomUniform": "FP32 FP16 BF16",
    "RandomUniformLike": "FP32 FP16 BF16",
    "Range": "FP32 FP16 BF16 INT32 INT64",
    "Reciprocal": "FP32 FP16 BF16",
    "ReduceL1": "FP32 FP16 BF16 INT32 INT64",
    "ReduceL2": "FP32 FP16 BF16 INT32 INT64",
    "ReduceLogSum": "FP32 FP16 BF16 INT32 INT64",
    "ReduceLogSumExp": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMax": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMean": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMin": "FP32 FP16 BF16 INT32 INT64",
    "ReduceProd": "FP32 FP16 BF16 INT32 INT64",
    "ReduceSum": "FP32 FP16 BF16 INT32 INT64",
    "ReduceSumSquare": "FP32 FP16 BF16 INT32 INT64",
    "RegexFullMatch": None,
    "Relu": "FP32 FP16 BF16 INT32 INT64",
    "Reshape": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Resize": "FP32 FP16 BF16",
    "ReverseSequence": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "RNN": "FP32 FP16 BF16",
    "RoiAlign": "FP32 FP16",
    "Round": "FP32 FP16 BF16",
    "ScaledTanh": "FP32 FP16 BF16",
    "Scan": "FP32 FP16 BF16",
    "Scatter": "FP32 FP16 BF16 INT32 INT64",
    "ScatterElements": "FP32 FP16 BF16 INT32 INT64",
    "ScatterND": "FP32 FP16 BF16 INT32 INT64",
    "Selu": "FP32 FP16 BF16",
    "SequenceAt": None,
    "SequenceConstruct": None,
    "SequenceEmpty": None,
    "SequenceErase": None,
    "SequenceInsert": None,
    "SequenceLength": None,
    "SequenceMap": None,
    "Shape": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Shrink": "FP32 FP16 BF16 INT32 INT64",
    "Sigmoid": "FP32 FP16 BF16",
    "Sign": "FP32 FP16 BF16 INT32 INT64",
    "Sin": "FP32 FP16 BF16",
    "Sinh": "FP32 FP16 BF16",
    "Size": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Slice": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Softmax": "FP32 FP16 BF16",
    "SoftmaxCrossEntropyLoss": None,
    "Softplus": "FP32 FP16 BF16",
    "Softsign": "FP32 FP16 BF16",
    "SpaceToDepth": "FP32 FP16 BF16 INT32 INT64",
    "Split": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "SplitToSequence": None,
    "Sqrt": "FP32 FP16 BF16",
    "Squeeze": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "STFT": None,
    "StringConcat": None,
    "StringNormalizer": None,
    "StringSplit": None,
    "Sub": "FP32 FP16 BF16 INT32 INT64",
    "Sum": "FP32 FP16 BF16 INT32 INT64",
    "Tan": "FP32 FP16 BF16",
    "Tanh": "FP32 FP16 BF16",
    "TfIdfVectorizer": None,
    "ThresholdedRelu": "FP32 FP16 BF16",
    "Tile": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "TopK": "FP32 FP16 BF16 INT32 INT64",
    "Transpose": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Trilu": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Unique": None,
    "Unsqueeze": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Upsample": "FP32 FP16 BF16",
    "Where": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Xor": "BOOL",
}

# TensorRT 10.15: operators.md of the 10.15 GA release.
_OPS_10_15 = {
    "Abs": "FP32 FP16 BF16 INT32 INT64",
    "Acos": "FP32 FP16 BF16",
    "Acosh": "FP32 FP16 BF16",
    "Add": "FP32 FP16 BF16 INT32 INT64",
    "AffineGrid": None,
    "And": "BOOL",
    "ArgMax": "FP32 FP16 BF16 INT32 INT64",
    "ArgMin": "FP32 FP16 BF16 INT32 INT64",
    "Asin": "FP32 FP16 BF16",
    "Asinh": "FP32 FP16 BF16",
    "Atan": "FP32 FP16 BF16",
    "Atanh": "FP32 FP16 BF16",
    "Attention": "FP32 FP16 BF16 FP8 INT8",
    "AveragePool": "FP32 FP16 BF16",
    "BatchNormalization": "FP32 FP16 BF16",
    "Bernoulli": None,
    "BitShift": None,
    "BitwiseAnd": None,
    "BitwiseNot": None,
    "BitwiseOr": None,
    "BitwiseXor": None,
    "BlackmanWindow": "FP32 FP16",
    "Cast": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL",
    "CastLike": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL",
    "Ceil": "FP32 FP16 BF16",
    "Celu": "FP32 FP16 BF16",
    "CenterCropPad": None,
    "Clip": "FP32 FP16 BF16",
    "Col2Im": None,
    "Compress": None,
    "Concat": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "ConcatFromSequence": None,
    "Constant": "FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL",
    "ConstantOfShape": "FP32 FP16 BF16 FP8 FP4 INT4 INT32 INT64 BOOL",
    "Conv": "FP32 FP16 BF16",
    "ConvInteger": None,
    "ConvTranspose": "FP32 FP16 BF16",
    "Cos": "FP32 FP16 BF16",
    "Cosh": "FP32 FP16 BF16",
    "CumSum": "FP32 FP16 BF16",
    "DeformConv": "FP32 FP16",
    "DepthToSpace": "FP32 FP16 BF16 INT32 INT64",
    "DequantizeLinear": "FP8 FP4 INT4 INT8",
    "Det": None,
    "DFT": None,
    "Div": "FP32 FP16 BF16 INT32 INT64",
    "Dropout": "FP32 FP16 BF16",
    "DynamicQuantizeLinear": None,
    "Einsum": "FP32 FP16 BF16",
    "Elu": "FP32 FP16 BF16",
    "Equal": "FP32 FP16 BF16 INT32 INT64",
    "Erf": "FP32 FP16 BF16",
    "Exp": "FP32 FP16 BF16",
    "Expand": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "EyeLike": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Flatten": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Floor": "FP32 FP16 BF16",
    "Gather": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "GatherElements": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "GatherND": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Gelu": "FP32 FP16 BF16 INT8 INT32 INT64",
    "Gemm": "FP32 FP16 BF16",
    "GlobalAveragePool": "FP32 FP16 BF16",
    "GlobalLpPool": "FP32 FP16 BF16",
    "GlobalMaxPool": "FP32 FP16 BF16",
    "Greater": "FP32 FP16 BF16 INT32 INT64",
    "GreaterOrEqual": "FP32 FP16 BF16 INT32 INT64",
    "GridSample": "FP32 FP16",
    "GroupNormalization": "FP32 FP16 BF16",
    "GRU": "FP32 FP16 BF16",
    "HammingWindow": "FP32 FP16",
    "HannWindow": "FP32 FP16",
    "Hardmax": "FP32 FP16 BF16",
    "HardSigmoid": "FP32 FP16 BF16",
    "HardSwish": "FP32 FP16 BF16",
    "Identity": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "If": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "ImageDecoder": None,
    "ImageScaler": "FP32 FP16 BF16",
    "InstanceNormalization": "FP32 FP16 BF16",
    "IsInf": "FP32 FP16 BF16",
    "IsNaN": "FP32 FP16 BF16 INT32 INT64",
    "LayerNormalization": "FP32 FP16 BF16",
    "LeakyRelu": "FP32 FP16 BF16",
    "Less": "FP32 FP16 BF16 INT32 INT64",
    "LessOrEqual": "FP32 FP16 BF16 INT32 INT64",
    "Log": "FP32 FP16 BF16",
    "LogSoftmax": "FP32 FP16 BF16",
    "Loop": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "LpNormalization": "FP32 FP16 BF16",
    "LpPool": "FP32 FP16 BF16",
    "LRN": "FP32 FP16 BF16",
    "LSTM": "FP32 FP16 BF16",
    "MatMul": "FP32 FP16 BF16",
    "MatMulInteger": None,
    "Max": "FP32 FP16 BF16 INT32 INT64",
    "MaxPool": "FP32 FP16 BF16",
    "MaxRoiPool": None,
    "MaxUnpool": None,
    "Mean": "FP32 FP16 BF16 FP8 INT32 INT64",
    "MeanVarianceNormalization": "FP32 FP16 BF16",
    "MelWeightMatrix": None,
    "Min": "FP32 FP16 BF16 INT32 INT64",
    "Mish": "FP32 FP16",
    "Mod": "FP32 FP16 BF16 INT32 INT64",
    "Mul": "FP32 FP16 BF16 INT32 INT64",
    "Multinomial": None,
    "Neg": "FP32 FP16 BF16 INT32 INT64",
    "NegativeLogLikelihoodLoss": None,
    "NonMaxSuppression": "FP32 FP16",
    "NonZero": "FP32 FP16",
    "Not": "BOOL",
    "OneHot": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Optional": None,
    "OptionalGetElement": None,
    "OptionalHasElement": None,
    "Or": "BOOL",
    "Pad": "FP32 FP16 BF16 INT32 INT64",
    "ParametricSoftplus": "FP32 FP16 BF16",
    "Pow": "FP32 FP16 BF16 INT32 INT64",
    "PRelu": "FP32 FP16 BF16",
    "QLinearConv": None,
    "QLinearMatMul": None,
    "QuantizeLinear": "FP32 FP16 BF16",
    "RandomNormal": "FP32 FP16 BF16",
    "RandomNormalLike": "FP32 FP16 BF16",
    "RandomUniform": "FP32 FP16 BF16",
    "RandomUniformLike": "FP32 FP16 BF16",
    "Range": "FP32 FP16 BF16 INT32 INT64",
    "Reciprocal": "FP32 FP16 BF16",
    "ReduceL1": "FP32 FP16 BF16 INT32 INT64",
    "ReduceL2": "FP32 FP16 BF16 INT32 INT64",
    "ReduceLogSum": "FP32 FP16 BF16 INT32 INT64",
    "ReduceLogSumExp": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMax": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMean": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMin": "FP32 FP16 BF16 INT32 INT64",
    "ReduceProd": "FP32 FP16 BF16 INT32 INT64",
    "ReduceSum": "FP32 FP16 BF16 INT32 INT64",
    "ReduceSumSquare": "FP32 FP16 BF16 INT32 INT64",
    "RegexFullMatch": None,
    "Relu": "FP32 FP16 BF16 INT32 INT64",
    "Reshape": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Resize": "FP32 FP16 BF16",
    "ReverseSequence": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "RMSNormalization": "FP32 FP16 BF16",
    "RNN": "FP32 FP16 BF16",
    "RoiAlign": "FP32 FP16",
    "RotaryEmbedding": "FP32 FP16 BF16",
    "Round": "FP32 FP16 BF16",
    "ScaledTanh": "FP32 FP16 BF16",
    "Scan": "FP32 FP16 BF16",
    "Scatter": "FP32 FP16 BF16 INT32 INT64",
    "ScatterElements": "FP32 FP16 BF16 INT32 INT64",
    "ScatterND": "FP32 FP16 BF16 INT32 INT64",
    "Selu": "FP32 FP16 BF16",
    "SequenceAt": None,
    "SequenceConstruct": None,
    "SequenceEmpty": None,
    "SequenceErase": None,
    "SequenceInsert": None,
    "SequenceLength": None,
    "SequenceMap": None,
    "Shape": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Shrink": "FP32 FP16 BF16 INT32 INT64",
    "Sigmoid": "FP32 FP16 BF16",
    "Sign": "FP32 FP16 BF16 INT32 INT64",
    "Sin": "FP32 FP16 BF16",
    "Sinh": "FP32 FP16 BF16",
    "Size": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Slice": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Softmax": "FP32 FP16 BF16",
    "SoftmaxCrossEntropyLoss": None,
    "Softplus": "FP32 FP16 BF16",
    "Softsign": "FP32 FP16 BF16",
    "SpaceToDepth": "FP32 FP16 BF16 INT32 INT64",
    "Split": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "SplitToSequence": None,
    "Sqrt": "FP32 FP16 BF16",
    "Squeeze": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "STFT": "FP32",
    "StringConcat": None,
    "StringNormalizer": None,
    "StringSplit": None,
    "Sub": "FP32 FP16 BF16 INT32 INT64",
    "Sum": "FP32 FP16 BF16 INT32 INT64",
    "Tan": "FP32 FP16 BF16",
    "Tanh": "FP32 FP16 BF16",
    "TensorScatter": "FP32 FP16 BF16 INT32",
    "TfIdfVectorizer": None,
    "ThresholdedRelu": "FP32 FP16 BF16",
    "Tile": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "TopK": "FP32 FP16 BF16 INT32 INT64",
    "Transpose": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Trilu": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Unique": None,
    "Unsqueeze": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Upsample": "FP32 FP16 BF16",
    "Where": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Xor": "BOOL",
}


# ---------- limits, per release ----------

_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare")
_RANDOM = ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike")
_COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners")
_NEAREST_MODES = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")

# Every release: pooling of 1-3 spatial dims without the Indices output, the Resize modes, one
# activation set for both directions of a recurrent op, distinct If-branch output names.
_COMMON = [
    ("AveragePool", KernelRank((1, 2, 3))),
    ("MaxPool", KernelRank((1, 2, 3))),
    ("MaxPool", UnusedOutput(1, "Indices")),
    ("Resize", AttrIn("coordinate_transformation_mode", _COORDINATE_MODES, "half_pixel")),
    ("Resize", AttrIn("mode", ("nearest", "linear"), "nearest")),
    ("Resize", AttrIn("nearest_mode", _NEAREST_MODES, "round_prefer_floor")),
    ("RNN", SameDirections()), ("GRU", SameDirections()), ("LSTM", SameDirections()),
    ("If", DistinctBranchOutputs()),
    ("CumSum", ConstInput(1, "axis")),
    ("Squeeze", ConstInput(1, "axes")),
    ("Unsqueeze", ConstInput(1, "axes")),
] + [(op, SeedIgnored()) for op in _RANDOM]

# From 10.0: no pooling dilations, Resize without antialiasing or aspect-ratio policies, ScatterND
# without reduction, build-time OneHot depth, Reduce axes and the size of Hardmax's axis.
_SINCE_10 = [
    ("AveragePool", AttrOnes("dilations")), ("MaxPool", AttrOnes("dilations")), ("LpPool", AttrOnes("dilations")),
    ("Resize", AttrIn("keep_aspect_ratio_policy", ("stretch",), "stretch")),
    ("Resize", AttrIn("antialias", (0,), 0)),
    ("Resize", IotaAxes()),
    ("ScatterND", AttrIn("reduction", ("none",), "none")),
    ("OneHot", ConstInput(1, "depth")),
    ("Hardmax", StaticDims(0, "input", "axis", -1)),
] + [(op, ConstInput(1, "axes")) for op in _REDUCE]

_LIMITS_8_6 = _COMMON + [
    ("Slice", ConstInput(3, "axes")),
    ("Einsum", PlainEinsum()),
]

_LIMITS_10_0 = _COMMON + _SINCE_10 + [
    ("Slice", ConstInput(3, "axes")),  # tensor axes from 10.3
    ("Pad", ConstInput(3, "axes")),    # tensor axes from 10.4
]

_LIMITS_10_15 = _COMMON + _SINCE_10 + [
    ("Attention", InputRank(0, "Q", (4,))), ("Attention", InputRank(1, "K", (4,))),
    ("Attention", InputRank(2, "V", (4,))), ("Attention", InputRank(3, "attn_mask", (4,))),
    ("Attention", NoInput(4, "past_key")), ("Attention", NoInput(5, "past_value")),
    ("Attention", NoInput(6, "nonpad_kv_seqlen")),
    ("Attention", UnusedOutput(1, "present_key")), ("Attention", UnusedOutput(2, "present_value")),
    ("Attention", UnusedOutput(3, "qk_matmul_output")),
    ("Attention", AttrIn("qk_matmul_output_mode", (0,), 0)), ("Attention", AttrIn("softcap", (0.0,), 0.0)),
    ("Constant", AttrAbsent(("sparse_value", "value_string", "value_strings"))),
    ("DeformConv", InputRank(0, "X", (3, 4))), ("DeformConv", SymmetricPads()),
    ("Dropout", ConstFalse(2, "training_mode")),
    ("EyeLike", StaticDims(0, "input")),
    ("GridSample", InputRank(0, "X", (4,))),
    ("LayerNormalization", UnusedOutput(1, "Mean")), ("LayerNormalization", UnusedOutput(2, "InvStdDev")),
    ("LSTM", AttrIn("input_forget", (0,), 0)), ("LSTM", AttrIn("layout", (0,), 0)),
    ("RotaryEmbedding", InputType(3, "position_ids", "INT64")),
    ("STFT", ConstInput(1, "frame_step")), ("STFT", ConstInput(2, "window")),
    ("TensorScatter", InputRank(0, "past_cache", (4,))), ("TensorScatter", InputRank(1, "update", (4,))),
    ("TensorScatter", AttrIn("axis", (-2,), -2)),
    ("TopK", AttrIn("sorted", (1,), 1)), ("TopK", ConstBelow(1, "K", 3840)),
]


def _ops(table: dict) -> dict:
    return {op: None if types is None else frozenset(types.split()) for op, types in table.items()}


def _limits(pairs: list) -> dict:
    out: dict = {}
    for op, limit in pairs:
        out.setdefault(op, []).append(limit)
    return {op: tuple(limits) for op, limits in out.items()}


_DEFERRED_SINCE_10 = frozenset({"NonMaxSuppression", "NonZero", "RoiAlign"})
_TYPES_10 = frozenset("DOUBLE FP32 FP16 BF16 INT32 INT64 FP8 INT8 INT4 UINT8 BOOL".split())
_MATRIX = "onnx/onnx-tensorrt docs/operators.md"

RELEASES: dict[str, Release] = {
    "8.6": Release(
        "8.6", (7, 17), frozenset("DOUBLE FP32 FP16 INT8 INT32 INT64 UINT8 BOOL".split()),
        {"INT64": "INT32", "DOUBLE": "FP32"}, frozenset({"UINT8"}), frozenset(),
        _ops(_OPS_8_6), _limits(_LIMITS_8_6), frozenset(), f"{_MATRIX} @ 8.6-GA (ee0b139)"),
    "10.0": Release(
        "10.0", (9, 20), _TYPES_10, {"DOUBLE": "FP32"}, frozenset({"UINT8"}), frozenset({"INT8", "INT4", "FP8"}),
        _ops(_OPS_10_0), _limits(_LIMITS_10_0), _DEFERRED_SINCE_10, f"{_MATRIX} @ 10.0-GA (73f629e)"),
    "10.15": Release(
        "10.15", (9, 24), _TYPES_10 | {"FP4"}, {"DOUBLE": "FP32"}, frozenset({"UINT8"}),
        frozenset({"INT8", "INT4", "FP8", "FP4"}),
        _ops(_OPS_10_15), _limits(_LIMITS_10_15), _DEFERRED_SINCE_10, f"{_MATRIX} @ 10.15 GA (2026-02-02)"),
}
DEFAULT_RELEASE = "10.15"  # the newest documented


def release(version: str | None) -> Release:
    """The table of `version` (default: the newest), or one InputError line naming the known ones."""
    key = version or DEFAULT_RELEASE
    if key not in RELEASES:
        from onnxcomp.errors import InputError

        raise InputError(f"no table for TensorRT {key}; known releases: {', '.join(RELEASES)}")
    return RELEASES[key]


def releases_taking_opset(version: int) -> list[str]:
    """The releases whose documented range holds default-domain opset `version`."""
    return [r.version for r in RELEASES.values() if r.takes_opset(version)]
