"""Calibration speed and memory: onnxcomp.calibration vs ONNX Runtime's calibrators, same method and data.

    python -m benchmarks calibration [-- --models digits,transformer,minilm --methods minmax,percentile,entropy
                                         --samples 256 --batch 16 --scan 64,256,1024 --repeat 3]

Each measurement runs in a fresh subprocess (wall time from the model path to the ranges, peak
RSS of that process from /proc VmHWM), so neither tool inherits the other's memory. The floor is
ONNX Runtime alone running the same batches with the tensors we fetch as extra outputs (session
built from the same path, outputs dropped): what any calibrator must at least spend; once with
ONNX Runtime's defaults (`floor`) and once with its idle threads not spinning (`nospin`, as
onnxcomp's calibration session runs: on a loaded machine spinning threads cost the floor itself
up to 2x). The tools are run in turn, in a rotating order, `--repeat` times; ratios are medians of
the per-round ratios, so drift on a shared machine hits all alike. Settings are the
peer's defaults, given to both: minmax asymmetric; percentile 99.999 symmetric with 2048 bins;
entropy (ORT's default 128 bins; onnxcomp keeps its 2048). The peer's tensors are every float
tensor its shape inference types; ours every float activation (constants excluded).

Also printed: the lower bound (`bound`: CPU ns per fetched value of ORT, of our fold and of
np.bincount alone, so 1 + fold/ORT is the least ours/floor on busy cores), peak RSS against the
number of samples (ours should stay flat, the peer's histogram calibrators keep every batch's
outputs), and a check that statistics of two halves of the data, merged, equal those of the whole
(min/max and every histogram bin).
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
MODELS = {  # name -> (model file, calibration data file)
    "digits": ("digits_cnn.onnx", "digits_calib.npz"),
    "transformer": ("transformer_block.onnx", "transformer_calib.npz"),
    "minilm": ("minilm.onnx", "minilm_calib.npz"),
    # the same sentences with attention_mask all ones: no -3.4e38 mask values, which crash the
    # peer's histogram calibrators ("Too many bins for data range"), so it can be compared at all
    "minilm-nomask": ("minilm.onnx", "minilm_calib.npz"),
    # both tools calibrate only MatMul inputs and outputs (the usual way to get the peer's
    # histogram calibrators through a transformer: on all tensors they crash, even without masks)
    "minilm-matmul": ("minilm.onnx", "minilm_calib.npz"),
}


def _op_scope(model: str) -> list[str] | None:
    return ["MatMul"] if model.endswith("-matmul") else None
PERCENTILE = 99.999


# -- one measurement (runs in its own process) ------------------------------------------------

def _samples(data: dict, n: int, model: str = "") -> dict:
    count = len(next(iter(data.values())))
    index = np.arange(n) % count
    out = {k: v[index] for k, v in data.items() if k != "labels"}
    if model.endswith("-nomask"):
        out["attention_mask"] = np.ones_like(out["attention_mask"])
    return out


def _batches(data: dict, batch: int) -> list[dict]:
    n = len(next(iter(data.values())))
    return [{k: v[i:i + batch] for k, v in data.items()} for i in range(0, n, batch)]


def _run_ours(model_path: str, data: dict, method: str, batch: int, scope) -> int:
    import onnx

    from onnxcomp.passes.qdq.calibration import (
        activation_tensors,
        choose_ranges,
        collect_stats,
    )

    model = onnx.load(model_path)
    tensors = None
    if scope:
        activations = set(activation_tensors(model))
        tensors = [t for n in model.graph.node if n.op_type in scope for t in (*n.input, *n.output)
                   if t in activations]
    stats = collect_stats(model, data, tensors=tensors, batch_size=batch,
                          num_bins=0 if method == "minmax" else 2048)
    symmetric = method == "percentile"
    return len(choose_ranges(stats, method, percentile=PERCENTILE, symmetric=symmetric))


def _run_floor(model_path: str, data: dict, method: str, batch: int, scope, spin: bool = True) -> int:
    """ONNX Runtime alone: the tensors ours fetches as outputs, every batch run, nothing kept."""
    sess, fetch = _floor_session(model_path, scope, spin)
    for feeds in _batches(data, batch):
        sess.run(fetch, feeds)
    return len(fetch)


def _floor_session(model_path: str, scope, spin: bool):
    """(ONNX Runtime session, names fetched): the model with the tensors ours fetches as outputs."""
    import onnx

    from onnxcomp.measure.runtime import session
    from onnxcomp.passes.qdq.calibration import activation_tensors, value_sources

    model = onnx.load(model_path)
    tensors = activation_tensors(model)
    if scope:
        chosen = set(tensors)
        tensors = [t for n in model.graph.node if n.op_type in scope for t in (*n.input, *n.output) if t in chosen]
    sources = value_sources(model)
    roots = list(dict.fromkeys(sources.get(t, t) for t in tensors))
    existing = {o.name for o in model.graph.output}
    for name in roots:
        if name not in existing:
            model.graph.output.add().name = name
    sess = session(model, spin=spin)
    floats = {"tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"}
    return sess, [o.name for o in sess.get_outputs() if o.name in set(roots) and o.type in floats]


def _run_ort(model_path: str, data: dict, method: str, batch: int, scope) -> int:
    batches = _batches(data, batch)
    from onnxruntime.quantization.calibrate import (
        CalibrationDataReader,
        CalibrationMethod,
        create_calibrator,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            return next(self.it, None)

    kind = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[method]
    extra = {"percentile": PERCENTILE} if method == "percentile" else {}
    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(Path(model_path), scope, str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=kind, extra_options=extra)
        calibrator.collect_data(Reader())
        ranges = calibrator.compute_data()
    return len(ranges.data) if hasattr(ranges, "data") else len(ranges)


def worker(tool: str, model: str, models_dir: str, method: str, samples: int, batch: int) -> dict:

    model_file, data_file = MODELS[model]
    model_path = str(Path(models_dir) / model_file)
    data = _samples(dict(np.load(Path(models_dir) / data_file)), samples, model)
    import onnxruntime  # noqa: F401  (every tool pays for it; import before the baseline)

    # Each tool's own modules are imported before the clock starts: a fixed cost per process, not
    # calibration throughput (onnxcomp's imports would otherwise land in the floor's time too).
    if tool == "ort":
        import onnxruntime.quantization.calibrate  # noqa: F401
    else:
        import onnxcomp.measure.runtime  # noqa: F401
        import onnxcomp.passes.qdq.calibration  # noqa: F401
    base = peak_rss_mb()
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        run = {"ours": _run_ours, "ort": _run_ort, "floor": _run_floor,
               "floor-nospin": lambda *a: _run_floor(*a, spin=False)}[tool]
        tensors = run(model_path, data, method, batch, _op_scope(model))
        error = ""
    except Exception as exc:  # the peer crashes on some inputs: report it, do not die
        tensors, error = 0, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = peak_rss_mb()
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak, "base_mb": base, "tensors": tensors,
            "error": error}


def measure(tool: str, model: str, method: str, samples: int, batch: int, models_dir: Path) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_calibration", "--worker", tool, model, str(models_dir),
           method, str(samples), str(batch)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"seconds": float("nan"), "cpu_seconds": float("nan"), "peak_mb": float("nan"),
                "base_mb": float("nan"), "tensors": 0,
                "error": f"exit {proc.returncode}: {tail[:80]}"}
    return json.loads(lines[-1])


def ensure_models(models_dir: Path, models: list[str]) -> list[str]:
    """Build the models/ set (MiniLM only when its packages are installed); the ones now present."""
    subprocess.run([sys.executable, "-m", "models.build", "--out", str(models_dir)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    return [m for m in models if all((models_dir / f).exists() for f in MODELS[m])]


# -- merge exactness ------------------------------------------------------------------------------

def merge_check(model: str, models_dir: Path, samples: int, batch: int) -> tuple[bool, int, int]:
    """(merged == whole, tensors compared, histogram bins that differ)."""
    import onnx

    from onnxcomp.passes.qdq.calibration import collect_stats

    model_file, data_file = MODELS[model]
    proto = onnx.load(models_dir / model_file)
    data = _samples(dict(np.load(models_dir / data_file)), samples, model)
    # the same batches in both runs: ONNX Runtime rounds differently for other batch shapes
    batches = _batches(data, batch)
    half = len(batches) // 2
    whole = collect_stats(proto, batches)
    first = collect_stats(proto, batches[:half])
    second = collect_stats(proto, batches[half:])
    with tempfile.TemporaryDirectory() as tmp:  # through files, as when halves run on two machines
        merged = first.merge(type(first).load(second.save(Path(tmp) / "half.npz")))
    differ = sum(int(np.count_nonzero(merged[n].counts != whole[n].counts)) for n in whole)
    same_minmax = all((merged[n].min, merged[n].max) == (whole[n].min, whole[n].max) for n in whole)
    return merged == whole and same_minmax, len(whole), differ


# -- the lower bound -----------------------------------------------------------------------------

def bound(model: str, models_dir: Path, batch: int, batches: int = 4, rounds: int = 2) -> list:
    """CPU nanoseconds per fetched value of ONNX Runtime (the nospin floor's session, at `batch` and
    at 4x `batch`), of folding them (histogram; min/max only) and of np.bincount alone on their bin
    indices, all in this one process, interleaved batch by batch. While ONNX Runtime's threads (or,
    on a loaded host, other processes) keep the cores busy, calibration costs at least
    1 + fold/ORT times the floor whatever overlaps: the bound the targets are held against."""
    from onnxcomp.passes.qdq.calibration import TensorStats
    from onnxcomp.passes.qdq.calibration.histogram import CHUNK, EXTREME, Scratch

    model_file, data_file = MODELS[model]
    sess, fetch = _floor_session(str(models_dir / model_file), _op_scope(model), spin=False)
    data = _samples(dict(np.load(models_dir / data_file)), batch * batches * 4, model)
    small, large = _batches(data, batch)[:batches], _batches(data, batch * 4)[:max(1, batches // 4)]
    cpu = {"ort": 0.0, "ort-4x": 0.0, "hist": 0.0, "minmax": 0.0, "bincount": 0.0}
    values = {"ort": 0, "ort-4x": 0}
    scratch = Scratch()
    for feeds in (small[0], large[0]):  # untimed: the first run of a shape grows ORT's arena
        sess.run(fetch, feeds)
    for _ in range(rounds):
        for i, feeds in enumerate(small):
            start = time.process_time()
            out = sess.run(fetch, feeds)
            cpu["ort"] += time.process_time() - start
            values["ort"] += sum(v.size for v in out)
            hist = {n: TensorStats(n, 2048) for n in fetch}
            lean = {n: TensorStats(n, 0) for n in fetch}
            for kind in (("hist", "minmax") if i % 2 else ("minmax", "hist")):
                start = time.thread_time()
                for name, v in zip(fetch, out):
                    (hist if kind == "hist" else lean)[name].update(v, scratch)
                cpu[kind] += time.thread_time() - start
            for name, v in zip(fetch, out):  # the counting alone, on the grid the fold ended with
                t = hist[name]
                x = v.reshape(-1)
                x = x[np.abs(x) < EXTREME] if t.outliers else x
                for at in range(0, x.size, CHUNK):
                    index = t.bin_indices(x[at:at + CHUNK], scratch)
                    start = time.thread_time()
                    np.bincount(index, minlength=2048)
                    cpu["bincount"] += time.thread_time() - start
            del out
        for feeds in large:
            start = time.process_time()
            out = sess.run(fetch, feeds)
            cpu["ort-4x"] += time.process_time() - start
            values["ort-4x"] += sum(v.size for v in out)
            del out
    per = {k: cpu[k] / (values["ort-4x"] if k == "ort-4x" else values["ort"]) * 1e9 for k in cpu}
    return [model, f"{values['ort'] / (rounds * batch * len(small)) / 1e6:.2f}", _fmt(per["ort"]),
            _fmt(per["ort-4x"]), _fmt(per["hist"]), _fmt(per["minmax"]), _fmt(per["bincount"]),
            _fmt(1 + per["hist"] / per["ort"]), _fmt(1 + per["bincount"] / per["ort"]),
            _fmt(1 + per["minmax"] / per["ort"])]


# -- the table ---------------------------------------------------------------------------------

def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def _row(model: str, method: str, samples: int, rounds: list[dict]) -> list:
    """One table row from rounds of {tool: measurement}: median seconds, median per-round ratios."""
    def median(values):
        values = [v for v in values if v == v]
        return float(np.median(values)) if values else float("nan")

    seconds = {tool: median([r[tool]["seconds"] for r in rounds]) for tool in rounds[0]}
    crashed = any(r["ort"]["error"] for r in rounds)
    ours_floor = median([r["ours"]["seconds"] / r["floor"]["seconds"] for r in rounds])
    ours_quiet = median([r["ours"]["seconds"] / r["floor-nospin"]["seconds"] for r in rounds])
    # CPU seconds over all threads: what the work costs, whatever share of a loaded machine it got
    # (the non-spinning floor: a spinning one's CPU time counts its idle threads' spinning).
    ours_cpu = median([r["ours"]["cpu_seconds"] / r["floor-nospin"]["cpu_seconds"] for r in rounds])
    ours_ort = median([r["ours"]["seconds"] / r["ort"]["seconds"] for r in rounds]) if not crashed else float("nan")
    last = rounds[-1]
    ours, ort = last["ours"], last["ort"]
    return [model, method, samples, f"{ours['tensors']}/{ort['tensors']}", _fmt(seconds["floor"]),
            _fmt(seconds["floor-nospin"]), _fmt(seconds["ours"]), _fmt(seconds["ort"]) + (" CRASH" if crashed else ""),
            _fmt(ours_floor), _fmt(ours_quiet), _fmt(ours_cpu),
            _fmt(ours_ort) if not crashed else "-", f"{ours['peak_mb']:.0f}",
            f"{ort['peak_mb']:.0f}" if not crashed else "-",
            _fmt(ours["peak_mb"] / ort["peak_mb"]) if not crashed else "-"]


def _cpu() -> str:
    """The CPU model and the vector extensions that decide ORT's and NumPy's kernels."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    vector = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{name} ({' '.join(vector) or 'no AVX2'})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_calibration")
    parser.add_argument("--worker", nargs=6, metavar=("TOOL", "MODEL", "MODELS_DIR", "METHOD", "SAMPLES", "BATCH"))
    parser.add_argument("--models", default="digits,transformer,minilm,minilm-matmul")
    parser.add_argument("--methods", default="minmax,percentile,entropy")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--scan", default="32,128,512", help="sample counts for the memory-vs-samples rows")
    parser.add_argument("--scan-model", default="minilm-matmul")
    parser.add_argument("--scan-peer-max", type=int, default=128, help="largest sample count the peer is run at")
    parser.add_argument("--models-dir", type=Path, default=REPO / "build" / "models")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of the three tools per row")
    args = parser.parse_args(argv)
    if args.worker:
        tool, model_path, data_path, method, samples, batch = args.worker
        print(json.dumps(worker(tool, model_path, data_path, method, int(samples), int(batch))))
        return 0

    models = [m for m in args.models.split(",") if m]
    available = ensure_models(args.models_dir, models)
    skipped = [m for m in models if m not in available]
    from onnxcomp.report import table

    rows = []
    tools = ("ort", "ours", "floor", "floor-nospin")
    for model in available:
        for method in args.methods.split(","):
            rounds = []
            for r in range(args.repeat):  # a rotating order: each tool runs first, middle and last in turn
                turn = (len(rows) + r) % len(tools)
                order = tools[turn:] + tools[:turn]
                rounds.append({tool: measure(tool, model, method, args.samples, args.batch, args.models_dir)
                               for tool in order})
            rows.append(_row(model, method, args.samples, rounds))
            for tool in tools:
                if rounds[-1][tool]["error"]:
                    print(f"  {model}/{method}/{tool}: {rounds[-1][tool]['error']}", file=sys.stderr)
    print(table(["model", "method", "samples", "tensors ours/ort", "floor s", "nospin s", "ours s", "ort s",
                 "ours/floor", "ours/nospin", "cpu ours/nospin",
                 "ours/ort", "ours MB", "ort MB", "RSS ratio"], rows))
    print("floor: ONNX Runtime alone running the same batches with the tensors ours fetches as outputs "
          "(nospin: the same, its idle threads not spinning); cpu: CPU seconds of all threads; "
          f"ratios: medians over {args.repeat} rotating round(s) of the per-round ratio")

    scan_model = args.scan_model if args.scan_model in available else (available[-1] if available else None)
    if scan_model and args.scan:
        scan_rows = []
        for n in [int(x) for x in args.scan.split(",")]:
            ours = measure("ours", scan_model, "percentile", n, args.batch, args.models_dir)
            ort = (measure("ort", scan_model, "percentile", n, args.batch, args.models_dir)
                   if n <= args.scan_peer_max else None)
            scan_rows.append([scan_model, "percentile", n, _fmt(ours["seconds"]), f"{ours['peak_mb']:.0f}",
                              _fmt(ort["seconds"]) if ort else "not run", f"{ort['peak_mb']:.0f}" if ort else "-"])
        print()
        print(table(["model", "method", "samples", "ours s", "ours peak MB", "ort s", "ort peak MB"], scan_rows))

    print()
    bound_rows = [bound(model, args.models_dir, args.batch) for model in available]
    print(table(["model", "M values/sample", "ORT ns/value", "ORT at 4x batch", "fold ns/value",
                 "min/max ns/value", "bincount ns/value", "bound hist", "bound bincount only",
                 "bound minmax"], bound_rows))
    print("CPU ns per fetched value, one process, interleaved: ORT = the nospin floor's session (all its "
          "threads); fold = TensorStats.update on one thread; bound = 1 + fold/ORT, the least "
          "ours/floor while the cores are kept busy")

    print()
    merge_rows = []
    for model in [m for m in available if "-" not in m]:
        exact, tensors, differ = merge_check(model, args.models_dir, min(args.samples, 64), 8)
        merge_rows.append([model, tensors, differ, "yes" if exact else "NO"])
    print(table(["model", "tensors", "histogram bins differing", "halves merged == whole"], merge_rows))
    load = os.getloadavg()
    print(f"\n{_cpu()}; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores"
          + (f"; skipped (not built): {', '.join(skipped)}" if skipped else ""))
    return 0 if all(r[3] == "yes" for r in merge_rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
