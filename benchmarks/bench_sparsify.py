"""sparsify-initializers vs Polygraphy `surgeon prune` (2:4) on the digits CNN, MLP and transformer block.

Modes: 50% unstructured per tensor, 50% and 80% global, and 2:4. onnxcomp runs twice: with
no data (magnitude, the same information Polygraphy uses) and with the calibration file
(data-aware OBS masks with reconstruction, the default when data is given). Polygraphy only
does 2:4 (magnitude, two smallest of every four). Every tool gets the same BN-folded model.
Columns: test accuracy (digits CNN, MLP) and mean output cosine vs the dense model on the test
set, zero fraction of the model's float weights, the tool's own wall time, raw / gzip /
sparse_initializer file sizes, and for the digits CNN the accuracy after the same short KD
recovery (onnxcomp.distill, zeros kept fixed) with the 2:4 pattern re-verified.

Run: python -m benchmarks sparsify [-- --epochs 2 --no-recover]
Needs the bench extra (polygraphy) and build/models (python -m models.build).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
MODELS = {  # name: (model, calibration, test, train)
    "digits_cnn": ("digits_cnn.onnx", "digits_calib.npz", "digits_test.npz", "digits_train.npz"),
    "mlp": ("mlp.onnx", "mlp_calib.npz", "mlp_test.npz", None),
    "transformer": ("transformer_block.onnx", "transformer_calib.npz", "transformer_test.npz", None),
}
MODES = {"50% layer": "sparsity=0.5,scope=layer", "50% global": "sparsity=0.5,scope=global",
         "80% global": "sparsity=0.8,scope=global", "2:4": "sparsity=2:4"}


def _args(argv):
    p = argparse.ArgumentParser(prog="bench_sparsify", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=REPO / "build" / "models")
    p.add_argument("--epochs", type=int, default=2, help="KD recovery epochs for the digits CNN rows")
    p.add_argument("--no-recover", action="store_true", help="skip the KD recovery column")
    p.add_argument("--only", default="", help="comma-separated model names")
    return p.parse_args(argv)


def _polygraphy(model: onnx.ModelProto, workdir: Path) -> tuple[onnx.ModelProto, float]:
    exe = shutil.which("polygraphy") or str(Path(sys.executable).parent / "polygraphy")
    src, dst = workdir / "in.onnx", workdir / "poly.onnx"
    onnx.save(model, str(src))
    start = time.perf_counter()
    subprocess.run([exe, "surgeon", "prune", str(src), "-o", str(dst)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return onnx.load(str(dst)), time.perf_counter() - start


def _onnxcomp(model: onnx.ModelProto, spec: str, data) -> tuple[onnx.ModelProto, float, dict]:
    from onnxcomp.graph.convert import to_graph, to_model
    from onnxcomp.pipeline.manager import PassManager
    from onnxcomp.pipeline.pass_base import PassContext
    from onnxcomp.pipeline.text import parse_pipeline

    start = time.perf_counter()
    graph = to_graph(model)
    records = PassManager(parse_pipeline("sparsify-initializers{" + spec + "}"), verify="none",
                          ctx=PassContext(data=data)).run(graph)
    out = to_model(graph)
    return out, time.perf_counter() - start, records[-1].report.details


def _weight_zero_fraction(model: onnx.ModelProto) -> float:
    zeros = total = 0
    for init in model.graph.initializer:
        values = onnx.numpy_helper.to_array(init)
        if values.dtype.kind == "f" and values.ndim >= 2:
            zeros += values.size - np.count_nonzero(values)
            total += values.size
    return zeros / total if total else 0.0


def _nm_ok(model: onnx.ModelProto) -> str:
    """'yes' when every weight TensorRT could run sparse is 2:4 (per onnxcomp's check rules)."""
    from onnxcomp.checks import run_checks

    findings = run_checks(model, "tensorrt")
    sparse = sum(f.rule == "SPARSE-01" for f in findings)
    broken = sum(f.rule == "SPARSE-02" and f.severity == "warning" for f in findings)
    return f"{sparse}/{sparse + broken}"


def _recover(teacher: onnx.ModelProto, student: onnx.ModelProto, train, test, epochs: int):
    import onnxcomp

    result = onnxcomp.distill(teacher, student, train, {"epochs": epochs, "threads": 2}, val_data=test)
    return result.final["accuracy"], result.model


def main(argv: list[str]) -> int:
    args = _args(argv)
    from onnxcomp.errors import require

    require("polygraphy", feature="the sparsify benchmark", extra="bench", package="Polygraphy")
    from onnxcomp.measure.data import load_npz
    from onnxcomp.measure.compare import measure
    from onnxcomp.optimize import optimize
    from onnxcomp.passes.sparsify.storage import gzip_size, to_sparse_storage
    from onnxcomp.report import table

    wanted = [m for m in args.only.split(",") if m] or list(MODELS)
    rows = []
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            model_file, calib_file, test_file, train_file = MODELS[name]
            folded = optimize(args.models / model_file, None, "cleanup,fold-bn", check_output=False).model
            calib, test = load_npz(args.models / calib_file), load_npz(args.models / test_file)
            train = load_npz(args.models / train_file) if train_file else None
            ref_out = None

            def add(mode, tool, model, seconds, recover=False):
                fid = measure(folded, model, test, ref_out)
                acc = "-" if fid.accuracy is None else f"{fid.accuracy:.4f}"
                sparse_model, _ = to_sparse_storage(model)
                rec = "-"
                if recover and train is not None and not args.no_recover:
                    rec_acc, rec_model = _recover(folded, model, train, test, args.epochs)
                    rec = f"{rec_acc:.4f}" + (f" ({_nm_ok(rec_model)} 2:4)" if mode == "2:4" else "")
                rows.append([name, mode, tool, acc, f"{fid.cosine:.4f}", f"{_weight_zero_fraction(model):.3f}",
                             "-" if seconds is None else f"{seconds:.2f}", f"{len(model.SerializeToString()) / 1024:.1f}",
                             f"{gzip_size(model) / 1024:.1f}", f"{len(sparse_model.SerializeToString()) / 1024:.1f}",
                             _nm_ok(model) if mode == "2:4" else "-", rec])
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)

            from onnxcomp.measure.compare import outputs_of
            ref_out = outputs_of(folded, test)
            add("dense", "-", folded, None)
            for mode, spec in MODES.items():
                model, seconds, _ = _onnxcomp(folded, spec + ",method=magnitude", None)
                add(mode, "onnxcomp (no data)", model, seconds)
                model, seconds, _ = _onnxcomp(folded, spec, calib)
                add(mode, "onnxcomp (calib)", model, seconds, recover=mode in ("2:4", "80% global"))
                if mode == "2:4":
                    model, seconds = _polygraphy(folded, Path(tmp))
                    add(mode, "polygraphy", model, seconds, recover=True)
    print(table(["model", "mode", "tool", "test acc", "cosine", "zeros", "tool s", "raw KB", "gzip KB",
                 "sparse-init KB", "2:4 layers", f"acc after KD ({args.epochs} ep)"], rows))
    print(f"load average at start {load:.1f} (2 cores, shared): tool seconds are indicative")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
