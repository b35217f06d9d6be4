"""A GroupNorm written out (Reshape [N, G, -1] -> InstanceNormalization -> Reshape back) regrouped from
the kept channels, for GroupNorms whose groups cannot be pruned whole.

After a U-Net's skip Concat a GroupNorm's groups straddle the channels of two groups (224 channels in 32
groups of 7, the first 128 from one group), so neither group can lose whole GroupNorm groups. Instead the
kept channels form new groups: G' = C' / S when the C' kept channels still divide into groups of the old
size S, else gcd(C', G). That changes which channels are normalized together (lossy, like pruning a
LayerNorm over the channels), and it needs the InstanceNormalization's per-group scale and bias to be
uniform (exporters write ones and zeros), so that its first G' entries serve the new groups.
"""

from __future__ import annotations

import math

import numpy as np

from onnxcomp.graph.edit import producer
from onnxcomp.passes.prune.mapping import Member
from onnxcomp.passes.prune.shape_entries import follow_entry, shape_entry


def regrouped_count(channels: int, groups: int, kept: int) -> int:
    """G' for `kept` of `channels` channels normalized in `groups` groups."""
    per = channels // groups
    return kept // per if per and kept % per == 0 else math.gcd(kept, groups)


def opener(back):
    """The Reshape that opens the GroupNorm Reshape `back` closes, or None."""
    norm = producer(back.inputs[0])
    if norm is None or norm.op != "InstanceNormalization":
        return None
    node = producer(norm.inputs[0])
    return node if node is not None and node.op == "Reshape" else None


def pattern(ex, node, m):
    """(InstanceNormalization, Reshape back, group count G) when `node` opens a written-out GroupNorm over
    the group's axis, else None."""
    src, dst = ex.shape(node.inputs[0]), ex.shape(node.outputs[0])
    if m.axis != 1 or src is None or dst is None or len(dst) != 3 or None in src[1:]:
        return None
    readers = list(node.outputs[0].outputs)
    if len(readers) != 1 or readers[0].op != "InstanceNormalization" or readers[0].inputs[0] is not node.outputs[0]:
        return None
    norm = readers[0]
    backs = list(norm.outputs[0].outputs)
    if len(backs) != 1 or backs[0].op != "Reshape" or ex.shape(backs[0].outputs[0]) != src:
        return None
    entry = shape_entry(ex, node.inputs[1], 1, (ex.key(node), 1))
    if entry is None or entry.kind != "const" or entry.value <= 0 or src[1] % entry.value:
        return None
    return norm, backs[0], entry


def regroup(ex, node, m) -> bool:
    """Walk the group through the GroupNorm opened by Reshape `node` (lossy); False if it is not one."""
    found = pattern(ex, node, m)
    if found is None:
        return False
    norm, back, entry = found
    channels = ex.shape(node.inputs[0])[1]
    params = [ex.const_source(t) for t in norm.inputs[1:3]]
    if any(p is None or np.ptp(np.asarray(p[2], dtype=np.float64)) != 0 for p in params):
        ex.refuse(f"{ex.key(norm)}: GroupNorm with per-group scale or bias cannot be regrouped")
    ex.lossy("GroupNorm regrouped over the kept channels")
    ex.add(Member("value", entry.name, index=entry.index, hi=channels, use=entry.use, mapping=m, role="groups"))
    for i, (name, _, _) in enumerate(params, start=1):
        ex.add(Member("param", name, 0, m, (ex.key(norm), i), hi=channels, role="groups"))
    follow_entry(ex, back, 1, 1, back.outputs[0], 1, m, zero_copies=True, minus_one=True)
    ex.visit(node.inputs[0], m, node)
    ex.visit(back.outputs[0], m, back)
    return True
