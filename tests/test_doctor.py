"""`vlx doctor`: one screen of what the machine runs with, and the fix for each problem."""

from __future__ import annotations

import torch
import transformers
from typer.testing import CliRunner

from vlx.cli import app


def test_doctor_reports_versions_device_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLX_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache" / "smol-tower-abc").mkdir(parents=True)
    (tmp_path / "cache" / "smol-tower-abc" / "w.bin").write_bytes(b"x" * 5_000_000)
    result = CliRunner().invoke(app, ["doctor"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"torch          {torch.__version__}" in out and f"transformers   {transformers.__version__}" in out
    assert "auto picks     device cpu, precision " in out and "bf16" in out and "torchvision" in out
    assert f"{tmp_path / 'cache'} (writable, 0.01 GB): smol-tower-abc" in out
    assert out.rstrip().endswith("no problems found")


def test_doctor_names_the_fix_for_an_unwritable_cache(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("VLX_CACHE_DIR", str(tmp_path / "file" / "cache"))
    result = CliRunner().invoke(app, ["doctor"], terminal_width=200)
    assert result.exit_code == 1
    assert "!! cache" in result.output and "fix: export VLX_CACHE_DIR=" in result.output
    assert "1 problem(s) found" in result.output
