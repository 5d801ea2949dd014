"""What vlx will run from a model directory it did not write: safetensors weights and no remote code, by default.

    from vlx.model import trust
    trust.check_dir("ckpt/", "base model")        # refuses pickle-only weights, custom code
    model = AutoModel.from_pretrained("ckpt/", **trust.hub_kwargs())

A pickle file (`pytorch_model.bin`, `*.pt`, `*.ckpt`) can execute code when it is loaded, and a
checkpoint whose `config.json` names Python classes of its own (`auto_map`) runs that code under
`trust_remote_code`. vlx loads weights from safetensors only and never trusts remote code, unless
the user says otherwise: `--allow-pickle` and `--trust-remote-code` on every command that loads a
model, or `VLX_ALLOW_PICKLE=1` / `VLX_TRUST_REMOTE_CODE=1` in the environment (what the flags set,
so that processes started by `accelerate launch` see the same policy). A schema file (`--schema`)
is Python too and is executed: give only schema files you would run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class TrustError(RuntimeError):
    """A model directory that needs a permission the user did not give; the message names the flag."""


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def allow_pickle() -> bool:
    return _flag("VLX_ALLOW_PICKLE")


def trust_remote_code() -> bool:
    return _flag("VLX_TRUST_REMOTE_CODE")


def set_policy(*, allow_pickle: bool | None = None, trust_remote_code: bool | None = None) -> None:
    """What the CLI flags do: the policy for this process and those it starts (only ever widened)."""
    if allow_pickle:
        os.environ["VLX_ALLOW_PICKLE"] = "1"
    if trust_remote_code:
        os.environ["VLX_TRUST_REMOTE_CODE"] = "1"


def hub_kwargs() -> dict:
    """`from_pretrained` keyword arguments under the policy in force."""
    return {"use_safetensors": None if allow_pickle() else True, "trust_remote_code": trust_remote_code()}


def check_dir(path: str | Path, what: str) -> None:
    """Refuse a local model directory whose weights are pickle files only, or that ships its own code.

    A hub id (not a directory) is left to `hub_kwargs`: `use_safetensors=True` refuses pickle there.
    """
    path = Path(path)
    if not path.is_dir():
        return
    files = [p for p in path.iterdir() if p.is_file()]
    pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES and p.name != "training_args.bin")
    safe = [p for p in files if p.suffix == ".safetensors"]
    if pickles and not safe and not allow_pickle():
        raise TrustError(
            f"{what} {path} holds its weights as pickle files only ({', '.join(pickles[:3])}), which can run code "
            "when loaded; convert them to safetensors (`model.save_pretrained(dir)` writes safetensors), or pass "
            "--allow-pickle if you trust the file")
    config = path / "config.json"
    if config.is_file() and not trust_remote_code():
        try:
            auto_map = json.loads(config.read_text(encoding="utf-8-sig")).get("auto_map")
        except (OSError, ValueError, AttributeError):
            return  # an unreadable config is reported by the loader itself
        if auto_map:
            raise TrustError(
                f"{what} {path} ships its own Python code ({config.name} auto_map: "
                f"{', '.join(sorted(auto_map))}); vlx runs it only with --trust-remote-code")


__all__ = ["TrustError", "allow_pickle", "trust_remote_code", "set_policy", "hub_kwargs", "check_dir"]
