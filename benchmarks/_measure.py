"""Measurements every benchmark needs: peak memory of this process, interleaved latency, accuracy."""

from __future__ import annotations

import time

import numpy as np


def peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM). getrusage's ru_maxrss is not used: Linux carries the
    parent's high-water mark across fork+exec, so a child spawned by a big benchmark would inherit it."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved_seconds(sessions: list, feeds: list[dict], rounds: int, calls: int = 1,
                        warmup: int = 3) -> list[float]:
    """Median seconds per call of each ORT session, timed round by round in turn so that the
    machine's drift hits every model alike (latency here drifts up to 2x within one process)."""
    for session, feed in zip(sessions, feeds):
        for _ in range(warmup):
            session.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, (session, feed) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            for _ in range(calls):
                session.run(None, feed)
            times[i].append((time.perf_counter() - start) / calls)
    return [float(np.median(t)) for t in times]


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(logits.argmax(1) == labels))
