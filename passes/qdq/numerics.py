"""Linear quantization arithmetic shared by calibration and the QDQ passes.

Formats: symmetric -> signed INT8 with zero point 0 (TensorRT; scale = amax / 127);
asymmetric -> UINT8 with a zero point (ONNX Runtime's fast CPU kernels; scale = (hi - lo) / 255).
"""

from __future__ import annotations

import math

import numpy as np


def qrange(symmetric: bool, bits: int = 8) -> tuple[int, int]:
    """The integer range: [-2^(b-1), 2^(b-1)-1] signed, [0, 2^b-1] unsigned."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2 ** bits - 1)


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


def fake_quantize(x: np.ndarray, scale: float, zero_point: int, symmetric: bool = False, bits: int = 8) -> np.ndarray:
    """dequantize(quantize(x)) with round-half-to-even, as ONNX QuantizeLinear does."""
    qmin, qmax = qrange(symmetric, bits)
    q = np.clip(np.rint(np.asarray(x, np.float32) / np.float32(scale)) + zero_point, qmin, qmax)
    return ((q - zero_point) * np.float32(scale)).astype(np.float32)


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
