"""LowRankPlan: the chosen ranks as JSON, replayable on the same model (the factors are recomputed).

A plan names each factorized node with its weight, the weight's matrix shape and the rank, and
the method that made the factors (whitened needs the same sample data again to give the same
factors). Replaying checks every entry against the model: a changed shape is one clear error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onnxcomp.errors import InputError

PLAN_VERSION = 1


@dataclass
class LowRankPlan:
    method: str = "svd"
    kept: float = 1.0
    # {"node", "weight", "op", "shape": [m, n], "rank"} per factorized layer
    layers: list[dict] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"version": PLAN_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LowRankPlan:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InputError(f"low-rank plan is not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
            raise InputError(f"low-rank plan: expected an object with version {PLAN_VERSION}")
        if data.get("method") not in ("svd", "whitened") or not isinstance(data.get("layers"), list):
            raise InputError("low-rank plan: needs a method (svd or whitened) and a list of layers")
        for entry in data["layers"]:
            if not isinstance(entry, dict) or not {"node", "shape", "rank"} <= set(entry):
                raise InputError("low-rank plan: every layer needs node, shape and rank")
        return cls(data["method"], float(data.get("kept", 1.0)), list(data["layers"]))

    def save(self, path) -> None:
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)

    @classmethod
    def load(cls, path) -> LowRankPlan:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such low-rank plan")
        return cls.from_json(path.read_text())

    def ranks_for(self, layers) -> dict[str, int]:
        """{node: rank} checked against the model's layers (same node, same matrix shape, a rank that pays)."""
        by_node = {layer.node: layer for layer in layers}
        ranks = {}
        for entry in self.layers:
            layer = by_node.get(entry["node"])
            if layer is None:
                raise InputError(f"low-rank plan names {entry['node']!r}, which is no factorizable node of this model")
            if [layer.m, layer.n] != [int(d) for d in entry["shape"]]:
                raise InputError(f"low-rank plan: {entry['node']} has a {layer.m}x{layer.n} weight, the plan "
                                 f"expects {entry['shape'][0]}x{entry['shape'][1]}")
            rank = entry["rank"]
            if not isinstance(rank, int) or rank < 1 or not layer.pays(rank):
                raise InputError(f"low-rank plan: rank {rank!r} of {entry['node']} must be a whole number from 1 "
                                 f"with rank * (m + n) < m * n (below {layer.params / (layer.m + layer.n):.1f})")
            ranks[layer.node] = rank
        return ranks
