"""The fallback report: which parts of a model a TensorRT release would take, computed from the
check's findings without TensorRT (what Polygraphy's `inspect capability` asks the real parser).

The partition follows onnx-tensorrt's supportsModel: nodes in topological order, a node the
parser rejects (an error finding names it) or leaves out (data-dependent output shapes, from
10.0) ends the current TensorRT subgraph, and consecutive such nodes form one fallback
partition: what needs a plugin or another runtime (ONNX Runtime's CPU provider, say).
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

from onnxcomp.checks import tensorrt_table
from onnxcomp.passes.qdq.rule_facts import node_id


@dataclass
class Partition:
    runtime: str                                   # "tensorrt" or "fallback"
    nodes: list[str] = field(default_factory=list)
    ops: Counter = field(default_factory=Counter)
    reasons: list[dict] = field(default_factory=list)  # fallback: {"node", "rule", "message"}, one per node

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "nodes": list(self.nodes), "ops": dict(self.ops.most_common()),
                "reasons": list(self.reasons)}


@dataclass
class Capability:
    trt_version: str
    model_errors: list[str]   # errors on the whole model (opset, network I/O types): the parser stops there
    partitions: list[Partition]

    @property
    def subgraphs(self) -> list[Partition]:
        return [p for p in self.partitions if p.runtime == "tensorrt"]

    def as_dict(self) -> dict:
        taken = sum(len(p.nodes) for p in self.subgraphs)
        total = sum(len(p.nodes) for p in self.partitions)
        return {"trt_version": self.trt_version, "parses": not self.model_errors, "model_errors": self.model_errors,
                "nodes": total, "tensorrt_nodes": taken, "fallback_nodes": total - taken,
                "partitions": [p.as_dict() for p in self.partitions]}

    def text(self) -> str:
        from onnxcomp.report import table

        rows = []
        for i, p in enumerate(self.partitions, 1):
            span = p.nodes[0] if len(p.nodes) == 1 else f"{p.nodes[0]} .. {p.nodes[-1]}"
            if p.runtime == "tensorrt":
                what = ", ".join(f"{op} {n}" for op, n in p.ops.most_common(4)) + (" ..." if len(p.ops) > 4 else "")
            else:
                first = p.reasons[0]
                what = f"{first['rule']} {first['message']}"
                what = what if len(what) <= 90 else what[:87] + "..."
            rows.append([i, p.runtime, len(p.nodes), span if len(span) <= 48 else span[:45] + "...", what])
        summary = self.as_dict()
        lines = [table(["#", "runs on", "nodes", "nodes from .. to", "ops (tensorrt) / why (fallback)"], rows)]
        lines += [f"model: {m}" for m in self.model_errors]
        lines.append(f"TensorRT {self.trt_version} would take {summary['tensorrt_nodes']} of {summary['nodes']} "
                     f"nodes in {len(self.subgraphs)} subgraph(s); {summary['fallback_nodes']} node(s) need a plugin "
                     "or another runtime" + ("; the parser rejects the model as a whole (above)"
                                             if self.model_errors else ""))
        return "\n".join(lines)


def topological(nodes) -> list:
    """`nodes` (NodeProtos of one graph) in dependency order, file order kept where free."""
    produced = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    users: list[list[int]] = [[] for _ in nodes]
    waiting = [0] * len(nodes)
    for i, node in enumerate(nodes):
        for producer in {produced[t] for t in node.input if t in produced and produced[t] != i}:
            users[producer].append(i)
            waiting[i] += 1
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users[i]:
            waiting[j] -= 1
            if not waiting[j]:
                heapq.heappush(ready, j)
    placed = set(order)
    order += [i for i in range(len(nodes)) if i not in placed]  # a cycle: keep the rest as written
    return [nodes[i] for i in order]


def capability(model, findings, trt_version: str | None = None) -> Capability:
    """Partition `model`'s main graph by `findings` (run_checks for target tensorrt)."""
    release = tensorrt_table.release(trt_version)
    blocked: dict[str, dict] = {}
    model_errors = []
    for f in findings:
        if f.severity != "error" or not f.rule.startswith("TRT-"):
            continue  # onnxcomp's own rules (GEN-) say nothing about the parser
        if f.node == "model" or f.rule == "TRT-38":  # the opset, the network's inputs and outputs
            model_errors.append(f"{f.rule} {f.message}")
        else:
            blocked.setdefault(f.node, {"node": f.node, "rule": f.rule, "message": f.message})
    partitions: list[Partition] = []
    for node in topological(list(model.graph.node)):
        name = node_id(node)
        reason = blocked.get(name)
        if reason is None and node.op_type in release.deferred and (node.domain or "ai.onnx") == "ai.onnx":
            reason = {"node": name, "rule": "TRT-39", "message": f"{node.op_type} has a data-dependent output "
                                                                 "shape: supportsModel leaves it out"}
        runtime = "tensorrt" if reason is None else "fallback"
        if not partitions or partitions[-1].runtime != runtime:
            partitions.append(Partition(runtime))
        part = partitions[-1]
        part.nodes.append(name)
        part.ops[node.op_type] += 1
        if reason is not None:
            part.reasons.append(reason)
    return Capability(release.version, model_errors, partitions)
