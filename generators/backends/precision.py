"""The precision a model runs in when a recipe says `dtype: auto`.

    resolve_dtype("auto")            # "bfloat16" on a GPU or a CPU with native bf16, else "float32"
    resolve_dtype("float32")         # any explicit dtype is returned unchanged

`auto` picks bfloat16 where the hardware computes it natively and float32 where it would be
emulated:
- a CUDA device: bfloat16 where the device supports it, float16 otherwise;
- a CPU with AVX512-BF16 or AMX-BF16 instructions (Zen 4 and later, Sapphire Rapids and later):
  bfloat16. Measured on a 2-core AMD EPYC with avx512_bf16 (docs/benchmarks.md, nineteenth
  session, benchmarks/precision.py): a SmolLM2 matmul 4.8x, vLLM sampling 1.59x, a DPO step under CPU
  autocast 1.91x faster;
- any other CPU: float32 (bf16 there is emulated: the second session measured a step only 13%
  faster, on a machine whose flags were not recorded).

PREFMILL_CPU_BF16=1 / =0 overrides the CPU check (to pin a precision across machines, write the
dtype in the recipe instead). Every backend logs the precision it loaded; a trained model's
registered config keeps `dtype: auto` beside the `precision` it resolved to.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")
ENV = "PREFMILL_CPU_BF16"


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (or PREFMILL_CPU_BF16 says so)."""
    forced = os.environ.get(ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ValueError(f"{ENV}={forced!r}; set it to 1 (use bfloat16 for dtype: auto on CPU) or 0 (float32)")
    return any(f in _cpu_flags() for f in NATIVE_FLAGS)


def resolve_dtype(dtype: str, *, device: str | None = None) -> str:
    """`dtype` unless it is "auto"; then the precision `device` (default: cuda when present, else cpu)
    runs natively."""
    if dtype != "auto":
        return dtype
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if cpu_native_bf16() else "float32"
