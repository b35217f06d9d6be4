"""How one group's channels sit on an axis of a tensor or a constant, and what gets sliced.

A group has C coupled channels. On a given axis, channel c occupies the positions
r * period + (offset + c) * block + j  for j < block and r < repeat:
`offset` counts channels of other groups placed before it (Concat), `block` the consecutive
positions per channel (Flatten/Reshape turn one channel into H*W features; a depthwise Conv
with multiplier m gives m outputs per channel; an attention head is D features), and
`repeat`/`period` lay the whole pattern out several times (an LSTM's four gates, a grouped
conv's groups, FiLM's scale and shift). Only channels in [lo, hi) live on the tensor: one
part of a Split holds some of a group's channels, the other parts the rest. `modulo` (a grouped
Conv's input weight, read the same way by every conv group) takes the positions modulo the
channels per conv group: several channels then share one weight column and go together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

ALL = 2**62  # hi of a mapping that holds every channel


@dataclass(frozen=True)
class Mapping:
    axis: int
    offset: int = 0
    block: int = 1
    repeat: int = 1
    period: int = 0
    lo: int = 0
    hi: int = ALL
    modulo: int = 0

    def present(self, channels) -> np.ndarray:
        channels = np.asarray(channels, dtype=np.int64).reshape(-1)
        return channels[(channels >= self.lo) & (channels < self.hi)]

    def by_channel(self, channels) -> np.ndarray:
        """Positions per present channel: shape (present channels, repeat * block)."""
        channels = self.present(channels)
        base = (self.offset + channels)[:, None] * self.block + np.arange(self.block)
        reps = np.arange(self.repeat) * self.period
        rows = (reps[None, :, None] + base[:, None, :]).reshape(len(channels), self.repeat * self.block)
        return rows % self.modulo if self.modulo else rows

    def positions(self, channels) -> np.ndarray:
        """Positions on the axis taken by `channels` (those of them that live on the tensor)."""
        return self.by_channel(channels).reshape(-1)

    def on_axis(self, axis: int) -> Mapping:
        return replace(self, axis=axis)

    def scaled(self, factor: int) -> Mapping:
        """Each position becomes `factor` consecutive ones (merging the channel axis with inner axes)."""
        return replace(self, block=self.block * factor, period=self.period * factor)

    def shifted(self, positions: int) -> Mapping | None:
        """Every position moved by `positions` (a Concat/Split offset), None if that cuts a block."""
        if positions % self.block:
            return None
        return replace(self, offset=self.offset + positions // self.block)


@dataclass(frozen=True)
class Unit:
    """How a producer's output channels are counted: `block` consecutive channels laid out `repeat` times.

    `regroup_norms`: channels are counted one by one and a GroupNorm's groups are formed anew from the kept
    channels (lossy; for GroupNorms whose groups straddle the channels of several groups, as after a
    U-Net's skip Concat)."""

    block: int = 1
    repeat: int = 1
    regroup_norms: bool = False

    def describe(self) -> str:
        if self.repeat > 1:
            return f"{self.repeat} repeats" + (f" of {self.block}" if self.block > 1 else "")
        return "channel" if self.block == 1 else f"block of {self.block}"


@dataclass(frozen=True)
class Member:
    """One thing that changes when the group loses channels.

    kind:
      "out"   a producer's weight (or bias), sliced on `axis` (the output channels)
      "in"    a reader's weight, sliced on `axis` (its input channels/features)
      "param" a per-channel constant (BN scale/bias/mean/var, bias, per-channel Mul/Add, PRelu slope)
      "value" one entry of an int64 constant (Reshape shape, Split sizes, Slice start/end):
              it decreases by the number of removed positions in [lo, hi) (increases, with sign -1: a
              bound counted from the end, such as a negative Slice start); `private` when the
              constant is also read outside the group, so the plan gives this reader its own copy
      "attr"  an integer attribute of node `tensor` (a grouped Conv's `group`, an RNN's
              `hidden_size`), which decreases by the number of removed positions of `mapping`
    A "value" or "param" member with role "groups" belongs to a GroupNorm regrouped from the kept channels:
    `hi` is the channel count it normalizes, and the group count entry (value) or the per-group scale and
    bias (param, sliced to the first G' entries) follow the total kept over every group (plan.py).
    `tensor` names the constant (initializer or Constant node output); for "attr" the node key.
    `use` is the (node key, input index) reading the constant, for the shared-constant check.
    `conv_groups` (an "in" member of a grouped Conv's weight whose conv groups lose different columns, a
    ShuffleNet bottleneck after the shuffle): the positions count the conv's input channels, conv group k's
    column j at k * (columns) + j; each conv group keeps its own columns (plan.py).
    """

    kind: str
    tensor: str
    axis: int = 0
    mapping: Mapping = Mapping(0)
    use: tuple[str, int] = ("", 0)
    index: int = 0
    lo: int = 0
    hi: int = 0
    role: str = ""
    private: bool = False
    sign: int = 1
    conv_groups: int = 0

    def label(self) -> str:
        if self.kind == "value":
            return f"{self.tensor}[{self.index}]"
        if self.kind == "attr":
            return f"{self.tensor}.{self.role}"
        return f"{self.tensor}@{self.axis}"
