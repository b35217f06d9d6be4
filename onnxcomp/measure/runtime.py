"""Running models under ONNX Runtime: sessions, seeded synthetic inputs, batched runs."""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx

from onnxcomp.errors import InputError, first_line, require
from onnxcomp.graph.weights import staged, uses_store
from onnxcomp.graph.signature import InputSpec, index_limits, input_specs, resolve_shape
from onnxcomp.measure.samples import Samples, as_samples, one_call

# Synthetic inputs larger than this are refused rather than allocated (hostile or mistaken shapes).
MAX_GENERATED_BYTES = 2 * 1024**3


def require_runtime() -> None:
    """One line naming `pip install 'onnxcomp[cpu]'` when no ONNX Runtime is installed. It is not a
    plain dependency: onnxruntime and onnxruntime-gpu install the same module, and requiring the
    first would put the CPU wheel over a GPU user's; the [cpu] and [gpu] extras pick one."""
    require("onnxruntime", feature="running models", extra="cpu", package="ONNX Runtime",
            note="or 'onnxcomp[gpu]' for onnxruntime-gpu")


def random_inputs(model: onnx.ModelProto, dims: dict[str, int] | None = None, seed: int = 0,
                  batch: int | None = None, int_high: int = 100,
                  values: dict[str, float] | None = None) -> dict[str, np.ndarray]:
    """Seeded synthetic inputs from the model's input specs, made to mean something.

    Floats are standard normal; integers uniform in [0, int_high) (token ids, indices), kept below
    the rows of every constant table they index through Gather (index_limits); a 0-d integer (a
    length, a trip count) a small positive number, not 0; bools true/false. `values` pins inputs
    (`--input-value sr=16000`): every element of that input is the value. Symbolic dims come
    from `dims`, else `batch` on axis 0, else 1.
    """
    rng = np.random.default_rng(seed)
    values = values or {}
    limits = index_limits(model)
    feeds = {}
    for spec in input_specs(model):
        shape = resolve_shape(spec, dims or {}, batch)
        size = int(np.prod(shape, dtype=object)) * spec.dtype.itemsize
        if size > MAX_GENERATED_BYTES:
            raise InputError(f"input {spec.name!r}: generating data of shape {list(shape)} would take "
                             f"{size / 1024**3:.3g} GB; give sample data or smaller --dim values")
        if spec.name in values:
            feeds[spec.name] = np.full(shape, values[spec.name]).astype(spec.dtype)
        elif spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu":
            high = max(1, min(int_high, limits.get(spec.name, int_high)))
            low = 1 if shape == () and high > 1 else 0
            feeds[spec.name] = rng.integers(low, min(high, 9) if low else high, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
    return feeds


def check_input_values(model: onnx.ModelProto, values: dict[str, float]) -> None:
    """Every pinned input exists and can hold its value (an integer input takes whole numbers)."""
    specs = {s.name: s for s in input_specs(model)}
    for name, value in values.items():
        spec = specs.get(name)
        if spec is None:
            raise InputError(f"--input-value {name}: the model has no input {name!r} "
                             f"(inputs: {', '.join(specs) or 'none'})")
        if spec.dtype.kind in "iub" and float(value) != int(value):
            raise InputError(f"--input-value {name}={value}: input {name!r} is {spec.dtype}, which holds "
                             "whole numbers only")


# The execution providers session() builds sessions with, in ONNX Runtime's order of preference.
# Set once per command (`--providers`, onnxcomp.cli.common.providers_option) rather than passed to
# every call site; CPU by default, so results do not depend on which accelerator a host has.
_providers: tuple[str, ...] = ("CPUExecutionProvider",)
_ALIASES = {"trt": "TensorrtExecutionProvider", "gpu": "CUDAExecutionProvider"}
_GPU_WHEEL = ("CUDAExecutionProvider", "TensorrtExecutionProvider")  # what onnxruntime-gpu adds


def set_providers(names) -> tuple[str, ...]:
    """Make session() use `names`: ONNX Runtime's provider names (CUDAExecutionProvider) or short
    ones (cuda, tensorrt or trt, openvino, dml, cpu ...), in order of preference. A name ONNX
    Runtime does not know, or a provider this installation lacks, is one InputError line and
    changes nothing. Returns the full names now in use."""
    wanted = [n.strip() for n in names if n.strip()]
    if not wanted:
        raise InputError("--providers: give at least one execution provider (e.g. cpu, or cuda,cpu)")
    global _providers
    if all(n.lower() in ("cpu", "cpuexecutionprovider") for n in wanted):
        _providers = ("CPUExecutionProvider",)  # the default needs no ONNX Runtime import
        return _providers
    require_runtime()
    import onnxruntime as ort

    known = {p.lower(): p for p in ort.get_all_providers()}
    chosen = []
    for name in wanted:
        key = _ALIASES.get(name.lower(), name).lower()
        full = known.get(key) or known.get(key + "executionprovider")
        if full is None:
            raise InputError(f"--providers: unknown execution provider {name!r}; ONNX Runtime's are "
                             + ", ".join(sorted(p.removesuffix("ExecutionProvider").lower() for p in known.values())))
        chosen.append(full)
    available = ort.get_available_providers()
    missing = [p for p in chosen if p not in available]
    if missing:
        hint = ("pip install 'onnxcomp[gpu]' (onnxruntime-gpu, in place of onnxruntime)" if missing[0] in _GPU_WHEEL
                else "it needs an ONNX Runtime build that includes it")
        raise InputError(f"--providers: {missing[0]} is not installed in this ONNX Runtime ({ort.__version__} has "
                         f"{', '.join(available)}): {hint}")
    _providers = tuple(dict.fromkeys(chosen))
    return _providers


def providers() -> tuple[str, ...]:
    """The execution providers sessions are built with (set_providers)."""
    return _providers


@functools.lru_cache(maxsize=1)
def runtime_max_ir() -> int:
    """The newest model IR version the installed ONNX Runtime reads, asked of the runtime itself:
    onnx's helpers write a newer IR than some runtimes take (onnx 1.23 writes 14)."""
    require_runtime()
    import re

    import onnxruntime as ort
    from onnx import helper

    probe = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                          [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[helper.make_opsetid("", 13)])
    probe.ir_version = 99
    try:
        ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        found = re.search(r"max supported IR version: (\d+)", str(exc))
        if found:
            return int(found.group(1))
    return onnx.IR_VERSION


def session(model: onnx.ModelProto | str | os.PathLike, threads: int = 0, optimize: bool = True,
            spin: bool = True):
    """An ONNX Runtime session for a ModelProto or a path (large models via a temp file), on the
    execution providers set_providers chose (CPU unless a command's --providers said otherwise).
    spin=False: idle worker threads sleep instead of spinning, leaving the cores to Python threads
    that work while the session runs (calibration folds one batch while the next runs)."""
    require_runtime()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a failed run raises, and says it in its one line; ORT need not log it too
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        if isinstance(model, onnx.ModelProto) and uses_store(model):
            return _store_session(model, opts)
        if isinstance(model, onnx.ModelProto):
            try:  # serializing is the size check: ByteSize() costs as much and misreports past 2 GB
                blob = model.SerializeToString()
            except Exception:
                blob = None
            if blob is not None:
                return _checked(ort.InferenceSession(blob, opts, providers=list(_providers)))
            from onnxcomp.graph.save import write_with_external_data

            # Over protobuf's 2 GB limit: stream the weights to a temporary data file (the model
            # itself is not converted or copied) and let the runtime read it from there.
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                write_with_external_data(model, path, Path(tmp) / "model.onnx.data", "model.onnx.data")
                return _checked(ort.InferenceSession(str(path), opts, providers=list(_providers)))
        return _checked(ort.InferenceSession(str(model), opts, providers=list(_providers)))
    except Exception as exc:
        raise InputError(f"ONNX Runtime cannot load the model: {first_line(exc)}") from None


def _store_session(model: onnx.ModelProto, opts):
    """A session for a model whose weights stay on disk (graph/weights.py): built from a model file in
    the store's folder, so ONNX Runtime maps the weights rather than copying them, with graph
    optimizations off (they make new copies of every weight they fuse: 2.5x the weights measured)."""
    import onnxruntime as ort

    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with staged(model) as path:
        return _checked(ort.InferenceSession(str(path), opts, providers=list(_providers)))


def _checked(sess):
    """The session, after a warning (once per provider) when ONNX Runtime fell back from the first
    provider asked for: a CUDA build without its libraries runs on CPU instead of failing."""
    first = _providers[0]
    if first not in sess.get_providers() and first not in _fell_back:
        _fell_back.add(first)
        from onnxcomp.progress import logger

        logger.warning(f"ONNX Runtime could not use {first} and runs on {', '.join(sess.get_providers())}")
    return sess


_fell_back: set[str] = set()


def run(sess, feeds: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """One ONNX Runtime run; a failure is one line that keeps the runtime's point (which input,
    which dim, expected and got), worked out from the session's inputs where the feeds explain it."""
    names = outputs or [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    fed = {k: np.asarray(v) for k, v in feeds.items() if k in wanted}  # numpy scalars too (np.float32(16000))
    try:
        values = sess.run(names, fed)
    except Exception as exc:
        why = feed_problem(sess, fed) or runtime_message(exc)
        raise InputError(f"ONNX Runtime failed to run the model: {why}") from None
    return dict(zip(names, values))


_ORT_TYPES = {"float": "float32", "double": "float64"}


def session_specs(sess) -> list[InputSpec]:
    """The session's inputs as specs (initializers the runtime lets a feed override are not inputs)."""
    specs = []
    for i in sess.get_inputs():
        kind = i.type[len("tensor("):-1] if i.type.startswith("tensor(") else None
        try:
            dtype = np.dtype(_ORT_TYPES.get(kind, kind)) if kind else np.dtype(object)
        except TypeError:
            dtype = np.dtype(object)
        shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else "?") for d in i.shape)
        specs.append(InputSpec(i.name, dtype, shape))
    return specs


def feed_problem(sess, feeds: dict[str, np.ndarray]) -> str | None:
    """Why these feeds do not fit the session's inputs (missing, dtype, rank, a static dim), or None."""
    for spec in session_specs(sess):
        if spec.name not in feeds:
            return f"input {spec.name!r} is not fed"
        array = np.asarray(feeds[spec.name])
        if spec.dtype != object and array.dtype != spec.dtype:
            return f"input {spec.name!r} is {spec.dtype}, data is {array.dtype}"
        if array.ndim != spec.rank:
            return f"input {spec.name!r} has {spec.rank} dims {list(spec.shape)}, data has {array.ndim} {list(array.shape)}"
        for axis in range(spec.rank):
            want = spec.static(axis)
            if want is not None and array.shape[axis] != want:
                return f"input {spec.name!r}: dim {axis} is {want}, data has {array.shape[axis]}"
    return None


def runtime_message(exc: BaseException, limit: int = 400) -> str:
    """ONNX Runtime's message on one line: all of it (its detail is on the lines after the first),
    without the `[ONNXRuntimeError] : 2 : INVALID_ARGUMENT :` prefix, cut at `limit` characters."""
    import re

    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", text)
    if not text:
        return first_line(exc)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run_batched(sess, data, batch_size: int | None = 32, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run Samples (or a dict in the stacked layout, converted) batch by batch: consecutive calls
    merged up to `batch_size` samples where that is safe (Samples.batches), each call as is when
    None. Outputs are joined as join_outputs says."""
    samples = data if isinstance(data, Samples) else runnable(data, session_specs(sess))
    samples.merge_on(sess)  # merged runs are probed on this session before the first one
    results = [run(sess, feeds, outputs) for feeds in samples.batches(batch_size)]
    return join_outputs(results, samples.batch_sizes(batch_size))


def runnable(feeds: dict[str, np.ndarray], specs) -> Samples:
    """A dict of arrays as Samples: cut into calls when it is in the stacked layout, else (inputs of
    unequal length, nothing to cut along) one call as given."""
    try:
        return as_samples(feeds, specs)
    except InputError:
        return one_call({k: np.asarray(v) for k, v in feeds.items()}, specs)


def join_outputs(results: list[dict], sizes: list[int]) -> dict[str, np.ndarray]:
    """Each output over all runs: one run as it is; else concatenated along axis 0 when every run's
    value has a batch axis of that run's sample count, else stacked on a new leading axis (one row
    per run) when the shapes agree, else flattened and concatenated. The rule depends only on the
    runs and their shapes, so a reference and a candidate joined alike compare elementwise."""
    if len(results) == 1:
        return dict(results[0])
    joined = {}
    for name in results[0]:
        parts = [r[name] for r in results]
        rest = {p.shape[1:] if p.ndim else None for p in parts}
        if len(rest) == 1 and None not in rest and all(len(p) == n for p, n in zip(parts, sizes)):
            joined[name] = np.concatenate(parts, axis=0)
        elif len({p.shape for p in parts}) == 1:
            joined[name] = np.stack(parts)
        else:
            joined[name] = np.concatenate([p.ravel() for p in parts])
    return joined


def run_model(model, feeds, batch_size: int | None = 32) -> dict[str, np.ndarray]:
    """All outputs of `model` (ModelProto or path) on `feeds`: Samples, or a dict (cut into calls
    when in the stacked layout; one run when batch_size is None: feeds whose axis 0 is not a
    sample axis). See run_batched."""
    sess = session(model)
    if batch_size is None and not isinstance(feeds, Samples):
        return run(sess, feeds)
    return run_batched(sess, feeds, batch_size)


def run_both(reference_model, candidate_model, feeds, batch_size: int | None = 32,
             reference_outputs: dict[str, np.ndarray] | None = None) -> tuple[dict, dict]:
    """(reference outputs, candidate outputs) on the same feeds; `reference_outputs`, when the
    reference already ran on exactly these feeds, saves running it again."""
    if reference_outputs is None:
        reference_outputs = run_model(reference_model, feeds, batch_size)
    return reference_outputs, run_model(candidate_model, feeds, batch_size)
