"""Samples: the data a model runs on, as an ordered sequence of model calls.

Each call is one feed dict (input name -> array) at the model's own batch size, with optional
labels. Everything that takes sample data (optimize --calib/--val, compare --data, distill
--data/--val, calibration, validation, verification, the --max-drop searches) goes through
`as_samples`, so a fixed-batch model is never fed a batch it cannot take, and inputs that are not
a stack of samples (RNN state, a 0-d sample rate) are fed as they are.

Sources `as_samples(source, model)` takes:
- an `.npz` path or a dict of arrays (the stacked layout, onnxcomp.measure.data), a `.npy` path or
  an array for a one-input model;
- `FILE.py:FUNCTION`: a function of no arguments returning an iterable of feed dicts, one model
  call each (Polygraphy's data-loader convention); a `labels` key in a feed is that call's labels;
- a folder of ONNX test-data sets (`test_data_set_*/input_*.pb`, the layout of ONNX's backend
  tests and ORT's tools);
- from Python: a list or generator of feed dicts, or an object with ONNX Runtime's
  CalibrationDataReader `get_next()` (a dict, then None at the end).

Loaded data is held in memory, as an .npz always was. Consecutive calls are merged into bigger
runs (`batches`) only where the model allows it: every input has the same dynamic axis 0 (or is
one 0-d value shared by every call) and the shapes agree. A declared dynamic batch can still be
false (a Reshape that fixes batch 1 inside) or merging can change the numbers (dynamic
quantization takes one range over the whole run), so before the first merged run two calls run
merged and one at a time on the model (`merge_on`); when the merged run fails or differs, every
call runs as it is. The verdict is shared by a Samples and its slices (`first`, `take`): one
probe per run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx

from onnxcomp.errors import InputError, first_line
from onnxcomp.graph.signature import InputSpec, defaulted_inputs, specs_of
from onnxcomp.measure.data import LABELS, checked_array, dim_mismatch, layout, load_npy, load_npz
from onnxcomp.progress import logger

LOADER = re.compile(r"^(?P<file>.+\.py):(?P<function>[A-Za-z_][A-Za-z0-9_]*)$")
# Merged and one-call runs agree when every float output differs by at most this fraction of its
# largest value: batch shapes change kernels' rounding (measured up to 5e-6 on the corpus), while a
# merge that mixes samples (dynamic quantization: 1.9e-2 on tashkeel_bilstm_int8) is far above it.
MERGE_TOLERANCE = 1e-3
MERGE_FAILS = "the model fails on"
_told: set[str] = set()  # probe verdicts already logged (a run's calibration and validation data)


class _Merging:
    """Whether merged runs give what one call at a time gives (None: not probed yet), and what to
    probe on when first needed; shared by a Samples and its slices."""

    def __init__(self, split: bool = False):
        self.safe: bool | None = None
        self.fails = False  # the merged run raised (not just gave other numbers)
        self.split = split  # the calls are one generated call cut up: merged back unless that fails
        self.runner = None  # a ModelProto or path to probe on when merging is first needed


class Samples:
    """An ordered sequence of model calls (feed dicts), with optional labels per call.

    Build one with `as_samples`. `len()` counts calls; iterating gives each call's feeds.
    """

    def __init__(self, calls: list[dict], specs: list[InputSpec], labels: list | None = None,
                 counts: list[int] | None = None, stack: tuple | None = None, merging: _Merging | None = None):
        self._calls = list(calls)
        self._specs = list(specs)
        self._labels = labels  # one array per call, or None
        self._counts = counts if counts is not None else [
            _call_count(c, self._specs, None if labels is None else labels[i]) for i, c in enumerate(self._calls)]
        # (arrays, starts, labels) when the calls are consecutive slices of one stack: merged
        # batches and stacked() are then views of it, not copies.
        self._stack = stack
        self._mergeable: bool | None = None
        self._merging = merging if merging is not None else _Merging()

    # -- the sequence -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[dict]:
        return iter(self._calls)

    def __getitem__(self, index: int) -> dict:
        return self._calls[index]

    def __repr__(self) -> str:
        return f"Samples({self.describe()})"

    @property
    def specs(self) -> list[InputSpec]:
        return list(self._specs)

    @property
    def samples(self) -> int:
        """Samples over all calls (a call's count: its labels, else its batch axis, else 1)."""
        return sum(self._counts)

    def describe(self) -> str:
        calls = len(self)
        return f"{self.samples} samples" + ("" if calls == self.samples else f" in {calls} calls")

    def take(self, n: int) -> Samples:
        """The first `n` calls."""
        n = max(0, n)
        stack = None
        if self._stack is not None:
            arrays, starts, labels = self._stack
            stack = (arrays, starts[:n + 1], labels)
        return Samples(self._calls[:n], self._specs, None if self._labels is None else self._labels[:n],
                       self._counts[:n], stack, self._merging)

    def first(self, max_samples: int) -> Samples:
        """The first calls holding at most `max_samples` samples (at least one call)."""
        total, n = 0, 0
        for count in self._counts:
            if n and total + count > max_samples:
                break
            total, n = total + count, n + 1
        return self if n == len(self) else self.take(n)

    def labels(self) -> np.ndarray | None:
        """Every call's labels concatenated, or None unless every call has some."""
        if self._labels is None or not self._calls or any(x is None for x in self._labels):
            return None
        if self._stack is not None and self._stack[2] is not None:
            starts = self._stack[1]
            return self._stack[2][starts[0]:starts[-1]]
        return np.concatenate([np.atleast_1d(x) for x in self._labels])

    # -- running ------------------------------------------------------------------------------

    @property
    def mergeable(self) -> bool:
        """Whether consecutive calls may run as one: every input stacks on one dynamic axis 0 (with
        as many rows as the call has samples) or is one 0-d value shared by every call, and the
        model (`merge_on`) gives the same outputs merged as one call at a time."""
        merging = self._merging
        pending = merging.runner is not None and merging.safe is None
        if pending and self._fits_merging() and self._probe(merging.runner):
            merging.runner = None  # probed (or not runnable): the model is not needed any more
        return self._fits_merging() and (merging.safe is not False or (merging.split and not merging.fails))

    def merge_on(self, runner) -> Samples:
        """Probe merged runs on `runner` before the first run that merges calls, unless this data
        was probed already: an ONNX Runtime session at once (it is at hand; none is kept), a
        ModelProto or a path when merging is first needed. Returns self."""
        if self._merging.safe is not None or runner is None:
            return self
        if not _is_session(runner):
            self._merging.runner = runner
        elif self._fits_merging():
            self._probe(runner)
        return self

    def _fits_merging(self) -> bool:
        """What the specs and shapes say (see `mergeable`)."""
        if self._mergeable is None:
            # Dynamic axes 0 with different names (nodes 'N', edges 'E') are not one batch axis.
            names = {s.shape[0] for s in self._specs if s.rank and s.static(0) is None and s.shape[0] != "?"}
            self._mergeable = (bool(self._calls) and len(names) <= 1
                               and all(self._role(spec) is not None for spec in self._specs))
        return self._mergeable

    def _probe(self, runner) -> bool:
        """Run the first two calls that would merge merged and one at a time on `runner`; refuse
        merging (for this data and its slices) when the merged run fails or its outputs differ.
        False when no two calls here merge (a longer slice of the same data may)."""
        stacking = [s.name for s in self._specs if s.rank and s.static(0) is None]
        pair = next((i for i in range(len(self._calls) - 1)
                     if _agree(self._calls[i], self._calls[i + 1], stacking)), None)
        if pair is None:
            return False
        verdict = _merged_run_problem(runner, self._calls[pair:pair + 2], self._merged(pair, pair + 2))
        if verdict is not None:  # None: the model could not be run to probe; the specs decide
            self._merging.safe = verdict == ""
            self._merging.fails = verdict.startswith(MERGE_FAILS)
        if verdict and verdict not in _told and not (self._merging.split and not self._merging.fails):
            _told.add(verdict)
            logger.info("sample data: %s; running the model one call at a time", verdict)
        return True

    def _role(self, spec: InputSpec) -> str | None:
        if spec.rank and spec.static(0) is None:
            if all(c[spec.name].ndim and len(c[spec.name]) == n for c, n in zip(self._calls, self._counts)):
                return "stack"
            return None
        # Only a 0-d value can be shared by a merged run: a fixed-shape tensor may be tied to the
        # batch (RNN state [layers, 1, hidden] next to a dynamic batch).
        first = self._calls[0][spec.name]
        if spec.rank == 0 and all(_same(c[spec.name], first) for c in self._calls[1:]):
            return "shared"
        return None

    def _plan(self, max_samples: int | None) -> list[tuple[int, int]]:
        """Consecutive call ranges [i, j) that run as one."""
        n = len(self._calls)
        if max_samples is None or n <= 1 or not self.mergeable:
            return [(i, i + 1) for i in range(n)]
        stacking = [s.name for s in self._specs if s.rank and s.static(0) is None]
        plan, start, total = [], 0, self._counts[0]
        for j in range(1, n + 1):
            if j < n and total + self._counts[j] <= max_samples and _agree(self._calls[start], self._calls[j], stacking):
                total += self._counts[j]
                continue
            plan.append((start, j))
            if j < n:
                start, total = j, self._counts[j]
        return plan

    def batches(self, max_samples: int | None = None) -> Iterator[dict]:
        """Feed dicts to run: consecutive calls merged up to `max_samples` samples where `mergeable`
        (never splitting a call, never stacking a static axis); each call as is when None."""
        for i, j in self._plan(max_samples):
            yield self._merged(i, j)

    def batch_sizes(self, max_samples: int | None = None) -> list[int]:
        """Samples in each of `batches(max_samples)`, in order."""
        return [sum(self._counts[i:j]) for i, j in self._plan(max_samples)]

    def _merged(self, i: int, j: int) -> dict:
        if j - i == 1:
            return self._calls[i]
        first = self._calls[i]
        feeds = {}
        for spec in self._specs:
            name = spec.name
            if not (spec.rank and spec.static(0) is None):
                feeds[name] = first[name]
            elif self._stack is not None and name in self._stack[0]:
                starts = self._stack[1]
                feeds[name] = self._stack[0][name][starts[i]:starts[j]]
            else:
                feeds[name] = np.concatenate([c[name] for c in self._calls[i:j]], axis=0)
        return feeds

    def stacked(self) -> dict[str, np.ndarray] | None:
        """The stacked layout (axis 0 = samples, `labels` when present) when every input stacks on
        a dynamic axis 0 and the shapes agree; else None (static batch, constants, per-call shapes)."""
        if not self._calls or not self.mergeable:
            return None
        names = [s.name for s in self._specs]
        if not all(s.rank and s.static(0) is None for s in self._specs):
            return None
        if any(not _agree(self._calls[0], c, names) for c in self._calls[1:]):
            return None
        out = next(self.batches(max_samples=self.samples)) if len(self) > 1 else dict(self._calls[0])
        out = dict(out)
        labels = self.labels()
        if labels is not None:
            out[LABELS] = labels
        return out


def _is_session(runner) -> bool:
    return hasattr(runner, "run") and hasattr(runner, "get_outputs")


def _probe_session(runner):
    """A CPU session for a ModelProto or a path (onnxcomp.measure.runtime imports this module, so
    not its session()), or None when ONNX Runtime cannot load it (a model past protobuf's 2 GB)."""
    try:
        import onnxruntime as ort
    except ImportError:  # the command itself names the missing runtime
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        source = runner.SerializeToString() if isinstance(runner, onnx.ModelProto) else str(runner)
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception:
        return None


def _merged_run_problem(runner, calls: list[dict], merged: dict) -> str | None:
    """Why `merged` (the calls as one run) does not give the calls' own outputs: "" when it does,
    None when the runner cannot be loaded or the calls themselves fail (no verdict then)."""
    sess = runner if _is_session(runner) else _probe_session(runner)
    if sess is None:
        return None
    import onnxruntime as ort

    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the failing merged run is expected here, not an error to print
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}

    def run(feeds: dict) -> list:
        return sess.run(names, {k: np.asarray(v) for k, v in feeds.items() if k in wanted}, quiet)

    try:
        singles = [run(c) for c in calls]
    except Exception:
        return None
    try:
        together = run(merged)
    except Exception as exc:
        logger.debug("sample data: the merged run failed: %s", " ".join(str(exc).split()))
        return f"{MERGE_FAILS} {len(calls)} calls merged into one run (-v shows ONNX Runtime's message)"
    for k, name in enumerate(names):
        parts = [single[k] for single in singles]
        if not any(_close(joined, together[k]) for joined in _joins(parts, together[k])):
            return (f"output {name!r} of {len(calls)} calls merged into one run differs from the calls run one at "
                    f"a time (batch-dependent arithmetic, or a batch the model does not really take)")
    return ""


def _joins(parts: list, merged) -> Iterator[np.ndarray]:
    """Ways the calls' outputs can make up the merged run's: concatenated or stacked along the
    axis that grew (a batch axis need not be axis 0: [time, batch, classes])."""
    if not isinstance(merged, np.ndarray) or not all(isinstance(p, np.ndarray) for p in parts):
        return

    def without(shape: tuple, axis: int) -> tuple:
        return shape[:axis] + shape[axis + 1:]

    for axis in range(merged.ndim):
        rest = without(merged.shape, axis)
        if all(p.ndim == merged.ndim and without(p.shape, axis) == rest for p in parts) \
                and sum(p.shape[axis] for p in parts) == merged.shape[axis]:
            yield np.concatenate(parts, axis=axis)
        elif all(p.shape == rest for p in parts) and len(parts) == merged.shape[axis]:
            yield np.stack(parts, axis=axis)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind not in "fc":
        return bool(np.array_equal(a, b))
    finite = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(a[~finite], b[~finite], equal_nan=True):
        return False
    a, b = a[finite].astype(np.float64), b[finite].astype(np.float64)
    return float(np.max(np.abs(a - b), initial=0.0)) <= MERGE_TOLERANCE * float(np.max(np.abs(a), initial=0.0))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b))


def _agree(a: dict, b: dict, names: list[str]) -> bool:
    """Same dtype and same shape beyond axis 0 for each of `names`."""
    return all(a[k].dtype == b[k].dtype and a[k].shape[1:] == b[k].shape[1:] for k in names)


def _call_count(feeds: dict, specs: list[InputSpec], labels) -> int:
    """Samples in one call: its labels, else axis 0 when every input that has one agrees on its
    length, else 1 (state [layers, batch, hidden] next to x [batch, ...]: axis 0 is not the batch)."""
    if labels is not None:
        return int(np.size(labels)) if np.ndim(labels) else 1
    sizes = {len(feeds[s.name]) for s in specs if s.rank and np.ndim(feeds[s.name])}
    return sizes.pop() if len(sizes) == 1 else 1


# -- building Samples from what the user gives ------------------------------------------------

def as_samples(source, model=None, where: str | None = None) -> Samples | None:
    """Samples from any supported source (module docstring), checked against `model` (a
    ModelProto or its input specs; None: specs are taken from the data, every dim dynamic).
    None gives None; Samples are returned as they are. A ModelProto is also what merged runs
    are probed on (Samples.merge_on)."""
    if source is None:
        return None
    if isinstance(source, Samples):
        return source.merge_on(model) if isinstance(model, onnx.ModelProto) else source
    samples = _as_samples(source, model, where)
    return samples.merge_on(model) if isinstance(model, onnx.ModelProto) else samples


def _as_samples(source, model, where: str | None) -> Samples:
    specs = None if model is None else specs_of(model)
    defaults = _Defaults(model)
    if isinstance(source, (str, os.PathLike)):
        text = str(source)
        where = where or text
        match = LOADER.match(text)
        if match and not Path(text).exists():
            return from_calls(defaults.checked(_run_loader(match["file"], match["function"], text), where), specs, where)
        path = Path(text)
        if path.is_dir():
            return from_calls(read_test_data_sets(path, specs), specs, where)
        if path.suffix.lower() == ".npy":
            return _one_array(load_npy(path), specs, where)
        if path.suffix.lower() == ".py":
            raise InputError(f"{text}: a data loader is named FILE.py:FUNCTION (a function of no arguments "
                             "returning feed dicts, one per model call)")
        return from_stacked(defaults.checked_one(load_npz(path), where), specs, where)
    where = where or "data"
    if isinstance(source, np.ndarray):
        return _one_array(source, specs, where)
    if isinstance(source, Mapping):
        return from_stacked(defaults.checked_one(source, where), specs, where)
    if callable(getattr(source, "get_next", None)):
        return from_calls(defaults.checked(iter(source.get_next, None), where), specs, where)
    if isinstance(source, (bytes, bytearray)) or not isinstance(source, Iterable):
        raise InputError(f"{where}: sample data must be an .npz/.npy path, FILE.py:FUNCTION, a folder of "
                         f"test_data_set_* folders, a dict of arrays or an iterable of feed dicts; got "
                         f"{type(source).__name__}")
    return from_calls(defaults.checked(source, where), specs, where)


class _Defaults:
    """The model's inputs with a default value (IR 4+ initializers listed as inputs). Passes fold
    them as constants, so data may give one only at its default: another value would be ignored."""

    def __init__(self, model):
        self.model = model if isinstance(model, onnx.ModelProto) else None
        self.names = set(defaulted_inputs(self.model)) if self.model is not None else set()
        self._values: dict[str, np.ndarray] = {}  # defaults read so far (one read per name, not per call)

    def checked_one(self, feed, where: str):
        if isinstance(feed, Mapping):
            for name in self.names.intersection(map(str, feed)):
                self._check(name, feed[name], where)
        return feed

    def checked(self, feeds: Iterable, where: str) -> Iterator:
        for i, feed in enumerate(feeds):
            yield self.checked_one(feed, f"{where}: call {i + 1}")

    def _check(self, name: str, value, where: str) -> None:
        if name not in self._values:
            self._values[name] = next(onnx.numpy_helper.to_array(t) for t in self.model.graph.initializer
                                      if t.name == name)
        default = self._values[name]
        given = np.asarray(value)
        if given.shape == default.shape and np.array_equal(given, default):
            return
        raise InputError(f"{where}: gives input {name!r}, which has a default in the model (an initializer); "
                         "onnxcomp folds such inputs as constants, as ONNX Runtime's optimizer does, so this "
                         "value would be ignored: leave it out of the data, or remove the initializer from "
                         "the model to keep it an input")


def one_call(feeds: dict[str, np.ndarray], model) -> Samples:
    """Feeds that are a single model call as they are (seeded random inputs, a probe)."""
    return Samples([dict(feeds)], specs_of(model) if model is not None else _guessed_specs(feeds))


def generated_calls(feeds: dict[str, np.ndarray], model: onnx.ModelProto) -> Samples:
    """Seeded random inputs generated at a batch of N, as one call that falls apart into its N
    samples only where the model fails on the whole (a Reshape that fixes batch 1 behind a
    dynamic axis): every input with an axis has the same dynamic axis 0, 0-d inputs are shared.
    Elsewhere (state whose batch is axis 1, axis 0 of different names) it is one_call."""
    specs = specs_of(model)
    ranked = [s for s in specs if s.rank]
    names = {s.shape[0] for s in ranked if s.shape[0] != "?"}
    if not ranked or len(names) > 1 or any(s.static(0) is not None or s.name not in feeds for s in ranked) \
            or len({np.shape(feeds[s.name])[:1] for s in ranked}) != 1 or any(s.name not in feeds for s in specs):
        return one_call(feeds, model)
    try:
        cut = from_stacked({s.name: feeds[s.name] for s in specs}, specs, "generated inputs")
    except InputError:
        return one_call(feeds, model)
    if len(cut) < 2 or not cut._fits_merging():
        return one_call(feeds, model)
    split = Samples(cut._calls, specs, None, cut._counts, cut._stack, _Merging(split=True))
    return split.merge_on(model)


def from_stacked(data: Mapping, specs: list[InputSpec] | None, where: str = "data") -> Samples:
    """Cut the stacked layout into calls (onnxcomp.measure.data.layout says how)."""
    specs = specs if specs is not None else _guessed_specs(data)
    lay = layout(data, specs, where)
    size, calls = lay.call_size, lay.calls
    used = calls * size if lay.stacked else 0
    if lay.stacked and used < lay.samples:
        fixed = next(s.name for s in specs if s.name in lay.stacked and s.static(0) is not None)
        logger.info("%s: %d samples do not fill calls of %d (input %r has a fixed batch of %d): the last %d "
                    "are left out", where, lay.samples, size, fixed, size, lay.samples - used)
    feeds, labels = [], None if lay.labels is None else []
    for c in range(calls):
        feed = {}
        for spec in specs:
            array = lay.arrays[spec.name]
            if spec.name in lay.stacked:
                feed[spec.name] = array[c * size:(c + 1) * size]
            elif spec.name in lay.per_call:
                feed[spec.name] = array[c:c + 1].reshape(())
            else:
                feed[spec.name] = array
        feeds.append(feed)
        if labels is not None:
            labels.append(lay.labels[c * size:(c + 1) * size] if lay.stacked else lay.labels[c:c + 1])
    counts = [size if lay.stacked else 1] * calls
    stack = None
    if lay.stacked:
        stacked_labels = None if lay.labels is None else lay.labels[:used]
        stack = ({k: lay.arrays[k][:used] for k in lay.stacked}, [c * size for c in range(calls + 1)],
                 stacked_labels)
    return Samples(feeds, specs, labels, counts, stack)


def from_calls(feeds: Iterable, specs: list[InputSpec] | None, where: str = "data") -> Samples:
    """One model call per feed dict, each checked against the specs (names, dtype kinds, rank,
    every static dim) as it arrives; a `labels` key is that call's labels."""
    calls, labels = [], []
    try:
        for i, feed in enumerate(feeds):
            call, label = checked_feed(feed, specs, f"{where}: call {i + 1}")
            if specs is None:
                specs = _guessed_specs(call)
            calls.append(call)
            labels.append(label)
    except InputError:
        raise
    except Exception as exc:  # a generator or reader of the user's that fails while producing feeds
        raise InputError(f"{where}: producing feed {len(calls) + 1} failed: {type(exc).__name__}: "
                         f"{first_line(exc)}") from None
    if not calls:
        raise InputError(f"{where}: holds no model calls (no feed dicts)")
    known = [x for x in labels if x is not None]
    if known and len(known) != len(labels):
        raise InputError(f"{where}: some calls have 'labels' and some do not; give them for every call or none")
    return Samples(calls, specs, labels if known else None)


def checked_feed(feed, specs: list[InputSpec] | None, where: str) -> tuple[dict, np.ndarray | None]:
    """(feeds of the model's inputs, labels or None) of one call, or one InputError line."""
    if not isinstance(feed, Mapping):
        raise InputError(f"{where}: expected a dict of input arrays, got {type(feed).__name__}")
    if specs is None:
        specs = _guessed_specs({k: v for k, v in feed.items() if k != LABELS})
    names = {s.name for s in specs}
    missing = [s.name for s in specs if s.name not in feed]
    if missing:
        raise InputError(f"{where}: missing array(s) for model input(s) {', '.join(missing)}; "
                         f"found keys {', '.join(sorted(map(str, feed))) or 'none'}")
    call = {}
    for spec in specs:
        array = checked_array(spec, feed[spec.name], where)
        if array.ndim != spec.rank:
            raise InputError(f"{where}: input {spec.name!r} has {array.ndim} dims {array.shape}, model expects "
                             f"{spec.rank} dims {tuple(spec.shape)}")
        problem = dim_mismatch(spec, array.shape)
        if problem:
            raise InputError(f"{where}: {problem}")
        call[spec.name] = array
    labels = None
    if LABELS in feed and LABELS not in names:
        labels = np.asarray(feed[LABELS])
        if labels.dtype.kind not in "biuf":
            raise InputError(f"{where}: 'labels' must be class indices, got dtype {labels.dtype}")
    return call, labels


def _guessed_specs(data: Mapping) -> list[InputSpec]:
    """Specs read off the data itself (no model to ask): every dim dynamic."""
    specs = []
    for name, value in data.items():
        if name == LABELS:
            continue
        array = np.asarray(value)
        specs.append(InputSpec(name, array.dtype, ("?",) * array.ndim))
    return specs


def _one_array(array: np.ndarray, specs: list[InputSpec] | None, where: str) -> Samples:
    if specs is None or len(specs) != 1:
        count = "an unknown number of" if specs is None else str(len(specs))
        names = "" if specs is None else f" ({', '.join(s.name for s in specs)})"
        raise InputError(f"{where}: a single array fits a one-input model; this one has {count} inputs{names}: "
                         "give an .npz with one array per input, or a FILE.py:FUNCTION data loader")
    return from_stacked({specs[0].name: array}, specs, where)


def _run_loader(file: str, function: str, text: str) -> list:
    """Import FILE.py by path (not kept in sys.modules or on sys.path), call FUNCTION(), and
    collect its feed dicts."""
    path = Path(file)
    if not path.is_file():
        raise InputError(f"{text}: no such file {file}")
    name = f"onnxcomp_data_loader_{abs(hash(str(path.resolve())))}"
    folder = str(path.resolve().parent)
    before = set(sys.modules)
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise InputError(f"{text}: {file} cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up while it runs
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise InputError(f"{text}: importing {file} failed: {type(exc).__name__}: {first_line(exc)}") from None
        loader = getattr(module, function, None)
        if not callable(loader):
            found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                           and getattr(v, "__module__", None) == name)
            raise InputError(f"{text}: {file} has no function {function!r}"
                             + (f" (functions: {', '.join(found)})" if found else ""))
        try:
            result = loader()
        except Exception as exc:
            raise InputError(f"{text}: {function}() failed: {type(exc).__name__}: {first_line(exc)}") from None
        if isinstance(result, Mapping):
            raise InputError(f"{text}: {function}() returned one dict; return a list (or generator) of feed "
                             "dicts, one per model call")
        if isinstance(result, (str, bytes)) or not isinstance(result, Iterable):
            raise InputError(f"{text}: {function}() must return an iterable of feed dicts (one per model call), "
                             f"got {type(result).__name__}")
        try:
            return list(result)
        except Exception as exc:
            raise InputError(f"{text}: iterating what {function}() returned failed: {type(exc).__name__}: "
                             f"{first_line(exc)}") from None
    finally:
        if folder in sys.path:  # the entry added above (the loader may have added its own in front)
            sys.path.remove(folder)
        for added in set(sys.modules) - before:  # the loader and its neighbours, not what they imported from elsewhere
            where_from = getattr(sys.modules[added], "__file__", None) or ""
            if added == name or (where_from and os.path.dirname(os.path.abspath(where_from)) == folder):
                del sys.modules[added]


def read_test_data_sets(folder: Path, specs: list[InputSpec] | None) -> list[dict]:
    """Feeds from ONNX test-data sets: `folder/test_data_set_N/input_M.pb` (or `folder/input_M.pb`),
    one call per set; each TensorProto's name picks its input, else its position does."""
    import onnx
    from onnx import numpy_helper

    def number(p: Path) -> int:
        digits = re.findall(r"\d+", p.stem if p.is_file() else p.name)
        return int(digits[-1]) if digits else 0

    sets = sorted((p for p in folder.glob("test_data_set_*") if p.is_dir()), key=number)
    if not sets and any(folder.glob("input_*.pb")):
        sets = [folder]
    if not sets:
        raise InputError(f"{folder}: a data folder holds ONNX test-data sets (test_data_set_*/input_*.pb); "
                         "found none")
    names = None if specs is None else [s.name for s in specs]
    feeds = []
    for data_set in sets:
        files = sorted(data_set.glob("input_*.pb"), key=number)
        if not files:
            raise InputError(f"{data_set}: no input_*.pb files")
        if names is not None and len(files) > len(names):
            raise InputError(f"{data_set}: {len(files)} input files for a model with {len(names)} inputs")
        feed = {}
        for position, file in enumerate(files):
            tensor = onnx.TensorProto()
            try:
                tensor.ParseFromString(file.read_bytes())
                array = numpy_helper.to_array(tensor)
            except Exception as exc:
                raise InputError(f"{file}: not a readable TensorProto ({first_line(exc)})") from None
            if names is None:
                name = tensor.name or f"input_{position}"
            else:
                name = tensor.name if tensor.name in names else names[position]
            feed[name] = array
        feeds.append(feed)
    return feeds


def in_batches(data, batch: int, gather):
    """gather(calls) over `data` (onnxcomp Samples) merged into calls of `batch` samples, or over the
    calls as they are where a dynamic batch the model does not really take fails (InputError)."""
    from onnxcomp.errors import InputError

    try:
        return gather(data.batches(batch))
    except InputError:
        return gather(data.batches(None))
