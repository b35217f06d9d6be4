"""The factors of one layer: plain SVD of the weight, or SVD whitened by the layer's real inputs.

For Y = X W the output error of a rank-r replacement W' is ||X (W - W')||_F. With the input
second moment C = X^T X = L L^T it equals ||L^T (W - W')||_F, so the best W' is the rank-r SVD
of L^T W mapped back by L^-T (activation-whitened SVD), and its error is the tail of the
singular values: error(r) = sum_{i>r} s_i^2, relative to ||X W||^2 = sum_i s_i^2. Without data
C is the identity: plain weight SVD and the relative weight error.

When the output goes into a LayerNorm, not every output error counts the same: the norm removes
the error's mean over the channels and scales channel j by gamma_j. With M = G^T G the output
weight (G = diag(gamma) (I - 11^T/n)) and M = R R^T, the error is ||L^T (W - W') R||_F and the
best W' is the rank-r SVD of L^T W R mapped back on both sides (norms.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAMPING = 1e-6  # of the mean diagonal, so a rank-deficient input covariance still factors


@dataclass
class Spectrum:
    """The SVD of (whitened) W, enough to give factors and errors at any rank."""

    u: np.ndarray  # m x k (already mapped back by L^-T when whitened)
    s: np.ndarray  # k
    vt: np.ndarray  # k x n (already mapped back by R^-1 with an output weight)

    def relative_error(self, rank: int) -> float:
        energy = float(np.sum(self.s ** 2))
        return float(np.sum(self.s[rank:] ** 2)) / energy if energy > 0 else 0.0

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(P, Q) with W ~ P @ Q, P: m x rank, Q: rank x n; the singular values split evenly."""
        root = np.sqrt(self.s[:rank])
        return self.u[:, :rank] * root, root[:, None] * self.vt[:rank]


def spectrum(w: np.ndarray, covariance: np.ndarray | None = None, output_weight: np.ndarray | None = None) -> Spectrum:
    """SVD of W (m x n), whitened by the input covariance (m x m) and weighted by `output_weight`
    (n x n, how much each output error counts) when given."""
    if covariance is None and output_weight is None:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        return Spectrum(u, s, vt)
    left = _cholesky(covariance) if covariance is not None else np.eye(len(w))  # C = L L^T
    right = _cholesky(output_weight) if output_weight is not None else np.eye(w.shape[1])  # M = R R^T
    u, s, vt = np.linalg.svd(left.T @ w @ right, full_matrices=False)
    return Spectrum(np.linalg.solve(left.T, u), s, np.linalg.solve(right.T, vt.T).T)


def _cholesky(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.linalg.cholesky(c + np.eye(len(c)) * DAMPING * max(float(np.mean(np.diag(c))), 1e-12))
