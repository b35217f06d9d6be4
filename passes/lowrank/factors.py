"""The factors of one layer: plain SVD of the weight, or SVD whitened by the layer's real inputs.

For Y = X W the output error of a rank-r replacement W' is ||X (W - W')||_F. With the input
second moment C = X^T X = L L^T it equals ||L^T (W - W')||_F, so the best W' is the rank-r SVD
of L^T W mapped back by L^-T (activation-whitened SVD), and its error is the tail of the
singular values: error(r) = sum_{i>r} s_i^2, relative to ||X W||^2 = sum_i s_i^2. Without data
C is the identity: plain weight SVD and the relative weight error.
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
    vt: np.ndarray  # k x n

    def relative_error(self, rank: int) -> float:
        energy = float(np.sum(self.s ** 2))
        return float(np.sum(self.s[rank:] ** 2)) / energy if energy > 0 else 0.0

    def factors(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """(P, Q) with W ~ P @ Q, P: m x rank, Q: rank x n; the singular values split evenly."""
        root = np.sqrt(self.s[:rank])
        return self.u[:, :rank] * root, root[:, None] * self.vt[:rank]


def spectrum(w: np.ndarray, covariance: np.ndarray | None = None) -> Spectrum:
    """SVD of W (m x n), whitened by the input covariance (m x m) when given."""
    if covariance is None:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        return Spectrum(u, s, vt)
    c = np.asarray(covariance, dtype=np.float64)
    c = c + np.eye(len(c)) * DAMPING * max(float(np.mean(np.diag(c))), 1e-12)
    chol = np.linalg.cholesky(c)  # C = L L^T
    u, s, vt = np.linalg.svd(chol.T @ w, full_matrices=False)
    return Spectrum(np.linalg.solve(chol.T, u), s, vt)
