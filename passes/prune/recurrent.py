"""Rules for LSTM, GRU and RNN nodes: the hidden size as a group, the input size as a reader.

Hidden unit u of a recurrent node owns row u of every gate block of W and R, its entries of
both bias halves of B (and of the LSTM peepholes P), column u of R (what the other units read
of it, so the unit is coupled with itself through time) and entry u of the states; both
directions of a bidirectional node lose unit u together, as they share `hidden_size`.
The input features are read through W's last axis.
"""

from __future__ import annotations

from dataclasses import replace

from onnxcomp.passes.prune.mapping import Member
from onnxcomp.passes.prune.weighted import weight

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
Y, Y_H, Y_C = 0, 1, 2  # outputs: Y [T, D, N, H] (layout 1: [N, T, D, H]); Y_h, Y_c [D, N, H] (layout 1: [N, D, H])
INITIAL = (5, 6)  # initial_h, initial_c: [D, N, H]
HIDDEN_AXIS = {Y: 3, Y_H: 2, Y_C: 2}


def recurrent(ex, node, side, index, m):
    w = weight(ex, node, 1, "W")
    if side == "in" and index == 0:
        if m.axis != 2:
            ex.refuse(f"{ex.key(node)}: {node.op} reads the group on axis {m.axis}, not the features")
        ex.add_const("in", w, 2, m, node, 1)
        return
    if side == "in" and index not in INITIAL:
        ex.refuse(f"{ex.key(node)}: channels reach {node.op} through input {index}")
    if m.axis != (2 if side == "in" else HIDDEN_AXIS[index]):
        ex.refuse(f"{ex.key(node)}: {node.op} state reached on axis {m.axis}")
    if m.repeat != 1:
        ex.refuse(f"{ex.key(node)}: {node.op} hidden units reached in repeats")
    hidden(ex, node, m)


def hidden(ex, node, m):
    gates, size = GATES[node.op], int(node.attrs.get("hidden_size", 0))
    r = weight(ex, node, 2, "R")
    w = weight(ex, node, 1, "W")
    rows = replace(m, axis=1, repeat=gates, period=size)
    for const, i in ((w, 1), (r, 2)):
        ex.add_const("out", const, 1, rows, node, i)
    ex.add_const("in", r, 2, m, node, 2)
    if len(node.inputs) > 3 and node.inputs[3].name:
        ex.add_const("out", weight(ex, node, 3, "B"), 1, replace(rows, repeat=2 * gates), node, 3, role="bias")
    if node.op == "LSTM" and len(node.inputs) > 7 and node.inputs[7].name:
        ex.add_const("param", weight(ex, node, 7, "P"), 1, replace(rows, repeat=3), node, 7)
    for i in INITIAL[:2 if node.op == "LSTM" else 1]:
        if len(node.inputs) > i and node.inputs[i].name:
            const = ex.const_source(node.inputs[i])
            if const is not None:
                ex.add_const("param", const, 2, m, node, i)
            else:
                ex.visit(node.inputs[i], m.on_axis(2), node)
    ex.add(Member("attr", ex.key(node), mapping=m.on_axis(0), use=(ex.key(node), -1), role="hidden_size"))
    first = next((k for k, t in enumerate(node.outputs) if t.name), None)
    if first is None:
        ex.refuse(f"{ex.key(node)}: {node.op} without outputs")
    ex.producer(node, size, m.on_axis(HIDDEN_AXIS[first]), output=first)
    for k, t in enumerate(node.outputs):
        if t.name:
            ex.visit(t, m.on_axis(HIDDEN_AXIS[k]), node)


def output_channels(ex, node):
    """(hidden size, first output, its hidden axis): where a recurrent node starts a group."""
    if len(node.inputs) < 3 or ex.const_source(node.inputs[1]) is None or ex.const_source(node.inputs[2]) is None:
        return None
    first = next((k for k, t in enumerate(node.outputs) if t.name), None)
    size = int(node.attrs.get("hidden_size", 0))
    return None if first is None or size <= 0 else (size, first, HIDDEN_AXIS[first])
