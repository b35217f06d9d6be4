"""Messages and progress bars: one `onnxcomp` logger and one bar helper, quiet when not a TTY.

Library code logs through `logger` (never print); the CLI decides the level (-v / -q). Long loops
(calibration batches, budget searches, epochs) wrap their iterable in `bar(...)`, which draws a
tqdm bar on an interactive stderr; otherwise (CI logs, pipes) it logs a plain "desc: i/n" line at most
every HEARTBEAT_SECONDS, so a long back-off in a pipeline log is visibly alive.
Without configure() (library use) the logger has no handler: Python's default shows warnings only.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

logger = logging.getLogger("onnxcomp")

T = TypeVar("T")

HEARTBEAT_SECONDS = 30.0


def bars_enabled() -> bool:
    """Bars only for a person watching: stderr is a terminal and messages are not silenced."""
    return sys.stderr.isatty() and logger.getEffectiveLevel() <= logging.INFO


def bar(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate `iterable` with a progress bar labelled `desc` when a person can see it.

    Messages logged while the bar is drawn are printed above it instead of through it.
    """
    if not bars_enabled():
        yield from _heartbeat(iterable, desc, total)
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr,
              dynamic_ncols=True) as progress, logging_redirect_tqdm(loggers=[logger]):
        yield from progress


def _heartbeat(iterable: Iterable[T], desc: str, total: int | None) -> Iterator[T]:
    """The bar of a log without a terminal: one info line per HEARTBEAT_SECONDS of a slow loop, none for
    a fast one (nothing is logged before the first interval has passed)."""
    if not logger.isEnabledFor(logging.INFO):
        yield from iterable
        return
    start = last = time.monotonic()
    for done, item in enumerate(iterable):
        now = time.monotonic()
        if now - last >= HEARTBEAT_SECONDS:
            last = now
            of = f"/{total}" if total is not None else ""
            logger.info("%s: %d%s done, %.0f s", desc, done, of, now - start)
        yield item


def say_to(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    """Where a progress message goes: the caller's callback when it gave one, else the logger."""
    return progress if progress is not None else logger.info


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message is emitted: click's test runner
    and pytest swap it between runs, and a handler bound to an old stream would write nowhere."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure(verbosity: int = 0) -> None:
    """Route `onnxcomp` messages to stderr: -q (verbosity < 0) warnings only, default info, -v debug."""
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logger.setLevel(level)
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("... %(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
