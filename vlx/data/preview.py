"""`vlx data preview`: what the model will be trained on, rendered through its template, before a long job.

    vlx data preview data.json --preset smol --n 5          # LLaVA rows (stage 1 with --template plain)
    vlx data preview rows.jsonl --base RUN --schema poi.py   # extraction rows, as `vlx finetune` builds them

Each shown sample is the exact token sequence training sees, decoded piece by piece: the prompt
dimmed, the supervised spans (answers and their end-of-turn token) highlighted, the image
placeholder collapsed to `<image x N>`, with its token counts (text, image, total). A summary
gives the totals over all rows and the longest samples; `preview.html` shows the same beside
each image.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

from vlx.data.templates import IGNORE_INDEX


@dataclass
class Piece:
    text: str
    supervised: bool
    image: bool = False


def pieces(example, tokenizer, image_token_id: int) -> list[Piece]:
    """An encoded example -> runs of (decoded text, supervised?), image tokens as one run."""
    out: list[Piece] = []
    run: list[int] = []
    state = None  # (supervised, image) of the current run

    def flush():
        if not run:
            return
        sup, img = state
        out.append(Piece(f"<image x {len(run)}>" if img else tokenizer.decode(run), sup, img))

    # labels[i] is the target at position i (the unshifted convention): supervised = predicted.
    for token, label in zip(example.input_ids, example.labels):
        key = (label != IGNORE_INDEX, token == image_token_id)
        if key != state:
            flush()
            run, state = [], key
        run.append(token)
    flush()
    return out


def counts(example, image_token_id: int) -> dict:
    image = sum(1 for t in example.input_ids if t == image_token_id)
    supervised = sum(1 for x in example.labels if x != IGNORE_INDEX)
    return {"text": len(example.input_ids) - image, "image": image, "total": len(example.input_ids),
            "supervised": supervised}


def render_text(example, tokenizer, image_token_id: int) -> str:
    """Rich markup: the prompt dim, supervised spans bold green, the image placeholder cyan."""
    from rich.markup import escape

    parts = []
    for p in pieces(example, tokenizer, image_token_id):
        style = "cyan" if p.image else "bold green" if p.supervised else "dim"
        parts.append(f"[{style}]{escape(p.text)}[/{style}]")
    return "".join(parts)


def _thumb(image, width: int = 224) -> str:
    from vlx.data.dataset import open_image

    try:
        img = open_image(image)
    except Exception:  # noqa: BLE001 - a preview shows what it can; validation reports the image
        return "<em>(image not readable)</em>"
    img.thumbnail((width, width))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def write_html(examples, tokenizer, image_token_id: int, path: str | Path, *, title: str) -> Path:
    rows = []
    for ex in examples:
        c = counts(ex, image_token_id)
        text = "".join(
            f'<span class="{"img" if p.image else "sup" if p.supervised else "prompt"}">{html.escape(p.text)}</span>'
            for p in pieces(ex, tokenizer, image_token_id))
        rows.append(f"<tr><td>{_thumb(ex.image) if ex.image is not None else '(text only)'}</td>"
                    f"<td><b>{html.escape(ex.origin)}</b> [{html.escape(ex.source)}] text {c['text']}, image "
                    f"{c['image']}, total {c['total']} tokens, {c['supervised']} supervised<pre>{text}</pre></td></tr>")
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif}td{vertical-align:top;border-bottom:1px solid #ddd;padding:6px}"
            "pre{white-space:pre-wrap;font-size:12px}.prompt{color:#777}.sup{background:#c8f7c5;color:#000}"
            ".img{background:#d0e8ff}</style>"
            f"<h1>{html.escape(title)}</h1><p>Grey: prompt (not trained on). Green: supervised (the loss). "
            f"Blue: image tokens.</p><table>{''.join(rows)}</table>")
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def summary(examples, image_token_id: int, longest: int = 3) -> dict:
    all_counts = [counts(e, image_token_id) for e in examples]
    totals = [c["total"] for c in all_counts]
    order = sorted(range(len(examples)), key=lambda i: -totals[i])[:longest]
    return {"rows": len(examples), "mean_tokens": sum(totals) / max(1, len(totals)), "max_tokens": max(totals, default=0),
            "supervised_share": sum(c["supervised"] for c in all_counts) / max(1, sum(totals)),
            "by_source": {s: sum(1 for e in examples if e.source == s) for s in sorted({e.source for e in examples})},
            "longest": [(examples[i].origin, all_counts[i]) for i in order]}


__all__ = ["Piece", "pieces", "counts", "render_text", "write_html", "summary"]
