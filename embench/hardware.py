"""What the machine computes fast: the one place that turns a dtype of ``auto`` (or none given) into one to use.

A CPU without native bfloat16 instructions emulates it, several times slower than float32 (README, Engines), so
CPUs get bfloat16 only where their flags say they compute it natively. On a CUDA GPU vLLM's own ``auto`` decides
(bfloat16 where the GPU supports it, else float16). embench's own torch passes (the local prompted judge, trait
extraction) run on the CPU; the trainer asks :func:`gpu_has_bf16`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

AUTO = "auto"
# CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic.
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
def has_cuda() -> bool:
    """A CUDA device is visible (asked without creating a CUDA context in this process)."""
    import torch

    return torch.cuda.is_available()


@cache
def gpu_has_bf16() -> bool:
    """The CUDA device computes bfloat16 natively (compute capability 8.0 or later); creates a CUDA context."""
    import torch

    return has_cuda() and torch.cuda.get_device_capability() >= (8, 0)


def vllm_dtype(requested: str | None) -> str:
    """The dtype handed to vLLM: the one asked for; else vLLM's ``auto`` on a GPU, the CPU's fast one on a CPU."""
    if requested not in (None, AUTO):
        return requested
    return AUTO if has_cuda() else cpu_dtype(None)


def cpu_dtype(requested: str | None) -> str:
    """The dtype for embench's own torch passes on the CPU (local judge, trait extraction): the one asked for, else
    the CPU's fast one."""
    if requested not in (None, AUTO):
        return requested
    return "bfloat16" if cpu_has_native_bf16() else "float32"


# Libraries vLLM's CPU guide asks to preload: the tcmalloc allocator (Debian's libtcmalloc-minimal4; no PyPI wheel
# carries it) and Intel's OpenMP runtime (PyPI intel-openmp, installed into the environment's lib folder).
TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")
IOMP_NAME = "libiomp5.so"


def cpu_preloads() -> list[Path]:
    """The preload libraries installed here, allocator first (the order vLLM's CPU guide gives)."""
    import sys

    found = [Path(path) for path in TCMALLOC_PATHS if Path(path).is_file()][:1]
    iomp = Path(sys.prefix) / "lib" / IOMP_NAME
    return found + ([iomp] if iomp.is_file() else [])
