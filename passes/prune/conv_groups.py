"""Channels a grouped Conv reads at different places of its conv groups, removed in balanced sets.

A ShuffleNet bottleneck whose conv groups hold a number of filters that the shuffle's group count does not
divide (the model zoo's stage 2: 4 conv groups of 34): the same filter j of every conv group becomes the
block [4j, 4j + 4) after the shuffle, and the next grouped conv reads blocks 0-7 in conv group 0, block 8
half in conv group 0 and half in conv group 1, and so on. That conv keeps `group` when each conv group loses
as many input columns as the others (which columns may differ: the plan slices each conv group on its own).
So the channels go in sets that take as many columns from every conv group.
"""

from __future__ import annotations

import numpy as np


def balanced_sets(profile: np.ndarray) -> tuple[list[list[int]], list[list[int]]] | None:
    """(fixed sets, classes): channels removed in whole sets that take as many columns from every conv group.

    `profile[c, k]`: the columns channel c holds in conv group k. Channels within one conv group ("pure")
    must hold as many columns each; the channels that straddle conv groups form the first fixed set, with
    pure channels added where a conv group needs more (channels this conv does not read are sets of their
    own). The pure channels left are the classes, one per conv group, of equal size: any one channel of each
    makes a set (`matched`). None when no such sets exist or one set would take every channel.
    """
    profile = np.asarray(profile, dtype=np.int64)
    held = np.count_nonzero(profile, axis=1)
    free = [[int(c)] for c in np.flatnonzero(held == 0)]  # not read by this conv: removed alone
    pure = np.flatnonzero(held == 1)
    width = {int(v) for v in profile[pure].sum(1)}
    if len(width) > 1:
        return None
    b = width.pop() if width else 1
    groups = profile.shape[1]
    classes = [[int(c) for c in pure if profile[c, k]] for k in range(groups)]
    straddlers = [int(c) for c in np.flatnonzero(held > 1)]
    first: list[int] = []
    if straddlers:
        s = profile[straddlers].sum(0)
        if len({int(v) % b for v in s}) > 1:
            return None
        top = int(s.max())
        for k in range(groups):
            need = (top - int(s[k])) // b
            if need > len(classes[k]):
                return None
            first += classes[k][:need]
            classes[k] = classes[k][need:]
        first = sorted(straddlers + first)
    if len({len(c) for c in classes}) > 1:
        return None
    fixed = ([first] if first else []) + free
    if len(fixed) + len(classes[0]) < 2:
        return None
    return fixed, classes


def matched(classes: list[list[int]], score: np.ndarray | None = None) -> list[list[int]]:
    """One channel of each class per set: with scores the best of every class together, then the next best
    (so each conv group keeps its own best channels), else in index order."""
    ranked = [sorted(c, key=lambda i: -float(score[i])) if score is not None else c for c in classes]
    return [sorted(t) for t in zip(*ranked)]
