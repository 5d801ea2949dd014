"""Regex -> `outlines_core.Index` over a transformers tokenizer, cached in memory and on disk.

    index = compile_index(grammar.regex, processor.tokenizer, eos_token_id)

Compiling walks every token of the vocabulary through the regex automaton: about a second for a
50k vocabulary and a small schema, tens of seconds for large ones. The result depends only on the
regex and the tokenizer, so it is cached under a key made of both: in this process, and as a file
in `cache_dir()` (`$VLX_CACHE_DIR`, default `~/.cache/vlx`) so a second process loads it instead.

Token strings are turned into the exact bytes they decode to (byte-level BPE's `Ġ` alphabet,
SentencePiece's `▁` and `<0xNN>` byte tokens), so that multi-byte characters split over several
tokens are admitted: outlines' own vocabulary conversion decodes each token to `str` and loses
those partial characters.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
import uuid
import weakref
from pathlib import Path

from outlines_core import Index, Vocabulary

log = logging.getLogger(__name__)

CACHE_ENV = "VLX_CACHE_DIR"
# Part of every cache key: bump it when the vocabulary conversion changes.
_FORMAT = "vlx-index-1"

_memory: dict[str, Index] = {}
_vocabularies: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_fingerprints: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def cache_dir() -> Path:
    """Where compiled indexes are stored: `$VLX_CACHE_DIR`, else `$XDG_CACHE_HOME/vlx` or `~/.cache/vlx`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vlx"


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    # GPT-2's byte-level alphabet: each byte is drawn as one printable character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def token_bytes(tokenizer) -> dict[int, bytes]:
    """Token id -> the bytes that token contributes to decoded text; added/special tokens omitted."""
    backend = tokenizer.backend_tokenizer
    spec = json.loads(backend.to_str())
    decoder = json.dumps(spec.get("decoder"))
    added = set(backend.get_added_tokens_decoder())
    vocab = {tok: i for tok, i in backend.get_vocab(with_added_tokens=False).items() if i not in added}
    out: dict[int, bytes] = {}
    if "ByteLevel" in decoder:
        table = _unicode_to_byte()
        for tok, i in vocab.items():
            if all(ch in table for ch in tok):
                out[i] = bytes(table[ch] for ch in tok)
    elif "Metaspace" in decoder or "ByteFallback" in decoder or "\u2581" in decoder:
        for tok, i in vocab.items():
            m = _BYTE_TOKEN.fullmatch(tok)
            out[i] = bytes([int(m.group(1), 16)]) if m else tok.replace("\u2581", " ").encode()
    else:
        for tok, i in vocab.items():
            text = tokenizer.convert_tokens_to_string([tok])
            if "\ufffd" not in text:
                out[i] = text.encode()
    return {i: b for i, b in out.items() if b}


def vocabulary(tokenizer, eos_token_id: int) -> tuple[Vocabulary, str]:
    """The outlines_core `Vocabulary` of `tokenizer` and its fingerprint (cached per tokenizer)."""
    cached = _vocabularies.get(tokenizer, {}).get(eos_token_id)
    if cached is not None:
        return cached
    by_bytes: dict[bytes, list[int]] = {}
    for i, b in sorted(token_bytes(tokenizer).items()):
        if i != eos_token_id:
            by_bytes.setdefault(b, []).append(i)
    digest = hashlib.sha256(f"{_FORMAT}|eos={eos_token_id}|".encode())
    for b, ids in sorted(by_bytes.items()):
        digest.update(len(b).to_bytes(2, "little") + b + b"".join(i.to_bytes(4, "little") for i in ids))
    result = (Vocabulary(eos_token_id, by_bytes), digest.hexdigest())
    _vocabularies.setdefault(tokenizer, {})[eos_token_id] = result
    return result


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's full serialization (vocabulary, merges, normalizer, decoder)."""
    cached = _fingerprints.get(tokenizer)
    if cached is None:
        cached = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()
        _fingerprints[tokenizer] = cached
    return cached


def compile_index(regex: str, tokenizer, eos_token_id: int, *, use_disk: bool = True) -> Index:
    """The index of `regex` over `tokenizer`'s tokens, from memory, disk, or compiled (and stored).

    The cache key hashes the tokenizer's serialization rather than the converted vocabulary, so a
    cached load skips the conversion (1.2 s of a 1.7 s load for a 49k vocabulary).
    """
    key = hashlib.sha256(f"{_FORMAT}|{tokenizer_fingerprint(tokenizer)}|eos={eos_token_id}|{regex}".encode())
    key = key.hexdigest()[:32]
    if key in _memory:
        return _memory[key]
    path = cache_dir() / "index" / f"{key}.bin"
    index = None
    if use_disk and path.is_file():
        try:
            index = Index.from_binary(path.read_bytes())
        except Exception as e:  # noqa: BLE001 - a damaged cache file is recompiled, never fatal
            log.warning("ignoring unreadable grammar cache %s (%s); recompiling", path, e)
    if index is None:
        vocab, _ = vocabulary(tokenizer, eos_token_id)
        start = time.perf_counter()
        index = Index(regex, vocab)
        log.info("compiled grammar index in %.1f s (cache key %s)", time.perf_counter() - start, key)
        if use_disk:
            # `__reduce__` is how an Index pickles: (Index.from_binary, (bytes,)). Storing the bytes
            # rather than a pickle means loading a cache file never runs code.
            _write_atomic(path, index.__reduce__()[1][0])
    _memory[key] = index
    return index


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write grammar cache %s (%s); set %s to a writable directory", path, e, CACHE_ENV)


def clear_memory_cache() -> None:
    """Forget in-process indexes (tests use it to exercise the disk cache)."""
    _memory.clear()
