"""What every `vlx` command shares: one-line errors, the trust and image-size flags, logging."""

from __future__ import annotations

import logging
from typing import Annotated, Optional

import typer


def fail(message: str, code: int = 2):
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def user_errors():
    """Errors that are the user's to fix: shown as one clear message, no traceback."""
    from vlx.config import ConfigError
    from vlx.data.formats import DataError
    from vlx.inputs import InputError
    from vlx.model.build import ModelLoadError
    from vlx.model.families import FamilyError
    from vlx.model.trust import TrustError

    return (ConfigError, DataError, InputError, ModelLoadError, FamilyError, TrustError, FileExistsError,
            FileNotFoundError)


# Options of every command that reads models or images it did not write (`vlx.model.trust`, `vlx.inputs`).
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help="Load weights from pickle files (.bin/.pt) when a checkpoint has no safetensors; pickle can run code.")]
TrustRemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Run the Python code a checkpoint ships (config.json auto_map); off by default.")]
MaxImagePixels = Annotated[Optional[int], typer.Option(help="Refuse images over this many pixels (default 64 million, a decompression-bomb guard; 0: no limit).")]


def policy(allow_pickle: bool = False, trust_remote_code: bool = False, max_image_pixels: int | None = None) -> None:
    """Apply the trust and image-size flags for this process and those it starts."""
    from vlx.inputs import InputError, set_max_image_pixels
    from vlx.model.trust import set_policy

    set_policy(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    try:
        set_max_image_pixels(max_image_pixels)
    except InputError as e:
        fail(str(e))


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if not verbose else logging.DEBUG, format="%(message)s")


def quiet_transformers_bars() -> None:
    """Weight loading and saving bars: redrawn lines that fill a log file and say nothing the phase lines don't."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
