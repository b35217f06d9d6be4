"""Shared helpers for the model-building scripts: digits data, seeding, export, npz writing."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

OPSET = 17


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def digits_split(seed: int = 0, test_fraction: float = 0.2):
    """scikit-learn's bundled digits (1,797 8x8 images in [0,16]) split into train/test, scaled to [0,1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def upsample(images: np.ndarray, size: int = 32) -> np.ndarray:
    """8x8 → size x size bilinear, NCHW with one channel."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(images[:, None])
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).numpy().astype(np.float32)


def export(module, example, path: Path, input_names, output_names, dynamic_axes) -> None:
    """TorchScript exporter with constant folding off, so BatchNorm stays a node (fold-bn's job)."""
    import torch

    module.eval()
    torch.onnx.export(module, example, str(path), dynamo=False, do_constant_folding=False, opset_version=OPSET,
                      input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)


def write_npz(path: Path, **arrays) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def train_classifier(model, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 3e-3, batch: int = 64,
                     seed: int = 0, log=None):
    """Plain Adam + cross-entropy with a cosine schedule; deterministic on CPU."""
    import torch

    g = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(xt), generator=g)
        total = 0.0
        for start in range(0, len(xt), batch):
            idx = order[start:start + batch]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        sched.step()
        if log:
            log(f"epoch {epoch + 1}/{epochs} loss {total / len(xt):.4f}")
    model.eval()
    return model


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def residual_block(cin: int, cout: int, stride: int):
    """ResNet's basic block: conv-BN-ReLU-conv-BN plus an identity (or 1x1 conv-BN projection) skip, then ReLU.

    Shared by the digits CNN and the ResNet-18-like benchmark model so both exercise the same
    residual pattern (projection on the skip branch, Add, Relu) that fold-bn, remove-channels and
    insert-qdq must handle.
    """
    import torch.nn as nn

    class ResidualBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU()
            self.proj = None
            if stride != 1 or cin != cout:
                self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            skip = x if self.proj is None else self.proj(x)
            return self.relu(out + skip)

    return ResidualBlock()
