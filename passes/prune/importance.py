"""Channel importance per group, aggregated over every member, and the choice of what to keep.

l1 / l2: the magnitude of everything a channel owns — its producers' output weights and its
readers' input weights (Torch-Pruning's group magnitude): a channel nobody reads strongly is
cheap to lose even if it is produced with large weights. bn-scale: |gamma| / sqrt(var + eps)
of the BatchNormalizations in the group (how much the channel is amplified); a group whose BN
was folded away falls back to l2 of its producers' weights, which then carry that scale.
"""

from __future__ import annotations

import math

import numpy as np

from onnxcomp.passes.prune.conv_groups import matched
from onnxcomp.passes.prune.groups import ChannelGroup


def _per_channel(values: np.ndarray, member, channels: int, power: int) -> np.ndarray:
    w = np.asarray(values)
    others = tuple(a for a in range(w.ndim) if a != member.axis)
    if member.conv_groups:  # positions are the conv's input channels: conv group k's filters read block k
        w = np.moveaxis(w, member.axis, 1)
        w = w.reshape(member.conv_groups, w.shape[0] // member.conv_groups, w.shape[1], -1)
        others = (1, 3)
    per_position = np.sum(np.abs(w) if power == 1 else np.square(w), axis=others, dtype=np.float64).reshape(-1)
    score = np.zeros(channels)
    present = member.mapping.present(np.arange(channels))
    score[present] = per_position[member.mapping.by_channel(present)].sum(1)
    return score


def channel_importance(group: ChannelGroup, values_of, kind: str = "l2") -> tuple[np.ndarray, str]:
    """Score per channel (higher = more important) and the criterion actually used."""
    c = group.channels
    if kind == "bn-scale":
        scales = [m for m in group.members if m.kind == "param" and m.role == "scale"]
        if scales:
            score = np.zeros(c)
            for m in scales:
                gamma = np.abs(_gather(values_of(m.tensor), m, c))
                var = next((_gather(values_of(v.tensor), v, c, 1.0) for v in group.members
                            if v.kind == "param" and v.use == (m.use[0], 4) and v.mapping == m.mapping), np.ones(c))
                score += gamma / np.sqrt(np.maximum(var, 0) + 1e-5)
            return score, "bn-scale"
        kind = "l2"
        weights = [m for m in group.members if m.kind == "out" and m.role != "bias"]
        used = "l2 of producer weights (no BatchNormalization left in the group)"
    else:
        weights = [m for m in group.members if m.kind in ("out", "in") and m.role not in ("bias",)]
        used = kind
    power = 1 if kind == "l1" else 2
    score = np.zeros(c)
    for m in weights:
        score += _per_channel(values_of(m.tensor), m, c, power)
    return (score if power == 1 else np.sqrt(score)), used


def _gather(values, member, channels: int, missing: float = 0.0) -> np.ndarray:
    """The constant's first entry per channel (`missing` for channels that do not live on it)."""
    v = np.moveaxis(np.asarray(values, dtype=np.float64), member.axis, 0).reshape(-1)
    out = np.full(channels, missing)
    present = member.mapping.present(np.arange(channels))
    out[present] = v[member.mapping.by_channel(present)[:, 0]]
    return out


def unit_for(round_to: int, width: int) -> int:
    """Channels per rounding step: a group of heads of width 16 meets round_to=8 with any head count."""
    return max(1, round_to // math.gcd(round_to, max(1, width)))


def rounded_keep(channels: int, keep: float, round_to: int) -> int:
    """Kept channel count: `keep` rounded to the nearest multiple of round_to, at least one multiple.

    Groups no wider than round_to are left whole (they cannot lose a full multiple).
    """
    if channels <= round_to:
        return channels
    k = int(np.floor(keep / round_to + 0.5)) * round_to
    return int(min(channels, max(round_to, k)))


def keep_uniform(scores: dict[int, np.ndarray], ratio: float, round_to: int,
                 widths: dict[int, int] | None = None) -> dict[int, np.ndarray]:
    """The same ratio in every group; the most important channels survive, in their original order."""
    kept = {}
    for gid, s in scores.items():
        n = rounded_keep(len(s), len(s) * (1.0 - ratio), unit_for(round_to, (widths or {}).get(gid, 1)))
        kept[gid] = _top(s, n)
    return kept


def keep_global(scores: dict[int, np.ndarray], ratio: float, round_to: int,
                widths: dict[int, int] | None = None) -> dict[int, np.ndarray]:
    """One ranking across groups (scores divided by each group's mean, so layers compare)."""
    if not scores:
        return {}
    flat = np.concatenate([s / max(float(np.mean(s)), 1e-12) for s in scores.values()])
    owner = np.concatenate([np.full(len(s), gid) for gid, s in scores.items()])
    n_drop = int(round(ratio * len(flat)))
    dropped = owner[np.argsort(flat, kind="stable")[:n_drop]]
    kept = {}
    for gid, s in scores.items():
        n = rounded_keep(len(s), len(s) - int(np.sum(dropped == gid)), unit_for(round_to, (widths or {}).get(gid, 1)))
        kept[gid] = _top(s, n)
    return kept


def parts_of(group: ChannelGroup) -> list[tuple[int, int]]:
    """The channel windows [lo, hi) that live apart (the parts of a Split): each must keep a channel,
    or a tensor would be left with none."""
    return sorted({(m.mapping.lo, min(m.mapping.hi, group.channels)) for m in group.members
                   if m.kind in ("out", "in", "param") and (m.mapping.lo > 0 or m.mapping.hi < group.channels)})


def keep_each_part(group: ChannelGroup, kept: np.ndarray, score: np.ndarray | None = None) -> np.ndarray:
    """`kept` plus, for every part that would lose all its channels, its best channel."""
    kept = set(int(k) for k in kept)
    for lo, hi in parts_of(group):
        if not any(lo <= k < hi for k in kept):
            inside = np.arange(lo, hi)
            kept.add(int(inside[np.argmax(score[lo:hi])] if score is not None else lo))
    return np.asarray(sorted(kept), dtype=np.int64)


def keep_whole_ties(group: ChannelGroup, kept: np.ndarray, score: np.ndarray) -> np.ndarray:
    """`kept` made of whole tied sets (channels a grouped Conv reads at one place of every conv group, or sets
    balanced over its conv groups): the sets with the best mean score that fit in len(kept), then each part's
    best channel with its set."""
    if not group.ties:
        return kept
    ties = [list(t) for t in group.ties]
    if group.matched:  # sets of one channel per conv group: each conv group's best channels go together
        pooled = {c for cl in group.matched for c in cl}
        ties = [t for t in ties if not set(t) <= pooled] + matched(group.matched, score)
    tied = {c for t in ties for c in t}
    atoms = ties + [[c] for c in range(group.channels) if c not in tied]
    order = sorted(atoms, key=lambda a: -float(np.mean(score[a])))
    chosen, room = [], len(kept)
    for atom in order:
        if len(atom) <= room:
            chosen += atom
            room -= len(atom)
    chosen = keep_each_part(group, np.asarray(chosen or order[0], dtype=np.int64), score)
    atom_of = {c: a for a in atoms for c in a}
    return np.asarray(sorted({c for k in chosen for c in atom_of[int(k)]}), dtype=np.int64)


def _top(score: np.ndarray, n: int) -> np.ndarray:
    order = np.argsort(-score, kind="stable")[:n]
    return np.sort(order)
