"""Channel importance from sample data: the output energy each channel feeds its readers.

Weight magnitude (l1, l2) ranks a channel by what its weights could do; the data say what they do.
For a reader Y = X W, removing input position p removes x_p W[p, :], whose expected energy over the
sample rows is E[x_p^2] ||W[p, :]||^2 (the real tokens' rows where the data pads its sequences,
onnxcomp.measure.padding). A channel's score sums, over its positions and over the group's readers it
can see (a MatMul, a Gemm or an ungrouped Conv reading the weight directly), that energy as a share
of the reader's output energy (the sum over all its input positions). Shares, not raw energies: readers
of one group can see it at scales far apart (a U-Net's skip 1x1 Conv reads the raw residual stream,
energy 1e10-1e19 on terrain_unet, its other readers the same channels behind a GroupNorm, energy ~1);
summed raw, the unnormalised reader alone ranks the channels, though a norm after each reader makes
every reader's relative loss what counts. With one reader the share ranks as the energy does. A
group with no such reader keeps its l2 score. With refit asked too, the one run over the data gathers
the readers' full input moments and the energy is their diagonal (input_statistics.py).
"""

from __future__ import annotations

import numpy as np

from onnxcomp.graph.edit import node_key


def activation_scores(graph, groups: list, values_of, inputs, l2_scores: dict,
                      with_moments: bool = False) -> dict[int, np.ndarray]:
    """{group id: score per channel} for `groups` (the live ones), from `inputs` (input_statistics.ReaderInputs
    of `graph`): one run over the data, which also gathers the MatMul/Gemm inputs' full moments
    `with_moments` (the reader refit will want them)."""
    nodes = {node_key(n): n for n in graph.nodes}
    readers = {g.id: [(m, _activation(nodes.get(m.use[0]), m, values_of)) for m in g.members
                      if m.kind == "in" and m.role != "bias"] for g in groups}
    names = sorted({a for pairs in readers.values() for _, a in pairs if a})
    if not names:
        return dict(l2_scores)
    conv_inputs = {n.inputs[0].name for n in graph.nodes if n.op == "Conv"}
    if with_moments:
        inputs.gather(moments=[a for a in names if a not in conv_inputs], energy=names, conv_inputs=conv_inputs)
    energy = inputs.energy(names, conv_inputs)
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
            per_position = per_position / max(float(per_position.sum()), 1e-300)  # the reader's output share
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

