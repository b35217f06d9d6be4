"""Topological order of a graph (linear in nodes), and the cycle test verification uses."""

from __future__ import annotations

import heapq


def subgraph_reads(node) -> list:
    """Tensors read anywhere inside `node`'s subgraphs (If/Loop/Scan bodies): implicit inputs."""
    import onnx_graphsurgeon as gs

    reads, stack = [], [node]
    while stack:
        current = stack.pop()
        for value in current.attrs.values():
            for sub in (value if isinstance(value, list) else [value]):
                if isinstance(sub, gs.Graph):
                    for inner in sub.nodes:
                        reads.extend(inner.inputs)
                        stack.append(inner)
    return reads


def kahn_order(nodes, producers) -> list[int]:
    """Indices of `nodes` in a dependency order (Kahn's algorithm, original order kept where free);
    shorter than `nodes` when there is a cycle. Linear in nodes + edges."""
    index = {id(n): i for i, n in enumerate(nodes)}
    indegree = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        # A subgraph reading an outer value depends on its producer just like a direct input.
        for t in list(node.inputs) + subgraph_reads(node):
            producer = producers.get(id(t))
            if producer is not None and id(producer) in index:
                indegree[i] += 1
                users[index[id(producer)]].append(i)
    ready = [i for i, d in enumerate(indegree) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users[i]:
            indegree[j] -= 1
            if indegree[j] == 0:
                heapq.heappush(ready, j)
    return order


def has_cycle(nodes, producers) -> bool:
    return len(kahn_order(nodes, producers)) != len(nodes)


def toposort(graph):
    """Sort graph.nodes (and every subgraph's) into dependency order in O(nodes + edges).

    Same order as onnx-graphsurgeon's toposort (stable sort by depth, ties in depth-first
    discovery order), so outputs and golden dumps do not change, but without its cost, which grew
    faster than the graph (measured: 3.1 s at 10k nodes, 20.9 s at 40k). Raises InputError on a cycle.
    """
    import onnx_graphsurgeon as gs

    graphs = [graph]
    while graphs:
        g = graphs.pop()
        g.nodes = _depth_order(g)
        for node in g.nodes:
            for value in node.attrs.values():
                graphs.extend(v for v in (value if isinstance(value, list) else [value]) if isinstance(v, gs.Graph))
    return graph


def _depth_order(g) -> list:
    from onnxcomp.errors import InputError

    producers = {id(t): node for node in g.nodes for t in node.outputs}
    deps_of: dict[int, list] = {}

    def deps(node) -> list:
        found = deps_of.get(id(node))
        if found is None:
            unique = {}
            for t in list(node.inputs) + subgraph_reads(node):
                p = producers.get(id(t))
                if p is not None:
                    unique.setdefault(id(p), p)
            found = deps_of[id(node)] = list(unique.values())
        return found

    level: dict[int, int] = {}
    order = []
    for root in g.nodes:
        if id(root) in level:
            continue
        stack, on_stack = [(root, iter(deps(root)))], {id(root)}
        while stack:
            node, pending = stack[-1]
            nxt = next((d for d in pending if id(d) not in level), None)
            if nxt is not None:
                if id(nxt) in on_stack:
                    raise InputError(f"graph {g.name!r} has a cycle through node {nxt.name or nxt.op!r}")
                on_stack.add(id(nxt))
                stack.append((nxt, iter(deps(nxt))))
                continue
            stack.pop()
            on_stack.discard(id(node))
            level[id(node)] = 1 + max((level[id(d)] for d in deps(node)), default=-1)
            order.append(node)
    return sorted(order, key=lambda n: level[id(n)])
