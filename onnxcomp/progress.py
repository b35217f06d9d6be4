"""Messages and progress bars: one `onnxcomp` logger and one bar helper, quiet when not a TTY.

Library code logs through `logger` (never print); the CLI decides the level (-v / -q). Long loops
(calibration batches, budget searches, epochs) wrap their iterable in `bar(...)`, which draws a
tqdm bar on an interactive stderr and is a plain pass-through otherwise (CI logs, pipes, tests).
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable, Iterator, TypeVar

logger = logging.getLogger("onnxcomp")

T = TypeVar("T")


def bars_enabled() -> bool:
    """Bars only for a person watching: stderr is a terminal and messages are not silenced."""
    return sys.stderr.isatty() and logger.getEffectiveLevel() <= logging.INFO


def bar(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate `iterable` with a progress bar labelled `desc` when a person can see it."""
    if not bars_enabled():
        yield from iterable
        return
    from tqdm import tqdm

    with tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr,
              dynamic_ncols=True) as progress:
        yield from progress


def configure(verbosity: int = 0) -> None:
    """Route `onnxcomp` messages to stderr: -q (verbosity < 0) warnings only, default info, -v debug."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logger.setLevel(level)
    if not any(getattr(h, "_onnxcomp", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("... %(message)s"))
        handler._onnxcomp = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
