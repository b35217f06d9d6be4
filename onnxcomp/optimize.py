"""optimize(): load, run a pipeline under the pass manager, validate against the original, save."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxcomp.errors import ToleranceError, VerificationError
from onnxcomp.graph.convert import to_graph, to_model
from onnxcomp.graph.load import load_model
from onnxcomp.graph.save import fits_protobuf, save
from onnxcomp.measure.counts import model_counts
from onnxcomp.pipeline.manager import PassManager, PassRecord
from onnxcomp.pipeline.pass_base import PassContext
from onnxcomp.pipeline.text import format_pipeline, parse_pipeline

DEFAULT_PIPELINE = "cleanup,fold-bn"


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    records: list[PassRecord]
    pipeline: str
    input: dict
    output: dict
    validation: dict = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "seconds": round(self.seconds, 3), "input": self.input,
                "output": self.output, "passes": [r.as_dict() for r in self.records],
                "validation": self.validation}


def _describe(model: onnx.ModelProto, path: str | os.PathLike | None) -> dict:
    info = model_counts(model)
    info["ops"] = info.pop("ops")
    if path is not None and Path(path).exists():
        info["file"] = str(path)
        info["file_size"] = Path(path).stat().st_size
        data = Path(str(path) + ".data")
        if data.exists():
            info["external_data_size"] = data.stat().st_size
    return info


def optimize(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None = None,
             pipeline: str | list = DEFAULT_PIPELINE, data: dict[str, np.ndarray] | None = None,
             val_data: dict[str, np.ndarray] | None = None, target: str | None = None,
             verify: str = "structure", atol: float = 1e-5, rtol: float = 1e-4,
             dims: dict[str, int] | None = None, progress=None, seed: int = 0,
             check_output: bool = True, external_data: bool | None = None, preloaded: onnx.ModelProto | None = None,
             reproducer: str | os.PathLike | None = None) -> OptimizeResult:
    """Run `pipeline` on `model` and validate the result against the original.

    Exact pipelines must reproduce the original outputs within atol/rtol (else ToleranceError);
    lossy ones have their fidelity (cosine, max abs diff, top-1, accuracy) recorded.
    `data` is the calibration/sample data lossy passes use; `val_data` (held out) is
    preferred for the final comparison. `preloaded` avoids reading `model` twice. Progress
    messages go to the `onnxcomp` logger, or to `progress(message)` when that is given.
    """
    start = time.perf_counter()
    source = model if not isinstance(model, onnx.ModelProto) else None
    if preloaded is not None:
        original = preloaded
    else:
        original = load_model(model) if source is not None else model
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    ctx = PassContext(data=data, target=target, seed=seed, progress=progress, dims=dict(dims or {}))
    graph = to_graph(original)
    manager = PassManager(passes, verify=verify, atol=atol, rtol=rtol, ctx=ctx, reproducer=reproducer)
    records = manager.run(graph)
    # At verify="checker"/"numeric" the manager already exported the final graph.
    result_model = manager.exported[0] if manager.exported is not None else to_model(graph)
    _carry_metadata(original, result_model)
    result = OptimizeResult(result_model, records, format_pipeline(passes), _describe(original, source), {})
    if check_output:
        ctx.say("validating the result against the original")
        result.validation = validate_against(original, result_model, passes, val_data or data, ctx, atol, rtol)
    if output is not None:
        if external_data is None and source is not None:
            from onnxcomp.graph.save import input_files

            # Keep the input's layout: a model that came with external data leaves with it.
            external_data = True if len(input_files(source)) > 1 else None
        ctx.say(f"saving {output}")
        save(result_model, output, forbid=source, external_data=external_data)
    result.output = _describe(result_model, output)
    result.seconds = time.perf_counter() - start
    return result


def _carry_metadata(original: onnx.ModelProto, result: onnx.ModelProto) -> None:
    result.ir_version = original.ir_version
    result.producer_name = "onnxcomp"
    if original.doc_string and not result.doc_string:
        result.doc_string = original.doc_string
    if not result.metadata_props:
        result.metadata_props.extend(original.metadata_props)


def validate_against(original: onnx.ModelProto, result: onnx.ModelProto, passes, data, ctx: PassContext,
                     atol: float, rtol: float, max_samples: int = 256) -> dict:
    """ONNX checker plus an ONNX Runtime comparison of `result` with `original`."""
    from onnxcomp.measure.compare import Tolerances, compare_models
    from onnxcomp.measure.data import LABELS, model_inputs_only, take
    from onnxcomp.measure.runtime import random_inputs
    from onnxcomp.pipeline.verify import checker_problem

    problem = checker_problem(result if fits_protobuf(result) else _no_check())
    if problem is not None:
        # Blame the input when it was already invalid, not the passes.
        if checker_problem(original if fits_protobuf(original) else _no_check()) is not None:
            from onnxcomp.errors import InputError

            raise InputError(f"input model fails the ONNX checker: {problem}")
        raise VerificationError(f"output model fails the ONNX checker: {problem}")
    labels = None
    if data is not None:
        samples = take(data, 0, max_samples)
        feeds, labels = model_inputs_only(samples), samples.get(LABELS)
        source = f"{len(next(iter(feeds.values())))} samples of the given data"
    else:
        feeds = random_inputs(original, ctx.dims, seed=ctx.seed, batch=8)
        source = "seeded random inputs"
    comparison = compare_models(original, result, feeds, Tolerances(atol, rtol), labels=labels)
    exact = all(p.exact for p in passes)
    validation = {"inputs": source, "exact_pipeline": exact, "atol": atol, "rtol": rtol,
                  "outputs": [d.as_dict() for d in comparison.diffs]}
    if comparison.accuracy is not None:
        validation["accuracy_original"], validation["accuracy_output"] = comparison.accuracy
    bad = comparison.outside
    if exact and bad:
        raise ToleranceError(f"output {bad[0].name!r} differs from the original by {bad[0].max_abs:.3g} "
                             f"(atol {atol}, rtol {rtol}) although every pass is exact")
    return validation


def _no_check():
    """Stand-in for models too large to check in memory (the checker needs a path for those)."""
    m = onnx.ModelProto()
    m.ir_version = onnx.IR_VERSION
    m.graph.name = "large-model-checked-on-save"
    m.opset_import.add().version = 17
    return m
