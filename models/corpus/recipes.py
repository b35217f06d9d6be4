"""Sample-input recipes for the third-party model corpus (see manifest.json).

Each manifest entry has ``inputs``: one recipe per graph input (initializers excluded)::

    {"name": "input_ids", "dtype": "int64", "shape": [1, 16],
     "generator": {"kind": "int", "low": 0, "high": 30522}}

Generators:

* ``{"kind": "uniform", "low": a, "high": b}``  floats in [a, b)
* ``{"kind": "normal", "mean": m, "std": s}``
* ``{"kind": "int", "low": a, "high": b}``      integers in [a, b) (``high`` exclusive, as numpy);
  cast to ``dtype``, so a float32 input fed with ids gets integer-valued floats
* ``{"kind": "const", "value": v}``             every element ``v`` (lengths, zero RNN states, masks)

``shape`` is concrete: dynamic dims are already filled with the value the model expects, and a
fixed batch dim keeps the model's own size. ``make_feeds`` returns one feed dict per model call;
samples are never stacked along the batch axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np

GENERATOR_KINDS = ("uniform", "normal", "int", "const")


def _one(spec: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(spec["dtype"])
    shape = tuple(int(d) for d in spec["shape"])
    gen = spec["generator"]
    kind = gen["kind"]
    if kind == "uniform":
        arr = rng.uniform(gen["low"], gen["high"], size=shape)
    elif kind == "normal":
        arr = rng.normal(gen["mean"], gen["std"], size=shape)
    elif kind == "int":
        arr = rng.integers(int(gen["low"]), int(gen["high"]), size=shape)
    elif kind == "const":
        arr = np.full(shape, gen["value"])
    else:
        raise ValueError(f"input {spec['name']!r}: unknown generator kind {kind!r}")
    return np.asarray(arr).astype(dtype, copy=False)


def make_feeds(entry: dict[str, Any], n_samples: int = 1, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Build ``n_samples`` feed dicts (name -> array) for one manifest entry, reproducibly from ``seed``."""
    if n_samples < 0:
        raise ValueError("n_samples must be >= 0")
    rng = np.random.default_rng(seed)
    specs = entry["inputs"]
    return [{s["name"]: _one(s, rng) for s in specs} for _ in range(n_samples)]
