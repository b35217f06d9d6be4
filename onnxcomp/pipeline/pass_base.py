"""The contract every pass follows.

A pass has a kebab-case name, says whether it is exact (outputs unchanged to float
tolerance) or lossy, and takes a frozen options dataclass that is the one source for the
CLI text, the Python API and `onnxcomp passes`. Passes keep no state between runs: all
they learn goes into the PassReport they return.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from onnxcomp.progress import say_to


# Older opsets differ in BatchNormalization, Dropout, Upsample and Slice semantics the passes rely on.
MIN_OPSET = 10


@dataclass(frozen=True)
class NoOptions:
    """For passes without options."""


@dataclass
class Skip:
    """A node (or tensor) a pass left alone, and why."""

    name: str
    reason: str


@dataclass
class PassReport:
    modified: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    skipped: list[Skip] = field(default_factory=list)
    # Larger structured facts (per-tensor tables, plans) for the JSON report.
    details: dict[str, Any] = field(default_factory=dict)

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append(Skip(name, reason))

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n


@dataclass
class PassContext:
    """What a run knows beyond the graph: sample data, target, where progress messages go.

    `data` is the sample data lossy passes calibrate and measure on: onnxcomp.measure.samples.Samples,
    one model call per feed dict at the model's own batch size, with optional labels (any source
    as_samples takes, such as a dict of arrays whose first axis is samples, is converted by
    PassManager.run). `val_data` is held-out data; numeric verification runs on it (else on
    `data`) instead of random inputs. `dims` sizes dynamic dims of generated inputs and shape
    inference (`--dim`, `--input-shapes`); `input_values` pins generated inputs (`--input-value`).
    `progress`, when given, receives each message instead of the `onnxcomp` logger (for callers
    that show progress their own way).
    """

    data: Any = None
    target: str | None = None
    seed: int = 0
    progress: Callable[[str], None] | None = None
    dims: dict[str, int] = field(default_factory=dict)
    val_data: Any = None
    input_values: dict[str, float] = field(default_factory=dict)

    def say(self, message: str) -> None:
        say_to(self.progress)(message)


class Pass:
    """Base of all passes; subclasses set the class attributes and implement run()."""

    name: ClassVar[str]
    exact: ClassVar[bool] = True
    Options: ClassVar[type] = NoOptions
    # The oldest default-domain opset whose semantics the pass relies on; optimize() converts an
    # older model up to the highest min_opset of its pipeline before any pass runs.
    min_opset: ClassVar[int] = MIN_OPSET

    def __init__(self, options: Any = None, **overrides: Any):
        if options is None:
            options = self.Options(**overrides)
        elif overrides:
            options = dataclasses.replace(options, **overrides)
        self.options = options

    @classmethod
    def description(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def run(self, graph, ctx: PassContext) -> PassReport:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"
