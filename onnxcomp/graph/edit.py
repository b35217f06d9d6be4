"""Small onnx-graphsurgeon edits used by many passes.

gs keeps producer/consumer links in synchronized lists that support item assignment but
not slice assignment; these helpers do the index-wise edits once, correctly.
"""

from __future__ import annotations

import itertools


def producer(tensor):
    """The node that produces `tensor`, or None for inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def replace_input(node, old, new) -> int:
    """Make `node` read `new` wherever it read `old`; returns how many slots changed."""
    changed = 0
    for i, t in enumerate(node.inputs):
        if t is old:
            node.inputs[i] = new
            changed += 1
    return changed


def replace_uses(old, new, except_node=None) -> int:
    """Point every consumer of `old` (but `except_node`) at `new`."""
    changed = 0
    for consumer in list(old.outputs):
        if consumer is not except_node:
            changed += replace_input(consumer, old, new)
    return changed


def replace_output(node, old, new) -> None:
    for i, t in enumerate(node.outputs):
        if t is old:
            node.outputs[i] = new


class NameGen:
    """Fresh tensor/node names that never collide with the graph's existing ones."""

    def __init__(self, graph):
        self.taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
        self.counter = itertools.count()

    def __call__(self, base: str) -> str:
        name = base
        while name in self.taken:
            name = f"{base}_{next(self.counter)}"
        self.taken.add(name)
        return name


def is_pass_through(node) -> bool:
    """Identity, or an inference Dropout (mask unused, no training_mode input): output == input."""
    if node.op == "Identity":
        return bool(node.inputs and node.outputs)
    if node.op == "Dropout":
        mask_used = len(node.outputs) > 1 and bool(node.outputs[1].outputs)
        return bool(node.inputs and node.outputs) and not mask_used and len(node.inputs) <= 2
    return False
