"""collect_stats: stream calibration batches through ONNX Runtime into running per-tensor statistics.

One session computes every wanted activation at once (they are added as extra graph outputs);
each batch's values are folded into TensorStats and dropped before the next batch runs, so memory
is one batch of activations plus a fixed-size histogram per tensor, whatever the sample count.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sized
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx

from onnxcomp.errors import InputError
from onnxcomp.graph.signature import input_specs
from onnxcomp.measure.samples import Samples, as_samples, checked_feed
from onnxcomp.passes.qdq.calibration.histogram import Scratch, TensorStats
from onnxcomp.passes.qdq.calibration.stats import CalibrationStats
from onnxcomp.progress import bar, bars_enabled, logger, say_to

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
    from onnxcomp.graph.shapes import skeleton

    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False)
        values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    except Exception:  # inference is only a filter here: fall back to what the model declares
        values = list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}


# Ops whose output holds exactly the values of their first input, rearranged: the output's
# statistics are the input's, so only the input is fetched and binned.
_SAME_VALUES = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity"}


def value_sources(model: onnx.ModelProto) -> dict[str, str]:
    """tensor -> the activation whose values it holds (through Reshape/Transpose/... chains)."""
    graph = model.graph
    fetchable = {o for n in graph.node for o in n.output} | {v.name for v in graph.input}
    source: dict[str, str] = {}
    for node in graph.node:
        inference_dropout = node.op_type == "Dropout" and len(node.input) < 3
        if (node.op_type in _SAME_VALUES or inference_dropout) and node.input and node.input[0] in fetchable:
            source[node.output[0]] = source.get(node.input[0], node.input[0])
    return source


def collect_stats(model: onnx.ModelProto, data, tensors: list[str] | None = None, batch_size: int = 16,
                  num_bins: int = 2048, progress=None, *, threads: int = 0,
                  memory_budget_mb: float = 256.0, fold_threads: int = 0) -> CalibrationStats:
    """Run `data` through `model` under ONNX Runtime and return the statistics of `tensors`.

    data: Samples (onnxcomp.measure.samples: merged into batches of at most `batch_size` where every
    input has a dynamic axis 0, else each model call as is), a dict of sample-major arrays named
    after the model inputs (cut into calls as Samples are; a `labels` key is ignored), or any
    iterable of feed dicts (or a CalibrationDataReader), one call each, streamed — use that for
    sequences of different lengths (pad per batch) or data too big to hold at once.
    tensors: names to calibrate; default every float activation (`activation_tensors`).
    num_bins: histogram bins per tensor; 0 keeps only min/max (enough for `minmax`, faster).
    progress: optional callable taking each message string (default: the `onnxcomp` logger); without
    a progress bar on screen it also gets a line about once a second.
    threads: ONNX Runtime intra-op threads (0 = its default).
    fold_threads: most threads folding a batch into the statistics, each its own share of the
    tensors (0 = one per core, at most 4). Folding runs while ONNX Runtime computes the next batch;
    more than one thread folds only while folding takes clearly longer than the runs (histograms of
    cheap activations), since extra threads otherwise slow ONNX Runtime's own spinning threads.
    memory_budget_mb: with dict data or Samples whose calls can merge, batches shrink below
    `batch_size` so the fetched activations stay under this (measured on one call first); peak
    memory is then bounded by the budget, not by the sample count. Splitting dict data at a
    multiple of the batch size used gives the same batches, so statistics of the parts merge to
    exactly those of the whole.
    """
    if not isinstance(model, onnx.ModelProto):
        from onnxcomp.graph.load import load_model

        model = load_model(model)
    if batch_size < 1:
        raise InputError(f"calibration batch size must be at least 1, got {batch_size}")
    if fold_threads < 0:
        raise InputError(f"fold_threads must be 0 (one per core) or more, got {fold_threads}")
    if num_bins < 0 or 0 < num_bins < 16:
        raise InputError(f"num_bins must be 0 (min/max only) or at least 16, got {num_bins}")
    wanted = activation_tensors(model) if tensors is None else list(dict.fromkeys(tensors))
    _check_names(model, wanted)
    sources = value_sources(model)
    root = {name: sources.get(name, name) for name in wanted}
    roots = list(dict.fromkeys(root.values()))
    runner = _Runner(model, roots, threads)
    stats = {name: TensorStats(name, num_bins) for name in runner.fetch}
    workers = fold_threads or min(4, os.cpu_count() or 1)
    scratches = [Scratch() for _ in range(workers)]
    # Two batches are alive at once (one folding while the next runs), hence half the budget each.
    if isinstance(data, Mapping):
        data = as_samples(data, model, "calibration data")
    if isinstance(data, Samples):  # probe merged runs on this session, not on a second one
        data.merge_on(runner.model_outputs())
    sizer = _BatchSizer(batch_size, memory_budget_mb / 2, isinstance(data, Samples) and data.mergeable)
    samples = batches = 0
    say = say_to(progress)
    # A bar on screen already shows liveness; logs and callbacks get a line about once a second.
    periodic = progress is not None or not bars_enabled()
    last_say = time.monotonic()

    def probe(feeds: dict, count: int) -> None:  # size batches from one call's activations; not folded in
        sizer.observe(count, sum(v.nbytes for v in runner.run(feeds, 0)))

    feed_batches, total = _batches(data, model, runner.inputs, sizer, probe)
    logger.debug("calibration: %d tensors fetched, batches of up to %d samples", len(runner.fetch), sizer.size)
    ran = folded = 0.0  # seconds ONNX Runtime ran, seconds folding took (summed over fold threads)
    with ThreadPoolExecutor(max_workers=workers) as folder:
        pending: list = []
        for (feeds, n), last in _flag_last(bar(feed_batches, "calibration", total=total, unit="batch")):
            start = time.perf_counter()
            values = runner.run(feeds, batches + 1)  # ONNX Runtime runs while the last batch folds
            ran += time.perf_counter() - start
            for done in pending:  # a tensor's batches fold in order: the last batch first
                folded += done.result()
            # The final batch folds with nothing left to run beside it: on every fold thread.
            active = workers if last or folded > 1.5 * ran else 1
            pending = [folder.submit(runner.fold, values, stats, scratches[i], share)
                       for i, share in enumerate(_shares(values, active)) if share]
            del values
            batches += 1
            samples += n
            if periodic and time.monotonic() - last_say > 1.0:
                say(f"calibration: batch {batches} ({samples} samples)")
                last_say = time.monotonic()
        for done in pending:
            done.result()
    if batches == 0:
        raise InputError("calibration data holds no batches")
    say(f"calibration: {batches} batches, {samples} samples, {len(stats)} tensors")
    out = {}
    for name in wanted:
        src = stats.get(root[name])
        if src is None:
            continue  # not a float tensor
        if name == root[name]:
            out[name] = src
        else:
            out[name] = src.copy()
            out[name].name = name
    # Samples that merge were cut at multiples of sizer.size; other data ran call by call.
    cut = sizer.size if isinstance(data, Samples) and data.mergeable else 0
    return CalibrationStats(out, num_bins, samples, batches, batch_size=cut)


def _check_names(model: onnx.ModelProto, wanted: list[str]) -> None:
    graph = model.graph
    produced = {o for n in graph.node for o in n.output} | {v.name for v in graph.input}
    missing = [n for n in wanted if n not in produced]
    if missing:
        raise InputError(f"cannot calibrate {missing[0]!r}: no node output or graph input has that name"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


class _BatchSizer:
    """Batch size for dict data: as many samples as the memory budget allows (measured on one)."""

    def __init__(self, batch_size: int, budget_mb: float, adaptive: bool):
        self.limit = batch_size
        self.budget = budget_mb * 2**20
        self.adaptive = adaptive and budget_mb > 0
        self.size = batch_size

    def observe(self, samples: int, fetched_bytes: int) -> None:
        if self.adaptive and samples and fetched_bytes:
            per_sample = fetched_bytes / samples
            self.size = int(max(1, min(self.limit, self.budget // max(per_sample, 1))))


class _Runner:
    """The ONNX Runtime session that exposes every wanted tensor as an extra output.

    (Reducing min/max in-graph, as ONNX Runtime's own MinMax calibrator does, measured slower
    here: the extra nodes run single-threaded per tensor and still block fusions, while NumPy's
    min/max over the fetched tensor is vectorised; and mask-add tensors need their values anyway.)
    """

    def __init__(self, model: onnx.ModelProto, roots: list[str], threads: int):
        from onnxcomp.measure.runtime import session

        graph = model.graph
        existing = {o.name for o in graph.output}
        added = 0
        try:
            for name in roots:
                if name not in existing:
                    graph.output.add().name = name  # no type: ONNX Runtime infers it
                    added += 1
            # Not spinning: the fold threads need the cores while ONNX Runtime's workers wait.
            self.sess = session(model, threads=threads, spin=False)
        finally:  # leave the caller's model as it was
            for _ in range(added):
                graph.output.pop()
        kinds = {o.name: o.type for o in self.sess.get_outputs()}
        self.fetch = [r for r in roots if kinds.get(r) in _ORT_FLOAT_TYPES]
        self.inputs = [i.name for i in self.sess.get_inputs()]
        self.outputs = existing  # the model's own outputs

    def model_outputs(self) -> _OutputsView:
        return _OutputsView(self.sess, self.outputs)

    def run(self, feeds: dict, number: int) -> list:
        try:
            return self.sess.run(self.fetch, feeds)
        except Exception as exc:
            from onnxcomp.measure.runtime import feed_problem, runtime_message

            why = feed_problem(self.sess, feeds) or runtime_message(exc)
            raise InputError(f"calibration batch {number}: ONNX Runtime failed: {why}") from None

    def fold(self, values: list, stats: dict, scratch: Scratch, share: list[int]) -> float:
        """Fold one batch's tensors `share` (indices into fetch) into stats, releasing each when done;
        returns the seconds it took."""
        start = time.perf_counter()
        for i in share:
            stats[self.fetch[i]].update(values[i], scratch)
            values[i] = None
        return time.perf_counter() - start


class _OutputsView:
    """The runner's session showing only the model's own outputs: what Samples.merge_on compares
    merged and one-call runs on, as it would on a session of the model itself."""

    def __init__(self, sess, outputs: set[str]):
        self._sess = sess
        self._outputs = set(outputs)

    def get_inputs(self):
        return self._sess.get_inputs()

    def get_outputs(self):
        return [o for o in self._sess.get_outputs() if o.name in self._outputs]

    def run(self, names, feeds, options=None):
        return self._sess.run(names, feeds, options)


def _flag_last(items: Iterable) -> Iterable[tuple]:
    """(item, whether it is the last) pairs, reading one item ahead."""
    it = iter(items)
    try:
        item = next(it)
    except StopIteration:
        return
    for following in it:
        yield item, False
        item = following
    yield item, True


def _shares(values: list, workers: int) -> list[list[int]]:
    """Indices of `values` in `workers` groups of about equal element counts (largest first, each
    to the lightest group), so the fold threads finish together."""
    shares: list[list[int]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for i in sorted(range(len(values)), key=lambda i: -values[i].size):
        lightest = loads.index(min(loads))
        shares[lightest].append(i)
        loads[lightest] += values[i].size
    return shares


def _batches(data, model: onnx.ModelProto, inputs: list[str], sizer: _BatchSizer,
             probe) -> tuple[Iterable[tuple[dict, int]], int | None]:
    """((feed dict, samples in it) pairs, how many; None when unknown). Samples whose calls can
    merge are cut at multiples of one batch size (chosen by `probe` on the first call), so data
    split at such a multiple gives the same batches, hence bit-identical activations: ONNX
    Runtime's kernels round differently for different batch shapes. Other calls run as they are."""
    if isinstance(data, Samples):
        if sizer.adaptive and data.samples > 1:
            probe({k: data[0][k] for k in inputs if k in data[0]}, data.batch_sizes()[0])
        size = sizer.size
        counts = data.batch_sizes(size)
        feeds = ({k: f[k] for k in inputs if k in f} for f in data.batches(size))
        return zip(feeds, counts), len(counts)
    if callable(getattr(data, "get_next", None)):  # an ONNX Runtime CalibrationDataReader
        data = iter(data.get_next, None)
    if isinstance(data, (str, bytes, np.ndarray)) or not isinstance(data, Iterable):
        raise InputError(f"calibration data must be a dict of arrays, Samples or an iterable of feed dicts, "
                         f"got {type(data).__name__}")
    return _feed_batches(data, model, inputs), (len(data) if isinstance(data, Sized) else None)


def _feed_batches(data: Iterable, model: onnx.ModelProto, inputs: list[str]) -> Iterable[tuple[dict, int]]:
    """The caller's own calls, each checked against the model as it arrives, with its sample count."""
    specs = input_specs(model)
    for i, feeds in enumerate(data):
        call, _ = checked_feed(feeds, specs, f"calibration batch {i + 1}")
        yield {k: call[k] for k in inputs if k in call}, Samples([call], specs).samples
