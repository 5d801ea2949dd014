"""Untrusted model files: safetensors only unless --allow-pickle, no remote code unless --trust-remote-code."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vlx.cli import app
from vlx.model import trust
from vlx.model.build import load_llava
from vlx.model.trust import TrustError


@pytest.fixture
def saved(tiny, tmp_path):
    model, processor = tiny
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.fixture(autouse=True)
def _default_policy(monkeypatch):
    # setenv (not delenv) so that teardown removes what the CLI's flags set during a test
    monkeypatch.setenv("VLX_ALLOW_PICKLE", "0")
    monkeypatch.setenv("VLX_TRUST_REMOTE_CODE", "0")


def _to_pickle(ckpt):
    from safetensors.torch import load_file

    state = load_file(str(ckpt / "model.safetensors"))
    torch.save(state, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()


def test_pickle_weights_need_allow_pickle(saved, monkeypatch):
    _to_pickle(saved)
    with pytest.raises(TrustError, match=r"pickle files only \(pytorch_model.bin\).*--allow-pickle"):
        load_llava(saved)
    assert trust.hub_kwargs()["use_safetensors"] is True  # hub ids: transformers refuses pickle too
    monkeypatch.setenv("VLX_ALLOW_PICKLE", "1")  # what --allow-pickle sets
    model, _ = load_llava(saved)
    assert model.config.model_type == "llava"


def test_cli_refuses_pickle_without_the_flag(saved, tmp_path):
    _to_pickle(saved)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    result = CliRunner().invoke(app, ["chat", "--model", str(saved), "--image", str(image), "--max-new-tokens", "2",
                                      "hi"])
    assert result.exit_code == 2 and "--allow-pickle" in result.stderr and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["chat", "--allow-pickle", "--model", str(saved), "--image", str(image),
                                      "--max-new-tokens", "2", "hi"])
    assert result.exit_code == 0, result.output


def test_remote_code_needs_trust_remote_code(saved, monkeypatch):
    config = json.loads((saved / "config.json").read_text())
    config["auto_map"] = {"AutoModelForImageTextToText": "modeling_evil.Model"}
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(TrustError, match=r"ships its own Python code .*AutoModelForImageTextToText.*--trust-remote-code"):
        load_llava(saved)
    assert trust.hub_kwargs()["trust_remote_code"] is False
    monkeypatch.setenv("VLX_TRUST_REMOTE_CODE", "1")
    trust.check_dir(saved, "model")  # trusted now: no refusal
    assert trust.hub_kwargs()["trust_remote_code"] is True


def test_schema_files_are_said_to_be_executed():
    for command in (["finetune"], ["extract"], ["data", "validate"]):
        result = CliRunner().invoke(app, [*command, "--help"], terminal_width=400)
        assert "executed" in result.output, command
