"""Which ops ONNX Runtime's CPU provider runs at a given float type, read from the installed runtime.

convert-float16 keeps an op in float32 on the ort target when the CPU provider registers no kernel
for it at float16 (or bfloat16): ONNX Runtime would otherwise wrap it in Casts itself (float16) or
refuse to load the model (bfloat16). Asked of the runtime, not written down, so a newer release
with more kernels is used as it is.
"""

from __future__ import annotations

from functools import cache

ONNX_TYPE_NAMES = {"float16": "tensor(float16)", "bfloat16": "tensor(bfloat16)"}


@cache
def cpu_kernels(dtype: str) -> dict[tuple[str, str], tuple[tuple[int, int], ...]]:
    """{(domain, op): version ranges} of CPU kernels with a type constraint allowing `dtype`; empty when
    the runtime does not list its kernels."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as C

        defs = C.get_all_opkernel_def()
    except Exception:  # not installed, or a build without the listing
        return {}
    wanted = ONNX_TYPE_NAMES[dtype]
    found: dict[tuple[str, str], list] = {}
    for d in defs:
        if d.provider == "CPUExecutionProvider" and any(wanted in v for v in d.type_constraints.values()):
            found.setdefault((d.domain or "", d.op_name), []).append(tuple(d.version_range))
    return {k: tuple(v) for k, v in found.items()}


def has_cpu_kernel(op: str, domain: str | None, opset: int | None, dtype: str) -> bool:
    """Whether ORT CPU runs `op` (at the model's opset) with `dtype` inputs. Without a listing, True:
    nothing is kept float32 for a reason that cannot be checked."""
    kernels = cpu_kernels(dtype)
    if not kernels:
        return True
    ranges = kernels.get((domain or "", op))
    if not ranges:
        return False
    return opset is None or any(lo <= opset <= hi for lo, hi in ranges)
