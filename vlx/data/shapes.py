"""The shape world: scenes of coloured shapes on a 3 x 3 grid, their captions and questions.

Used by `vlx.data.synth` for stage-1 captions, the stage-2 `conversation`, `vqa` and `mc` sources and
image chat. Every function draws from the generator it is given, so the writers stay deterministic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vlx.data.render import TextStyle, _a, _choice, _draw_text, _fit, _jitter, _join, _luma, _text_size

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
