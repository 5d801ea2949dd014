"""Device and precision, decided once at the edge (env overrides for tests and CI).

`VLX_DEVICE` (`cpu`/`cuda`) and `VLX_PRECISION` (`bf16`/`fp32`) override the automatic choice:
CUDA when present, bf16 where the hardware computes it natively (Ampere+ GPUs; CPUs with AMX or
AVX512-BF16, where autocast made a LoRA step on a 135M model about 3x faster than fp32).
"""

from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger(__name__)


def device() -> str:
    forced = os.environ.get("VLX_DEVICE")
    if forced:
        return forced
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def resolve_precision(precision: str = "auto") -> str:
    """`auto` -> `bf16` or `fp32` for this machine; an explicit `bf16` it cannot run fails here."""
    precision = os.environ.get("VLX_PRECISION", precision)
    dev = device()
    native = torch.cuda.is_bf16_supported() if dev == "cuda" else cpu_has_bf16()
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and not native:
        log.warning("bf16 requested but this %s has no native bf16; it will run, slowly (use --precision fp32)", dev)
    return precision


def attn_implementation() -> str:
    """`flash_attention_2` on CUDA when the flash-attn package is installed, else `sdpa` (CPU and GPU).

    `VLX_ATTN` overrides (e.g. `eager` to debug). Both choices support padding-free packing.
    """
    forced = os.environ.get("VLX_ATTN")
    if forced:
        return forced
    if device() == "cuda":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        _log_once("flash-attn is not installed: using SDPA attention (pip install flash-attn for varlen kernels)")
    return "sdpa"


@functools.cache
def _log_once(message: str) -> None:
    log.info(message)



def release_memory() -> None:
    """Give freed memory back to the operating system between the phases of a long process.

    A phase that allocates and frees many tensors (pre-training the smol tower, a training stage)
    leaves glibc's heap fragmented; without a trim the next phase's peak stacks on top of it.
    """
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
