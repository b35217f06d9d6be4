"""Linear quantization arithmetic, the one copy: calibration, the QDQ passes and distill's QDQ interpreter.

Activations: symmetric -> signed INT8 with zero point 0 (TensorRT; scale = amax / 127);
asymmetric -> UINT8 with a zero point (ONNX Runtime's fast CPU kernels; scale = (hi - lo) / 255).
Weights: symmetric INT8 in the narrow range [-127, 127], per output channel when asked. Bias:
INT32 with scale = input scale x weight scale. Rounding is half to even everywhere, as ONNX
QuantizeLinear rounds (np.rint; torch.round rounds the same way).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxcomp.graph.op_facts import output_axis
from onnxcomp.measure.host import host_needs_reduced_range  # noqa: F401 - the wing's users import it from here

WEIGHT_QMAX = 127  # narrow range: symmetric around 0, portable to TensorRT (TRT-10)
# 7-bit weights: ORT's u8s8 kernels on x86 without VNNI add u8*s8 pairs in int16 (vpmaddubsw),
# which saturates when 2 * 255 * |w| > 32767; |w| <= 63 keeps every pair sum exact.
REDUCED_WEIGHT_QMAX = 63


# ---- integer ranges, scale and zero point ---------------------------------------------------

def qrange(symmetric: bool, bits: int = 8) -> tuple[int, int]:
    """The integer range: [-2^(b-1), 2^(b-1)-1] signed, [0, 2^b-1] unsigned."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


def dtype_range(dtype) -> tuple[int, int]:
    """The integer range of a numpy integer type (what QuantizeLinear saturates to)."""
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def scale_zero_point(lo: float, hi: float, symmetric: bool = False, bits: int = 8) -> tuple[float, int]:
    """Scale (as float32 would store it) and zero point for the range [lo, hi], widened to hold 0.

    Symmetric: zero point 0 and scale = max(|lo|, |hi|) / (2^(b-1) - 1), so -amax..amax is
    representable and the most negative code is unused (TensorRT's convention). Asymmetric: the
    range maps onto 0..2^b-1 and 0.0 lands exactly on the integer zero point.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmin, qmax = qrange(symmetric, bits)
    if symmetric:
        scale = max(-lo, hi) / qmax
    else:
        scale = (hi - lo) / (qmax - qmin)
    scale = float(np.float32(scale))
    if not (scale > 0.0 and math.isfinite(scale)):
        return 1.0, 0 if symmetric else qmin
    if symmetric:
        return scale, 0
    zero_point = int(min(max(round(qmin - lo / scale), qmin), qmax))
    return scale, zero_point


def representable(scale: float, zero_point: int, symmetric: bool = False, bits: int = 8) -> tuple[float, float]:
    """The real interval that the integer range covers with this scale and zero point."""
    qmin, qmax = qrange(symmetric, bits)
    return (qmin - zero_point) * scale, (qmax - zero_point) * scale


def fake_quantize(x: np.ndarray, scale, zero_point, symmetric: bool = False, bits: int = 8) -> np.ndarray:
    """dequantize(quantize(x)) with round-half-to-even, as ONNX QuantizeLinear/DequantizeLinear compute it.

    `scale` and `zero_point` may be arrays that broadcast against x (see per_axis)."""
    qmin, qmax = qrange(symmetric, bits)
    q = np.clip(np.rint(np.asarray(x, np.float32) / np.float32(scale)) + zero_point, qmin, qmax)
    return ((q - zero_point) * np.float32(scale)).astype(np.float32)


# ---- ONNX QuantizeLinear / DequantizeLinear in numpy ----------------------------------------

def per_axis(param: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    """A per-axis scale or zero point reshaped to broadcast against x along `axis` (a scalar stays one)."""
    if param.size == 1:
        return param.reshape(())
    shape = [1] * x.ndim
    shape[axis + x.ndim if axis < 0 else axis] = -1
    return param.reshape(shape)


def quantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int,
                    dtype) -> np.ndarray:
    """ONNX QuantizeLinear: round half to even, add the zero point, saturate to `dtype`."""
    lo, hi = dtype_range(dtype)
    zp = 0.0 if zero_point is None else per_axis(zero_point.astype(np.float64), x, axis)
    q = np.rint(x.astype(np.float64) / per_axis(scale.astype(np.float64), x, axis)) + zp
    return np.clip(q, lo, hi).astype(dtype)


def dequantize_linear(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """ONNX DequantizeLinear: (q - zero point) * scale, as float32."""
    zp = 0.0 if zero_point is None else per_axis(zero_point.astype(np.float64), q, axis)
    return ((q.astype(np.float64) - zp) * per_axis(scale.astype(np.float64), q, axis)).astype(np.float32)


# ---- error measures -------------------------------------------------------------------------

def sqnr_db(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(sum x^2 / sum (x - x_hat)^2); inf when exact."""
    x = np.asarray(x, np.float64)
    noise = float(np.sum((x - np.asarray(x_hat, np.float64)) ** 2))
    signal = float(np.sum(x * x))
    return ratio_db(signal, noise)


def ratio_db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


# ---- activation formats per target ----------------------------------------------------------

@dataclass(frozen=True)
class ActivationFormat:
    """`ort`: asymmetric UINT8 (ONNX Runtime's CPU u8s8 kernels fuse these, and a zero point at 0
    after ReLU lets it drop the ReLU); `tensorrt`: symmetric INT8 with an explicit all-zero zero
    point (TensorRT rejects anything else)."""

    dtype: type
    symmetric: bool

    @property
    def bits(self) -> int:
        return int(np.iinfo(self.dtype).bits)

    @property
    def qmin(self) -> int:
        return dtype_range(self.dtype)[0]

    @property
    def qmax(self) -> int:
        return dtype_range(self.dtype)[1]


ORT_ACTIVATIONS = ActivationFormat(np.uint8, symmetric=False)
TENSORRT_ACTIVATIONS = ActivationFormat(np.int8, symmetric=True)


def activation_format(target: str) -> ActivationFormat:
    return TENSORRT_ACTIVATIONS if target == "tensorrt" else ORT_ACTIVATIONS


def activation_params(lo: float, hi: float, fmt: ActivationFormat) -> tuple[np.float32, np.integer]:
    """Scale and zero point covering [lo, hi] (widened to include 0, so 0 is exact): the zero point
    is computed from the float32 scale actually stored and a scale that underflows float32 falls
    back to 1 (scale_zero_point; symmetric formats are the signed ones)."""
    scale, zero_point = scale_zero_point(lo, hi, symmetric=fmt.symmetric, bits=fmt.bits)
    return np.float32(scale), fmt.dtype(zero_point)


# ---- weights and bias -----------------------------------------------------------------------

def weight_axis(op: str, attrs: dict, ndim: int) -> int | None:
    """Axis of a weight's per-channel scales: its output-channel axis (Conv 0, ConvTranspose 1,
    Gemm by transB, MatMul [K,N] 1). None where per-channel makes no sense (batched MatMul
    weights, a 1-D ConvTranspose weight): use per-tensor."""
    if (op == "MatMul" and ndim != 2) or (op == "ConvTranspose" and ndim < 2):
        return None
    return output_axis(op, attrs, ndim)


@dataclass
class QuantizedWeight:
    values: np.ndarray  # int8
    scale: np.ndarray  # float32, shape [channels] or scalar
    axis: int | None
    sqnr_db: float


def quantize_weight(w: np.ndarray, axis: int | None, qmax: int = WEIGHT_QMAX) -> QuantizedWeight:
    """Symmetric INT8 weights in [-qmax, qmax], per channel on `axis` (None: one scale for the tensor)."""
    w32 = np.asarray(w, np.float32)
    if axis is None:
        amax = np.abs(w32).max() if w32.size else 0.0
        scale = np.float32(amax / qmax if amax > 0 else 1.0)
        broadcast = scale
    else:
        reduce = tuple(i for i in range(w32.ndim) if i != axis)
        amax = np.abs(w32).max(axis=reduce) if w32.size else np.zeros(w32.shape[axis], np.float32)
        scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
        broadcast = per_axis(scale, w32, axis)
    q = np.clip(np.rint(w32 / broadcast), -qmax, qmax).astype(np.int8)
    return QuantizedWeight(q, np.asarray(scale, np.float32), axis, sqnr_db(w32, q.astype(np.float32) * broadcast))


def quantize_bias(bias: np.ndarray, input_scale: np.float32, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """INT32 bias with scale input_scale * weight_scale (what QLinearConv/QGemm assume)."""
    scale = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    b = np.asarray(bias, np.float64)
    lo, hi = dtype_range(np.int32)
    q = np.clip(np.rint(b / scale.astype(np.float64)), lo, hi)
    return q.astype(np.int32), scale
