"""compress(): prune -> distill -> fold -> quantize, in that order, to a latency or size goal within an
accuracy budget.

The order is the point, and each step is verified before the next:

1. cleanup (exact: the result must reproduce the input);
2. remove-channels with BatchNorm kept (ranking and slicing see BN, and the student keeps a BN to
   recover with: folded first, distillation reached 0.76 on the digits CNN, kept 0.99);
3. distillation of the pruned student from the original model (labels when the data has them,
   else the teacher's outputs alone; and the teacher's features after the residual joins the
   student kept);
4. fold-bn (exact against the distilled student);
5. sparsify-initializers (optional);
6. insert-qdq, calibrated on the training data;
7. quantization-aware fine-tuning of the QDQ graph (fixed grid, straight-through, BatchNorm
   folded and frozen) when max_drop is still missed and quantizing lost accuracy;
8. the target's checks (`onnxcomp check --target`).

The goal chooses the pruning by measurement, not by MAC counts. Candidates - pruning ratios with
uniform and global channel ranking, widths rounded to the host's measured channel block, each with
and without the droppable residual branches (onnxcomp.graph.residual) - are built in the form they
would ship in (folded, quantized; thin-input convolutions in float when measured faster) and
measured: latency under ONNX Runtime at `batch` against the input (interleaved rounds, see
onnxcomp.measure.latency) or serialized bytes. The least-pruned candidate that meets the goal (a
latency goal: with LATENCY_MARGIN to spare when one does) is trained, matching the teacher's
features after the residual joins it kept besides its outputs. When its recovered drop misses
max_drop, one more that meets the goal is tried, then the search backs off to less compressed
candidates, nearest the goal first, training each it tries, and keeps the most compressed one within
max_drop (the goal is then missed, and the result says what was reached). When even no pruning
misses max_drop, ToleranceError.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxcomp.errors import InputError, ToleranceError, VerificationError
from onnxcomp.measure.data import LABELS, take
from onnxcomp.progress import bar, logger, say_to

QUANTIZE = ("int8", "none")
TARGETS = ("ort", "tensorrt")
RATIOS = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)  # the search grid (0 is always a candidate)
SEARCH_CALIB = 32  # samples calibrating a search candidate (its latency and size do not depend on ranges)
SEARCH_VAL = 256  # validation samples for a candidate's drop before recovery
CALIB = 256  # samples calibrating the trained model
HELD_OUT = 0.2  # share of the training data held out for validation when no val data is given
# Distillation of a pruned student: 4 epochs reach 0.96 at 3e-3 here, 0.77 at 1e-3; with the block
# outputs matched too, 6 epochs at 6e-3 reach 0.994-1.000 in INT8 over three seeds and widths
# (docs/compress.md#measured), 3e-3 0.994 where 6e-3 reached 0.997.
RECOVERY_LR = 6e-3
# Soft targets at T=1, half the weight on labels: the best short-schedule recovery measured on the
# digits CNN (docs/distillation.md; T=4, alpha=0.7 loses 0.6-3 points at 5 epochs).
RECOVERY_TEMPERATURE, RECOVERY_ALPHA = 1.0, 0.5
QAT_LR = 1e-4  # fine-tuning on a fixed integer grid: small steps
MIN_INT8_CHANNELS = 4  # convolutions reading fewer channels are candidates to stay in float (measured)
# A latency goal is first sought among candidates under this share of it: on a shared host one
# candidate's measured ratio moved from 0.186x to 0.211x between two runs, and one just under the goal
# in the search can be over it when measured again.
LATENCY_MARGIN = 0.8
# Candidates timed within this fraction of the margin are timed again, longer, before one is chosen.
NEAR_MARGIN = 0.15
MAX_SINGLE_DROPS = 4  # up to this many droppable residual branches, each is also tried alone


@dataclass
class Candidate:
    """One measured point of the search: a pruning and its deployed form's figures."""

    ratio: float
    ranking: str  # "uniform" or "global" (layers lose different fractions)
    widths: tuple  # channels kept per channel group
    params: int
    dropped: tuple = ()  # residual branches removed whole (their Add nodes), before the channel pruning
    latency: float | None = None  # deployed form's latency at `batch`, as a ratio to the input's
    size: float | None = None  # deployed form's serialized bytes, as a ratio to the input's
    drop_before: float | None = None  # drop of the deployed form before any recovery
    drop_recovered: float | None = None  # after distillation (and folding, quantizing)
    drop: float | None = None  # final: after quantization-aware fine-tuning when it ran
    qat: bool = False
    trained: bool = False
    chosen: bool = False
    pruned: Any = None  # the pruned model (BatchNorm kept), not reported

    @property
    def pruning(self) -> bool:
        return self.ratio > 0 or bool(self.dropped)

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "ranking": self.ranking, "widths": list(self.widths), "params": self.params,
                "dropped": list(self.dropped), "latency": self.latency, "size": self.size,
                "drop_before": self.drop_before, "drop_recovered": self.drop_recovered, "drop": self.drop, "qat": self.qat, "trained": self.trained,
                "chosen": self.chosen}


@dataclass
class Stage:
    name: str
    seconds: float = 0.0
    runs: int = 0
    note: str = ""

    def as_dict(self) -> dict:
        return {"name": self.name, "seconds": round(self.seconds, 3), "runs": self.runs, "note": self.note}


@dataclass
class CompressResult:
    model: onnx.ModelProto  # not saved yet: onnxcomp.save(result.model, path)
    goal: dict
    met: bool  # every goal given (latency/size, max_drop) met
    message: str  # what was reached, and why when a goal was missed
    metric: str  # "accuracy" (labels) or "cosine"
    figures: dict  # name -> {"original", "output", "ratio"}
    candidates: list[Candidate]
    stages: list[Stage]
    host: dict
    data: dict
    check: dict
    seconds: float = 0.0
    output: str | None = None

    @property
    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.chosen), None)

    def as_dict(self) -> dict:
        chosen = self.chosen
        return {"goal": self.goal, "met": self.met, "message": self.message, "metric": self.metric,
                "figures": self.figures, "chosen": None if chosen is None else chosen.as_dict(),
                "candidates": [c.as_dict() for c in self.candidates], "stages": [s.as_dict() for s in self.stages],
                "host": self.host, "data": self.data, "check": self.check, "seconds": round(self.seconds, 3),
                "output": self.output}


class _Clock:
    """Time per stage, summed over every candidate that ran it, in the order stages first ran."""

    def __init__(self, say):
        self.stages: dict[str, Stage] = {}
        self.say = say

    def run(self, name: str, fn, note: str = ""):
        stage = self.stages.setdefault(name, Stage(name))
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
        stage.seconds += seconds
        stage.runs += 1
        if note:
            stage.note = note
        self.say(f"{name}: {seconds:.1f} s" + (f" ({note})" if note else ""))
        return value


def compress(model, data, val_data=None, *, target: str = "ort", latency: float | None = None,
             size: float | None = None, prune: float | None = None, quantize: str = "int8",
             sparsify: str | None = None, max_drop: float | None = None, epochs: int = 6, batch: int = 8,
             threads: int = 1, seed: int = 0, backoff: int = 2, grid: tuple = RATIOS,
             progress=None) -> CompressResult:
    """Compress `model` (path or ModelProto) on `data` (the training data: anything `--calib` takes,
    an .npz path or a dict of arrays with optional `labels` most simply), checked on `val_data`
    (default: a seeded fifth of `data`).

    One of `latency` (output latency at `batch` <= latency x the input's, under ONNX Runtime here),
    `size` (output bytes <= size x the input's) or `prune` (a fixed channel ratio); with none, only
    the rest of the pipeline (quantization) runs. `max_drop`: accuracy drop on val_data (labels),
    else 1 - mean cosine. `epochs`: distillation epochs per trained candidate (a third as many, at
    least one, for quantization-aware fine-tuning). `backoff`: how many extra candidates may be
    trained when max_drop is missed. `grid`: the pruning ratios a latency or size goal searches (with
    both rankings; 0 is always a candidate). Raises ToleranceError (its `result` attribute holds the
    figures) when max_drop cannot be met even without pruning.
    """
    from onnxcomp.graph.load import load_model

    say = say_to(progress)
    start = time.perf_counter()
    _check_options(target, latency, size, prune, quantize, max_drop, epochs, batch, threads, backoff, grid)
    original = load_model(model) if not isinstance(model, onnx.ModelProto) else model
    train, val, data_info = _split(_arrays(data, original, "data"), _arrays(val_data, original, "val"), seed)
    metric = _check_labels(original, train, val)
    clock = _Clock(say)
    goal = {"kind": "latency" if latency is not None else "size" if size is not None else
            "prune" if prune is not None else "none",
            "value": latency if latency is not None else size if size is not None else prune,
            "max_drop": max_drop, "batch": batch, "target": target, "quantize": quantize, "sparsify": sparsify,
            "epochs": epochs, "backoff": backoff}
    steps = _Steps(original, train, val, target, quantize, sparsify, epochs, threads, seed, progress, clock)
    cleaned = clock.run("cleanup", steps.cleanup, "exact, checked against the input")
    steps.teacher = cleaned
    host = {"threads": threads, "cpu": cpu_name()}
    block = 1
    if goal["kind"] in ("latency", "size") or (prune or 0) > 0:  # widths are rounded to the block
        from onnxcomp.measure.latency import channel_block

        probe = clock.run("channel block", lambda: channel_block(threads, batch))
        block = probe["block"]
        host["channel_block"] = block
        host["channel_probe_ms"] = dict(zip(map(str, probe["widths"]), probe["ms"]))
        say(f"channel block of this host's convolution kernels: {block} (measured)")
    ratios = [0.0] + (sorted(set(grid) - {0.0}) if goal["kind"] in ("latency", "size") else [prune] if prune else [])
    rankings = ("uniform", "global") if goal["kind"] in ("latency", "size") else ("uniform",)
    candidates = clock.run("search", lambda: steps.candidates(cleaned, ratios, rankings, block, goal))
    host.update(steps.precision)
    result = CompressResult(cleaned, goal, False, "", metric, {}, candidates, [], host, data_info, {})
    try:
        chosen, reached = _choose(candidates, goal)
        from onnxcomp.distill.teacher import reuse_targets

        with reuse_targets():  # every candidate learns from the same teacher on the same data
            final = _train_and_back_off(steps, candidates, chosen, goal, result)
        result.model = final
        result.check = clock.run("check", lambda: _check_target(final, target))
        result.figures = clock.run("measure", lambda: steps.figures(original, final, batch, metric))
        if goal["kind"] == "latency" and result.figures["latency_batch_ms"]["ratio"] is not None:
            # The output's own measurement (the table's, timed longest) decides, not the search's.
            result.chosen.latency = result.figures["latency_batch_ms"]["ratio"]
        result.message, result.met = _outcome(result.chosen, reached, goal, candidates)
    finally:
        result.stages = list(clock.stages.values())
        result.seconds = time.perf_counter() - start
    return result


def _check_options(target, latency, size, prune, quantize, max_drop, epochs, batch, threads, backoff,
                   grid) -> None:
    given = [name for name, value in (("latency", latency), ("size", size), ("prune", prune)) if value is not None]
    checks = [
        (len(given) <= 1, f"give one of latency, size and prune, not {' and '.join(given)}"),
        (target in TARGETS, f"target must be one of {', '.join(TARGETS)}, got {target!r}"),
        (quantize in QUANTIZE, f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}"),
        (given or quantize != "none", "nothing to do: give latency, size or prune, or quantize int8"),
        (latency is None or latency > 0, f"latency must be a positive factor, got {latency}"),
        (size is None or size > 0, f"size must be a positive factor, got {size}"),
        (prune is None or 0 <= prune < 1, f"prune must be in [0, 1), got {prune}"),
        (max_drop is None or max_drop >= 0, f"max_drop must be >= 0, got {max_drop}"),
        (epochs >= 1, f"epochs must be at least 1, got {epochs}"),
        (batch >= 1, f"batch must be at least 1, got {batch}"),
        (threads >= 1, f"threads must be at least 1, got {threads}"),
        (backoff >= 0, f"backoff must be >= 0, got {backoff}"),
        (all(0 <= r < 1 for r in grid), f"grid ratios must be in [0, 1), got {list(grid)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(f"compress: {message}")


def _arrays(value, model: onnx.ModelProto, where: str) -> dict[str, np.ndarray] | None:
    """`value` (anything `--calib` takes: .npz, .npy, FILE.py:FUNCTION, a test-data folder, a dict
    of arrays, feed dicts) as stacked arrays, axis 0 = samples: distillation trains on batches of them."""
    from onnxcomp.measure.samples import as_samples

    if value is None:
        return None
    stacked = as_samples(value, model, where).stacked()
    if stacked is None:
        raise InputError(f"{where}: compress needs samples that stack along a dynamic axis 0 of every input "
                         "(it trains on batches of them); this data or model does not (fixed batch, constants "
                         "or per-call shapes)")
    return stacked


def _split(train: dict, val: dict | None, seed: int) -> tuple[dict, dict, dict]:
    """(train, val, what was used): val as given, else a seeded HELD_OUT share of train set aside."""
    n = len(next(v for k, v in train.items() if k != LABELS))
    if val is not None:
        return train, val, {"train": n, "val": len(next(v for k, v in val.items() if k != LABELS)), "val_source": "val"}
    if n < 10:
        raise InputError(f"data: {n} samples is too few to hold some out for validation; give val data")
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * (1 - HELD_OUT))
    pick = lambda index: {k: v[np.sort(index)] for k, v in train.items()}
    return pick(order[:cut]), pick(order[cut:]), {"train": cut, "val": n - cut, "val_source": "held out from data"}


def _check_labels(model: onnx.ModelProto, train: dict, val: dict) -> str:
    """"accuracy" when both data sets have labels that fit the model's first output, else "cosine";
    labels that cannot fit it are one InputError."""
    from onnxcomp.measure.compare import outputs_of

    has = [LABELS in d for d in (train, val)]
    if not any(has):
        return "cosine"
    if not all(has):
        raise InputError(f"{'data' if has[0] else 'val'} has labels but {'val' if has[0] else 'data'} has none: "
                         "give labels with both, or with neither (label-free)")
    first = next(iter(outputs_of(model, take(train, 0, 2)).values()))
    if first.ndim != 2 or first.shape[1] < 2:
        raise InputError(f"labels given, but the model's first output has shape {list(first.shape)}, not "
                         "[samples, classes]; drop the labels to compress label-free")
    classes = first.shape[1]
    for where, d in (("data", train), ("val", val)):
        labels = d[LABELS]
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise InputError(f"{where}: 'labels' must be a 1-D array of integer class indices")
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise InputError(f"{where}: 'labels' range over [{labels.min()}, {labels.max()}] but the model has "
                             f"{classes} classes")
    return "accuracy"


class _Steps:
    """The stages themselves, on one model each: passes through optimize() (verified as it verifies),
    distillation through onnxcomp.distill."""

    def __init__(self, original, train, val, target, quantize, sparsify, epochs, threads, seed, progress, clock):
        from onnxcomp.pipeline.budget import drop_measure

        self.original, self.train, self.val = original, train, val
        self.target, self.quantize, self.sparsify = target, quantize, sparsify
        self.epochs, self.threads, self.seed, self.progress = epochs, threads, seed, progress
        self.calib = take(train, 0, CALIB)
        self.drop_of = drop_measure(original, val)
        self.quick_drop_of = drop_measure(original, take(val, 0, SEARCH_VAL))
        self.teacher = original
        self.size = len(original.SerializeToString())
        self.clock = clock
        self.float_convs: tuple[str, ...] = ()  # kept in float when quantizing: faster so on this host
        self.precision: dict = {}  # what choose_float_convs measured, for the report's host

    def passes(self, model, pipeline: str, data=None, check: bool = True) -> onnx.ModelProto:
        from onnxcomp.optimize import optimize

        quiet = lambda message: logger.debug(message)
        result = optimize(model, None, pipeline, data=data, val_data=take(self.val, 0, 256) if check else None,
                          check_output=check, progress=quiet, seed=self.seed)
        return result.model

    def cleanup(self) -> onnx.ModelProto:
        return self.passes(self.original, "cleanup")

    def quantizer(self, float_convs=None):
        """insert-qdq for the target, with the convolutions chosen to stay in float left out."""
        import glob

        from onnxcomp.passes.qdq.insert_qdq import InsertQdqPass

        names = self.float_convs if float_convs is None else float_convs
        return InsertQdqPass(target=self.target, exclude=tuple(glob.escape(n) for n in names))

    def deployed(self, model, calib, float_convs=None) -> onnx.ModelProto:
        """`model` (BatchNorm kept) in the form it ships in: folded, sparsified, quantized."""
        from onnxcomp.pipeline.text import parse_pipeline

        tail = parse_pipeline("fold-bn" + (f",sparsify-initializers{{sparsity={self.sparsify}}}" if self.sparsify else ""))
        if self.quantize == "int8":
            tail.append(self.quantizer(float_convs))
        return self.passes(model, tail, data=calib, check=False)

    def choose_float_convs(self, model, calib, batch: int) -> dict:
        """Keep thin-input convolutions (under MIN_INT8_CHANNELS input channels, a stem on images) in
        float when that is faster here: measured, both forms interleaved. ORT's INT8 convolution kernels
        work on channel groups of 4 and more; on one input channel the digits CNN's stem ran 6x slower
        in INT8 than in float on an AVX-512 VNNI host."""
        from onnxcomp.measure.latency import batch_feeds, interleaved_ms

        weights = {t.name: t.dims for t in model.graph.initializer}
        thin = tuple(n.name for n in model.graph.node if n.op_type == "Conv" and n.name and len(n.input) > 1
                     and len(weights.get(n.input[1], ())) > 1 and weights[n.input[1]][1] < MIN_INT8_CHANNELS)
        if self.quantize != "int8" or not thin:
            return {}
        forms = [self.deployed(model, calib, ()), self.deployed(model, calib, thin)]
        feeds = batch_feeds(self.original, self.val, batch)
        int8_ms, float_ms = interleaved_ms(forms, [feeds, feeds], self.threads, budget_s=1.5, statistic="min")
        if float_ms < 0.97 * int8_ms:
            self.float_convs = thin
        return {"float_convs": list(self.float_convs), "float_probe_ms": {"int8": int8_ms, "float": float_ms}}

    def candidates(self, cleaned, ratios, rankings, block: int, goal: dict) -> list[Candidate]:
        """Every distinct pruning on the grid, its deployed form measured (latency, size, drop)."""
        from onnxcomp.measure.counts import model_counts
        from onnxcomp.optimize import optimize
        from onnxcomp.passes.prune.remove_channels import RemoveChannelsPass

        found: dict[tuple, Candidate] = {}
        full = None
        for dropped, base in self.depths(cleaned, goal):
            prunable = True
            for ratio in bar(ratios, "compress: candidates", total=len(ratios)):
                for ranking in (rankings if ratio > 0 else ("uniform",)) if prunable else ():
                    if ratio == 0:
                        pruned, widths = base, None
                    else:
                        step = RemoveChannelsPass(ratio=ratio, round_to=block, global_ranking=ranking == "global")
                        try:
                            done = optimize(base, None, [step], check_output=False, progress=lambda m: logger.debug(m))
                        except InputError as exc:  # nothing to prune: a goal can still be met by quantizing
                            if goal["kind"] == "prune" and not dropped:
                                raise
                            logger.info("no pruning candidates: %s", exc)
                            prunable = False
                            break
                        pruned = done.model
                        groups = done.records[-1].report.details.get("groups", [])
                        widths = tuple(row["after"] for row in groups)
                        if not dropped:
                            full = full or tuple(row["channels"] for row in groups)
                        if widths == tuple(row["channels"] for row in groups):
                            continue  # rounding kept every channel: the candidate without channel pruning
                    key = (dropped, widths if widths is not None else "unpruned")
                    if key not in found:
                        found[key] = Candidate(ratio, ranking, widths or (), model_counts(pruned)["params"],
                                               dropped=dropped, pruned=pruned)
        cands = list(found.values())
        unpruned = next(c for c in cands if not c.pruning)
        if full is not None:
            unpruned.widths = full
        calib = take(self.train, 0, SEARCH_CALIB)
        if goal["kind"] == "latency":
            self.precision = self.clock.run("precision", lambda: self.choose_float_convs(cleaned, calib, goal["batch"]))
        forms = [self.deployed(c.pruned, calib) for c in bar(cands, "compress: deployed forms", total=len(cands))]
        for c, form in zip(cands, forms):
            c.size = len(form.SerializeToString()) / self.size
            c.drop_before = float(self.quick_drop_of(form).drop)
        if goal["kind"] == "latency":
            from onnxcomp.measure.latency import batch_feeds, interleaved_ms

            feeds = batch_feeds(self.original, self.val, goal["batch"])

            def ratio(form, **timing) -> float:
                original_ms, form_ms = interleaved_ms([self.original, form], [feeds, feeds], self.threads,
                                                      statistic="min", **timing)
                return form_ms / original_ms

            # Each candidate in rounds with the input alone, as the output is measured at the end (and by
            # benchmarks/bench_compress.py): timed among all the candidates, one measured 0.194x that
            # measured 0.159x as the output (caches shared by 19 models, not 2).
            for c, form in zip(cands, forms):
                c.latency = ratio(form, min_rounds=5, budget_s=0.4)
            # Those near the margin decide which is trained first: timed again as the output will be
            # (a 0.4 s timing put one at 0.160x that measured 0.164-0.181x as the output).
            edge = LATENCY_MARGIN * goal["value"]
            for c, form in zip(cands, forms):
                if abs(c.latency - edge) <= NEAR_MARGIN * edge:
                    c.latency = ratio(form)
        for c in sorted(cands, key=lambda c: -c.params):
            logger.info("candidate %s: %s params, size %.3fx%s, drop before recovery %.4f", describe(c), c.params, c.size,
                        "" if c.latency is None else f", latency {c.latency:.3f}x", c.drop_before)
        return cands

    def depths(self, cleaned, goal: dict) -> list[tuple[tuple, onnx.ModelProto]]:
        """(dropped branches, model) to prune the channels of: the model whole, and for a latency or size
        goal also without its droppable residual branches (each alone when there are a few, and all)."""
        from onnxcomp.graph.residual import drop_branches, residual_branches

        bases = [((), cleaned)]
        if goal["kind"] not in ("latency", "size"):
            return bases
        adds = [b.add for b in residual_branches(cleaned)]
        sets = ([(a,) for a in adds] if len(adds) <= MAX_SINGLE_DROPS else []) + ([tuple(adds)] if len(adds) > 1 else [])
        for dropped in sets:
            bases.append((dropped, drop_branches(cleaned, list(dropped))))
        if adds:
            logger.info("residual branches that can be dropped whole: %s", ", ".join(adds))
        return bases

    def recover(self, c: Candidate, max_drop) -> onnx.ModelProto:
        """Distill (when pruned), fold, sparsify, quantize, and fine-tune the QDQ graph when over max_drop."""
        from onnxcomp import distill
        from onnxcomp.graph.residual import shared_joins

        options = {"epochs": self.epochs, "lr": RECOVERY_LR, "temperature": RECOVERY_TEMPERATURE,
                   "alpha": RECOVERY_ALPHA, "threads": self.threads, "seed": self.seed}
        student = c.pruned
        if c.pruning:
            # The teacher's features where the student's residual joins still are, besides its outputs.
            joins = shared_joins(self.teacher, c.pruned)
            taught = dict(options, features=tuple((name, name) for name in joins))
            student = self.clock.run("distill", lambda: distill.run(self.teacher, c.pruned, self.train, taught,
                                                                      val_data=self.val, progress=self.progress).model,
                                     f"{self.epochs} epochs from the original"
                                     + (f", {len(joins)} block output(s) matched" if joins else ""))
        folded = self.clock.run("fold-bn", lambda: self.passes(student, "fold-bn"), "exact, checked")
        if self.sparsify:
            folded = self.clock.run("sparsify", lambda: self.passes(
                folded, f"sparsify-initializers{{sparsity={self.sparsify}}}"))
        final = folded
        if self.quantize == "int8":
            final = self.clock.run("insert-qdq", lambda: self.passes(folded, [self.quantizer()], data=self.calib),
                                   f"target {self.target}" + (f", {len(self.float_convs)} conv(s) kept in float"
                                                              if self.float_convs else ""))
        c.drop_recovered = c.drop = float(self.drop_of(final).drop)
        c.trained = True
        # Quantization-aware fine-tuning wins back what quantizing lost; when it lost nothing (the float
        # student misses max_drop by as much), its epochs are better spent on the next candidate.
        if (max_drop is not None and c.drop > max_drop and self.quantize == "int8"
                and not self.lost_nothing(folded, c.drop)):
            qat_epochs = max(1, self.epochs // 3)
            # BatchNorm is folded by now: frozen, so the trainer adds none back (renorm) on the fixed grid.
            qat = dict(options, epochs=qat_epochs, lr=QAT_LR, bn="frozen")
            tuned = self.clock.run("qat", lambda: distill.run(self.teacher, final, self.train, qat,
                                                              val_data=self.val, progress=self.progress).model,
                                   f"{qat_epochs} epochs on the QDQ graph")
            drop = float(self.drop_of(tuned).drop)
            c.qat = True
            if drop < c.drop:
                final, c.drop = tuned, drop
        logger.info("%s: drop %.4f after recovery%s", describe(c), c.drop_recovered,
                    f", {c.drop:.4f} after quantization-aware fine-tuning" if c.qat else "")
        return final

    def lost_nothing(self, folded, drop: float) -> bool:
        """Whether the float model `folded` drops as much as its quantized form (`drop`) on val."""
        float_drop = float(self.drop_of(folded).drop)
        nothing_lost = float_drop >= drop
        if nothing_lost:
            logger.info("quantization lost nothing here (float drop %.4f): no quantization-aware fine-tuning",
                        float_drop)
        return nothing_lost

    def figures(self, original, final, batch: int, metric: str) -> dict:
        """The table: file size, parameters, MACs, latency at batch 1 and `batch`, accuracy or cosine."""
        from onnxcomp.measure.compare import cosine, outputs_of, top1_accuracy
        from onnxcomp.measure.counts import estimate_macs, model_counts
        from onnxcomp.measure.latency import batch_feeds, interleaved_ms

        def row(a, b):
            return {"original": a, "output": b, "ratio": (b / a) if a else None}

        rows = {"file_size": row(self.size, len(final.SerializeToString())),
                "params": row(model_counts(original)["params"], model_counts(final)["params"]),
                "macs": row(estimate_macs(original)["macs"], estimate_macs(final)["macs"])}
        for key, n in (("latency_b1_ms", 1), ("latency_batch_ms", batch)):
            feeds = batch_feeds(original, self.val, n)
            rows[key] = row(*interleaved_ms([original, final], [feeds, feeds], self.threads, statistic="min"))
        ref, out = outputs_of(original, self.val), outputs_of(final, self.val)
        first = next(iter(ref))
        if metric == "accuracy":
            rows["quality"] = row(top1_accuracy(ref[first], self.val[LABELS]), top1_accuracy(out[first], self.val[LABELS]))
        else:
            rows["quality"] = row(1.0, float(np.mean([cosine(ref[k], out[k]) for k in ref if k in out])))
        return rows


def _metric_of(c: Candidate, goal: dict) -> float | None:
    return c.latency if goal["kind"] == "latency" else c.size if goal["kind"] == "size" else None


def _meeting(candidates: list[Candidate], goal: dict) -> list[Candidate]:
    """The candidates that meet a latency or size goal: for latency those under LATENCY_MARGIN of it
    first, then the rest; each group least pruned first (most parameters kept, then the smaller drop
    before recovery)."""
    meeting = [c for c in candidates if _metric_of(c, goal) <= goal["value"]]
    margin = LATENCY_MARGIN if goal["kind"] == "latency" else 1.0  # bytes are exact, latencies measured
    return sorted(meeting, key=lambda c: (_metric_of(c, goal) > margin * goal["value"], -c.params, c.drop_before))


def _choose(candidates: list[Candidate], goal: dict) -> tuple[Candidate, bool]:
    """(candidate to train first, whether it meets the goal): the first of _meeting (the least-pruned
    one under the latency margin, else under the goal), else the one closest to the goal."""
    if goal["kind"] == "prune":
        pruned = [c for c in candidates if c.pruning]
        return (pruned[0] if pruned else candidates[0]), True
    if goal["kind"] == "none":
        return candidates[0], True
    meeting = _meeting(candidates, goal)
    if meeting:
        return meeting[0], True
    return min(candidates, key=lambda c: (_metric_of(c, goal), -c.params)), False


def _train_and_back_off(steps: _Steps, candidates, chosen: Candidate, goal: dict,
                        result: CompressResult) -> onnx.ModelProto:
    """Train `chosen`; when it misses max_drop, try one more that meets the goal, then step back to
    less compressed candidates (on the goal's axis, nearest first; `backoff` trials in all), then
    no pruning. Marks the one kept; ToleranceError when none fits."""
    max_drop = goal["max_drop"]
    fits = lambda c: max_drop is None or c.drop <= max_drop
    models: dict[int, onnx.ModelProto] = {}

    def trial(c: Candidate) -> bool:
        models[id(c)] = steps.recover(c, max_drop)
        return fits(c)

    left = goal["backoff"]
    # Recovery of a few samples is noise at small budgets: one more candidate that meets the goal gets a
    # chance (the next by parameters kept) before the search backs off from the goal.
    second = next((c for c in _meeting(candidates, goal) if c is not chosen and c.params <= chosen.params
                   and not c.trained), None) if goal["kind"] in ("latency", "size") and left else None
    if trial(chosen):
        best = chosen
    elif goal["kind"] == "prune" and chosen.pruning:
        best = None  # the ratio is fixed: no search
    elif second is not None and _metric_of(chosen, goal) <= goal["value"] and (
            logger.info("trying %s, which meets the goal too", describe(second)) or trial(second)):
        best = second
    else:
        left -= second is not None and second.trained
        # Less compression on the goal's axis (latency or size; parameters for a fixed ratio), from no
        # pruning (index 0) to the candidate that missed (last).
        axis = (lambda c: _metric_of(c, goal)) if goal["kind"] in ("latency", "size") else (lambda c: c.params)
        ladder = sorted((c for c in candidates if axis(c) > axis(chosen) or not c.pruning),
                        key=lambda c: (c.pruning, -axis(c)))
        ladder.append(chosen)
        best = None
        for c in [c for c in reversed(ladder[1:-1]) if not c.trained][:left]:  # nearest the goal first
            logger.info("backing off: trying %s", describe(c))
            if trial(c):
                best = c
                break
        if best is None and ladder[0] is not chosen and ladder[0].drop is None:
            logger.info("backing off to no pruning")
            if trial(ladder[0]):
                best = ladder[0]
    if best is None:
        tried = [c for c in candidates if c.trained]
        closest = min(tried, key=lambda c: c.drop)
        error = ToleranceError(
            f"compress: max_drop {max_drop} cannot be met: the closest, {describe(closest)}, "
            f"drops {closest.drop:.4f} after recovery"
            + (" and quantization-aware fine-tuning" if closest.qat else "")
            + ("" if goal["kind"] == "prune" else f"; {len(tried)} candidate(s) trained")
            + ("; try --quantize none, more --epochs or a larger --max-drop" if steps.quantize == "int8"
               else "; try more --epochs or a larger --max-drop"))
        error.result = result
        raise error
    best.chosen = True
    return models[id(best)]


def _outcome(chosen: Candidate, reached: bool, goal: dict, candidates: list[Candidate]) -> tuple[str, bool]:
    """One line of what was reached (and why a goal was missed), and whether every goal was met."""
    kind, value = goal["kind"], goal["value"]
    what = describe(chosen)
    figure = _metric_of(chosen, goal)
    drop = f"drop {chosen.drop:.4f}" + (f" (max {goal['max_drop']})" if goal["max_drop"] is not None else "")
    if kind in ("latency", "size"):
        met = figure <= value
        line = f"{kind} {figure:.3f}x of the input (goal {value}x) at {what}, {drop}"
        if not met:
            best = min(_metric_of(c, goal) for c in candidates)
            why = ("max_drop holds only with less pruning" if reached else
                   f"no candidate reaches it on this host: the {'fastest' if kind == 'latency' else 'smallest'} "
                   f"measured is {best:.3f}x" + ("" if chosen.drop is not None and best == figure
                                                 else ", and max_drop holds only with less pruning"))
            line = f"{kind} goal not met: {line}; {why}"
        return line, met
    return f"{what}, {drop}", True


def describe(c: Candidate) -> str:
    """A candidate's pruning in a few words."""
    if not c.pruning:
        return "no pruning"
    parts = [f"residual branch(es) {', '.join(c.dropped)} dropped"] if c.dropped else []
    if c.ratio > 0:
        parts.append(f"ratio {c.ratio:.3g} ({c.ranking}, widths {list(c.widths)})")
    return " and ".join(parts)


def _check_target(model: onnx.ModelProto, target: str) -> dict:
    """`onnxcomp check --target` on the result: VerificationError on errors, else the counts."""
    from onnxcomp.checks import run_checks

    findings = run_checks(model, target)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        raise VerificationError(f"compress: the result is not compatible with {target}: {errors[0].line()}"
                                + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""))
    return {"target": target, "errors": 0, "warnings": sum(f.severity == "warning" for f in findings)}


def cpu_name() -> str:
    """The CPU's model name, for reports that name where they measured."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def save_result(result: CompressResult, path: str | os.PathLike, forbid=None) -> None:
    """Save the compressed model atomically (never over `forbid`, the input) and record where."""
    from onnxcomp.graph.save import save

    save(result.model, path, forbid=forbid)
    result.output = str(path)


FIGURES = [("file_size", "file size"), ("params", "parameters"), ("macs", "MACs"),
           ("latency_b1_ms", "latency b1 (ms)"), ("latency_batch_ms", "latency b{batch} (ms)")]


def figure_rows(report: dict) -> list[list[str]]:
    """The final table's rows from a report dict: figure, original, output, ratio."""
    from onnxcomp.report import human_bytes, human_count

    figures, batch = report["figures"], report["goal"]["batch"]
    shown = {"file_size": human_bytes, "params": human_count, "macs": human_count}
    rows = []
    for key, label in FIGURES + [("quality", report["metric"])]:
        row = figures.get(key)
        if row is None:
            continue
        fmt = shown.get(key, (lambda v: f"{v:.3f}") if key.startswith("latency") else (lambda v: f"{v:.4f}"))
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}x"
        rows.append([label.format(batch=batch), fmt(row["original"]), fmt(row["output"]), ratio])
    return rows
