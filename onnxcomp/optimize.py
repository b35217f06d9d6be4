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
from onnxcomp.graph.opset import default_opset
from onnxcomp.graph.load import load_model
from onnxcomp.graph.save import fits_protobuf, save
from onnxcomp.graph.signature import defaulted_inputs
from onnxcomp.measure.counts import model_counts
from onnxcomp.pipeline.manager import PassManager, PassRecord
from onnxcomp.pipeline.prepare import prepare_opset
from onnxcomp.pipeline.pass_base import PassContext
from onnxcomp.pipeline.text import format_pipeline, parse_pipeline
from onnxcomp.progress import logger

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
    target_check: dict = field(default_factory=dict)  # with check_target: the output against that runtime

    def as_dict(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "seconds": round(self.seconds, 3), "input": self.input,
                "output": self.output, "passes": [r.as_dict() for r in self.records],
                "validation": self.validation, **({"target_check": self.target_check} if self.target_check else {})}


def _describe(model: onnx.ModelProto, path: str | os.PathLike | None) -> dict:
    info = model_counts(model)
    info["ops"] = info.pop("ops")
    info["opset"] = default_opset(model)
    info["ir_version"] = model.ir_version
    defaulted = defaulted_inputs(model)
    if defaulted:
        info["defaulted_inputs"] = defaulted
    if path is not None and Path(path).exists():
        info["file"] = str(path)
        info["file_size"] = Path(path).stat().st_size
        data = Path(str(path) + ".data")
        if data.exists():
            info["external_data_size"] = data.stat().st_size
    return info


def optimize(model: str | os.PathLike | onnx.ModelProto, output: str | os.PathLike | None = None,
             pipeline: str | list = DEFAULT_PIPELINE, data=None, val_data=None, target: str | None = None,
             verify: str = "structure", atol: float = 1e-5, rtol: float = 1e-4,
             dims: dict[str, int] | None = None, progress=None, seed: int = 0,
             check_output: bool = True, external_data: bool | None = None, preloaded: onnx.ModelProto | None = None,
             reproducer: str | os.PathLike | None = None, input_shapes: dict[str, tuple] | None = None,
             make_static: bool = False, input_values: dict[str, float] | None = None,
             check_target: str | None = None, trt_version: str | None = None,
             allow_incompatible: bool = False) -> OptimizeResult:
    """Run `pipeline` on `model` and validate the result against the original.

    With `check_target` the result is also checked against that runtime before it is saved
    (onnxcomp.checks; for tensorrt the `trt_version` release, default the newest): a model the
    target rejects raises VerificationError and is not written, unless `allow_incompatible`;
    the findings go to the report's `target_check` either way.

    Exact pipelines must reproduce the original outputs within atol/rtol (else ToleranceError);
    lossy ones have their fidelity (cosine, max abs diff, top-1, accuracy) recorded.
    `data` is the calibration/sample data lossy passes use; `val_data` (held out) is
    preferred for the final comparison and, at verify="numeric", for checking each pass. Both
    take any source onnxcomp.measure.samples.as_samples does (an .npz path or dict of arrays,
    FILE.py:FUNCTION, a test_data_set folder, feed dicts, a CalibrationDataReader), each model
    call at the model's own batch size. `input_shapes` ({input: shape}) fixes dynamic dims for
    the run (generated data, shape inference, verification, how data is cut into calls);
    `make_static` also writes them (and `dims`) into the output model. `input_values` pins
    generated inputs ({input: value}). `preloaded` avoids reading `model` twice. Progress
    messages go to the `onnxcomp` logger, or to `progress(message)` when that is given.
    """
    start = time.perf_counter()
    source = model if not isinstance(model, onnx.ModelProto) else None
    if preloaded is not None:
        original = preloaded
    else:
        original = load_model(model) if source is not None else model
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    ctx, shapes = _run_context(original, data, val_data, target, seed, progress, dims, input_shapes, make_static,
                               input_values)
    held_out = ctx.val_data if ctx.val_data is not None else ctx.data  # the final validation runs on it
    runnable = _readable_ir(original, ctx)
    defaulted = defaulted_inputs(original)
    if defaulted:
        shown = ", ".join(defaulted[:3]) + (f" and {len(defaulted) - 3} more" if len(defaulted) > 3 else "")
        logger.warning("%d input(s) have a default in the model (initializers listed as inputs: %s): folded as "
                       "constants, as ONNX Runtime's optimizer needs; the output no longer takes them as inputs",
                       len(defaulted), shown)
    for samples in (ctx.data, ctx.val_data):  # every pass merges calls only where this model allows it
        if samples is not None:
            samples.merge_on(source if source is not None and runnable is original else runnable)
    working, conversion = prepare_opset(runnable, passes, _conversion_feeds(runnable, held_out, ctx),
                                        atol, rtol)
    if conversion is not None:
        ctx.say(f"converted opset {conversion.report.stats['opset_from']} -> {conversion.report.stats['opset_to']} "
                f"(checked under ONNX Runtime: max abs diff {conversion.report.stats.get('max_abs_diff', 0):.3g})")
    graph = to_graph(working)
    if make_static:
        from onnxcomp.graph.static_shapes import set_input_shapes

        set_input_shapes(graph, shapes)
    manager = PassManager(passes, verify=verify, atol=atol, rtol=rtol, ctx=ctx, reproducer=reproducer)
    records = ([conversion] if conversion is not None else []) + manager.run(graph)
    # At verify="checker"/"numeric" the manager already exported the final graph.
    result_model = manager.exported[0] if manager.exported is not None else to_model(graph)
    _carry_metadata(working, result_model)
    if make_static:
        from onnxcomp.graph.static_shapes import write_static_shapes

        write_static_shapes(result_model)
    result = OptimizeResult(result_model, records, format_pipeline(passes), _describe(original, source), {})
    if check_output:
        ctx.say("validating the result against the original")
        result.validation = validate_against(runnable, result_model, passes, held_out, ctx, atol, rtol)
    if check_target is not None:
        from onnxcomp.checks.gate import target_check

        ctx.say(f"checking the result against {check_target}")
        result.target_check = target_check(result_model, check_target, trt_version, allow_incompatible)
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


def _readable_ir(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """The model with an IR version the installed ONNX Runtime reads: lowered (on a copy) when its
    opsets allow, else one line naming both versions."""
    from onnxcomp.graph.opset import lower_ir_version
    from onnxcomp.measure.runtime import runtime_max_ir

    limit = runtime_max_ir()
    if model.ir_version <= limit:
        return model
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    old = lower_ir_version(lowered, limit)
    ctx.say(f"IR version {old} -> {lowered.ir_version} (the installed ONNX Runtime reads IR {limit} at most)")
    return lowered


def _run_context(original: onnx.ModelProto, data, val_data, target, seed, progress, dims, input_shapes,
                 make_static: bool, input_values) -> tuple[PassContext, dict]:
    """The run's PassContext (data as Samples cut for the run's input shapes, dims with
    `input_shapes` in them) and the input shapes --make-static writes (else `input_shapes`)."""
    from onnxcomp.graph.signature import check_input_shapes, input_specs, shape_dims, with_shapes
    from onnxcomp.measure.runtime import check_input_values
    from onnxcomp.measure.samples import as_samples

    specs = input_specs(original)
    shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    check_input_shapes(specs, shapes)
    run_dims = {**(dims or {}), **shape_dims(shapes)}
    if make_static:
        from onnxcomp.graph.static_shapes import static_shapes

        shapes = static_shapes(specs, run_dims)
        run_dims.update(shape_dims(shapes))
    values = dict(input_values or {})
    check_input_values(original, values)
    if data is None and val_data is None:
        run_dims.update(_runnable_dims(original, specs, run_dims, seed, values, progress))
    data_specs = with_shapes(specs, shapes)
    ctx = PassContext(data=as_samples(data, data_specs, _where(data, "calibration data")), target=target, seed=seed,
                      progress=progress, dims=run_dims, input_values=values,
                      val_data=as_samples(val_data, data_specs, _where(val_data, "validation data")))
    return ctx, shapes


# Sizes tried for free non-batch dims when the model does not run them at 1 (strided detectors
# want multiples of 32; 224 and 640 are the usual image sizes).
_TRIED_SIZES = (32, 64, 128, 224, 320, 640)
# Generated inputs put this batch on a free axis 0 for the final validation.
_VALIDATION_BATCH = 8


def _runnable_dims(model: onnx.ModelProto, specs, dims: dict, seed: int, values: dict, progress) -> dict:
    """Dims that make generated inputs run, found with one session: free non-batch dims (height,
    width: a YOLO's Concat after upsampling a 1x1 map) at the first of _TRIED_SIZES the model runs
    when 1 fails; batch 1 where a state input fixed at batch 1 sits beside a dynamic batch (a GRU's
    h0 [4, 1, 64]) and the validation batch fails. None when the usual ones run."""
    from onnxcomp.measure.runtime import random_inputs, run, session

    def free(batch_axis: bool) -> list[str]:
        return sorted({(d if isinstance(d, str) and d != "?" else f"{s.name}:{axis}")
                       for s in specs for axis, d in enumerate(s.shape)
                       if (axis == 0) == batch_axis and not (isinstance(d, int) and d > 0)} - set(dims))

    batch, spatial = free(True), free(False)
    stateful = bool(batch) and any(s.fully_static and s.rank > 1 for s in specs)
    if not (spatial or stateful) or any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        return {}  # nothing to choose (a model with external data is not loaded once more only to try)
    try:
        sess = session(model)
    except Exception:
        return {}  # the commands say why the model does not load

    def runs(trial: dict, at_batch: int | None = None) -> bool:
        try:
            run(sess, random_inputs(model, {**dims, **trial}, seed=seed, batch=at_batch, values=values))
            return True
        except Exception:
            return False

    say = progress or logger.info
    chosen = {}
    if spatial and not runs({}):  # sizes tried one sample at a time, as the passes' checks run them
        size = next((n for n in _TRIED_SIZES if runs({k: n for k in spatial})), None)
        if size is not None:
            chosen = {k: size for k in spatial}
            say(f"generated inputs: the model does not run with {', '.join(spatial)} at 1; using {size} "
                "(give --input-shapes or data to choose)")
    if stateful and not runs(chosen, _VALIDATION_BATCH) and runs(chosen):
        chosen.update({k: 1 for k in batch})
        say("generated inputs: the model does not run them at batch 8 (an input's batch is fixed at 1): using batch 1")
    return chosen


def _where(source, what: str) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else what


def _conversion_feeds(model: onnx.ModelProto, data, ctx: PassContext) -> dict:
    """Inputs an opset conversion is checked on: the first samples of the user's data when given,
    else seeded random inputs."""
    from onnxcomp.measure.runtime import random_inputs
    from onnxcomp.measure.samples import Samples

    if isinstance(data, Samples):
        return next(data.first(8).batches(8))
    if isinstance(data, dict):
        names = {i.name for i in model.graph.input}
        feeds = {k: v[:8] if np.ndim(v) else v for k, v in data.items() if k in names}
        if feeds:
            return feeds
    return random_inputs(model, ctx.dims, seed=ctx.seed, values=ctx.input_values)


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
    from onnxcomp.measure.padding import over_real_tokens
    from onnxcomp.measure.runtime import random_inputs
    from onnxcomp.measure.samples import as_samples, generated_calls
    from onnxcomp.pipeline.verify import checker_problem

    problem = checker_problem(result if fits_protobuf(result) else _no_check())
    if problem is not None:
        # Blame the input when it was already invalid, not the passes.
        if checker_problem(original if fits_protobuf(original) else _no_check()) is not None:
            from onnxcomp.errors import InputError

            raise InputError(f"input model fails the ONNX checker: {problem}")
        raise VerificationError(f"output model fails the ONNX checker: {problem}")
    if data is not None:
        feeds = as_samples(data, original, "validation data").first(max_samples)
        source = f"{feeds.describe()} of the given data"
    else:
        feeds = generated_calls(random_inputs(original, ctx.dims, seed=ctx.seed, batch=_VALIDATION_BATCH,
                                              values=ctx.input_values), original)
        source = "seeded random inputs"
    comparison = compare_models(original, result, feeds, Tolerances(atol, rtol))
    exact = all(p.exact for p in passes)
    validation = {"inputs": source, "exact_pipeline": exact, "atol": atol, "rtol": rtol,
                  "outputs": [d.as_dict() for d in comparison.diffs]}
    if comparison.accuracy is not None:
        validation["accuracy_original"], validation["accuracy_output"] = comparison.accuracy
    real = over_real_tokens(original, feeds, comparison, Tolerances(atol, rtol)) if data is not None and not exact \
        else None
    if real is not None:
        validation["real_tokens"] = real.as_dict()
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
