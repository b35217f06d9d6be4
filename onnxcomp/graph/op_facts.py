"""Facts about ONNX operators that several passes need: weighted ops and their reduction axes."""

from __future__ import annotations

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


# Ops a weight may pass through on its way to a weighted op without changing its values;
# Transpose moves the reduction axis (handled by the walkers), the others keep it.
AXIS_KEEPING_OPS = ("Identity", "Cast")


def reduction_axis(op: str, input_index: int, attrs: dict, rank: int) -> int | None:
    """The reduction axis of input `input_index` of `op`, or None if that input is not a weight."""
    if rank < 1:
        return None
    if op == "Conv" and input_index == 1 and rank >= 3:
        return 1
    if op == "ConvTranspose" and input_index == 1 and rank >= 3:
        return 0
    if op == "Gemm" and rank == 2:
        if input_index == 0:
            return 0 if int(attrs.get("transA", 0)) else 1
        if input_index == 1:
            return 1 if int(attrs.get("transB", 0)) else 0
    if op == "MatMul":
        if input_index == 0 and rank >= 1:
            return rank - 1
        if input_index == 1:
            return 0 if rank == 1 else rank - 2
    return None


def through_transpose(axis: int, perm: list[int] | None, rank: int) -> int:
    """Axis of a Transpose's input that becomes `axis` of its output."""
    perm = list(perm) if perm else list(reversed(range(rank)))
    return perm[axis]
