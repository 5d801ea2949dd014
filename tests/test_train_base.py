"""`vlx train-base` on the tiny preset: what moves in each stage, resumption, two processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vlx import ModelConfig, build_llava
from vlx.cli import app

runner = CliRunner()


def _losses(run: Path, stage: str) -> dict[int, float]:
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["stage"] == stage and "loss" in e:
            out[e["step"]] = e["loss"]
    return out


def _state(directory: Path) -> dict[str, torch.Tensor]:
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(directory).state_dict()


def _train(args: list[str]):
    result = runner.invoke(app, ["train-base", "--preset", "tiny", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def base_run(colour_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "base"
    _train(["--stage1-data", str(colour_data / "captions.json"), "--stage2-data", str(colour_data / "instruct.json"),
            "--out", str(out), "--epochs", "4"])
    return out


def test_stage1_moves_only_the_projector_and_loss_falls(base_run):
    initial = build_llava(ModelConfig(preset="tiny"))[0].state_dict()
    stage1 = _state(base_run / "stage1")
    changed = {k for k, v in stage1.items() if not torch.equal(v, initial[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)
    assert len(changed) == 4  # linear_1/linear_2 weight and bias
    losses = _losses(base_run, "stage1")
    first, last = [losses[k] for k in sorted(losses)[:2]], [losses[k] for k in sorted(losses)[-2:]]
    assert sum(last) / 2 < sum(first) / 2 - 0.05, losses


def test_stage2_moves_projector_and_llm_not_vision(base_run):
    initial = build_llava(ModelConfig(preset="tiny"))[0].state_dict()
    final = _state(base_run)
    for k, v in final.items():
        if "vision_tower" in k:
            assert torch.equal(v, initial[k]), f"vision tower changed: {k}"
    changed = {k for k, v in final.items() if not torch.equal(v, initial[k])}
    assert any("language_model" in k for k in changed) and any("multi_modal_projector" in k for k in changed)
    losses = _losses(base_run, "stage2")
    assert losses[max(losses)] < losses[min(losses)]


def test_run_directory_is_self_describing(base_run):
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                 "config.yaml", "metrics.jsonl", "loss.png", "vlx_run.json"):
        assert (base_run / name).exists(), name
    info = json.loads((base_run / "vlx_run.json").read_text())
    assert info["kind"] == "base" and info["template"] == "vicuna_v1"
    assert not list(base_run.glob(".*staging*"))


def test_a_runs_own_config_replays_it_from_another_folder(base_run, tmp_path, monkeypatch):
    """`vlx train-base --config RUN/config.yaml --out NEW`: the recorded model, data (absolute paths) and both
    stages come back; a flag still overrides the file."""
    import yaml

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train-base", "--config", str(base_run / "config.yaml"), "--out", "again",
                                 "--max-steps", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    first, again = (yaml.safe_load((d / "config.yaml").read_text()) for d in (base_run, tmp_path / "again"))
    assert again["model"] == first["model"] and again["data"] == first["data"]
    assert again["stages"] == first["stages"] == ["1", "2"]
    assert Path(first["data"]["stage1_data"]).is_absolute()
    assert again["stage1"]["max_steps"] == again["stage2"]["max_steps"] == 1
    assert set(_losses(tmp_path / "again", "stage1")) and set(_losses(tmp_path / "again", "stage2"))


def test_help_documents_every_flag():
    from vlx.cli import train_base_cmd
    import inspect

    result = runner.invoke(app, ["train-base", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name in inspect.signature(train_base_cmd).parameters:
        assert "--" + name.replace("_", "-") in result.output, name


def test_unknown_yaml_key_is_an_error(colour_data, tmp_path):
    (tmp_path / "c.yaml").write_text("stage1:\n  learning_rat: 0.1\n")
    result = runner.invoke(app, ["train-base", "--stage1-data", str(colour_data / "captions.json"), "--stage", "1",
                                 "--out", str(tmp_path / "o"), "--config", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2
    assert "unknown key 'stage1.learning_rat'" in result.output and "did you mean 'learning_rate'" in result.output


def test_bad_rows_stop_before_training_or_are_skipped(colour_data, tmp_path):
    rows = json.loads((colour_data / "captions.json").read_text())
    rows[3]["image"] = "missing.png"
    rows[5]["conversations"] = rows[5]["conversations"][:1]
    for r in rows:
        r["image"] = str(colour_data / r["image"])
    (tmp_path / "bad.json").write_text(json.dumps(rows))
    result = runner.invoke(app, ["train-base", "--stage1-data", str(tmp_path / "bad.json"), "--stage", "1",
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "2 invalid row(s)" in result.output and "bad.json:row 4" in result.output
    assert "bad.json:row 6" in result.output
    assert not (tmp_path / "o" / "metrics.jsonl").exists()  # nothing trained
    _train(["--stage1-data", str(tmp_path / "bad.json"), "--stage", "1", "--out", str(tmp_path / "o2"),
            "--skip-invalid", "--max-steps", "1"])
    rejects = (tmp_path / "o2" / "rejected-stage1.jsonl").read_text().splitlines()
    assert len(rejects) == 2 and "missing.png" in rejects[0]


def test_resume_gives_the_same_losses(colour_data, tmp_path, monkeypatch):
    from vlx.train.trainer import LlavaTrainer

    args = ["--stage1-data", str(colour_data / "captions.json"), "--stage", "1", "--max-steps", "6",
            "--save-steps", "3", "--global-batch-size", "4", "--per-device-batch-size", "4"]
    _train(args + ["--out", str(tmp_path / "full")])

    original = LlavaTrainer.training_step

    def crash_at_step_5(self, *a, **kw):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("simulated kill")
        return original(self, *a, **kw)

    monkeypatch.setattr(LlavaTrainer, "training_step", crash_at_step_5)
    result = runner.invoke(app, ["train-base", "--preset", "tiny", *args, "--out", str(tmp_path / "resumed")])
    assert result.exit_code != 0
    assert (tmp_path / "resumed" / "checkpoints" / "stage1" / "checkpoint-3").is_dir()
    assert not (tmp_path / "resumed" / "vlx_run.json").exists()
    monkeypatch.setattr(LlavaTrainer, "training_step", original)
    _train(args + ["--out", str(tmp_path / "resumed"), "--resume"])

    full, resumed = _losses(tmp_path / "full", "stage1"), _losses(tmp_path / "resumed", "stage1")
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(full[step], rel=1e-6), (step, full, resumed)
    a, b = _state(tmp_path / "full"), _state(tmp_path / "resumed")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)


def test_two_processes_equal_one_with_the_same_global_batch(colour_data, tmp_path):
    """accelerate + gloo DDP on CPU, 2 x 2 samples, against 1 process x 2 samples x 2 accumulation."""
    common = ["train-base", "--preset", "tiny", "--stage1-data", str(colour_data / "captions.json"),
              "--stage2-data", str(colour_data / "instruct.json"), "--max-steps", "3",
              "--global-batch-size", "4", "--per-device-batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLX_PRECISION": "fp32"}
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    config = Path(__file__).resolve().parent.parent / "templates" / "accelerate" / "cpu_2proc.yaml"
    two = subprocess.run([accelerate, "launch", "--config_file", str(config), "-m", "vlx.cli", *common,
                          "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "vlx.cli", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    for stage in ("stage1", "stage2"):
        l1, l2 = _losses(tmp_path / "one", stage), _losses(tmp_path / "two", stage)
        assert sorted(l1) == sorted(l2) == [1, 2, 3]
        for step in l1:
            assert l2[step] == pytest.approx(l1[step], rel=1e-5)
    a, b = _state(tmp_path / "one"), _state(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_projector_rate_is_its_own_group_and_the_logged_rate_is_the_runs(tmp_path):
    from transformers import TrainingArguments

    from vlx.train.trainer import LlavaTrainer

    torch.manual_seed(0)
    model, _ = build_llava(ModelConfig(preset="tiny"))
    model.model.vision_tower.requires_grad_(False)  # frozen, as in every recipe: the projector comes first
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, report_to=[], use_cpu=True)
    trainer = LlavaTrainer(model=model, args=args, projector_lr=5e-5)
    groups = trainer.create_optimizer().param_groups
    projector = {id(p) for p in model.model.multi_modal_projector.parameters()}
    assert groups[0]["lr"] == 1e-3  # what the Trainer logs as `learning_rate`
    for g in groups:
        assert g["lr"] == (5e-5 if id(g["params"][0]) in projector else 1e-3)
        assert len({id(p) in projector for p in g["params"]}) == 1


def test_train_base_takes_a_siglip_tower(colour_data, tmp_path):
    """A LLaVA assembled from a SigLIP vision model (no CLS token: every patch feature kept) and a causal LM."""
    from transformers import AutoModelForImageTextToText, SiglipVisionConfig, SiglipVisionModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tower_dir = tmp_path / "siglip"
    torch.manual_seed(0)
    SiglipVisionModel(SiglipVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2)).save_pretrained(tower_dir)
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tower_dir)
    model, processor = build_llava(ModelConfig(preset="tiny", vision=str(tower_dir)))
    assert type(model.model.vision_tower).__name__ == "SiglipVisionModel"
    assert model.config.vision_feature_select_strategy == "full" and model.config.image_seq_length == 16
    assert list(processor.image_processor.image_mean) == [0.5, 0.5, 0.5]  # the tower's statistics, not CLIP's
    out = tmp_path / "base"
    _train(["--stage1-data", str(colour_data / "captions.json"), "--stage2-data", str(colour_data / "instruct.json"),
            "--out", str(out), "--vision", str(tower_dir), "--max-steps", "1"])
    loaded = AutoModelForImageTextToText.from_pretrained(out)  # plain transformers, no vlx
    assert type(loaded.model.vision_tower).__name__ == "SiglipVisionModel"
    from PIL import Image

    from vlx.model.build import load_llava

    model, processor = load_llava(out)
    inputs = processor(text=["<image>\nWhat colour?"], images=[Image.new("RGB", (40, 30), (200, 0, 0))],
                       return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 16
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()
