"""Messages and progress bars: one `onnxcomp` logger and one bar helper, quiet when not a TTY.

Library code logs through `logger` (never print); the CLI decides the level (-v / -q). Long loops
(calibration batches, budget searches, epochs) wrap their iterable in `bar(...)`, which draws a
tqdm bar on an interactive stderr and is a plain pass-through otherwise (CI logs, pipes, tests).
Without configure() (library use) the logger has no handler: Python's default shows warnings only.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable, Iterable, Iterator, TypeVar

logger = logging.getLogger("onnxcomp")

T = TypeVar("T")


def bars_enabled() -> bool:
    """Bars only for a person watching: stderr is a terminal and messages are not silenced."""
    return sys.stderr.isatty() and logger.getEffectiveLevel() <= logging.INFO


def bar(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate `iterable` with a progress bar labelled `desc` when a person can see it.

    Messages logged while the bar is drawn are printed above it instead of through it.
    """
    if not bars_enabled():
        yield from iterable
        return
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, file=sys.stderr,
              dynamic_ncols=True) as progress, logging_redirect_tqdm(loggers=[logger]):
        yield from progress


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
