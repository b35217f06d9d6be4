"""The padding mask of sequence data: which positions are real tokens, and outputs compared there only.

Sentences padded to one length carry positions that nothing the model gives out depends on: attention
masks them as keys, a pooled embedding leaves them out, a user reads the real tokens' states only. A
lossy pass that no longer fits them (factorize-lowrank) changes them freely, and a comparison over every
position then reports that change as a loss. The mask is a 0/1 [batch, sequence] input whose name says
mask (attention_mask, input_mask); 1 marks a real token. Statistics gathered for a fit (factorize-lowrank,
data-aware channel importance, reader refits) count the real tokens' rows only (kept_rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    """A mask named by the user must be an input the sample data holds as a 0/1 [batch, sequence] array."""
    from onnxcomp.errors import InputError

    if name is None or data is None:
        return
    if name not in input_names:
        raise InputError(f"{owner}: mask {name!r} is not an input of the model (inputs: {', '.join(input_names)})")
    if not any(name in feeds for feeds in data):
        raise InputError(f"{owner}: mask {name!r} is not in the sample data (the data gives the model's other "
                         "inputs only)")
    if not _pads(data, name, need_zero=False):
        raise InputError(f"{owner}: mask {name!r} is not a 0/1 [batch, sequence] array in the sample data")


def _pads(data, name: str, need_zero: bool = True) -> bool:
    """Does every call of `data` hold `name` as a 0/1 [batch, sequence] array (with some 0, `need_zero`)?"""
    values = [np.asarray(feeds[name]) for feeds in data if name in feeds]
    if not values or any(v.ndim != 2 or v.dtype.kind not in "biuf" for v in values):
        return False
    if not all(np.isin(v, (0, 1)).all() for v in values):
        return False
    return not need_zero or any((v == 0).any() for v in values)


def zero_padding(value, feeds: dict, mask: str | None):
    """A float output [batch, sequence, ...] with its padded positions zeroed (nothing compared there)."""
    m = mask_of(feeds, mask)
    v = np.asarray(value)
    if m is None or v.dtype.kind != "f" or v.ndim < 2 or tuple(v.shape[:2]) != m.shape:
        return v
    return v * m.reshape(m.shape + (1,) * (v.ndim - 2))


def stacked_mask(data, mask: str | None) -> np.ndarray | None:
    """The mask over all calls of `data` (Samples or feed dicts) in order, or None when a call lacks it or
    the calls' sequence lengths differ."""
    values = [np.asarray(feeds[mask]) for feeds in data if mask in feeds] if mask else []
    if not values or len(values) != len(list(data)) or len({v.shape[1:] for v in values}) != 1:
        return None
    return np.concatenate(values)


@dataclass
class Padding:
    """The padded positions of one model's outputs over all of some data (its calls' masks stacked)."""

    model: object  # ModelProto
    mask: str
    stacked: np.ndarray  # [all samples, sequence] 0/1

    def positional(self, name: str, value) -> bool:
        """Is output `name` a float [batch, sequence, ...] whose declared axis 1 may be the mask's?"""
        return (np.asarray(value).dtype.kind == "f" and np.ndim(value) >= 2
                and np.shape(value)[:2] == self.stacked.shape and sequence_axis(self.model, name, self.mask))

    def zeroed(self, name: str, value):
        """`value` with its padded positions zeroed where output `name` is positional, else as it is."""
        return zero_padding(value, {self.mask: self.stacked}, self.mask) if self.positional(name, value) else value


def padding_of(model, calls) -> Padding | None:
    """The Padding of `model`'s outputs over `calls` (Samples or feed dicts), or None where the data does not pad."""
    mask = find_mask([i.name for i in model.graph.input], calls)
    stacked = stacked_mask(calls, mask)
    return None if stacked is None else Padding(model, mask, stacked)


@dataclass
class RealTokens:
    """A comparison over the real tokens' positions only."""

    mask: str
    positions: int  # real positions
    of: int  # all positions
    diffs: list  # OutputDiff per output

    def as_dict(self) -> dict:
        return {"mask": self.mask, "positions": self.positions, "of": self.of,
                "outputs": [d.as_dict() for d in self.diffs]}


def over_real_tokens(original, feeds, comparison, tolerances, statistic: str = "max") -> RealTokens | None:
    """A Comparison (onnxcomp.measure.compare) of `original` with another model on `feeds` again over the
    real tokens only, where the data pads its sequences, else None: a lossy pass may change what no one
    reads there, and the loss is the real tokens'. The error figures (`statistic`, the share outside
    tolerance) are over the real positions' elements; the cosine is per sample with the padded positions
    zeroed in both. An output is [batch, sequence, ...] when its shape says so and its declared axis 1 does
    not contradict the mask's (a pooled [batch, 64] output beside 64 symbolic positions is not)."""
    from dataclasses import replace

    from onnxcomp.measure.compare import Tolerances, compare_outputs, cosine, diff_output, top1_agreement

    padding = padding_of(original, feeds)
    if padding is None:
        return None
    reference, candidate = comparison.reference, comparison.candidate
    positional = {name for name, v in reference.items()
                  if padding.positional(name, v) and np.shape(candidate.get(name)) == np.shape(v)}
    if not positional:
        return None
    tolerances = tolerances or Tolerances()
    keep = padding.stacked != 0
    diffs = []
    for d in compare_outputs(reference, candidate, tolerances, statistic):
        if d.name in positional:
            a, b = np.asarray(reference[d.name]), np.asarray(candidate[d.name])
            za, zb = padding.zeroed(d.name, a), padding.zeroed(d.name, b)
            d = replace(diff_output(d.name, a[keep], b[keep], *tolerances.of(d.name), statistic),
                        shape=d.shape, cosine=cosine(za, zb), top1=top1_agreement(za, zb))
        diffs.append(d)
    return RealTokens(padding.mask, int(padding.stacked.sum()), int(padding.stacked.size), diffs)


def real_positions_only(model, data) -> Callable[[dict], dict]:
    """outputs -> the same with the padded positions zeroed, for outputs of `model` over all of `data`
    (Samples, or one stacked dict of arrays) whose sequence axis is the mask's; the identity where the data
    does not pad."""
    padding = padding_of(model, [data] if isinstance(data, dict) else data)
    if padding is None:
        return lambda outputs: outputs
    return lambda outputs: {k: padding.zeroed(k, v) for k, v in outputs.items()}


def sequence_axis(model, tensor: str, mask: str) -> bool:
    """Whether the declared axis 1 of `tensor` (an output, input or value_info of `model`) may be the mask's
    sequence axis (not declared: it may)."""
    def second(name):
        infos = (*model.graph.output, *model.graph.input, *model.graph.value_info)
        info = next((v for v in infos if v.name == name and v.type.tensor_type.HasField("shape")), None)
        dims = info.type.tensor_type.shape.dim if info is not None else []
        return None if len(dims) < 2 else (dims[1].dim_value if dims[1].HasField("dim_value") else
                                          dims[1].dim_param or None)
    out, seq = second(tensor), second(mask)
    if out is None or seq is None:
        return True
    return isinstance(out, str) == isinstance(seq, str) and (isinstance(out, str) or out == seq)


def sequence_tensors(model, names, mask: str | None) -> set[str]:
    """Those of `names` whose declared axis 1 may be the mask's sequence axis (all of them without a mask):
    the ones row_keep may read as [batch, sequence, ...channels]."""
    names = set(names)
    return names if mask is None else {name for name in names if sequence_axis(model, name, mask)}


def kept_rows(x, feeds: dict, mask: str | None, sequence: bool = True) -> np.ndarray:
    """The [rows, channels] rows of activation `x` (its last axis' vectors) that are real tokens in this
    call (row_keep): every row without a mask, or where `x` is not laid out by it."""
    x = np.asarray(x)
    rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    keep = row_keep(feeds, mask, x.shape, sequence)
    return rows if keep is None or len(keep) != len(rows) else rows[keep]


def row_keep(feeds: dict, mask: str | None, shape: tuple, sequence: bool = True) -> np.ndarray | None:
    """[rows] bool, True for the rows of an activation of `shape` (rows = its last axis' vectors) that are
    real tokens; None when every row counts (no mask, or the activation is not [batch, sequence, ...]).
    `sequence`: whether the caller's axis 1 may be the sequence axis (sequence_tensors): a [batch, heads,
    channels] activation whose heads happen to be as many as the positions is not."""
    m = mask_of(feeds, mask)
    if m is None or len(shape) < 2:
        return None
    if len(shape) >= 3 and sequence and tuple(shape[:2]) == m.shape:  # [batch, sequence, ..., channels]
        return np.repeat(m.reshape(-1), int(np.prod(shape[2:-1])))
    if len(shape) == 2 and shape[0] == m.size:  # [batch * sequence, channels]
        return m.reshape(-1)
    return None


def mask_of(feeds: dict, mask: str | None) -> np.ndarray | None:
    """The call's mask as booleans (True: a real token), or None."""
    if mask is None or mask not in feeds:
        return None
    return np.asarray(feeds[mask]) != 0
