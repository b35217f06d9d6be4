"""TensorRT parser support per release, without TensorRT: every corpus model checked against each
release in onnxcomp's table (findings per model per version) and cut into the subgraphs the parser
would take.

    python -m benchmarks trt_support [-- --models build/corpus,path/x.onnx --json out.json]

Models: every .onnx under the given files/folders (default: build/corpus and the onnx package's
"light" model-zoo structures, the same names deduplicated). Counted: the TRT- rules only (the
parser table TRT-30..39 and the Q/DQ format TRT-01..21); onnxcomp's own GEN- rules (e.g. "opset
below 10") and the sparsity notes say nothing about the parser and are left out. A cell reads
errors/warnings; "subgraphs/fallback" is the capability report: TensorRT subgraphs and the nodes
left to a plugin or another runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

import onnx

REPO = Path(__file__).resolve().parent.parent


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def _models(sources: list[Path]) -> list[Path]:
    found: dict[str, Path] = {}
    for src in sources:
        for f in sorted(src.rglob("*.onnx")) if src.is_dir() else [src] if src.is_file() else []:
            found.setdefault(f.stem, f)
    return [found[k] for k in sorted(found)]


def main(argv: list[str]) -> int:
    from onnxcomp.checks import run_checks
    from onnxcomp.checks.capability import capability
    from onnxcomp.checks.tensorrt_table import RELEASES
    from onnxcomp.graph.load import load_model
    from onnxcomp.report import table

    parser = argparse.ArgumentParser(prog="python -m benchmarks trt_support")
    parser.add_argument("--models", default="", help="comma-separated files/folders (default: build/corpus + light)")
    parser.add_argument("--json", dest="json_path", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    sources = [Path(p) for p in args.models.split(",") if p] or [REPO / "build" / "corpus", light]
    versions = list(RELEASES)
    rows, records, per_rule = [], [], {v: Counter() for v in versions}
    seconds = 0.0
    for path in _models(sources):
        model = load_model(path, load_external_data=False)
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        cells, caps, record = [], [], {"model": path.stem, "opset": opset, "nodes": len(model.graph.node)}
        for version in versions:
            start = time.perf_counter()
            findings = [f for f in run_checks(model, "tensorrt", os.path.dirname(path), version)
                        if f.rule.startswith("TRT-")]
            cap = capability(model, findings, version).as_dict()
            seconds += time.perf_counter() - start
            errors = [f for f in findings if f.severity == "error"]
            warnings = [f for f in findings if f.severity == "warning"]
            per_rule[version].update(f.rule for f in errors)
            subgraphs = sum(p["runtime"] == "tensorrt" for p in cap["partitions"])
            cells.append(f"{len(errors)}/{len(warnings)}")
            caps.append(f"{subgraphs}/{cap['fallback_nodes']}" + ("" if cap["parses"] else "*"))
            record[version] = {"errors": len(errors), "warnings": len(warnings), "subgraphs": subgraphs,
                               "fallback_nodes": cap["fallback_nodes"], "parses": cap["parses"],
                               "error_rules": dict(Counter(f.rule for f in errors))}
        newest = record[versions[-1]]["error_rules"] or record[versions[0]]["error_rules"]
        rows.append([path.stem, opset, record["nodes"], *cells, *caps,
                     ", ".join(f"{r} x{n}" for r, n in sorted(newest.items())) or "-"])
        records.append(record)
    headers = ["model", "opset", "nodes", *(f"{v} E/W" for v in versions),
               *(f"{v} subgr/fallb" for v in versions), f"error rules ({versions[-1]}; {versions[0]} if none)"]
    print(f"TensorRT parser support without TensorRT, {len(rows)} models x {len(versions)} releases "
          f"({_cpu()}, {os.cpu_count()} cores; checks + capability took {seconds:.1f} s in all)")
    print(table(headers, rows))
    print("* the parser rejects the model as a whole (opset above the release's range, or network I/O types)")
    for version in versions:
        taken = sum(r[version]["errors"] == 0 for r in records)
        print(f"TensorRT {version}: {taken}/{len(records)} models without an error; errors by rule: "
              + (", ".join(f"{k} {n}" for k, n in sorted(per_rule[version].items())) or "none"))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(records, indent=2) + "\n")
        print(f"rows: {args.json_path}")
    return 0
