"""Which rows of an activation the fit counts: the real tokens, where the sample data pads its sequences.

Sentences padded to one length carry rows (the padding positions) that nothing the model gives out
depends on: attention masks them as keys, a pooled embedding leaves them out, and a user reads the
real tokens' states only. Yet they can be most of the rows (the real MiniLM's calibration sentences:
16 real tokens of 64), so factors, sensitivities and LayerNorms fitted on every row spend the fit on
rows that do not count. With a padding mask among the inputs (a 0/1 [batch, sequence] input whose name
says mask), a row of an activation shaped [batch, sequence, ...] counts where the mask is 1.
"""

from __future__ import annotations

import numpy as np

AUTO, NONE = "auto", "none"


def find_mask(input_names: list[str], data, option: str = AUTO) -> str | None:
    """The padding mask input `option` names ('auto': the one input named *mask* that holds 0/1 per
    [batch, sequence] with some 0 in the data; 'none': no mask), or None. A name with "pad" in it is not taken
    by auto: torch's key_padding_mask marks the padded positions with 1, the other way round."""
    if data is None or option == NONE:
        return None
    if option != AUTO:
        return option
    found = [name for name in input_names if "mask" in name.lower() and "pad" not in name.lower()
             and _pads(data, name)]
    return found[0] if len(found) == 1 else None


def check_mask(name: str | None, input_names: list[str], data, owner: str) -> None:
    """A mask named by the user must be an input holding a 0/1 [batch, sequence] array."""
    from onnxcomp.errors import InputError

    if name is None or data is None:
        return
    if name not in input_names:
        raise InputError(f"{owner}: mask {name!r} is not an input of the model (inputs: {', '.join(input_names)})")
    if not _pads(data, name, need_zero=False):
        raise InputError(f"{owner}: mask {name!r} is not a 0/1 [batch, sequence] array in the sample data")


def _pads(data, name: str, need_zero: bool = True) -> bool:
    values = [np.asarray(feeds[name]) for feeds in data if name in feeds]
    if not values or any(v.ndim != 2 or v.dtype.kind not in "biuf" for v in values):
        return False
    if not all(np.isin(v, (0, 1)).all() for v in values):
        return False
    return not need_zero or any((v == 0).any() for v in values)


def row_keep(feeds: dict, mask: str | None, shape: tuple) -> np.ndarray | None:
    """[rows] bool, True for the rows of an activation of `shape` (rows = its last axis' vectors) that are
    real tokens; None when every row counts (no mask, or the activation is not [batch, sequence, ...])."""
    m = _mask(feeds, mask)
    if m is None or len(shape) < 2:
        return None
    if tuple(shape[:2]) == m.shape:  # [batch, sequence, ..., channels]: each position's rows
        return np.repeat(m.reshape(-1), int(np.prod(shape[2:-1])))
    if len(shape) == 2 and shape[0] == m.size:  # [batch * sequence, channels]
        return m.reshape(-1)
    return None


def query_keep(feeds: dict, mask: str | None) -> np.ndarray | None:
    """[batch, sequence] 0/1 weights of the positions (an attention block's queries), or None."""
    m = _mask(feeds, mask)
    return None if m is None else m.astype(np.float64)


def zero_padding(value, feeds: dict, mask: str | None):
    """A float output [batch, sequence, ...] with its padded positions zeroed (nothing compared there)."""
    m = _mask(feeds, mask)
    v = np.asarray(value)
    if m is None or v.dtype.kind != "f" or v.ndim < 2 or tuple(v.shape[:2]) != m.shape:
        return v
    return v * m.reshape(m.shape + (1,) * (v.ndim - 2))


def _mask(feeds: dict, mask: str | None) -> np.ndarray | None:
    if mask is None or mask not in feeds:
        return None
    return np.asarray(feeds[mask]) != 0
