"""A model with more than 2 GB of weights (external data) through the CLI, with peak RSS and the
time per stage (issue 16: peak RSS <= 1.5x the weight bytes).

`python -m benchmarks large_model [-- --gb 2.4 --keep --commands int8,prune,sparsify]`

The model (built by code into build/large/, deleted afterwards unless --keep) is a chain of
Conv(1024->1024, 3x3) + BatchNormalization + Relu blocks ending in a Gemm; its weights are
written straight to the data file, so building it costs no memory. Each command is then one
`onnxcomp optimize` process, as a user runs it (the default cleanup,fold-bn plus the command's
pass; insert-qdq with 4 calibration samples); its peak RSS is the kernel's (wait4's ru_maxrss of
that process alone) and the time per stage comes from its --report.
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


COMMANDS = {
    "int8": ["--quantize", "int8", "--target", "ort", "--calib", "{calib}"],
    "prune": ["--prune-channels", "0.25"],
    "sparsify": ["--passes", "cleanup,fold-bn,sparsify-initializers{sparsity=0.5,method=magnitude}"],
}


def run_command(name: str, model: Path, folder: Path, calib: Path) -> dict:
    """One `onnxcomp optimize` process: exit code, wall seconds, peak RSS, the report's stages."""
    out, report = folder / f"out-{name}.onnx", folder / f"report-{name}.json"
    args = [a.replace("{calib}", str(calib)) for a in COMMANDS[name]]
    argv = [sys.executable, "-m", "onnxcomp", "optimize", str(model), "-o", str(out), *args,
            "--report", str(report)]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    stages = []
    if report.exists():
        data = json.loads(report.read_text())
        stages = [(p["name"], p["seconds"]) for p in data.get("passes", [])]
    output_bytes = sum(f.stat().st_size for f in folder.glob(f"out-{name}.onnx*"))
    for f in folder.glob(f"out-{name}.onnx*"):
        f.unlink()
    return {"command": name, "exit": proc.returncode, "seconds": seconds, "peak": usage.ru_maxrss * 1024,
            "stages": stages, "output_bytes": output_bytes,
            "error": (stderr.strip().splitlines() or [""])[-1] if proc.returncode else ""}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks large_model")
    parser.add_argument("--gb", type=float, default=2.4, help="weight gigabytes (GiB) of the generated model")
    parser.add_argument("--samples", type=int, default=4, help="calibration samples for insert-qdq")
    parser.add_argument("--folder", default=str(ROOT / "build" / "large"))
    parser.add_argument("--keep", action="store_true", help="keep the generated model")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="which of " + ", ".join(COMMANDS))
    args = parser.parse_args(argv)
    from onnxcomp.report import human_bytes, table

    folder = Path(args.folder)
    free = shutil.disk_usage(folder.parent if folder.parent.exists() else ROOT).free
    if free < args.gb * 1024**3 * 4:
        print(f"need about {4 * args.gb:.1f} GB free disk, have {human_bytes(free)}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    path, weight_bytes = build(folder, args.gb)
    build_seconds = time.perf_counter() - start
    calib = folder / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, x=rng.standard_normal((args.samples, CHANNELS, SPATIAL, SPATIAL), dtype=np.float32))
    failed = False
    try:
        rows = []
        for name in filter(None, args.commands.split(",")):
            r = run_command(name, path, folder, calib)
            failed |= r["exit"] != 0
            ratio = r["peak"] / weight_bytes
            stages = ", ".join(f"{n} {s:.0f}s" for n, s in r["stages"])
            rows.append([name, r["exit"], f"{r['seconds']:.0f}", human_bytes(r["peak"]), f"{ratio:.2f}x",
                         "yes" if ratio <= 1.5 and r["exit"] == 0 else "no", human_bytes(r["output_bytes"]),
                         stages or r["error"][:80]])
        print(table(["command", "exit", "seconds", "peak RSS", "peak / weights", "<= 1.5x", "output",
                     "time per stage (passes)"], rows))
        print(f"weights {human_bytes(weight_bytes)} ({weight_bytes} bytes), built in {build_seconds:.0f} s; "
              f"load average {os.getloadavg()[0]:.1f}; CPU {_cpu()}")
        return 1 if failed else 0
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def _cpu() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
