"""Synthetic data: determinism, LLaVA format, POI targets against templates/poi.py, learnability."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from vlx.cli import app
from vlx.data.formats import load_rows
from vlx.data.shapes import POSITION_PHRASE, POSITIONS
from vlx.data.synth import (
    MC_PROMPT,
    SHORT_ANSWER_PROMPT,
    image_count,
    synth,
    synth_captions,
    synth_chat,
    synth_instruct,
    synth_poi,
)
from vlx.data.street_text import _business_name
from vlx.data.templates import to_turns

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"captions": 64, "instruct": 64, "poi": 224, "chat": 224}


def _street_scene_model():
    spec = importlib.util.spec_from_file_location("poi_schema_under_test", ROOT / "templates" / "poi.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.StreetScene


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["captions", "instruct", "poi", "chat"])
def test_same_seed_same_bytes(tmp_path, kind):
    n = 12
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        synth(kind, tmp_path / name, n, seed=seed, image_size=SMALL[kind])
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert sum(k.startswith("images/") for k in a) == image_count(kind, n)
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_worker_count_does_not_change_the_output(tmp_path):
    synth_poi(tmp_path / "one", 6, seed=5, image_size=224, workers=1)
    synth_poi(tmp_path / "two", 6, seed=5, image_size=224, workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_first_rows_do_not_depend_on_n(tmp_path):
    synth_captions(tmp_path / "small", 3, image_size=64)
    synth_captions(tmp_path / "large", 8, image_size=64)
    small, large = (json.loads((tmp_path / d / "data.json").read_text()) for d in ("small", "large"))
    assert large[:3] == small
    for i in range(3):
        name = f"images/captions_{i:06d}.png"
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "large" / name).read_bytes()


def _check_llava_rows(root: Path, rows: list[dict], size: int) -> None:
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    for row in rows:
        turns = to_turns(row["conversations"])  # alternation, non-empty answers
        text = " ".join(c["value"] for c in row["conversations"])
        if "image" in row:
            assert row["conversations"][0]["value"].startswith("<image>\n")
            assert text.count("<image>") == 1
            with Image.open(root / row["image"]) as img:
                img.load()
                assert img.size == (size, size) and img.mode == "RGB"
        else:
            assert "<image>" not in text
        assert all(t.assistant.strip() for t in turns)


def test_captions_are_llava_pretrain_rows(tmp_path):
    synth_captions(tmp_path, 20, seed=3, image_size=96)
    rows = json.loads((tmp_path / "data.json").read_text())
    assert len(rows) == 20
    _check_llava_rows(tmp_path, rows, 96)
    for row in rows:
        assert len(row["conversations"]) == 2 and "image" in row
        caption = row["conversations"][1]["value"]
        assert caption.endswith(".") and any(p in caption for p in POSITION_PHRASE.values())


def test_instruct_mixture(tmp_path):
    mixture = synth_instruct(tmp_path, 60, seed=1, image_size=64)
    spec = yaml.safe_load(mixture.read_text())
    sources = {s["name"]: s for s in spec["sources"]}
    assert set(sources) == {"conversation", "vqa", "mc", "text"}
    assert sources["vqa"]["format_prompt"] == SHORT_ANSWER_PROMPT
    assert sources["mc"]["format_prompt"] == MC_PROMPT
    assert sources["conversation"]["format_prompt"] is None and sources["text"]["format_prompt"] is None
    everything = json.loads((tmp_path / "data.json").read_text())
    assert len(everything) == 60
    _check_llava_rows(tmp_path, everything, 64)
    for name, source in sources.items():
        rows = json.loads((tmp_path / source["path"]).read_text())
        assert rows and all(r["source"] == name for r in rows) and source["ratio"] == 1.0
        for row in rows:
            humans = [c["value"] for c in row["conversations"][::2]]
            answers = [c["value"] for c in row["conversations"][1::2]]
            # The loader appends format prompts; the data never carries them.
            assert not any(SHORT_ANSWER_PROMPT in h or MC_PROMPT in h for h in humans)
            assert ("image" in row) == (name != "text")
            if name == "vqa":
                assert all(len(a.split()) <= 2 and not a.endswith(".") for a in answers)
            if name == "mc":
                for h, a in zip(humans, answers):
                    options = re.findall(r"^([A-D])\. ", h, flags=re.M)
                    assert len(options) >= 2 and a in options


def test_street_captions_and_vqa_say_what_the_signs_read(tmp_path):
    """Street captions (stage 1) and street VQA (stage 2) answer from the scene's own ground truth:
    the same seed drawn as `poi` rows gives the same scenes' targets."""
    captions = json.loads(synth_captions(tmp_path / "cap", 12, seed=4, image_size=224,
                                         mix={"shapes": 0.5, "street": 0.5}).read_text())
    _check_llava_rows(tmp_path / "cap", captions, 224)
    street = [r["conversations"][1]["value"] for r in captions[6:]]
    assert all(c.startswith(("A street with ", "A residential building")) for c in street)
    assert all(any(p in c for p in POSITION_PHRASE.values()) for c in (r["conversations"][1]["value"] for r in captions[:6]))
    assert any('called "' in c and "at number " in c for c in street)

    mixture = synth_instruct(tmp_path / "inst", 40, seed=4, image_size=224, mix={"vqa": 0.5, "street_vqa": 0.5},
                             spell=("street_vqa",))
    sources = {s["name"]: s for s in yaml.safe_load(mixture.read_text())["sources"]}
    assert sources["street_vqa"]["format_prompt"] == SHORT_ANSWER_PROMPT
    assert sources["street_vqa"]["spell"] is True and "spell" not in sources["vqa"]
    assert {r.source for r in load_rows(mixture) if r.spell} == {"street_vqa"}
    rows = json.loads((tmp_path / "inst" / "street_vqa.json").read_text())
    assert len(rows) == 20
    _check_llava_rows(tmp_path / "inst", rows, 224)
    asked = Counter()
    for row in rows:
        for q, a in zip(row["conversations"][::2], row["conversations"][1::2]):
            q, a = q["value"].removeprefix("<image>\n"), a["value"]
            kind = re.match(r"What is the (name|house number|phone number|website)|What kind|What street|How many|When is",
                            q).group(0)
            asked[kind] += 1
            assert a and not a.endswith(".")
            if kind == "How many":
                assert a in {"0", "1", "2"}
    assert asked["What is the name"] and asked["What kind"] and asked["How many"]


def test_street_vqa_answers_match_poi_targets():
    from vlx.data.street_text import _street_vqa
    from vlx.data.synth import TextStyle, _rng, _street_scene

    asked = Counter()
    for i in range(30):
        _, pois = _street_scene(_rng(0, "poi", i), 224, [TextStyle()])
        conv = _street_vqa(_rng(1, "poi", i), pois)
        for q, a in zip(conv[::2], conv[1::2]):
            q, a = q["value"].removeprefix("<image>\n"), a["value"]
            if q.startswith("What is the name of the shop"):
                side = 0 if q.endswith("shop?") or "left" in q else 1
                assert a == pois[side]["name"]
            elif q.startswith("What is the house number of"):
                assert a in {p["address"]["house_number"] or "none" for p in pois if q.endswith(f'"{p["name"]}"?')}
            elif q.startswith("What is the phone number of"):
                assert a in {p["phone"] or "none" for p in pois if q.endswith(f'"{p["name"]}"?')}
            elif q == "What street is this?":
                assert a == (pois[0]["address"]["street"] or "none")
                asked["street: none" if a == "none" else "street: a name"] += 1
            elif q == "How many shops are in the image?":
                assert a == str(len(pois))
            asked["none" if a == "none" else "a value"] += 1
    # What is not on the facade is asked about as well as what is (whether a field has a value at all).
    assert all(asked[k] for k in ("none", "a value", "street: none", "street: a name")), asked


def test_chat_rows_are_prose(tmp_path):
    synth_chat(tmp_path, 24, seed=2, image_size=224)
    rows = json.loads((tmp_path / "data.json").read_text())
    assert len(rows) == 24
    _check_llava_rows(tmp_path, rows, 224)
    assert {r["source"] for r in rows} == {"greeting", "knowledge", "image_chat", "street_chat"}
    for row in rows:
        for turn in row["conversations"]:
            # Chat replay teaches free-form answers: no format prompts, no JSON.
            assert SHORT_ANSWER_PROMPT not in turn["value"] and MC_PROMPT not in turn["value"]
            assert not turn["value"].lstrip().startswith(("{", "["))
        assert all(a["value"].endswith((".", "!", "?")) for a in row["conversations"][1::2])


def test_poi_splits_validate_against_the_schema(tmp_path):
    StreetScene = _street_scene_model()
    paths = synth_poi(tmp_path, 40, seed=0, image_size=224)
    sizes = {split: len(p.read_text().splitlines()) for split, p in paths.items()}
    assert sizes == {"train": 32, "val": 4, "test": 4}
    images, counts = set(), Counter()
    for p in paths.values():
        for line in p.read_text().splitlines():
            row = json.loads(line)
            assert set(row) == {"image", "target"}
            canonical = StreetScene.model_validate(row["target"]).model_dump(mode="json")
            # Canonical serialization: schema field order, explicit nulls, compact separators.
            assert line == json.dumps({"image": row["image"], "target": canonical}, ensure_ascii=False, separators=(",", ":"))
            with Image.open(tmp_path / row["image"]) as img:
                img.load()
                assert img.size == (224, 224)
            images.add(row["image"])
            counts[len(row["target"]["pois"])] += 1
    assert len(images) == 40
    assert counts[1] > counts[0] > 0 and counts[2] > 0  # single shops, empty streets and pairs


def test_business_names_are_varied():
    rng = np.random.default_rng(0)
    names = [_business_name(rng, "cafe") for _ in range(3000)]
    assert len(set(names)) > 1500
    assert all(1 <= len(n) <= 40 for n in names)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="image-size"):
        synth_poi(tmp_path, 2, image_size=100)
    with pytest.raises(ValueError, match="unknown instruct source"):
        synth_instruct(tmp_path, 2, mix={"ocr": 1.0})
    with pytest.raises(ValueError, match=r"spell: unknown instruct source\(s\) \['ocr'\]"):
        synth_instruct(tmp_path, 2, spell=("ocr",))
    with pytest.raises(ValueError, match="unknown caption source"):
        synth_captions(tmp_path, 2, mix={"faces": 1.0})
    with pytest.raises(ValueError, match="image-size"):
        synth_captions(tmp_path, 2, image_size=96, mix={"street": 1.0})
    with pytest.raises(ValueError, match="--kind"):
        synth("video", tmp_path, 2)


def test_cli_synth(tmp_path):
    result = CliRunner().invoke(app, ["data", "synth", "--kind", "captions", "--n", "4", "--out", str(tmp_path), "--image-size", "64"])
    assert result.exit_code == 0, result.output
    assert len(json.loads((tmp_path / "data.json").read_text())) == 4
    result = CliRunner().invoke(app, ["data", "synth", "--kind", "audio", "--n", "4", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--kind" in result.output
    result = CliRunner().invoke(app, ["data", "synth", "--kind", "captions", "--n", "4", "--out", str(tmp_path / "mixed"),
                                      "--image-size", "160", "--mix", "shapes=0.5,street=0.5"])
    assert result.exit_code == 0, result.output
    street = [r for r in json.loads((tmp_path / "mixed" / "data.json").read_text())
              if r["conversations"][1]["value"].startswith(("A street", "A residential"))]
    assert len(street) == 2
    for bad, message in (("street", "NAME=SHARE"), ("lasers=1", "unknown caption source")):
        result = CliRunner().invoke(app, ["data", "synth", "--kind", "captions", "--n", "4", "--out", str(tmp_path / "bad"),
                                          "--image-size", "160", "--mix", bad])
        assert result.exit_code == 2 and message in result.output, result.output


def test_vqa_answers_are_learnable_from_pixels(tmp_path):
    """A nearest-centroid classifier on the asked cell beats the majority answer by a wide margin.

    Colour and shape questions name a position; the features are the mean foreground colour of
    that cell (colour) and its downsampled foreground mask (shape). Trained on 70% of the
    questions, scored on the rest.
    """
    size = 72
    cell = size // 3
    synth_instruct(tmp_path, 800, seed=0, image_size=size, mix={"vqa": 1.0})
    rows = json.loads((tmp_path / "data.json").read_text())
    position_of = {phrase: pos for pos, phrase in POSITION_PHRASE.items()}
    question = re.compile(r"What (colour is the shape|shape is) (.+)\?$")
    data: dict[str, list] = {"colour": [], "shape": []}
    for row in rows:
        img = np.asarray(Image.open(tmp_path / row["image"]).convert("RGB"), dtype=np.float32) / 255
        background = np.median(img.reshape(-1, 3), axis=0)
        conv = row["conversations"]
        for q, a in zip(conv[::2], conv[1::2]):
            m = question.match(q["value"].removeprefix("<image>\n"))
            if not m:
                continue
            col, r = POSITIONS[position_of[m.group(2)]]
            crop = img[r * cell : (r + 1) * cell, col * cell : (col + 1) * cell]
            fg = (np.abs(crop - background).sum(-1) > 0.15).astype(np.float32)
            if m.group(1).startswith("colour"):
                data["colour"].append(((crop * fg[..., None]).sum((0, 1)) / max(fg.sum(), 1.0), a["value"]))
            else:
                small = Image.fromarray((fg * 255).astype(np.uint8)).resize((8, 8), Image.Resampling.BOX)
                data["shape"].append((np.asarray(small, dtype=np.float32).ravel() / 255, a["value"]))
    for task, items in data.items():
        assert len(items) > 200, task
        k = int(len(items) * 0.7)
        train, test = items[:k], items[k:]
        labels = sorted({a for _, a in train})
        centroids = np.stack([np.mean([f for f, a in train if a == label], axis=0) for label in labels])
        predicted = [labels[int(np.argmin(((centroids - f) ** 2).sum(1)))] for f, _ in test]
        accuracy = np.mean([p == a for p, (_, a) in zip(predicted, test)])
        majority = Counter(a for _, a in train).most_common(1)[0][0]
        baseline = np.mean([a == majority for _, a in test])
        assert accuracy > baseline + 0.3, (task, accuracy, baseline)


def test_train_split_shares_leave_validation_and_test_as_the_world_draws_them(tmp_path):
    """`train_shops` and `train_numbered` redraw the train split only: the scored splits are the world's."""
    world = synth_poi(tmp_path / "world", 40, seed=3, image_size=224, splits=(0.5, 0.0, 0.5))
    skewed = synth_poi(tmp_path / "skewed", 40, seed=3, image_size=224, splits=(0.5, 0.0, 0.5),
                       train_shops=(0.0, 0.0, 1.0), train_numbered=0.1)
    assert world["test"].read_text() == skewed["test"].read_text()
    for row in map(json.loads, world["test"].read_text().splitlines()):
        assert (tmp_path / "world" / row["image"]).read_bytes() == (tmp_path / "skewed" / row["image"]).read_bytes()

    def shares(path):
        pois = [p for row in map(json.loads, path.read_text().splitlines()) for p in row["target"]["pois"]]
        counts = Counter(len(json.loads(line)["target"]["pois"]) for line in path.read_text().splitlines())
        return counts, sum(p["address"]["house_number"] is not None for p in pois) / len(pois)

    counts, numbered = shares(skewed["train"])
    assert counts == {2: 20} and numbered < 0.3
    counts, numbered = shares(world["train"])
    assert counts[1] > counts[2] and numbered > 0.6
    with pytest.raises(ValueError, match="train_numbered 1.5"):
        synth_poi(tmp_path / "bad", 4, image_size=224, train_numbered=1.5)


def test_train_websites_oversamples_websites_in_the_train_split_only(tmp_path):
    """Every train-split business has a website with `train_websites=1` (single storefronts show it,
    shortened to fit); the scored splits keep the world's `WEBSITES` share."""
    kw = dict(seed=5, image_size=224, splits=(0.5, 0.0, 0.5), train_shops=(0.0, 1.0, 0.0))
    world = synth_poi(tmp_path / "world", 40, **kw)
    web = synth_poi(tmp_path / "web", 40, train_websites=1.0, **kw)
    assert world["test"].read_text() == web["test"].read_text()

    def share(path):
        pois = [p for row in map(json.loads, path.read_text().splitlines()) for p in row["target"]["pois"]]
        return sum(p["website"] is not None for p in pois) / len(pois)

    assert share(web["train"]) == 1.0 and share(world["train"]) < 0.7
    with pytest.raises(ValueError, match="train_websites -0.1"):
        synth_poi(tmp_path / "bad", 4, image_size=224, train_websites=-0.1)
