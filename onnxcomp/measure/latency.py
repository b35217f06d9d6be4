"""Latency under ONNX Runtime on this host: models timed against each other, and the channel block
of the host's convolution kernels.

Absolute latency drifts (up to 2x within one process on a shared machine), so models are timed in
interleaved rounds, each round running every model in turn, and compared by the ratio of their
medians: drift then hits all of them alike. With one thread, ORT runs the kernels on the calling
thread, and the time taken is that thread's CPU time: the time other processes held the core is
not counted (at load average 15 on 2 cores, the fastest wall-clock run of a 2.8 ms convolution pair
took 3-8 ms from one probe to the next; its CPU time 2.85-2.86 ms).

ORT's blocked (NCHWc) convolutions work on channel blocks: 8 channels with AVX2, 16 with AVX-512,
and a layer whose width is not a multiple of the block falls back to a slower kernel. Which block a
host uses is measured, not assumed from CPU flags: a convolution whose width is half a block short
of a full one costs as much as the full one (or more) when the width leaves the block grid. The
flags only say what to expect: on a shared host one probe measured 4 instead of 16 when another job
overlapped it, so a block other than the expected one is believed only when repeated probes agree
on it, and the answer is kept for the process.
"""

from __future__ import annotations

import functools
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
    least interference from other processes). Rounds as interleaved_rounds times them."""
    times = interleaved_rounds(models, feeds, threads, min_rounds, max_rounds, budget_s, warmup)
    reduce = np.min if statistic == "min" else np.median
    return [float(reduce(t)) * 1e3 for t in times]


def interleaved_rounds(models: list, feeds: list[dict], threads: int = 1, min_rounds: int = 7,
                       max_rounds: int = 60, budget_s: float = 2.0, warmup: int = 3) -> np.ndarray:
    """Seconds per run, [model, round]: every round runs each model in turn, starting one further on
    each round. Rounds continue until
    `budget_s` has passed (at least min_rounds, at most max_rounds; fewer, down to three, when one round
    alone takes longer than a fifth of the budget); a round times enough runs of each model to last
    about a millisecond. Timed in the thread's CPU time with one thread (see the module docstring),
    else in wall time."""
    clock = time.thread_time if threads == 1 else time.perf_counter
    sessions = [session(m, threads=threads) for m in models]
    calls, one_round = [], 0.0
    for sess, feed in zip(sessions, feeds):
        for _ in range(warmup):
            sess.run(None, feed)
        start = clock()
        sess.run(None, feed)
        seconds = clock() - start
        calls.append(max(1, min(50, int(1e-3 / max(seconds, 1e-6)))))
        one_round += seconds * calls[-1]
    # Slow models (a second per run) get fewer rounds, never fewer than three.
    min_rounds = max(3, min(min_rounds, int(5 * budget_s / max(one_round, 1e-9))))
    times: list[list[float]] = [[] for _ in sessions]
    began = time.perf_counter()
    for round_no in range(max_rounds):
        # The order rotates from round to round: on a shared host the model run first or right after
        # another measured 15-25% apart on small models, a bias a fixed order gives one model.
        for k in range(len(sessions)):
            i = (k + round_no) % len(sessions)
            start = clock()
            for _ in range(calls[i]):
                sessions[i].run(None, feeds[i])
            times[i].append((clock() - start) / calls[i])
        if round_no + 1 >= min_rounds and time.perf_counter() - began > budget_s:
            break
    return np.array(times)


def conv_pair(width: int, batch: int, size: int = 16) -> onnx.ModelProto:
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


PROBE_REPEATS = 3  # probes at most, when the first disagrees with what the CPU's flags predict


def expected_block() -> int | None:
    """The block ORT's NCHWc kernels use on this CPU's vector width: 16 with AVX-512, 8 with AVX2,
    None when the flags cannot be read (not x86, no /proc/cpuinfo)."""
    from onnxcomp.measure.host import cpu_flags

    flags = cpu_flags()
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else None


def channel_block(threads: int = 1, batch: int = 8) -> dict:
    """The channel block of this host's convolution kernels, measured: {"block", "expected", "probes",
    "widths", "ms"}, computed once per process (and per threads and batch).

    The block is the expected one (expected_block) when the first probe finds it or when the probes
    (up to PROBE_REPEATS) do not agree on another; another block wins only by a majority of probes.
    """
    return dict(measured_block(threads, batch))


@functools.cache
def measured_block(threads: int, batch: int) -> tuple:
    """channel_block's answer as (key, value) pairs, kept per process (`measured_block.cache_clear()`
    forgets it)."""
    expected = expected_block()
    probes = []
    for _ in range(PROBE_REPEATS):
        probes.append(probe_block(threads, batch))
        blocks = [p["block"] for p in probes]
        if blocks[0] == expected:
            break
        others = [b for b in blocks if b != expected]
        if max(others.count(b) for b in others) * 2 > PROBE_REPEATS:
            break  # a majority measured the same other block
    blocks = [p["block"] for p in probes]
    majority = max(set(blocks), key=lambda b: (blocks.count(b), b))
    block = majority if expected is None or blocks.count(majority) * 2 > PROBE_REPEATS else expected
    last = probes[-1]
    return (("block", block), ("expected", expected), ("probes", blocks), ("widths", last["widths"]),
            ("ms", last["ms"]))


def probe_block(threads: int = 1, batch: int = 8) -> dict:
    """One measurement of the channel block: {"block", "widths", "ms"}.

    A PROBE_WIDTH-wide convolution pair is timed against the same pair `b/2` channels narrower for
    each candidate block b, in interleaved rounds; each narrower pair's cost is the median over rounds
    of its time relative to the full pair's in the same round (a job that slows one round slows both).
    Proportional to work, the narrower one would take ((64 - b/2) / 64)^2 of the time; a block shows as
    a step, the narrower pair taking closer to the full time than to that. The block is the largest b
    with a step (1 when none shows: widths need no rounding here).
    """
    widths = [PROBE_WIDTH] + [PROBE_WIDTH - b // 2 for b in BLOCKS]
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((batch, w, 16, 16)).astype(np.float32)} for w in widths]
    times = interleaved_rounds([conv_pair(w, batch) for w in widths], feeds, threads, min_rounds=15,
                               max_rounds=40, budget_s=0.8)
    relative = np.median(times[1:] / times[0], axis=1)
    block = 1
    for b, width, r in zip(BLOCKS, widths[1:], relative):
        proportional = (width / PROBE_WIDTH) ** 2
        if r > (proportional + 1.0) / 2:
            block = b
            break
    return {"block": block, "widths": widths, "ms": [round(float(t) * 1e3, 4) for t in np.median(times, axis=1)]}
