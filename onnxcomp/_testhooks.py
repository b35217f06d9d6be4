"""Pause points that tests use to interrupt a run at a chosen stage."""

from __future__ import annotations

import os


def test_pause(stage: str) -> None:
    """Test hook: with ONNXCOMP_TEST_PAUSE=<stage>[,<stage>...] set, announce the stage on stderr and
    sleep, so tests can deliver a signal at a known point. Does nothing otherwise."""
    wanted = os.environ.get("ONNXCOMP_TEST_PAUSE")
    if not wanted or stage not in wanted.split(","):
        return
    import sys
    import time

    print(f"onnxcomp-test: paused at {stage}", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get("ONNXCOMP_TEST_PAUSE_SECONDS", "3")))
