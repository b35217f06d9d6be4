"""A tiny token encoder for the distillation tests: ids -> embedding table -> MatMul -> Tanh, times the
padding mask ([batch, seq] int64 inputs, [batch, seq, width] output), with padded sentences to train on."""

from __future__ import annotations

import numpy as np
from helpers import make_model, tensor
from onnx import TensorProto, helper

VOCAB, WIDTH, SEQ = 50, 8, 6


def token_model(seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
             helper.make_node("MatMul", ["emb", "w"], ["h"]),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Unsqueeze", ["attention_mask", "axes"], ["m"]),
             helper.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["t", "mf"], ["hidden"])]
    inits = {"table": rng.normal(size=(VOCAB, WIDTH)).astype(np.float32),
             "w": (rng.normal(size=(WIDTH, WIDTH)) * scale).astype(np.float32), "axes": np.array([-1], np.int64)}
    return make_model(nodes, [tensor("input_ids", ["batch", "seq"], TensorProto.INT64),
                              tensor("attention_mask", ["batch", "seq"], TensorProto.INT64)],
                      [tensor("hidden", ["batch", "seq", WIDTH])], inits)


def sentences(n: int = 32, seed: int = 0, used: int = 12) -> dict[str, np.ndarray]:
    """Ids from the first `used` rows only, 1 (a start token) first, padded with 0 to SEQ."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, SEQ + 1, n)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(2, used, (n, SEQ)) * mask
    ids[:, 0] = 1
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}
