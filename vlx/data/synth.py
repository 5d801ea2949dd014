"""Deterministic synthetic data for tests, demos and the embedded default.

The worlds live beside it: `vlx.data.shapes` (shape scenes, their captions and questions),
`vlx.data.street` and `vlx.data.street_text` (storefronts and what is said about them) and
`vlx.data.talk` (text-only chat); this module writes them as datasets.

    vlx data synth --kind captions|instruct|poi|chat --n N --out DIR [--seed S] [--image-size PX]

Every sample draws from its own random generator, seeded by `(seed, kind, index)`: the same seed
gives byte-identical files (with the same Pillow version), and the first k samples of a large set
equal a set of size k, and any number of worker processes (`workers=`, `--workers`) writes the
same files. Text is drawn with Pillow's built-in scalable font
(`ImageFont.load_default(size=...)`), so the output does not depend on the fonts a machine has;
extra TTF files can be passed explicitly (`fonts=`, `--font`).

Kinds and what they write under DIR (image paths are relative to DIR):

- `captions` (stage 1, the LLaVA-558K layout): `images/*.png` and `data.json`, a list of
  `{"id", "image", "conversations": [{"from": "human", "value": "<image>\\n<brief instruction>"},
  {"from": "gpt", "value": "<caption>"}]}`. Scenes hold shapes (circle, square, triangle, star,
  diamond, hexagon) in eight colours at five named positions (left, right, top, bottom, centre),
  repeated shapes to count, and a short rendered word in a corner; the caption names them all.
  With `mix={"shapes": .., "street": ..}` (`--mix street=0.5,shapes=0.5`) part of them are
  street scenes captioned with what their signs say (business, name, house number, street).
  The `plain` template reduces the human turn to `<image>`, as LLaVA-1.5 stage 1 does.
- `instruct` (stage 2): one file per source plus `data.json` (all rows, each tagged with its
  `source`) and `mixture.yaml`. Sources: `conversation` (multi-turn chat about the image in full
  sentences), `vqa` (short answers: colours, shapes, positions, counts, yes/no, the written
  word), `mc` (multiple choice with lettered options, the answer is the letter) and `text`
  (text-only rows without `image`, like ShareGPT). Every short answer can be read off the image.
  `street_vqa` (off unless `mix` names it): short-answer questions about street scenes' signs
  (name, kind of business, house number, phone, street, how many shops), the role TextVQA and
  OCR-VQA play in LLaVA-1.5's mixture.
- `poi` (street imagery): storefront scenes with the ground truth of `templates/poi.py`
  (`StreetScene`), written as `train.jsonl`, `val.jsonl` and `test.jsonl` rows
  `{"image": "images/poi_000000.png", "target": {...}}`. Targets are the canonical
  `StreetScene.model_dump(mode="json")` (schema field order, explicit nulls), validated before
  writing. A field is in the target only when it was drawn legibly: an element that does not fit
  at the minimum font size is left out of the image and of the target alike.
- `chat`: general conversations without format prompts (greetings, fixed-answer knowledge
  questions, questions about shape scenes and street scenes answered in full sentences) as
  `data.json`. Used as chat replay during schema fine-tuning and, generated with another seed,
  as held-out chat evaluation (the knowledge templates are finite, so the two sets can share a
  few questions).

Mixture file (`mixture.yaml`, paths relative to the YAML file)::

    sources:
    - name: vqa
      path: vqa.json
      format_prompt: Answer the question using a single word or phrase.
      ratio: 1.0

`format_prompt` is the LLaVA-1.5 response-format prompt of the source (null: none). It is not
part of the question text in the data files: the loader appends it to every human turn of the
source's rows, after a newline (`"<question>\\n<format_prompt>"`), so the same data can train
with and without it. `ratio` scales the source's rows per epoch: 1.0 uses every row once, 0.5
a random half, 2.0 every row twice.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageFont

from vlx.data.render import TextStyle, _choice
from vlx.data.shapes import (CAPTION_INSTRUCTIONS, ShapeScene, _caption, _description, _render_shape_scene,
                             _sample_shape_scene, _shape_questions)
from vlx.data.street import NUMBERED, SHOP_COUNTS, WEBSITES, _street_scene
from vlx.data.street_text import _street_chat, _street_vqa, street_caption
from vlx.data.talk import GREETINGS, _text_conversation

KINDS = ("captions", "instruct", "poi", "chat")
DEFAULT_IMAGE_SIZE = 336
"""LLaVA-1.5's CLIP resolution; street scenes stay legible down to 224 px, shape scenes to 64 px."""

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MC_PROMPT = "Answer with the option's letter from the given choices directly."

_KIND_ID = {kind: i for i, kind in enumerate(KINDS)}
Progress = Callable[[], None] | None


def _rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _KIND_ID[kind], index])


def _save_png(img: Image.Image, path: Path) -> None:
    # No metadata chunks and a fixed compression level: same pixels -> same bytes. Level 3 is
    # about twice as fast as the default 6 for 20% larger files.
    img.save(path, format="PNG", compress_level=3)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# captions / instruct
# ---------------------------------------------------------------------------------------------


def _prepare(out: str | Path) -> Path:
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    return out


def _check(n: int, image_size: int, min_size: int) -> None:
    if n < 1:
        raise ValueError(f"--n {n}: give at least 1 sample")
    if image_size < min_size:
        raise ValueError(f"--image-size {image_size}: use at least {min_size} px so text stays legible")


def _run(make_row: Callable[[int], dict], n: int, workers: int, progress: Progress) -> list[dict]:
    """Rows 0..n-1 in order. Each row has its own generator, so any worker count gives the same bytes."""
    if workers < 1:
        raise ValueError(f"--workers {workers}: use 1 or more")
    if workers == 1:
        results = map(make_row, range(n))
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(make_row, range(n), chunksize=max(1, min(32, n // (4 * workers))))
    rows = []
    try:
        for row in results:
            rows.append(row)
            if progress and "image" in row:
                progress()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return rows


CAPTION_SOURCES = {"shapes": 1.0, "street": 0.0}
"""Default shares of `synth_captions`' scene kinds: shape scenes only; `street` adds storefronts
captioned with what their signs say (the text-bearing images of a caption corpus)."""


def _caption_row(out: Path, seed: int, image_size: int, plan: list[str], i: int) -> dict:
    rng = _rng(seed, "captions", i)
    name = f"images/captions_{i:06d}.png"
    if plan[i] == "street":
        img, pois = _street_scene(rng, image_size, [TextStyle()])
        caption = street_caption(pois)
    else:
        scene = _sample_shape_scene(rng)
        img, caption = _render_shape_scene(rng, scene, image_size), _caption(scene)
    _save_png(img, out / name)
    instruction = str(_choice(rng, CAPTION_INSTRUCTIONS))
    return {
        "id": f"captions-{i:06d}",
        "image": name,
        "conversations": [{"from": "human", "value": f"<image>\n{instruction}"}, {"from": "gpt", "value": caption}],
    }


def _shares(mix: dict[str, float] | None, defaults: dict[str, float], what: str) -> dict[str, float]:
    shares = dict(defaults) if mix is None else dict(mix)
    unknown = set(shares) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {what} source(s) {sorted(unknown)}: use {', '.join(defaults)}")
    if any(v < 0 for v in shares.values()) or not sum(shares.values()) > 0:
        raise ValueError(f"{what} mix {shares}: shares must be >= 0 and not all 0")
    return shares


def synth_captions(
    out: str | Path,
    n: int,
    *,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    mix: dict[str, float] | None = None,
    workers: int = 1,
    progress: Progress = None,
) -> Path:
    """Write `n` caption pairs (LLaVA stage 1) to `out/data.json` and `out/images/`.

    `mix` sets the share of each scene kind (default `CAPTION_SOURCES`: shape scenes only);
    `{"shapes": 0.5, "street": 0.5}` makes half of them street scenes whose captions say what
    the signs read (`street_caption`). Rows are ordered by kind.

    Example:
        >>> synth_captions("data/stage1", 1000, seed=0)  # doctest: +SKIP
        PosixPath('data/stage1/data.json')
    """
    counts = _split_counts(n, _shares(mix, CAPTION_SOURCES, "caption"))
    _check(n, image_size, 160 if counts.get("street") else 64)
    out = _prepare(out)
    plan = [source for source, count in counts.items() for _ in range(count)]
    rows = _run(partial(_caption_row, out, seed, image_size, plan), n, workers, progress)
    _write_json(out / "data.json", rows)
    return out / "data.json"


INSTRUCT_SOURCES = {
    # name: (share of rows, format prompt)
    "conversation": (0.3, None),
    "vqa": (0.35, SHORT_ANSWER_PROMPT),
    "mc": (0.2, MC_PROMPT),
    "text": (0.15, None),
    # Off by default; academic VQA about text in images (TextVQA, OCR-VQA in LLaVA-1.5's mixture).
    "street_vqa": (0.0, SHORT_ANSWER_PROMPT),
}


def _split_counts(n: int, shares: dict[str, float]) -> dict[str, int]:
    total = sum(shares.values())
    counts = {k: int(n * v / total) for k, v in shares.items()}
    # Hand the rounding remainder to the largest shares, in a fixed order.
    for k in sorted(shares, key=lambda k: -shares[k])[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def _mc(rng: np.random.Generator, question: str, answer: str, pool: Sequence[str]) -> tuple[str, str]:
    k = min(4, len(pool))
    options = [answer] + [str(o) for o in rng.permutation([p for p in pool if p != answer])[: k - 1]]
    options = [options[j] for j in rng.permutation(len(options))]
    letters = "ABCD"[: len(options)]
    text = question + "".join(f"\n{letter}. {option}" for letter, option in zip(letters, options))
    return text, letters[options.index(answer)]


def _instruct_row(out: Path, seed: int, image_size: int, plan: list[str], i: int) -> dict:
    rng = _rng(seed, "instruct", i)
    row: dict = {"id": f"instruct-{i:06d}", "source": plan[i]}
    if plan[i] == "text":
        row["conversations"] = _text_conversation(rng, int(rng.integers(1, 3)))
        return row
    row["image"] = f"images/instruct_{i:06d}.png"
    if plan[i] == "street_vqa":
        img, pois = _street_scene(rng, image_size, [TextStyle()])
        _save_png(img, out / row["image"])
        row["conversations"] = _street_vqa(rng, pois)
        return row
    scene = _sample_shape_scene(rng)
    _save_png(_render_shape_scene(rng, scene, image_size), out / row["image"])
    row["conversations"] = _image_conversation(rng, plan[i], scene)
    return row


def synth_instruct(
    out: str | Path,
    n: int,
    *,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    mix: dict[str, float] | None = None,
    spell: tuple[str, ...] = (),
    workers: int = 1,
    progress: Progress = None,
) -> Path:
    """Write `n` instruction rows (LLaVA stage 2) as per-source files, `data.json` and `mixture.yaml`.

    `mix` sets the share of each source (default `INSTRUCT_SOURCES`: conversation 0.3, vqa 0.35,
    mc 0.2, text 0.15, street_vqa 0); a source left out of `mix` gets no rows. `spell`: sources written
    `spell: true` in the mixture (answers trained a character per token, `vlx.data.formats`), e.g.
    `("street_vqa",)`, whose answers are sign text. Returns the path of `mixture.yaml`.

    Example:
        >>> synth_instruct("data/stage2", 1000, seed=0)  # doctest: +SKIP
        PosixPath('data/stage2/mixture.yaml')
    """
    unknown = set(spell) - set(INSTRUCT_SOURCES)
    if unknown:
        raise ValueError(f"spell: unknown instruct source(s) {sorted(unknown)}; known: {sorted(INSTRUCT_SOURCES)}")
    counts = _split_counts(n, _shares(mix, {k: v for k, (v, _) in INSTRUCT_SOURCES.items()}, "instruct"))
    _check(n, image_size, 160 if counts.get("street_vqa") else 64)
    out = _prepare(out)
    by_source: dict[str, list[dict]] = {k: [] for k in counts if counts[k]}
    plan = [source for source, count in counts.items() for _ in range(count)]
    for row in _run(partial(_instruct_row, out, seed, image_size, plan), n, workers, progress):
        by_source[row["source"]].append(row)
    sources = []
    for source, rows in by_source.items():
        _write_json(out / f"{source}.json", rows)
        sources.append({"name": source, "path": f"{source}.json", "format_prompt": INSTRUCT_SOURCES[source][1], "ratio": 1.0,
                        **({"spell": True} if source in spell else {})})
    _write_json(out / "data.json", [row for rows in by_source.values() for row in rows])
    (out / "mixture.yaml").write_text(yaml.safe_dump({"sources": sources}, sort_keys=False, width=200), encoding="utf-8")
    return out / "mixture.yaml"


def _image_conversation(rng: np.random.Generator, source: str, scene: ShapeScene) -> list[dict]:
    # Turns per row are kept few so that a row fits small models' context (tiny: 256 tokens).
    questions = _shape_questions(rng, scene)
    turns = int(rng.integers(1, {"vqa": 3, "mc": 2, "conversation": 4}[source]))
    conv: list[dict] = []
    if source == "conversation" and len(scene.shapes) <= 3 and rng.random() < 0.5:
        conv += [{"from": "human", "value": "Describe this image in detail."}, {"from": "gpt", "value": _description(scene)}]
        turns = 1
    picked = [questions[j] for j in rng.permutation(len(questions))[:turns]]
    for q in picked:
        if source == "vqa":
            text, answer = q.text, q.answer
        elif source == "mc":
            text, answer = _mc(rng, q.text, q.answer, q.options)
        else:
            text, answer = q.text, q.sentence
        conv += [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]
    conv[0]["value"] = "<image>\n" + conv[0]["value"]
    return conv


def _load_street_scene_model(schema: str | Path | None):
    path = Path(schema) if schema else Path(__file__).resolve().parents[2] / "templates" / "poi.py"
    if not path.is_file():
        raise FileNotFoundError(f"POI schema {path} not found: pass schema= (or --schema) pointing at templates/poi.py")
    spec = importlib.util.spec_from_file_location(f"_vlx_synth_schema_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "StreetScene"):
        raise ValueError(f"{path} defines no StreetScene model; synthetic street scenes follow templates/poi.py")
    return module.StreetScene


def _styles(fonts: Sequence[str | Path]) -> list[TextStyle]:
    styles = [TextStyle()]
    for f in fonts:
        try:
            ImageFont.truetype(str(f), size=12)
        except OSError as e:
            raise ValueError(f"--font {f}: cannot be read as a TrueType/OpenType font ({e})") from e
        styles.append(TextStyle(font=str(f)))
    return styles


def _poi_row(out: Path, seed: int, image_size: int, styles: list[TextStyle], n_train: int,
             train_shops: tuple[float, float, float] | None, train_numbered: float | None,
             train_websites: float | None, i: int) -> dict:
    rng = _rng(seed, "poi", i)
    train = i < n_train
    img, pois = _street_scene(rng, image_size, styles, train_shops if train_shops and train else SHOP_COUNTS,
                              train_numbered if train_numbered is not None and train else NUMBERED,
                              train_websites if train_websites is not None and train else WEBSITES)
    name = f"images/poi_{i:06d}.png"
    _save_png(img, out / name)
    return {"image": name, "target": {"pois": pois}}


def synth_poi(
    out: str | Path,
    n: int,
    *,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    fonts: Sequence[str | Path] = (),
    schema: str | Path | None = None,
    train_shops: tuple[float, float, float] | None = None,
    train_numbered: float | None = None,
    train_websites: float | None = None,
    workers: int = 1,
    progress: Progress = None,
) -> dict[str, Path]:
    """Write `n` street scenes with `StreetScene` targets as `train/val/test.jsonl` under `out`.

    `splits` are the train/val/test shares (val and test are rounded, train takes the rest);
    `train_shops` redraws the train split with these shares of facades with 0, 1 and 2 storefronts
    (oversampling the harder two-shop facades) and `train_numbered` with this share of storefronts that
    have a house-number plate (oversampling the absent ones), `train_websites` with this share of businesses
    that have a website (oversampling the rarer present ones); val and test always keep the world's
    `SHOP_COUNTS`, `NUMBERED` and `WEBSITES`;
    `fonts` adds TTF files to Pillow's built-in font (output then depends on those files);
    `schema` is the POI schema file (default `templates/poi.py`), used to validate every target.

    Example:
        >>> synth_poi("data/poi", 1000, seed=0)["test"]  # doctest: +SKIP
        PosixPath('data/poi/test.jsonl')
    """
    _check(n, image_size, 160)
    street_scene = _load_street_scene_model(schema)
    styles = _styles(fonts)
    out = _prepare(out)
    n_val, n_test = round(n * splits[1] / sum(splits)), round(n * splits[2] / sum(splits))
    bounds = {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test), "test": (n - n_test, n)}
    if train_shops is not None and (len(train_shops) != 3 or min(train_shops) < 0 or abs(sum(train_shops) - 1) > 1e-6):
        raise ValueError(f"train_shops {train_shops}: give three shares (no, one, two storefronts) that sum to 1")
    if train_numbered is not None and not 0 <= train_numbered <= 1:
        raise ValueError(f"train_numbered {train_numbered}: give the share of storefronts with a house number, 0 to 1")
    if train_websites is not None and not 0 <= train_websites <= 1:
        raise ValueError(f"train_websites {train_websites}: give the share of businesses with a website, 0 to 1")
    n_train = bounds["train"][1]
    rows = _run(partial(_poi_row, out, seed, image_size, styles, n_train, train_shops, train_numbered, train_websites),
                n, workers, progress)
    paths = {}
    for split, (lo, hi) in bounds.items():
        lines = []
        for row in rows[lo:hi]:
            row["target"] = street_scene.model_validate(row["target"]).model_dump(mode="json")
            lines.append(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
        paths[split] = out / f"{split}.jsonl"
        paths[split].write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return paths


# ---------------------------------------------------------------------------------------------
# chat
# ---------------------------------------------------------------------------------------------

CHAT_SOURCES = {"greeting": 0.15, "knowledge": 0.35, "image_chat": 0.25, "street_chat": 0.25}


def _chat_row(out: Path, seed: int, image_size: int, plan: list[str], i: int) -> dict:
    rng = _rng(seed, "chat", i)
    source = plan[i]
    row: dict = {"id": f"chat-{i:06d}", "source": source}
    if source == "greeting":
        q, a = _choice(rng, GREETINGS)
        row["conversations"] = [{"from": "human", "value": q}, {"from": "gpt", "value": a}] + _text_conversation(rng, int(rng.integers(0, 2)))
        return row
    if source == "knowledge":
        row["conversations"] = _text_conversation(rng, int(rng.integers(1, 3)))
        return row
    if source == "image_chat":
        scene = _sample_shape_scene(rng)
        img = _render_shape_scene(rng, scene, image_size)
        questions = _shape_questions(rng, scene)
        turns = [("Describe this image.", _description(scene))] if len(scene.shapes) <= 3 and rng.random() < 0.5 else []
        turns += [(q.text, q.sentence) for q in (questions[j] for j in rng.permutation(len(questions))[: 2 - len(turns)])]
    else:
        img, pois = _street_scene(rng, image_size, [TextStyle()])
        turns = _street_chat(rng, pois)
    row["image"] = f"images/chat_{i:06d}.png"
    _save_png(img, out / row["image"])
    row["conversations"] = [{"from": r, "value": v} for q, a in turns for r, v in (("human", q), ("gpt", a))]
    row["conversations"][0]["value"] = "<image>\n" + row["conversations"][0]["value"]
    return row


def synth_chat(
    out: str | Path, n: int, *, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE, workers: int = 1, progress: Progress = None
) -> Path:
    """Write `n` general conversations without format prompts to `out/data.json`.

    Sources (the `source` key of each row): `greeting` and `knowledge` (text only, fixed answers),
    `image_chat` (shape scenes, answers in full sentences) and `street_chat` (street scenes
    discussed in prose, never as JSON). Use it as chat replay while fine-tuning on a schema, and
    with another seed as a held-out chat set.

    Example:
        >>> synth_chat("data/chat", 200, seed=1)  # doctest: +SKIP
        PosixPath('data/chat/data.json')
    """
    _check(n, image_size, 160)
    out = _prepare(out)
    rows = []
    plan = [source for source, count in _split_counts(n, CHAT_SOURCES).items() for _ in range(count)]
    rows = _run(partial(_chat_row, out, seed, image_size, plan), n, workers, progress)
    _write_json(out / "data.json", rows)
    return out / "data.json"


def synth(kind: str, out: str | Path, n: int, *, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE, progress: Progress = None, **kwargs):
    """Dispatch to `synth_captions`, `synth_instruct`, `synth_poi` or `synth_chat` by `kind`."""
    if kind == "captions":
        return synth_captions(out, n, seed=seed, image_size=image_size, progress=progress, **kwargs)
    if kind == "instruct":
        return synth_instruct(out, n, seed=seed, image_size=image_size, progress=progress, **kwargs)
    if kind == "poi":
        return synth_poi(out, n, seed=seed, image_size=image_size, progress=progress, **kwargs)
    if kind == "chat":
        return synth_chat(out, n, seed=seed, image_size=image_size, progress=progress, **kwargs)
    raise ValueError(f"--kind {kind!r}: use one of {', '.join(KINDS)}")


def image_count(kind: str, n: int, mix: dict[str, float] | None = None) -> int:
    """How many images `synth(kind, n=n)` writes (for progress bars)."""
    if kind == "instruct":
        shares = {k: v for k, (v, _) in INSTRUCT_SOURCES.items()} if mix is None else mix
        return n - _split_counts(n, shares).get("text", 0)
    if kind == "chat":
        counts = _split_counts(n, CHAT_SOURCES)
        return counts["image_chat"] + counts["street_chat"]
    return n
