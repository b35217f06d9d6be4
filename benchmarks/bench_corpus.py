"""Every command on every corpus model, run as a user runs them, beside onnxslim and ORT's quantize_static.

    python -m benchmarks corpus [-- --only a,b --samples 16 --out build/bench_corpus --json FILE --timeout 300]

Needs the corpus: `python -m models.corpus.fetch --out build/corpus`. For each model, in manifest order
and one after another, it writes OUT/NAME_data.py (a data loader: `load()` gives the calibration feeds,
`held_out()` the validation feeds, one feed dict per model call, from the manifest's recipes) and runs
`python -m onnxcomp` in a subprocess (exit code, last stderr line, wall time, a timeout per call):

1. optimize (cleanup,fold-bn, --verify numeric); onnxslim's CLI on the same file beside it;
2. --prune-channels 0.5;  3. --sparsify 0.5;
4. --quantize int8 --target ort; ORT's quantize_static (QDQ, minmax, per tensor and per channel,
   a CalibrationDataReader over the same feeds) beside it, in its own subprocess;
5. --quantize int8 --target tensorrt, then `check OUT --target tensorrt`.

Every output is then run under ONNX Runtime in this process on the held-out feeds against the FP32
original: "exact" is every output element within 1e-5 + 1e-4 * |ref| (the CLI's defaults), cosine is
the mean per-sample cosine of onnxcomp.measure.compare, averaged over calls and outputs. Prints one
table (a cell is `ok` or `exit N: reason`), a summary that names every internal error (exit 1), and
writes every figure to OUT/results.json (or --json FILE).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "models" / "corpus" / "manifest.json"
CORPUS = REPO / "build" / "corpus"
ATOL, RTOL = 1e-5, 1e-4
REASON_CHARS = 20
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")

DATA_FILE = '''"""Sample data for {name} (written by benchmarks/bench_corpus.py): one feed dict per model call."""

import json
import sys

sys.path.insert(0, {repo!r})
from models.corpus.recipes import make_feeds  # noqa: E402

ENTRY = json.loads({entry!r})


def load():
    """Calibration feeds."""
    return make_feeds(ENTRY, {samples}, seed=0)


def held_out():
    """Validation feeds, disjoint from load()'s."""
    return make_feeds(ENTRY, {samples}, seed=1)
'''


# Running things


def run(cmd: list[str], timeout: float, cwd: Path, pythonpath: str = "") -> dict:
    """Exit code (or "timeout"), last stderr line, whether stderr holds a traceback, wall seconds.
    PYTHONPATH is cleared (the installed onnxcomp runs, as for a user) unless given."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False,
                              env={**os.environ, "PYTHONPATH": pythonpath})
    except subprocess.TimeoutExpired:
        return {"cmd": cmd, "exit": "timeout", "seconds": timeout, "last_line": f"timeout after {timeout:g} s",
                "traceback": False, "stdout": ""}
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    return {"cmd": cmd, "exit": proc.returncode, "seconds": round(time.perf_counter() - start, 2),
            "last_line": lines[-1] if lines else "", "traceback": "Traceback (most recent call last)" in proc.stderr,
            "stdout": proc.stdout}


# Where the onnxcomp under test is imported from ("" = the installed one); set by --source.
SOURCE = {"pythonpath": ""}


def onnxcomp(*args, timeout: float, cwd: Path) -> dict:
    return run([sys.executable, "-m", "onnxcomp", *map(str, args)], timeout, cwd, SOURCE["pythonpath"])


def load_data_file(path: str | Path, function: str) -> list[dict[str, np.ndarray]]:
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(getattr(module, function)())


def write_data_file(entry: dict, out: Path, samples: int) -> Path:
    path = out / f"{entry['name']}_data.py"
    path.write_text(DATA_FILE.format(name=entry["name"], repo=str(REPO), samples=samples,
                                     entry=json.dumps({"name": entry["name"], "inputs": entry["inputs"]})))
    return path


def outputs_per_call(path: Path, feeds: list[dict]) -> tuple[list[str], list[list[np.ndarray]]]:
    """Output names and, per feed dict, every output of the model under ONNX Runtime (CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return names, [sess.run(None, {k: v for k, v in feed.items() if k in wanted}) for feed in feeds]


def against(reference: tuple[list[str], list], path: Path, feeds: list[dict]) -> dict:
    """A candidate's outputs against the reference's on the same feeds: exact, max abs diff, cosine."""
    from onnxcomp.measure.compare import diff_output

    try:
        names, calls = outputs_per_call(path, feeds)
    except Exception as exc:  # noqa: BLE001 - ORT's own error types: the candidate does not load or run, a finding
        return {"loads": False, "error": first_line(exc)}
    ref_names, ref_calls = reference
    missing = [n for n in ref_names if n not in names]
    diffs = [[diff_output(n, ref[i], got[names.index(n)], ATOL, RTOL) for i, n in enumerate(ref_names)
              if n in names] for ref, got in zip(ref_calls, calls)]
    flat = [d for call in diffs for d in call]
    same_types = all(ref[i].shape == got[names.index(n)].shape and ref[i].dtype == got[names.index(n)].dtype
                     for ref, got in zip(ref_calls, calls) for i, n in enumerate(ref_names) if n in names)
    return {"loads": True, "exact": not missing and all(d.within for d in flat),
            "max_abs": max((d.max_abs for d in flat), default=float("inf")),
            "cosine": float(np.mean([d.cosine for d in flat])) if flat else 0.0,
            "missing_outputs": missing, "run_shapes_dtypes_kept": same_types}


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def interface(path: Path) -> dict:
    """Declared graph outputs: name -> (element type, dims as ints or dim names)."""
    model = onnx.load(str(path), load_external_data=False)

    def dims(t):
        return [d.dim_param or d.dim_value for d in t.type.tensor_type.shape.dim] \
            if t.type.tensor_type.HasField("shape") else None

    return {o.name: [o.type.tensor_type.elem_type, dims(o)] for o in model.graph.output}


def node_count(path: Path) -> int:
    return len(onnx.load(str(path), load_external_data=False).graph.node)


def pass_record(report: dict | None, name: str) -> dict:
    return next((p for p in (report or {}).get("passes", []) if p["name"] == name), {})


def read_report(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# The steps of one model


def step_optimize(model: Path, out: Path, name: str, data: Path, ref, feeds, timeout: float) -> dict:
    dest, report_path = out / f"{name}.opt.onnx", out / f"{name}.opt.json"
    rec = onnxcomp("optimize", model, "-o", dest, "--verify", "numeric", "--val", f"{data}:held_out",
                   "--report", report_path, timeout=timeout, cwd=out)
    report = read_report(report_path) if rec["exit"] == 0 else None
    if report:
        rec["nodes_in"], rec["nodes_out"] = report["input"]["nodes"], report["output"]["nodes"]
        rec["cli_validation_inputs"] = report["validation"].get("inputs")
    if rec["exit"] == 0 and dest.is_file():
        rec["ours"] = against(ref, dest, feeds)
        rec["interface_kept"] = interface(dest) == interface(model)
    return rec


def step_onnxslim(model: Path, out: Path, name: str, ref, feeds, timeout: float) -> dict:
    dest = out / f"{name}.onnxslim.onnx"
    rec = run([str(Path(sys.executable).with_name("onnxslim")), str(model), str(dest)], timeout, out)
    if rec["exit"] == 0 and dest.is_file():
        rec["nodes_out"] = node_count(dest)
        rec.update(against(ref, dest, feeds))
        rec["interface_kept"] = interface(dest) == interface(model)
    return rec


def step_prune(model: Path, out: Path, name: str, data: Path, ref, feeds, timeout: float) -> dict:
    dest, report_path = out / f"{name}.prune.onnx", out / f"{name}.prune.json"
    rec = onnxcomp("optimize", model, "-o", dest, "--prune-channels", "0.5", "--val", f"{data}:held_out",
                   "--report", report_path, timeout=timeout, cwd=out)
    report = read_report(report_path) if rec["exit"] == 0 else None
    prune = pass_record(report, "remove-channels")
    if prune:
        rec["groups"], rec["groups_pruned"] = prune["stats"]["groups"], prune["stats"]["groups_pruned"]
        rec["params_in"], rec["params_out"] = prune["before"]["params"], prune["after"]["params"]
    if rec["exit"] == 0 and dest.is_file():
        rec.update(against(ref, dest, feeds))
    return rec


def step_sparsify(model: Path, out: Path, name: str, data: Path, ref, feeds, timeout: float) -> dict:
    dest, report_path = out / f"{name}.sparse.onnx", out / f"{name}.sparse.json"
    rec = onnxcomp("optimize", model, "-o", dest, "--sparsify", "0.5", "--val", f"{data}:held_out",
                   "--report", report_path, timeout=timeout, cwd=out)
    sparse = pass_record(read_report(report_path) if rec["exit"] == 0 else None, "sparsify-initializers")
    if sparse:
        rec["sparsified"], rec["eligible"] = sparse["stats"]["sparsified"], sparse["stats"]["eligible"]
        rec["zero_fraction"] = sparse["stats"]["zero_fraction"]
    if rec["exit"] == 0 and dest.is_file():
        rec.update(against(ref, dest, feeds))
    return rec


def step_int8(model: Path, out: Path, name: str, data: Path, target: str, ref, feeds, timeout: float) -> dict:
    dest, report_path = out / f"{name}.int8_{target}.onnx", out / f"{name}.int8_{target}.json"
    rec = onnxcomp("optimize", model, "-o", dest, "--quantize", "int8", "--target", target,
                   "--calib", f"{data}:load", "--val", f"{data}:held_out", "--report", report_path,
                   timeout=timeout, cwd=out)
    qdq = pass_record(read_report(report_path) if rec["exit"] == 0 else None, "insert-qdq")
    if qdq:
        rec["int8_nodes"], rec["float_nodes"] = qdq["stats"]["int8_nodes"], qdq["stats"]["float_nodes"]
    if rec["exit"] == 0 and dest.is_file():
        rec.update(against(ref, dest, feeds))
        if target == "tensorrt":
            check = onnxcomp("check", dest, "--target", "tensorrt", "--json", timeout=timeout, cwd=out)
            try:
                findings = json.loads(check["stdout"])["findings"]
                check["errors"] = sum(f["severity"] == "error" for f in findings)
                check["error_rules"] = sorted({f["rule"] for f in findings if f["severity"] == "error"})
            except (ValueError, KeyError, TypeError):
                check["errors"] = None
            rec["check"] = {k: v for k, v in check.items() if k != "stdout"}
    return rec


def step_ort_quantize(model: Path, out: Path, name: str, data: Path, per_channel: bool, ref, feeds,
                      timeout: float) -> dict:
    dest = out / f"{name}.ort_qdq{'_pc' if per_channel else ''}.onnx"
    dest.unlink(missing_ok=True)
    rec = run([sys.executable, "-m", "benchmarks.bench_corpus", "ort-quantize", str(model), str(data), str(dest)]
              + (["--per-channel"] if per_channel else []), timeout, out, pythonpath=str(REPO))
    try:
        rec["quantize_seconds"] = json.loads(rec["stdout"].strip().splitlines()[-1])["seconds"]
    except (ValueError, IndexError, KeyError):
        pass
    if rec["exit"] == 0 and dest.is_file():
        rec.update(against(ref, dest, feeds))
    return rec


def ort_quantize_main(argv: list[str]) -> int:
    """`python -m benchmarks.bench_corpus ort-quantize MODEL DATA.py OUT [--per-channel]`: ORT's
    quantize_static over DATA.py's load() feeds; prints {"seconds": ...} as its last stdout line."""
    parser = argparse.ArgumentParser(prog="ort-quantize")
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--per-channel", action="store_true")
    args = parser.parse_args(argv)
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    feeds = load_data_file(args.data, "load")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    start = time.perf_counter()
    quantize_static(args.model, args.out, Reader(), quant_format=QuantFormat.QDQ, per_channel=args.per_channel,
                    calibrate_method=CalibrationMethod.MinMax)
    print(json.dumps({"seconds": round(time.perf_counter() - start, 2)}))
    return 0


def bench_model(entry: dict, model: Path, out: Path, samples: int, timeout: float) -> dict:
    name = entry["name"]
    data = write_data_file(entry, out, samples)
    feeds = load_data_file(data, "held_out")
    row = {"name": name, "opset": entry.get("opset"), "kind": entry.get("kind"), "data_file": str(data)}
    try:
        ref = outputs_per_call(model, feeds)
    except Exception as exc:  # noqa: BLE001 - ORT's own error types
        row["error"] = f"original does not run under ORT: {first_line(exc)}"
        return row
    row["optimize"] = step_optimize(model, out, name, data, ref, feeds, timeout)
    row["onnxslim"] = step_onnxslim(model, out, name, ref, feeds, timeout)
    row["remove_channels"] = step_prune(model, out, name, data, ref, feeds, timeout)
    row["sparsify"] = step_sparsify(model, out, name, data, ref, feeds, timeout)
    row["int8_ort"] = step_int8(model, out, name, data, "ort", ref, feeds, timeout)
    row["ort_quantize_static"] = step_ort_quantize(model, out, name, data, False, ref, feeds, timeout)
    row["ort_quantize_static_per_channel"] = step_ort_quantize(model, out, name, data, True, ref, feeds, timeout)
    row["int8_tensorrt"] = step_int8(model, out, name, data, "tensorrt", ref, feeds, timeout)
    for rec in row.values():
        if isinstance(rec, dict):
            rec.pop("stdout", None)
    return row


# The table


def reason(rec: dict) -> str:
    """The error line without `onnxcomp: `, a leading file name (`x_data.py:load: `) or pass name."""
    text = rec.get("last_line", "")
    text = re.sub(r"^\S*(?:/|\.py|\.onnx|\.npz)\S*:\s+", "", text.removeprefix("onnxcomp: "))
    return re.sub(r"^[a-z][a-z0-9-]*:\s+", "", text)[:REASON_CHARS]


def failed(rec: dict) -> str | None:
    """`exit N: reason` when the command did not succeed, `output fails` when its output does not
    run under ORT, else None."""
    if rec.get("exit") == "timeout":
        return "timeout"
    if rec.get("exit") != 0:
        return f"exit {rec.get('exit')}: {reason(rec)}"
    return output_failed(rec)


def output_failed(rec: dict) -> str | None:
    if rec.get("loads") is False:
        return f"output fails in ORT: {rec.get('error', '').split(':')[0]}"
    return None


def cell_optimize(rec: dict) -> str:
    bad = failed(rec) or output_failed(rec.get("ours", {}))
    if bad:
        return bad
    ours = rec.get("ours")
    if not ours:
        return "ok, no output file"
    return "ok" if ours["exact"] else f"NOT exact {ours['max_abs']:.1e}"


def cell_nodes(row: dict) -> str:
    ours, slim = row["optimize"], row["onnxslim"]
    mine = str(ours["nodes_out"]) if "nodes_out" in ours else "-"
    if "nodes_out" not in slim:
        return f"{mine}/fail"
    sound = slim.get("exact") and slim.get("interface_kept") and slim.get("run_shapes_dtypes_kept")
    return f"{mine}/{slim['nodes_out']}{'' if sound else '*'}"


def cell_prune(rec: dict) -> str:
    return failed(rec) or f"ok {rec.get('groups_pruned', '?')}/{rec.get('groups', '?')} groups"


def cell_sparsify(rec: dict) -> str:
    return failed(rec) or f"ok {rec.get('sparsified', '?')}/{rec.get('eligible', '?')} tensors"


def cell_cosine(rec: dict) -> str:
    return failed(rec) or f"{rec['cosine']:.4f}"


def cell_ort(row: dict) -> str:
    def one(rec):
        if rec.get("exit") == "timeout":
            return "timeout"
        if rec.get("exit") != 0:
            return "err"
        return f"{rec['cosine']:.4f}" if rec.get("loads") else "no-load"

    return f"{one(row['ort_quantize_static'])} / {one(row['ort_quantize_static_per_channel'])}"


def cell_tensorrt(rec: dict) -> str:
    bad = failed(rec)
    if bad:
        return bad
    check = rec.get("check", {})
    errors = check.get("errors")
    verdict = "check ok" if check.get("exit") == 0 and errors == 0 else \
        f"check exit {check.get('exit')} {errors} err {','.join(check.get('error_rules', []))}"
    return f"{rec['cosine']:.4f} {verdict}"


COLUMNS = [("model", lambda r: r["name"]), ("op", lambda r: str(r.get("opset", ""))),
           ("optimize", lambda r: cell_optimize(r["optimize"])), ("nodes ours/slim", cell_nodes),
           ("remove-channels", lambda r: cell_prune(r["remove_channels"])),
           ("sparsify", lambda r: cell_sparsify(r["sparsify"])),
           ("int8 ort cos", lambda r: cell_cosine(r["int8_ort"])),
           ("ORT q_static cos pt / pc", cell_ort),
           ("int8 tensorrt cos + check", lambda r: cell_tensorrt(r["int8_tensorrt"]))]


def table(rows: list[dict]) -> str:
    body = [[r["name"], str(r.get("opset", "")), r.get("error") or r.get("missing", "")] if "optimize" not in r
            else [fn(r) for _, fn in COLUMNS] for r in rows]
    heads = [h for h, _ in COLUMNS]
    widths = [max([len(h)] + [len(b[i]) for b in body if i < len(b)]) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


COMMANDS = ("optimize", "remove_channels", "sparsify", "int8_ort", "int8_tensorrt")


def summary(rows: list[dict]) -> list[str]:
    ran = [r for r in rows if "optimize" in r]
    internal = [f"{r['name']}/{c}" for r in ran for c in COMMANDS if r[c].get("exit") == 1]
    tracebacks = [f"{r['name']}/{c}" for r in ran for c in COMMANDS if r[c].get("traceback")]
    timeouts = [f"{r['name']}/{c}" for r in ran for c in COMMANDS if r[c].get("exit") == "timeout"]
    lines = []
    if internal:
        lines.append(f"!!! {len(internal)} INTERNAL ERROR(S) (exit 1): {', '.join(internal)}")
    if tracebacks:
        lines.append(f"!!! traceback on stderr: {', '.join(tracebacks)}")
    if timeouts:
        lines.append(f"timeouts: {', '.join(timeouts)}")
    exact = sum(1 for r in ran if r["optimize"].get("ours", {}).get("exact"))
    slim_ok = [r for r in ran if "nodes_out" in r["optimize"] and "nodes_out" in r["onnxslim"]]
    le = sum(1 for r in slim_ok if r["optimize"]["nodes_out"] <= r["onnxslim"]["nodes_out"])
    ok = {c: sum(1 for r in ran if r[c].get("exit") == 0) for c in COMMANDS}
    refusals = sum(1 for r in ran if r["remove_channels"].get("exit") == 2)
    checked = sum(1 for r in ran if r["int8_tensorrt"].get("check", {}).get("errors") == 0)
    vs_ort = []
    for r in ran:
        ort_valid = [r[k]["cosine"] for k in ("ort_quantize_static", "ort_quantize_static_per_channel")
                     if r[k].get("loads")]
        if ort_valid and "cosine" in r["int8_ort"]:
            vs_ort.append(r["int8_ort"]["cosine"] >= max(ort_valid) - 1e-4)
    lines.append(f"{len(ran)} models: optimize ok {ok['optimize']} (exact {exact}); nodes <= onnxslim {le}/"
                 f"{len(slim_ok)}; remove-channels ok {ok['remove_channels']} (+{refusals} exit 2); sparsify ok "
                 f"{ok['sparsify']}; int8 ort ok {ok['int8_ort']}, cosine >= ORT's best valid {sum(vs_ort)}/"
                 f"{len(vs_ort)}; int8 tensorrt ok {ok['int8_tensorrt']}, check 0 errors {checked}")
    return lines


def cpu_line() -> str:
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, flags: {' '.join(f for f in CPU_FLAGS if f in flags) or 'none of ' + '/'.join(CPU_FLAGS)}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in ("onnxcomp", "onnx", "onnxruntime", "onnxslim"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} missing")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    if argv and argv[0] == "ort-quantize":
        return ort_quantize_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated corpus model names")
    parser.add_argument("--samples", type=int, default=16, help="calibration and validation calls (default 16)")
    parser.add_argument("--out", default=str(REPO / "build" / "bench_corpus"), help="work folder")
    parser.add_argument("--json", default="", help="results file (default OUT/results.json)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per CLI call (default 300)")
    parser.add_argument("--corpus", default=str(CORPUS), help="folder with the corpus models")
    parser.add_argument("--source", default="", help="run the onnxcomp of this checkout (e.g. a git worktree of one "
                        "commit, with passes/ linked as onnxcomp/passes) instead of the installed one, so a long "
                        "run measures one state of the code")
    args = parser.parse_args(argv)
    if args.source:
        source = Path(args.source).resolve()
        if not (source / "onnxcomp" / "passes" / "__init__.py").is_file():
            print(f"--source {source}: no onnxcomp/passes package there (link passes/ as onnxcomp/passes)",
                  file=sys.stderr)
            return 2
        SOURCE["pythonpath"] = str(source)

    entries = json.loads(MANIFEST.read_text())
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {e["name"] for e in entries})
        if unknown:
            print(f"unknown corpus model(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        entries = [e for e in entries if e["name"] in wanted]
    out, corpus = Path(args.out).resolve(), Path(args.corpus)
    out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_line()}; {versions()}; {args.samples} calibration + {args.samples} held-out calls per model; "
          f"timeout {args.timeout:g} s per call", flush=True)
    rows, started = [], time.perf_counter()
    for entry in entries:
        model = corpus / f"{entry['name']}.onnx"
        if not model.is_file():
            rows.append({"name": entry["name"], "opset": entry.get("opset"),
                         "missing": f"not in {corpus}: python -m models.corpus.fetch --out {corpus}"})
            continue
        t0 = time.perf_counter()
        rows.append(bench_model(entry, model.resolve(), out, args.samples, args.timeout))
        print(f"  {entry['name']}: {time.perf_counter() - t0:.0f} s", flush=True)
    print()
    print(table(rows))
    print("\nnodes: ours/onnxslim after cleanup (* onnxslim's output not exact under ORT or an output's declared or "
          f"run shape/dtype changed); cosine: mean per-sample cosine vs FP32 on {args.samples} held-out calls; "
          "ORT q_static: quantize_static QDQ minmax, per tensor / per channel (err: it raised, no-load: ORT cannot "
          "load its output)")
    lines = summary(rows)
    for line in lines:
        print(line)
    print(f"total {time.perf_counter() - started:.0f} s")
    results = Path(args.json) if args.json else out / "results.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"cpu": cpu_line(), "versions": versions(), "samples": args.samples,
                                   "timeout": args.timeout, "summary": lines, "models": rows}, indent=1, default=str))
    print(f"wrote {results}")
    return 1 if any(line.startswith("!!!") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
