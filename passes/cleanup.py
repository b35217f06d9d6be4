"""cleanup: dead nodes, Identity nodes, duplicate initializers, constant subgraphs."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np

from onnxcomp.errors import first_line
from onnxcomp.graph.edit import is_pass_through, producer, replace_output, replace_uses
from onnxcomp.graph.toposort import toposort
from onnxcomp.pipeline.pass_base import Pass, PassContext, PassReport
from onnxcomp.pipeline.registry import register_pass

# Folding these would turn quantized weights back into float ones.
_NEVER_FOLD = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


@dataclass(frozen=True)
class CleanupOptions:
    fold_constants: bool = field(default=True, metadata={"help": "evaluate subgraphs whose inputs are all constant"})
    fold_size_limit_mb: float = field(default=64.0, metadata={"help": "do not materialise folded tensors larger than this"})
    dedupe: bool = field(default=True, metadata={"help": "merge initializers with identical dtype, shape and bytes"})
    remove_unused_inputs: bool = field(default=False, metadata={"help": "also drop graph inputs nothing reads (changes the interface)"})


@register_pass
class Cleanup(Pass):
    """Remove dead nodes, Identity nodes and duplicate initializers; fold constant subgraphs (exact)."""

    name = "cleanup"
    exact = True
    Options = CleanupOptions

    def run(self, graph, ctx: PassContext) -> PassReport:
        report = PassReport()
        nodes_at_start = len(graph.nodes)
        _remove_identities(graph, report)
        if self.options.fold_constants:
            before = len(graph.nodes)
            try:
                _fold_constants(graph, int(self.options.fold_size_limit_mb * 1024**2))
            except Exception as exc:  # onnx-graphsurgeon gives up on some odd graphs: fold nothing, say why
                report.skip("constant folding", f"onnx-graphsurgeon failed ({type(exc).__name__}: "
                                                f"{first_line(exc, '')}); no constants folded")
            report.count("constant_nodes_folded", max(0, before - len(graph.nodes)))
        if self.options.dedupe:
            _merge_duplicate_constants(graph, report)
        before = len(graph.nodes)
        toposort(graph.cleanup(remove_unused_graph_inputs=self.options.remove_unused_inputs))
        report.count("dead_nodes_removed", before - len(graph.nodes))
        report.stats["nodes_removed"] = nodes_at_start - len(graph.nodes)
        report.modified = any(v for k, v in report.stats.items())
        return report


def _remove_identities(graph, report: PassReport) -> None:
    import onnx_graphsurgeon as gs

    graph_inputs = {id(t) for t in graph.inputs}
    graph_outputs = {id(t) for t in graph.outputs}
    for node in list(graph.nodes):
        if not is_pass_through(node):
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if id(dst) in graph_outputs:
            # Keep the graph output's name: make the producer of src write dst directly.
            if isinstance(src, gs.Constant) or id(src) in graph_inputs or id(src) in graph_outputs or not src.inputs:
                continue
            src_producer = producer(src)
            replace_uses(src, dst, except_node=node)
            node.inputs.clear()
            node.outputs.clear()
            replace_output(src_producer, src, dst)
        else:
            replace_uses(dst, src)
            node.outputs.clear()
            node.inputs.clear()
        report.count(f"{node.op.lower()}_removed")
    graph.cleanup()


# Nodes graphsurgeon folds although not every input is constant (shapes of static tensors).
_SHAPE_OPS = frozenset({"Shape", "Size"})


def _has_foldable(graph) -> bool:
    """Whether constant folding could change anything: some node reads only constants, or asks for
    a shape. Checked in one linear walk because graphsurgeon's folding copies and re-sorts the whole
    graph (most of cleanup's time on 50k-node graphs with nothing to fold)."""
    import onnx_graphsurgeon as gs

    for node in graph.nodes:
        if node.op in _NEVER_FOLD:
            continue
        if node.op in _SHAPE_OPS or node.op == "Constant":
            return True
        if node.inputs and all(isinstance(t, gs.Constant) or not t.name for t in node.inputs):
            return True
        if any(isinstance(v, gs.Graph) or (isinstance(v, list) and any(isinstance(x, gs.Graph) for x in v))
               for v in node.attrs.values()):
            return True  # leave subgraph cases to graphsurgeon
    return False


def _fold_constants(graph, size_limit: int) -> None:
    if not _has_foldable(graph):
        return
    gs_logger = logging.getLogger("onnx_graphsurgeon")
    previous = gs_logger.level
    gs_logger.setLevel(logging.ERROR)
    try:
        import onnx_graphsurgeon as gs

        severity = gs.logger.G_LOGGER.severity
        gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL
        try:
            graph.fold_constants(size_threshold=size_limit, error_ok=True,
                                 should_exclude_node=lambda n: n.op in _NEVER_FOLD)
        finally:
            gs.logger.G_LOGGER.severity = severity
        graph.cleanup()
    finally:
        gs_logger.setLevel(previous)


def _constant_key(t) -> tuple:
    from onnx_graphsurgeon.ir.tensor import LazyValues

    values = t._values
    if isinstance(values, LazyValues) and values.tensor.raw_data:
        data = values.tensor.raw_data
    else:
        data = np.ascontiguousarray(t.values).tobytes()
    return (str(t.dtype), tuple(t.shape), hashlib.sha1(data).hexdigest())  # str: bfloat16 is an ONNX enum here


def _merge_duplicate_constants(graph, report: PassReport) -> None:
    import onnx_graphsurgeon as gs

    output_ids = {id(t) for t in graph.outputs}
    canonical: dict[tuple, object] = {}
    seen: set[int] = set()
    for node in graph.nodes:
        for i, t in enumerate(node.inputs):
            if not isinstance(t, gs.Constant) or id(t) in output_ids:
                continue
            if id(t) in seen:
                continue
            key = _constant_key(t)
            keep = canonical.setdefault(key, t)
            if keep is t:
                seen.add(id(t))
                continue
            replace_uses(t, keep)
            report.count("duplicate_initializers_merged")
