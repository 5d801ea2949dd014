"""`vlx doctor`: what this machine will run with, on one screen, and the fix for each problem found.

    checks = diagnose()           # [Check(name, value, ok, fix)]
    print(format_checks(checks))

Nothing here changes the machine: it reads versions, devices and the cache directory.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("torch", "transformers", "peft", "accelerate", "datasets", "outlines", "outlines_core", "pydantic",
            "safetensors", "tokenizers")
OPTIONAL = {"torchvision": "video processors of Qwen-family checkpoints; vlx runs without it",
            "flash_attn": "varlen attention kernels for packing on CUDA (pip install flash-attn)",
            "deepspeed": "ZeRO-2/3 multi-GPU training (pip install 'vlx[deepspeed]')",
            "bitsandbytes": "QLoRA 4-bit fine-tuning on CUDA (pip install bitsandbytes)",
            "tensorboard": "--report-to tensorboard (pip install tensorboard)",
            "wandb": "--report-to wandb (pip install wandb)",
            "mlflow": "--report-to mlflow (pip install mlflow)"}


@dataclass
class Check:
    name: str
    value: str
    ok: bool = True
    fix: str | None = None
    """What to do about it, when `ok` is False (or a note when the item is merely absent)."""


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return None


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                pass
    return total


def diagnose() -> list[Check]:
    checks = [Check("python", platform.python_version()), Check("platform", platform.platform())]
    for name in PACKAGES:
        version = _version(name)
        checks.append(Check(name, version or "missing", version is not None,
                            None if version else f"pip install {name.replace('_', '-')} (or reinstall vlx)"))
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - a broken torch install is exactly what doctor reports
        checks.append(Check("torch import", f"{type(e).__name__}: {e}", False,
                            "pip install torch==<version> for this machine (CPU: the CPU wheel)"))
        return checks
    from vlx.device import attn_implementation, cpu_flags, cpu_has_bf16, device, resolve_precision

    cuda = torch.cuda.is_available()
    checks.append(Check("cuda", f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
                        if cuda else f"none (torch {torch.__version__} {'CPU build' if torch.version.cuda is None else 'CUDA build, no device'})"))
    flags = cpu_flags()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    checks.append(Check("cpu", f"{os.cpu_count()} cores, flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}"))
    bf16 = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
    checks.append(Check("bf16", "native" if bf16 else "not native (training runs in fp32: slower, twice the memory)",
                        True, None if bf16 else "expected on CPUs without AVX512-BF16/AMX; nothing to fix"))
    checks.append(Check("auto picks", f"device {device()}, precision {resolve_precision('auto')}, "
                                      f"attention {attn_implementation()}"))
    for name, what in OPTIONAL.items():
        present = importlib.util.find_spec(name) is not None
        if name == "torchvision" and present:
            try:
                importlib.import_module("torchvision")
            except Exception as e:  # noqa: BLE001 - installed but not loadable with this torch
                checks.append(Check(name, f"installed but does not load ({type(e).__name__})", False,
                                    "pip uninstall torchvision (vlx does not need it), or install the build matching torch"))
                continue
        checks.append(Check(name, _version(name) or "installed" if present else f"absent: {what}"))
    checks.append(_cache_check())
    return checks


def _cache_check() -> Check:
    from vlx.model.smol import CACHE_ENV, SmolError, cache_dir

    try:
        root = cache_dir()
    except SmolError as e:
        return Check("cache", str(e).splitlines()[0], False, f"export {CACHE_ENV}=/a/writable/dir")
    entries = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))
    size = _size(root)
    shown = ", ".join(entries[:6]) + (f" (+{len(entries) - 6} more)" if len(entries) > 6 else "")
    return Check("cache", f"{root} (writable, {size / 1e9:.2f} GB): {shown or 'empty'}")


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = "ok " if c.ok else "!! "
        lines.append(f"{mark}{c.name:<{width}}  {c.value}")
        if not c.ok and c.fix:
            lines.append(f"   {'':<{width}}  fix: {c.fix}")
    problems = sum(not c.ok for c in checks)
    lines.append(f"{problems} problem(s) found" if problems else "no problems found")
    return "\n".join(lines)


__all__ = ["Check", "diagnose", "format_checks"]
