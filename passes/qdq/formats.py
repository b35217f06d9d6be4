"""Number formats of the QDQ model: activation scale/zero point per target, INT8 weights, INT32 bias.

`ort`: asymmetric UINT8 activations (ONNX Runtime's CPU u8s8 kernels fuse these, and a zero point
at 0 after ReLU lets it drop the ReLU); `tensorrt`: symmetric INT8 activations with an explicit
all-zero zero point (TensorRT rejects anything else). Weights are symmetric INT8 in the narrow range
[-127, 127] for both, per output channel when asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WEIGHT_QMAX = 127  # narrow range: symmetric around 0, portable to TensorRT (TRT-10)
# 7-bit weights: ORT's u8s8 kernels on x86 without VNNI add u8*s8 pairs in int16 (vpmaddubsw),
# which saturates when 2 * 255 * |w| > 32767; |w| <= 63 keeps every pair sum exact.
REDUCED_WEIGHT_QMAX = 63


@dataclass(frozen=True)
class ActivationFormat:
    dtype: type
    symmetric: bool

    @property
    def qmin(self) -> int:
        return int(np.iinfo(self.dtype).min)

    @property
    def qmax(self) -> int:
        return int(np.iinfo(self.dtype).max)


ORT_ACTIVATIONS = ActivationFormat(np.uint8, symmetric=False)
TENSORRT_ACTIVATIONS = ActivationFormat(np.int8, symmetric=True)


def activation_format(target: str) -> ActivationFormat:
    return TENSORRT_ACTIVATIONS if target == "tensorrt" else ORT_ACTIVATIONS


def activation_params(lo: float, hi: float, fmt: ActivationFormat) -> tuple[np.float32, np.integer]:
    """Scale and zero point covering [lo, hi] (widened to include 0, so 0 is exact): calibration's
    own arithmetic (symmetric formats are the signed ones), so the zero point is computed from the
    float32 scale actually stored and a scale that underflows float32 falls back to 1."""
    from onnxcomp.passes.qdq.numerics import scale_zero_point

    scale, zero_point = scale_zero_point(lo, hi, symmetric=fmt.symmetric, bits=np.iinfo(fmt.dtype).bits)
    return np.float32(scale), fmt.dtype(zero_point)


def fake_quantize(x: np.ndarray, scale, zero_point, qmin: int, qmax: int) -> np.ndarray:
    """dq(q(x)) with round-half-to-even, as QuantizeLinear/DequantizeLinear compute it."""
    scale = np.asarray(scale, np.float32)
    q = np.clip(np.rint(x / scale) + np.asarray(zero_point, np.float64), qmin, qmax)
    return ((q - np.asarray(zero_point, np.float64)) * scale).astype(np.float32)


def weight_axis(op: str, attrs: dict, ndim: int) -> int | None:
    """Output-channel axis of a weight: Conv 0, ConvTranspose 1, Gemm by transB, MatMul [K,N] 1.

    None means per-channel makes no sense for this layout (use per-tensor).
    """
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1 if ndim >= 2 else None
    if op == "Gemm":
        return 0 if int(attrs.get("transB", 0)) else 1
    if op == "MatMul":
        return 1 if ndim == 2 else None
    return None


@dataclass
class QuantizedWeight:
    values: np.ndarray  # int8
    scale: np.ndarray  # float32, shape [channels] or scalar
    axis: int | None
    sqnr_db: float


def host_needs_reduced_range() -> bool:
    """True on x86 CPUs without VNNI, where ORT's u8s8 int8 GEMM can saturate (see REDUCED_WEIGHT_QMAX)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return not flags & {"avx512_vnni", "avx_vnni", "amx_int8"}
    except OSError:
        pass
    return False


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
        shape = [1] * w32.ndim
        shape[axis] = -1
        broadcast = scale.reshape(shape)
    q = np.clip(np.rint(w32 / broadcast), -qmax, qmax).astype(np.int8)
    error = q.astype(np.float32) * broadcast - w32
    return QuantizedWeight(q, np.asarray(scale, np.float32), axis, sqnr_db(w32, error))


def quantize_bias(bias: np.ndarray, input_scale: np.float32, weight_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """INT32 bias with scale input_scale * weight_scale (what QLinearConv/QGemm assume)."""
    scale = (np.float32(input_scale) * np.asarray(weight_scale, np.float32)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    b = np.asarray(bias, np.float64)
    q = np.clip(np.rint(b / scale.astype(np.float64)), np.iinfo(np.int32).min, np.iinfo(np.int32).max)
    return q.astype(np.int32), scale


def sqnr_db(signal: np.ndarray, error: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when exact)."""
    from onnxcomp.passes.qdq.numerics import ratio_db

    power = float(np.sum(np.square(signal, dtype=np.float64)))
    return ratio_db(power, float(np.sum(np.square(error, dtype=np.float64))))
