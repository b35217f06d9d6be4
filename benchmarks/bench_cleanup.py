"""cleanup vs onnxslim: nodes left, exactness under ONNX Runtime, interface kept, time.

    python -m benchmarks cleanup [-- --models build/corpus,path/x.onnx --max-mb 100 --only name,name]

Models: every .onnx under the given files/folders (default: build/corpus, build/models and the
onnx package's "light" model-zoo structures), plus two tiny torch exports with shape subgraphs
(dynamic batch) when torch is installed. Opset < 10 models are first converted to opset 13.
Inputs come from models/corpus/manifest.json recipes where the file is a corpus entry, else seeded
random data; each model is compared on two input settings (symbolic dims 1 and 3 where the model
allows it), so a fold that hard-codes a dynamic dim shows up as not exact. "exact" means every
output within 1e-5 relative to its largest magnitude; "iface" means graph inputs and outputs kept
their names, dtypes and shapes (symbolic dim names included); "MB" is the model's serialized bytes
(its file); "splats" counts ConstantOfShape nodes cleanup,fold-bn kept for one repeated value
(`splat_limit_kb`: a node instead of the tensor's bytes); times are CPU seconds of this process
(the cores are shared), model in to model out. `--splat-limit-kb 1e6` folds splats as onnxslim does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "models" / "corpus" / "manifest.json"
RTOL = 1e-5


def _default_sources() -> list[Path]:
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    return [REPO / "build" / "corpus", REPO / "build" / "models", light]


def _collect(sources: list[Path], max_mb: float) -> list[Path]:
    found: dict[str, Path] = {}
    for src in sources:
        files = sorted(src.rglob("*.onnx")) if src.is_dir() else [src] if src.is_file() else []
        for f in files:
            if f.stat().st_size <= max_mb * 1024**2 and f.stem not in found and not f.stem.endswith(".opt"):
                found[f.stem] = f
    return list(found.values())


def _torch_models(folder: Path) -> list[Path]:
    """Two tiny torch exports full of Shape/Gather/Unsqueeze/Concat (dynamic batch)."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return []

    class Flatten(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            y = self.conv(x)
            return self.fc(y.view(y.size(0), -1))

    class Heads(nn.Module):
        def __init__(self, dim=16, heads=4):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)

        def forward(self, x):
            b, t, d = x.size()
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
            a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
            return self.out((a @ v).transpose(1, 2).reshape(x.size(0), x.size(1), -1))

    torch.manual_seed(0)
    made = []
    cases = [("torch_flatten", Flatten(), torch.randn(2, 3, 8, 8), {0: "batch"}),
             ("torch_heads", Heads(), torch.randn(2, 6, 16), {0: "batch"})]
    for name, module, example, axes in cases:
        for opset in (11, 17):
            path = folder / f"{name}_op{opset}.onnx"
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                torch.onnx.export(module.eval(), (example,), str(path), opset_version=opset, dynamo=False,
                                  input_names=["x"], output_names=["y"],
                                  dynamic_axes={"x": axes, "y": {0: "batch"}})
            made.append(path)
    return made


def _manifest() -> dict[str, dict]:
    if not MANIFEST.is_file():
        return {}
    return {e["name"]: e for e in json.loads(MANIFEST.read_text())}


def _feed_sets(model: onnx.ModelProto, entry: dict | None) -> list[dict]:
    """Two input settings: the manifest's (or symbolic dims 1) and one with symbolic dims 3."""
    from onnxcomp.graph.signature import input_specs
    from onnxcomp.measure.runtime import random_inputs

    specs = input_specs(model)
    if entry is not None:
        import sys

        sys.path.insert(0, str(REPO))
        from models.corpus.recipes import make_feeds

        first = make_feeds(entry, 1, seed=0)[0]
        second = {}
        for spec in specs:  # symbolic dims of the declared shape grown to 3, the rest as the recipe
            recipe = next(r for r in entry["inputs"] if r["name"] == spec.name)
            shape = [3 if isinstance(d, str) and i == 0 else int(s)
                     for i, (d, s) in enumerate(zip(spec.shape, recipe["shape"]))]
            second.update(make_feeds({"inputs": [dict(recipe, shape=shape)]}, 1, seed=1)[0])
        return [first, second]
    return [random_inputs(model, seed=0, batch=1), random_inputs(model, seed=1, batch=3)]


def _run(model: onnx.ModelProto, feeds: dict):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # a failing input setting is skipped quietly
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: v for k, v in feeds.items() if k in wanted})))


def _max_rel_diff(expected: dict, got: dict) -> float:
    """Largest |got - expected| over outputs, each relative to max(1, largest |expected|)."""
    worst = 0.0
    for name, ref in expected.items():
        if name not in got or np.shape(got[name]) != np.shape(ref):
            return float("inf")
        a, b = np.asarray(ref), np.asarray(got[name])
        if a.dtype.kind not in "fc":
            worst = max(worst, 0.0 if np.array_equal(a, b) else float("inf"))
            continue
        a, b = a.astype(np.float64), b.astype(np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        diff = np.where(both_nan, 0.0, np.abs(a - b))
        finite = np.abs(a[np.isfinite(a)])
        scale = max(1.0, float(finite.max()) if finite.size else 1.0)
        worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0)) / scale)
    return worst


def _interface(model: onnx.ModelProto) -> list:
    inits = {t.name for t in model.graph.initializer}

    def one(v):
        t = v.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim) \
            if t.HasField("shape") else None
        return (v.name, t.elem_type, dims)

    return [[one(v) for v in model.graph.input if v.name not in inits], [one(v) for v in model.graph.output]]


CLEANUP = "cleanup"  # with the options given on the command line (main sets it)


def _ours(model: onnx.ModelProto, pipeline: str | None = None) -> onnx.ModelProto:
    import onnxcomp
    from onnxcomp.graph.convert import to_graph, to_model

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = to_graph(copy)
    onnxcomp.PassManager(onnxcomp.parse_pipeline(pipeline or CLEANUP), verify="none").run(graph)
    return to_model(graph)


def _ours_default(model: onnx.ModelProto) -> onnx.ModelProto:
    return _ours(model, f"{CLEANUP},fold-bn")


def _onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return onnxslim.slim(copy)


def _timed(fn, model):
    """(result, CPU seconds of this process, error): CPU time, since the machine's cores are shared."""
    start = time.process_time()
    try:
        return fn(model), time.process_time() - start, None
    except Exception as exc:  # a peer failing on a model is a result, not a crash
        message = str(exc).splitlines()[0][:80] if str(exc) else ""
        return None, time.process_time() - start, f"{type(exc).__name__}: {message}"


def measure(path: Path, entry: dict | None) -> dict:
    model = onnx.load(str(path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 10:
        model = onnx.version_converter.convert_version(model, 13)
    row = {"model": path.stem, "nodes": len(model.graph.node), "in_mb": model.ByteSize() / 1e6}
    feed_sets = []
    for feeds in _feed_sets(model, entry):
        try:
            feed_sets.append((feeds, _run(model, feeds)))
        except Exception:
            continue  # this input setting does not suit the model
    for tool, fn in (("slim", _onnxslim), ("ours", _ours), ("default", _ours_default)):
        out, seconds, error = _timed(fn, model)
        row[f"{tool}_s"] = seconds
        if out is None:
            row[tool] = f"error ({error})"
            continue
        row[tool] = len(out.graph.node)
        row[f"{tool}_mb"] = out.ByteSize() / 1e6
        row[f"{tool}_splats"] = _splats(out)
        row[f"{tool}_iface"] = _interface(out) == _interface(model)
        diffs = []
        for feeds, expected in feed_sets:
            try:
                diffs.append(_max_rel_diff(expected, _run(out, feeds)))
            except Exception:
                diffs.append(float("inf"))
        row[f"{tool}_diff"] = max(diffs) if diffs else None
    return row


def _splats(model: onnx.ModelProto) -> int:
    """ConstantOfShape nodes whose shape is an initializer: constants kept as one value."""
    inits = {t.name for t in model.graph.initializer}
    return sum(1 for n in model.graph.node if n.op_type == "ConstantOfShape" and n.input and n.input[0] in inits)


def _fmt_mb(mb) -> str:
    return "-" if mb is None else f"{mb:.1f}"


def _fmt_diff(d) -> str:
    if d is None:
        return "no run"
    return ("ok " if d <= RTOL else "BAD ") + (f"{d:.1e}" if np.isfinite(d) else "fails")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks cleanup")
    parser.add_argument("--models", default="", help="comma-separated .onnx files or folders")
    parser.add_argument("--max-mb", type=float, default=100.0, help="skip model files larger than this")
    parser.add_argument("--only", default="", help="comma-separated model names (file stems)")
    parser.add_argument("--splat-limit-kb", type=float, default=None, help="cleanup's splat_limit_kb")
    args = parser.parse_args(argv)
    global CLEANUP
    CLEANUP = "cleanup" if args.splat_limit_kb is None else f"cleanup{{splat_limit_kb={args.splat_limit_kb:g}}}"
    from onnxcomp.errors import require
    from onnxcomp.report import table

    require("onnxslim", feature="the cleanup benchmark", extra="bench")

    sources = [Path(s) for s in args.models.split(",") if s] or _default_sources()
    manifest = _manifest()
    rows, worse, by_splats = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        paths = _collect(sources, args.max_mb) + ([] if args.models else _torch_models(Path(tmp)))
        only = {s for s in args.only.split(",") if s}
        for path in paths:
            if only and path.stem not in only:
                continue
            r = measure(path, manifest.get(path.stem))
            ours_diff = max((d for d in (r.get("ours_diff"), r.get("default_diff")) if d is not None), default=None)
            rows.append([r["model"], r["nodes"], r["slim"], r["ours"], r["default"], r.get("default_splats", "-"),
                         _fmt_diff(r.get("slim_diff")), _fmt_diff(ours_diff),
                         "yes" if r.get("slim_iface") else "NO",
                         "yes" if r.get("ours_iface") and r.get("default_iface") else "NO",
                         _fmt_mb(r["in_mb"]), _fmt_mb(r.get("slim_mb")), _fmt_mb(r.get("default_mb")),
                         f"{r['slim_s']:.2f}", f"{r['ours_s']:.2f}"])
            print("  ".join(str(c) for c in rows[-1]), flush=True)
            if isinstance(r["ours"], int) and isinstance(r["slim"], int) and r["ours"] > r["slim"]:
                worse.append(r["model"])
            if isinstance(r["default"], int) and isinstance(r["slim"], int) and r["default"] > r["slim"] \
                    and r["default"] - r["default_splats"] <= r["slim"]:
                by_splats.append(r["model"])
    print(table(["model", "nodes in", "onnxslim", "cleanup", "+fold-bn", "splats", "exact onnxslim", "exact ours",
                 "iface onnxslim", "iface ours", "MB in", "MB onnxslim", "MB ours", "onnxslim cpu s",
                 "cleanup cpu s"], rows))
    print(f"{len(rows)} models; cleanup leaves more nodes than onnxslim on {len(worse)}"
          + (f": {', '.join(worse)}" if worse else "")
          + "; cleanup,fold-bn (the default pipeline) on "
          + str(sum(1 for r in rows if isinstance(r[4], int) and isinstance(r[2], int) and r[4] > r[2]))
          + (f", of which only by splats kept as ConstantOfShape: {', '.join(by_splats)}" if by_splats else ""))
    print("'exact ours' and 'iface ours' cover both cleanup and cleanup,fold-bn; MB = serialized model "
          "(ours: cleanup,fold-bn)")
    return 0
