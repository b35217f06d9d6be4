"""Running models under ONNX Runtime: sessions, seeded synthetic inputs, batched runs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from onnxcomp.errors import InputError, first_line
from onnxcomp.graph.signature import input_specs, resolve_shape

# Synthetic inputs larger than this are refused rather than allocated (hostile or mistaken shapes).
MAX_GENERATED_BYTES = 2 * 1024**3


def random_inputs(model: onnx.ModelProto, dims: dict[str, int] | None = None, seed: int = 0,
                  batch: int | None = None, int_high: int = 100) -> dict[str, np.ndarray]:
    """Seeded synthetic inputs from the model's input specs.

    Floats are standard normal; integers uniform in [0, int_high) (token ids, indices);
    bools random. Symbolic dims come from `dims`, else 1.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in input_specs(model):
        shape = resolve_shape(spec, dims or {}, batch)
        size = int(np.prod(shape, dtype=object)) * spec.dtype.itemsize
        if size > MAX_GENERATED_BYTES:
            raise InputError(f"input {spec.name!r}: generating data of shape {list(shape)} would take "
                             f"{size / 1024**3:.3g} GB; give sample data or smaller --dim values")
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            feeds[spec.name] = rng.integers(0, int_high, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
    return feeds


def session(model: onnx.ModelProto | str | os.PathLike, threads: int = 0, optimize: bool = True):
    """An ONNX Runtime CPU session for a ModelProto or a path (large models via a temp file)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        if isinstance(model, onnx.ModelProto):
            try:  # serializing is the size check: ByteSize() costs as much and misreports past 2 GB
                blob = model.SerializeToString()
            except Exception:
                blob = None
            if blob is not None:
                return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])
            from onnxcomp.graph.save import write_with_external_data

            # Over protobuf's 2 GB limit: stream the weights to a temporary data file (the model
            # itself is not converted or copied) and let the runtime read it from there.
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                write_with_external_data(model, path, Path(tmp) / "model.onnx.data", "model.onnx.data")
                return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot load the model: {first_line(exc)}") from None


def run(sess, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    names = outputs or [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    try:
        values = sess.run(names, {k: v for k, v in feeds.items() if k in wanted})
    except Exception as exc:
        raise InputError(f"ONNX Runtime failed to run the model: {first_line(exc)}") from None
    return dict(zip(names, values))


def run_batched(sess, data: dict[str, np.ndarray], batch_size: int = 32,
                outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run sample-major data in batches and concatenate outputs along axis 0."""
    wanted = [i.name for i in sess.get_inputs()]
    lengths = {data[k].shape[0] if np.ndim(data[k]) else None for k in wanted}
    if len(lengths) != 1 or None in lengths:
        # Scalars (If conditions, Loop trip counts) or inputs of unequal length have no common
        # sample axis to split: run the feed as given, once.
        return run(sess, {k: data[k] for k in wanted}, outputs)
    n = lengths.pop() if wanted else 1
    chunks: dict[str, list] = {}
    for start in range(0, n, batch_size):
        feeds = {k: data[k][start:start + batch_size] for k in wanted}
        for name, value in run(sess, feeds, outputs).items():
            chunks.setdefault(name, []).append(value)
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def run_model(model, feeds: dict[str, np.ndarray], batch_size: int | None = 32) -> dict[str, np.ndarray]:
    """All outputs of `model` (ModelProto or path) on `feeds`: in batches along axis 0, or in one
    run when batch_size is None (feeds whose axis 0 is not a sample axis)."""
    sess = session(model)
    return run(sess, feeds) if batch_size is None else run_batched(sess, feeds, batch_size)


def run_both(reference_model, candidate_model, feeds: dict[str, np.ndarray], batch_size: int | None = 32,
             reference_outputs: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
    """(reference outputs, candidate outputs) on the same feeds; `reference_outputs`, when the
    reference already ran on exactly these feeds, saves running it again."""
    if reference_outputs is None:
        reference_outputs = run_model(reference_model, feeds, batch_size)
    return reference_outputs, run_model(candidate_model, feeds, batch_size)
