"""The lint-rule contract for `onnxcomp check`: rules register by id and read a ModelIndex."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

from onnxcomp.graph.weights import in_store, read

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # error: the target rejects it; warning: slow or inaccurate; info: a note
    node: str
    message: str

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"{self.severity.upper():7} {self.rule:8} {self.node}: {self.message}"


@dataclass(frozen=True)
class Rule:
    id: str
    targets: tuple[str, ...]
    severity: str
    summary: str
    fn: Callable


_RULES: dict[str, Rule] = {}


def rule(rule_id: str, targets: Iterable[str], severity: str, summary: str):
    """Register a check. `severity` is the default for the findings it yields as (node, message)."""
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}")

    def wrap(fn):
        _RULES[rule_id] = Rule(rule_id, tuple(targets), severity, summary, fn)
        return fn

    return wrap


def all_rules() -> dict[str, Rule]:
    """Every registered rule: the technique wings' rules register when the passes are loaded."""
    from onnxcomp.pipeline.registry import load_passes

    load_passes()
    return dict(sorted(_RULES.items()))


class ModelIndex:
    """Producers, consumers and initializers of a ModelProto, built once (O(nodes))."""

    def __init__(self, model, base_dir: str = ""):
        self.model = model
        # Folder that external-data locations are relative to: the model is indexed without its
        # weights loaded, and a rule reads one only when it asks for that constant.
        self.base_dir = base_dir
        self.graph = model.graph
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.producer = {}
        self.consumers: dict[str, list] = {}
        for node in model.graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.opset = {(o.domain or "ai.onnx"): o.version for o in model.opset_import}
        self.graph_outputs = {o.name for o in model.graph.output}
        self.cache: dict = {}  # per-model results several rules share (e.g. the 2:4 weight survey)
        self._constants: dict = {}

    def constant(self, name: str):
        """The numpy value of an initializer or Constant node output, else None.

        Converted once per name (every Q/DQ rule asks for the same scales and weights); the
        array is shared, so rules must not modify it."""
        if name in self._constants:
            return self._constants[name]
        tensor = self.initializers.get(name)
        if tensor is not None and in_store(tensor):
            return read(tensor)  # weights kept on disk are read each time, never held (graph/weights.py)
        self._constants[name] = self._convert(name)
        return self._constants[name]

    def _convert(self, name: str):
        from onnx import numpy_helper

        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name], self.base_dir)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t, self.base_dir)
        return None
