"""remove-channels vs Torch-Pruning on the digits CNN, same ratio and importance (L2), one table.

For each ratio: parameters and MACs (counted the same way, on the exported ONNX, BN folded),
test accuracy straight after pruning and after the same short fine-tune (KD from the unpruned
model + cross-entropy, equal epochs and recipe for both), ONNX Runtime CPU latency at batch 1
and 8 as a ratio to the unpruned model (timed in interleaved rounds in this one process), and
the tool's own wall time. onnxcomp prunes the exported ONNX graph; Torch-Pruning prunes the
PyTorch module, which then has to be exported.

Run: python -m benchmarks prune [-- --ratios 0.3,0.5 --epochs 5 --rounds 15]
Needs the bench extra (pip install -e ".[bench]") and build/models (python -m models.build).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from benchmarks._measure import interleaved_seconds, top1_accuracy

REPO = Path(__file__).resolve().parent.parent


def _args(argv):
    p = argparse.ArgumentParser(prog="bench_prune", description=__doc__.splitlines()[0])
    p.add_argument("--models", type=Path, default=REPO / "build" / "models")
    p.add_argument("--ratios", default="0.3,0.5")
    p.add_argument("--epochs", type=int, default=5, help="fine-tune epochs (0 = skip fine-tuning)")
    p.add_argument("--rounds", type=int, default=15, help="interleaved latency rounds")
    p.add_argument("--lr", type=float, default=1e-3, help="fine-tune learning rate (the same for every model)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    return p.parse_args(argv)


# ---------------------------------------------------------------- torch side

def _torch_model(models: Path, widths=(16, 32, 64)):
    import torch

    sys.path.insert(0, str(REPO))
    from models.digits_cnn import make_model

    model = make_model(widths)
    model.load_state_dict(torch.load(models / "digits_cnn.pt", weights_only=True))
    return model.eval()


def _load_pruned(module, model: onnx.ModelProto):
    """Put the (sliced) initializers of a BN-unfolded pruned ONNX back into a copy of the module."""
    import torch

    values = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:  # the exporter shares equal tensors through Identity
        if node.op_type == "Identity" and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
    module = copy.deepcopy(module)
    for name, tensor in list(module.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        owner_name, attr = name.rsplit(".", 1)
        owner = module.get_submodule(owner_name)
        new = torch.from_numpy(np.array(values[name]))
        if attr in dict(owner.named_parameters(recurse=False)):
            setattr(owner, attr, torch.nn.Parameter(new))
        else:
            owner.register_buffer(attr, new)
    return module.eval()


def _finetune(student, teacher, x, y, epochs: int, seed: int = 0, lr: float = 1e-3, batch: int = 64):
    """The same recipe for every pruned model: KD (T=4) + cross-entropy, AdamW, cosine schedule."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        soft = teacher.eval()(xt)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    for _ in range(epochs):
        student.train()
        order = torch.randperm(len(xt), generator=g)
        for start in range(0, len(xt), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            out = student(xt[idx])
            kd = F.kl_div(F.log_softmax(out / 4, 1), F.softmax(soft[idx] / 4, 1), reduction="batchmean") * 16
            loss = 0.5 * kd + 0.5 * F.cross_entropy(out, yt[idx])
            loss.backward()
            opt.step()
        sched.step()
    return student.eval()


def _export(module, path: Path, example) -> onnx.ModelProto:
    from models.common import export

    export(module, example, path, ["input"], ["logits"], {"input": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_model(str(path))


def _torch_pruning(module, ratio: float, round_to):
    import torch
    import torch_pruning as tp

    module = copy.deepcopy(module)
    example = torch.zeros(1, 1, 32, 32)
    start = time.perf_counter()
    pruner = tp.pruner.MetaPruner(module, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=[module.fc], round_to=round_to)
    pruner.step()
    return module.eval(), time.perf_counter() - start


# ---------------------------------------------------------------- onnx side

def _run_pipeline(model: onnx.ModelProto, pipeline: str) -> onnx.ModelProto:
    import onnxcomp

    return onnxcomp.optimize(model, pipeline=pipeline, check_output=False).model


def _deploy(model: onnx.ModelProto) -> onnx.ModelProto:
    return _run_pipeline(model, "cleanup,fold-bn")


def _accuracy(model: onnx.ModelProto, data) -> float:
    from onnxcomp.measure.runtime import run_batched, session

    return top1_accuracy(run_batched(session(model), {"input": data["input"]}, 256)["logits"], data["labels"])


def _conv_widths(model: onnx.ModelProto) -> str:
    dims = {i.name: tuple(i.dims) for i in model.graph.initializer}
    widths = []
    for n in model.graph.node:
        if n.op_type == "Conv" and dims[n.input[1]][0] not in widths:
            widths.append(dims[n.input[1]][0])
    return "/".join(map(str, widths))


def _latency(models: dict[str, onnx.ModelProto], batch: int, rounds: int, threads: int) -> dict[str, float]:
    """Median per-call seconds, models timed in interleaved rounds (machine drift hits all alike)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = {k: ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                for k, m in models.items()}
    x = np.random.default_rng(0).standard_normal((batch, 1, 32, 32)).astype(np.float32)
    seconds = interleaved_seconds(list(sessions.values()), [{"input": x}] * len(sessions), rounds,
                                  calls=200 if batch == 1 else 60, warmup=20)
    return dict(zip(sessions, seconds))


def main(argv: list[str]) -> int:
    args = _args(argv)
    from onnxcomp.errors import require

    for module in ("torch", "torch_pruning"):
        require(module, feature="the prune benchmark", extra="bench")
    import torch

    from onnxcomp.measure.counts import estimate_macs, model_counts
    from onnxcomp.measure.data import load_npz

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    models = args.models
    test, train = load_npz(models / "digits_test.npz"), load_npz(models / "digits_train.npz")
    teacher = _torch_model(models)
    example = torch.from_numpy(test["input"][:1])
    original = onnx.load_model(str(models / "digits_cnn.onnx"))
    rows, deployed = [], {"unpruned": _deploy(original)}
    info = {"unpruned": {"tool": "-", "ratio": "-", "seconds": None, "ft": None}}
    tmp = Path(tempfile.mkdtemp(prefix="bench_prune_"))
    for ratio in [float(r) for r in args.ratios.split(",")]:
        # onnxcomp: prune the exported graph (BN still there), then fold BN for deployment.
        start = time.perf_counter()
        pruned = _run_pipeline(original, f"remove-channels{{ratio={ratio},importance=l2}}")
        seconds = time.perf_counter() - start
        key = f"onnxcomp {ratio}"
        deployed[key] = _deploy(pruned)
        ft = None
        if args.epochs:
            student = _finetune(_load_pruned(teacher, pruned), teacher, train["input"], train["labels"], args.epochs,
                                    lr=args.lr)
            ft = _accuracy(_deploy(_export(student, tmp / "oc.onnx", example)), test)
        info[key] = {"tool": "onnxcomp remove-channels", "ratio": ratio, "seconds": seconds, "ft": ft}
        # Torch-Pruning on the PyTorch module, as it ships (round_to=None) and with round_to=8.
        for round_to in (None, 8):
            module, seconds = _torch_pruning(teacher, ratio, round_to)
            key = f"tp {ratio} {round_to}"
            deployed[key] = _deploy(_export(module, tmp / "tp.onnx", example))
            ft = None
            if args.epochs:
                student = _finetune(copy.deepcopy(module), teacher, train["input"], train["labels"], args.epochs,
                                    lr=args.lr)
                ft = _accuracy(_deploy(_export(student, tmp / "tpft.onnx", example)), test)
            info[key] = {"tool": "torch-pruning" + (f" round_to={round_to}" if round_to else ""), "ratio": ratio,
                         "seconds": seconds, "ft": ft}
    load = os.getloadavg()[0]
    lat1 = _latency(deployed, 1, args.rounds, args.threads)
    lat8 = _latency(deployed, 8, args.rounds, args.threads)
    base = deployed["unpruned"]
    p0, m0 = model_counts(base)["params"], estimate_macs(base)["macs"]
    from onnxcomp.report import table

    for key, model in deployed.items():
        i = info[key]
        p, m = model_counts(model)["params"], estimate_macs(model)["macs"]
        rows.append([i["tool"], i["ratio"], _conv_widths(model), f"{p} ({p / p0:.2f}x)", f"{m / 1e6:.2f}M ({m / m0:.2f}x)",
                     f"{_accuracy(model, test):.4f}", "-" if i["ft"] is None else f"{i['ft']:.4f}",
                     f"{lat1[key] * 1e6:.0f}us ({lat1[key] / lat1['unpruned']:.2f}x)",
                     f"{lat8[key] * 1e6:.0f}us ({lat8[key] / lat8['unpruned']:.2f}x)",
                     "-" if i["seconds"] is None else f"{i['seconds']:.2f}"])
    print(table(["tool", "ratio", "conv widths", "params", "MACs", "acc pruned", f"acc +{args.epochs}ep FT",
                 "latency b1", "latency b8", "tool s"], rows))
    print(f"importance L2, uniform ratio; fine-tune: KD(T=4)+CE, AdamW {args.lr:g}, cosine, {args.epochs} epochs, same for all; "
          f"latency: ORT CPU {args.threads} thread(s), median of {args.rounds} interleaved rounds, BN folded in every model; "
          f"load average {load:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
