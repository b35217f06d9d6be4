"""collect_stats: stream calibration batches through ONNX Runtime into running per-tensor statistics.

One session computes every wanted activation at once (they are added as extra graph outputs);
each batch's values are folded into TensorStats and dropped before the next batch runs, so memory
is one batch of activations plus a fixed-size histogram per tensor, whatever the sample count.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from onnxcomp.calibration.histogram import TensorStats
from onnxcomp.calibration.stats import CalibrationStats
from onnxcomp.errors import InputError

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}
_ORT_FLOAT_TYPES = {"tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"}


def activation_tensors(model: onnx.ModelProto) -> list[str]:
    """Float values that change with the input: graph inputs and node outputs not computed from constants alone.

    Outputs of Constant nodes and of nodes fed only by initializers/constants (weight transposes,
    shape arithmetic) are not activations and are left out. Order: inputs, then graph order.
    """
    graph = model.graph
    constant = {t.name for t in graph.initializer} | {""}
    types = _known_types(model)
    names = [v.name for v in graph.input if v.name not in constant]
    for node in graph.node:
        if all(i in constant for i in node.input) and not node.op_type.startswith("Random"):
            constant.update(node.output)
            continue
        names.extend(o for o in node.output if o)
    return [n for n in dict.fromkeys(names) if types.get(n) in _FLOAT_TYPES or n not in types]


def _known_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element types from shape inference on a weightless copy (unknown names are absent)."""
    from onnxcomp.stats import skeleton

    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
        values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    except Exception:  # inference is only a filter here: fall back to what the model declares
        values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}


def collect_stats(model: onnx.ModelProto, data, tensors: list[str] | None = None, batch_size: int = 16,
                  num_bins: int = 2048, progress=None, *, threads: int = 0) -> CalibrationStats:
    """Run `data` through `model` under ONNX Runtime and return the statistics of `tensors`.

    data: a dict of sample-major arrays named after the model inputs (sliced into `batch_size`
    batches; a `labels` key is ignored), or any iterable of feed dicts, one per batch — use that
    for sequences of different lengths (pad per batch) or data too big to hold at once.
    tensors: names to calibrate; default every float activation (`activation_tensors`).
    num_bins: histogram bins per tensor; 0 keeps only min/max (enough for `minmax`, fastest).
    progress: optional callable taking one message string, called about once a second.
    threads: ONNX Runtime intra-op threads (0 = its default).
    """
    if batch_size < 1:
        raise InputError(f"calibration batch size must be at least 1, got {batch_size}")
    wanted = activation_tensors(model) if tensors is None else list(dict.fromkeys(tensors))
    sess, fetch = _session(model, wanted, threads)
    inputs = [i.name for i in sess.get_inputs()]
    stats = {name: TensorStats(name, num_bins) for name in fetch}
    samples = batches = 0
    total = _batch_count(data, inputs, batch_size)
    last_say = time.monotonic()
    for feeds in _batches(data, model, inputs, batch_size):
        try:
            values = sess.run(fetch, feeds)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            raise InputError(f"calibration batch {batches + 1}: ONNX Runtime failed: "
                             f"{text[0] if text else type(exc).__name__}") from None
        for name, value in zip(fetch, values):
            stats[name].update(value)
        del values
        batches += 1
        samples += len(next(iter(feeds.values()))) if feeds else 1
        if progress is not None and (time.monotonic() - last_say > 1.0 or batches == total):
            progress(f"calibration: batch {batches}" + (f"/{total}" if total else "") + f" ({samples} samples)")
            last_say = time.monotonic()
    if batches == 0:
        raise InputError("calibration data holds no batches")
    return CalibrationStats(stats, num_bins, samples, batches)


def _session(model: onnx.ModelProto, wanted: list[str], threads: int):
    """A session that outputs every wanted tensor, and the float ones among them to fetch.

    The outputs are appended to the caller's model only while the session is built and removed
    again (no copy of the weights is made).
    """
    from onnxcomp.runtime import session

    graph = model.graph
    produced = {o for n in graph.node for o in n.output} | {v.name for v in graph.input}
    missing = [n for n in wanted if n not in produced]
    if missing:
        raise InputError(f"cannot calibrate {missing[0]!r}: no node output or graph input has that name"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    existing = {o.name for o in graph.output}
    added = 0
    for name in wanted:
        if name not in existing:
            graph.output.add().name = name  # no type: ONNX Runtime infers it
            added += 1
    try:
        sess = session(model, threads=threads)
    finally:
        for _ in range(added):
            graph.output.pop()
    kinds = {o.name: o.type for o in sess.get_outputs()}
    fetch = [n for n in wanted if kinds.get(n) in _ORT_FLOAT_TYPES]
    if tensors_dropped := [n for n in wanted if n not in kinds]:
        raise InputError(f"ONNX Runtime does not expose {tensors_dropped[0]!r} as an output")
    return sess, fetch


def _batch_count(data, inputs: list[str], batch_size: int) -> int | None:
    if isinstance(data, Mapping):
        n = len(data[inputs[0]]) if inputs and inputs[0] in data else 0
        return -(-n // batch_size)
    return len(data) if hasattr(data, "__len__") else None


def _batches(data, model: onnx.ModelProto, inputs: list[str], batch_size: int) -> Iterable[dict]:
    from onnxcomp.data import validate

    if isinstance(data, Mapping):
        arrays = {k: np.asarray(data[k]) for k in data}
        validate(arrays, model, "calibration data")
        n = len(arrays[inputs[0]]) if inputs else 1
        for start in range(0, n, batch_size):
            yield {k: arrays[k][start:start + batch_size] for k in inputs}
        return
    if isinstance(data, (str, bytes, np.ndarray)) or not isinstance(data, Iterable):
        raise InputError(f"calibration data must be a dict of arrays or an iterable of feed dicts, "
                         f"got {type(data).__name__}")
    for i, feeds in enumerate(data):
        if not isinstance(feeds, Mapping):
            raise InputError(f"calibration batch {i + 1}: expected a dict of input arrays, got {type(feeds).__name__}")
        arrays = {k: np.asarray(feeds[k]) for k in feeds}
        validate(arrays, model, f"calibration batch {i + 1}")
        yield {k: arrays[k] for k in inputs}
