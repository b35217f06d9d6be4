"""Channel importance from sample data: the output energy each channel feeds its readers.

Weight magnitude (l1, l2) ranks a channel by what its weights could do; the data say what they do.
For a reader Y = X W, removing input position p removes x_p W[p, :], whose expected energy over the
sample rows is E[x_p^2] ||W[p, :]||^2 (the real tokens' rows where the data pads its sequences,
onnxcomp.measure.padding). A channel's score is that energy summed over its positions and over the
group's readers it can see (a MatMul, a Gemm or an ungrouped Conv reading the weight directly); a
group with no such reader keeps its l2 score.
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import node_key


def activation_scores(graph, groups: list, values_of, data, l2_scores: dict, mask: str | None = None,
                      batch: int = 32) -> dict[int, np.ndarray]:
    """{group id: score per channel} for `groups` (the live ones), from one run over `data` (Samples)."""
    from onnxcomp.graph.convert import to_model
    from onnxcomp.graph.edit import add_outputs
    from onnxcomp.measure.runtime import session
    from onnxcomp.measure.samples import in_batches

    nodes = {node_key(n): n for n in graph.nodes}
    readers = {g.id: [(m, _activation(nodes.get(m.use[0]), m, values_of)) for m in g.members
                      if m.kind == "in" and m.role != "bias"] for g in groups}
    names = sorted({a for pairs in readers.values() for _, a in pairs if a})
    if not names:
        return dict(l2_scores)
    sess = session(add_outputs(to_model(graph), names))
    energy = in_batches(data, batch, lambda calls: _energy(sess, names, calls, graph, mask))
    scores = {}
    for g in groups:
        measured = [(m, a) for m, a in readers[g.id] if a in energy]
        if not measured:
            scores[g.id] = l2_scores[g.id]
            continue
        score = np.zeros(g.channels)
        for m, a in measured:
            w = np.moveaxis(np.asarray(values_of(m.tensor), dtype=np.float64), m.axis, 0)
            per_position = energy[a] * np.sum(w.reshape(len(w), -1) ** 2, axis=1)
            present = m.mapping.present(np.arange(g.channels))
            score[present] += per_position[m.mapping.by_channel(present)].sum(1)
        scores[g.id] = np.sqrt(score)
    return scores


def _activation(node, member, values_of) -> str | None:
    """The input tensor whose channel axis lines up with the member's weight axis, or None."""
    if node is None or member.use[1] != 1 or len(node.inputs) < 2:
        return None
    w = np.asarray(values_of(member.tensor))
    transb = int(node.attrs.get("transB", 0)) if node.op == "Gemm" else 0
    lined_up = ((node.op == "MatMul" and w.ndim == 2 and member.axis == 0)
                or (node.op == "Gemm" and member.axis == (1 if transb else 0) and not node.attrs.get("transA", 0))
                or (node.op == "Conv" and int(node.attrs.get("group", 1)) == 1 and member.axis == 1))
    return node.inputs[0].name if lined_up and node.inputs[1].name == member.tensor else None


def _energy(sess, names: list[str], calls, graph, mask) -> dict[str, np.ndarray]:
    """{tensor: E[x_p^2] per channel position} (MatMul/Gemm: the last axis; Conv: axis 1)."""
    from onnxcomp.measure.padding import row_keep
    from onnxcomp.measure.runtime import run

    conv_inputs = {n.inputs[0].name for n in graph.nodes if n.op == "Conv"}
    sums, rows = {}, {}
    for feeds in calls:
        values = run(sess, feeds, names)
        for name in names:
            x = np.asarray(values[name], dtype=np.float64)
            if name in conv_inputs and x.ndim >= 3:
                x = np.moveaxis(x, 1, -1)
            keep = row_keep(feeds, mask, x.shape) if name not in conv_inputs else None
            flat = x.reshape(-1, x.shape[-1])
            flat = flat if keep is None or len(keep) != len(flat) else flat[keep]
            sums[name] = sums.get(name, 0.0) + np.sum(flat ** 2, axis=0)
            rows[name] = rows.get(name, 0) + len(flat)
    return {name: sums[name] / max(rows[name], 1) for name in sums}
