"""cleanup: everything that makes a graph smaller without changing what it computes.

Dead nodes, Identity/Dropout and other no-op nodes (noops.py), Constant nodes as initializers,
constant subgraphs evaluated once (folding.py), shape computations folded where shapes are known
(shapes.py, with facts.py's shape inference), per-channel Mul/Add folded into the Conv before them
(fusions.py), duplicate initializers and duplicate nodes (cse.py).
The steps feed each other (a folded shape makes a Reshape a no-op, a merged Shape lets two Gathers
merge), so they run in rounds until one changes nothing. The graph's interface - input and output
names, dtypes and shapes, symbolic dim names included - is exactly what it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onnxcomp.graph.edit import NameGen, live_nodes
from onnxcomp.graph.toposort import toposort
from onnxcomp.pipeline.options import Range
from onnxcomp.pipeline.pass_base import Pass, PassContext, PassReport
from onnxcomp.pipeline.registry import register_pass

from .cse import dedupe_nodes
from .facts import ShapeFacts, infer_facts
from .folding import (
    FoldLimits,
    constants_to_initializers,
    fold_constant_nodes,
    merge_duplicate_constants,
    splat_bytes,
)
from .fusions import fuse_channel_constants
from .noops import remove_noops, remove_pass_through, wants_facts
from .shapes import fold_shapes

# Each round re-reads shapes; past a few the rounds find nothing on real models (measured).
_MAX_ROUNDS = 4


@dataclass(frozen=True)
class CleanupOptions:
    fold_constants: bool = field(default=True, metadata={"help": "evaluate subgraphs whose inputs are all constant"})
    fold_size_limit_mb: float = field(default=64.0, metadata={
        "help": "do not materialise folded tensors larger than this", "range": Range(0)})
    splat_limit_kb: float = field(default=65536.0, metadata={
        "help": "a constant that repeats one value and is larger than this stays a ConstantOfShape "
                "(one node, not its bytes in the file: zero caches, masks); the default is the folding "
                "limit. Weights are not splats kept compact unless materialise_weights=false",
        "range": Range(0)})
    materialise_weights: bool = field(default=True, metadata={
        "help": "a constant read as the weight or bias of a Conv/Gemm/MatMul becomes an initializer "
                "whatever splat_limit_kb and fold_size_limit_mb say: pruning, quantization and "
                "sparsification rewrite weights only as initializers (dummy weights then cost their bytes)"})
    fold_dequantization: bool = field(default=True, metadata={
        "help": "fold Casts of 8-bit integer weights to float, as onnxslim and ONNX Runtime's session do "
                "(fewer nodes, 4x those weights' bytes in the file; said in one line); false keeps them 8-bit"})
    dedupe: bool = field(default=True, metadata={"help": "merge initializers with identical dtype, shape and bytes"})
    remove_unused_inputs: bool = field(default=False, metadata={"help": "also drop graph inputs nothing reads (changes the interface)"})


@register_pass
class Cleanup(Pass):
    """Remove dead and no-op nodes, fold constants and known shapes, merge duplicates (exact)."""

    name = "cleanup"
    exact = True
    Options = CleanupOptions

    def run(self, graph, ctx: PassContext) -> PassReport:
        report = PassReport()
        nodes_at_start = len(graph.nodes)
        interface = _interface(graph)
        # Dead on arrival (what the rules leave behind is counted as theirs).
        report.count("dead_nodes_removed", nodes_at_start - len(live_nodes(graph)))
        names = _Names(graph)
        constants_to_initializers(graph, report)
        remove_pass_through(graph, report)
        limits = FoldLimits(size=int(self.options.fold_size_limit_mb * 1024**2),
                            splat=int(self.options.splat_limit_kb * 1024),
                            dequantization=self.options.fold_dequantization,
                            weights=self.options.materialise_weights)
        facts = None
        for round_ in range(_MAX_ROUNDS):
            # Later rounds re-run only ONNX's inference: the symbolic facts still hold where names remain.
            if wants_facts(graph):
                facts = _facts(graph, report, facts, symbolic=round_ == 0)
            facts = facts or ShapeFacts()  # facts of earlier rounds still hold where names remain
            changed = remove_noops(graph, facts, report, names)
            if self.options.fold_constants:
                changed += fold_shapes(graph, facts, report, names)
                changed += fold_constant_nodes(graph, limits, facts, report, names)
            changed += fuse_channel_constants(graph, facts, report, names)
            if self.options.dedupe:  # merged initializers only enable node merges, which come next
                merge_duplicate_constants(graph, report)
                changed += dedupe_nodes(graph, report)
            if not changed:
                break
            toposort(graph.cleanup())
        toposort(graph.cleanup(remove_unused_graph_inputs=self.options.remove_unused_inputs))
        _restore(interface)
        report.skipped = list({(s.name, s.reason): s for s in report.skipped}.values())  # rounds repeat them
        report.stats["nodes_removed"] = nodes_at_start - len(graph.nodes)
        _say_dequantized(report, ctx)
        splats = sum(1 for n in graph.nodes if splat_bytes(n) > limits.splat)
        if splats:
            report.stats["splats_kept_compact"] = splats
        report.modified = any(v for v in report.stats.values())
        return report


def _say_dequantized(report: PassReport, ctx: PassContext) -> None:
    """Folding 8-bit weights to float grows the file: the user hears it, with the way back."""
    folded = report.stats.get("dequantizations_folded", 0)
    if folded:
        added = report.stats.get("dequantized_bytes_added", 0) / 1024**2
        ctx.say(f"cleanup: {folded} dequantization(s) of 8-bit weights folded to float (+{added:.1f} MB in the "
                "file); cleanup{fold_dequantization=false} keeps them 8-bit")


def _facts(graph, report: PassReport, previous: ShapeFacts | None, symbolic: bool) -> ShapeFacts:
    from onnxcomp.errors import InputError
    from onnxcomp.graph.convert import to_model

    graph.cleanup()  # emptied nodes would not export as valid ONNX
    try:
        facts = infer_facts(to_model(graph), previous, symbolic)
    except InputError as exc:
        report.skip("shape inference", f"{exc}; shapes unknown, shape rules skipped")
        return previous or ShapeFacts()
    for note in facts.notes:
        if not any(s.name == "shape inference" and s.reason == note for s in report.skipped):
            report.skip("shape inference", note)
    return facts


class _Names:
    """A NameGen made on first use (collecting the graph's names costs a walk of every tensor)."""

    def __init__(self, graph):
        self.graph, self.names = graph, None

    def __call__(self, base: str) -> str:
        if self.names is None:
            self.names = NameGen(self.graph)
        return self.names(base)


def _interface(graph) -> list:
    return [(t, t.dtype, None if t.shape is None else list(t.shape)) for t in list(graph.inputs) + list(graph.outputs)]


def _restore(interface: list) -> None:
    """Put back every graph input's and output's dtype and shape (graphsurgeon's folding and
    rewiring may have touched them; the interface is not cleanup's to change)."""
    import onnx_graphsurgeon as gs

    for t, dtype, shape in interface:
        if isinstance(t, gs.Variable):
            t.dtype, t.shape = dtype, shape
