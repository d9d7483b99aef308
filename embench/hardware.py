"""What the machine computes fast: the one place that turns a dtype of ``auto`` into a concrete one."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from embench.errors import EmbenchError

DTYPES = ("auto", "bfloat16", "float32")
# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic. Without them torch and vLLM emulate bfloat16,
# several times slower than float32 (bench/generation.py measures both side by side).
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@cache
def cpu_has_native_bf16() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


@cache
def gpu_has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def fast_dtype() -> str:
    """bfloat16 where it is computed natively (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX),
    float32 everywhere else."""
    return "bfloat16" if gpu_has_bf16() or cpu_has_native_bf16() else "float32"


def resolve_dtype(dtype: str | None) -> str:
    """A requested dtype made concrete: None and ``auto`` become :func:`fast_dtype`."""
    if dtype in (None, "auto"):
        return fast_dtype()
    if dtype not in DTYPES:
        raise EmbenchError(f"unknown dtype '{dtype}': choose {', '.join(DTYPES)}")
    return dtype
