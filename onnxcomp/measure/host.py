"""What the host's CPU means for the formats we write: read once from the machine, never assumed."""

from __future__ import annotations

import functools
import platform

# Instructions that multiply u8 x s8 and add into int32 without an int16 step.
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty when it cannot be read: not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.split(":", 1)[1].split()) if ":" in line else frozenset()


@functools.lru_cache(maxsize=1)
def host_needs_reduced_range() -> bool:
    """True on x86 CPUs without VNNI: ONNX Runtime's u8s8 int8 GEMM there adds pairs of u8*s8
    products in int16 (vpmaddubsw), which saturates with full-range weights, so INT8 weights for
    ONNX Runtime on such a host keep to 7 bits. False elsewhere (VNNI hosts, ARM)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    flags = cpu_flags()
    return bool(flags) and not flags & _VNNI_FLAGS
