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


def spectrum(w: np.ndarray, covariance: np.ndarray | None = None, output_weight: np.ndarray | None = None,
             right: np.ndarray | None = None) -> Spectrum:
    """SVD of W (m x n), whitened by the input covariance (m x m) and weighted by `output_weight`
    (n x n, how much each output error counts) when given; `right`: its factor (whitening(output_weight)),
    for a caller fitting one layer several times."""
    if covariance is None and output_weight is None:
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        return Spectrum(u, s, vt)
    left = whitening(covariance) if covariance is not None else None  # C = L L^T
    if output_weight is not None and right is None:
        right = whitening(output_weight)  # M = R R^T
    a = w if left is None else left.T @ w
    u, s, vt = gram_svd(a if right is None else a @ right)
    return Spectrum(u if left is None else np.linalg.solve(left.T, u), s,
                    vt if right is None else np.linalg.solve(right.T, vt.T).T)


def gram_svd(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD (u, s, vt) from the eigenvectors of the smaller Gram matrix, A^T A or A A^T: a few times
    faster than LAPACK's SVD on a 384 x 1536 layer. The squared singular values are exact to
    eps * s_max^2 (the errors are sums of them); directions with s_i near sqrt(eps) s_max are less exact,
    and a zero one gets a zero column (its factors contribute nothing)."""
    wide = a.shape[0] < a.shape[1]
    b = a.T if wide else a  # rows >= columns
    lam, v = np.linalg.eigh(b.T @ b)
    lam, v = lam[::-1], v[:, ::-1]
    s = np.sqrt(np.maximum(lam, 0.0))
    u = (b @ v) / np.where(s > 1e-12 * max(float(s[0]), 1e-300), s, np.inf)
    return (v, s, u.T) if wide else (u, s, v.T)


def whitening(c: np.ndarray) -> np.ndarray:
    """L with L L^T = C (lightly damped, so a rank-deficient covariance still factors)."""
    c = np.asarray(c, dtype=np.float64)
    return np.linalg.cholesky(c + np.eye(len(c)) * DAMPING * max(float(np.mean(np.diag(c))), 1e-12))
