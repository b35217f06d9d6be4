"""Facts about ONNX operators that several passes need: weighted ops, their weight inputs and axes."""

from __future__ import annotations

# Inputs of each weighted op that carry a weight when constant, the op's own weight slot first
# (Gemm and MatMul multiply two operands, so either may be the constant one).
WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (1, 0), "MatMul": (1, 0)}
WEIGHTED_OPS = tuple(WEIGHT_INPUTS)
# Weighted ops with an optional bias as input 2 (added per output channel).
BIASED_OPS = ("Conv", "ConvTranspose", "Gemm")


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


def output_axis(op: str, attrs: dict, rank: int) -> int | None:
    """The output-channel axis of the weight (input 1) of `op`: Conv 0, ConvTranspose 1, Gemm by
    transB, MatMul the last; None for other ops."""
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        return 0 if int(attrs.get("transB", 0) or 0) else 1
    if op == "MatMul":
        return rank - 1
    return None


def through_transpose(axis: int, perm: list[int] | None, rank: int) -> int:
    """Axis of a Transpose's input that becomes `axis` of its output."""
    perm = list(perm) if perm else list(reversed(range(rank)))
    return perm[axis]
