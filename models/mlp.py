"""A tiny MLP on flattened 8x8 digits: Gemm-BN-ReLU-Gemm-ReLU-Gemm (Gemm+BN for fold-bn)."""

from __future__ import annotations

from pathlib import Path

INPUT = "input"
OUTPUT = "logits"


def make_model(hidden=(128, 64), num_classes: int = 10):
    import torch.nn as nn

    h1, h2 = hidden
    return nn.Sequential(nn.Linear(64, h1), nn.BatchNorm1d(h1), nn.ReLU(),
                         nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, num_classes))


def build(out: Path, epochs: int = 30, seed: int = 0, log=print) -> dict:
    import torch

    from models.common import (
        accuracy,
        digits_split,
        export,
        seed_everything,
        train_classifier,
        write_npz,
    )

    seed_everything(seed)
    (x_train, y_train), (x_test, y_test) = digits_split(seed)
    x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    model = train_classifier(make_model(), x_train, y_train, epochs, seed=seed)
    acc = accuracy(model, x_test, y_test)
    torch.save(model.state_dict(), out / "mlp.pt")
    export(model, torch.from_numpy(x_test[:2]), out / "mlp.onnx", [INPUT], [OUTPUT],
           {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    write_npz(out / "mlp_calib.npz", **{INPUT: x_train[:256], "labels": y_train[:256]})
    write_npz(out / "mlp_test.npz", **{INPUT: x_test, "labels": y_test})
    log(f"mlp: test accuracy {acc:.4f}")
    return {"mlp": {"test_accuracy": acc}}
