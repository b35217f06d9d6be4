"""Integer arithmetic of the precision wing: per-channel INT8 weights and block-wise INT4 weights.

Kept here rather than shared with passes/qdq: a wing imports no other wing (tests/test_layout.py),
and the formats differ (dynamic INT8 is weight-only arithmetic; INT4 is per block of a row).

INT4 blocks are held in one layout, `Blocks`: rows = output channels (or table rows), each row cut
into blocks of `block` consecutive reduction-axis values; unsigned codes 0..15 with a zero point per
block (8 for symmetric, so a signed code is `code - 8`). MatMulNBits stores exactly this; the Q/DQ
form transposes it back to the weight's own layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INT4_LEVELS = 16
INT4_MID = 8  # zero point of symmetric INT4 held as unsigned codes


def sqnr_db(x: np.ndarray, x_hat: np.ndarray) -> float:
    """10 log10(|x|^2 / |x - x_hat|^2); inf when exact."""
    x = np.asarray(x, np.float64)
    noise = float(np.sum((x - np.asarray(x_hat, np.float64)) ** 2))
    signal = float(np.sum(x * x))
    if noise <= 0.0:
        return math.inf
    return -math.inf if signal <= 0.0 else 10.0 * math.log10(signal / noise)


# ---- INT8 weights (quantize-dynamic) --------------------------------------------------------

def int8_per_channel(w: np.ndarray, axis: int | None, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 codes in [-qmax, qmax] and float32 scales, one per index of `axis` (None: one
    scale). A channel of zeros gets scale 1 (its codes are 0 whatever the scale)."""
    w = np.asarray(w, np.float32)
    if axis is None:
        amax = float(np.abs(w).max()) if w.size else 0.0
        scale = np.float32(amax / qmax if amax > 0 else 1.0)
        return np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int8), np.asarray(scale, np.float32)
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce) if w.size else np.zeros(w.shape[axis], np.float32)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    return np.clip(np.rint(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8), scale


# ---- INT4 blocks ----------------------------------------------------------------------------

@dataclass
class Blocks:
    """Block-wise INT4 of a [rows, k] matrix: codes [rows, nb, block] (uint8 0..15, padding at the
    zero point), scales and zero points [rows, nb]."""

    codes: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray
    k: int
    symmetric: bool

    @property
    def block(self) -> int:
        return int(self.codes.shape[2])

    def dequantize(self) -> np.ndarray:
        """The [rows, k] float32 matrix the codes stand for."""
        q = self.codes.astype(np.float32) - self.zero_points[..., None].astype(np.float32)
        return (q * self.scales[..., None]).reshape(len(self.codes), -1)[:, : self.k].astype(np.float32)


def _padded(w: np.ndarray, block: int) -> np.ndarray:
    """[rows, k] -> [rows, nb, block], the tail padded with NaN (ignored by the block statistics)."""
    rows, k = w.shape
    nb = -(-k // block)
    out = np.full((rows, nb * block), np.nan, np.float32)
    out[:, :k] = w
    return out.reshape(rows, nb, block)


def block_params(blocks: np.ndarray, symmetric: bool, shrink: float | np.ndarray = 1.0):
    """Scale and zero point of each block (last axis), NaNs ignored; `shrink` < 1 clips the range.

    Symmetric: codes -8..7 around 0, the smallest scale that holds both ends, max(-lo / 8, hi / 7).
    Asymmetric: [min(lo, 0), max(hi, 0)] onto 0..15, the zero point rounded to an integer code.
    """
    with np.errstate(all="ignore"):
        lo = np.nan_to_num(np.nanmin(blocks, axis=-1), nan=0.0)
        hi = np.nan_to_num(np.nanmax(blocks, axis=-1), nan=0.0)
    lo, hi = np.minimum(lo, 0.0) * shrink, np.maximum(hi, 0.0) * shrink
    if symmetric:
        scale = np.maximum(-lo / INT4_MID, hi / (INT4_MID - 1))
        zero = np.full(scale.shape, INT4_MID, np.uint8)
    else:
        scale = (hi - lo) / (INT4_LEVELS - 1)
        zero = None
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    if zero is None:
        zero = np.clip(np.rint(-lo / scale), 0, INT4_LEVELS - 1).astype(np.uint8)
    return scale, zero


def round_codes(blocks: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """Codes of `blocks` [..., block] under per-block scale/zero point [...] (NaN padding -> zero point)."""
    q = np.rint(blocks / scale[..., None]) + zero[..., None]
    q = np.where(np.isnan(blocks), zero[..., None], q)
    return np.clip(q, 0, INT4_LEVELS - 1).astype(np.uint8)


# Scale multipliers tried per block by `rtn`: clipping the largest values a little often lowers the error.
SHRINKS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def rtn(w: np.ndarray, block: int, symmetric: bool, search: bool = True) -> Blocks:
    """Round to nearest, per block; with `search`, each block's scale is the one of SHRINKS x its
    full range with the least squared weight error."""
    w = np.asarray(w, np.float32)
    blocks = _padded(w, block)
    best = None
    for shrink in SHRINKS if search else (1.0,):
        scale, zero = block_params(blocks, symmetric, shrink)
        codes = round_codes(blocks, scale, zero)
        err = np.nansum((blocks - (codes.astype(np.float32) - zero[..., None]) * scale[..., None]) ** 2, axis=-1)
        if best is None:
            best = [scale, zero, codes, err]
            continue
        better = err < best[3]
        best[0] = np.where(better, scale, best[0])
        best[1] = np.where(better, zero, best[1])
        best[2] = np.where(better[..., None], codes, best[2])
        best[3] = np.minimum(err, best[3])
    return Blocks(best[2], best[0], best[1], w.shape[1], symmetric)


def output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray) -> float:
    """sum over rows of (w - w_hat) H (w - w_hat)^T: the squared output error on the data H = X^T X / n."""
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    return float(np.sum((d @ hessian) * d))


def gptq(w: np.ndarray, hessian: np.ndarray, block: int, symmetric: bool, damp: float = 0.01,
         lazy: int = 128, act_order: bool = True, upper: np.ndarray | None = None) -> Blocks:
    """GPTQ (Frantar et al. 2022): quantize one reduction-axis column at a time and spread its rounding
    error over the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs.

    w [rows, k], hessian [k, k] = X^T X / n of the layer's inputs. The block scales are fixed first
    (round to nearest with scale search, so GPTQ never does worse on the weights' ranges); with
    `act_order` the columns are walked by decreasing input energy (diag H), the most excited first,
    so their error can still be absorbed by the most columns. Columns no input excites are set to 0.
    `upper` is inverse_cholesky_upper(hessian, damp, act_order) when the caller has it (layers that
    read the same input share it).
    """
    w = np.asarray(w, np.float32)
    rows, k = w.shape
    fixed = rtn(w, block, symmetric)
    scale_of = np.repeat(fixed.scales, block, axis=1)[:, :k].astype(np.float64)
    zero_of = np.repeat(fixed.zero_points, block, axis=1)[:, :k].astype(np.float64)
    order = hessian_order(hessian, act_order)
    if upper is None:
        upper = inverse_cholesky_upper(hessian, damp, act_order)
    work = np.array(w, np.float64)[:, order]
    work[:, np.diag(hessian)[order] <= 0] = 0.0
    scale_of, zero_of = scale_of[:, order], zero_of[:, order]
    q_all = np.zeros((rows, k))
    for start in range(0, k, lazy):
        stop = min(start + lazy, k)
        chunk = work[:, start:stop].copy()
        errors = np.zeros_like(chunk)
        u = upper[start:stop, start:stop]
        for i in range(stop - start):
            col = start + i
            q = np.clip(np.rint(chunk[:, i] / scale_of[:, col]) + zero_of[:, col], 0, INT4_LEVELS - 1)
            q_all[:, col] = q
            err = (chunk[:, i] - (q - zero_of[:, col]) * scale_of[:, col]) / u[i, i]
            chunk[:, i:] -= np.outer(err, u[i, i:])
            errors[:, i] = err
        work[:, stop:] -= errors @ upper[start:stop, stop:]
    codes = np.empty((rows, k), np.uint8)
    codes[:, order] = q_all.astype(np.uint8)
    blocks = _padded(codes.astype(np.float32), block)
    padded = np.where(np.isnan(blocks), fixed.zero_points[..., None], blocks).astype(np.uint8)
    return Blocks(padded, fixed.scales, fixed.zero_points, k, symmetric)


def hessian_order(hessian: np.ndarray, act_order: bool) -> np.ndarray:
    """The column order GPTQ walks: decreasing diag(H) with act_order, else natural."""
    k = len(hessian)
    return np.argsort(-np.diag(hessian), kind="stable") if act_order else np.arange(k)


def inverse_cholesky_upper(hessian: np.ndarray, damp: float = 0.01, act_order: bool = True) -> np.ndarray:
    """U upper triangular with inv(H') = U^T U, H' the damped Hessian in GPTQ's walking order."""
    order = hessian_order(hessian, act_order)
    h = np.array(hessian, np.float64)[np.ix_(order, order)]
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(len(h))] += damp * float(np.mean(np.diag(h)))
    return _inverse_cholesky_upper(h)


def _inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """U upper triangular with inv(h) = U^T U (the factor GPTQ walks)."""
    inverse = np.linalg.inv(h)
    return np.linalg.cholesky(inverse).T


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 codes 0..15 [..., n] -> bytes [..., ceil(n / 2)], element 2i in the low nibble (ONNX's
    INT4 order and MatMulNBits')."""
    codes = np.asarray(codes, np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
