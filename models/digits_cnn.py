"""A small residual CNN trained on scikit-learn's digits (8x8 upsampled to 32x32).

Layout: stem conv-BN-ReLU (16), a residual block (16), a stride-2 block with a 1x1
projection (32), another (64), global average pooling, a Linear head. Widths are
multiples of 16 so ONNX Runtime's blocked conv kernels apply. ~99% test accuracy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

INPUT = "input"
OUTPUT = "logits"


def make_model(widths=(16, 32, 64), num_classes: int = 10):
    import torch.nn as nn

    from models.common import residual_block as Block

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            w1, w2, w3 = widths
            self.stem = nn.Sequential(nn.Conv2d(1, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())
            self.layer1 = Block(w1, w1, 1)
            self.layer2 = Block(w1, w2, 2)
            self.layer3 = Block(w2, w3, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(w3, num_classes)

        def forward(self, x):
            x = self.layer3(self.layer2(self.layer1(self.stem(x))))
            return self.fc(self.pool(x).flatten(1))

    return DigitsCNN()


def build(out: Path, epochs: int = 12, seed: int = 0, log=print) -> dict:
    import torch

    from models.common import (
        accuracy,
        digits_split,
        export,
        seed_everything,
        train_classifier,
        upsample,
        write_npz,
    )

    seed_everything(seed)
    (x_train, y_train), (x_test, y_test) = digits_split(seed)
    x_train, x_test = upsample(x_train), upsample(x_test)
    model = train_classifier(make_model(), x_train, y_train, epochs, seed=seed, log=log)
    acc = accuracy(model, x_test, y_test)
    torch.save(model.state_dict(), out / "digits_cnn.pt")
    export(model, torch.from_numpy(x_test[:1]), out / "digits_cnn.onnx", [INPUT], [OUTPUT],
           {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    calib = np.random.default_rng(seed).permutation(len(x_train))[:256]
    write_npz(out / "digits_train.npz", **{INPUT: x_train, "labels": y_train})
    write_npz(out / "digits_calib.npz", **{INPUT: x_train[calib], "labels": y_train[calib]})
    write_npz(out / "digits_test.npz", **{INPUT: x_test, "labels": y_test})
    log(f"digits_cnn: test accuracy {acc:.4f}")
    return {"digits_cnn": {"test_accuracy": acc}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    build(args.out, args.epochs)
