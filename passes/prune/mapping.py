"""How one group's channels sit on an axis of a tensor or a constant, and what gets sliced.

A group has C coupled channels. On a given axis, channel c occupies the positions
(offset + c) * block + j for j < block: `offset` counts channels of other groups placed
before it (Concat), `block` the consecutive positions per channel (Flatten/Reshape turn one
channel into H*W features; a depthwise Conv with multiplier m gives m outputs per channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Mapping:
    axis: int
    offset: int = 0
    block: int = 1

    def positions(self, channels) -> np.ndarray:
        """Positions on the axis taken by `channels` (sorted input gives sorted output)."""
        channels = np.asarray(channels, dtype=np.int64).reshape(-1)
        return ((self.offset + channels)[:, None] * self.block + np.arange(self.block)).reshape(-1)

    def on_axis(self, axis: int) -> "Mapping":
        return Mapping(axis, self.offset, self.block)

    def span(self, channels: int) -> tuple[int, int]:
        """First position and one past the last position taken by a group of `channels`."""
        return self.offset * self.block, (self.offset + channels) * self.block


@dataclass(frozen=True)
class Member:
    """One thing that changes when the group loses channels.

    kind:
      "out"   a producer's weight (or bias), sliced on `axis` (the output channels)
      "in"    a reader's weight, sliced on `axis` (its input channels/features)
      "param" a per-channel constant (BN scale/bias/mean/var, bias, per-channel Mul/Add, PRelu slope)
      "value" one entry of an int64 constant (Reshape shape, Split sizes, Slice start/end):
              it decreases by the number of removed positions in [lo, hi)
      "group" the `group` attribute of a depthwise Conv, which decreases by the removed channels
    `tensor` names the constant (initializer or Constant node output); for "group" the node key.
    `use` is the (node key, input index) reading the constant, for the shared-constant check.
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

    def label(self) -> str:
        if self.kind == "value":
            return f"{self.tensor}[{self.index}]"
        if self.kind == "group":
            return f"{self.tensor}.group"
        return f"{self.tensor}@{self.axis}"
