"""The boundary every user file crosses: text, JSON, JSONL, YAML and images, read into clear errors.

    text = read_text(path)                      # UTF-8, a byte-order mark accepted
    rows = read_jsonl(path)                     # [(line number, value or InputError)]
    img = open_image(path, origin="data.json:row 7")

Whatever is wrong with a file (missing, unreadable, not UTF-8, not JSON, nested 5000 levels deep,
NaN, duplicate keys, an over-long string, an image PIL cannot decode, a decompression bomb) comes
out as one `InputError` whose message names the file (and row), what is wrong and how to fix it;
callers turn it into their own error types (`DataError`, `ConfigError`, `ImageError`) or into
one bad row among good ones. Nothing here prints or exits.

Limits (module constants, raised with flags where a user may need more):

- `MAX_IMAGE_PIXELS`: 64 megapixels (e.g. 8000 x 8000), checked from the header before any pixel
  is decoded; `--max-image-pixels` raises it. PIL's own bomb check is replaced by this one. The
  longest side is bounded too (16,000 px at the default): a sliver padded to a square, as
  LLaVA-1.5's processor pads, would otherwise take gigabytes.
- `MAX_DEPTH`: 64 levels of JSON/YAML nesting; no training row or config needs more.
- `MAX_STRING`: one million characters in one JSON string (a caption or a target value).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any

MAX_IMAGE_PIXELS = 64_000_000
"""Default pixel limit; `VLX_MAX_IMAGE_PIXELS` in the environment (what `--max-image-pixels` sets, so
that data-loading workers see it too) overrides it."""
MAX_DEPTH = 64
MAX_STRING = 1_000_000
_BOM = b"\xef\xbb\xbf"


class InputError(ValueError):
    """A file (or one row of it) vlx cannot use; the message says where, what and how to fix it."""


def _where(origin: str | Path) -> str:
    return f"{origin}: " if str(origin) else ""


def decode_text(data: bytes, origin: str | Path = "") -> str:
    """UTF-8 bytes -> text, a leading byte-order mark dropped; a bad byte is named by its offset and line."""
    skip = len(_BOM) if data.startswith(_BOM) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = e.start + skip  # offset in the file, byte-order mark included
        line = data.count(b"\n", 0, at) + 1
        raise InputError(f"{_where(origin)}not UTF-8 text: byte 0x{data[at]:02x} at offset {at} (line {line}) "
                         f"is not valid UTF-8; save the file as UTF-8") from None


def read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a file")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (a pipe or a device); give a file")
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot be read ({e.strerror or e}); check its permissions") from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (byte-order mark accepted) -> str, or `InputError`."""
    return decode_text(read_bytes(path), path)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _JsonProblem(f"duplicate key {key!r} in one object; keep one of them")
        out[key] = value
    return out


def _no_constant(name: str):
    raise _JsonProblem(f"{name} is not a JSON number (write a number or null)")


class _JsonProblem(ValueError):
    pass


def check_value(value: Any, depth: int = 0) -> None:
    """Raise `_JsonProblem` for nesting deeper than `MAX_DEPTH`, a string over `MAX_STRING`, NaN or infinity."""
    if depth > MAX_DEPTH:
        raise _JsonProblem(f"nested more than {MAX_DEPTH} levels deep; flatten the structure")
    if isinstance(value, dict):
        for key, item in value.items():
            check_value(key, depth + 1)
            check_value(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            check_value(item, depth + 1)
    elif isinstance(value, str):
        if len(value) > MAX_STRING:
            raise _JsonProblem(f"a string of {len(value):,} characters (the limit is {MAX_STRING:,}); shorten it")
    elif isinstance(value, float) and not math.isfinite(value):
        raise _JsonProblem(f"{value} is not a JSON number (write a number or null)")


def _too_deep(text: str) -> int | None:
    """Offset in `text` where brackets (outside strings) nest past `MAX_DEPTH`, else None: found
    before the parser recurses into them."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    depth = 0
    in_string = escaped = False
    for offset, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return offset
        elif ch in "]}":
            depth -= 1
    return None


@contextlib.contextmanager
def _within_limits(origin: str | Path):
    """Turn a limit `check_value` or the depth scan found, or a parser's recursion, into `InputError`."""
    try:
        yield
    except _JsonProblem as e:
        raise InputError(f"{_where(origin)}{e}") from None
    except RecursionError:
        raise InputError(f"{_where(origin)}nested too deeply to parse; flatten the structure") from None


def parse_json(text: str, origin: str | Path = "") -> Any:
    """JSON text -> value with the limits above; `InputError` names `origin` and the problem."""
    with _within_limits(origin):
        deep = _too_deep(text)
        if deep is not None:
            line = text.count("\n", 0, deep) + 1
            raise _JsonProblem(f"nested more than {MAX_DEPTH} levels deep (at line {line}, column "
                               f"{deep - text.rfind(chr(10), 0, deep)}); flatten the structure")
        try:
            value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except json.JSONDecodeError as e:
            raise InputError(f"{_where(origin)}not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        check_value(value)
        return value


def read_json(path: str | Path) -> Any:
    return parse_json(read_text(path), path)


def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """-> [(line number, value)] for every non-blank line; a bad line's value is its `InputError`.

    A bad line costs only itself: the good ones are all returned, each bad one is named.
    """
    text = read_text(path)
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((number, parse_json(line, f"{path}:line {number}")))
        except InputError as e:
            out.append((number, e))
    return out


def read_yaml(path: str | Path) -> Any:
    """A YAML file (safe loader) -> value, with the JSON limits; `InputError` otherwise."""
    import yaml

    text = read_text(path)
    with _within_limits(path):
        try:
            value = yaml.safe_load(io.StringIO(text))
        except yaml.YAMLError as e:
            raise InputError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        check_value(value)
        return value


# ---- images ---------------------------------------------------------------------------------

def max_image_pixels() -> int:
    """The pixel limit in force: `VLX_MAX_IMAGE_PIXELS` if set (0: none), else `MAX_IMAGE_PIXELS`."""
    value = os.environ.get("VLX_MAX_IMAGE_PIXELS", "").strip()
    if not value:
        return MAX_IMAGE_PIXELS
    try:
        return int(value)
    except ValueError:
        raise InputError(f"VLX_MAX_IMAGE_PIXELS={value!r}: give a whole number of pixels (0: no limit)") from None


def set_max_image_pixels(pixels: int | None) -> None:
    """What `--max-image-pixels N` does: the limit for this process and the workers it starts."""
    if pixels is not None:
        if pixels < 0:
            raise InputError(f"--max-image-pixels {pixels}: give a positive number of pixels (0: no limit)")
        os.environ["VLX_MAX_IMAGE_PIXELS"] = str(pixels)


def _open(source, origin: str, max_pixels: int | None):
    """PIL image with its header read and its size checked (no pixels decoded yet)."""
    from PIL import Image, UnidentifiedImageError

    limit = max_image_pixels() if max_pixels is None else max_pixels
    label = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    if not label.isprintable():
        label = ascii(label)  # a NUL or control character in a path, shown rather than printed
    where = _where(origin)
    subject = "" if str(origin) == label else f"image {label} "  # named once: by the origin, or here
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise InputError(f"{where}the image bytes are empty")
        stream = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"{where}{subject or 'image '}does not exist; fix the path (or pass --image-folder)")
        if path.is_dir():
            raise InputError(f"{where}{subject}is a directory, not an image file; give the image's path")
        if not path.is_file():  # a FIFO or a device would block or never end
            raise InputError(f"{where}{subject}is not a regular file (a pipe or a device); give an image file")
        if path.stat().st_size == 0:
            raise InputError(f"{where}{subject}is an empty file (0 bytes); replace or remove it")
        stream = path
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # this module's limit, with its own message, replaces PIL's
    try:
        img = Image.open(stream)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"{where}{subject}cannot be read as an image ({type(e).__name__}: {e}); "
                         "replace or remove the file") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    w, h = img.size
    if not w or not h:
        raise InputError(f"{where}{subject}is empty ({w}x{h} pixels); replace or remove it")
    if limit and w * h > limit:
        raise InputError(f"{where}{subject}is {w}x{h} = {w * h / 1e6:.0f} megapixels, over the limit of "
                         f"{limit / 1e6:.0f} (a decompression bomb guard); downscale it, or raise the limit with "
                         f"--max-image-pixels {w * h}")
    if limit and max(w, h) ** 2 > 4 * limit:
        # A sliver (a 100000 x 10 banner) is few pixels, but padded to a square, as LLaVA-1.5's
        # processor does, it would be 10 gigapixels: bounded by the same limit.
        side = math.isqrt(4 * limit)
        raise InputError(f"{where}{subject}is {w}x{h}: its longest side is over {side} pixels, and padded to a "
                         f"square (as LLaVA's processor does) it would take {3 * max(w, h) ** 2 / 1e9:.0f} GB; crop "
                         f"or downscale it, or raise the limit with --max-image-pixels {(max(w, h) ** 2 + 3) // 4}")
    return img, where, subject


def open_image(source, *, origin: str = "", max_pixels: int | None = None):
    """A path, bytes or PIL image -> a decoded RGB PIL image, or `InputError`."""
    from PIL import Image

    if isinstance(source, Image.Image):
        if not source.width or not source.height:
            raise InputError(f"{_where(origin)}the image is empty ({source.width}x{source.height} pixels)")
        return source.convert("RGB")
    img, where, subject = _open(source, origin, max_pixels)
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise InputError(f"{where}{subject}cannot be decoded ({type(e).__name__}: {e}); the file is truncated or "
                         "damaged: replace or remove it") from None


def check_image(source, *, origin: str = "", max_pixels: int | None = None) -> str | None:
    """Everything `open_image` would refuse, found before training: the problem's message, or None.

    JPEGs are decoded at an eighth of their size (`draft`), which finds truncation at a fraction of
    a full decode's cost; other formats are decoded whole.
    """
    from PIL import Image

    try:
        if isinstance(source, Image.Image):
            open_image(source, origin=origin)
            return None
        img, where, subject = _open(source, origin, max_pixels)
        try:
            if img.format == "JPEG":
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise InputError(f"{where}{subject}cannot be decoded ({type(e).__name__}: {e}); the file is truncated "
                             "or damaged: replace or remove it") from None
        finally:
            img.close()
    except InputError as e:
        return str(e).removeprefix(_where(origin)) if origin else str(e)
    return None


__all__ = ["InputError", "MAX_IMAGE_PIXELS", "MAX_DEPTH", "MAX_STRING", "max_image_pixels", "set_max_image_pixels", "decode_text", "read_bytes", "read_text",
           "parse_json", "read_json", "read_jsonl", "read_yaml", "open_image", "check_image"]
