"""`vlx data`: make, check and inspect training data (`synth`, `validate`, `preview`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vlx.cli_common import AllowPickle, MaxImagePixels, TrustRemoteCode, fail, policy, user_errors

data_app = typer.Typer(help="Make, check and inspect training data.", no_args_is_help=True)


def _row_order(problem) -> tuple:
    """Problems in file order: by source, then row/line number (`data.jsonl:line 12`, `row 3`)."""
    if hasattr(problem, "row"):
        return (str(getattr(problem, "source", "")), problem.row)
    head, _, number = problem.origin.rpartition(" ")
    return (head, int(number)) if number.isdigit() else (problem.origin, 0)


# ---- data validate ----------------------------------------------------------------------------

@data_app.command("validate")
def data_validate_cmd(
    data: Annotated[str, typer.Argument(help="LLaVA .json/.jsonl, a `datasets` dir, a mixture .yaml, or (with --schema) extraction rows.")],
    image_folder: Annotated[Optional[str], typer.Option(help="Folder image paths are relative to.")] = None,
    preset: Annotated[str, typer.Option(help="Preset whose tokenizer measures lengths.")] = "tiny",
    base: Annotated[Optional[Path], typer.Option(help="Measure with this run's or checkpoint's tokenizer, template and processor instead (any family vlx fine-tunes: its own image token counts).")] = None,
    template: Annotated[Optional[str], typer.Option(help="Template to check against: plain, vicuna_v1, chatml (default: the preset's).")] = None,
    max_length: Annotated[Optional[int], typer.Option(help="Max tokens per sample (default: the preset's).")] = None,
    schema: Annotated[Optional[Path], typer.Option(help="Validate extraction rows {image, target} against this pydantic schema file (Python, executed: only files you would run).")] = None,
    schema_class: Annotated[Optional[str], typer.Option(help="Class name in --schema when it defines several roots.")] = None,
    allow_pickle: AllowPickle = False,
    trust_remote_code: TrustRemoteCode = False,
    max_image_pixels: MaxImagePixels = None,
):
    """Report every bad row (file, row, field and fix) without training; exit 1 if any."""
    policy(allow_pickle, trust_remote_code, max_image_pixels)
    from vlx.config import ModelConfig
    from vlx.data.dataset import prepare
    from vlx.data.formats import load_rows
    from vlx.model.build import build_llava, resolve

    lengths = None
    try:
        if base is not None:
            problems, total, lengths = _validate_with_base(data, base, template, schema, schema_class, image_folder)
        elif schema is not None:
            from vlx.schema import load_schema, validate_rows

            Schema = load_schema(schema, schema_class)
            problems = validate_rows(data, Schema, image_folder=image_folder).problems
            total = None
        else:
            cfg = resolve(ModelConfig(preset=preset, template=template, max_length=max_length))
            model, processor = build_llava(cfg)
            problems = []
            rows = load_rows(data, image_folder=image_folder, problems=problems)
            _, bad = prepare(rows, processor.tokenizer, template=cfg.template,
                             image_token_id=model.config.image_token_id,
                             num_image_tokens=model.config.image_seq_length, max_length=cfg.max_length)
            problems += bad
            total = len(rows)
    except user_errors() as e:
        fail(str(e))
    for p in sorted(problems, key=_row_order):
        typer.echo(str(p))
    if lengths:
        typer.echo(lengths)
    if problems:
        typer.secho(f"{len(problems)} invalid row(s)", err=True, fg=typer.colors.RED)
        raise typer.Exit(1)
    typer.echo(f"ok: {total if total is not None else 'all'} rows valid")


def _validate_with_base(data: str, base: Path, template, schema, schema_class, image_folder):
    """-> (problems, rows, a line of token counts) of `data` encoded for `base` as `vlx finetune` would."""
    import statistics

    from vlx.data.formats import load_rows
    from vlx.data.preview import counts
    from vlx.data.samples import SampleEncoder

    encoder = SampleEncoder.for_checkpoint(base, template=template)
    if schema is not None:
        from vlx.schema import format_prompt, load_schema, validate_rows
        from vlx.train.finetune import _extraction_rows

        Schema = load_schema(schema, schema_class)
        report = validate_rows(data, Schema, image_folder=image_folder)
        problems = list(report.problems)
        from vlx.config import FinetuneDataConfig

        rows = _extraction_rows(report, format_prompt(Schema, style=FinetuneDataConfig().prompt_style))  # finetune's
    else:
        problems = []
        rows = load_rows(data, image_folder=image_folder, problems=problems)
    examples, bad = encoder.prepare(rows)
    problems += bad
    if not examples:
        return problems, len(rows), None
    c = [counts(e, encoder.image_token_id) for e in examples]
    totals, images = [x["total"] for x in c], [x["image"] for x in c if x["image"]]
    line = (f"tokens per sample ({encoder.family.model_type}, template {encoder.template_name}): median "
            f"{statistics.median(totals):.0f}, max {max(totals)} of max_length {encoder.max_length}")
    if images:
        line += f"; image tokens per image {min(images)}-{max(images)}"
    return problems, len(rows), line


@data_app.command("preview")
def data_preview_cmd(
    data: Annotated[str, typer.Argument(help="LLaVA .json/.jsonl, a `datasets` dir, a mixture .yaml, or (with --schema) extraction rows.")],
    base: Annotated[Optional[Path], typer.Option(help="A run or LLaVA checkpoint whose tokenizer and template to render with.")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Or a preset: tiny, smol, llava-1.5-7b ...")] = None,
    schema: Annotated[Optional[Path], typer.Option(help="Extraction rows: render them as `vlx finetune` does, with this schema's format prompt (Python, executed).")] = None,
    template: Annotated[Optional[str], typer.Option(help="Template override: plain (stage 1), vicuna_v1, chatml.")] = None,
    prompt_style: Annotated[str, typer.Option(help="With --schema: the derived format prompt, cue (finetune's default) or schema.")] = "cue",
    n: Annotated[int, typer.Option("--n", help="Samples to show.")] = 5,
    image_folder: Annotated[Optional[str], typer.Option(help="Folder image paths are relative to.")] = None,
    html_out: Annotated[Path, typer.Option("--html", help="Where to write the HTML preview with the images.")] = Path("preview.html"),
    max_image_pixels: MaxImagePixels = None,
):
    """Show what the model will be trained on: rendered samples, supervised spans, token counts, preview.html."""
    policy(max_image_pixels=max_image_pixels)
    from rich.console import Console
    from rich.markup import escape

    from vlx.data.formats import load_rows
    from vlx.data.preview import counts, render_text, summary, write_html

    if (base is None) == (preset is None):
        fail("give exactly one of --base RUN or --preset NAME (whose tokenizer and template render the data)")
    try:
        encoder = _encoder(base, preset, template)
        tokenizer, image_token_id, tmpl, max_length = (encoder.tokenizer, encoder.image_token_id,
                                                       encoder.template_name, encoder.max_length)
        if schema is not None:
            from vlx.schema import format_prompt, load_schema, validate_rows
            from vlx.train.finetune import _extraction_rows

            Schema = load_schema(schema)
            report = validate_rows(data, Schema, image_folder=image_folder)
            bad = len({e.row for e in report.errors})
            rows = _extraction_rows(report, format_prompt(Schema, style=prompt_style))
        else:
            problems: list = []
            rows = load_rows(data, image_folder=image_folder, problems=problems)
            bad = len(problems)
        examples, more = encoder.prepare(rows)
        bad += len(more)
    except (*user_errors(), ValueError) as e:
        fail(str(e))
    if not examples:
        fail(f"no valid rows to preview in {data} ({bad} invalid: `vlx data validate` lists them)")
    console = Console(soft_wrap=True, highlight=False)
    for ex in examples[:n]:
        c = counts(ex, image_token_id)
        console.print(escape(f"── {ex.origin} [{ex.source}]: text {c['text']} + image {c['image']} = {c['total']} "
                             f"tokens, {c['supervised']} supervised"), style="dim")
        console.print(render_text(ex, tokenizer, image_token_id))
    s = summary(examples, image_token_id)
    console.print("── summary", style="dim")
    console.print(escape(f"{s['rows']} rows ({', '.join(f'{k} {v}' for k, v in s['by_source'].items())}), template {tmpl}, "
                  f"{s['mean_tokens']:.0f} tokens on average, longest {s['max_tokens']} of max_length {max_length}; "
                  f"{100 * s['supervised_share']:.1f}% of tokens supervised"))
    for origin, c in s["longest"]:
        console.print(escape(f"  longest: {origin}: {c['total']} tokens ({c['image']} image)"))
    if bad:
        console.print(f"[red]{bad} invalid row(s) not shown: `vlx data validate` lists them[/red]")
    path = write_html(examples[:max(n, 50)], tokenizer, image_token_id, html_out, title=f"vlx data preview: {data}")
    console.print(escape(f"preview with images: {path}"))


def _encoder(base: Path | None, preset: str | None, template: str | None):
    """The `SampleEncoder` of a run or checkpoint (`--base`) or of a preset's freshly built model."""
    from vlx.data.samples import SampleEncoder

    if preset is not None:
        from vlx.config import ModelConfig
        from vlx.model.build import build_llava, resolve

        cfg = resolve(ModelConfig(preset=preset, template=template))
        model, processor = build_llava(cfg)
        return SampleEncoder.for_model(model, processor, template=cfg.template, max_length=cfg.max_length)
    return SampleEncoder.for_checkpoint(base, template=template)


# ---- data synth -------------------------------------------------------------------------------

def _parse_mix(text: str) -> dict[str, float]:
    """`"shapes=0.5,street=0.5"` -> `{"shapes": 0.5, "street": 0.5}`."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, share = part.partition("=")
        try:
            mix[name.strip()] = float(share)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--mix {text!r}: write NAME=SHARE pairs separated by commas, e.g. shapes=0.5,street=0.5")
    return mix


@data_app.command("synth")
def data_synth_cmd(
    kind: Annotated[str, typer.Option(help="captions (stage 1), instruct (stage-2 mixture), poi (street scenes for templates/poi.py) or chat.")],
    n: Annotated[int, typer.Option("--n", help="Number of rows (poi: scenes over all splits).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write: images/ plus the data files.")],
    seed: Annotated[int, typer.Option(help="Same seed, byte-identical output.")] = 0,
    image_size: Annotated[int, typer.Option(help="Image side in pixels (LLaVA-1.5: 336).")] = 336,
    font: Annotated[Optional[list[Path]], typer.Option("--font", help="poi: an extra TTF file to draw with (repeatable); output then depends on it.")] = None,
    workers: Annotated[int, typer.Option(help="Processes rendering in parallel; the output is the same for any number.")] = 1,
    mix: Annotated[Optional[str], typer.Option(help="captions/instruct: source shares, e.g. `shapes=0.5,street=0.5` (captions) or `vqa=0.5,street_vqa=0.5` (instruct); unnamed sources get no rows.")] = None,
):
    """Write deterministic synthetic images and LLaVA-format data (see `vlx.data.synth`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from vlx.data.synth import KINDS, image_count, synth

    if kind not in KINDS:
        typer.secho(f"error: --kind {kind!r}: use one of {', '.join(KINDS)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    if font and kind != "poi":
        typer.secho("error: --font applies to --kind poi only", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    if mix and kind not in ("captions", "instruct"):
        typer.secho("error: --mix applies to --kind captions and instruct only", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    extra = {"fonts": font} if font else {}
    try:
        if mix:
            extra["mix"] = _parse_mix(mix)
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns) as bar:
            task = bar.add_task(f"synth {kind}", total=image_count(kind, n, extra.get("mix")))
            result = synth(kind, out, n, seed=seed, image_size=image_size, workers=workers,
                           progress=lambda: bar.advance(task), **extra)
    except (ValueError, OSError) as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2)
    written = ", ".join(str(p) for p in result.values()) if isinstance(result, dict) else str(result)
    typer.echo(f"{n} {kind} rows written: {written}")
