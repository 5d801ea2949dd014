"""Deterministic synthetic data for tests, demos and the embedded default.

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
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFilter, ImageFont

KINDS = ("captions", "instruct", "poi", "chat")
DEFAULT_IMAGE_SIZE = 336
"""LLaVA-1.5's CLIP resolution; street scenes stay legible down to 224 px, shape scenes to 64 px."""

SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
MC_PROMPT = "Answer with the option's letter from the given choices directly."

_KIND_ID = {kind: i for i, kind in enumerate(KINDS)}
Progress = Callable[[], None] | None


def _rng(seed: int, kind: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _KIND_ID[kind], index])


def _choice(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def _save_png(img: Image.Image, path: Path) -> None:
    # No metadata chunks and a fixed compression level: same pixels -> same bytes. Level 3 is
    # about twice as fast as the default 6 for 20% larger files.
    img.save(path, format="PNG", compress_level=3)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Fonts and text
# ---------------------------------------------------------------------------------------------


@lru_cache(maxsize=512)
def _font(path: str | None, size: int) -> ImageFont.FreeTypeFont:
    if path is None:
        return ImageFont.load_default(size=size)
    return ImageFont.truetype(path, size=size)


@dataclass(frozen=True)
class TextStyle:
    """How a piece of text is drawn: font file (None: Pillow's built-in), faux bold, width."""

    font: str | None = None
    stroke: int = 0
    stretch: float = 1.0


def _stroke(style: TextStyle, size: int) -> int:
    # Faux bold only where strokes stay open; small bold text clogs up.
    return style.stroke if size >= 18 else 0


def _text_size(text: str, size: int, style: TextStyle) -> tuple[int, int]:
    left, top, right, bottom = _font(style.font, size).getbbox(text, stroke_width=_stroke(style, size))
    return max(1, round((right - left) * style.stretch)), max(1, bottom - top)


def _fit(text: str, max_w: float, max_h: float, style: TextStyle, start: int, min_px: int) -> int | None:
    """Largest font size <= start at which `text` fits in max_w x max_h; None below min_px."""

    def fits(size: int) -> bool:
        w, h = _text_size(text, size, style)
        return w <= max_w and h <= max_h

    lo, hi = min_px, int(start)
    if hi < lo or not fits(lo):
        return None
    while lo < hi:  # text extent grows with the font size: bisect
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _draw_text(img: Image.Image, xy: tuple[float, float], text: str, size: int, fill, style: TextStyle) -> tuple[int, int, int, int]:
    """Draw `text` with its ink box's top-left at `xy`; returns the ink box."""
    font = _font(style.font, size)
    stroke = _stroke(style, size)
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    if style.stretch != 1.0:
        mask = mask.resize((max(1, round(mask.width * style.stretch)), mask.height), Image.Resampling.BILINEAR)
    x, y = round(xy[0]), round(xy[1])
    img.paste(tuple(fill), (x, y, x + mask.width, y + mask.height), mask)
    return (x, y, x + mask.width, y + mask.height)


def _luma(rgb) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _ink_for(bg) -> tuple[int, int, int]:
    return (20, 20, 20) if _luma(bg) > 140 else (250, 250, 245)


def _jitter(rng: np.random.Generator, rgb, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


# ---------------------------------------------------------------------------------------------
# Shape scenes (captions, instruct, chat)
# ---------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon")
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 165, 60),
    "blue": (40, 90, 225),
    "purple": (140, 60, 190),
    "white": (248, 248, 248),
    "black": (20, 20, 20),
}
# Cells of a 3 x 3 grid: shapes sit on the cross, words in the corners.
POSITIONS = {"left": (0, 1), "right": (2, 1), "top": (1, 0), "bottom": (1, 2), "centre": (1, 1)}
POSITION_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
CORNERS = {"top left": (0, 0), "top right": (2, 0), "bottom left": (0, 2), "bottom right": (2, 2)}
WORDS = (
    "cat", "dog", "sun", "moon", "tree", "fish", "bird", "boat", "car", "rain", "snow", "lamp",
    "book", "key", "door", "hat", "cup", "milk", "rose", "frog", "ship", "bell", "kite", "leaf",
    "wind", "fire", "rock", "sand", "road", "cake", "ring", "coin", "drum", "nest", "owl", "bus",
    "map", "pen", "jam", "egg", "fox", "bee", "sea", "sky", "hill", "lake", "corn", "pear",
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
CAPTION_INSTRUCTIONS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Give a short and clear explanation of the subsequent image.",
    "Summarize the visual content of the image.",
    "Write a terse but informative summary of the picture.",
    "Share a concise interpretation of the image provided.",
    "Render a clear and concise summary of the photo.",
)


@dataclass(frozen=True)
class Shape:
    shape: str
    colour: str
    position: str


@dataclass
class ShapeScene:
    """What a shape image shows: the ground truth every caption and question is built from."""

    background: tuple[int, int, int]
    shapes: list[Shape]
    word: str | None = None
    word_corner: str | None = None
    word_colour: str | None = None

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        return sum((shape is None or s.shape == shape) and (colour is None or s.colour == colour) for s in self.shapes)

    def at(self, position: str) -> Shape | None:
        return next((s for s in self.shapes if s.position == position), None)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(shape: str) -> str:
    return shape + "es" if shape.endswith("x") else shape + "s"


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    def ring(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [(cx + radius * math.cos(phase + 2 * math.pi * k / n), cy + radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]

    if shape == "square":
        return [(cx - r * 0.8, cy - r * 0.8), (cx + r * 0.8, cy - r * 0.8), (cx + r * 0.8, cy + r * 0.8), (cx - r * 0.8, cy + r * 0.8)]
    if shape == "triangle":
        return ring(3, r, -math.pi / 2)
    if shape == "diamond":
        return [(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)]
    if shape == "hexagon":
        return ring(6, r * 0.95, 0.0)
    if shape == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, r * 0.42, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    raise ValueError(shape)


def _sample_shape_scene(rng: np.random.Generator) -> ShapeScene:
    grey = int(rng.integers(95, 175))
    background = _jitter(rng, (grey, grey, grey), 14)
    n = int(rng.choice([1, 2, 3, 4, 5], p=[0.2, 0.3, 0.25, 0.15, 0.1]))
    positions = [str(p) for p in rng.permutation(list(POSITIONS))[:n]]
    shapes: list[Shape] = []
    for pos in positions:
        if shapes and rng.random() < 0.3:
            # Repeat an earlier shape (same colour or not) so that counting questions are not all "1".
            prev = _choice(rng, shapes)
            colour = prev.colour if rng.random() < 0.6 else str(_choice(rng, list(COLOURS)))
            shapes.append(Shape(prev.shape, colour, pos))
        else:
            shapes.append(Shape(str(_choice(rng, SHAPES)), str(_choice(rng, list(COLOURS))), pos))
    scene = ShapeScene(background, shapes)
    if rng.random() < 0.5:
        scene.word = str(_choice(rng, WORDS))
        scene.word_corner = str(_choice(rng, list(CORNERS)))
        scene.word_colour = "black" if _luma(background) > 128 else "white"
    return scene


def _render_shape_scene(rng: np.random.Generator, scene: ShapeScene, size: int) -> Image.Image:
    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    cell = size / 3
    for s in scene.shapes:
        col, row = POSITIONS[s.position]
        cx = (col + 0.5 + rng.uniform(-0.1, 0.1)) * cell
        cy = (row + 0.5 + rng.uniform(-0.1, 0.1)) * cell
        r = cell * rng.uniform(0.3, 0.42)
        fill = _jitter(rng, COLOURS[s.colour], 12)
        if s.shape == "circle":
            draw.ellipse((cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9), fill=fill)
        else:
            draw.polygon(_shape_points(s.shape, cx, cy, r), fill=fill)
    if scene.word:
        col, row = CORNERS[scene.word_corner]
        px = _fit(scene.word, cell * 0.9, cell * 0.5, TextStyle(), round(cell * 0.32), 8) or 8
        w, h = _text_size(scene.word, px, TextStyle())
        x = col * cell + (cell - w) / 2 + rng.uniform(-0.05, 0.05) * cell
        y = row * cell + (cell - h) / 2 + rng.uniform(-0.05, 0.05) * cell
        _draw_text(img, (x, y), scene.word, px, COLOURS[scene.word_colour], TextStyle())
    return img


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _caption(scene: ShapeScene) -> str:
    groups: dict[tuple[str, str], list[str]] = {}
    for s in scene.shapes:
        groups.setdefault((s.colour, s.shape), []).append(s.position)
    parts = []
    for (colour, shape), where in groups.items():
        phrases = [POSITION_PHRASE[p] for p in where]
        if len(where) == 1:
            parts.append(f"{_a(colour)} {shape} {phrases[0]}")
        else:
            parts.append(f"{NUMBER_WORDS[len(where)]} {colour} {_plural(shape)} {_join(phrases)}")
    text = _join(parts)
    text = text[0].upper() + text[1:]
    if scene.word:
        text += f', and the word "{scene.word}" in the {scene.word_corner} corner'
    return text + "."


def _description(scene: ShapeScene) -> str:
    n = len(scene.shapes)
    first = f"The image shows {NUMBER_WORDS[n]} shape{'s' if n > 1 else ''} on a grey background: "
    body = _caption(scene)
    return first + body[0].lower() + body[1:]


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: str
    options: tuple[str, ...]
    """Every answer this kind of question can have: the distractor pool for multiple choice."""
    sentence: str
    """The answer as a full sentence, for conversations."""


def _shape_questions(rng: np.random.Generator, scene: ShapeScene) -> list[Question]:
    """Questions answerable from the image alone."""
    qs: list[Question] = []
    colours, shapes_ = tuple(COLOURS), tuple(SHAPES)
    for s in scene.shapes:
        phrase = POSITION_PHRASE[s.position]
        said = f"The {s.shape} {phrase} is {s.colour}."
        qs.append(Question("colour_at", f"What colour is the shape {phrase}?", s.colour, colours, said))
        qs.append(Question("shape_at", f"What shape is {phrase}?", s.shape, shapes_, f"There is {_a(s.colour)} {s.shape} {phrase}."))
        if scene.count(shape=s.shape) == 1:
            qs.append(Question("colour_of", f"What colour is the {s.shape}?", s.colour, colours, f"The {s.shape} is {s.colour}."))
        if scene.count(shape=s.shape, colour=s.colour) == 1:
            qs.append(Question("where", f"Where is the {s.colour} {s.shape}?", s.position, tuple(POSITIONS), f"The {s.colour} {s.shape} is {phrase}."))
    shape = str(_choice(rng, shapes_))
    k = scene.count(shape=shape)
    qs.append(
        Question(
            "count_shape",
            f"How many {_plural(shape)} are there?",
            str(k),
            tuple(str(i) for i in range(6)),
            f"There are no {_plural(shape)} in the image."
            if k == 0
            else f"There {'is' if k == 1 else 'are'} {NUMBER_WORDS[k]} {shape if k == 1 else _plural(shape)} in the image.",
        )
    )
    k = len(scene.shapes)
    qs.append(
        Question(
            "count_all",
            "How many shapes are in the image?",
            str(k),
            tuple(str(i) for i in range(1, 6)),
            f"There {'is' if k == 1 else 'are'} {NUMBER_WORDS[k]} shape{'' if k == 1 else 's'} in the image.",
        )
    )
    if rng.random() < 0.5:
        s = _choice(rng, scene.shapes)
        colour, shape = s.colour, s.shape
    else:
        colour, shape = str(_choice(rng, colours)), str(_choice(rng, shapes_))
    present = scene.count(shape=shape, colour=colour) > 0
    qs.append(
        Question(
            "exists",
            f"Is there {_a(colour)} {shape} in the image?",
            "yes" if present else "no",
            ("yes", "no"),
            f"Yes, there is {_a(colour)} {shape} in the image." if present else f"No, there is no {colour} {shape} in the image.",
        )
    )
    if scene.word:
        qs.append(Question("word", "What word is written in the image?", scene.word, WORDS, f'The word "{scene.word}" is written in the {scene.word_corner} corner.'))
    return qs


# ---------------------------------------------------------------------------------------------
# Text-only conversations (instruct `text` source and chat)
# ---------------------------------------------------------------------------------------------

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Poland": "Warsaw", "Greece": "Athens", "Portugal": "Lisbon", "Ireland": "Dublin",
    "Austria": "Vienna", "Sweden": "Stockholm", "Finland": "Helsinki", "Chile": "Santiago",
    "Thailand": "Bangkok", "Argentina": "Buenos Aires", "Australia": "Canberra", "India": "New Delhi",
}
DAYS_FULL = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "light": "dark", "happy": "sad",
    "early": "late", "open": "closed", "full": "empty", "old": "new", "high": "low", "wet": "dry",
}
COLOUR_MIX = {("blue", "yellow"): "green", ("red", "yellow"): "orange", ("red", "blue"): "purple", ("red", "white"): "pink", ("black", "white"): "grey"}
GREETINGS = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there.", "Hi! What would you like to talk about?"),
    ("Good morning!", "Good morning! How can I help you?"),
    ("How are you?", "I'm doing well, thank you for asking. How can I help you today?"),
    ("Thank you for your help.", "You're welcome! Let me know if there is anything else I can do."),
    ("What can you do?", "I can answer questions, describe images and help you with short writing tasks."),
    ("Can you help me?", "Of course. Tell me what you need and I will do my best to help."),
    ("Goodbye!", "Goodbye! Have a nice day."),
)


def _knowledge_turn(rng: np.random.Generator) -> tuple[str, str]:
    kind = int(rng.integers(7))
    if kind == 0:
        country = str(_choice(rng, list(CAPITALS)))
        return f"What is the capital of {country}?", f"The capital of {country} is {CAPITALS[country]}."
    if kind == 1:
        a, b = int(rng.integers(2, 20)), int(rng.integers(2, 20))
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == 2:
        a, b = int(rng.integers(2, 13)), int(rng.integers(2, 13))
        return f"What is {a} times {b}?", f"{a} times {b} is {a * b}."
    if kind == 3:
        d = int(rng.integers(7))
        return f"Which day comes after {DAYS_FULL[d]}?", f"{DAYS_FULL[(d + 1) % 7]} comes after {DAYS_FULL[d]}."
    if kind == 4:
        word = str(_choice(rng, list(OPPOSITES)))
        return f"What is the opposite of {word}?", f'The opposite of "{word}" is "{OPPOSITES[word]}".'
    if kind == 5:
        a, b = _choice(rng, list(COLOUR_MIX))
        return f"What colour do you get when you mix {a} and {b}?", f"Mixing {a} and {b} gives {COLOUR_MIX[(a, b)]}."
    word = str(_choice(rng, WORDS))
    return f'How do you spell "{word}" backwards?', f'"{word}" spelled backwards is "{word[::-1]}".'


def _text_conversation(rng: np.random.Generator, turns: int) -> list[dict]:
    conv = []
    if rng.random() < 0.3:
        q, a = _choice(rng, GREETINGS)
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    while len(conv) < 2 * turns:
        q, a = _knowledge_turn(rng)
        conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return conv


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
    workers: int = 1,
    progress: Progress = None,
) -> Path:
    """Write `n` instruction rows (LLaVA stage 2) as per-source files, `data.json` and `mixture.yaml`.

    `mix` sets the share of each source (default `INSTRUCT_SOURCES`: conversation 0.3, vqa 0.35,
    mc 0.2, text 0.15, street_vqa 0); a source left out of `mix` gets no rows. Returns the path of
    `mixture.yaml`.

    Example:
        >>> synth_instruct("data/stage2", 1000, seed=0)  # doctest: +SKIP
        PosixPath('data/stage2/mixture.yaml')
    """
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
        sources.append({"name": source, "path": f"{source}.json", "format_prompt": INSTRUCT_SOURCES[source][1], "ratio": 1.0})
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


# ---------------------------------------------------------------------------------------------
# Street scenes (poi)
# ---------------------------------------------------------------------------------------------

ADJECTIVES = (
    "Golden", "Little", "Blue", "Green", "Red", "Silver", "Happy", "Old", "Royal", "Sunny", "Corner",
    "Urban", "Wild", "Lucky", "Bright", "Daily", "Fresh", "Quiet", "Grand", "Northern", "Maple",
    "Cedar", "Olive", "Copper", "Velvet", "Rustic", "Humble", "Honest", "Modern", "Cozy", "Lunar",
    "Amber", "Ivory", "Coral", "Misty", "Sweet", "Twin", "Harbor", "Hidden", "Gentle", "Crimson",
    "Jolly", "Noble", "Stone", "Sage",
)
NOUNS = (
    "Bean", "Leaf", "Oak", "Lantern", "Anchor", "Fox", "Owl", "Bear", "Sparrow", "Garden", "Table",
    "Spoon", "Kettle", "Mill", "Bridge", "Crown", "Feather", "Willow", "Pine", "Meadow", "Moon",
    "Sun", "Star", "Rose", "Tulip", "Pepper", "Basil", "Ginger", "Honey", "Cherry", "Plum", "Lemon",
    "Fig", "Acorn", "Wren", "Hare", "Otter", "Thistle", "Clover", "Compass", "Harp", "Lark", "Heron",
    "Badger", "Orchard",
)
PEOPLE = (
    "Maria", "Luca", "Nora", "Omar", "Hugo", "Elena", "Sami", "Ines", "Theo", "Mila", "Ravi", "Yuki",
    "Anton", "Clara", "Jonas", "Leila", "Marco", "Petra", "Ivan", "Sofia", "Felix", "Greta", "Hana",
    "Oscar", "Rosa", "Tomas", "Vera", "Zoe", "Ada", "Bruno", "Kai", "Lena", "Amir", "Ella", "Dario",
)
PREFIXES = ("Oak", "Ash", "Elm", "Bright", "Stone", "Silver", "Green", "Fair", "Black", "White", "North", "Glen", "Brook", "Mill", "Rose", "Wood", "Lake", "Red", "Hazel", "Win")
SUFFIXES = ("field", "wood", "ford", "well", "vale", "ridge", "brook", "side", "worth", "ley", "ton", "wick", "mere", "gate", "haven", "crest", "dale")
STREET_TYPES = ("Street", "Road", "Avenue", "Lane", "Way", "Place", "Row")

# category: (words for names, awning colours, sign colours, typical hours (opens, closes) in hours)
CATEGORIES = {
    "cafe": (("Cafe", "Coffee", "Espresso", "Roasters", "Coffee House"), ((110, 70, 40), (60, 40, 30), (200, 160, 110)), (7, 18)),
    "restaurant": (("Kitchen", "Bistro", "Grill", "Diner", "Trattoria", "Eatery"), ((150, 25, 35), (120, 20, 25), (60, 60, 60)), (11, 23)),
    "bakery": (("Bakery", "Bakehouse", "Bread", "Patisserie", "Ovens"), ((230, 150, 60), (210, 180, 120), (180, 110, 50)), (6, 17)),
    "pharmacy": (("Pharmacy", "Chemist", "Apothecary", "Drugstore"), ((30, 150, 70), (20, 120, 60), (240, 240, 240)), (8, 20)),
    "grocery": (("Market", "Grocery", "Foods", "Provisions", "Mini Market"), ((120, 180, 40), (40, 120, 40), (220, 200, 60)), (7, 22)),
    "bar": (("Bar", "Pub", "Tavern", "Taproom", "Lounge"), ((40, 30, 50), (90, 30, 80), (20, 20, 20)), (17, 2)),
    "bank": (("Bank", "Savings", "Credit Union", "Trust"), ((20, 40, 100), (40, 70, 130), (90, 100, 110)), (9, 16)),
    "clothing": (("Boutique", "Outfitters", "Apparel", "Clothing", "Threads"), ((210, 60, 130), (170, 40, 110), (30, 30, 30)), (10, 19)),
    "hardware": (("Hardware", "Tools", "Supply", "Ironmongers"), ((240, 180, 20), (220, 110, 20), (70, 70, 70)), (8, 18)),
    "hair_salon": (("Salon", "Hair", "Barbers", "Cuts", "Hair Studio"), ((30, 150, 150), (20, 110, 120), (230, 230, 230)), (9, 19)),
    "bookstore": (("Books", "Bookshop", "Booksellers", "Reads", "Pages"), ((110, 30, 40), (30, 80, 60), (150, 100, 60)), (9, 20)),
    "florist": (("Flowers", "Florist", "Blooms", "Petals", "Flower Shop"), ((240, 130, 170), (120, 170, 90), (250, 200, 210)), (8, 18)),
}
SIGN_COLOURS = ((25, 35, 70), (20, 60, 40), (25, 25, 25), (245, 240, 225), (120, 25, 35), (110, 75, 45), (20, 100, 110), (235, 235, 235), (200, 160, 60))
WALL_COLOURS = ((200, 190, 170), (170, 90, 70), (150, 150, 150), (215, 200, 150), (180, 120, 90), (120, 130, 140), (225, 215, 200), (160, 170, 150))
DAY_LABEL = {"mon": "Mon", "tue": "Tue", "wed": "Wed", "thu": "Thu", "fri": "Fri", "sat": "Sat", "sun": "Sun"}
DAY_KEYS = tuple(DAY_LABEL)
NAME_PREFIX_WORDS = ("Cafe", "Espresso", "Bistro", "Trattoria", "Patisserie", "Bar", "Salon", "Boutique", "Pharmacy", "Market")
MIN_TEXT_PX = 10
"""Smallest font size (pixels of the final image) any ground-truth text is drawn at."""


def _compound(rng: np.random.Generator) -> str:
    """A place-like word from two parts: Oak + field -> Oakfield (never Wood + wood)."""
    prefix = str(_choice(rng, PREFIXES))
    suffix = str(_choice(rng, [s for s in SUFFIXES if s != prefix.lower()]))
    return prefix + suffix


def _business_name(rng: np.random.Generator, category: str) -> str:
    word = str(_choice(rng, CATEGORIES[category][0]))
    pattern = int(rng.integers(8))
    adj, noun, person = str(_choice(rng, ADJECTIVES)), str(_choice(rng, NOUNS)), str(_choice(rng, PEOPLE))
    compound = _compound(rng)
    name = (
        f"{adj} {noun}",
        f"{adj} {noun} {word}",
        f"{person}'s {word}",
        f"The {noun} {word}",
        f"{compound} {word}",
        f"{word} {person}" if word in NAME_PREFIX_WORDS else f"{person}'s",
        f"{noun} & {str(_choice(rng, NOUNS))}",
        f"The {adj} {noun}",
    )[pattern]
    return name.upper() if rng.random() < 0.2 else name


def _phone(rng: np.random.Generator) -> str:
    digits = lambda k: "".join(str(int(d)) for d in rng.integers(0, 10, k))  # noqa: E731
    style = int(rng.integers(4))
    if style == 0:
        return f"+{int(rng.integers(1, 99))} {int(rng.integers(1, 99))} {digits(4)} {digits(4)}"
    if style == 1:
        return f"0{digits(2)} {digits(4)} {digits(3)}"
    if style == 2:
        return f"0{digits(3)} {digits(6)}"
    return f"{digits(3)} {digits(3)} {digits(4)}"


def _website(name: str, rng: np.random.Generator) -> str | None:
    slug = "".join(c for c in name.lower().replace("&", "and") if c.isalnum() or c == " ").split()
    slug = ("-" if rng.random() < 0.3 else "").join(slug)
    return f"{slug}.{_choice(rng, ('com', 'net', 'shop', 'co', 'org', 'de', 'uk'))}" if 0 < len(slug) <= 22 else None


def _hours(rng: np.random.Generator, category: str) -> list[dict]:
    base_open, base_close = CATEGORIES[category][2]

    def hhmm(hours: float) -> str:
        minutes = round(hours * 60) % (24 * 60)  # a bar closing at 26.0 closes at 02:00
        return f"{minutes // 60:02d}:{minutes % 60:02d}"

    def span(extra_open: float = 0.0, extra_close: float = 0.0) -> tuple[str, str]:
        o = base_open + float(rng.choice([-1, -0.5, 0, 0, 0.5, 1])) + extra_open
        c = base_close + float(rng.choice([-1, -0.5, 0, 0, 0.5, 1])) + extra_close
        return hhmm(o), hhmm(c)

    pattern = int(rng.integers(5))
    if pattern == 0:
        days = [("mon", "fri"), ("sat", "sat")]
    elif pattern == 1:
        days = [("mon", "sat")]
    elif pattern == 2:
        days = [("mon", "fri"), ("sat", "sun")]
    elif pattern == 3:
        days = [("tue", "sun")]
    else:
        days = [("mon", "fri"), ("sat", "sat"), ("sun", "sun")]
    out = []
    for k, (first, last) in enumerate(days):
        o, c = span(0.5 * k, -1.5 * k if category != "bar" else 0)
        out.append({"first_day": first, "last_day": last, "opens": o, "closes": c})
    return out


def _hours_line(h: dict, two_lines: bool) -> list[str]:
    days = DAY_LABEL[h["first_day"]] if h["first_day"] == h["last_day"] else f"{DAY_LABEL[h['first_day']]}-{DAY_LABEL[h['last_day']]}"
    times = f"{h['opens']}-{h['closes']}"
    return [days, times] if two_lines else [f"{days} {times}"]


@dataclass
class Business:
    """One storefront to draw; fields are cleared when they cannot be drawn legibly."""

    category: str
    name: str
    house_number: str | None
    phone: str | None
    website: str | None
    hours: list[dict]
    open_24h: bool
    sign: tuple[int, int, int]
    awning: tuple[int, int, int]
    wall: tuple[int, int, int]
    style: TextStyle
    door_left: bool
    protected: list[tuple[float, float, float, float]] = field(default_factory=list)

    def target(self, street: str | None) -> dict:
        return {
            "name": self.name,
            "category": self.category,
            "address": {"house_number": self.house_number, "street": street},
            "phone": self.phone,
            "website": self.website,
            "opening_hours": self.hours,
            "open_24h": self.open_24h,
        }


def _sample_business(rng: np.random.Generator, styles: list[TextStyle]) -> Business:
    category = str(_choice(rng, list(CATEGORIES)))
    name = _business_name(rng, category)
    open_24h = category in ("pharmacy", "grocery", "bar") and rng.random() < 0.25
    hours = [] if open_24h or rng.random() < 0.15 else _hours(rng, category)
    number = f"{int(rng.integers(1, 400 if rng.random() < 0.8 else 3000))}{_choice(rng, 'abc') if rng.random() < 0.12 else ''}"
    return Business(
        category=category,
        name=name,
        house_number=number if rng.random() < 0.85 else None,
        phone=_phone(rng) if rng.random() < 0.7 else None,
        website=_website(name, rng) if rng.random() < 0.4 else None,
        hours=hours,
        open_24h=open_24h,
        sign=_jitter(rng, _choice(rng, SIGN_COLOURS), 10),
        awning=_jitter(rng, _choice(rng, CATEGORIES[category][1]), 12),
        wall=_jitter(rng, _choice(rng, WALL_COLOURS), 15),
        style=TextStyle(
            font=_choice(rng, styles).font,
            stroke=int(rng.random() < 0.3),
            stretch=float(rng.choice([0.85, 0.92, 1.0, 1.0, 1.08])),
        ),
        door_left=bool(rng.random() < 0.5),
    )


def _icon(draw: ImageDraw.ImageDraw, category: str, box: tuple[float, float, float, float], ink, bg) -> None:
    """A pictogram per category, drawn with simple shapes inside `box`."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    lw = max(1, round(w / 12))
    P = lambda fx, fy: (x0 + fx * w, y0 + fy * h)  # noqa: E731
    if category == "cafe":
        draw.rectangle((*P(0.2, 0.35), *P(0.7, 0.85)), fill=ink)
        draw.ellipse((*P(0.6, 0.45), *P(0.88, 0.72)), outline=ink, width=lw)
        for fx in (0.32, 0.45, 0.58):
            draw.line((P(fx, 0.1), P(fx, 0.28)), fill=ink, width=lw)
    elif category == "restaurant":
        draw.line((P(0.35, 0.1), P(0.35, 0.9)), fill=ink, width=lw * 2)
        for fx in (0.25, 0.35, 0.45):
            draw.line((P(fx, 0.1), P(fx, 0.35)), fill=ink, width=lw)
        draw.polygon([P(0.62, 0.1), P(0.75, 0.1), P(0.72, 0.9), P(0.65, 0.9)], fill=ink)
    elif category == "bakery":
        draw.ellipse((*P(0.1, 0.3), *P(0.9, 0.75)), fill=ink)
        for fx in (0.35, 0.5, 0.65):
            draw.line((P(fx - 0.06, 0.38), P(fx + 0.06, 0.66)), fill=bg, width=lw)
    elif category == "pharmacy":
        draw.rectangle((*P(0.38, 0.1), *P(0.62, 0.9)), fill=(40, 170, 70))
        draw.rectangle((*P(0.1, 0.38), *P(0.9, 0.62)), fill=(40, 170, 70))
    elif category == "grocery":
        draw.ellipse((*P(0.15, 0.25), *P(0.85, 0.92)), fill=(200, 40, 40))
        draw.line((P(0.5, 0.3), P(0.55, 0.08)), fill=(90, 60, 30), width=lw)
        draw.ellipse((*P(0.55, 0.05), *P(0.8, 0.22)), fill=(60, 160, 60))
    elif category == "bar":
        draw.polygon([P(0.15, 0.1), P(0.85, 0.1), P(0.5, 0.5)], fill=ink)
        draw.line((P(0.5, 0.5), P(0.5, 0.85)), fill=ink, width=lw)
        draw.line((P(0.3, 0.88), P(0.7, 0.88)), fill=ink, width=lw * 2)
    elif category == "bank":
        draw.polygon([P(0.1, 0.3), P(0.5, 0.05), P(0.9, 0.3)], fill=ink)
        for fx in (0.2, 0.4, 0.6, 0.8):
            draw.rectangle((*P(fx - 0.05, 0.35), *P(fx + 0.05, 0.8)), fill=ink)
        draw.rectangle((*P(0.1, 0.83), *P(0.9, 0.93)), fill=ink)
    elif category == "clothing":
        draw.polygon([P(0.3, 0.1), P(0.7, 0.1), P(0.95, 0.35), P(0.8, 0.45), P(0.72, 0.35), P(0.72, 0.9), P(0.28, 0.9), P(0.28, 0.35), P(0.2, 0.45), P(0.05, 0.35)], fill=ink)
    elif category == "hardware":
        draw.line((P(0.25, 0.9), P(0.6, 0.3)), fill=ink, width=lw * 2)
        draw.polygon([P(0.4, 0.1), P(0.85, 0.35), P(0.75, 0.5), P(0.3, 0.25)], fill=ink)
    elif category == "hair_salon":
        draw.ellipse((*P(0.1, 0.62), *P(0.4, 0.92)), outline=ink, width=lw)
        draw.ellipse((*P(0.6, 0.62), *P(0.9, 0.92)), outline=ink, width=lw)
        draw.line((P(0.33, 0.65), P(0.75, 0.08)), fill=ink, width=lw)
        draw.line((P(0.67, 0.65), P(0.25, 0.08)), fill=ink, width=lw)
    elif category == "bookstore":
        draw.polygon([P(0.05, 0.2), P(0.48, 0.3), P(0.48, 0.9), P(0.05, 0.8)], fill=ink)
        draw.polygon([P(0.52, 0.3), P(0.95, 0.2), P(0.95, 0.8), P(0.52, 0.9)], fill=ink)
    elif category == "florist":
        draw.line((P(0.5, 0.5), P(0.5, 0.95)), fill=(50, 140, 50), width=lw)
        for k in range(5):
            a = 2 * math.pi * k / 5
            px, py = cx + 0.2 * w * math.cos(a), y0 + 0.35 * h + 0.2 * h * math.sin(a)
            draw.ellipse((px - 0.14 * w, py - 0.14 * h, px + 0.14 * w, py + 0.14 * h), fill=(230, 80, 140))
        draw.ellipse((cx - 0.09 * w, y0 + 0.26 * h, cx + 0.09 * w, y0 + 0.44 * h), fill=(250, 210, 60))


def _goods(draw: ImageDraw.ImageDraw, rng: np.random.Generator, category: str, box: tuple[float, float, float, float]) -> None:
    """Things in the shop window, per category: a second, independent category cue."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if w < 8 or h < 8:
        return
    draw.rectangle((x0, y1 - h * 0.08, x1, y1), fill=(110, 85, 60))  # shelf
    base = y1 - h * 0.08
    n = max(2, int(w / max(10.0, h * 0.45)))
    step = w / n
    for k in range(n):
        gx, gw = x0 + k * step + step * 0.15, step * 0.7
        colour = _jitter(rng, (150, 150, 150), 90)
        if category == "cafe":
            draw.rectangle((gx, base - gw * 0.7, gx + gw * 0.75, base), fill=(245, 245, 240))
            draw.ellipse((gx + gw * 0.6, base - gw * 0.55, gx + gw, base - gw * 0.2), outline=(245, 245, 240), width=2)
        elif category == "restaurant":
            draw.ellipse((gx, base - gw * 0.35, gx + gw, base), fill=(245, 245, 245))
            draw.ellipse((gx + gw * 0.25, base - gw * 0.27, gx + gw * 0.75, base - gw * 0.08), fill=_jitter(rng, (200, 120, 60), 40))
        elif category == "bakery":
            draw.ellipse((gx, base - gw * 0.5, gx + gw, base), fill=_jitter(rng, (200, 140, 70), 20))
        elif category == "pharmacy":
            draw.rectangle((gx, base - h * 0.45, gx + gw, base), fill=(240, 240, 240))
            draw.rectangle((gx + gw * 0.4, base - h * 0.38, gx + gw * 0.6, base - h * 0.12), fill=(40, 170, 70))
            draw.rectangle((gx + gw * 0.2, base - h * 0.3, gx + gw * 0.8, base - h * 0.2), fill=(40, 170, 70))
        elif category == "grocery":
            fruit = _jitter(rng, _choice(rng, ((220, 40, 40), (250, 160, 30), (240, 220, 50), (90, 180, 50))), 15)
            r = gw / 4
            for fx, fy in ((0.25, 0.25), (0.75, 0.25), (0.5, 0.6)):
                draw.ellipse((gx + fx * gw - r, base - fy * gw * 1.1 - r, gx + fx * gw + r, base - fy * gw * 1.1 + r), fill=fruit)
        elif category == "bar":
            bottle = _jitter(rng, _choice(rng, ((40, 110, 50), (110, 60, 30), (200, 200, 210))), 15)
            draw.rectangle((gx + gw * 0.2, base - h * 0.5, gx + gw * 0.8, base), fill=bottle)
            draw.rectangle((gx + gw * 0.4, base - h * 0.75, gx + gw * 0.6, base - h * 0.5), fill=bottle)
        elif category == "bank":
            draw.rectangle((gx, y0 + h * 0.3, gx + gw, base), fill=(70, 80, 95))
            draw.rectangle((gx + gw * 0.15, y0 + h * 0.38, gx + gw * 0.85, y0 + h * 0.55), fill=(120, 200, 230))
        elif category == "clothing":
            cloth = _jitter(rng, colour, 20)
            top = y0 + h * 0.3
            draw.line((gx, top, gx + gw, top), fill=(60, 60, 60), width=2)
            draw.polygon([(gx + gw * 0.3, top), (gx + gw * 0.7, top), (gx + gw, top + h * 0.15), (gx + gw * 0.8, base - h * 0.1), (gx + gw * 0.2, base - h * 0.1), (gx, top + h * 0.15)], fill=cloth)
        elif category == "hardware":
            if k % 2:
                draw.rectangle((gx, base - gw * 0.9, gx + gw, base), fill=_jitter(rng, (120, 120, 130), 40))
                draw.rectangle((gx, base - gw * 0.7, gx + gw, base - gw * 0.4), fill=colour)
            else:
                draw.line((gx + gw * 0.5, base, gx + gw * 0.5, base - h * 0.5), fill=(120, 80, 40), width=3)
                draw.rectangle((gx + gw * 0.1, base - h * 0.55, gx + gw * 0.9, base - h * 0.45), fill=(90, 90, 100))
        elif category == "hair_salon":
            draw.ellipse((gx + gw * 0.1, y0 + h * 0.15, gx + gw * 0.9, y0 + h * 0.5), fill=(200, 220, 230), outline=(160, 160, 160))
            draw.rectangle((gx + gw * 0.2, base - h * 0.3, gx + gw * 0.8, base - h * 0.15), fill=(30, 30, 30))
            draw.line((gx + gw * 0.5, base - h * 0.15, gx + gw * 0.5, base), fill=(120, 120, 120), width=2)
        elif category == "bookstore":
            for j in range(5):
                bw = gw / 5
                draw.rectangle((gx + j * bw, base - h * rng.uniform(0.3, 0.5), gx + (j + 0.85) * bw, base), fill=_jitter(rng, colour, 70))
        elif category == "florist":
            draw.polygon([(gx + gw * 0.2, base), (gx + gw * 0.8, base), (gx + gw * 0.9, base - gw * 0.5), (gx + gw * 0.1, base - gw * 0.5)], fill=(170, 90, 50))
            petal = _jitter(rng, _choice(rng, ((230, 60, 90), (250, 200, 50), (240, 240, 240), (170, 80, 200))), 15)
            for fx in (0.3, 0.5, 0.7):
                fy = base - gw * 0.5 - h * 0.2
                draw.line((gx + fx * gw, base - gw * 0.5, gx + fx * gw, fy), fill=(50, 140, 50), width=2)
                r = gw * 0.14
                draw.ellipse((gx + fx * gw - r, fy - r, gx + fx * gw + r, fy + r), fill=petal)


def _place_text(img, business: Business, text: str, box, start: float, fill, min_px: int = MIN_TEXT_PX, align: str = "center") -> bool:
    """Fit `text` into `box` (centred or left-aligned); record it as protected. False if illegible."""
    x0, y0, x1, y1 = box
    size = _fit(text, x1 - x0, y1 - y0, business.style, round(start), min_px)
    if size is None:
        return False
    w, h = _text_size(text, size, business.style)
    x = x0 + (x1 - x0 - w) / 2 if align == "center" else x0
    ink = _draw_text(img, (x, y0 + (y1 - y0 - h) / 2), text, size, fill, business.style)
    business.protected.append(ink)
    return True


def _storefront(img: Image.Image, rng: np.random.Generator, b: Business, box: tuple[float, float, float, float], S: int, top: float) -> None:
    """Draw one shop front in `box` and clear every field of `b` that did not fit legibly."""
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    W = x1 - x0
    m = max(3.0, 0.04 * W)
    draw.rectangle(box, fill=b.wall)

    # Sign board: icon and name; optionally a second line (phone or website).
    sy0 = y0 + top + S * rng.uniform(0.02, 0.05)
    sh = S * rng.uniform(0.17, 0.22)
    sign = (x0 + m, sy0, x1 - m, sy0 + sh)
    draw.rectangle(sign, fill=b.sign, outline=_jitter(rng, b.sign, 40), width=max(1, S // 170))
    ink = _ink_for(b.sign)
    pad = sh * 0.1
    icon = sh * 0.62
    slots = ["window", "valance"]
    second_line = rng.random() < 0.5 and (b.phone or b.website)
    name_h = sh * (0.55 if second_line else 0.75)
    icon_left = rng.random() < 0.75
    ix = sign[0] + pad if icon_left else sign[2] - pad - icon
    _icon(draw, b.category, (ix, sy0 + (sh - icon) / 2, ix + icon, sy0 + (sh + icon) / 2), ink, b.sign)
    tx0, tx1 = (ix + icon + pad, sign[2] - pad) if icon_left else (sign[0] + pad, ix - pad)
    name_box = (tx0, sy0 + pad * 0.6, tx1, sy0 + pad * 0.6 + name_h)
    name_min = max(MIN_TEXT_PX + 2, round(S * 0.045))
    for _ in range(20):
        # A narrow sign takes a shorter name: draw another one until it fits.
        if _fit(b.name, name_box[2] - name_box[0], name_box[3] - name_box[1], b.style, round(name_h), name_min):
            break
        b.name = _business_name(rng, b.category)
        b.website = _website(b.name, rng) if b.website else None
    if not _place_text(img, b, b.name, name_box, name_h, ink, min_px=name_min):
        b.name = f"{_choice(rng, PEOPLE)}"[: max(1, int((name_box[2] - name_box[0]) / (name_min * 0.6)))]
        _place_text(img, b, b.name, name_box, name_h, ink, min_px=MIN_TEXT_PX)
    if second_line:
        slots.insert(0, "sign")
    line2_box = (tx0, sy0 + pad * 0.6 + name_h, tx1, sy0 + sh - pad * 0.4)

    # Awning: stripes in the category colour, a solid valance that can carry a line of text.
    ay0 = sy0 + sh + S * 0.012
    ah = S * 0.05
    vh = max(MIN_TEXT_PX + 5, S * 0.05)
    stripes = max(4, int(W / (S * 0.05)))
    sw = (W - 2 * m) / stripes
    for k in range(stripes):
        colour = b.awning if k % 2 == 0 else (240, 238, 230)
        draw.polygon([(x0 + m + k * sw + 2, ay0), (x0 + m + (k + 1) * sw + 2, ay0), (x0 + m + (k + 1) * sw, ay0 + ah), (x0 + m + k * sw, ay0 + ah)], fill=colour)
    valance = (x0 + m, ay0 + ah, x1 - m, ay0 + ah + vh)
    draw.rectangle(valance, fill=b.awning)

    # Lower floor: door with the house number above it, window with goods, the hours plaque.
    ly0 = valance[3] + S * 0.015
    ly1 = y1 - S * 0.02
    dw = max(S * 0.11, W * 0.22)
    dx0 = x0 + m if b.door_left else x1 - m - dw
    num_h = max(MIN_TEXT_PX + 4, S * 0.05)
    door = (dx0, ly0 + num_h + S * 0.01, dx0 + dw, ly1)
    draw.rectangle(door, fill=_jitter(rng, (90, 60, 40), 30), outline=(40, 40, 40), width=2)
    draw.rectangle((door[0] + dw * 0.18, door[1] + dw * 0.18, door[2] - dw * 0.18, door[1] + (door[3] - door[1]) * 0.55), fill=(150, 180, 200))
    draw.ellipse((door[2] - dw * 0.22, (door[1] + door[3]) / 2, door[2] - dw * 0.12, (door[1] + door[3]) / 2 + dw * 0.1), fill=(210, 190, 90))
    if b.house_number:
        plate_bg = _choice(rng, ((240, 240, 240), (30, 60, 130), (30, 30, 30)))
        pw = min(dw, _text_size(b.house_number, round(num_h * 0.8), b.style)[0] + num_h * 0.6)
        plate = (dx0 + (dw - pw) / 2, ly0, dx0 + (dw + pw) / 2, ly0 + num_h)
        draw.rectangle(plate, fill=plate_bg)
        if not _place_text(img, b, b.house_number, (plate[0] + 2, plate[1] + 2, plate[2] - 2, plate[3] - 2), num_h * 0.8, _ink_for(plate_bg)):
            b.house_number = None
    wx0, wx1 = (door[2] + m, x1 - m) if b.door_left else (x0 + m, dx0 - m)
    window = (wx0, ly0, wx1, ly1 - S * 0.05)
    draw.rectangle(window, fill=_jitter(rng, (70, 90, 105), 20), outline=(50, 50, 50), width=max(2, S // 110))
    draw.rectangle((window[0], window[3], window[2], ly1), fill=_jitter(rng, b.wall, 30))
    inner = (window[0] + 4, window[1] + 4, window[2] - 4, window[3] - 4)
    iw, ih = inner[2] - inner[0], inner[3] - inner[1]
    _goods(draw, rng, b.category, (inner[0], inner[1] + ih * 0.45, inner[2], inner[3]))

    # Opening hours: a white plaque in the window's top corner, one line per span, or two.
    plaque_px = max(MIN_TEXT_PX, round(S * 0.036))
    if b.hours or b.open_24h:
        lines: list[str] | None = None
        for two in (False, True):
            cand = ["Open 24 hours"] if b.open_24h else [ln for h in b.hours for ln in _hours_line(h, two)]
            w = max(_text_size(ln, plaque_px, b.style)[0] for ln in cand)
            lh = _text_size("0:9Mg", plaque_px, b.style)[1] + 3
            if w + 8 <= iw and len(cand) * lh + 8 <= ih * (0.45 if len(cand) < 4 else 0.95):
                lines = cand
                break
        if lines is None:
            b.hours, b.open_24h = [], False
        else:
            pw, ph = w + 8, len(lines) * lh + 6
            px = inner[0] + 2 if rng.random() < 0.5 else inner[2] - pw - 2
            plaque = (px, inner[1] + 2, px + pw, inner[1] + 2 + ph)
            draw.rectangle(plaque, fill=(250, 250, 245), outline=(60, 60, 60))
            for k, ln in enumerate(lines):
                ink_box = _draw_text(img, (px + 4, plaque[1] + 3 + k * lh), ln, plaque_px, (25, 25, 25), b.style)
                b.protected.append(ink_box)
            b.protected.append(plaque)

    # Phone and website on the sign's second line, the valance or a strip on the window.
    line_px = max(MIN_TEXT_PX, round(S * 0.036))
    for attr in ("phone", "website"):
        value = getattr(b, attr)
        if not value:
            continue
        text = (_choice(rng, ("Tel ", "Tel. ", "Phone ", "T ", "")) + value) if attr == "phone" else value
        placed = False
        while slots and not placed:
            slot = slots.pop(0)
            if slot == "sign":
                placed = _place_text(img, b, text, line2_box, line2_box[3] - line2_box[1], ink)
            elif slot == "valance":
                placed = _place_text(img, b, text, (valance[0] + 4, valance[1] + 1, valance[2] - 4, valance[3] - 1), vh * 0.8, _ink_for(b.awning))
            else:
                sh_ = _text_size(text, line_px, b.style)[1] + 6
                strip = (inner[0], inner[1] + ih * 0.5 - sh_ / 2, inner[2], inner[1] + ih * 0.5 + sh_ / 2)
                if any(_overlap(strip, p) for p in b.protected) or _fit(text, strip[2] - strip[0] - 6, sh_, b.style, line_px, MIN_TEXT_PX) is None:
                    continue
                draw.rectangle(strip, fill=(245, 245, 240))
                placed = _place_text(img, b, text, (strip[0] + 3, strip[1] + 1, strip[2] - 3, strip[3] - 1), line_px, (25, 25, 25))
        if not placed:
            setattr(b, attr, None)


def _overlap(a, b, margin: float = 2.0) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def _residential(img: Image.Image, rng: np.random.Generator, box, S: int, top: float, style: TextStyle) -> None:
    """A facade without a business: windows, a door with a number, maybe a 'FOR RENT' sign."""
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    W = x1 - x0
    draw.rectangle(box, fill=_jitter(rng, _choice(rng, WALL_COLOURS), 15))
    cols = max(1, int(W / (S * 0.28)))
    cw = W / cols
    glass = _jitter(rng, (90, 110, 125), 20)
    for row_y in (y0 + top + S * 0.05, y0 + S * 0.45):
        for c in range(cols):
            wx = x0 + c * cw + cw * 0.2
            draw.rectangle((wx, row_y, wx + cw * 0.6, row_y + S * 0.25), fill=glass, outline=(235, 235, 235), width=3)
    dx = x0 + rng.uniform(0.1, 0.6) * W
    dw = S * 0.12
    draw.rectangle((dx, y1 - S * 0.3, dx + dw, y1), fill=_jitter(rng, (80, 50, 35), 25), outline=(40, 40, 40), width=2)
    if rng.random() < 0.6:
        px = max(MIN_TEXT_PX + 2, round(S * 0.045))
        _draw_text(img, (dx + dw * 0.2, y1 - S * 0.37), str(int(rng.integers(1, 400))), px, (30, 30, 30), style)
    if rng.random() < 0.4:
        text = str(_choice(rng, ("FOR RENT", "TO LET", "CLOSED", "COMING SOON", "SALE")))
        sx = x0 + cw * 0.25
        size = _fit(text, cw * 0.5, S * 0.08, style, round(S * 0.05), MIN_TEXT_PX)
        if size:
            w, h = _text_size(text, size, style)
            draw.rectangle((sx - 3, y0 + S * 0.5 - 3, sx + w + 3, y0 + S * 0.5 + h + 3), fill=(250, 250, 250))
            _draw_text(img, (sx, y0 + S * 0.5), text, size, (200, 30, 30), style)


def _occluder(img: Image.Image, rng: np.random.Generator, S: int, protected: list) -> None:
    """A lamp post, a pedestrian or a plant in front of the facade, never over ground-truth text."""
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        kind = int(rng.integers(3))
        x = rng.uniform(0.05, 0.95) * S
        if kind == 0:
            w, top = S * 0.025, S * rng.uniform(0.3, 0.5)
            box = (x - w * 1.8, top - S * 0.03, x + w * 1.8, S)
        elif kind == 1:
            w, top = S * rng.uniform(0.05, 0.08), S * rng.uniform(0.45, 0.6)
            box = (x - w, top, x + w, S)
        else:
            w, top = S * rng.uniform(0.07, 0.12), S * rng.uniform(0.72, 0.82)
            box = (x - w, top, x + w, S)
        if any(_overlap(box, p, margin=3) for p in protected):
            continue
        dark = _jitter(rng, (40, 40, 45), 15)
        if kind == 0:
            draw.rectangle((x - w / 2, top, x + w / 2, S), fill=dark)
            draw.rectangle(box[:2] + (box[2], top + S * 0.01), fill=dark)
        elif kind == 1:
            coat = _jitter(rng, _choice(rng, ((40, 40, 60), (120, 40, 40), (60, 80, 50), (150, 130, 100))), 20)
            draw.ellipse((x - w * 0.45, top, x + w * 0.45, top + w * 0.9), fill=_jitter(rng, (200, 160, 130), 40))
            draw.rounded_rectangle((x - w, top + w * 0.9, x + w, S * 0.95), radius=w * 0.4, fill=coat)
            draw.rectangle((x - w * 0.6, S * 0.9, x + w * 0.6, S), fill=(30, 30, 35))
        else:
            draw.rectangle((x - w * 0.7, S * 0.88, x + w * 0.7, S), fill=_jitter(rng, (120, 80, 50), 20))
            for _k in range(6):
                bx, by, r = x + rng.uniform(-0.6, 0.6) * w, top + rng.uniform(0.1, 0.6) * (S * 0.88 - top), w * rng.uniform(0.3, 0.5)
                draw.ellipse((bx - r, by - r, bx + r, by + r), fill=_jitter(rng, (50, 130, 50), 25))
        return


def _perspective(img: Image.Image, rng: np.random.Generator, amount: float) -> Image.Image:
    """A slight perspective: each output corner samples a point up to `amount` inside the image."""
    S = img.width
    dst = [(0, 0), (S, 0), (S, S), (0, S)]
    inward = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    src = [(x + dx * rng.uniform(0, amount) * S, y + dy * rng.uniform(0, amount) * S) for (x, y), (dx, dy) in zip(dst, inward)]
    rows, rhs = [], []
    for (x, y), (u, v) in zip(dst, src):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    coeffs = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    return img.transform((S, S), Image.Transform.PERSPECTIVE, tuple(coeffs.tolist()), Image.Resampling.BILINEAR)


def _lighting(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Uneven daylight: a brightness gradient across the image and a warm or cool tint."""
    S = img.width
    arr = np.asarray(img, dtype=np.float32)
    t = np.linspace(-0.5, 0.5, S, dtype=np.float32)
    gx, gy = rng.uniform(-0.25, 0.25), rng.uniform(-0.15, 0.15)
    gain = rng.uniform(0.75, 1.1) + gx * t[None, :] + gy * t[:, None]
    tint = np.array([1.0, 1.0, 1.0], dtype=np.float32) + np.array([1, 0, -1], dtype=np.float32) * rng.uniform(-0.06, 0.06)
    arr = arr * gain[:, :, None] * tint[None, None, :]
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _street_scene(rng: np.random.Generator, S: int, styles: list[TextStyle]) -> tuple[Image.Image, list[dict]]:
    """Render a street scene; returns the image and the `POI` dicts visible in it, left to right."""
    img = Image.new("RGB", (S, S), (150, 150, 150))
    draw = ImageDraw.Draw(img)
    walk = S * rng.uniform(0.88, 0.92)
    n = int(rng.choice([0, 1, 2], p=[0.1, 0.65, 0.25]))
    street = None
    top = 0.0
    protected: list = []
    if n and rng.random() < 0.35:
        street = f"{_compound(rng) if rng.random() < 0.4 else _choice(rng, PREFIXES + NOUNS)} {_choice(rng, STREET_TYPES)}"
        top = max(MIN_TEXT_PX + 8, S * 0.055) + S * 0.025
    if n == 0:
        _residential(img, rng, (0, 0, S, walk), S, 0.0, _choice(rng, styles))
        businesses: list[Business] = []
    else:
        if n == 1:
            a = 0.0 if rng.random() < 0.5 else S * rng.uniform(0.05, 0.12)
            b_ = S if rng.random() < 0.5 else S * rng.uniform(0.88, 0.95)
            draw.rectangle((0, 0, S, walk), fill=_jitter(rng, _choice(rng, WALL_COLOURS), 20))
            boxes = [(a, 0, b_, walk)]
        else:
            split = S * rng.uniform(0.47, 0.53)
            boxes = [(0, 0, split, walk), (split, 0, S, walk)]
        businesses = []
        for box in boxes:
            b = _sample_business(rng, styles)
            _storefront(img, rng, b, box, S, top)
            businesses.append(b)
            protected += b.protected
        if n == 2:
            draw.rectangle((boxes[1][0] - S * 0.008, 0, boxes[1][0] + S * 0.008, walk), fill=(90, 90, 90))
    if street:
        style = _choice(rng, styles)
        px = max(MIN_TEXT_PX, round(S * 0.036))
        w, h = _text_size(street, px, style)
        x = S * 0.04 if rng.random() < 0.5 else S * 0.96 - w - 8
        plate = (x, S * 0.025, x + w + 8, S * 0.025 + h + 8)
        draw.rectangle(plate, fill=(30, 70, 150), outline=(240, 240, 240), width=1)
        protected.append(_draw_text(img, (x + 4, plate[1] + 4), street, px, (245, 245, 245), style))
    draw.rectangle((0, walk, S, S), fill=_jitter(rng, (175, 172, 165), 12))
    draw.line((0, walk, S, walk), fill=(110, 110, 110), width=max(1, S // 150))
    if rng.random() < 0.5:
        _occluder(img, rng, S, protected)
    img = _lighting(img, rng)
    # Perspective samples up to `amount * S` inside each corner; keep all ground-truth text in view.
    edge = min([S] + [min(x0, y0, S - x1, S - y1) for x0, y0, x1, y1 in protected]) / S
    amount = min(0.03, 0.9 * edge)
    if rng.random() < 0.7 and amount > 0.005:
        img = _perspective(img, rng, amount)
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.6) * S / 336))
    return img, [b.target(street) for b in businesses]


def street_caption(pois: list[dict]) -> str:
    """A stage-1 caption of a street scene that says what its signs read.

    >>> street_caption([{"name": "Golden Fox", "category": "bakery", "address": {"house_number": "12", "street": None}}])
    'A street with a bakery called "Golden Fox" at number 12.'
    """
    if not pois:
        return "A residential building with windows and a front door; there are no shops."
    shops = [f'{_a(CATEGORY_WORDS[p["category"]])} called "{p["name"]}"'
             + (f' at number {p["address"]["house_number"]}' if p["address"]["house_number"] else "") for p in pois]
    street = pois[0]["address"]["street"]
    return f"A street with {_join(shops)}{f' on {street}' if street else ''}."


def _street_vqa(rng: np.random.Generator, pois: list[dict]) -> list[dict]:
    """One to three short-answer questions about what a street scene's signs say."""
    count = ("How many shops are in the image?", str(len(pois)))
    qa = [count]
    for k, p in enumerate(pois):
        ref = "the shop" if len(pois) == 1 else f"the shop on the {('left', 'right', 'far right')[k]}"
        qa.append((f"What is the name of {ref}?", p["name"]))
        qa.append((f'What kind of business is "{p["name"]}"?', CATEGORY_WORDS[p["category"]]))
        if p["address"]["house_number"]:
            qa.append((f'What is the house number of "{p["name"]}"?', p["address"]["house_number"]))
        if p["phone"]:
            qa.append((f'What is the phone number of "{p["name"]}"?', p["phone"]))
    if pois and pois[0]["address"]["street"]:
        qa.append(("What street is this?", pois[0]["address"]["street"]))
    picked = [qa[j] for j in rng.permutation(len(qa))[: int(rng.integers(1, 4))]]
    conv = [{"from": r, "value": v} for q, a in picked for r, v in (("human", q), ("gpt", a))]
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


def _poi_row(out: Path, seed: int, image_size: int, styles: list[TextStyle], i: int) -> dict:
    rng = _rng(seed, "poi", i)
    img, pois = _street_scene(rng, image_size, styles)
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
    workers: int = 1,
    progress: Progress = None,
) -> dict[str, Path]:
    """Write `n` street scenes with `StreetScene` targets as `train/val/test.jsonl` under `out`.

    `splits` are the train/val/test shares (val and test are rounded, train takes the rest);
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
    rows = _run(partial(_poi_row, out, seed, image_size, styles), n, workers, progress)
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

CATEGORY_WORDS = {
    "cafe": "cafe", "restaurant": "restaurant", "bakery": "bakery", "pharmacy": "pharmacy", "grocery": "grocery store",
    "bar": "bar", "bank": "bank", "clothing": "clothing store", "hardware": "hardware store", "hair_salon": "hair salon",
    "bookstore": "bookstore", "florist": "florist",
}
CHAT_SOURCES = {"greeting": 0.15, "knowledge": 0.35, "image_chat": 0.25, "street_chat": 0.25}


def _street_chat(rng: np.random.Generator, pois: list[dict]) -> list[tuple[str, str]]:
    if not pois:
        return [
            (str(_choice(rng, ("Describe this image.", "What can you see in this picture?"))), "This is a residential building with several windows and a front door. I don't see any shops or businesses in it."),
            ("Are there any shops here?", "No, there are no shops in this picture, only a residential building."),
        ]
    shops = [f'{_a(CATEGORY_WORDS[p["category"]])} called "{p["name"]}"' for p in pois]
    street = pois[0]["address"]["street"]
    first = f"A street with {_join(shops)}{f' on {street}' if street else ''}."
    turns = [(str(_choice(rng, ("Describe this image.", "What can you see in this picture?", "Tell me about this street."))), first)]
    p = _choice(rng, pois)
    turns.append((f'What kind of business is "{p["name"]}"?', f'It is {_a(CATEGORY_WORDS[p["category"]])}.'))
    if p["open_24h"]:
        turns.append(("Is it open at night?", "Yes, it is open 24 hours."))
    elif p["opening_hours"]:
        h = p["opening_hours"][0]
        days = DAY_LABEL[h["first_day"]] if h["first_day"] == h["last_day"] else f"{DAY_LABEL[h['first_day']]} to {DAY_LABEL[h['last_day']]}"
        turns.append(("When is it open?", f"From {days}, it opens at {h['opens']} and closes at {h['closes']}."))
    if p["phone"]:
        turns.append(("How can I contact them?", f"You can call them at {p['phone']}."))
    # Two turns at most (one when two shops are described), so that a row fits small models'
    # context (tiny: 256 tokens).
    return [turns[0]] if len(pois) > 1 else [turns[0], turns[1 + int(rng.integers(len(turns) - 1))]]


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
