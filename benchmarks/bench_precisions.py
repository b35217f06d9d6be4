"""Precisions: onnxcomp's dynamic INT8, float16 and INT4 passes against the peer tool of each, in one run.

    python -m benchmarks precisions [-- --models digits,minilm --rounds 20 --json out.json]

- dynamic INT8: quantize-dynamic (by default keeping clear outliers float, found on generated inputs; also
  with every layer INT8, and with max_drop on the calibration data) vs ONNX Runtime's quantize_dynamic
  (per-channel, QInt8 weights);
- float16: convert-float16 (target ort: float16 storage, float32 compute where ORT CPU has no float16
  kernel; target tensorrt: float16 compute) vs onnxconverter-common's float16 converter (keep_io_types);
- INT4 weights, block 32: quantize-int4-weights (MatMulNBits, embedding tables included; auto = GPTQ
  where it measures less error, and rtn) vs ONNX Runtime's MatMulNBitsQuantizer (RTN, symmetric).

Models: the digits CNN (build/models, labelled: accuracy) and MiniLM: build/models/minilm.onnx with its
sentence data (minilm_calib.npz / minilm_test.npz, 64 tokens) when the bench extra built it, else the corpus's all-MiniLM-L6-v2 (build/corpus/minilm_l6_int8.onnx, INT8
weight-only storage) folded back to float32 by ONNX Runtime's basic constant folding: a float model
with MiniLM's real shapes and weights. Its data are the corpus recipe's (random token ids, 16 tokens):
cosine of the last hidden state, mean over samples. Tool time is the wall time of the call in this
process. Latency: ONNX Runtime CPU, 2 threads, no spinning, batch 1 and 8, all models of a table timed
in interleaved rounds in one process, once in each order (mean of the two medians); ratios are to the
float model of the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks._measure import interleaved_seconds

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "build" / "models"
OUT = REPO / "build" / "bench" / "precisions"


def cpu() -> str:
    name, flags = platform.processor() or "cpu", []
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        every = next(line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags"))
        flags = [f for f in every if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "f16c",
                                           "amx_bf16", "amx_int8")]
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, flags {' '.join(flags) or '-'}"


# ---------- models and data ----------

def digits():
    import onnxcomp

    src = MODELS / "digits_cnn.onnx"
    float_path = OUT / "digits_float.onnx"
    onnxcomp.optimize(str(src), str(float_path), "cleanup,fold-bn", check_output=False)
    with np.load(MODELS / "digits_calib.npz") as c, np.load(MODELS / "digits_test.npz") as t:
        calib = {"input": c["input"][:256]}
        test, labels = {"input": t["input"][:512]}, t["labels"][:512]
    return "digits CNN", float_path, calib, test, labels


def minilm():
    built = MODELS / "minilm.onnx"
    float_path = OUT / "minilm_float.onnx"
    if built.exists():
        float_path, name = built, "MiniLM (models/minilm.py)"
    else:
        name = "MiniLM-L6 (corpus int8 weights, folded to float32)"
        if not float_path.exists():
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            opts.optimized_model_filepath = str(float_path)
            ort.InferenceSession(str(REPO / "build" / "corpus" / "minilm_l6_int8.onnx"), opts,
                                 providers=["CPUExecutionProvider"])
            _clean_opsets(float_path)

    if built.exists():  # the sentences models/minilm.py tokenized (64 tokens, padded)
        with np.load(MODELS / "minilm_calib.npz") as c, np.load(MODELS / "minilm_test.npz") as t:
            return name, float_path, {k: c[k] for k in c.files}, {k: t[k] for k in t.files}, None

    def feeds(n, seed):
        r = np.random.default_rng(seed)
        return {"input_ids": r.integers(0, 30522, (n, 16)).astype(np.int64),
                "attention_mask": np.ones((n, 16), np.int64), "token_type_ids": np.zeros((n, 16), np.int64)}

    return name, float_path, feeds(64, 1), feeds(64, 2), None


def _clean_opsets(path: Path) -> None:
    """ORT's optimized-model writer declares every domain it knows; keep the ones the nodes use."""
    import onnx

    model = onnx.load(path)
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    onnx.save(model, path)


# ---------- the tools ----------

def ours(pipeline: str, src: Path, out: Path, calib=None) -> float:
    import onnxcomp

    start = time.perf_counter()
    onnxcomp.optimize(str(src), str(out), pipeline, data=calib, check_output=False)
    return time.perf_counter() - start


def ort_dynamic(src: Path, out: Path) -> float:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    start = time.perf_counter()
    quantize_dynamic(str(src), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return time.perf_counter() - start


def converter_fp16(src: Path, out: Path) -> float:
    import onnx
    from onnxconverter_common import float16

    start = time.perf_counter()
    model = float16.convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.save(model, out)
    return time.perf_counter() - start


def ort_int4(src: Path, out: Path) -> float:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer, RTNWeightOnlyQuantConfig

    start = time.perf_counter()
    quantizer = MatMulNBitsQuantizer(onnx.load(src), block_size=32, is_symmetric=True,
                                     algo_config=RTNWeightOnlyQuantConfig())
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), False)
    return time.perf_counter() - start


# ---------- measuring ----------

def _session(path: Path, threads: int = 2):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _outputs(sess, feeds: dict, batch: int = 16) -> np.ndarray:
    n = len(next(iter(feeds.values())))
    return np.concatenate([sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()})[0]
                           for i in range(0, n, batch)])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)))


def evaluate(rows: list[dict], test: dict, labels, rounds: int) -> None:
    """Fill each row's cosine / accuracy / size / latency; rows[0] is the float model."""
    sessions = [_session(r["path"]) for r in rows]
    reference = _outputs(sessions[0], test)
    for row, sess in zip(rows, sessions):
        out = _outputs(sess, test)
        row["cosine"] = _cosine(reference, out)
        row["accuracy"] = None if labels is None else float(np.mean(out.argmax(1) == labels))
        row["size"] = os.path.getsize(row["path"]) + sum(p.stat().st_size for p in Path(row["path"]).parent.glob(
            Path(row["path"]).name + ".data"))
    for batch in (1, 8):
        feeds = [{k: v[:batch] for k, v in test.items()}] * len(sessions)
        # Twice, the second time in reverse order: the first session of a round measured faster here.
        forward = interleaved_seconds(sessions, feeds, rounds)
        backward = interleaved_seconds(sessions[::-1], feeds, rounds)[::-1]
        for row, a, b in zip(rows, forward, backward):
            row[f"b{batch}_ms"] = (a + b) / 2 * 1000


def table(name: str, rows: list[dict]) -> str:
    from onnxcomp.report import table as text_table

    base = rows[0]
    lines = [text_table(
        ["model", "tool s", "size", "size x", "cosine", "accuracy", "b1 ms", "b1 x", "b8 ms", "b8 x"],
        [[r["name"], "-" if r["tool_s"] is None else f"{r['tool_s']:.2f}", f"{r['size'] / 1e6:.2f} MB",
          f"{r['size'] / base['size']:.3f}", f"{r['cosine']:.5f}",
          "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}", f"{r['b1_ms']:.3f}",
          f"{r['b1_ms'] / base['b1_ms']:.2f}", f"{r['b8_ms']:.3f}", f"{r['b8_ms'] / base['b8_ms']:.2f}"]
         for r in rows])]
    return f"{name}\n" + "\n".join(lines)


def run_model(make, rounds: int, auto: bool = False) -> tuple[str, list[dict]]:
    name, src, calib, test, labels = make()
    tag = Path(src).stem
    rows = [{"name": "float32", "path": src, "tool_s": None}]

    def add(label, tool, *args):
        path = OUT / f"{tag}_{label.replace(' ', '_').replace('/', '_')}.onnx"
        try:
            seconds = tool(*args, path) if tool is not ours else ours(args[0], src, path, *args[1:])
        except Exception as exc:  # a tool failing is a result
            print(f"  {label}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            return
        rows.append({"name": label, "path": path, "tool_s": seconds})

    add("onnxcomp dynamic", ours, "quantize-dynamic")  # clear outliers kept float, probed on generated inputs
    add("onnxcomp dynamic all int8", ours, "quantize-dynamic{keep_outliers=false}")
    # max_drop holds back the MatMuls whose dynamic INT8 costs the most (measured on the calibration data)
    add("onnxcomp dynamic max_drop", ours, "quantize-dynamic{max_drop=0.01,sensitivity_samples=64}", calib)
    if "CNN" in name:
        add("onnxcomp dynamic +Conv", ours, "quantize-dynamic{op_types=[MatMul;Gemm;Conv]}")
    add("ORT quantize_dynamic", ort_dynamic, src)
    add("onnxcomp fp16 (ort)", ours, "convert-float16")
    add("onnxcomp fp16 (tensorrt)", ours, "convert-float16{target=tensorrt}")
    add("onnxcomp bf16 (ort)", ours, "convert-float16{dtype=bfloat16}")
    add("onnxconverter-common fp16", converter_fp16, src)
    add("onnxcomp int4 auto", ours, "quantize-int4-weights", calib)
    add("onnxcomp int4 rtn", ours, "quantize-int4-weights{method=rtn}")
    add("ORT MatMulNBits RTN", ort_int4, src)
    if auto:
        add("onnxcomp auto size", ours, "quantize-auto{max_drop=0.01}", calib)
        add("onnxcomp auto latency", ours, "quantize-auto{max_drop=0.01,objective=latency}", calib)
    evaluate(rows, test, labels, rounds)
    return name, rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks precisions")
    parser.add_argument("--models", default="digits,minilm")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--auto", default="digits", help="models to also run quantize-auto on (slow: one trial "
                                                           "per layer and format)")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu()}; onnxruntime {__import__('onnxruntime').__version__}")
    makers = {"digits": digits, "minilm": minilm}
    results = {}
    for key in args.models.split(","):
        name, rows = run_model(makers[key], args.rounds, key in args.auto.split(","))
        print(table(name, rows), flush=True)
        results[key] = [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()} for r in rows]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
