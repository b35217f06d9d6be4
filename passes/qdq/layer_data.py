"""Calibration-time values of chosen tensors, streamed batch by batch (for smooth-quant and bias correction).

Both passes need a layer's input as ONNX Runtime computes it on the calibration data, but only
folded: per-channel min/max, per-channel sums, a sample of rows. `stream_values` runs the model
once with those tensors as extra outputs and hands each batch's values over; nothing is kept.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from onnxcomp.measure.samples import Samples, as_samples


def stream_values(model: onnx.ModelProto, data, names: list[str], batch_size: int = 16) -> Iterator[dict]:
    """{name: value} for each calibration batch (Samples, or anything as_samples takes)."""
    from onnxcomp.measure.runtime import run, session

    samples = data if isinstance(data, Samples) else as_samples(data, model, "calibration data")
    graph = model.graph
    present = {o.name for o in graph.output}
    added = [n for n in dict.fromkeys(names) if n not in present]
    for name in added:
        graph.output.add().name = name  # no type: ONNX Runtime infers it
    try:
        sess = session(model)
    finally:  # leave the caller's model as it was
        for _ in added:
            graph.output.pop()
    inputs = {i.name for i in sess.get_inputs()}
    for feeds in samples.batches(batch_size):
        yield run(sess, {k: v for k, v in feeds.items() if k in inputs}, list(dict.fromkeys(names)))


def as_rows(value: np.ndarray) -> np.ndarray:
    """[..., channels] -> [rows, channels] float32 (a MatMul reads its input along the last axis)."""
    value = np.asarray(value, np.float32)
    return value.reshape(-1, value.shape[-1]) if value.ndim else value.reshape(1, 1)


class ChannelStats:
    """Per-channel min and max over every row, and a random sample of at most `keep` rows."""

    def __init__(self, keep: int, expected_rows: int, seed: int = 0):
        self.keep, self.expected = keep, max(expected_rows, 1)
        self.rng = np.random.default_rng(seed)
        self.lo = self.hi = None
        self.parts: list[np.ndarray] = []
        self.kept = 0

    def update(self, rows: np.ndarray) -> None:
        lo, hi = rows.min(0), rows.max(0)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)
        want = min(len(rows), self.keep - self.kept, int(np.ceil(self.keep * len(rows) / self.expected)))
        if want > 0:
            self.parts.append(rows[np.sort(self.rng.choice(len(rows), want, replace=False))])
            self.kept += want

    @property
    def rows(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros((0, len(self.lo)), np.float32)

    @property
    def absmax(self) -> np.ndarray:
        return np.maximum(np.abs(self.lo), np.abs(self.hi))


def channel_stats(model: onnx.ModelProto, data, names: list[str], keep: int = 2048,
                  batch_size: int = 16, seed: int = 0) -> dict[str, ChannelStats]:
    """ChannelStats of each tensor over the calibration data, the rows sampled evenly across batches."""
    samples = data if isinstance(data, Samples) else as_samples(data, model, "calibration data")
    sizes = samples.batch_sizes(batch_size)
    stats: dict[str, ChannelStats] = {}
    for count, values in zip(sizes, stream_values(model, samples, names, batch_size)):
        for name in names:
            rows = as_rows(values[name])
            if name not in stats:  # rows per sample from the first batch: sample about `keep` in all
                expected = int(len(rows) / max(count, 1) * samples.samples)
                stats[name] = ChannelStats(keep, expected, seed)
            stats[name].update(rows)
    return stats
