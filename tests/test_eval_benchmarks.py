"""Benchmarks end to end: loaders on hand-made files in each released format, scoring of known
answers, missing-file errors, and every benchmark run on the random-weight tiny model.

Each `make_<name>(root)` writes a few hand-made questions in the layout docs/benchmarks.md
describes, with 8x8 solid-colour images, and returns the directory.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from vlx.eval import benchmarks
from vlx.eval.benchmarks import BenchmarkDataError, build_prompts, load_items, run_benchmark, score

SHORT = "Answer the question using a single word or phrase."


def _image(path: Path, colour=(200, 30, 30), fmt=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, format=fmt)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _answers(*pairs: tuple[str, int]) -> list[dict]:
    out = []
    for answer, n in pairs:
        out += [{"answer": answer, "answer_confidence": "yes", "answer_id": len(out) + i + 1} for i in range(n)]
    return out


def make_vqav2_val(root: Path) -> Path:
    d = root / "vqav2"
    questions = [{"image_id": 1, "question": "How many dogs are there?", "question_id": 10},
                 {"image_id": 2, "question": "What color is the car?", "question_id": 20},
                 {"image_id": 2, "question": "Is it raining?", "question_id": 21}]
    annotations = [
        {"question_id": 10, "image_id": 1, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "2", "answers": _answers(("2", 10))},
        {"question_id": 20, "image_id": 2, "question_type": "what color is the", "answer_type": "other",
         "multiple_choice_answer": "red", "answers": _answers(("red", 2), ("dark red", 8))},
        {"question_id": 21, "image_id": 2, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "no", "answers": _answers(("no", 10))},
    ]
    d.mkdir(parents=True)
    (d / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps({"questions": questions}))
    (d / "v2_mscoco_val2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    for i in (1, 2):
        _image(d / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    return d


def make_vqav2_testdev(root: Path) -> Path:
    d = root / "vqav2"
    dev = [{"question_id": 262144005, "image": "COCO_test2015_000000262144.jpg",
            "text": f"Is the ball flying towards the batter?\n{SHORT}", "category": "default"},
           {"question_id": 262144006, "image": "COCO_test2015_000000262144.jpg",
            "text": f"How many players are there?\n{SHORT}", "category": "default"}]
    extra = {"question_id": 393225000, "image": "COCO_test2015_000000393225.jpg",
             "text": f"What is it?\n{SHORT}", "category": "default"}
    _jsonl(d / "llava_vqav2_mscoco_test-dev2015.jsonl", dev)
    _jsonl(d / "llava_vqav2_mscoco_test2015.jsonl", dev + [extra])
    _image(d / "test2015" / "COCO_test2015_000000262144.jpg")
    return d


def make_gqa(root: Path) -> Path:
    d = root / "gqa"
    questions = {
        "201307251": {"imageId": "n161313", "question": "Is it overcast?", "answer": "no", "isBalanced": True,
                      "types": {"structural": "verify", "semantic": "global", "detailed": "weatherVerify"}},
        "201640614": {"imageId": "n161313", "question": "Who is wearing a shirt?", "answer": "man", "isBalanced": True,
                      "types": {"structural": "query", "semantic": "rel", "detailed": "relS"}},
        "202225914": {"imageId": "n235859", "question": "What is the color of the sky?", "answer": "blue",
                      "isBalanced": True, "types": {"structural": "query", "semantic": "attr", "detailed": "color"}},
    }
    d.mkdir(parents=True)
    (d / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    for image in ("n161313", "n235859"):
        _image(d / "images" / f"{image}.jpg")
    return d


def make_textvqa(root: Path) -> Path:
    d = root / "textvqa"
    questions = [
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg",
         "text": f"what is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL\n{SHORT}", "category": "default"},
        {"question_id": "94ad4aad01e27a32", "image": "94ad4aad01e27a32.jpg",
         "text": f"What number is on the player's jersey?\nReference OCR token: 22\n{SHORT}", "category": "default"},
    ]
    data = [
        {"question": "what is the brand of this camera?", "image_id": "003a8ae2ef43b901", "question_id": 34602,
         "answers": ["dakota"] * 8 + ["Dakota Digital", "dakota digital"], "set_name": "val"},
        {"question": "what number is on the player's jersey?", "image_id": "94ad4aad01e27a32", "question_id": 34603,
         "answers": ["22"] * 10, "set_name": "val"},
    ]
    _jsonl(d / "llava_textvqa_val_v051_ocr.jsonl", questions)
    (d / "TextVQA_0.5.1_val.json").write_text(json.dumps({"dataset_name": "textvqa", "data": data}))
    for q in questions:
        _image(d / "train_images" / q["image"])
    return d


def make_pope(root: Path) -> Path:
    d = root / "pope"
    rows = [("COCO_val2014_000000310196.jpg", "Is there a snowboard in the image?", "yes"),
            ("COCO_val2014_000000310196.jpg", "Is there a dog in the image?", "no")]
    for n, split in enumerate(("adversarial", "popular", "random")):
        _jsonl(d / "coco" / f"coco_pope_{split}.json",
               [{"question_id": i + 1, "image": image, "text": text, "label": label}
                for i, (image, text, label) in enumerate(rows)])
    _image(d / "val2014" / "COCO_val2014_000000310196.jpg")
    return d


MME_TASKS = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
             "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
MME_SUBFOLDERS = ("artwork", "celebrity", "landmark", "posters", "scene")


def make_mme(root: Path) -> Path:
    d = root / "MME_Benchmark_release_version"
    for task in MME_TASKS:
        lines = (f"Is there a {task} in this image? Please answer yes or no.\tYes\n"
                 f"Is there no {task} in this image? Please answer yes or no.\tNo\n")
        if task in MME_SUBFOLDERS:
            _image(d / task / "images" / "0001.jpg")
            (d / task / "questions_answers_YN").mkdir(parents=True)
            (d / task / "questions_answers_YN" / "0001.txt").write_text(lines)
        else:
            _image(d / task / "0001.png")
            (d / task / "0001.txt").write_text(lines)
    return d


MMBENCH_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                   "l2-category", "comment", "split"]


def _b64_image(colour=(30, 30, 200)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def make_mmbench(root: Path, *, with_copies: bool = True, split: str = "dev") -> Path:
    """Question 0 has 3 options (answer B), question 1 has 2 (answer A); with copies, the TSV holds
    the rotated versions at index + k * 1e6 as the released dev file does."""
    d = root / "mmbench"
    image = _b64_image()
    base = [
        {"index": 0, "question": "What animal is shown?", "hint": "nan", "options": ["dog", "cat", "bird"], "answer": 1,
         "category": "object_localization"},
        {"index": 1, "question": "Which is bigger?", "hint": "Look at the two shapes.", "options": ["left", "right"],
         "answer": 0, "category": "spatial_relationship"},
    ]
    rows = []
    for q in base:
        options, answer = q["options"], q["answer"]
        for k in range(len(options) if with_copies else 1):
            rotated = options[k:] + options[:k]
            letters = "ABCD"
            row = {"index": q["index"] + k * 1_000_000, "question": q["question"], "hint": q["hint"],
                   "answer": letters[(answer - k) % len(options)], "category": q["category"], "image": image,
                   "source": "test", "l2-category": "perception", "comment": "nan", "split": split}
            for i, letter in enumerate(letters):
                row[letter] = rotated[i] if i < len(rotated) else "nan"
            if split == "test":
                del row["answer"]
            rows.append(row)
    d.mkdir(parents=True)
    name = "mmbench_dev_20230712.tsv" if split == "dev" else "mmbench_test_en_20231003.tsv"
    columns = [c for c in MMBENCH_COLUMNS if split == "dev" or c != "answer"]
    with (d / name).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return d


def make_scienceqa(root: Path) -> Path:
    d = root / "scienceqa"
    questions = [
        {"id": "4", "conversations": [{"from": "human", "value": "Which figure of speech is used?\nA. chiasmus\nB. apostrophe"},
                                       {"from": "gpt", "value": "B"}]},
        {"id": "5", "image": "5/image.png", "conversations": [
            {"from": "human", "value": "<image>\nContext: A parachute test.\nWhich could the test show?\nA. damage\nB. steadiness\nC. speed"},
            {"from": "gpt", "value": "B"}]},
        {"id": "11", "image": "11/image.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is the name of the colony shown?\nA. Maryland\nB. New Hampshire"},
            {"from": "gpt", "value": "B"}]},
    ]
    problems = {
        "4": {"question": "Which figure of speech is used?", "choices": ["chiasmus", "apostrophe"], "answer": 1,
              "hint": "", "image": None, "split": "test"},
        "5": {"question": "Which could the test show?", "choices": ["damage", "steadiness", "speed"], "answer": 1,
              "hint": "A parachute test.", "image": "image.png", "split": "test"},
        "11": {"question": "What is the name of the colony shown?", "choices": ["Maryland", "New Hampshire"],
               "answer": 1, "hint": "", "image": "image.png", "split": "test"},
    }
    d.mkdir(parents=True)
    (d / "llava_test_CQM-A.json").write_text(json.dumps(questions))
    (d / "problems.json").write_text(json.dumps(problems))
    (d / "pid_splits.json").write_text(json.dumps({"train": [], "val": [], "test": ["4", "5", "11"]}))
    for pid in ("5", "11"):
        _image(d / "images" / "test" / pid / "image.png")
    return d


MAKERS = {"vqav2": make_vqav2_testdev, "gqa": make_gqa, "textvqa": make_textvqa, "pope": make_pope, "mme": make_mme,
          "mmbench": make_mmbench, "scienceqa": make_scienceqa}


# ---- loaders + scorers on known answers ---------------------------------------------------------


def test_vqav2_val_scored_as_vqaeval(tmp_path):
    items = load_items("vqav2", make_vqav2_val(tmp_path), split="val")
    assert [it.qid for it in items] == [10, 20, 21]
    # "Two" -> "2" (10 humans); "Red" with 2 of 10 humans -> 0.6; "No." -> "no".
    result = score("vqav2", items, ["Two", "Red", "No."], split="val")
    assert result["metrics"] == {"accuracy": 86.67, "accuracy_number": 100.0, "accuracy_other": 60.0,
                                 "accuracy_yes_no": 100.0}


def test_vqav2_testdev_writes_the_evalai_submission(tmp_path):
    items = load_items("vqav2", make_vqav2_testdev(tmp_path))
    assert items[0].question == "Is the ball flying towards the batter?"  # format prompt taken off
    result = score("vqav2", items, ["Yes.", "Two"])
    name, content = result["submission"]
    # Every test2015 question, EvalAI-processed, '' for those not in test-dev.
    assert name == "submission.json"
    assert json.loads(content) == [{"question_id": 262144005, "answer": "yes"},
                                   {"question_id": 262144006, "answer": "2"},
                                   {"question_id": 393225000, "answer": ""}]
    assert result["metrics"] == {}


def test_gqa_exact_match_with_llava_normalisation(tmp_path):
    items = load_items("gqa", make_gqa(tmp_path))
    result = score("gqa", items, ["No.", "The man", "Blue"])
    assert result["metrics"]["accuracy"] == pytest.approx(200 / 3)
    assert result["metrics"]["accuracy_open"] == 50.0 and result["metrics"]["accuracy_binary"] == 100.0
    assert json.loads(result["submission"][1])[:2] == [{"questionId": "201307251", "prediction": "no"},
                                                       {"questionId": "201640614", "prediction": "the man"}]


def test_textvqa_matches_annotations_and_scores_as_m4c(tmp_path):
    items = load_items("textvqa", make_textvqa(tmp_path))
    assert items[0].question == "what is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL"
    # "Dakota Digital": 2 of 10 humans -> 0.6; "twenty two" is not a number word the processor maps.
    result = score("textvqa", items, ["Dakota Digital", "twenty two"])
    assert result["metrics"]["accuracy"] == pytest.approx(30.0)


def test_pope_per_split_metrics(tmp_path):
    items = load_items("pope", make_pope(tmp_path))
    assert [it.meta["split"] for it in items] == ["adversarial"] * 2 + ["popular"] * 2 + ["random"] * 2
    m = score("pope", items, ["Yes", "No", "Yes", "Yes, there is.", "No", "There is no dog."])["metrics"]
    assert m["adversarial_f1"] == 100.0 and m["adversarial_accuracy"] == 100.0
    assert m["popular_precision"] == 50.0 and m["popular_recall"] == 100.0
    assert m["popular_f1"] == pytest.approx(200 / 3) and m["popular_yes_ratio"] == 100.0
    assert m["random_f1"] == 0.0 and m["random_accuracy"] == 50.0
    assert m["f1_mean"] == pytest.approx((100 + 200 / 3 + 0) / 3)


def test_mme_perception_and_cognition(tmp_path):
    items = load_items("mme", make_mme(tmp_path))
    assert len(items) == 28
    assert items[0].question == "Is there a existence in this image?"  # the yes/no instruction is replaced
    always_yes = score("mme", items, ["Yes"] * 28)["metrics"]
    # Each task: one of two right (acc 0.5), no image with both right (acc+ 0) -> 50.
    assert always_yes["existence"] == 50.0 and always_yes["artwork"] == 50.0
    assert always_yes["existence_acc"] == 50.0 and always_yes["existence_acc_plus"] == 0.0
    assert always_yes["perception"] == 500.0 and always_yes["cognition"] == 200.0
    right = score("mme", items, ["Yes", "No"] * 14)["metrics"]
    assert right["perception"] == 2000.0 and right["cognition"] == 800.0


def test_mmbench_circular_with_released_copies(tmp_path):
    items = load_items("mmbench", make_mmbench(tmp_path))
    assert [it.qid for it in items] == [0, 1_000_000, 2_000_000, 1, 1_000_001]
    assert [it.gold for it in items] == ["B", "A", "C", "A", "B"]
    all_right = score("mmbench", items, ["B", "A.", "(C)", "A", "B"])["metrics"]
    assert all_right["circular_accuracy"] == 100.0 and all_right["unparsed"] == 0
    # One rotation of question 0 wrong: the question fails circular evaluation, not the single pass.
    one_wrong = score("mmbench", items, ["cat", "B", "C", "A", "I cannot tell"])["metrics"]
    assert one_wrong["circular_accuracy"] == 0.0
    assert one_wrong["single_pass_accuracy"] == 100.0  # "cat" is option B's text
    assert one_wrong["unparsed"] == 1
    partly = score("mmbench", items, ["B", "A", "A", "A", "B"])["metrics"]
    assert partly["circular_accuracy"] == 50.0
    assert partly["circular_object_localization"] == 0.0 and partly["circular_spatial_relationship"] == 100.0


def test_mmbench_rotates_options_itself_without_copies(tmp_path):
    items = load_items("mmbench", make_mmbench(tmp_path, with_copies=False))
    assert len(items) == 5
    assert items[1].question == "What animal is shown?\nA. cat\nB. bird\nC. dog"
    assert items[3].question == "Look at the two shapes.\nWhich is bigger?\nA. left\nB. right"
    # Always pick the letter showing "cat" (question 0) and "left" (question 1).
    result = score("mmbench", items, ["B", "A", "C", "A", "B"])
    assert result["metrics"]["circular_accuracy"] == 100.0
    assert score("mmbench", items, ["B", "B", "C", "A", "B"])["metrics"]["circular_accuracy"] == 50.0


def test_mmbench_test_split_writes_the_submission_sheet(tmp_path):
    import zipfile

    items = load_items("mmbench", make_mmbench(tmp_path, split="test"), split="test")
    result = score("mmbench", items, ["B"] * len(items), split="test")
    assert result["metrics"] == {}
    name, content = result["submission"]
    sheet = zipfile.ZipFile(io.BytesIO(content)).read("xl/worksheets/sheet1.xml").decode()
    # convert_mmbench_for_submission.py: `prediction` is the 7th column; image/hint/... are dropped.
    assert name == "submission.xlsx" and '<c r="G1" t="inlineStr"><is><t xml:space="preserve">prediction</t>' in sheet
    assert ">image<" not in sheet and ">hint<" not in sheet
    assert sheet.count("<row ") == len(items) + 1


def test_scienceqa_img_subset(tmp_path):
    items = load_items("scienceqa", make_scienceqa(tmp_path))
    assert [it.qid for it in items] == ["5", "11"]  # the text-only question is not in the IMG subset
    assert items[0].question == "Context: A parachute test.\nWhich could the test show?\nA. damage\nB. steadiness\nC. speed"
    assert score("scienceqa", items, ["B", "The answer is A."])["metrics"]["accuracy"] == 50.0


def test_prompts_follow_the_reference():
    from vlx.data.templates import VICUNA_SYSTEM

    item = benchmarks.Item(1, "Is there a dog in the image?", Path("x.jpg"))
    assert build_prompts("pope", [item], "vicuna_v1") == [
        f"{VICUNA_SYSTEM} USER: <image>\nIs there a dog in the image?\n"
        "Answer the question using a single word or phrase. ASSISTANT:"]
    item = benchmarks.Item(2, "Which?\nA. x\nB. y", Path("x.jpg"))
    assert build_prompts("mmbench", [item], "vicuna_v1")[0].endswith(
        "USER: <image>\nWhich?\nA. x\nB. y\nAnswer with the option's letter from the given choices directly. ASSISTANT:")


def test_limit_keeps_whole_units(tmp_path):
    assert len(load_items("pope", make_pope(tmp_path / "p"), limit=1)) == 3  # per split
    assert len(load_items("mme", make_mme(tmp_path / "m"), limit=1)) == 28  # per task, both questions
    assert len(load_items("mmbench", make_mmbench(tmp_path / "b"), limit=1)) == 3  # with its rotations


# ---- wrong or incomplete directories ----------------------------------------------------------


@pytest.mark.parametrize("name, make, split, missing", [
    ("vqav2", make_vqav2_testdev, None, "llava_vqav2_mscoco_test2015.jsonl"),
    ("vqav2", make_vqav2_val, "val", "v2_mscoco_val2014_annotations.json"),
    ("gqa", make_gqa, None, "testdev_balanced_questions.json"),
    ("gqa", make_gqa, None, "images/n235859.jpg"),
    ("textvqa", make_textvqa, None, "TextVQA_0.5.1_val.json"),
    ("pope", make_pope, None, "coco/coco_pope_random.json"),
    ("mme", make_mme, None, "code_reasoning"),
    ("mme", make_mme, None, "artwork/questions_answers_YN"),
    ("mmbench", make_mmbench, None, "mmbench_dev_20230712.tsv"),
    ("scienceqa", make_scienceqa, None, "pid_splits.json"),
    ("scienceqa", make_scienceqa, None, "images/test/11/image.png"),
])
def test_incomplete_directory_names_the_missing_file(tmp_path, name, make, split, missing):
    d = make(tmp_path)
    target = d / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(BenchmarkDataError, match=missing.rsplit("/", 1)[-1]) as e:
        load_items(name, d, split=split)
    assert str(d) in str(e.value)


def test_wrong_directory_and_names(tmp_path):
    with pytest.raises(BenchmarkDataError, match="does not exist"):
        load_items("gqa", tmp_path / "nowhere")
    with pytest.raises(BenchmarkDataError, match="llava_textvqa_val_v051_ocr.jsonl"):
        load_items("textvqa", make_gqa(tmp_path))  # another benchmark's directory
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_items("mmvet", tmp_path)
    with pytest.raises(ValueError, match="no split"):
        load_items("gqa", tmp_path, split="val")


# ---- end to end on the tiny model -------------------------------------------------------------




@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    from vlx.run import RunInfo

    model, processor = tiny
    d = tmp_path_factory.mktemp("tiny-run")
    model.save_pretrained(d)
    processor.save_pretrained(d)
    RunInfo(kind="base", template="vicuna_v1").save(d)
    return d


@pytest.mark.parametrize("name", list(MAKERS))
def test_benchmark_end_to_end_on_tiny(tiny_run, tmp_path, name):
    data = MAKERS[name](tmp_path / "data")
    out = tmp_path / "out"
    result = run_benchmark(tiny_run, name, data, batch_size=4, max_new_tokens=4, out_dir=out)
    bench = benchmarks.get_benchmark(name)
    items = load_items(name, data)
    assert result["questions"] == len(items)
    assert json.loads((out / "results.json").read_text()) == result
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [p["question_id"] for p in predictions] == [it.qid for it in items]
    assert all(bench.format_prompt in p["prompt"] and p["prompt"].endswith("ASSISTANT:") for p in predictions)
    # What was written is what the scorer makes of the written outputs.
    assert score(name, items, [p["text"] for p in predictions])["metrics"] == result["metrics"]
    headline = result["headline"]
    assert headline["paper"] == bench.paper["7B"] and headline["paper_model"] == "LLaVA-1.5-7B"
    assert headline["value"] == result["metrics"].get(bench.headline)
    table = (out / "results.md").read_text()
    assert f"| {bench.headline} |" in table and str(bench.paper["7B"]) in table
    if result["submission"]:
        assert (out / result["submission"]).stat().st_size > 0


def test_run_benchmark_takes_a_model_and_processor(tiny, tmp_path):
    result = run_benchmark(tiny, "gqa", make_gqa(tmp_path), limit=2, batch_size=2, max_new_tokens=3)
    assert result["questions"] == 2 and result["template"] == "vicuna_v1"
    assert 0.0 <= result["metrics"]["accuracy"] <= 100.0


def test_cli_eval_benchmark(tiny_run, tmp_path):
    from vlx.cli import app

    data, out = make_pope(tmp_path), tmp_path / "out"
    ok = CliRunner().invoke(app, ["eval", "--model", str(tiny_run), "--benchmark", "POPE", "--data", str(data),
                                  "--limit", "1", "--batch-size", "2", "--max-new-tokens", "4", "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    assert json.loads((out / "results.json").read_text())["questions"] == 3
    assert "f1_mean" in ok.output and "LLaVA-1.5-7B (paper)" in ok.output

    bad = CliRunner().invoke(app, ["eval", "--model", str(tiny_run), "--benchmark", "pope", "--data",
                                   str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
    unknown = CliRunner().invoke(app, ["eval", "--model", str(tiny_run), "--benchmark", "mmvet", "--data", str(data)])
    assert unknown.exit_code == 2 and "unknown benchmark 'mmvet'" in unknown.output


def test_cli_eval_without_benchmark_needs_a_schema_run(tiny_run, tmp_path):
    from vlx.cli import app

    rows = tmp_path / "test.jsonl"
    rows.write_text("")
    result = CliRunner().invoke(app, ["eval", "--model", str(tiny_run), "--data", str(rows)])
    assert result.exit_code == 2 and "vlx finetune --schema" in result.output
