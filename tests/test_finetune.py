"""`vlx finetune` and `vlx export` on the tiny preset."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vlx.cli import app

runner = CliRunner()
POI = Path(__file__).resolve().parent.parent / "templates" / "poi.py"


def _target(i: int) -> dict:
    return {"pois": [{"name": f"Cafe {i}", "category": ["cafe", "bakery", "bar"][i % 3],
                      "address": {"house_number": str(10 + i), "street": None}, "phone": None, "website": None,
                      "opening_hours": [{"first_day": "mon", "last_day": "fri", "opens": "08:00",
                                         "closes": "18:00"}] if i % 2 else [],
                      "open_24h": False}]}


@pytest.fixture(scope="module")
def base_and_rows(colour_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    result = runner.invoke(app, ["train-base", "--preset", "tiny", "--stage1-data", str(colour_data / "captions.json"),
                                 "--stage2-data", str(colour_data / "instruct.json"), "--out", str(root / "base"),
                                 "--max-steps", "1"])
    assert result.exit_code == 0, result.output
    rows = []
    for i in range(12):
        Image.new("RGB", (40, 40), (20 * i, 100, 200 - 10 * i)).save(root / f"shop{i}.png")
        rows.append({"image": f"shop{i}.png", "target": _target(i)})
    (root / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


@pytest.fixture(scope="module")
def ft_run(base_and_rows, colour_data):
    root = base_and_rows
    digest = hashlib.sha256((root / "base" / "model.safetensors").read_bytes()).hexdigest()
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(root / "base"),
                                 "--data", str(root / "rows.jsonl"), "--out", str(root / "ft"),
                                 "--chat-data", str(colour_data / "instruct.json"), "--chat-ratio", "0.5",
                                 "--max-steps", "3", "--val-fraction", "0.25"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root, root / "ft", digest


def test_a_runs_own_config_replays_it_from_another_folder(ft_run, tmp_path, monkeypatch):
    """`vlx finetune --config RUN/config.yaml --out NEW`: base, schema and data come from the recorded config
    (absolute paths), so the same run is trained again from any folder; flags still override it."""
    import yaml

    root, run, _ = ft_run
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["finetune", "--config", str(run / "config.yaml"), "--out", "again", "--max-steps", "1"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    first, again = (yaml.safe_load((d / "config.yaml").read_text()) for d in (run, tmp_path / "again"))
    for key in ("base", "schema", "schema_class", "template"):
        assert again[key] == first[key], key
    assert again["data"] == first["data"] and Path(first["data"]["data"]).is_absolute()
    assert again["train"]["max_steps"] == 1 and first["train"]["max_steps"] == 3  # the flag won
    assert again["lora"] == first["lora"]


def test_finetune_without_a_base_says_where_one_comes_from(tmp_path):
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--data", "rows.jsonl", "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "--base is required (or a --config that sets base:" in result.output


def test_only_lora_and_projector_change(ft_run):
    from vlx.export import load_finetune
    from vlx.model import load_llava

    root, run, digest = ft_run
    assert hashlib.sha256((root / "base" / "model.safetensors").read_bytes()).hexdigest() == digest
    base, _ = load_llava(root / "base")
    tuned, _, info = load_finetune(run, merge=False)
    assert info.schema_class == "StreetScene"
    base_state = base.state_dict()
    changed_lora, projector_changed = 0, False
    for name, value in tuned.state_dict().items():
        if "lora_B" in name:
            changed_lora += int(value.abs().sum() > 0)  # B starts at zero: non-zero means it trained
        elif "modules_to_save" in name:
            key = name.replace("base_model.model.", "").replace(".modules_to_save.default", "")
            projector_changed |= not torch.equal(value, base_state[key])
        elif "lora_" not in name and "original_module" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(value, base_state[key]), f"base weight changed: {name}"
    assert changed_lora > 0 and projector_changed


def test_run_directory_and_logs(ft_run):
    root, run, _ = ft_run
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "schema.py", "schema.json",
                 "format_prompt.txt", "config.yaml", "metrics.jsonl", "loss.png", "vlx_run.json"):
        assert (run / name).exists(), name
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in entries if e["stage"] == "finetune" and "loss" in e]
    assert any("loss_extraction" in e for e in train) and any("loss_chat" in e for e in train)
    evals = [e for e in entries if e["stage"] == "finetune-eval"]
    assert evals and 0.0 <= evals[-1]["schema_valid_rate"] <= 1.0
    assert any(k.startswith("acc/pois[].category") for k in evals[-1])
    assert json.loads((run / "schema.json").read_text())["title"] == "StreetScene"


def test_training_prompt_is_the_extraction_prompt(ft_run):
    """The human turn trained on is exactly what `Extractor` sends at inference."""
    from vlx.api import load
    from vlx.data.templates import Turn, prompt_text
    from vlx.schema import load_schema, validate_rows
    from vlx.train.finetune import _extraction_rows

    root, run, _ = ft_run
    fmt = (run / "format_prompt.txt").read_text()
    report = validate_rows(root / "rows.jsonl", load_schema(POI))
    row = _extraction_rows(report, fmt)[0]
    trained = prompt_text("vicuna_v1", [Turn(row.conversations[0]["value"], None)])
    assert load(run).prompt(f"<image>\n{load(run).format_prompt}") == trained


def test_five_problems_listed_before_training(base_and_rows, tmp_path):
    root = base_and_rows
    good = json.loads((root / "rows.jsonl").read_text().splitlines()[0])
    wrong_enum = json.loads(json.dumps(good)); wrong_enum["target"]["pois"][0]["category"] = "casino"
    missing = json.loads(json.dumps(good)); del missing["target"]["pois"][0]["name"]
    extra = json.loads(json.dumps(good)); extra["target"]["pois"][0]["rating"] = 5
    no_image = json.loads(json.dumps(good)); no_image["image"] = "nowhere.png"
    lines = [json.dumps(r) for r in (good, wrong_enum, missing, extra)] + ["{not json"]
    lines += [json.dumps(no_image), json.dumps(good)]
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(lines) + "\n")
    args = ["finetune", "--schema", str(POI), "--base", str(root / "base"), "--data", str(data), "--max-steps", "1",
            "--chat-ratio", "0", "--image-folder", str(root)]
    result = runner.invoke(app, args + ["--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    out = result.output
    assert "5 invalid row(s) of 7" in out
    assert "row 2: target.pois[0].category" in out
    assert "row 3: target.pois[0].name" in out
    assert "row 4: target.pois[0].rating" in out
    assert "row 5: line: not valid JSON" in out
    assert "row 6: image" in out and "nowhere.png" in out
    assert not (tmp_path / "out" / "metrics.jsonl").exists()

    result = runner.invoke(app, args + ["--out", str(tmp_path / "skip"), "--skip-invalid", "--val-fraction", "0"])
    assert result.exit_code == 0, result.output
    rejects = [json.loads(line) for line in (tmp_path / "skip" / "rejected.jsonl").read_text().splitlines()]
    assert sorted({r["row"] for r in rejects}) == [2, 3, 4, 5, 6]


def test_export_matches_base_plus_adapter(ft_run, tmp_path):
    from vlx.export import load_finetune

    root, run, _ = ft_run
    result = runner.invoke(app, ["export", "--model", str(run), "--out", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    model, processor, _ = load_finetune(run, merge=False)
    image = Image.new("RGB", (30, 30), (10, 200, 30))
    inputs = processor(images=image, text="USER: <image>\nHi ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.save(expected, tmp_path / "expected.pt")
    image.save(tmp_path / "img.png")
    script = f"""
import sys, torch
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration
m = LlavaForConditionalGeneration.from_pretrained({str(tmp_path / 'merged')!r})
p = AutoProcessor.from_pretrained({str(tmp_path / 'merged')!r})
inputs = p(images=Image.open({str(tmp_path / 'img.png')!r}), text="USER: <image>\\nHi ASSISTANT:", return_tensors="pt")
with torch.no_grad():
    out = m(**inputs).logits
assert "vlx" not in sys.modules and "peft" not in sys.modules
torch.testing.assert_close(out, torch.load({str(tmp_path / 'expected.pt')!r}), rtol=1e-4, atol=1e-4)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


def test_qlora_without_gpu_fails_at_start(base_and_rows, tmp_path):
    root = base_and_rows
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(root / "base"), "--data",
                                 str(root / "rows.jsonl"), "--out", str(tmp_path / "q"), "--load-in-4bit"])
    assert result.exit_code == 2
    assert "needs a CUDA GPU" in result.output and "bitsandbytes" in result.output


def test_run_trained_without_format_prompt_is_prompted_without_one(tiny):
    """The ablation stores an empty format prompt; extraction must not fall back to the derived one."""
    from vlx.api import Extractor
    from vlx.schema import load_schema

    model, processor = tiny
    Schema = load_schema(POI)
    ex = Extractor(model, processor, template="vicuna_v1", Schema=Schema, format_prompt="")
    assert ex._schema_and_prompt(None, False) == (Schema, "")
    assert ex._schema_and_prompt(Schema, False) == (Schema, "")


def test_report_to_tensorboard_gets_loss_accuracies_and_the_sample_table(base_and_rows, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = base_and_rows
    out = tmp_path / "tb"
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(root / "base"), "--data",
                                 str(root / "rows.jsonl"), "--out", str(out), "--max-steps", "2", "--chat-ratio", "0",
                                 "--val-fraction", "0.25", "--report-to", "tensorboard"])
    assert result.exit_code == 0, result.output
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 and all(s["step"] == 2 for s in samples)  # 12 rows, a quarter held out
    for s in samples:
        assert s["target"]["pois"] and s["image"].endswith(".png")
        if s["prediction"] is None:
            assert "pois[0].name" in s["differs"]
        else:
            from vlx.eval.fields import differing_fields

            assert s["differs"] == differing_fields(s["prediction"], s["target"])
    [logdir] = list((out / "tensorboard").iterdir())
    events = EventAccumulator(str(logdir), size_guidance={"tensors": 0}).Reload()
    tags = events.Tags()
    assert "train/loss" in tags["scalars"] and "held_out/schema_valid_rate" in tags["scalars"]
    assert "held_out/samples/text_summary" in tags["tensors"]
    bad = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(root / "base"), "--data",
                              str(root / "rows.jsonl"), "--out", str(tmp_path / "x"), "--report-to", "comet"])
    assert bad.exit_code == 2 and "use none, tensorboard, wandb or mlflow" in bad.stderr


def test_differing_fields_names_the_leaves():
    from vlx.eval.fields import differing_fields

    target = {"pois": [{"name": "A", "address": {"street": "X"}, "hours": ["mon"]}]}
    assert differing_fields(target, target) == []
    assert differing_fields({"pois": [{"name": "B", "address": {"street": "X"}, "hours": []}]}, target) == \
        ["pois[0].hours", "pois[0].name"]
    assert differing_fields({"pois": []}, target) == ["pois", "pois[0].address.street", "pois[0].hours", "pois[0].name"]
    assert differing_fields(None, target) == ["pois[0].address.street", "pois[0].hours", "pois[0].name"]


def test_finetune_with_packing_logs_the_same_losses_per_source(base_and_rows, colour_data, tmp_path):
    root = base_and_rows
    common = ["finetune", "--schema", str(POI), "--base", str(root / "base"), "--data", str(root / "rows.jsonl"),
              "--chat-data", str(colour_data / "instruct.json"), "--chat-ratio", "0.5", "--max-steps", "3",
              "--val-fraction", "0", "--lora-dropout", "0", "--global-batch-size", "4", "--per-device-batch-size", "4"]
    logs = {}
    for name, extra in (("padded", []), ("packed", ["--packing"])):
        result = runner.invoke(app, [*common, "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output + repr(result.exception)
        logs[name] = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                      if "loss" in json.loads(line)]
    assert len(logs["padded"]) == 3
    for padded, packed in zip(logs["padded"], logs["packed"]):
        for key in ("loss", "loss_extraction", "loss_chat"):
            assert key in padded and packed[key] == pytest.approx(padded[key], rel=1e-4, abs=2e-4), (key, padded, packed)


def test_frozen_weights_kept_in_bf16_give_the_same_loss_and_gradients_as_autocast(tiny):
    """bf16 fine-tunes keep the frozen Linear weights under LoRA in bf16 (`cast_frozen_bases`): under autocast
    the matmuls see the same bf16 numbers, so the loss and every trainable gradient are unchanged."""
    import copy

    from vlx.config import LoraConfig
    from vlx.train.finetune import attach_lora

    model, _ = tiny
    runs = {}
    for name, frozen in (("autocast", None), ("bf16 bases", torch.bfloat16)):
        torch.manual_seed(0)
        lora = attach_lora(copy.deepcopy(model), LoraConfig(r=4, alpha=8, dropout=0.0), frozen_dtype=frozen)
        torch.manual_seed(1)
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.data.normal_(0, 0.1)  # B starts at zero: give A a gradient too
        base_weights = {p.dtype for n, p in lora.named_parameters() if "base_layer.weight" in n}
        assert base_weights == {frozen or torch.float32}
        ids = torch.randint(5, 300, (2, 24), generator=torch.Generator().manual_seed(2))
        pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
        image = model.config.image_token_id
        ids[:, 2:2 + model.config.image_seq_length] = image
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = lora(input_ids=ids, pixel_values=pixels, labels=ids)
        out.loss.backward()
        runs[name] = (out.loss.detach(), {n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad})
    (loss_a, grads_a), (loss_b, grads_b) = runs.values()
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and any(g.abs().sum() > 0 for n, g in grads_a.items() if "lora_A" in n)
    for n in grads_a:
        assert torch.equal(grads_a[n], grads_b[n]), n


def test_decision_weight_raises_the_objective_not_the_token_losses(ft_run, colour_data, tmp_path):
    """`--decision-weight 5`: the same first batch, a larger objective (its branching tokens count 5 times),
    the same plain per-source losses (logged unweighted), and the weight recorded in the run's config."""
    import yaml

    root, plain, _ = ft_run
    for name, extra in (("weighted", []), ("ends", ["--weigh-string-ends"])):
        result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(root / "base"),
                                     "--data", str(root / "rows.jsonl"), "--out", str(tmp_path / name),
                                     "--chat-data", str(colour_data / "instruct.json"), "--chat-ratio", "0.5",
                                     "--max-steps", "3", "--val-fraction", "0.25", "--decision-weight", "5", *extra])
        assert result.exit_code == 0, result.output + repr(result.exception)
    first = {}
    for name, run in (("plain", plain), ("weighted", tmp_path / "weighted"), ("ends", tmp_path / "ends")):
        first[name] = next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
                           if "loss" in json.loads(line))
    # The tokens closing the strings count 5 times as well: a larger objective again.
    assert first["ends"]["loss"] > first["weighted"]["loss"] > 1.2 * first["plain"]["loss"], first
    for key in ("loss_extraction", "loss_chat"):
        assert first["weighted"][key] == pytest.approx(first["plain"][key], rel=1e-4), (key, first)
        assert first["ends"][key] == pytest.approx(first["plain"][key], rel=1e-4), (key, first)
    data = {name: yaml.safe_load((tmp_path / name / "config.yaml").read_text())["data"] for name in ("weighted", "ends")}
    assert data["weighted"]["decision_weight"] == 5.0 and data["weighted"]["weigh_string_ends"] is False
    assert data["ends"]["weigh_string_ends"] is True


def test_decision_weight_must_be_positive(base_and_rows, tmp_path):
    root = base_and_rows
    result = runner.invoke(app, ["finetune", "--schema", str(POI), "--base", str(root / "base"),
                                 "--data", str(root / "rows.jsonl"), "--out", str(tmp_path / "r"),
                                 "--decision-weight", "0"])
    assert result.exit_code != 0 and "--decision-weight 0" in result.output, result.output
