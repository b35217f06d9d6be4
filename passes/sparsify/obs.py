"""Data-aware sparsification of one weight: OBS saliency masks and least-squares reconstruction.

With sample inputs X of a weighted op, zeroing weight i of an output row costs about
w_i² / [H⁻¹]_ii in squared output error (Optimal Brain Surgeon, H = XᵀX), and the kept
weights of the row can absorb most of that error. This follows SparseGPT (Frantar &
Alistarh, 2023): columns are processed in order, each pruned column's error is pushed onto
the columns not yet processed through the Cholesky factor of H⁻¹. N:M groups are chosen
as they are reached (SparseGPT's adaptive N:M); ratio masks are fixed up front from the
same saliency so the count is exact. Zeros stay zeros and already-zero weights cost
nothing, so a second run changes nothing. Biases are not touched.

Weights are handled as a matrix W [outputs, reduction] whose columns put each N:M group
next to each other: Conv [K, C, R, S] -> [K, R*S*C] (channel fastest), Gemm/MatMul B ->
[N, K]. Inputs are gathered in the same column order (im2col for Conv).
"""

from __future__ import annotations

import numpy as np

from onnxcomp.passes.sparsify.masks import prune_count

BLOCK = 128


# ---- weight <-> matrix layouts ---------------------------------------------------------------

def to_matrix(w: np.ndarray, op: str, axis: int) -> np.ndarray:
    """W as [outputs, reduction] with the reduction axis's elements contiguous per (r, s)."""
    if op == "Conv":  # [K, C, R, S] -> [K, R, S, C]
        return np.moveaxis(w, 1, -1).reshape(w.shape[0], -1)
    if w.ndim == 2:  # Gemm/MatMul B: reduction on `axis`
        return w.T if axis == 0 else w
    raise ValueError("unsupported layout")


def from_matrix(mat: np.ndarray, op: str, axis: int, shape: tuple) -> np.ndarray:
    if op == "Conv":
        k, c = shape[0], shape[1]
        return np.moveaxis(mat.reshape((k,) + tuple(shape[2:]) + (c,)), -1, 1)
    return mat.T if axis == 0 else mat


def supported(op: str, w: np.ndarray, attrs: dict) -> str | None:
    """Why this weight cannot use the data-aware path (None when it can)."""
    if op == "Conv":
        if w.ndim != 4:
            return "only 2-D convolutions"
        if int(attrs.get("group", 1)) != 1:
            return "grouped convolution"
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return "auto_pad"
        return None
    if op in ("Gemm", "MatMul") and w.ndim == 2:
        return None
    return f"{op} weight of rank {w.ndim}"


# ---- Hessian of the layer's inputs ----------------------------------------------------------

def conv_hessian(x: np.ndarray, w_shape: tuple, attrs: dict, chunk: int = 16, rows_per_column: int = 32,
                 seed: int = 0) -> np.ndarray:
    """XᵀX over output positions, columns ordered (r, s, c) like to_matrix.

    At most max(8192, rows_per_column * columns) patches (a seeded random subset of
    positions, spread evenly over the samples) are used: the cost is rows x columns², and a
    few dozen rows per column already pin the Hessian down.
    """
    _, c, r, s = w_shape
    strides = list(attrs.get("strides", [1, 1]))
    dil = list(attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    d = r * s * c
    h = np.zeros((d, d), dtype=np.float64)
    rng = np.random.default_rng(seed)
    max_rows = max(8192, rows_per_column * d)
    per_chunk = max(1, max_rows * chunk // max(1, len(x)))
    for start in range(0, len(x), chunk):
        xb = np.pad(x[start:start + chunk].astype(np.float32),
                    ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        n, _, hh, ww = xb.shape
        oh = (hh - dil[0] * (r - 1) - 1) // strides[0] + 1
        ow = (ww - dil[1] * (s - 1) - 1) // strides[1] + 1
        cols = np.empty((n, oh, ow, r, s, c), dtype=np.float32)
        for i in range(r):
            for j in range(s):
                patch = xb[:, :, i * dil[0]: i * dil[0] + strides[0] * (oh - 1) + 1: strides[0],
                           j * dil[1]: j * dil[1] + strides[1] * (ow - 1) + 1: strides[1]]
                cols[:, :, :, i, j, :] = patch.transpose(0, 2, 3, 1)
        flat = cols.reshape(-1, d)
        if len(flat) > per_chunk:
            flat = flat[rng.choice(len(flat), per_chunk, replace=False)]
        h += (flat.T @ flat).astype(np.float64)
    return h


def dense_hessian(x: np.ndarray, trans_a: bool = False) -> np.ndarray:
    """XᵀX for Gemm/MatMul inputs [..., K] (or Gemm A transposed)."""
    flat = (x.T if trans_a else x.reshape(-1, x.shape[-1])).astype(np.float64)
    return flat.T @ flat


# ---- SparseGPT-style pruning with reconstruction -------------------------------------------

def _hinv_cholesky(h: np.ndarray, w: np.ndarray, damp: float) -> np.ndarray:
    h = h.copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0  # inputs that are always zero: their weights do nothing
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    for extra in (0.0, 1e-4, 1e-2, 1e-1):
        try:
            if extra:
                h[np.diag_indices_from(h)] += extra * float(np.mean(np.diag(h)))
            inv = np.linalg.inv(np.linalg.cholesky(h))  # L⁻¹; H⁻¹ = L⁻ᵀ L⁻¹
            return np.linalg.cholesky(inv.T @ inv).T  # upper Cholesky factor of H⁻¹
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("Hessian is not positive definite")


def prune_matrix(w: np.ndarray, h: np.ndarray, *, ratio: float | None = None, nm: tuple | None = None,
                 damp: float = 0.01) -> np.ndarray:
    """Return W (float64 [rows, cols]) pruned to `ratio` (exact count) or N:M along columns."""
    w = w.astype(np.float64).copy()
    rows, cols = w.shape
    hinv = _hinv_cholesky(h, w, damp)
    fixed_prune = None
    if ratio is not None:
        saliency = (w**2) / (np.diag(hinv)[None, :] ** 2)
        fixed_prune = np.zeros(w.size, dtype=bool)
        k = prune_count(ratio, w.size)
        if k:
            fixed_prune[np.argsort(saliency.ravel(), kind="stable")[:k]] = True
        fixed_prune = fixed_prune.reshape(w.shape)
    block = BLOCK if nm is None else max(nm[1], BLOCK // nm[1] * nm[1])  # groups never straddle blocks
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        prune1 = fixed_prune[:, i1:i2] if fixed_prune is not None else np.zeros_like(w1, dtype=bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                n, m = nm
                sal = w1[:, i:i + m] ** 2 / np.diag(hinv1)[None, i:i + m] ** 2
                order = np.argsort(sal, axis=1, kind="stable")[:, : m - n]
                np.put_along_axis(prune1[:, i:i + m], order, True, axis=1)
            col = w1[:, i]
            q = np.where(prune1[:, i], 0.0, col)
            err = (col - q) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = err
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w
