"""A model with more than 2 GB of weights (external data) through the whole pipeline, with peak RSS
and time per stage.

`python -m benchmarks large_model [-- --gb 2.2 --keep]`

The model (built by code into build/large/, deleted afterwards unless --keep) is a chain of
Conv(1024->1024, 3x3) + BatchNormalization + Relu blocks ending in a Gemm; its weights are
written straight to the data file, so building it costs no memory. A child process then runs
load -> cleanup -> fold-bn -> remove-channels -> sparsify-initializers -> insert-qdq (4 calibration
samples) -> export -> save, each stage only if its pass is registered. Peak RSS is measured per
stage (VmHWM, reset through /proc/self/clear_refs before each stage) and overall (ru_maxrss).
Target: overall peak <= 1.5x the weight bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
CHANNELS = 1024
SPATIAL = 4


def build(folder: Path, gigabytes: float) -> tuple[Path, int]:
    """Write model.onnx + model.onnx.data with about `gigabytes` of float32 weights; returns (path, bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    c = CHANNELS
    per_conv = c * c * 9 * 4
    blocks = max(1, int(np.ceil(gigabytes * 1024**3 / per_conv)))
    nodes, inits, offset = [], [], 0
    data_path = folder / "model.onnx.data"

    def external(name, array, f):
        nonlocal offset
        pad = -offset % 4096
        f.write(b"\0" * pad)
        offset += pad
        raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
        f.write(raw)
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(array.shape),
                        data_location=TensorProto.EXTERNAL)
        for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(raw)))):
            t.external_data.add(key=key, value=value)
        offset += len(raw)
        inits.append(t)

    current = "x"
    with open(data_path, "wb") as f:
        for b in range(blocks):
            w = rng.standard_normal((c, c, 3, 3), dtype=np.float32) * np.float32(np.sqrt(2.0 / (c * 9)))
            external(f"w{b}", w, f)
            del w
            external(f"g{b}", np.abs(rng.standard_normal(c, dtype=np.float32)) * 0.2 + 0.9, f)
            external(f"beta{b}", rng.standard_normal(c, dtype=np.float32) * 0.05, f)
            external(f"mean{b}", rng.standard_normal(c, dtype=np.float32) * 0.05, f)
            external(f"var{b}", np.abs(rng.standard_normal(c, dtype=np.float32)) * 0.2 + 0.9, f)
            nodes += [helper.make_node("Conv", [current, f"w{b}"], [f"c{b}"], name=f"conv{b}", pads=[1, 1, 1, 1]),
                      helper.make_node("BatchNormalization", [f"c{b}", f"g{b}", f"beta{b}", f"mean{b}", f"var{b}"],
                                       [f"n{b}"], name=f"bn{b}"),
                      helper.make_node("Relu", [f"n{b}"], [f"r{b}"], name=f"relu{b}")]
            current = f"r{b}"
        external("fc", rng.standard_normal((10, c), dtype=np.float32) * 0.03, f)
        external("fcb", np.zeros(10, np.float32), f)
    nodes += [helper.make_node("GlobalAveragePool", [current], ["pool"], name="pool"),
              helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                              ["N", c, SPATIAL, SPATIAL])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, sum(int(np.prod(t.dims)) * 4 for t in inits)


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def child(path: str, out: str, samples: int, skip: set[str]) -> None:
    """Run every stage in this process, printing one JSON line per stage."""
    import onnxcomp
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.graph.load import load_model
    from onnxcomp.graph.save import save
    from onnxcomp.pipeline.registry import all_passes

    registered = set(all_passes())
    rng = np.random.default_rng(0)
    calib = {"x": rng.standard_normal((samples, CHANNELS, SPATIAL, SPATIAL), dtype=np.float32)}
    ctx = onnxcomp.PassContext(data=calib)
    state: dict = {}

    def stage(name, fn):
        _reset_peak()
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        s = _status()
        print(json.dumps({"stage": name, "seconds": seconds, "rss": s.get("VmRSS"), "peak": s.get("VmHWM")}),
              flush=True)

    def run_pass(spec):
        onnxcomp.PassManager(onnxcomp.parse_pipeline(spec), verify="structure", ctx=ctx).run(state["graph"])

    stage("load (external data)", lambda: state.update(model=load_model(path)))
    stage("to_graph", lambda: state.update(graph=to_graph(state.pop("model"))))
    pipeline = [("cleanup", "cleanup"), ("fold-bn", "fold-bn"),
                ("remove-channels", "remove-channels{ratio=0.25}"),
                ("sparsify-initializers", "sparsify-initializers{sparsity=0.5,method=magnitude,scope=layer}"),
                ("insert-qdq", "insert-qdq")]
    for name, spec in pipeline:
        if name in skip:
            print(json.dumps({"stage": name, "skipped": "left out (--skip)"}), flush=True)
        elif name in registered:
            stage(name, lambda spec=spec: run_pass(spec))
        else:
            print(json.dumps({"stage": name, "skipped": "not registered"}), flush=True)
    stage("export (to_model)", lambda: state.update(model=to_model(state.pop("graph"))))
    stage("save (external data)", lambda: save(state["model"], out, external_data=True, forbid=path))
    # ru_maxrss is reset with VmHWM by clear_refs: the run's peak is the largest stage peak.


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks large_model")
    parser.add_argument("--gb", type=float, default=2.2, help="weight gigabytes (GiB) of the generated model")
    parser.add_argument("--samples", type=int, default=4, help="calibration samples for insert-qdq")
    parser.add_argument("--folder", default=str(ROOT / "build" / "large"))
    parser.add_argument("--keep", action="store_true", help="keep the generated model and output")
    parser.add_argument("--skip", default="", help="comma-separated passes to leave out (e.g. slow lossy ones)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.samples, set(filter(None, args.skip.split(","))))
        return 0
    from onnxcomp.report import human_bytes, table

    folder = Path(args.folder)
    free = shutil.disk_usage(folder.parent if folder.parent.exists() else ROOT).free
    if free < args.gb * 1024**3 * 3:
        print(f"need about {3 * args.gb:.1f} GB free disk, have {human_bytes(free)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    path, weight_bytes = build(folder, args.gb)
    build_seconds = time.perf_counter() - start
    out = folder / "model.opt.onnx"
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_large_model", "--child", str(path), str(out),
                               "--samples", str(args.samples), "--skip", args.skip], capture_output=True, text=True, cwd=ROOT)
        records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        rows = []
        stages = [r for r in records if "peak" in r]
        if stages:
            records.append({"stage": "total", "peak": max(r["peak"] for r in stages)})
        for r in records:
            if "skipped" in r:
                rows.append([r["stage"], "-", "-", "-", "-", r["skipped"]])
            elif r["stage"] == "total":
                rows.append(["whole run", "-", "-", human_bytes(r["peak"]), f"{r['peak'] / weight_bytes:.2f}x",
                             "target <= 1.50x"])
            else:
                rows.append([r["stage"], f"{r['seconds']:.1f}", human_bytes(r["rss"]), human_bytes(r["peak"]),
                             f"{r['peak'] / weight_bytes:.2f}x", ""])
        print(table(["stage", "seconds", "RSS after", "peak RSS in stage", "peak / weights", "note"], rows))
        out_size = sum(p.stat().st_size for p in folder.glob("model.opt.onnx*")) if out.exists() else 0
        print(f"weights {human_bytes(weight_bytes)} ({weight_bytes} bytes), built in {build_seconds:.0f} s; "
              f"output {human_bytes(out_size)}; load average {os.getloadavg()[0]:.1f}")
        if proc.returncode != 0:
            print("child failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1], file=sys.stderr)
            return 1
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
