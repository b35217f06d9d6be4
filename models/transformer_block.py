"""A small pre-LN transformer encoder block (MatMul/Add/Softmax/LayerNormalization/Gelu), seeded weights.

Input `x` float[batch, seq, 64] with dynamic batch and sequence; output `y`, same shape.
Weights are random (seeded): the block exists to exercise transformer graph patterns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT = "x"
OUTPUT = "y"
DIM, HEADS, FFN = 64, 4, 256


def make_model(dim: int = DIM, heads: int = HEADS, ffn: int = FFN):
    import torch
    import torch.nn as nn

    class EncoderBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads, self.head_dim = heads, dim // heads
            self.ln1 = nn.LayerNorm(dim)
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, dim)
            self.v = nn.Linear(dim, dim)
            self.o = nn.Linear(dim, dim)
            self.ln2 = nn.LayerNorm(dim)
            self.fc1 = nn.Linear(dim, ffn)
            self.act = nn.GELU()
            self.fc2 = nn.Linear(ffn, dim)

        def split(self, t):
            b, s, _ = t.shape
            return t.reshape(b, s, self.heads, self.head_dim).transpose(1, 2)

        def forward(self, x):
            h = self.ln1(x)
            q, k, v = self.split(self.q(h)), self.split(self.k(h)), self.split(self.v(h))
            att = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim ** 0.5, dim=-1)
            ctx = (att @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
            x = x + self.o(ctx)
            return x + self.fc2(self.act(self.fc1(self.ln2(x))))

    return EncoderBlock()


def build(out: Path, seed: int = 0, log=print) -> dict:
    import torch

    from models.common import export, seed_everything, write_npz

    seed_everything(seed)
    model = make_model().eval()
    rng = np.random.default_rng(seed)
    example = torch.from_numpy(rng.standard_normal((2, 16, DIM)).astype(np.float32))
    torch.save(model.state_dict(), out / "transformer_block.pt")
    export(model, example, out / "transformer_block.onnx", [INPUT], [OUTPUT],
           {INPUT: {0: "batch", 1: "seq"}, OUTPUT: {0: "batch", 1: "seq"}})
    write_npz(out / "transformer_calib.npz", **{INPUT: rng.standard_normal((64, 16, DIM)).astype(np.float32)})
    write_npz(out / "transformer_test.npz", **{INPUT: rng.standard_normal((32, 16, DIM)).astype(np.float32)})
    log("transformer_block: built")
    return {"transformer_block": {}}
