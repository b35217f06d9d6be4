"""Latency under ONNX Runtime on this host: models timed against each other, and the channel block
of the host's convolution kernels.

Absolute latency drifts (up to 2x within one process on a shared machine), so models are timed in
interleaved rounds, each round running every model in turn, and compared by the ratio of their
medians: drift then hits all of them alike.

ORT's blocked (NCHWc) convolutions work on channel blocks: 8 channels with AVX2, 16 with AVX-512,
and a layer whose width is not a multiple of the block falls back to a slower kernel. Which block a
host uses is measured, not assumed from CPU flags: a convolution whose width is half a block short
of a full one costs as much as the full one (or more) when the width leaves the block grid.
"""

from __future__ import annotations

import time

import numpy as np
import onnx

from onnxcomp.measure.data import LABELS
from onnxcomp.measure.runtime import random_inputs, session

BLOCKS = (32, 16, 8, 4)  # candidate channel blocks, largest first
PROBE_WIDTH = 64  # a multiple of every candidate block


def batch_feeds(model: onnx.ModelProto, data: dict[str, np.ndarray] | None, batch: int,
                seed: int = 0) -> dict[str, np.ndarray]:
    """`batch` samples for `model`: the first ones of `data` (repeated when it has fewer), else seeded
    random inputs."""
    if data is None:
        return random_inputs(model, seed=seed, batch=batch)
    feeds = {}
    for name, array in data.items():
        if name == LABELS:
            continue
        reps = -(-batch // len(array))
        feeds[name] = np.ascontiguousarray(np.concatenate([array] * reps)[:batch] if reps > 1 else array[:batch])
    return feeds


def interleaved_ms(models: list, feeds: list[dict], threads: int = 1, min_rounds: int = 7,
                   max_rounds: int = 60, budget_s: float = 2.0, warmup: int = 3,
                   statistic: str = "median") -> list[float]:
    """Milliseconds per run of each model (ModelProto or path) on its feeds, timed round by round in
    turn: the median over rounds, or the minimum (`statistic="min"`: the cost of the kernels with the
    least interference from other processes). Rounds continue until `budget_s` has passed (at least
    min_rounds, at most max_rounds; fewer, down to three, when one round alone takes longer than a fifth
    of the budget); a round times enough runs of each model to last about a millisecond."""
    sessions = [session(m, threads=threads) for m in models]
    calls, one_round = [], 0.0
    for sess, feed in zip(sessions, feeds):
        for _ in range(warmup):
            sess.run(None, feed)
        start = time.perf_counter()
        sess.run(None, feed)
        seconds = time.perf_counter() - start
        calls.append(max(1, min(50, int(1e-3 / max(seconds, 1e-6)))))
        one_round += seconds * calls[-1]
    # Slow models (a second per run) get fewer rounds, never fewer than three.
    min_rounds = max(3, min(min_rounds, int(5 * budget_s / max(one_round, 1e-9))))
    times: list[list[float]] = [[] for _ in sessions]
    began = time.perf_counter()
    for round_no in range(max_rounds):
        for i, (sess, feed) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            for _ in range(calls[i]):
                sess.run(None, feed)
            times[i].append((time.perf_counter() - start) / calls[i])
        if round_no + 1 >= min_rounds and time.perf_counter() - began > budget_s:
            break
    reduce = np.min if statistic == "min" else np.median
    return [float(reduce(t)) * 1e3 for t in times]


def _conv_pair(width: int, batch: int, size: int = 16) -> onnx.ModelProto:
    """Two 3x3 convolutions of `width` channels (with a Relu between), the shape NCHWc kernels block."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((width, width, 3, 3)).astype(np.float32), f"w{i}")
               for i in range(2)]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["y"], pads=[1, 1, 1, 1])]
    shape = [batch, width, size, size]
    graph = helper.make_graph(nodes, "block_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def channel_block(threads: int = 1, batch: int = 8) -> dict:
    """The channel block of this host's convolution kernels, measured: {"block", "widths", "ms"}.

    A PROBE_WIDTH-wide convolution pair is timed against the same pair `b/2` channels narrower for
    each candidate block b. Proportional to work, the narrower one would take ((64 - b/2) / 64)^2 of
    the time; a block shows as a step, the narrower pair taking closer to the full time than to that.
    The block is the largest b with a step (1 when none shows: widths need no rounding here).
    """
    widths = [PROBE_WIDTH] + [PROBE_WIDTH - b // 2 for b in BLOCKS]
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((batch, w, 16, 16)).astype(np.float32)} for w in widths]
    ms = interleaved_ms([_conv_pair(w, batch) for w in widths], feeds, threads, min_rounds=15, max_rounds=40,
                        budget_s=0.8, statistic="min")
    full = ms[0]
    block = 1
    for b, width, t in zip(BLOCKS, widths[1:], ms[1:]):
        proportional = (width / PROBE_WIDTH) ** 2
        if t / full > (proportional + 1.0) / 2:
            block = b
            break
    return {"block": block, "widths": widths, "ms": [round(t, 4) for t in ms]}
