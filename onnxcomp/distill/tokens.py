"""Token-id inputs and label-free augmentation for them.

A few hundred calibration sentences use a few hundred of a vocabulary's tens of thousands of ids;
a student fine-tuned on them fits those tokens and drifts on the rest (on MiniLM, 220 of the test
sentences' 299 ids never occur in the calibration set). Augmented copies of the training samples,
with a fraction of their real tokens replaced by random ids of the vocabulary, show the student the
rest of the embedding table; the teacher labels them like any other sample (no labels needed).

A token-id input is an integer model input used as the indices of a Gather into a constant table
(an embedding lookup, directly or through Cast, Reshape, ...: graph.signature.index_limits); its
vocabulary is the table's row count.
Ids found in every training sample (a start or end token, a constant segment id) are structure and
stay; positions where the padding mask is zero stay too.
"""

from __future__ import annotations

import numpy as np


def augmented(data: dict[str, np.ndarray], vocab: dict[str, int], copies: int, fraction: float,
              mask: str | None, seed: int) -> dict[str, np.ndarray]:
    """`data` followed by `copies` copies of it whose token ids (inputs in `vocab`) have `fraction` of their real,
    non-structural positions replaced by uniform random ids below the vocabulary size."""
    if copies <= 0 or fraction <= 0 or not vocab:
        return data
    rng = np.random.default_rng(seed)
    real = None if mask is None else np.asarray(data[mask]) != 0
    parts = [data]
    for _ in range(copies):
        part = dict(data)
        for name, size in vocab.items():
            ids = np.asarray(data[name])
            where = real if real is not None and real.shape == ids.shape else np.ones(ids.shape, bool)
            pick = where & ~np.isin(ids, structural(ids, where)) & (rng.random(ids.shape) < fraction)
            new = ids.copy()
            new[pick] = rng.integers(0, size, int(pick.sum()))
            part[name] = new
        parts.append(part)
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in data}


def structural(ids: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The ids present (at a real position) in every sample: start/end tokens, constant segment ids."""
    rows = [np.unique(r[w]) for r, w in zip(ids.reshape(len(ids), -1), where.reshape(len(ids), -1))]
    common = rows[0] if rows else np.array([], ids.dtype)
    for r in rows[1:]:
        common = np.intersect1d(common, r)
    return common
