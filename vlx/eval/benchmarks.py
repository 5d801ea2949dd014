"""The LLaVA-1.5 paper's benchmarks, read from their released files and scored as the reference.

    vlx eval --model RUN --benchmark gqa --data ~/data/gqa [--limit 100] [--batch-size 8]

    result = run_benchmark("runs/base", "pope", "~/data/pope", limit=50)
    result["headline"]  # {'metric': 'f1_mean', 'value': ..., 'paper': 85.9, 'paper_model': 'LLaVA-1.5-7B'}

Each benchmark reads the directory layout LLaVA's evaluation scripts use (docs/benchmarks.md
lists every file), builds the reference prompt (`<image>\\n{question}\\n{format prompt}` in the
model's conversation template), decodes greedily in batches and scores with `vlx.eval.scoring`,
the ports of the official scripts. Benchmarks scored on a server (VQAv2 test-dev, MMBench test)
write the file to upload instead of a score.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
import math
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vlx.data.templates import Turn, prompt_text
from vlx.eval import scoring
from vlx.eval.xlsx import write_xlsx
from vlx.model.llava import IMAGE_TOKEN
from vlx.run import atomic_dir

log = logging.getLogger(__name__)

SHORT_ANSWER = "Answer the question using a single word or phrase."
MULTIPLE_CHOICE = "Answer with the option's letter from the given choices directly."
OPTION_LETTERS = ("A", "B", "C", "D")  # MMBench's columns
CIRCULAR_OFFSET = 1_000_000  # MMBench: index + k * 1e6 is rotation k of question `index`


class BenchmarkDataError(FileNotFoundError):
    """A benchmark directory that is missing a file or holds one that cannot be read."""


class BenchmarkError(ValueError):
    """An unknown benchmark, split or option value; the message lists the valid ones."""


@dataclass
class Item:
    """One question as the model sees it, and what its scorer needs."""

    qid: Any
    """The question id as the benchmark writes it (int or str)."""
    question: str
    """Question text without the format prompt (MMBench/ScienceQA: with the lettered options)."""
    image: Path | bytes
    """Image file, or the encoded image bytes (MMBench keeps images in its TSV)."""
    gold: Any = None
    """What the scorer compares against; None where the benchmark is scored on a server."""
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    format_prompt: str
    splits: tuple[str, ...]
    """Splits vlx can read; the first is the default (the one the paper reports)."""
    load: Callable[[Path, str, int | None], list[Item]]
    score: Callable[[list[Item], list[str], str], dict]
    headline: str
    """Metric compared with the paper."""
    paper: dict[str, float]
    """The paper's number for `headline` by model size (LLaVA-1.5, arXiv 2310.03744, tables 4-5)."""
    max_new_tokens: int = 128  # LLaVA's model_vqa_loader default


# ---------------------------------------------------------------------------------------------
# file helpers


def _need(directory: Path, relative: str, benchmark: str, split: str) -> Path:
    path = directory / relative
    if not path.exists():
        raise BenchmarkDataError(
            f"{benchmark} ({split}): {path} is missing. Expected the layout of LLaVA's evaluation data "
            f"for {benchmark} in {directory}; docs/benchmarks.md lists every file and where to download it."
        )
    return path


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BenchmarkDataError(f"cannot read {path}: {e}") from e


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise BenchmarkDataError(f"{path}:{n}: not a JSON line: {e}") from e
    return rows


def _check_images(items: list[Item], benchmark: str) -> list[Item]:
    missing = [it.image for it in items if isinstance(it.image, Path) and not it.image.exists()]
    if missing:
        raise BenchmarkDataError(f"{benchmark}: image {missing[0]} is missing ({len(missing)} of {len(items)} "
                                 "images not found); see docs/benchmarks.md for the image folder")
    return items


def _strip_format(text: str, format_prompt: str) -> str:
    """LLaVA's question files carry the format prompt; vlx adds it itself, so take it off."""
    suffix = "\n" + format_prompt
    return text[: -len(suffix)] if text.endswith(suffix) else text


def open_image(source: Path | bytes) -> Image.Image:
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    return image.convert("RGB")


# ---------------------------------------------------------------------------------------------
# VQAv2: test-dev (LLaVA's question files, submission to EvalAI) or val (official annotations, scored here)


def _load_vqav2(d: Path, split: str, limit: int | None) -> list[Item]:
    if split == "test-dev":
        questions = _read_jsonl(_need(d, "llava_vqav2_mscoco_test-dev2015.jsonl", "vqav2", split))
        full = _need(d, "llava_vqav2_mscoco_test2015.jsonl", "vqav2", split)
        images = _need(d, "test2015", "vqav2", split)
        items = [Item(q["question_id"], _strip_format(q["text"], SHORT_ANSWER), images / q["image"],
                      meta={"test2015": full}) for q in questions[:limit]]
    else:
        questions = _read_json(_need(d, "v2_OpenEnded_mscoco_val2014_questions.json", "vqav2", split))["questions"]
        annotations = _read_json(_need(d, "v2_mscoco_val2014_annotations.json", "vqav2", split))["annotations"]
        images = _need(d, "val2014", "vqav2", split)
        by_id = {a["question_id"]: a for a in annotations}
        items = []
        for q in questions[:limit]:
            a = by_id.get(q["question_id"])
            if a is None:
                raise BenchmarkDataError(f"vqav2 (val): question {q['question_id']} has no annotation in "
                                         "v2_mscoco_val2014_annotations.json")
            items.append(Item(q["question_id"], q["question"], images / f"COCO_val2014_{q['image_id']:012d}.jpg",
                              gold=[x["answer"] for x in a["answers"]],
                              meta={"answer_type": a["answer_type"], "question_type": a["question_type"]}))
    return _check_images(items, "vqav2")


def _score_vqav2(items: list[Item], texts: list[str], split: str) -> dict:
    if split == "test-dev":
        # convert_vqav2_for_submission.py: every test2015 question, EvalAI-processed, '' where not run.
        answers = {it.qid: scoring.evalai_normalize(t) for it, t in zip(items, texts)}
        full = _read_jsonl(items[0].meta["test2015"])
        submission = [{"question_id": q["question_id"], "answer": answers.get(q["question_id"], "")} for q in full]
        return {"metrics": {}, "per_item": [{"answer": answers[it.qid]} for it in items],
                "submission": ("submission.json", json.dumps(submission).encode()),
                "note": "VQAv2 test-dev is scored by the EvalAI server: upload submission.json"}
    accs = [scoring.vqa_accuracy(t, it.gold) for it, t in zip(items, texts)]
    by_type = defaultdict(list)
    for it, acc in zip(items, accs):
        by_type[it.meta["answer_type"]].append(acc)
    # vqaEval.setAccuracy: percentages rounded to 2 decimals.
    metrics = {"accuracy": round(100 * sum(accs) / len(accs), 2)}
    metrics.update({f"accuracy_{k.replace('/', '_')}": round(100 * sum(v) / len(v), 2) for k, v in by_type.items()})
    return {"metrics": metrics, "per_item": [{"score": a} for a in accs]}


# ---------------------------------------------------------------------------------------------
# GQA test-dev balanced (official question file; LLaVA's jsonl is derived from it)


def _load_gqa(d: Path, split: str, limit: int | None) -> list[Item]:
    questions = _read_json(_need(d, "testdev_balanced_questions.json", "gqa", split))
    images = _need(d, "images", "gqa", split)
    items = [Item(qid, q["question"], images / f"{q['imageId']}.jpg", gold=q["answer"],
                  meta={"structural": q.get("types", {}).get("structural")})
             for qid, q in questions.items() if q.get("isBalanced", True)]
    return _check_images(items[:limit], "gqa")


def _score_gqa(items: list[Item], texts: list[str], split: str) -> dict:
    right = [scoring.gqa_correct(t, it.gold) for it, t in zip(items, texts)]
    metrics = {"accuracy": 100 * sum(right) / len(right)}
    for kind in ("open", "binary"):
        sel = [r for it, r in zip(items, right) if (it.meta["structural"] == "query") == (kind == "open")]
        if sel:
            metrics[f"accuracy_{kind}"] = 100 * sum(sel) / len(sel)
    # The predictions file the official eval.py reads (convert_gqa_for_eval.py's output).
    predictions = [{"questionId": it.qid, "prediction": scoring.gqa_normalize(t)} for it, t in zip(items, texts)]
    return {"metrics": metrics,
            "per_item": [{"prediction": scoring.gqa_normalize(t), "correct": r} for t, r in zip(texts, right)],
            "submission": ("testdev_balanced_predictions.json", json.dumps(predictions).encode())}


# ---------------------------------------------------------------------------------------------
# TextVQA val (LLaVA's question file with reference OCR tokens + the official annotations)


def _textvqa_question(prompt: str) -> str:
    """llava/eval/eval_textvqa.py prompt_processor: the question line of a LLaVA TextVQA prompt."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        question = match.group(1) if match else prompt
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise BenchmarkDataError(f"textvqa: cannot find the question in prompt {prompt!r}")
    return question.lower()


def _load_textvqa(d: Path, split: str, limit: int | None) -> list[Item]:
    questions = _read_jsonl(_need(d, "llava_textvqa_val_v051_ocr.jsonl", "textvqa", split))
    annotations = _read_json(_need(d, "TextVQA_0.5.1_val.json", "textvqa", split))["data"]
    images = _need(d, "train_images", "textvqa", split)
    by_key = {(a["image_id"], a["question"].lower()): a for a in annotations}
    items = []
    for q in questions[:limit]:
        a = by_key.get((q["question_id"], _textvqa_question(q["text"])))
        if a is None:
            raise BenchmarkDataError(f"textvqa: no annotation in TextVQA_0.5.1_val.json for image "
                                     f"{q['question_id']} question {_textvqa_question(q['text'])!r}")
        if len(a["answers"]) != 10:
            raise BenchmarkDataError(f"textvqa: question {a.get('question_id')} has {len(a['answers'])} answers in "
                                     "TextVQA_0.5.1_val.json; the official scorer needs 10")
        items.append(Item(q["question_id"], _strip_format(q["text"], SHORT_ANSWER), images / q["image"],
                          gold=a["answers"]))
    return _check_images(items, "textvqa")


def _score_textvqa(items: list[Item], texts: list[str], split: str) -> dict:
    accs = [scoring.textvqa_accuracy(t, it.gold) for it, t in zip(items, texts)]
    return {"metrics": {"accuracy": 100 * sum(accs) / len(accs)}, "per_item": [{"score": a} for a in accs]}


# ---------------------------------------------------------------------------------------------
# POPE (the official COCO question/label files, one per split; LLaVA's question file is their union)

POPE_SPLITS = ("adversarial", "popular", "random")


def _load_pope(d: Path, split: str, limit: int | None) -> list[Item]:
    files = {s: _need(d, f"coco/coco_pope_{s}.json", "pope", split) for s in POPE_SPLITS}
    images = _need(d, "val2014", "pope", split)
    items = []
    for s, path in files.items():
        items += [Item(q["question_id"], q["text"], images / q["image"], gold=q["label"], meta={"split": s})
                  for q in _read_jsonl(path)[:limit]]
    return _check_images(items, "pope")


def _score_pope(items: list[Item], texts: list[str], split: str) -> dict:
    metrics: dict[str, float] = {}
    for s in POPE_SPLITS:
        rows = [(t, it.gold) for it, t in zip(items, texts) if it.meta["split"] == s]
        if rows:
            m = scoring.pope_metrics([t for t, _ in rows], [g for _, g in rows])
            metrics.update({f"{s}_{k}": 100 * v if k not in ("tp", "fp", "tn", "fn") else v for k, v in m.items()})
    f1s = [metrics[f"{s}_f1"] for s in POPE_SPLITS if f"{s}_f1" in metrics]
    metrics["f1_mean"] = sum(f1s) / len(f1s)
    return {"metrics": metrics, "per_item": [{"answer": scoring.pope_answer(t)} for t in texts]}


# ---------------------------------------------------------------------------------------------
# MME (the official release folder)

MME_SUBFOLDERS = ("artwork", "celebrity", "landmark", "posters", "scene")  # images/ + questions_answers_YN/
_IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg")


def _load_mme(d: Path, split: str, limit: int | None) -> list[Item]:
    items = []
    for task in scoring.MME_PERCEPTION + scoring.MME_COGNITION:
        folder = _need(d, task, "mme", split)
        if task in MME_SUBFOLDERS:
            qa_dir = _need(d, f"{task}/questions_answers_YN", "mme", split)
            image_dir = _need(d, f"{task}/images", "mme", split)
        else:
            qa_dir = image_dir = folder
        qa_files = sorted(qa_dir.glob("*.txt"))
        if not qa_files:
            raise BenchmarkDataError(f"mme: {qa_dir} holds no question files (*.txt); see docs/benchmarks.md")
        for qa in qa_files[:limit]:
            image = next((image_dir / (qa.stem + s) for s in _IMAGE_SUFFIXES if (image_dir / (qa.stem + s)).exists()),
                         image_dir / (qa.stem + ".jpg"))
            for n, line in enumerate(qa.read_text().splitlines()):
                if not line.strip():
                    continue
                parts = line.strip().split("\t")
                if len(parts) != 2:
                    raise BenchmarkDataError(f"{qa}:{n + 1}: expected 'question<TAB>Yes|No', got {line!r}")
                question, answer = parts
                # LLaVA's llava_mme.jsonl: the yes/no instruction is replaced by the short-answer prompt.
                items.append(Item(f"{task}/{image.name}", question.replace("Please answer yes or no.", "").strip(),
                                  image, gold=answer, meta={"task": task, "image": image.name, "n": n}))
    return _check_images(items, "mme")


def _score_mme(items: list[Item], texts: list[str], split: str) -> dict:
    tasks: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for it, t in zip(items, texts):
        tasks[it.meta["task"]][it.meta["image"]].append((t, it.gold))
    scores: dict[str, dict] = {task: scoring.mme_task_score(list(images.values())) for task, images in tasks.items()}
    metrics: dict[str, float] = {
        "perception": sum(scores[t]["score"] for t in scoring.MME_PERCEPTION if t in scores),
        "cognition": sum(scores[t]["score"] for t in scoring.MME_COGNITION if t in scores),
    }
    for task, s in scores.items():
        metrics.update({task: s["score"], f"{task}_acc": 100 * s["acc"], f"{task}_acc_plus": 100 * s["acc_plus"]})
    return {"metrics": metrics, "per_item": [{"parsed": scoring.mme_parse(t)} for t in texts]}


# ---------------------------------------------------------------------------------------------
# MMBench (the OpenCompass TSV: dev with answers, test for the server)

MMBENCH_FILES = {"dev": "mmbench_dev_20230712.tsv", "test": "mmbench_test_en_20231003.tsv"}


def _is_none(value) -> bool:
    """model_vqa_mmbench.is_none: empty cells and the strings 'nan'/'none' are no option."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and value.strip().lower() in ("nan", "none", ""))


def _read_tsv(path: Path) -> list[dict]:
    csv.field_size_limit(sys.maxsize)  # base64 images
    try:
        with path.open(newline="") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    except (OSError, csv.Error) as e:
        raise BenchmarkDataError(f"cannot read {path}: {e}") from e


def _mmbench_prompt(row: dict, options: list[str]) -> str:
    question = row["question"]
    if not _is_none(row.get("hint")):
        question = row["hint"] + "\n" + question
    for letter, option in zip(OPTION_LETTERS, options):
        question += "\n" + letter + ". " + option
    return question


def _load_mmbench(d: Path, split: str, limit: int | None) -> list[Item]:
    path = _need(d, MMBENCH_FILES[split], "mmbench", split)
    rows = _read_tsv(path)
    if rows and not {"index", "question", "image", "A", "B"} <= set(rows[0]):
        raise BenchmarkDataError(f"{path}: not an MMBench TSV (needs columns index, question, A, B, ..., image)")
    has_copies = any(int(r["index"]) >= CIRCULAR_OFFSET for r in rows)
    keep = sorted({int(r["index"]) % CIRCULAR_OFFSET for r in rows})[:limit]
    keep_set = set(keep)
    items = []
    for row in rows:
        index = int(row["index"])
        if index % CIRCULAR_OFFSET not in keep_set:
            continue
        options = []
        for letter in OPTION_LETTERS:
            if _is_none(row.get(letter)):
                break
            options.append(row[letter])
        image = base64.b64decode(row["image"])
        gold = row.get("answer") if split == "dev" else None
        meta = {"group": index % CIRCULAR_OFFSET, "category": row.get("category"), "row": row}
        if has_copies:
            items.append(Item(index, _mmbench_prompt(row, options), image, gold,
                              dict(meta, choices=dict(zip(OPTION_LETTERS, options)), letter_map=None)))
            continue
        # A TSV without rotated copies: rotate the options here, as model_vqa_mmbench --all-rounds.
        chars = list(OPTION_LETTERS[: len(options)])
        for k in range(len(options)):
            items.append(Item(index + k * CIRCULAR_OFFSET, _mmbench_prompt(row, options), image, gold,
                              dict(meta, choices=dict(zip(OPTION_LETTERS, options)),
                                   letter_map=dict(zip(OPTION_LETTERS, chars)))))
            options, chars = options[1:] + options[:1], chars[1:] + chars[:1]
    return items


def _score_mmbench(items: list[Item], texts: list[str], split: str) -> dict:
    parsed = []
    for it, t in zip(items, texts):
        letter = scoring.mmbench_extract(t, it.meta["choices"])
        if letter is not None and it.meta["letter_map"] is not None:
            letter = it.meta["letter_map"].get(letter, letter)  # shown letter -> letter in the original row
        parsed.append(letter)
    per_item = [{"parsed": p} for p in parsed]
    if split == "test":
        return {"metrics": {}, "per_item": per_item,
                "submission": ("submission.xlsx", _mmbench_submission(items, texts)),
                "note": "MMBench test is scored by the OpenCompass server: upload submission.xlsx"}
    groups: dict[int, list[bool]] = defaultdict(list)
    categories: dict[int, str] = {}
    for it, p in zip(items, parsed):
        groups[it.meta["group"]].append(p == it.gold)
        categories[it.meta["group"]] = it.meta["category"]
    hits = {g: all(v) for g, v in groups.items()}
    by_cat = defaultdict(list)
    for g, hit in hits.items():
        by_cat[categories[g]].append(hit)
    first = [p == it.gold for it, p in zip(items, parsed) if it.qid < CIRCULAR_OFFSET]
    metrics = {"circular_accuracy": 100 * sum(hits.values()) / len(hits),
               "single_pass_accuracy": 100 * sum(first) / len(first),
               "unparsed": sum(p is None for p in parsed)}
    metrics.update({f"circular_{c}": 100 * sum(v) / len(v) for c, v in sorted(by_cat.items()) if c})
    return {"metrics": metrics, "per_item": per_item,
            "submission": ("submission.xlsx", _mmbench_submission(items, texts))}


def _mmbench_submission(items: list[Item], texts: list[str]) -> bytes:
    """scripts/convert_mmbench_for_submission.py: the TSV minus hint/category/source/image/comment/
    l2-category, with `prediction` as the 7th column, one row per TSV row."""
    drop = {"hint", "category", "source", "image", "comment", "l2-category"}
    columns = [c for c in items[0].meta["row"] if c not in drop]
    columns.insert(6, "prediction")
    rows = []
    for it, t in zip(items, texts):
        if it.meta["letter_map"] is not None and it.qid >= CIRCULAR_OFFSET:
            continue  # rotations made here, not rows of the TSV: the server rotates by itself
        values = dict(it.meta["row"], index=it.qid, prediction=t)
        rows.append([values.get(c, "") for c in columns])
    return write_xlsx(columns, rows)


# ---------------------------------------------------------------------------------------------
# ScienceQA-IMG (LLaVA's CQM-A question file + the official problems and splits)


def _load_scienceqa(d: Path, split: str, limit: int | None) -> list[Item]:
    questions = _read_json(_need(d, "llava_test_CQM-A.json", "scienceqa", split))
    problems = _read_json(_need(d, "problems.json", "scienceqa", split))
    test_ids = set(_read_json(_need(d, "pid_splits.json", "scienceqa", split))["test"])
    images = _need(d, "images/test", "scienceqa", split)
    items = []
    for q in questions:
        if "image" not in q or q["id"] not in test_ids:
            continue  # ScienceQA-IMG: the test questions that come with an image
        problem = problems[q["id"]]
        text = q["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip()
        items.append(Item(q["id"], _strip_format(text, MULTIPLE_CHOICE), images / q["image"], gold=problem["answer"],
                          meta={"n_choices": len(problem["choices"])}))
    return _check_images(items[:limit], "scienceqa")


def _score_scienceqa(items: list[Item], texts: list[str], split: str) -> dict:
    picks = [scoring.sqa_pred_index(t, it.meta["n_choices"]) for it, t in zip(items, texts)]
    right = [p == it.gold for it, p in zip(items, picks)]
    return {"metrics": {"accuracy": 100 * sum(right) / len(right)},
            "per_item": [{"parsed": scoring.sqa_parse(t), "correct": r} for t, r in zip(texts, right)]}


BENCHMARKS: dict[str, Benchmark] = {
    "vqav2": Benchmark("vqav2", "VQAv2", SHORT_ANSWER, ("test-dev", "val"), _load_vqav2, _score_vqav2,
                       "accuracy", {"7B": 78.5, "13B": 80.0}),
    "gqa": Benchmark("gqa", "GQA", SHORT_ANSWER, ("testdev",), _load_gqa, _score_gqa, "accuracy",
                     {"7B": 62.0, "13B": 63.3}),
    "textvqa": Benchmark("textvqa", "TextVQA", SHORT_ANSWER, ("val",), _load_textvqa, _score_textvqa, "accuracy",
                         {"7B": 58.2, "13B": 61.3}),
    "pope": Benchmark("pope", "POPE", SHORT_ANSWER, ("test",), _load_pope, _score_pope, "f1_mean",
                      {"7B": 85.9, "13B": 85.9}),
    "mme": Benchmark("mme", "MME", SHORT_ANSWER, ("test",), _load_mme, _score_mme, "perception",
                     {"7B": 1510.7, "13B": 1531.3}),
    "mmbench": Benchmark("mmbench", "MMBench", MULTIPLE_CHOICE, ("dev", "test"), _load_mmbench, _score_mmbench,
                         "circular_accuracy", {"7B": 64.3, "13B": 67.7}),
    "scienceqa": Benchmark("scienceqa", "ScienceQA-IMG", MULTIPLE_CHOICE, ("test",), _load_scienceqa,
                           _score_scienceqa, "accuracy", {"7B": 66.8, "13B": 71.6}),
}


def get_benchmark(name: str) -> Benchmark:
    key = name.lower().replace("-", "").replace("_", "")
    key = {"sqa": "scienceqa", "scienceqaimg": "scienceqa", "sqaimg": "scienceqa"}.get(key, key)
    if key not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}: use one of {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def load_items(name: str, data_dir: str | Path, *, split: str | None = None, limit: int | None = None) -> list[Item]:
    """Read a benchmark's questions; raises `BenchmarkDataError` naming the first missing file.

    `limit` keeps the first N questions (POPE: per split; MME: N images per task, both of their
    questions; MMBench: N questions with all their rotations).
    """
    bench = get_benchmark(name)
    split = split or bench.splits[0]
    if split not in bench.splits:
        raise BenchmarkError(f"{bench.name} has no split {split!r}: use one of {', '.join(bench.splits)}")
    if limit is not None and limit < 1:
        raise BenchmarkError(f"limit={limit}: must be >= 1")
    data_dir = Path(data_dir).expanduser()
    if not data_dir.is_dir():
        raise BenchmarkDataError(f"{bench.name}: data directory {data_dir} does not exist; see docs/benchmarks.md")
    items = bench.load(data_dir, split, limit)
    if not items:
        raise BenchmarkDataError(f"{bench.name} ({split}): {data_dir} holds no questions")
    return items


def score(name: str, items: list[Item], texts: list[str], *, split: str | None = None) -> dict:
    """Score model outputs for `items` (from `load_items`) -> {"metrics", "per_item", ...}."""
    bench = get_benchmark(name)
    if len(items) != len(texts):
        raise BenchmarkError(f"{len(items)} questions but {len(texts)} answers")
    return bench.score(items, [t.strip() for t in texts], split or bench.splits[0])


def build_prompts(name: str, items: list[Item], template: str) -> list[str]:
    """The reference prompt for each item: `<image>\\n{question}\\n{format prompt}` in `template`."""
    fmt = get_benchmark(name).format_prompt
    return [prompt_text(template, [Turn(user=f"{IMAGE_TOKEN}\n{it.question}\n{fmt}", assistant=None)])
            for it in items]


def _resolve_model(model, template: str | None):
    """-> (model, processor, template, label) from a run directory or a (model, processor) pair."""
    if isinstance(model, (str, Path)):
        from vlx.api import load

        # The loader users call: base runs, exports, fine-tune runs (adapter merged) and llava-hf checkpoints.
        extractor = load(model)
        llava, processor, label = extractor.model, extractor.processor, str(model)
        template = template or extractor.template
    else:
        llava, processor = model
        label = type(llava).__name__
    if template in (None, "plain"):
        # LLaVA's eval scripts prompt every model, stage-1 and foreign checkpoints included, with the
        # conversation template; `plain` would drop the question and keep only the image.
        template = "vicuna_v1"
    return llava, processor, template, label


def _paper_size(model) -> str:
    """7B or 13B: the paper column closest to the language model's size."""
    lm = getattr(getattr(model, "model", model), "language_model", model)
    n = sum(p.numel() for p in lm.parameters())
    return "7B" if abs(math.log(n / 7e9)) <= abs(math.log(n / 13e9)) else "13B"


def run_benchmark(model, name: str, data_dir: str | Path, *, split: str | None = None, limit: int | None = None,
                  batch_size: int = 8, template: str | None = None, max_new_tokens: int | None = None,
                  out_dir: str | Path | None = None) -> dict:
    """Run one benchmark end to end: read, prompt, generate greedily in batches, score, write.

    `model` is a run directory (or any llava-hf checkpoint) or a `(model, processor)` pair.
    With `out_dir`, writes `results.json`, `results.md` (the paper's number beside this model's),
    `predictions.jsonl` and, for server-scored splits, the submission file.

    >>> result = run_benchmark("runs/base", "gqa", "data/gqa", limit=100)  # doctest: +SKIP
    >>> result["metrics"]["accuracy"]  # doctest: +SKIP
    """
    from vlx.decode.generate import generate

    bench = get_benchmark(name)
    split = split or bench.splits[0]
    items = load_items(bench.name, data_dir, split=split, limit=limit)
    llava, processor, template, label = _resolve_model(model, template)
    prompts = build_prompts(bench.name, items, template)

    started = time.perf_counter()
    texts: list[str] = []
    chunk = max(batch_size, 1) * 8  # images are opened a chunk at a time, not all at once
    for start in range(0, len(items), chunk):
        images = [open_image(it.image) for it in items[start:start + chunk]]
        texts += generate(llava, processor, prompts[start:start + chunk], images,
                          max_new_tokens=max_new_tokens or bench.max_new_tokens, batch_size=batch_size)
        log.info("%s: %d/%d questions answered (%.1f s)", bench.name, len(texts), len(items),
                 time.perf_counter() - started)
    seconds = time.perf_counter() - started
    texts = [t.strip() for t in texts]  # LLaVA strips decoded outputs before scoring
    scored = bench.score(items, texts, split)

    size = _paper_size(llava)
    metrics = scored["metrics"]
    result = {
        "benchmark": bench.name, "title": bench.title, "split": split, "model": label, "template": template,
        "questions": len(items), "limit": limit, "seconds": round(seconds, 2),
        "metrics": metrics,
        "headline": {"metric": bench.headline, "value": metrics.get(bench.headline),
                     "paper": bench.paper[size], "paper_model": f"LLaVA-1.5-{size}"},
        "submission": scored["submission"][0] if "submission" in scored else None,
        "note": scored.get("note"),
    }
    if out_dir is not None:
        _write(Path(out_dir), result, scored, items, prompts, texts)
    return result


def markdown_table(result: dict) -> str:
    """The headline metric beside the paper's, then every metric of this run."""
    h = result["headline"]
    value = "server-scored (see note)" if h["value"] is None else f"{h['value']:.2f}"
    lines = [f"# {result['title']} ({result['split']})", "",
             f"Model: `{result['model']}`, {result['questions']} questions"
             + (f" (limit {result['limit']})" if result["limit"] else "") + f", {result['seconds']} s", "",
             f"| Metric | This model | {h['paper_model']} (paper) |", "|---|---|---|",
             f"| {h['metric']} | {value} | {h['paper']} |"]
    for k, v in result["metrics"].items():
        if k != h["metric"]:
            lines.append(f"| {k} | {v:.2f} | |" if isinstance(v, float) else f"| {k} | {v} | |")
    if result["limit"]:
        lines += ["", "A limited run covers part of the benchmark; it is not comparable with the paper's number."]
    if result.get("note"):
        lines += ["", result["note"]]
    return "\n".join(lines) + "\n"


def _write(out_dir: Path, result: dict, scored: dict, items: list[Item], prompts: list[str], texts: list[str]) -> None:
    with atomic_dir(out_dir) as tmp:
        (tmp / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (tmp / "results.md").write_text(markdown_table(result))
        with (tmp / "predictions.jsonl").open("w") as f:
            for it, prompt, text, extra in zip(items, prompts, texts, scored["per_item"]):
                f.write(json.dumps({"question_id": it.qid, "prompt": prompt, "text": text, **extra},
                                   ensure_ascii=False) + "\n")
        if "submission" in scored:
            filename, content = scored["submission"]
            (tmp / filename).write_bytes(content)


__all__ = ["BENCHMARKS", "Benchmark", "BenchmarkDataError", "BenchmarkError", "Item", "SHORT_ANSWER", "MULTIPLE_CHOICE",
           "get_benchmark", "load_items", "build_prompts", "score", "run_benchmark", "markdown_table", "open_image"]
