"""The extraction API and CLI on tiny runs: loading kinds of run, stored format prompt, schema
changes, bad inputs, per-image errors in batches, chat."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from pydantic import BaseModel, Field
from typer.testing import CliRunner

import vlx
from vlx.api import ImageError, load_image
from vlx.cli import app
from vlx.model.build import ModelLoadError
from vlx.run import RunInfo
from vlx.schema import SchemaError, load_schema

POI_FILE = Path(__file__).resolve().parents[1] / "templates" / "poi.py"
FORMAT_PROMPT = "List the storefronts as JSON."


class Sign(BaseModel):
    """The text on the largest sign."""

    text: str = Field(min_length=1, max_length=12)
    lit: bool


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VLX_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vlx-cache"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A base run and a finetune run (LoRA adapter over it) with the POI schema and a format prompt."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("runs")
    model, processor = vlx.build_llava(vlx.ModelConfig(preset="tiny"))
    base = root / "base"
    model.save_pretrained(base)
    processor.save_pretrained(base)
    RunInfo(kind="base", template="vicuna_v1").save(base)

    run = root / "finetune"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(run / "adapter")
    shutil.copy(POI_FILE, run / "schema.py")
    (run / "format_prompt.txt").write_text(FORMAT_PROMPT + "\n")
    RunInfo(kind="finetune", template="vicuna_v1", base=str(base), schema_class="StreetScene").save(run)
    return {"base": base, "finetune": run}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    for i, colour in enumerate([(220, 20, 20), (20, 200, 20), (20, 20, 220)]):
        Image.new("RGB", (40 + 4 * i, 30), colour).save(d / f"img{i}.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG not really")
    return d


@pytest.fixture(scope="module")
def finetuned(runs):
    return vlx.load(runs["finetune"], max_new_tokens=None)


def test_finetune_run_loads_with_its_schema_prompt_and_adapter(runs, finetuned, images):
    assert finetuned.Schema.__name__ == "StreetScene"
    assert finetuned.format_prompt == FORMAT_PROMPT
    prompt = finetuned.prompt(f"<image>\n{finetuned.format_prompt}")
    assert prompt.endswith(f"USER: <image>\n{FORMAT_PROMPT} ASSISTANT:")
    result = finetuned.extract(images / "img0.png")
    assert type(result).__name__ == "StreetScene"
    # The adapter was applied: the merged weights differ from the base run's.
    base = vlx.load(runs["base"])
    q = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(finetuned.model.state_dict()[q], base.model.state_dict()[q])


def test_extract_accepts_paths_pil_images_and_bytes(finetuned, images):
    path = images / "img1.png"
    from_path = finetuned.extract(path)
    assert finetuned.extract(str(path)) == from_path
    assert finetuned.extract(Image.open(path)) == from_path
    assert finetuned.extract(path.read_bytes()) == from_path


def test_extract_many_keeps_order_and_isolates_a_bad_image(finetuned, images):
    paths = [images / "img0.png", images / "corrupt.png", images / "img2.png", images / "missing.png",
             images / "img1.png"]
    results = finetuned.extract_many(paths, batch_size=2)
    assert [type(r).__name__ for r in results] == ["StreetScene", "ImageError", "StreetScene", "ImageError",
                                                   "StreetScene"]
    assert "corrupt.png: cannot be read as an image" in str(results[1])
    assert "missing.png: image does not exist" in str(results[3])
    # Same answers as one at a time: batching (left padding) changes nothing.
    for path, result in zip(paths, results):
        if not isinstance(result, Exception):
            assert finetuned.extract(path) == result


def test_schema_differing_from_the_run_is_refused_with_a_diff(finetuned, images, tmp_path):
    changed = tmp_path / "poi_pub.py"
    changed.write_text(POI_FILE.read_text().replace('    florist = "florist"\n',
                                                    '    florist = "florist"\n    pub = "pub"\n'))
    with pytest.raises(SchemaError) as e:
        finetuned.extract(images / "img0.png", load_schema(changed))
    message = str(e.value)
    assert "StreetScene differs from the schema" in message and "allow_schema_change=True" in message
    diff = [line.strip() for line in message.splitlines() if line.startswith(("  -", "  +"))]
    assert len(diff) == 2
    assert diff[0].startswith("-pois[].category:") and '"pub"' not in diff[0]
    assert diff[1].startswith("+pois[].category:") and diff[1].endswith('"florist","pub"]}')
    sign = finetuned.extract(images / "img0.png", Sign, allow_schema_change=True)
    assert isinstance(sign, Sign)


def test_the_runs_own_schema_reloaded_is_accepted(finetuned, runs, images):
    Same = load_schema(runs["finetune"] / "schema.py")
    assert isinstance(finetuned.extract(images / "img0.png", Same), BaseModel)


def test_base_model_takes_the_schema_per_call(runs, images):
    result = vlx.extract(images / "img2.png", Sign, model=runs["base"])
    assert isinstance(result, Sign)
    base = vlx.load(runs["base"])
    with pytest.raises(SchemaError, match="was not fine-tuned with a schema; pass one"):
        base.extract(images / "img2.png")


def test_plain_llava_checkpoint_uses_its_chat_template(runs, tmp_path, images):
    plain = tmp_path / "plain"
    shutil.copytree(runs["base"], plain)
    (plain / "vlx_run.json").unlink()
    ex = vlx.load(plain)
    assert ex.template == "vicuna_v1"  # recognised from the stored chat template
    assert isinstance(ex.extract(images / "img0.png", Sign), Sign)


def test_unsupported_schema_is_refused_before_decoding(runs, images):
    class Free(BaseModel):
        note: str

    with pytest.raises(SchemaError, match=r"field 'note': the string has no maximum length"):
        vlx.load(runs["base"]).extract(images / "img0.png", Free)


def test_bad_model_directories(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a directory"):
        vlx.load(tmp_path / "nothing")
    with pytest.raises(ModelLoadError, match="neither a vlx run .* nor a LLaVA checkpoint"):
        vlx.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="vlx cannot extract with 'bert' checkpoints yet; it can with: llava"):
        vlx.load(tmp_path)


def test_bad_images_raise_clear_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(ImageError, match=r"empty.png: is an empty file \(0 bytes\)"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="text.png: cannot be read as an image"):
        load_image(tmp_path / "text.png")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="bytes are empty"):
        load_image(b"")
    with pytest.raises(ImageError, match=r"the image is empty \(0x0 pixels\)"):
        load_image(Image.new("RGB", (0, 0)))
    buf = io.BytesIO()
    Image.new("L", (5, 3)).save(buf, format="PNG")
    assert load_image(buf.getvalue()).mode == "RGB"


def test_none_backend_garbage_raises(finetuned, images):
    with pytest.raises(vlx.ExtractionError, match="not a valid StreetScene .*backend 'none'"):
        finetuned.extract(images / "img0.png", backend="none", max_new_tokens=16)


def test_chat_is_unconstrained_and_takes_no_format_prompt(finetuned, images):
    seen = []
    original = finetuned.prompt
    finetuned.prompt = lambda user: seen.append(user) or original(user)
    try:
        answer = finetuned.chat(images / "img0.png", "What colour is it?", max_new_tokens=6)
        text_only = finetuned.chat(None, "Say hello.", max_new_tokens=6)
    finally:
        del finetuned.prompt
    assert isinstance(answer, str) and isinstance(text_only, str)
    assert seen == ["<image>\nWhat colour is it?", "Say hello."]


def test_cli_extract_folder_with_a_corrupt_file(runs, images):
    result = CliRunner().invoke(app, ["extract", "--model", str(runs["finetune"]), str(images), "--batch-size", "2"])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [Path(line["image"]).name for line in lines] == ["corrupt.png", "img0.png", "img1.png", "img2.png"]
    assert "cannot be read as an image" in lines[0]["error"]
    for line in lines[1:]:
        assert set(line) == {"image", "result"} and isinstance(line["result"]["pois"], list)
    assert "1 of 4 image(s) failed" in result.stderr


def test_cli_extract_all_good_exits_zero(runs, images):
    result = CliRunner().invoke(app, ["extract", "--model", str(runs["base"]), "--schema", str(POI_FILE),
                                      str(images / "img0.png")])
    assert result.exit_code == 0, result.output
    [line] = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert line["image"].endswith("img0.png") and "pois" in line["result"]


def test_cli_chat(runs, images):
    result = CliRunner().invoke(app, ["chat", "--model", str(runs["base"]), "--image", str(images / "img0.png"),
                                      "--max-new-tokens", "5", "What is this?"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    bad = CliRunner().invoke(app, ["chat", "--model", str(runs["base"]), "--image", str(images / "corrupt.png"), "hi"])
    assert bad.exit_code == 2 and "cannot be read as an image" in bad.stderr
