"""The pass manager: runs passes in order, verifies after each, records what happened."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any

from onnxcomp._testhooks import test_pause
from onnxcomp.errors import InputError, ToleranceError, VerificationError
from onnxcomp.graph.convert import gc_paused
from onnxcomp.graph.weights import spill
from onnxcomp.measure.counts import graph_counts
from onnxcomp.pipeline.options import format_options
from onnxcomp.pipeline.pass_base import MIN_OPSET, Pass, PassContext, PassReport
from onnxcomp.progress import logger

VERIFY_LEVELS = ("none", "structure", "checker", "numeric")
# Numeric verification runs on this many samples of the user's data (at least one call).
VERIFY_SAMPLES = 8


@dataclass
class PassRecord:
    name: str
    spec: str
    exact: bool
    seconds: float
    report: PassReport
    before: dict
    after: dict
    numeric: list = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "spec": self.spec, "exact": self.exact,
            "seconds": round(self.seconds, 4), "modified": self.report.modified,
            "stats": self.report.stats, "before": self.before, "after": self.after,
            "skipped": [{"name": s.name, "reason": s.reason} for s in self.report.skipped],
            "details": self.report.details,
            "numeric": [d.as_dict() for d in self.numeric],
        }


class PassManager:
    """Run passes on a gs.Graph with verification after every pass.

    verify: "none", "structure" (default; linear-time checks), "checker" (+ ONNX checker),
    "numeric" (+ ONNX Runtime comparison of each pass's output with its input; exact passes
    must match within atol/rtol, lossy passes have their error recorded).
    """

    def __init__(self, passes: list[Pass], verify: str = "structure", atol: float = 1e-5,
                 rtol: float = 1e-4, ctx: PassContext | None = None, reproducer: str | None = None):
        if verify not in VERIFY_LEVELS:
            raise ValueError(f"verify must be one of {VERIFY_LEVELS}")
        self.passes = list(passes)
        self.verify = verify
        self.atol, self.rtol = atol, rtol
        self.ctx = ctx or PassContext()
        # Where to write the model as it was before a pass that fails verification (MLIR's
        # reproducer): the failing pass can then be rerun alone on exactly that input.
        self.reproducer = reproducer
        # The graph as last exported by verification ("checker"/"numeric"), valid until a pass edits
        # the graph again: (model, feeds, outputs), outputs only at "numeric". The next pass's
        # reference and snapshot, and optimize()'s result, reuse it instead of exporting and running
        # the same graph again.
        self.exported: tuple | None = None
        self.input_checker_problem: str | None = None

    def run(self, graph) -> list[PassRecord]:
        with gc_paused():
            return self._run(graph)

    def _run(self, graph) -> list[PassRecord]:
        records: list[PassRecord] = []
        self.exported = None
        self._check_input(graph)
        self._take_samples(graph)
        test_pause("passes")
        for index, p in enumerate(self.passes):
            before = graph_counts(graph)
            reference = self._reference(graph) if self.verify == "numeric" else None
            snapshot = self._snapshot(graph, reference)
            self.exported = None  # the pass is about to edit the graph
            self.ctx.say(f"running {p.name}")
            start = time.perf_counter()
            report = p.run(graph, self.ctx) or PassReport()
            seconds = time.perf_counter() - start
            spill(graph)  # weights on disk stay there: what the pass rewrote goes out before verification
            record = PassRecord(p.name, p.name + format_options(p.options), p.exact, seconds,
                                report, before, graph_counts(graph))
            records.append(record)
            logger.debug("%s: %.3f s, modified %s, nodes %d -> %d, stats %s", p.name, seconds, report.modified,
                         record.before["nodes"], record.after["nodes"], report.stats or "-")
            # Cycles (graphsurgeon tensors reference their own lists) wait for the collector, paused
            # during passes for speed: free what this pass dropped before the next one allocates.
            gc.collect()
            if self.verify != "none":
                logger.debug("%s: verifying (%s)", p.name, self.verify)
            try:
                self._verify(graph, p, index, record, reference)
            except (VerificationError, ToleranceError) as exc:
                if snapshot is not None:
                    from onnxcomp.graph.save import save

                    save(snapshot, self.reproducer)
                    exc.args = (f"{exc.args[0]}; the model before {p.name} is in {self.reproducer}",)
                raise
        return records

    def _check_input(self, graph) -> None:
        """Refuse a model no pass can be trusted on, so a broken input is never blamed on a pass."""
        opset = getattr(graph, "opset", None)
        if isinstance(opset, int) and 0 < opset < MIN_OPSET:
            raise InputError(f"input model uses opset {opset}; onnxcomp needs opset {MIN_OPSET} or newer "
                             "(`onnxcomp optimize` converts it; in Python: onnxcomp.graph.opset.convert_opset)")
        if self.verify == "none":
            return
        from onnxcomp.pipeline.verify import structural_problems

        problems = structural_problems(graph)
        if problems:
            raise InputError(f"input model is malformed: {_first_of(problems)}")
        if self.verify in ("checker", "numeric"):
            from onnxcomp.graph.convert import to_model
            from onnxcomp.pipeline.verify import checker_problem

            # What the checker already says of the input as graphsurgeon exports it (a round trip can
            # drop an output's shape): that complaint belongs to the input, never to a pass.
            self.input_checker_problem = checker_problem(to_model(graph))
            if self.input_checker_problem is not None:
                logger.warning(f"the input model fails the ONNX checker ({self.input_checker_problem}); "
                               "passes are checked for new problems only")

    def _snapshot(self, graph, reference):
        if self.reproducer is None:
            return None
        if reference is not None:
            return reference[2]
        if self.exported is not None:
            return self.exported[0]
        from onnxcomp.graph.convert import to_model

        return to_model(graph)

    def _where(self, index: int) -> str:
        earlier = [p.name for p in self.passes[:index]]
        return f"pass {self.passes[index].name!r}" + (f" (after {', '.join(earlier)})" if earlier else " (first pass)")

    def _take_samples(self, graph) -> None:
        """The context's data as Samples (any source as_samples takes), checked against the graph's inputs."""
        from onnxcomp.graph.signature import specs_of
        from onnxcomp.measure.samples import Samples, as_samples

        for name, where in (("data", "calibration data"), ("val_data", "validation data")):
            value = getattr(self.ctx, name)
            if value is not None and not isinstance(value, Samples):
                setattr(self.ctx, name, as_samples(value, specs_of(graph), where))

    def _reference(self, graph):
        """(feeds, outputs, model) of the graph as it is now, reusing the previous pass's verified run.

        The feeds are the first calls of the user's data (held-out data first) when there is some,
        else seeded random inputs: generated ids, sample rates or If conditions can take paths the
        model never takes in use."""
        from onnxcomp.graph.convert import to_model
        from onnxcomp.measure.runtime import random_inputs, run_model
        from onnxcomp.measure.samples import one_call

        model, last_feeds, outputs = self.exported or (to_model(graph), None, None)
        data = self.ctx.val_data if self.ctx.val_data is not None else self.ctx.data
        if data is not None:
            feeds = data.first(VERIFY_SAMPLES)
        else:
            feeds = one_call(random_inputs(model, self.ctx.dims, seed=self.ctx.seed,
                                           values=self.ctx.input_values), model)
        if outputs is None or not _same_feeds(feeds, last_feeds):
            outputs = run_model(model, feeds, batch_size=VERIFY_SAMPLES)
        return feeds, outputs, model

    def _verify(self, graph, p: Pass, index: int, record: PassRecord, reference) -> None:
        if self.verify == "none":
            return
        from onnxcomp.pipeline.verify import structural_problems

        problems = structural_problems(graph)
        if problems:
            raise VerificationError(f"{self._where(index)} broke the graph: {_first_of(problems)}")
        if self.verify in ("checker", "numeric"):
            from onnxcomp.graph.convert import to_model
            from onnxcomp.pipeline.verify import checker_problem

            model = to_model(graph)
            problem = checker_problem(model)
            if problem is not None and problem != self.input_checker_problem:
                raise VerificationError(f"{self._where(index)}: ONNX checker: {problem}")
            self.exported = (model, None, None)
        if reference is not None:
            from onnxcomp.measure.compare import Tolerances, compare_models

            feeds, expected, before = reference
            # Generated feeds are one call; the user's calls merge only where the model allows it.
            comparison = compare_models(before, model, feeds, Tolerances(self.atol, self.rtol),
                                        batch_size=VERIFY_SAMPLES, reference_outputs=expected)
            self.exported = (model, feeds, comparison.candidate)
            record.numeric = comparison.diffs
            bad = comparison.outside
            if p.exact and bad:
                d = bad[0]
                raise ToleranceError(f"{self._where(index)} is exact but changed output {d.name!r}: "
                                     f"max abs diff {d.max_abs:.3g} (atol {self.atol}, rtol {self.rtol})")


def _first_of(problems: list[str]) -> str:
    return problems[0] + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else "")


def _same_feeds(a, b) -> bool:
    """Whether two Samples hold the same calls (the same object, or equal arrays call by call)."""
    import numpy as np

    if b is None or len(a) != len(b):
        return False
    return a is b or all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))
