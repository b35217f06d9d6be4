"""Sequence batches cut after their last real token, so measuring runs do not compute padding.

Sentences padded to one length (64 tokens for 16 real ones in a typical calibration set) make a measuring
run do several times the work it needs: the padded positions are computed and then thrown away (attention
masks them, the comparison leaves them out). Where the model's sequence axis is dynamic, a merged batch
can be cut after the last column where any row has a real token. The cut is checked once on the model:
the real positions' outputs of the cut batch must be those of the full one (a model that reads its
padding, or fixes the length inside, is never cut).
"""

from __future__ import annotations

import numpy as np

from onnxcomp.measure.padding import mask_of, zero_padding

TOLERANCE = 1e-4  # of an output's largest value: the kernels' rounding changes with the length, not more


class Trim:
    """feeds -> the same feeds cut after their last real token, where that is checked to give the same outputs."""

    def __init__(self, model, mask: str | None):
        self.mask = mask
        self.dynamic = _dynamic_sequence_inputs(model)
        self.ok: bool | None = None if mask is not None else False

    def __call__(self, feeds: dict, run=None) -> dict:
        """`feeds` cut, or as they are; `run(feeds) -> outputs`, on the first call, checks the cut."""
        if self.ok is False:
            return feeds
        cut = self._cut(feeds)
        if cut is feeds:
            return feeds
        if self.ok is None:
            if run is None:
                return feeds
            self.ok = _same_real_outputs(run(feeds), run(cut), feeds, cut, self.mask)
            if not self.ok:
                return feeds
        return cut

    def pieces(self, feeds: dict, rows: int, run=None) -> list[dict]:
        """A merged batch as pieces of `rows` rows sorted by real length, each cut: a 64-row batch of one long
        sentence and many short ones computes the long length once, not 64 times (rows are independent
        samples once merged). As one piece where the feeds are not one stack of rows."""
        m = mask_of(feeds, self.mask)
        if m is None or self.ok is False or not all(np.ndim(v) >= 1 and len(v) == len(m) for v in feeds.values()):
            return [self(feeds, run)]
        order = np.argsort(m.sum(axis=1), kind="stable")
        return [self({k: np.asarray(v)[order[i:i + rows]] for k, v in feeds.items()}, run)
                for i in range(0, len(order), rows)]

    def _cut(self, feeds: dict) -> dict:
        m = mask_of(feeds, self.mask)
        if m is None or self.mask not in self.dynamic:
            return feeds
        real = np.flatnonzero(m.any(axis=0))
        length = int(real[-1]) + 1 if len(real) else 1
        if length >= m.shape[1]:
            return feeds
        out = {}
        for name, value in feeds.items():
            v = np.asarray(value)
            if v.ndim >= 2 and tuple(v.shape[:2]) == m.shape:
                if name not in self.dynamic:
                    return feeds  # an input of that shape with a fixed length: nothing is cut
                v = v[:, :length]
            out[name] = v
        return out


def _dynamic_sequence_inputs(model) -> set[str]:
    """The inputs whose axis 1 is not a fixed number."""
    names = set()
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) >= 2 and not dims[1].HasField("dim_value"):
            names.add(value.name)
    return names


def _same_real_outputs(full: list, cut: list, feeds: dict, cut_feeds: dict, mask: str) -> bool:
    if len(full) != len(cut):
        return False
    length = np.asarray(cut_feeds[mask]).shape[1]
    for a, b in zip(full, cut):
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind != "f":
            continue
        a = zero_padding(a, feeds, mask)
        if a.ndim >= 2 and a.shape[:2] == np.asarray(feeds[mask]).shape:
            if b.shape != (a.shape[0], length) + a.shape[2:]:
                return False
            a, b = a[:, :length], zero_padding(b, cut_feeds, mask)
        elif a.shape != b.shape:
            return False
        scale = float(np.abs(a).max()) if a.size else 0.0
        if a.size and float(np.abs(a - b).max()) > TOLERANCE * max(scale, 1e-12):
            return False
    return True

