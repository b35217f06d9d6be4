"""The precision wing: number formats other than calibrated static INT8.

- quantize-dynamic: INT8 per-channel weights, activations quantized at run time (no calibration data);
- convert-float16: float16 or bfloat16 weights and compute, sensitive ops and the graph's I/O float32;
- quantize-int4-weights: block-wise INT4 weights (round to nearest or GPTQ), as Q/DQ or MatMulNBits.
- quantize-auto: per layer one of those formats or float, chosen from measured sensitivity within max_drop.

The wing's integer arithmetic is its own (numerics.py): a wing imports no other wing.
"""
