"""A ResNet-18-like CNN at 224x224 with seeded random weights, for latency and calibration benchmarks.

Layout as ResNet-18: 7x7/2 stem conv-BN-ReLU, 3x3/2 max pool, four stages of two basic blocks
(64, 128, 256, 512 channels; 1x1 projections where the shape changes), global average pool, a
1000-way Linear head. BatchNorm stays in the graph (fold-bn's job). The weights are random, but
BatchNorm running statistics are set by a few training-mode passes over random images, so
activations keep realistic scales through all blocks. Input `input` float[batch, 3, 224, 224];
output `logits` [batch, 1000]. Not part of the default models.build (the export takes a few
seconds and the file is 45 MB): benchmarks call `ensure(out)`.

    python -m models.resnet_like --out build/models
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

INPUT = "input"
OUTPUT = "logits"
SIZE = 224
FILES = ("resnet_like.onnx", "resnet_like_calib.npz")


def make_model(widths=(64, 128, 256, 512), num_classes: int = 1000):
    import torch.nn as nn

    from models.common import residual_block as Block

    layers = [nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    cin = widths[0]
    for i, width in enumerate(widths):
        layers += [Block(cin, width, 1 if i == 0 else 2), Block(width, width, 1)]
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def images(n: int, seed: int) -> np.ndarray:
    """Smooth random images (low-frequency noise, roughly unit scale), NCHW float32."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((n, 3, SIZE // 16, SIZE // 16)).astype(np.float32)
    return np.repeat(np.repeat(coarse, 16, axis=2), 16, axis=3) + 0.1 * rng.standard_normal(
        (n, 3, SIZE, SIZE)).astype(np.float32)


def build(out: Path, seed: int = 0, log=print) -> dict:
    import torch

    from models.common import export, seed_everything, write_npz

    out.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    model = make_model()
    model.train()
    with torch.no_grad():  # set BatchNorm running statistics to the activations' real scale
        for i in range(3):
            model(torch.from_numpy(images(8, seed + 100 + i)))
    model.eval()
    export(model, torch.from_numpy(images(1, seed)), out / "resnet_like.onnx", [INPUT], [OUTPUT],
           {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    write_npz(out / "resnet_like_calib.npz", **{INPUT: images(16, seed + 1)})
    log("resnet_like: built")
    return {"resnet_like": {"params": sum(p.numel() for p in model.parameters())}}


def ensure(out: Path, log=print) -> Path:
    """Build into `out` unless already built from this exact script; returns the model path."""
    key = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    stamp = out / "resnet_like.stamp.json"
    fresh = stamp.exists() and all((out / f).exists() for f in FILES)
    if not (fresh and json.loads(stamp.read_text()).get("sources") == key):
        info = build(out, log=log)
        stamp.write_text(json.dumps({"sources": key, **info}))
    return out / "resnet_like.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the ResNet-18-like latency model.")
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    args = parser.parse_args()
    ensure(args.out)


if __name__ == "__main__":
    main()
