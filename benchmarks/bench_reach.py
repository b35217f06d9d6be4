"""Reach of the structural passes on the third-party corpus: remove-channels groups found / pruned / left whole
(by reason) with params, MACs and ONNX Runtime latency at ratio 0.5; factorize-lowrank on the transformers,
plain SVD against activation-whitened SVD.

    python -m benchmarks reach [-- --only a,b --ratio 0.5 --rounds 15 --no-latency --no-lowrank --no-distill]

Every model goes through cleanup,fold-bn first, as `onnxcomp optimize --prune-channels` does (opset < 10
models are converted to 13). The `light_*` model-zoo structures carry dummy weights (one ConstantOfShape
fill per shape) that cleanup merges into shared constants; they get one copy per reader again, as real
weights would be, before the groups are counted. Latency: median ms per call of the cleaned and of the
pruned model, timed round by round in this process (the ratio is what counts on shared cores), batch 8
where the model's batch is dynamic (recipe samples stacked), batch 1 otherwise. Low-rank: cosine of the
outputs (mean over samples and outputs; the real tokens' positions only where the test data has an
attention_mask) on recipe feeds (seed 1) against the model before; the whitened
factors calibrate on other recipe feeds (seed 0); the real MiniLM (build/models/minilm.onnx, made with
the bench extra), when built, on MINILM_CALIB of its calibration sentences, measured on all 128 of its test
sentences (another pool of sentences, never tuned on); its "wide" rows calibrate the whitened factors on
minilm_calib_wide.npz instead (504 distinct hand-written sentences, none from the test pool, and each paired
with the next: 1008 inputs of the test pool's kind and lengths).

Distillation (the real MiniLM, skipped with --no-distill): the students of `--lowrank 0.75` (whitened, on the
wide calibration set when built, else the MINILM_CALIB calibration sentences of the low-rank rows) and of heads +
FFN pruned at the ratio (remove-channels on the same inputs, channels ranked by their output energy and the
readers refitted: importance=activation,refit=true) fine-tuned label-free from the original (`onnxcomp.distill`:
the hidden states and the outputs of encoder layers 0-4 matched over the real tokens, one torch thread), on the
wide set (else the 256 calibration sentences) plus --distill-docs
sentences of the standard library's docstrings, with --distill-augment random-token copies of them and the
embedding tables frozen (--distill-freeze); mean sentence-embedding cosine against the original over the 128
test sentences (never trained on) before and after, with the wall time of the distillation (teacher targets and
check included).

Groups are counted twice, never one without the other: all groups, and the groups prunable by definition
('open'): not one channel (nothing to remove), not the interface (every refusal is a graph input or output) and
not a grid (positions a later Conv or pooling window slides along: no channels at all). If/Loop/Scan bodies
are walked for their own groups; those that cannot be sliced for themselves alone count as left whole.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from benchmarks._measure import interleaved_seconds

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "models" / "corpus" / "manifest.json"
HELD_OUT = ("nudenet", "rapidocr", "ddddocr", "silero")  # never used here
LOWRANK_MODELS = ("khmersm", "trueocr_order", "minilm_l6_int8", "romanizer_encoder")
# Calibration sentences of the real MiniLM's low-rank rows (the first ones: its pool's single sentences); 128 and
# 256 were measured and gave the 128 test sentences no more (docs/lowrank.md), for a longer run. The "wide" rows
# calibrate on minilm_calib_wide.npz instead: 504 distinct sentences and their pairs (whitened only).
MINILM_CALIB = 64


# The distillation recipe of the MiniLM rows (label-free: the output and the layer outputs are the targets).
DISTILL = {"epochs": 3, "lr": 2e-4, "batch_size": 8, "weight_decay": 0.0, "mask": "attention_mask",
           "augment": 3, "augment_fraction": 0.4, "freeze": "embeddings", "output_loss": "mse", "pooled_weight": 0.0}
DISTILL_DOCS = 256  # standard-library docstring sentences added to the training sentences (wide set, else calibration)
DISTILL_LAYERS = (0, 1, 2, 3, 4)  # encoder layers whose output is matched besides the last hidden state


def _args(argv):
    p = argparse.ArgumentParser(prog="bench_reach", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=REPO / "build" / "corpus")
    p.add_argument("--only", default="", help="comma-separated corpus names")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=11, help="interleaved latency rounds")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--no-lowrank", action="store_true")
    p.add_argument("--no-prune", action="store_true")
    p.add_argument("--kept", default="0.9,0.75,0.5")
    p.add_argument("--no-distill", action="store_true", help="skip the MiniLM distillation rows")
    p.add_argument("--distill-epochs", type=int, default=DISTILL["epochs"])
    p.add_argument("--distill-lr", type=float, default=DISTILL["lr"])
    p.add_argument("--distill-augment", type=int, default=DISTILL["augment"],
                   help="random-token copies of the training sentences")
    p.add_argument("--distill-freeze", default=DISTILL["freeze"], choices=("none", "embeddings", "unchanged"))
    p.add_argument("--distill-output-loss", default=DISTILL["output_loss"], choices=("mse", "cosine"))
    p.add_argument("--distill-pooled-weight", type=float, default=DISTILL["pooled_weight"],
                   help="weight of 1 - cosine of the outputs pooled over the real tokens")
    p.add_argument("--distill-docs", type=int, default=DISTILL_DOCS,
                   help="standard-library docstring sentences added to the calibration set")
    p.add_argument("--json", type=Path, help="also write the rows here")
    return p.parse_args(argv)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


# ---------------------------------------------------------------- preparing a model

def _prepared(path: Path, name: str):
    """The corpus model after cleanup,fold-bn (as a gs graph and as a ModelProto)."""
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.graph.load import load_model
    from onnxcomp.pipeline.manager import PassManager
    from onnxcomp.pipeline.pass_base import PassContext
    from onnxcomp.pipeline.text import parse_pipeline

    model = load_model(path)
    if model.opset_import and max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 10:
        model = onnx.version_converter.convert_version(model, 13)
    graph = to_graph(model)
    PassManager(parse_pipeline("cleanup,fold-bn"), verify="structure", ctx=PassContext()).run(graph)
    if name.startswith("light_"):
        _unshare(graph)
    return to_model(graph)


MAX_FILL = 2 ** 26  # elements of a ConstantOfShape dummy weight made a real constant here (268 MB float32)


def _unshare(graph) -> None:
    """One copy of a shared float constant (rank >= 1) per reader: dummy weights merged by cleanup.
    Dummy weights cleanup leaves as ConstantOfShape (too large to fold) become constants first,
    up to MAX_FILL elements, as real weights would be."""
    import onnx_graphsurgeon as gs

    for node in list(graph.nodes):
        shape = node.inputs[0] if node.op == "ConstantOfShape" and node.inputs else None
        if isinstance(shape, gs.Constant) and int(np.prod(shape.values)) <= MAX_FILL:
            fill = node.attrs.get("value")
            value = np.asarray(fill.values).reshape(-1)[0] if isinstance(fill, gs.Constant) else np.float32(0)
            out = node.outputs[0]
            const = gs.Constant(out.name + "__filled", np.full([int(d) for d in shape.values], value))
            for reader in list(out.outputs):
                for i, t in enumerate(list(reader.inputs)):
                    if t is out:
                        reader.inputs[i] = const
            node.outputs.clear()
    graph.cleanup()
    readers = collections.defaultdict(list)
    for node in graph.nodes:
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant) and len(t.shape) >= 1 and np.asarray(t.values).dtype.kind == "f":
                readers[t.name].append((node, i))
    for name, uses in readers.items():
        for k, (node, i) in enumerate(uses[1:], start=1):
            node.inputs[i] = gs.Constant(f"{name}__copy{k}", np.array(node.inputs[i].values))


def _feeds(entry: dict, batch: int, seed: int = 0) -> tuple[dict, int]:
    """Recipe feeds with `batch` samples stacked on axis 0 where that axis is dynamic, else one sample."""
    sys.path.insert(0, str(REPO))
    from models.corpus.recipes import make_feeds

    declared = entry.get("declared_input_shapes", {})
    dynamic = not entry.get("batch_fixed") and all(
        isinstance((declared.get(s["name"]) or [1])[0], str) for s in entry["inputs"])
    n = batch if dynamic else 1
    samples = make_feeds(entry, n, seed)
    return {k: np.concatenate([s[k] for s in samples], axis=0) for k in samples[0]}, n


def _reason(text: str) -> str:
    """A refusal without node names and numbers, so equal causes count together."""
    text = re.sub(r"^[^:]*: ", "", text)
    return re.sub(r"[\w/.:\-]*\d[\w/.:\-]*", "#", text)[:70]


# ---------------------------------------------------------------- remove-channels

def prune_row(entry: dict, model: onnx.ModelProto, args) -> dict:
    from onnxcomp.errors import InputError
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.passes.prune.groups import find_channel_groups
    from onnxcomp.passes.prune.probe import search_shapes
    from onnxcomp.pipeline.manager import PassManager
    from onnxcomp.pipeline.pass_base import PassContext
    from onnxcomp.pipeline.text import parse_pipeline

    start = time.perf_counter()
    groups = find_channel_groups(to_graph(_copy(model)), search_shapes(model))
    row = {"model": entry["name"], "groups": len(groups), "pruned": sum(g.prunable for g in groups),
           "single": sum(g.channels == 1 for g in groups), "single_pruned": sum(g.channels == 1 and g.prunable for g in groups),
           "lossy": sum(g.prunable and bool(g.lossy) for g in groups),
           "interface": sum(g.channels > 1 and g.interface_only for g in groups),
           "grid": sum(g.channels > 1 and g.on_grid for g in groups),
           "reasons": dict(collections.Counter(_reason(g.reason) for g in groups if g.reason).most_common())}
    graph = to_graph(_copy(model))
    try:
        records = PassManager(parse_pipeline(f"remove-channels{{ratio={args.ratio}}}"), verify="structure",
                              ctx=PassContext()).run(graph)
    except InputError as exc:
        row["note"] = str(exc)[:80]
        row["seconds"] = round(time.perf_counter() - start, 1)
        return row
    report = records[0].report
    pruned = to_model(graph)
    row.update(params=(report.details["params"]["before"], report.details["params"]["after"]),
               macs=(report.stats["macs_before"], report.stats["macs_after"]),
               groups_cut=report.stats["groups_pruned"])
    if not args.no_latency:
        row.update(_latency(entry, model, pruned, args))
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _latency(entry, base, candidate, args) -> dict:
    from onnxcomp.measure.compare import per_sample_cosine
    from onnxcomp.measure.runtime import session

    feeds, batch = _feeds(entry, args.batch)
    try:
        sessions = [session(m, threads=args.threads) for m in (base, candidate)]
        outs = [s.run(None, feeds) for s in sessions]
    except Exception as exc:  # noqa: BLE001 - a batch the model does not take after all: fall back to one sample
        if batch == 1:
            return {"latency_note": str(exc).splitlines()[0][:80]}
        feeds, batch = _feeds({**entry, "batch_fixed": True}, 1)
        sessions = [session(m, threads=args.threads) for m in (base, candidate)]
        outs = [s.run(None, feeds) for s in sessions]
    cos = float(np.mean([per_sample_cosine(a, b).mean() for a, b in zip(*outs)
                         if np.asarray(a).dtype.kind == "f" and np.shape(a) == np.shape(b)] or [np.nan]))
    base_s, cand_s = interleaved_seconds(sessions, [feeds, feeds], args.rounds)
    return {"batch": batch, "ms": (round(base_s * 1e3, 3), round(cand_s * 1e3, 3)),
            "latency_ratio": round(cand_s / base_s, 3), "cosine_untrained": round(cos, 4)}


def _prunable_by_definition(r: dict) -> tuple[int, int]:
    """(groups, pruned) without the groups nothing could prune: one channel (a mono filter, a one-map head:
    nothing to remove, whatever the handlers), the model's interface (channels that are a graph output
    or input, and no other refusal: removing them changes what the model takes or gives) or no channels at
    all (a grid a later window slides along: a CQT's frequency bins read by a 2-D Conv)."""
    return r["groups"] - r["single"] - r.get("interface", 0) - r.get("grid", 0), r["pruned"] - r["single_pruned"]


def _copy(model):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def print_prune(rows: list[dict], before: dict | None) -> None:
    head = (f"{'model':24s} {'groups':>6s} {'pruned':>6s} {'share':>6s} {'open':>9s} {'params':>7s} {'MACs':>7s} {'lat':>6s} "
            f"{'b':>2s} {'cos':>5s}  left whole (reason: count)")
    print(head)
    print("-" * len(head))
    for r in rows:
        share = f"{r['pruned'] / r['groups']:.0%}" if r["groups"] else "-"
        n, p = _prunable_by_definition(r)
        open_share = f"{p}/{n}" if n else "-"
        params = f"{r['params'][1] / r['params'][0]:.2f}" if "params" in r else "-"
        macs = f"{r['macs'][1] / r['macs'][0]:.2f}" if "macs" in r and r["macs"][0] else "-"
        lat = f"{r['latency_ratio']:.2f}" if "latency_ratio" in r else "-"
        cos = f"{r['cosine_untrained']:.2f}" if "cosine_untrained" in r else "-"  # outputs vs unpruned, untrained
        reasons = "; ".join(f"{k}: {v}" for k, v in list(r["reasons"].items())[:2])
        print(f"{r['model']:24s} {r['groups']:6d} {r['pruned']:6d} {share:>6s} {open_share:>9s} {params:>7s} {macs:>7s} {lat:>6s} "
              f"{r.get('batch', ''):>2} {cos:>5s}  {reasons}")
    found, pruned = sum(r["groups"] for r in rows), sum(r["pruned"] for r in rows)
    with_groups = [r for r in rows if r["groups"]]
    print(f"total: {pruned}/{found} groups pruned ({pruned / max(found, 1):.1%}); models with groups: "
          f"{len(with_groups)}, of them >= 90% pruned: {sum(r['pruned'] >= 0.9 * r['groups'] for r in with_groups)}")
    multi = [(r["groups"] - r["single"], r["pruned"] - r["single_pruned"]) for r in with_groups if r["groups"] > r["single"]]
    print(f"not counting single-channel groups: {sum(p for _, p in multi)}/{sum(n for n, _ in multi)} pruned; "
          f">= 90% on {sum(p >= 0.9 * n for n, p in multi)} of {len(multi)} models; "
          f"lossy groups among the pruned: {sum(r['lossy'] for r in rows)}")
    opened = [_prunable_by_definition(r) for r in with_groups if _prunable_by_definition(r)[0]]
    print(f"prunable by definition ('open': not single-channel, the interface or a grid): {sum(p for _, p in opened)}/"
          f"{sum(n for n, _ in opened)} pruned; >= 90% on {sum(p >= 0.9 * n for n, p in opened)} of {len(opened)} "
          f"models; left out: {sum(r['single'] for r in rows)} single-channel, {sum(r.get('interface', 0) for r in rows)}"
          f" interface, {sum(r.get('grid', 0) for r in rows)} not-channel (a grid a window slides along) groups")
    lats = [r["latency_ratio"] for r in rows if "latency_ratio" in r]
    if lats:
        print(f"latency ratio pruned/unpruned: median {np.median(lats):.2f}, faster on {sum(v < 1 for v in lats)}"
              f"/{len(lats)} models")
    totals = collections.Counter()
    for r in rows:
        totals.update(r["reasons"])
    print("left whole, all models: " + "; ".join(f"{k}: {v}" for k, v in totals.most_common(12)))


# ---------------------------------------------------------------- factorize-lowrank

def lowrank_rows(entry: dict, model: onnx.ModelProto, kept: list[float], args, calib=None, test=None,
                 methods=("svd", "whitened")) -> list[dict]:
    from onnxcomp.errors import InputError
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.measure.compare import per_sample_cosine
    from onnxcomp.measure.padding import zero_padding
    from onnxcomp.measure.runtime import session
    from onnxcomp.pipeline.manager import PassManager
    from onnxcomp.pipeline.pass_base import PassContext
    from onnxcomp.pipeline.text import parse_pipeline

    if calib is None:
        calib = _stacked(entry, 32, seed=0)
        test = _stacked(entry, 16, seed=1)
    base_sess = session(model, threads=args.threads)
    want = _run_all(base_sess, test)
    rows = []
    for fraction in kept:
        for method in methods:
            graph = to_graph(_copy(model))
            try:
                records = PassManager(parse_pipeline(f"factorize-lowrank{{kept={fraction},method={method}}}"),
                                      verify="structure",  # plain SVD sees no data at all
                                      ctx=PassContext(data=calib if method == "whitened" else None)).run(graph)
            except InputError as exc:
                return [{"model": entry["name"], "note": str(exc)[:90]}]
            report = records[0].report
            out = to_model(graph)
            sess = session(out, threads=args.threads)
            got = _run_all(sess, test)
            real = (lambda v: zero_padding(v, test, "attention_mask")) if isinstance(test, dict) else (lambda v: v)
            cos = float(np.mean([per_sample_cosine(real(a), real(b)).mean() for a, b in zip(want, got)
                                 if a.dtype.kind == "f"]))
            row = {"model": entry["name"], "kept": fraction, "method": method, "cosine": round(cos, 4),
                   "factorized": report.stats["factorized"], "layers": report.stats["layers"],
                   "params": (report.stats["params_before"], report.stats["params_after"])}
            if isinstance(test, dict) and "attention_mask" in test and want[0].ndim == 3:
                row["embedding_cosine"] = round(_pooled_cosine(want[0], got[0], test["attention_mask"]), 4)
            if method == "whitened" and not args.no_latency:
                feeds, batch = _feeds(entry, args.batch) if "inputs" in entry else (_first(test, args.batch), 0)
                try:
                    base_sess.run(None, feeds)
                except Exception:  # noqa: BLE001 - a dynamic batch the model does not really take
                    feeds, batch = _feeds({**entry, "batch_fixed": True}, 1)
                base_s, cand_s = interleaved_seconds([base_sess, sess], [feeds, feeds], args.rounds)
                row.update(latency_ratio=round(cand_s / base_s, 3), batch=batch or args.batch)
            rows.append(row)
    return rows


def _stacked(entry: dict, n: int, seed: int) -> list[dict]:
    sys.path.insert(0, str(REPO))
    from models.corpus.recipes import make_feeds

    return make_feeds(entry, n, seed)


def _run_all(sess, data) -> list[np.ndarray]:
    """Outputs over every call, concatenated per output."""
    calls = data if isinstance(data, list) else [{k: v[i:i + 8] for k, v in data.items()}
                                                 for i in range(0, len(next(iter(data.values()))), 8)]
    outs = [sess.run(None, feeds) for feeds in calls]
    return [np.concatenate([np.asarray(o[i]).reshape(1, -1) if np.ndim(o[i]) == 0 else np.asarray(o[i])
                            for o in outs]) for i in range(len(outs[0]))]


def _pooled_cosine(want: np.ndarray, got: np.ndarray, mask: np.ndarray) -> float:
    """Mean cosine of the sentence embeddings (token states averaged over the mask, as sentence-transformers does)."""
    m = mask[..., None].astype(np.float64)
    a, b = (want * m).sum(1) / m.sum(1), (got * m).sum(1) / m.sum(1)
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def _first(data: dict, n: int) -> dict:
    return {k: v[:n] for k, v in data.items()}


def print_lowrank(rows: list[dict]) -> None:
    head = (f"{'model':22s} {'kept':>5s} {'factorized':>10s} {'params':>7s} {'cos svd':>8s} {'cos whitened':>12s} "
            f"{'lat (wh)':>8s} {'emb svd/wh':>13s}")
    print(head)
    print("-" * len(head))
    by = collections.defaultdict(dict)
    for r in rows:
        if "note" in r:
            print(f"{r['model']:22s} {r['note']}")
            continue
        by[(r["model"], r["kept"])][r["method"]] = r
    for (model, kept), pair in by.items():
        svd, wh = pair.get("svd", {}), pair.get("whitened", {})
        params = f"{wh['params'][1] / wh['params'][0]:.2f}" if wh else "-"
        lat = f"{wh['latency_ratio']:.2f}" if "latency_ratio" in wh else "-"
        print(f"{model:22s} {kept:5.2f} {str(wh.get('factorized', '-')) + '/' + str(wh.get('layers', '-')):>10s} "
              f"{params:>7s} {_figure(svd, 'cosine', 8)} {_figure(wh, 'cosine', 12)} {lat:>8s}"
              + (f" {_figure(svd, 'embedding_cosine', 6)}/{wh['embedding_cosine']:.4f}"
                 if "embedding_cosine" in wh else ""))


def _figure(row: dict, key: str, width: int) -> str:
    """A row's figure, or '-' where that method was not run (the wide rows have no plain SVD: it sees no data)."""
    return f"{row[key]:{width}.4f}" if key in row else f"{'-':>{width}s}"


# ---------------------------------------------------------------- distillation (MiniLM)

def distill_rows(teacher: onnx.ModelProto, calib: dict, test: dict, args, wide: dict | None = None) -> list[dict]:
    """Factorized (0.75) and pruned (heads + FFN at the ratio) MiniLM, before and after a short distillation.
    With the wide calibration set the students are built on it and trained on it (it holds the calibration
    sentences' pool and 444 more); without it, on the first MINILM_CALIB and all 256 calibration inputs."""
    import onnxcomp
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.measure.runtime import session
    from onnxcomp.pipeline.manager import PassManager
    from onnxcomp.pipeline.pass_base import PassContext
    from onnxcomp.pipeline.text import parse_pipeline

    want = _run_all(session(teacher, threads=args.threads), test)[0]
    layer = "/encoder/encoder/layer.{}/output/LayerNorm/LayerNormalization_output_0"
    options = {**DISTILL, "epochs": args.distill_epochs, "lr": args.distill_lr, "threads": args.threads,
               "augment": args.distill_augment, "freeze": args.distill_freeze,
               "output_loss": args.distill_output_loss, "pooled_weight": args.distill_pooled_weight,
               "features": [(layer.format(i), layer.format(i)) for i in DISTILL_LAYERS]}
    docs = docstring_feeds(args.distill_docs)
    sentences = calib if wide is None else wide
    train = sentences if docs is None else {k: np.concatenate([sentences[k], docs[k]]) for k in sentences}
    rows = []
    factor_on = wide if wide is not None else {k: v[:MINILM_CALIB] for k, v in calib.items()}
    for label, pipeline, data in (("lowrank 0.75", "factorize-lowrank{kept=0.75,method=whitened}", factor_on),
                                  (f"heads+FFN {args.ratio}",
                                   f"remove-channels{{ratio={args.ratio},importance=activation,refit=true}}", factor_on)):
        graph = to_graph(_copy(teacher))
        PassManager(parse_pipeline(pipeline), verify="structure", ctx=PassContext(data=data)).run(graph)
        student = to_model(graph)
        before = _pooled_cosine(want, _run_all(session(student, threads=args.threads), test)[0], test["attention_mask"])
        start = time.perf_counter()
        result = onnxcomp.distill(teacher, student, train, options, progress=lambda line: None)
        seconds = time.perf_counter() - start
        after = _pooled_cosine(want, _run_all(session(result.model, threads=args.threads), test)[0],
                               test["attention_mask"])
        rows.append({"student": label, "calibration": "wide" if wide is not None else MINILM_CALIB,
                     "before": round(before, 4), "after": round(after, 4),
                     "epochs": options["epochs"], "lr": options["lr"],
                     "samples": len(train["input_ids"]) * (1 + options["augment"]), "seconds": round(seconds, 1),
                     "load": round(os.getloadavg()[0], 1)})
        print(f"  distill {label}: {before:.4f} -> {after:.4f} ({seconds:.0f} s)", file=sys.stderr, flush=True)
    return rows


def docstring_sentences(limit: int) -> list[str]:
    """Up to `limit` English sentences from the docstrings of Python's standard library (unlabelled text the
    teacher labels): 6-40 words, capitalised, ending in a full stop, nearly all letters; deduplicated, taken
    as an evenly spaced slice of all of them (modules in name order), then shuffled with a fixed seed."""
    import ast
    import sysconfig

    found, seen = [], set()
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for text in re.split(r"(?<=[.!?])\s+", " ".join((ast.get_docstring(node) or "").split())):
                letters = sum(c.isalpha() or c.isspace() for c in text)
                if (6 <= len(text.split()) <= 40 and text[0].isupper() and text.endswith(".")
                        and letters > 0.9 * len(text) and text not in seen):
                    seen.add(text)
                    found.append(text)
    picked = found[::max(1, len(found) // limit)][:limit] if limit else []
    return [picked[i] for i in np.random.default_rng(0).permutation(len(picked))]


def docstring_feeds(limit: int) -> dict | None:
    """docstring_sentences tokenized as the MiniLM calibration set was (models/minilm.py); None without the
    tokenizer's packages."""
    sys.path.insert(0, str(REPO))
    from models import minilm

    if not limit or not minilm.available():
        return None
    return minilm.tokenize(minilm.load_tokenizer(), docstring_sentences(limit))


def print_distill(rows: list[dict]) -> None:
    head = (f"{'MiniLM student':22s} {'calib':>5s} {'emb cos before':>14s} {'after':>7s} {'samples':>7s} {'epochs':>6s} "
            f"{'lr':>7s} {'seconds':>8s} {'load':>5s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['student']:22s} {r['calibration']!s:>5s} {r['before']:14.4f} {r['after']:7.4f} {r['samples']:7d} {r['epochs']:6d} "
              f"{r['lr']:7.0e} {r['seconds']:8.1f} {r['load']:5.1f}")


# ---------------------------------------------------------------- main

def main(argv) -> int:
    args = _args(argv)
    entries = [e for e in json.loads(MANIFEST.read_text()) if not any(h in e["name"] for h in HELD_OUT)]
    only = {n for n in args.only.split(",") if n}
    if only:
        entries = [e for e in entries if e["name"] in only]
    print(f"CPU: {cpu_name()}; ORT threads {args.threads}; ratio {args.ratio}; latency batch {args.batch} "
          f"(1 where fixed); {args.rounds} interleaved rounds")
    prune, lowrank, prepared = [], [], {}
    for entry in entries:
        path = args.corpus / f"{entry['name']}.onnx"
        if not path.exists():
            print(f"{entry['name']}: not built (python -m models.corpus.fetch --out {args.corpus})", file=sys.stderr)
            continue
        try:
            model = _prepared(path, entry["name"])
        except Exception as exc:  # noqa: BLE001 - a model the core cannot take: say so, go on
            print(f"{entry['name']}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}", file=sys.stderr)
            continue
        if not args.no_prune:
            prune.append(prune_row(entry, model, args))
            print(f"  {entry['name']}: {prune[-1]['pruned']}/{prune[-1]['groups']} ({prune[-1]['seconds']} s)",
                  file=sys.stderr, flush=True)
        if not args.no_lowrank and entry["name"] in LOWRANK_MODELS:
            prepared[entry["name"]] = (entry, model)
    if prune:
        print()
        print_prune(prune, None)
    minilm = REPO / "build" / "models" / "minilm.onnx"

    @functools.cache
    def real_minilm() -> tuple:
        """The real MiniLM prepared once, with its calibration and test sentences (labels dropped)."""
        data = [{k: v for k, v in np.load(minilm.with_name(f"minilm_{part}.npz")).items() if k != "labels"}
                for part in ("calib", "test")]
        return (_prepared(minilm, "minilm"), *data)

    @functools.cache
    def wide_minilm() -> dict | None:
        """The 1008 wide calibration inputs (504 distinct sentences and their pairs), if the build made them."""
        path = minilm.with_name("minilm_calib_wide.npz")
        return dict(np.load(path)) if path.exists() else None

    if not args.no_lowrank:
        kept = [float(k) for k in args.kept.split(",")]
        for entry, model in prepared.values():
            lowrank += lowrank_rows(entry, model, kept, args)
        if minilm.exists() and (not only or "minilm" in only):
            model, calib, test = real_minilm()
            lowrank += lowrank_rows({"name": "minilm (real)"}, model, kept, args,
                                    {k: v[:MINILM_CALIB] for k, v in calib.items()}, test)
            wide = wide_minilm()
            if wide is not None:
                lowrank += lowrank_rows({"name": "minilm (real, wide)"}, model, kept, args, wide, test,
                                        methods=("whitened",))
        print()
        print_lowrank(lowrank)
    distill = []
    if not args.no_distill and minilm.exists() and (not only or "minilm" in only):
        distill = distill_rows(*real_minilm(), args, wide=wide_minilm())
        print()
        print_distill(distill)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "prune": prune, "lowrank": lowrank, "distill": distill},
                                        indent=1))
    return 0
