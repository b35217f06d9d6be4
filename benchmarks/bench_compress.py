"""`onnxcomp compress` against the manual sequence with the peers, on the digits CNN, one table.

(a) onnxcomp compress --latency F --quantize int8 --max-drop D (default the issue's 0.2 / 0.003);
(b) the manual sequence: Torch-Pruning (group L2 magnitude, widths rounded to the host's channel
    block, the classifier left alone) on the PyTorch module at the ratio (a) chose, without the
    residual blocks (a) dropped (replaced by the identity in torch), the same
    recovery (KD at T=1 + cross-entropy, AdamW, cosine, the same epochs and learning rate; not
    compress's matching of the block outputs) in torch,
    export to ONNX, then ONNX Runtime's quantize_static (QDQ, per-channel, 256 calibration samples).
Each arm runs in its own process (wall time and peak RSS are its own); accuracy on the held-out
digits test split (359 samples: one sample = 0.28 points) and latency at batch 8 (the fastest of
interleaved rounds, ONNX Runtime, one thread) are measured here, in one process, as ratios to the
original. Also one label-free run on a non-classifier of the corpus (eeg_spindle_unet, a U-Net
segmenter; 16 random recipe inputs, no labels: cosine of the outputs).

Run: python -m benchmarks compress [-- --latency 0.2 --max-drop 0.003 --epochs 6 --skip-label-free]
Needs the bench extra (torch-pruning) and build/models; the label-free row needs build/corpus.
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

from benchmarks._measure import peak_rss_mb, top1_accuracy

REPO = Path(__file__).resolve().parent.parent
LABEL_FREE = "eeg_spindle_unet"
LABEL_FREE_TRAIN = 16  # random recipe samples to distill on: 7500-long 128-channel maps cost memory (11 GB at 32)


def _args(argv):
    p = argparse.ArgumentParser(prog="bench_compress", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=REPO / "build" / "models")
    p.add_argument("--latency", type=float, default=0.2)
    p.add_argument("--max-drop", type=float, default=0.003)
    p.add_argument("--epochs", type=int, default=6)  # compress's default
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-label-free", action="store_true")
    p.add_argument("--arm", choices=["compress", "manual", "label-free"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--ratio", type=float, help=argparse.SUPPRESS)
    p.add_argument("--block", type=int, help=argparse.SUPPRESS)
    p.add_argument("--drop", default="", help=argparse.SUPPRESS)  # residual blocks compress dropped, comma-separated
    return p.parse_args(argv)


# ---------------------------------------------------------------- the arms (each in its own process)

def arm_compress(args) -> dict:
    import onnxcomp
    from onnxcomp.errors import ToleranceError

    m = args.models
    start = time.perf_counter()
    try:
        result = onnxcomp.compress(m / "digits_cnn.onnx", m / "digits_train.npz", m / "digits_test.npz",
                                   latency=args.latency, max_drop=args.max_drop, epochs=args.epochs,
                                   threads=args.threads)
    except ToleranceError as exc:
        return {"error": str(exc), "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}
    onnxcomp.save(result.model, args.out)
    chosen = result.chosen
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "ratio": chosen.ratio,
            "widths": list(chosen.widths), "dropped": list(chosen.dropped), "block": result.host.get("channel_block", 1), "message": result.message,
            "trained": sum(c.trained for c in result.candidates), "stages": [s.as_dict() for s in result.stages],
            "own_b8_ratio": result.figures["latency_batch_ms"]["ratio"], "load": os.getloadavg()[0]}


def _torch_model(models: Path):
    import torch

    sys.path.insert(0, str(REPO))
    from models.digits_cnn import make_model

    model = make_model()
    model.load_state_dict(torch.load(models / "digits_cnn.pt", weights_only=True))
    return model.eval()


def _recover(student, teacher, x, y, epochs: int, lr: float | None = None, batch: int = 64, seed: int = 0):
    """What compress does, in torch: KD at T=1 (weight 0.5) + cross-entropy, AdamW, cosine per step, at
    compress's learning rate (without its matching of the block outputs: Torch-Pruning has none)."""
    import torch
    import torch.nn.functional as F

    from onnxcomp.compress import RECOVERY_LR

    lr = RECOVERY_LR if lr is None else lr
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        soft = teacher.eval()(xt)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(xt) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    order_gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        student.train()
        order = torch.randperm(len(xt), generator=order_gen)
        for s in range(0, len(xt), batch):
            idx = order[s:s + batch]
            out = student(xt[idx])
            kd = F.kl_div(F.log_softmax(out, 1), F.log_softmax(soft[idx], 1), reduction="batchmean", log_target=True)
            loss = 0.5 * kd + 0.5 * F.cross_entropy(out, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return student.eval()


def arm_manual(args) -> dict:
    import copy

    import torch
    import torch_pruning as tp
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from models.common import export
    from onnxcomp.measure.data import load_npz

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train = load_npz(args.models / "digits_train.npz")
    teacher = _torch_model(args.models)
    student = copy.deepcopy(teacher)
    example = torch.zeros(1, 1, 32, 32)
    for add in filter(None, args.drop.split(",")):  # the same depth as compress chose: '/layer1/Add' -> layer1
        setattr(student, add.strip("/").split("/")[0], torch.nn.Identity())
    if args.ratio:
        pruner = tp.pruner.MetaPruner(student, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=args.ratio, ignored_layers=[student.fc], round_to=args.block)
        pruner.step()
    student = _recover(student, teacher, train["input"], train["labels"], args.epochs)
    tmp = Path(tempfile.mkdtemp(prefix="bench_compress_"))
    export(student, example, tmp / "fp32.onnx", ["input"], ["logits"], {"input": {0: "batch"}, "logits": {0: "batch"}})
    quant_pre_process(str(tmp / "fp32.onnx"), str(tmp / "pre.onnx"))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": train["input"][i:i + 16]} for i in range(0, 256, 16)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(tmp / "pre.onnx"), str(args.out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "ratio": args.ratio or 0.0}


def _corpus_data(n: int, seed: int) -> dict:
    sys.path.insert(0, str(REPO))
    from models.corpus.recipes import make_feeds

    entry = next(e for e in json.loads((REPO / "models" / "corpus" / "manifest.json").read_text())
                 if e["name"] == LABEL_FREE)
    feeds = make_feeds(entry, n, seed)
    return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}


def arm_label_free(args) -> dict:
    import onnxcomp
    from onnxcomp.errors import ToleranceError

    start = time.perf_counter()
    try:
        result = onnxcomp.compress(REPO / "build" / "corpus" / f"{LABEL_FREE}.onnx", _corpus_data(LABEL_FREE_TRAIN, 0),
                                   _corpus_data(8, 1), size=0.3, epochs=1, threads=args.threads, grid=(0.25, 0.5))
    except ToleranceError as exc:
        return {"error": str(exc), "seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb()}
    f = result.figures
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "message": result.message,
            "cosine": f["quality"]["output"], "size": f["file_size"]["ratio"],
            "latency_b8": f["latency_batch_ms"]["ratio"], "latency_b1": f["latency_b1_ms"]["ratio"]}


ARMS = {"compress": arm_compress, "manual": arm_manual, "label-free": arm_label_free}


def conv_widths(model) -> str:
    """Output channels of each Conv in order (through a DequantizeLinear for QDQ weights)."""
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    dq = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    widths = [dims.get(dq.get(n.input[1], n.input[1]), ["?"])[0] for n in model.graph.node if n.op_type == "Conv"]
    return "/".join(map(str, widths))


# ---------------------------------------------------------------- the parent: spawn, measure, print

def _spawn(arm: str, argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_compress", "--arm", arm, *argv], check=False,
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise SystemExit(f"bench_compress: arm {arm} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    args = _args(argv)
    if args.arm:
        print(json.dumps(ARMS[args.arm](args)))
        return 0
    from onnxcomp.errors import require

    require("torch_pruning", feature="the compress benchmark", extra="bench")
    import onnx

    from onnxcomp.compress import cpu_name
    from onnxcomp.measure.data import load_npz
    from onnxcomp.measure.latency import batch_feeds, interleaved_ms
    from onnxcomp.measure.runtime import run_batched, session
    from onnxcomp.report import human_bytes, table

    tmp = Path(tempfile.mkdtemp(prefix="bench_compress_"))
    common = ["--models", str(args.models), "--epochs", str(args.epochs), "--threads", str(args.threads)]
    ours = _spawn("compress", common + ["--latency", str(args.latency), "--max-drop", str(args.max_drop),
                                        "--out", str(tmp / "compress.onnx")])
    if "error" in ours:
        print(f"onnxcomp compress: {ours['error']}")
    manual = _spawn("manual", common + ["--ratio", str(ours.get("ratio", 0.0)), "--block", str(ours.get("block", 1)),
                                        "--drop", ",".join(ours.get("dropped", [])), "--out", str(tmp / "manual.onnx")])
    paths = {"original (fp32)": args.models / "digits_cnn.onnx", "manual (peers)": tmp / "manual.onnx"}
    if "error" not in ours:
        paths["onnxcomp compress"] = tmp / "compress.onnx"
    models = {k: onnx.load(str(p)) for k, p in paths.items()}
    test = load_npz(args.models / "digits_test.npz")
    acc = {k: top1_accuracy(run_batched(session(m), {"input": test["input"]}, 64)["logits"], test["labels"])
           for k, m in models.items()}
    ms = {}
    for batch in (1, 8):
        feeds = batch_feeds(models["original (fp32)"], test, batch)
        ms[batch] = dict(zip(models, interleaved_ms(list(models.values()), [feeds] * len(models), args.threads,
                                                    min_rounds=15, budget_s=4.0, statistic="min")))
    runs = {"onnxcomp compress": ours, "manual (peers)": manual}
    rows = []
    for k, model in models.items():
        run = runs.get(k, {})
        rows.append([k, f"{acc[k]:.4f}", f"{(acc[k] - acc['original (fp32)']) * 100:+.2f}", f"{ms[8][k]:.3f}",
                     f"{ms[8][k] / ms[8]['original (fp32)']:.3f}x", f"{ms[1][k] / ms[1]['original (fp32)']:.3f}x",
                     human_bytes(paths[k].stat().st_size), conv_widths(model),
                     f"{run['seconds']:.1f}" if run else "-",
                     f"{run['peak_rss_mb']:.0f}" if run else "-"])
    print(f"digits CNN, {args.epochs} epochs, --latency {args.latency} --max-drop {args.max_drop}; dropped "
          f"{ours.get('dropped') or 'no block'}, ratio {ours.get('ratio', '-')} (widths {ours.get('widths', '-')}, block {ours.get('block', '-')}); "
          f"{cpu_name()}, {args.threads} thread(s), load average {os.getloadavg()[0]:.1f}")
    print(table(["model", "accuracy", "points", "b8 ms", "b8 ratio", "b1 ratio", "file", "conv widths", "wall s",
                 "peak RSS MB"], rows))
    if "message" in ours:
        print(f"onnxcomp compress: {ours['message']}")
        print(f"b8 ratio: {ms[8]['onnxcomp compress'] / ms[8]['original (fp32)']:.3f}x measured here, "
              f"{ours['own_b8_ratio']:.3f}x in compress's own final measurement (load average "
              f"{ours['load']:.1f} as it ended)")
    if not args.skip_label_free and (REPO / "build" / "corpus" / f"{LABEL_FREE}.onnx").exists():
        free = _spawn("label-free", common)
        if "error" in free:
            print(f"label-free {LABEL_FREE}: {free['error']}")
        else:
            print(f"label-free {LABEL_FREE} (--size 0.3, 1 epoch, {LABEL_FREE_TRAIN} random samples): cosine {free['cosine']:.4f}, "
                  f"size {free['size']:.3f}x, latency b1 {free['latency_b1']:.3f}x b8 {free['latency_b8']:.3f}x, "
                  f"{free['seconds']:.0f} s, peak RSS {free['peak_rss_mb']:.0f} MB; {free['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
