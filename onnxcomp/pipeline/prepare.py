"""Bring a model to the opset a pipeline needs before any pass runs, and prove the step exact.

Each pass declares `min_opset` (the Pass default is MIN_OPSET; insert-qdq needs 13 for
per-channel Q/DQ). A model below the pipeline's need is converted with onnx's version
converter, run under ONNX Runtime against the original on the same inputs, and the step is
recorded like a pass ("convert-opset", opset 11 -> 13) so the table and the JSON report show it.
"""

from __future__ import annotations

import time

import numpy as np
import onnx

from onnxcomp.errors import VerificationError
from onnxcomp.graph.opset import convert_opset, default_opset
from onnxcomp.measure.counts import model_counts
from onnxcomp.pipeline.pass_base import MIN_OPSET, PassReport
CONVERT_STEP = "convert-opset"


def required_opset(passes) -> int:
    """The lowest default-domain opset every pass of the pipeline accepts."""
    return max([MIN_OPSET] + [int(getattr(p, "min_opset", MIN_OPSET)) for p in passes])


def prepare_opset(model: onnx.ModelProto, passes, feeds: dict[str, np.ndarray] | None,
                  atol: float = 1e-5, rtol: float = 1e-4):
    """(model, record): `model` converted upwards to what `passes` need, with the step's record,
    or the model itself and None when it is new enough. `feeds` are the inputs the conversion
    is checked on (the caller's sample data or seeded random inputs)."""
    from onnxcomp.pipeline.manager import PassRecord

    current = default_opset(model)
    needed = required_opset(passes)
    if current is None or current >= needed:
        return model, None
    start = time.perf_counter()
    converted = convert_opset(model, needed)
    report = PassReport(modified=True, stats={"opset_from": current, "opset_to": needed})
    worst = _worst_difference(model, converted, feeds, atol, rtol, report)
    if worst is not None:
        raise VerificationError(f"opset conversion {current} -> {needed} changed output {worst[0]!r} by "
                                f"{worst[1]:.3g} (atol {atol}, rtol {rtol}); the onnx version converter "
                                "does not preserve this model")
    before, after = model_counts(model), model_counts(converted)
    record = PassRecord(CONVERT_STEP, f"{CONVERT_STEP}{{opset={needed}}}", True, time.perf_counter() - start,
                        report, _counts(before), _counts(after))
    return converted, record


def _counts(counts: dict) -> dict:
    return {k: counts[k] for k in ("nodes", "initializers", "params")}


def _worst_difference(original, converted, feeds, atol, rtol, report: PassReport):
    """(output, max abs diff) of the first output outside tolerance, else None (also when the
    original cannot run on `feeds`: noted in the report)."""
    from onnxcomp.errors import InputError
    from onnxcomp.measure.runtime import run, session

    try:
        expected = run(session(original), feeds)
    except InputError as exc:
        # Nothing to compare with on these inputs; the final validation still compares the
        # result with the original on the user's data.
        report.skip("numeric check", f"the original does not run on the check inputs ({exc})")
        return None
    got = run(session(converted), feeds)
    largest = 0.0
    for name, ref in expected.items():
        value = got.get(name)
        if value is None or np.shape(value) != np.shape(ref):
            return name, float("inf")
        if ref.dtype.kind not in "fc":
            if not np.array_equal(ref, value):
                return name, float("inf")
            continue
        ref64, value64 = ref.astype(np.float64), value.astype(np.float64)
        diff = np.abs(ref64 - value64)
        same_nonfinite = ~np.isfinite(ref64) & (ref64 == value64)
        bad = (diff > atol + rtol * np.abs(ref64)) & ~same_nonfinite
        if np.any(bad):
            return name, float(np.max(np.where(bad, diff, 0.0)))
        finite = diff[np.isfinite(diff)]
        largest = max(largest, float(finite.max()) if finite.size else 0.0)
    report.stats["max_abs_diff"] = largest
    return None
