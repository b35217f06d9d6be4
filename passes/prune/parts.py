"""Rules for ops that cut an axis into parts or join parts into one: Split, Slice, Concat.

Split forward and Concat backward cut (each part holds some of the group's positions, as a
mapping of its own: a window of the channels, or some of the repeats); Split backward and
Concat forward join (a part's positions move by the part's start). A cut that would split a
block of positions between parts is refused. Split sizes and Slice bounds are rewritten.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnxcomp.passes.prune.mapping import Mapping, Member, Unit
from onnxcomp.passes.prune.shape_entries import dim, rank

_BIG = np.int64(2**31)


def cut(ex, node, m: Mapping, parts: list[tuple[int, int]]) -> list[tuple[int, Mapping]]:
    """(part index, mapping within the part) for every part [start, start + size) holding group positions."""
    channels = np.arange(ex.channels)
    rows = m.by_channel(channels)
    present = m.present(channels)
    found = []
    for k, (start, size) in enumerate(parts):
        inside = (rows >= start) & (rows < start + size)
        if not inside.any():
            continue
        want = _pairs(np.repeat(present, rows.shape[1])[inside.reshape(-1)], rows[inside] - start)
        for candidate in _candidates(m, start, inside, present, ex.channels):
            if np.array_equal(want, _held(candidate, channels)):
                found.append((k, candidate))
                break
        else:
            pieces = _repeat_windows(m, start, size, channels)
            got = np.sort(np.concatenate([_held(p, channels) for p in pieces])) if pieces else None
            if got is None or not np.array_equal(want, got):
                ex.refuse(f"{ex.key(node)}: {node.op} cuts through the group's channel blocks")
            found += [(k, p) for p in pieces]
    return found


def _held(m: Mapping, channels: np.ndarray) -> np.ndarray:
    got = m.by_channel(channels)
    return _pairs(np.repeat(m.present(channels), got.shape[1]), got.reshape(-1))


def _repeat_windows(m: Mapping, start: int, size: int, channels: np.ndarray) -> list[Mapping]:
    """The part as several pieces when one mapping cannot describe it: per repeat, the window of channels
    whose blocks lie inside; runs of repeats with the same window make one piece. A ShuffleNet stage's
    stream [112 from a grouped conv, 24 from the pooled shortcut] cut by the Concat that made it: the
    first part holds three repeats whole and the start of the fourth, the second part the rest."""
    present = m.present(channels)
    windows = []
    for r in range(m.repeat):
        first = m.offset * m.block + r * m.period - start  # position of channel 0's block in the part
        if first % m.block:
            return []
        inside = [int(c) for c in present if 0 <= first + c * m.block and first + (c + 1) * m.block <= size]
        if inside and inside != list(range(inside[0], inside[-1] + 1)):
            return []
        windows.append((first // m.block, (inside[0], inside[-1] + 1) if inside else None))
    pieces = []
    for r, (offset, window) in enumerate(windows):
        if window is None:
            continue
        if pieces and pieces[-1][2] == window and pieces[-1][0] + pieces[-1][1] == r:
            pieces[-1][1] += 1
            continue
        pieces.append([r, 1, window, offset])
    return [replace(m, offset=offset, repeat=n, period=m.period if n > 1 else 0, lo=lo, hi=hi)
            for _, n, (lo, hi), offset in pieces]


def _pairs(channels: np.ndarray, positions: np.ndarray) -> np.ndarray:
    return np.sort(channels.astype(np.int64) * _BIG + positions.astype(np.int64))


def _candidates(m: Mapping, start: int, inside: np.ndarray, present: np.ndarray, channels: int):
    """Mappings that may describe the group's positions inside a part, relative to its start:
    the channels that live there (a window), or the repeats that do."""
    if start % m.block == 0:
        held = present[inside.any(1)]
        lo, hi = max(m.lo, int(held.min())), min(m.hi, int(held.max()) + 1)
        if lo <= 0 and hi >= channels:
            lo, hi = m.lo, m.hi
        yield replace(m, offset=m.offset - start // m.block, lo=lo, hi=hi)
    if m.repeat > 1:
        per_repeat = inside.reshape(len(present), m.repeat, m.block).all((0, 2))
        reps = np.flatnonzero(per_repeat)
        if reps.size and reps[-1] - reps[0] + 1 == reps.size:
            shift = int(reps[0]) * m.period - start
            if shift % m.block == 0:
                n = int(reps.size)
                yield replace(m, offset=m.offset + shift // m.block, repeat=n, period=m.period if n > 1 else 0)


def join(ex, node, m: Mapping, start: int) -> Mapping:
    moved = m.shifted(start)
    if moved is None:
        ex.refuse(f"{ex.key(node)}: {node.op} offset {start} is not a multiple of the block {m.block}")
    return moved


def concat(ex, node, side, index, m):
    r = rank(ex, node.outputs[0])
    axis = int(node.attrs.get("axis", 0)) % r
    if axis != m.axis:  # concatenation along another axis: all inputs share the channels
        for t in node.inputs:
            ex.visit(t, m, node)
        ex.visit(node.outputs[0], m, node)
        return
    sizes = [dim(ex, t, axis) for t in node.inputs]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    if side == "in":
        ex.visit(node.outputs[0], join(ex, node, m, starts[index]), node)
        return
    for k, part in cut(ex, node, m, list(zip(starts, sizes))):
        ex.visit(node.inputs[k], part, node)


def split(ex, node, side, index, m):
    r = rank(ex, node.inputs[0])
    axis = int(node.attrs.get("axis", 0)) % r
    if axis != m.axis:
        for t in [node.inputs[0], *node.outputs]:
            ex.visit(t, m, node)
        return
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach Split through its sizes")
    source, sizes = _split_sizes(ex, node, axis)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
    if side == "out":
        whole = join(ex, node, m, starts[index])
        _size_member(ex, node, source, index, starts, sizes, whole, m)
        ex.visit(node.inputs[0], whole, node)
        return
    if len(set(sizes)) == 1 and len(sizes) > 1 and m == Mapping(m.axis):
        ex.hint(Unit(repeat=len(sizes)))  # an LSTM's gates: hidden unit u is channel u of every part
    for k, part in cut(ex, node, m, list(zip(starts, sizes))):
        _size_member(ex, node, source, k, starts, sizes, m, part)
        ex.visit(node.outputs[k], part, node)


def _split_sizes(ex, node, axis):
    n = len(node.outputs)
    if len(node.inputs) > 1 and node.inputs[1].name:
        source = ex.const_source(node.inputs[1])
        if source is None:
            ex.refuse(f"{ex.key(node)}: Split sizes are computed at run time")
        return source, [int(s) for s in np.reshape(source[2], -1)]
    if node.attrs.get("split"):
        ex.refuse(f"{ex.key(node)}: Split sizes given as an attribute")
    total = dim(ex, node.inputs[0], axis)
    if total % n:
        ex.refuse(f"{ex.key(node)}: uneven Split without explicit sizes")
    return None, [total // n] * n


def _size_member(ex, node, source, k, starts, sizes, whole: Mapping, part: Mapping):
    """Split sizes[k] shrinks by the group's removed positions in part k; implicit (equal) sizes need
    every part to shrink alike (checked over all pieces once the walk is over)."""
    lo, hi = starts[k], starts[k] + sizes[k]
    if source is not None:
        ex.add(Member("value", source[0], index=k, lo=lo, hi=hi, use=(ex.key(node), 1), mapping=whole))
    else:
        ex.even_parts(node, whole.axis, starts, sizes)


def slice_(ex, node, side, index, m):
    if side == "in" and index != 0:
        ex.refuse(f"{ex.key(node)}: channels reach Slice through its parameters")
    r = rank(ex, node.inputs[0])
    sources = [ex.const_source(t) if t.name else None for t in node.inputs[1:5]]
    params = [None if src is None else np.reshape(src[2], -1) for src in sources]
    starts, ends = params[0], params[1]
    given_axes = len(params) > 2 and params[2] is not None
    if given_axes and m.axis not in [int(a) % r for a in params[2]]:  # e.g. pe[:, :seq] with seq read at run time
        _other_axes(ex, node, side, m)
        return
    if starts is None or ends is None:
        ex.refuse(f"{ex.key(node)}: Slice bounds are computed at run time")
    axes = [int(a) % r for a in params[2]] if given_axes else list(range(len(starts)))
    if m.axis not in axes:
        _other_axes(ex, node, side, m)
        return
    k = axes.index(m.axis)
    steps = params[3] if len(params) > 3 and params[3] is not None else None
    if steps is not None and int(steps[k]) != 1:
        ex.refuse(f"{ex.key(node)}: Slice with step {int(steps[k])} on the channel axis")
    n = dim(ex, node.inputs[0], m.axis)
    given = (int(starts[k]), int(ends[k]))
    start, end = (min(max(v + n if v < 0 else v, 0), n) for v in given)
    whole = join(ex, node, m, start) if side == "out" else m
    for slot, value, at in ((1, given[0], start), (2, given[1], end)):
        if -n <= value <= n:  # past either end, a bound is clamped and stays right after pruning
            _bound_member(ex, node, sources[slot - 1][0], k, slot, whole, at, from_end=value < 0)
    if side == "out":
        ex.visit(node.inputs[0], whole, node)
        return
    size = end - start
    if m == Mapping(m.axis) and 0 < size < n and n % size == 0 and start % size == 0:
        ex.hint(Unit(repeat=n // size))  # a GRU cell's gates sliced from one Gemm: unit u is channel u of each
    for _, part in cut(ex, node, m, [(start, end - start)]):
        ex.visit(node.outputs[0], part, node)


def _other_axes(ex, node, side, m):
    """A Slice along other axes: the channels pass; a sliced constant (a positional table) is a parameter."""
    if side == "in":
        ex.visit(node.outputs[0], m, node)
        return
    const = ex.const_source(node.inputs[0])
    if const is not None:
        ex.add_const("param", const, m.axis, m, node, 0)
    else:
        ex.visit(node.inputs[0], m, node)


def _bound_member(ex, node, name, k, slot, whole, at, from_end):
    """A Slice bound at position `at`: it moves down by the removed positions before it, or, counted from
    the end (negative), up by the removed positions from it on."""
    lo, hi, sign = (at, 2**62, -1) if from_end else (0, at, 1)
    ex.add(Member("value", name, index=k, lo=lo, hi=hi, use=(ex.key(node), slot), mapping=whole, sign=sign))
