"""Structural verification of a gs.Graph, in one linear walk."""

from __future__ import annotations

from onnxcomp.graph.toposort import has_cycle


def checker_problem(model) -> str | None:
    """First line of the ONNX checker's complaint about a ModelProto (full_check off), None when it passes."""
    import onnx

    from onnxcomp.errors import first_line
    from onnxcomp.graph.weights import staged

    with staged(model) as path:  # weights on disk are checked where they are (by path), not read in
        try:
            onnx.checker.check_model(str(path) if path is not None else model, full_check=False)
        except Exception as exc:
            return first_line(exc)
    return None


def structural_problems(graph) -> list[str]:
    import onnx_graphsurgeon as gs

    problems: list[str] = []
    tensors: dict[str, object] = {}

    def claim(t) -> None:
        if t is None or t.name == "":
            return
        seen = tensors.setdefault(t.name, t)
        if seen is not t:
            problems.append(f"two different tensors share the name {t.name!r}")

    for t in list(graph.inputs) + list(graph.outputs):
        claim(t)
    node_names: set[str] = set()
    producers: dict[int, object] = {}
    for node in graph.nodes:
        if node.name:
            if node.name in node_names:
                problems.append(f"node name {node.name!r} is used twice")
            node_names.add(node.name)
        for t in node.inputs:
            claim(t)
        for t in node.outputs:
            claim(t)
            if t.name and id(t) in producers:
                problems.append(f"tensor {t.name!r} is produced by two nodes")
            producers[id(t)] = node

    graph_inputs = {id(t) for t in graph.inputs}
    for node in graph.nodes:
        for t in node.inputs:
            if t.name == "" or isinstance(t, gs.Constant):
                continue
            if id(t) not in producers and id(t) not in graph_inputs:
                problems.append(f"input {t.name!r} of node {node.name or node.op!r} is produced by nothing")
    for t in graph.outputs:
        if not isinstance(t, gs.Constant) and id(t) not in producers and id(t) not in graph_inputs:
            problems.append(f"graph output {t.name!r} is produced by nothing")

    visible = set(producers) | graph_inputs
    for node in graph.nodes:
        problems.extend(_subgraph_problems(node, visible))
    if has_cycle(graph.nodes, producers):
        problems.append("the graph has a cycle")
    problems.extend(_shape_problems(graph))
    return problems[:20]


def _subgraph_problems(node, visible: set[int]) -> list[str]:
    """Inputs inside If/Loop/Scan bodies must come from the body, its inputs, or an enclosing scope."""
    import onnx_graphsurgeon as gs

    problems = []
    for value in node.attrs.values():
        for sub in (value if isinstance(value, list) else [value]):
            if not isinstance(sub, gs.Graph):
                continue
            inner = set(visible) | {id(t) for t in sub.inputs} | {id(t) for n in sub.nodes for t in n.outputs}
            for n in sub.nodes:
                for t in n.inputs:
                    if t.name and not isinstance(t, gs.Constant) and id(t) not in inner:
                        problems.append(f"input {t.name!r} of node {n.name or n.op!r} inside {node.op} "
                                        f"{node.name!r} is produced by nothing")
                problems.extend(_subgraph_problems(n, inner))
    return problems


def _shape_problems(graph) -> list[str]:
    import onnx_graphsurgeon as gs

    problems = []
    for node in graph.nodes:
        ins = node.inputs
        label = node.name or node.op
        if node.op == "Conv" and len(ins) >= 2 and isinstance(ins[1], gs.Constant):
            w = ins[1].shape
            if len(w) < 3:
                problems.append(f"Conv {label}: weight rank {len(w)} < 3")
                continue
            if len(ins) >= 3 and isinstance(ins[2], gs.Constant) and tuple(ins[2].shape) != (w[0],):
                problems.append(f"Conv {label}: bias shape {tuple(ins[2].shape)} does not match {w[0]} output channels")
            x = ins[0].shape
            group = node.attrs.get("group", 1)
            if x is not None and len(x) == len(w) and isinstance(x[1], int) and x[1] != w[1] * group:
                problems.append(f"Conv {label}: input has {x[1]} channels, weight expects {w[1] * group}")
        elif node.op == "BatchNormalization" and len(ins) >= 5:
            sizes = {tuple(t.shape) for t in ins[1:5] if isinstance(t, gs.Constant)}
            if len(sizes) > 1:
                problems.append(f"BatchNormalization {label}: scale/bias/mean/var shapes differ {sorted(sizes)}")
        elif node.op == "Gemm" and len(ins) >= 2 and isinstance(ins[1], gs.Constant) and len(ins[1].shape) != 2:
            problems.append(f"Gemm {label}: weight is not 2-D")
    return problems
