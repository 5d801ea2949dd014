"""What the street world says: its businesses, their names, phones, websites and opening hours,
and the captions, short answers and chat that describe a scene's POIs.

`vlx.data.street` draws these onto storefronts; `vlx.data.synth` writes the language about them.
"""

from __future__ import annotations

import numpy as np

from vlx.data.render import _a, _choice, _join

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
DAY_LABEL = {"mon": "Mon", "tue": "Tue", "wed": "Wed", "thu": "Thu", "fri": "Fri", "sat": "Sat", "sun": "Sun"}
DAY_KEYS = tuple(DAY_LABEL)
NAME_PREFIX_WORDS = ("Cafe", "Espresso", "Bistro", "Trattoria", "Patisserie", "Bar", "Salon", "Boutique", "Pharmacy", "Market")
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


# Words on the awning: what kind of business it is, as storefronts say it.
AWNING_WORDS = {
    "cafe": ("CAFE", "COFFEE"), "restaurant": ("DINER", "GRILL", "BISTRO"), "bakery": ("BAKERY", "BREAD"),
    "pharmacy": ("PHARMACY", "CHEMIST"), "grocery": ("MARKET", "GROCERY"), "bar": ("BAR", "PUB"), "bank": ("BANK",),
    "clothing": ("FASHION", "CLOTHES"), "hardware": ("TOOLS", "HARDWARE"), "hair_salon": ("SALON", "BARBER"),
    "bookstore": ("BOOKS",), "florist": ("FLOWERS", "FLORIST"),
}
def _phone(rng: np.random.Generator) -> str:
    """A phone number of at most 12 characters, so that it fits a shop window's 13 cells."""
    digits = lambda k: "".join(str(int(d)) for d in rng.integers(0, 10, k))  # noqa: E731
    style = int(rng.integers(4))
    if style == 0:
        return f"+{int(rng.integers(1, 99))} {digits(3)} {digits(4)}"
    if style == 1:
        return f"0{digits(2)} {digits(3)} {digits(4)}"
    if style == 2:
        return f"0{digits(3)} {digits(6)}"
    return f"{digits(3)} {digits(4)}"


def _website(name: str, rng: np.random.Generator, max_len: int = 22) -> str | None:
    """A domain for `name` of at most `max_len` characters, or None.

    Shops shorten their domains as real ones do: the whole name run together (or hyphenated), then
    without its articles, then each of its words alone, the first form that fits with the drawn
    top-level domain (or a two-letter one): `Nora's Bakery` -> `norasbakery.com`, or `noras.com` in a
    13-cell window; `The Copper Kettle` -> `copperkettle.co` in 15 cells, `copper.com` in 13.
    """
    words = "".join(c for c in name.lower().replace("&", " and ").replace("'s", "s")
                    if c.isalnum() or c == " ").split()
    core = [w for w in words if w not in ("the", "and")]
    tld = str(_choice(rng, ("com", "net", "shop", "co", "org", "de", "uk")))
    joint = "-" if rng.random() < 0.3 else ""
    forms = [joint.join(words), joint.join(core), *core]
    for form in forms:
        for suffix in (tld, "co", "de"):  # a short country domain when the chosen one is too long
            if 0 < len(form) and len(form) + 1 + len(suffix) <= max_len:
                return f"{form}.{suffix}"
    return None


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


def _hours_lines(h: dict) -> list[str]:
    """An opening-hours entry as a plaque writes it: the days, then the times below."""
    days = DAY_LABEL[h["first_day"]] if h["first_day"] == h["last_day"] else f"{DAY_LABEL[h['first_day']]}-{DAY_LABEL[h['last_day']]}"
    return [days, f"{h['opens']}-{h['closes']}"]


def _wrap(text: str, width: int, max_lines: int) -> list[str] | None:
    """Greedy word wrap into at most `max_lines` lines of at most `width` cells; None if it does not fit."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines if len(lines) <= max_lines and all(len(line) <= width for line in lines) else None


def street_caption(pois: list[dict]) -> str:
    """A stage-1 caption of a street scene that spells out every sign: each shop's kind, name,
    house number, phone, website and opening hours as drawn, and the street.

    >>> street_caption([{"name": "Golden Fox", "category": "bakery", "address": {"house_number": "12", "street": None},
    ...                  "phone": None, "website": None, "opening_hours": [], "open_24h": False}])
    'A street with a bakery called "Golden Fox" at number 12.'
    """
    if not pois:
        return "A residential building with windows and a front door; there are no shops."
    shops = []
    for p in pois:
        text = f'{_a(CATEGORY_WORDS[p["category"]])} called "{p["name"]}"'
        if p["address"]["house_number"]:
            text += f' at number {p["address"]["house_number"]}'
        extras = [f"phone {p['phone']}"] if p.get("phone") else []
        extras += [f"website {p['website']}"] if p.get("website") else []
        if p.get("open_24h"):
            extras.append("open 24 hours")
        elif p.get("opening_hours"):
            extras.append("open " + ", ".join(" ".join(_hours_lines(h)) for h in p["opening_hours"]))
        shops.append(text + (f" ({'; '.join(extras)})" if extras else ""))
    street = pois[0]["address"]["street"]
    return f"A street with {_join(shops)}{f' on {street}' if street else ''}."


def _street_vqa(rng: np.random.Generator, pois: list[dict]) -> list[dict]:
    """Two to five short-answer questions about what a street scene's signs say (`none` for a sign it lacks)."""
    count = ("How many shops are in the image?", str(len(pois)))
    qa = [count]
    for k, p in enumerate(pois):
        ref = "the shop" if len(pois) == 1 else f"the shop on the {('left', 'right', 'far right')[k]}"
        qa.append((f"What is the name of {ref}?", p["name"]))
        qa.append((f'What kind of business is "{p["name"]}"?', CATEGORY_WORDS[p["category"]]))
        # Questions about what is not there too (`none`): whether a sign is there at all is what the
        # fine-tune's nullable fields ask, and a model asked only about what is there always finds something.
        qa.append((f'What is the house number of "{p["name"]}"?', p["address"]["house_number"] or "none"))
        qa.append((f'What is the phone number of "{p["name"]}"?', p["phone"] or "none"))
        if p.get("website"):
            qa.append((f'What is the website of "{p["name"]}"?', p["website"]))
        if p.get("open_24h"):
            qa.append((f'When is "{p["name"]}" open?', "24 hours"))
        elif p.get("opening_hours"):
            qa.append((f'When is "{p["name"]}" open?', ", ".join(" ".join(_hours_lines(h)) for h in p["opening_hours"])))
    if pois:
        qa.append(("What street is this?", pois[0]["address"]["street"] or "none"))
    # Several questions per image: the image's tokens are most of a row's cost, its answers the signal.
    picked = [qa[j] for j in rng.permutation(len(qa))[: int(rng.integers(2, 6))]]
    conv = [{"from": r, "value": v} for q, a in picked for r, v in (("human", q), ("gpt", a))]
    conv[0]["value"] = "<image>\n" + conv[0]["value"]
    return conv


CATEGORY_WORDS = {
    "cafe": "cafe", "restaurant": "restaurant", "bakery": "bakery", "pharmacy": "pharmacy", "grocery": "grocery store",
    "bar": "bar", "bank": "bank", "clothing": "clothing store", "hardware": "hardware store", "hair_salon": "hair salon",
    "bookstore": "bookstore", "florist": "florist",
}
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


