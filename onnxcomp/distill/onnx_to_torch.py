"""An ONNX graph as a trainable torch module: the student of `distill --student model.onnx`.

The module interprets the graph node by node in eager torch. Float initializers with more
than one element become parameters (the weights to fine-tune); BatchNormalization running
statistics become buffers (updated in train mode, like torch's BatchNorm); scalars, integer
tensors and Constant nodes stay fixed. Shape arithmetic (Shape/Gather/Unsqueeze/Concat feeding
Reshape) is evaluated per call, so dynamic batch and sequence sizes work.

Only the ops in OPS are supported; `check_supported` names every other op before any work is
done. The graph is never changed: writeback.py puts the trained values into the same
initializers.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from onnxcomp.errors import InputError
from onnxcomp.passes.qdq.numerics import dequantize_linear, dtype_range

OPS: dict = {}

_TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool,
}


def op(*names):
    def wrap(fn):
        for name in names:
            OPS[name] = fn
        return fn
    return wrap


def check_supported(model: onnx.ModelProto, where: str = "student") -> None:
    """One InputError naming every op the interpreter does not implement (and where it is used)."""
    unknown: dict[str, str] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in OPS:
            unknown.setdefault(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}",
                               node.name or node.output[0])
    if unknown:
        listed = ", ".join(f"{op_type} (e.g. node {name!r})" for op_type, name in unknown.items())
        raise InputError(f"{where}: unsupported op(s) for ONNX fine-tuning: {listed}; supported: "
                         f"{', '.join(sorted(o for o in OPS if not o.startswith('_')))}")


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def is_trainable(array: np.ndarray) -> bool:
    """Weights are float tensors with more than one element; scalars are exporter constants."""
    return array.dtype.kind == "f" and array.size > 1


class OnnxModule(torch.nn.Module):
    """Runs an ONNX graph in torch; `forward(*inputs)` returns a tuple in graph-output order.

    `capture` names intermediate tensors to keep in `captured` during forward (for feature
    matching); `parameter_names` maps parameter keys back to initializer names.
    """

    def __init__(self, model: onnx.ModelProto, where: str = "student"):
        super().__init__()
        check_supported(model, where)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        init_names = {t.name for t in model.graph.initializer}
        self.input_names = [v.name for v in model.graph.input if v.name not in init_names]
        self.output_names = [v.name for v in model.graph.output]
        # Whether every input of rank >= 2 leaves axis 1 free (a sequence the trainer may cut short).
        self.any_length = all(len(v.type.tensor_type.shape.dim) < 2 or not v.type.tensor_type.shape.dim[1].dim_value
                              for v in model.graph.input if v.name in self.input_names)
        bn_stats = {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (3, 4)
                    if len(n.input) > i}
        # QDQ: scales and zero points stay fixed; integer weights behind a DequantizeLinear get a float
        # shadow parameter that is fake-quantized on their fixed grid in every forward (straight-through).
        qdq_consts = {n.input[i] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                      for i in (1, 2) if len(n.input) > i}
        arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.qspec: dict[str, tuple] = {}
        for n in model.graph.node:
            w = arrays.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
            if w is not None and w.dtype.kind in "iu" and n.input[1] in arrays:
                zp = n.input[2] if len(n.input) > 2 and n.input[2] else ""
                self.qspec[n.input[0]] = (n.input[1], zp, _attrs(n).get("axis", 1), w.dtype)
        self.nodes = [("_DequantizeWeight" if n.op_type == "DequantizeLinear" and n.input[0] in self.qspec
                       else n.op_type, list(n.input), list(n.output), _attrs(n), n.name) for n in model.graph.node]
        self.params = torch.nn.ParameterDict()
        self.stats = torch.nn.Module()  # BatchNorm running mean/var as buffers
        self.key_of: dict[str, tuple[str, str]] = {}  # initializer -> ("param"|"qparam"|"stat"|"const", key)
        self.consts: dict[str, torch.Tensor] = {}
        for i, init in enumerate(model.graph.initializer):
            array = arrays[init.name]
            key = f"t{i}"
            if init.name in self.qspec:
                scale_name, zp_name, axis, _ = self.qspec[init.name]
                value = dequantize_linear(array, arrays[scale_name], arrays.get(zp_name), axis)
                self.params[key] = torch.nn.Parameter(torch.from_numpy(value))
                self.key_of[init.name] = ("qparam", key)
            elif init.name in qdq_consts:
                self.consts[init.name] = _to_torch(array)
                self.key_of[init.name] = ("const", init.name)
            elif init.name in bn_stats and array.dtype.kind == "f":
                self.stats.register_buffer(key, torch.from_numpy(array.astype(np.float32).copy()))
                self.key_of[init.name] = ("stat", key)
            elif is_trainable(array):
                self.params[key] = torch.nn.Parameter(torch.from_numpy(array.astype(np.float32).copy()))
                self.key_of[init.name] = ("param", key)
            else:
                self.consts[init.name] = _to_torch(array)
                self.key_of[init.name] = ("const", init.name)
        self.parameter_names = {key: name for name, (kind, key) in self.key_of.items() if kind in ("param", "qparam")}
        self.capture: set[str] = set()
        self.captured: dict[str, torch.Tensor] = {}

    def initializer_tensor(self, name: str) -> torch.Tensor:
        kind, key = self.key_of[name]
        if kind in ("param", "qparam"):
            return self.params[key]
        if kind == "stat":
            return getattr(self.stats, key)
        return self.consts[name]

    def tensor_names(self) -> set[str]:
        return {o for _, _, outs, _, _ in self.nodes for o in outs} | set(self.input_names)

    def forward(self, *inputs):
        if len(inputs) != len(self.input_names):
            raise InputError(f"the ONNX student takes {len(self.input_names)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(inputs)}")
        env: dict[str, torch.Tensor] = dict(zip(self.input_names, inputs))
        for name in self.key_of:
            env[name] = self.initializer_tensor(name)
        self.captured = {}
        device = next((t.device for t in inputs if isinstance(t, torch.Tensor) and t.device.type != "cpu"), None)
        for op_type, ins, outs, attrs, _ in self.nodes:
            args = [env[i] if i else None for i in ins]
            if device is not None and op_type not in _READ_AS_NUMBERS:
                args = _joined(args, device)
            result = OPS[op_type](self, args, attrs)
            if not isinstance(result, (tuple, list)):
                result = (result,)
            for name, value in zip(outs, result):
                if name:
                    env[name] = value
                    if name in self.capture:
                        self.captured[name] = value
        for name in self.capture & set(self.input_names):
            self.captured[name] = env[name]
        return tuple(env[name] for name in self.output_names)


# Ops whose inputs after the first are read as Python numbers (shapes, axes, pads): those stay on the CPU.
_READ_AS_NUMBERS = {"Reshape", "Expand", "Slice", "Split", "Squeeze", "Unsqueeze", "Pad", "CumSum", "ReduceMean",
                    "ReduceSum", "ReduceMax", "ReduceMin", "Clip", "ConstantOfShape"}


def _joined(args: list, device: torch.device) -> list:
    """Shape arithmetic (Shape, Range, Constant) makes CPU tensors; where an op meets one with a tensor on
    `device` (a mask built from a Range, Gather indices into data), the CPU tensor joins the device."""
    if not any(isinstance(a, torch.Tensor) and a.device == device for a in args):
        return args
    return [a.to(device) if isinstance(a, torch.Tensor) and a.device != device else a for a in args]


def _to_torch(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    return torch.from_numpy(np.array(array, order="C", copy=True))  # ascontiguousarray would make scalars 1-D


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --- elementwise -------------------------------------------------------------------------------

@op("Add")
def _add(m, a, at):
    return a[0] + a[1]


@op("Sub")
def _sub(m, a, at):
    return a[0] - a[1]


@op("Mul")
def _mul(m, a, at):
    return a[0] * a[1]


@op("Div")
def _div(m, a, at):
    if not a[0].is_floating_point() and not a[1].is_floating_point():
        return torch.div(a[0], a[1], rounding_mode="trunc")
    return a[0] / a[1]


# Elementwise ops of one input: ONNX op_type -> the torch function computing it.
_UNARY = {
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Erf": torch.erf, "Relu": F.relu, "Sigmoid": torch.sigmoid,
    "HardSwish": F.hardswish, "Tanh": torch.tanh, "Sin": torch.sin, "Cos": torch.cos,
    "Not": torch.logical_not,
}


def _unary_op(fn):
    return lambda m, a, at: fn(a[0])


for _name, _fn in _UNARY.items():
    OPS[_name] = _unary_op(_fn)


# Elementwise ops of two inputs with numpy broadcasting: comparisons and logic carry no gradient.
_BINARY = {
    "Greater": torch.gt, "GreaterOrEqual": torch.ge, "Less": torch.lt, "LessOrEqual": torch.le,
    "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor,
}


def _binary_op(fn):
    return lambda m, a, at: fn(a[0], a[1])


for _name, _fn in _BINARY.items():
    OPS[_name] = _binary_op(_fn)


def _variadic(fn):
    """Max/Min/Sum of any number of inputs, broadcast pairwise (opset 8 on; equal shapes before)."""
    def run(m, a, at):
        parts = [t for t in a if t is not None]
        out = parts[0]
        for t in parts[1:]:
            out = fn(out, t)
        return out
    return run


OPS["Max"] = _variadic(torch.maximum)
OPS["Min"] = _variadic(torch.minimum)
OPS["Sum"] = _variadic(torch.add)


@op("Pow")
def _pow(m, a, at):
    return torch.pow(a[0], a[1].to(a[0].dtype) if a[0].is_floating_point() else a[1])


@op("LeakyRelu")
def _leaky(m, a, at):
    return F.leaky_relu(a[0], at.get("alpha", 0.01))


@op("HardSigmoid")
def _hardsigmoid(m, a, at):
    return torch.clamp(at.get("alpha", 0.2) * a[0] + at.get("beta", 0.5), 0.0, 1.0)


@op("Gelu")
def _gelu(m, a, at):
    return F.gelu(a[0], approximate="tanh" if at.get("approximate", b"none") in (b"tanh", "tanh") else "none")


@op("Clip")
def _clip(m, a, at):
    low = a[1] if len(a) > 1 and a[1] is not None else at.get("min")
    high = a[2] if len(a) > 2 and a[2] is not None else at.get("max")
    low = float(low) if low is not None else None
    high = float(high) if high is not None else None
    return torch.clamp(a[0], low, high)


@op("Identity", "Dropout")
def _identity(m, a, at):
    # Dropout is inference-mode identity: fine-tuning stays deterministic.
    return a[0]


@op("Cast")
def _cast(m, a, at):
    dtype = _TORCH_DTYPES.get(at["to"])
    if dtype is None:
        raise InputError(f"Cast to ONNX type {at['to']} is not supported for fine-tuning")
    return a[0].to(dtype)


# --- linear algebra and convolution ------------------------------------------------------------

@op("MatMul")
def _matmul(m, a, at):
    return torch.matmul(a[0], a[1])


@op("Gemm")
def _gemm(m, a, at):
    x, w = a[0], a[1]
    if at.get("transA", 0):
        x = x.t()
    if at.get("transB", 0):
        w = w.t()
    y = at.get("alpha", 1.0) * (x @ w)
    if len(a) > 2 and a[2] is not None:
        y = y + at.get("beta", 1.0) * a[2]
    return y


def _same_pads(in_sizes, kernel, strides, dilations, upper: bool) -> list[int]:
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = math.ceil(size / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if upper else large)
        ends.append(large if upper else small)
    return begins + ends


def _spatial_pads(x, at, kernel) -> list[int]:
    rank = x.dim() - 2
    strides = at.get("strides", [1] * rank)
    dilations = at.get("dilations", [1] * rank)
    auto_pad = at.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(list(x.shape[2:]), kernel, strides, dilations, auto_pad == "SAME_UPPER")
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    return list(at.get("pads", [0] * (2 * rank)))


def _pad_input(x, pads, value=0.0):
    """Apply ONNX pads [b1, b2, ..., e1, e2, ...] explicitly; returns the padded tensor."""
    rank = len(pads) // 2
    torch_pads = []
    for i in reversed(range(rank)):
        torch_pads += [pads[i], pads[i + rank]]
    return F.pad(x, torch_pads, value=value) if any(torch_pads) else x


def _symmetric(pads) -> list[int] | None:
    rank = len(pads) // 2
    return list(pads[:rank]) if list(pads[:rank]) == list(pads[rank:]) else None


@op("Conv")
def _conv(m, a, at):
    x, w = a[0], a[1]
    b = a[2] if len(a) > 2 else None
    rank = x.dim() - 2
    kernel = list(w.shape[2:])
    pads = _spatial_pads(x, at, kernel)
    sym = _symmetric(pads)
    if sym is None:
        x, sym = _pad_input(x, pads), [0] * rank
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(rank)
    if conv is None:
        raise InputError(f"Conv with {rank} spatial dims is not supported")
    return conv(x, w, b, stride=at.get("strides", [1] * rank), padding=sym,
                dilation=at.get("dilations", [1] * rank), groups=at.get("group", 1))


@op("ConvTranspose")
def _conv_transpose(m, a, at):
    x, w = a[0], a[1]
    b = a[2] if len(a) > 2 else None
    rank = x.dim() - 2
    if "output_shape" in at or at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise InputError("ConvTranspose with output_shape or auto_pad is not supported for fine-tuning")
    pads = list(at.get("pads", [0] * (2 * rank)))
    sym = _symmetric(pads)
    if sym is None:
        raise InputError("ConvTranspose with asymmetric pads is not supported for fine-tuning")
    conv = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
    return conv(x, w, b, stride=at.get("strides", [1] * rank), padding=sym,
                output_padding=at.get("output_padding", [0] * rank), groups=at.get("group", 1),
                dilation=at.get("dilations", [1] * rank))


@op("BatchNormalization")
def _batchnorm(m, a, at):
    x, scale, bias, mean, var = a[:5]
    # ONNX: running = running * momentum + batch * (1 - momentum); torch's momentum is the complement.
    return F.batch_norm(x, mean, var, scale, bias, training=m.training,
                        momentum=1.0 - at.get("momentum", 0.9), eps=at.get("epsilon", 1e-5))


@op("LayerNormalization")
def _layernorm(m, a, at):
    x, scale = a[0], a[1]
    bias = a[2] if len(a) > 2 else None
    axis = _axis(at.get("axis", -1), x.dim())
    shape = list(x.shape[axis:])
    return F.layer_norm(x, shape, scale.expand(shape) if scale.dim() < len(shape) else scale,
                        None if bias is None else (bias.expand(shape) if bias.dim() < len(shape) else bias),
                        eps=at.get("epsilon", 1e-5))


def _softmax_op(fn):
    def run(m, a, at):
        x = a[0]
        if m.opset < 13:  # older opsets: softmax over everything from `axis` on (default 1)
            axis = _axis(at.get("axis", 1), x.dim())
            lead = int(np.prod(x.shape[:axis])) if axis else 1
            return fn(x.reshape(lead, -1), -1).reshape(x.shape)
        return fn(x, at.get("axis", -1))
    return run


OPS["Softmax"] = _softmax_op(torch.softmax)
OPS["LogSoftmax"] = _softmax_op(torch.log_softmax)


# --- pooling -------------------------------------------------------------------------------------

@op("GlobalAveragePool")
def _gap(m, a, at):
    x = a[0]
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def _gmp(m, a, at):
    x = a[0]
    return torch.amax(x, dim=tuple(range(2, x.dim())), keepdim=True)


def _pool_op(kind):
    def run(m, a, at):
        x = a[0]
        rank = x.dim() - 2
        kernel = list(at["kernel_shape"])
        strides = at.get("strides", [1] * rank)
        pads = _spatial_pads(x, {**at, "dilations": at.get("dilations", [1] * rank)}, kernel)
        ceil = bool(at.get("ceil_mode", 0))
        sym = _symmetric(pads)
        if kind == "MaxPool":
            if sym is None:
                x, sym = _pad_input(x, pads, value=float("-inf")), [0] * rank
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[rank]
            return fn(x, kernel, strides, sym, dilation=at.get("dilations", [1] * rank), ceil_mode=ceil)
        include = bool(at.get("count_include_pad", 0))
        if sym is None or (any(sym) and not include):
            if any(pads) and not include:
                # Average over real values only: divide the padded sum by the padded count of ones.
                fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
                total = fn(_pad_input(x, pads), kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
                ones = _pad_input(torch.ones_like(x[:1, :1]), pads)
                count = fn(ones, kernel, strides, 0, ceil_mode=ceil, count_include_pad=True)
                return total / count
            x, sym = _pad_input(x, pads), [0] * rank
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
        return fn(x, kernel, strides, sym, ceil_mode=ceil, count_include_pad=include)
    return run


OPS["AveragePool"] = _pool_op("AveragePool")
OPS["MaxPool"] = _pool_op("MaxPool")


# --- shapes and indexing ---------------------------------------------------------------------------

@op("Flatten")
def _flatten(m, a, at):
    x = a[0]
    axis = _axis(at.get("axis", 1), x.dim())
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, -1)


@op("Reshape")
def _reshape(m, a, at):
    x, shape = a[0], _ints(a[1])
    if not at.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("Transpose")
def _transpose(m, a, at):
    x = a[0]
    return x.permute(at.get("perm", list(reversed(range(x.dim())))))


@op("Shape")
def _shape(m, a, at):
    shape = list(a[0].shape)
    start, end = at.get("start", 0), at.get("end", len(shape))
    return torch.tensor(shape[start:end], dtype=torch.int64)


@op("Size")
def _size(m, a, at):
    return torch.tensor(a[0].numel(), dtype=torch.int64)


@op("Gather")
def _gather(m, a, at):
    x, idx = a[0], a[1]
    axis = _axis(at.get("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    return torch.index_select(x, axis, idx.reshape(-1)).reshape(
        list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1:]))


def _axes(m, a, at, position=1):
    if len(a) > position and a[position] is not None:
        return _ints(a[position])
    return list(at["axes"]) if "axes" in at else None


@op("Unsqueeze")
def _unsqueeze(m, a, at):
    x = a[0]
    axes = sorted(_axis(ax, x.dim() + len(_axes(m, a, at))) for ax in _axes(m, a, at))
    for ax in axes:
        x = x.unsqueeze(ax)
    return x


@op("Squeeze")
def _squeeze(m, a, at):
    x = a[0]
    axes = _axes(m, a, at)
    if axes is None:
        return x.squeeze()
    for ax in sorted((_axis(ax, x.dim()) for ax in axes), reverse=True):
        x = x.squeeze(ax)
    return x


@op("Concat")
def _concat(m, a, at):
    parts = [t for t in a if t is not None]
    return torch.cat(parts, _axis(at["axis"], max(t.dim() for t in parts)))


@op("Split")
def _split(m, a, at):
    x = a[0]
    axis = _axis(at.get("axis", 0), x.dim())
    sizes = _ints(a[1]) if len(a) > 1 and a[1] is not None else at.get("split")
    if sizes is None:
        parts = at.get("num_outputs")
        if parts is None:
            raise InputError("Split without sizes needs its output count; not supported here")
        chunk = math.ceil(x.shape[axis] / parts)
        return torch.split(x, chunk, axis)
    return torch.split(x, list(sizes), axis)


@op("Slice")
def _slice(m, a, at):
    x = a[0]
    starts, ends = _ints(a[1]), _ints(a[2])
    axes = _ints(a[3]) if len(a) > 3 and a[3] is not None else list(range(len(starts)))
    steps = _ints(a[4]) if len(a) > 4 and a[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st < 0:
            raise InputError("Slice with negative steps is not supported for fine-tuning")
        ax = _axis(ax, x.dim())
        size = x.shape[ax]
        s = max(0, min(size, s + size if s < 0 else s))
        e = max(0, min(size, e + size if e < 0 else e))
        index[ax] = slice(s, e, st)
    return x[tuple(index)]


@op("Expand")
def _expand(m, a, at):
    x, shape = a[0], _ints(a[1])
    rank = max(len(shape), x.dim())
    shape = [1] * (rank - len(shape)) + shape
    xs = [1] * (rank - x.dim()) + list(x.shape)
    return x.reshape(xs).expand([max(s, d) if s != 1 or d == 1 else d for s, d in zip(shape, xs)])


@op("Constant")
def _constant(m, a, at):
    if "value" in at:
        return _to_torch(numpy_helper.to_array(at["value"]))
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in at:
            return torch.tensor(np.array(at[key], dtype=dtype))
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in at:
            return torch.tensor(np.array(at[key], dtype=dtype))
    raise InputError("Constant node with a sparse or string value is not supported for fine-tuning")


@op("ConstantOfShape")
def _constant_of_shape(m, a, at):
    value = _to_torch(numpy_helper.to_array(at["value"])) if "value" in at else torch.zeros(1)
    return value.reshape(()).expand(_ints(a[0])).clone()


@op("Range")
def _range(m, a, at):
    start, limit, delta = (t.reshape(()) for t in a[:3])
    if start.is_floating_point():  # ONNX: max(ceil((limit - start) / delta), 0) elements
        count = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
        return start + torch.arange(count, dtype=start.dtype, device=start.device) * delta
    return torch.arange(int(start), int(limit), int(delta), dtype=start.dtype)


@op("CumSum")
def _cumsum(m, a, at):
    x = a[0]
    axis = _axis(int(a[1].reshape(())), x.dim())
    if at.get("reverse", 0):
        x = x.flip(axis)
    out = torch.cumsum(x, axis).to(x.dtype)
    if at.get("exclusive", 0):  # shift by one: element i sums the elements before it
        zeros = torch.zeros_like(out.narrow(axis, 0, 1))
        out = torch.cat([zeros, out.narrow(axis, 0, out.shape[axis] - 1)], axis)
    return out.flip(axis) if at.get("reverse", 0) else out


def _pad_index(size: int, begin: int, end: int, mode: str) -> torch.Tensor:
    """Source positions along one axis for ONNX Pad's reflect/edge/wrap (negative pads crop)."""
    i = torch.arange(-begin, size + end)
    if mode == "edge":
        return i.clamp(0, size - 1)
    if mode == "wrap":
        return i.remainder(size)
    period = 2 * (size - 1)  # reflect, the edge value not repeated
    if period == 0:
        return torch.zeros_like(i)
    i = i.remainder(period)
    return torch.where(i < size, i, period - i)


@op("Pad")
def _pad(m, a, at):
    x = a[0]
    rank = x.dim()
    if m.opset < 11:
        pads, value, axes = list(at["pads"]), at.get("value", 0.0), list(range(rank))
    else:
        pads = _ints(a[1])
        value = a[2] if len(a) > 2 and a[2] is not None and a[2].numel() else 0
        value = value.item() if isinstance(value, torch.Tensor) else value
        axes = _ints(a[3]) if len(a) > 3 and a[3] is not None else list(range(rank))
    axes = [_axis(ax, rank) for ax in axes]
    begins, ends = pads[:len(axes)], pads[len(axes):]
    mode = at.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode == "constant":
        full = [0] * (2 * rank)
        for ax, b, e in zip(axes, begins, ends):
            full[ax], full[ax + rank] = b, e
        return _pad_input(x, full, value=value)
    if mode not in ("reflect", "edge", "wrap"):
        raise InputError(f"Pad mode {mode!r} is not supported for fine-tuning")
    for ax, b, e in zip(axes, begins, ends):
        if b or e:
            x = torch.index_select(x, ax, _pad_index(x.shape[ax], b, e, mode).to(x.device))
    return x


@op("Equal")
def _equal(m, a, at):
    return a[0] == a[1]


@op("Where")
def _where(m, a, at):
    return torch.where(a[0].bool(), a[1], a[2])


def _reduce(fn):
    def run(m, a, at):
        x = a[0]
        axes = _axes(m, a, at)
        keep = bool(at.get("keepdims", 1))
        if axes is None or len(axes) == 0:
            if at.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, [_axis(ax, x.dim()) for ax in axes], keep)
    return run


OPS["ReduceMean"] = _reduce(lambda x, axes, keep: x.mean(dim=axes, keepdim=keep))
OPS["ReduceSum"] = _reduce(lambda x, axes, keep: x.sum(dim=axes, keepdim=keep))
OPS["ReduceMax"] = _reduce(lambda x, axes, keep: torch.amax(x, dim=axes, keepdim=keep))
OPS["ReduceMin"] = _reduce(lambda x, axes, keep: torch.amin(x, dim=axes, keepdim=keep))


# --- QDQ: fake quantization with a straight-through estimator ---------------------------------------
# The arithmetic is onnxcomp.passes.qdq.numerics' (integer ranges, round half to even: torch.round
# rounds like np.rint), written in torch ops so gradients flow; the numpy side is numerics itself.

_ZP_DTYPES = {torch.int8: np.int8, torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32}


def _per_axis(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[_axis(axis, x.dim())] = -1
    return t.reshape(shape)


def _fake_quant(x, scale, zero_point, axis, qrange):
    """Quantize on the fixed grid; gradients pass straight through round() and stop where clamped."""
    s = _per_axis(scale.to(x.dtype), x, axis)
    z = 0.0 if zero_point is None else _per_axis(zero_point.to(x.dtype), x, axis)
    scaled = x / s
    rounded = scaled + (torch.round(scaled) - scaled).detach()
    return torch.clamp(rounded + z, *qrange)


def _qrange(zero_point, default=np.uint8):
    """The integer range of the zero point's type; `default`'s when there is no zero point."""
    dtype = _ZP_DTYPES.get(zero_point.dtype, default) if zero_point is not None else default
    return dtype_range(dtype)


@op("QuantizeLinear")
def _quantize_linear(m, a, at):
    zp = a[2] if len(a) > 2 else None
    # The quantized values travel as float tensors holding integers, so gradients can flow.
    return _fake_quant(a[0], a[1], zp, at.get("axis", 1), _qrange(zp))


@op("DequantizeLinear")
def _dequantize_linear(m, a, at):
    x, scale = a[0], a[1]
    zp = a[2] if len(a) > 2 else None
    axis = at.get("axis", 1)
    z = 0.0 if zp is None else _per_axis(zp.to(torch.float32), x, axis)
    return (x.to(torch.float32) - z) * _per_axis(scale, x, axis)


@op("_DequantizeWeight")
def _dequantize_weight(m, a, at):
    """A trained float shadow of an integer weight: fake-quantize it on its grid, then dequantize."""
    w, scale = a[0], a[1]
    zp = a[2] if len(a) > 2 else None
    axis = at.get("axis", 1)
    q = _fake_quant(w, scale, zp, axis, _qrange(zp, np.int8))
    z = 0.0 if zp is None else _per_axis(zp.to(w.dtype), w, axis)
    return (q - z) * _per_axis(scale, w, axis)
