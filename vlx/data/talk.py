"""Text-only conversations: greetings and fixed-answer knowledge questions (the instruct `text`
source and chat replay)."""

from __future__ import annotations

import numpy as np

from vlx.data.render import _choice
from vlx.data.shapes import WORDS


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
