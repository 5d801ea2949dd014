"""Extraction and chat with a vlx model: `load`, `extract`, `Extractor`.

    import vlx
    ex = vlx.load("runs/poi")                     # a finetune run, an export, or a base model
    scene = ex.extract("shop.jpg")                # a validated StreetScene (the run's schema)
    scenes = ex.extract_many(paths, batch_size=8)  # instances or ExtractionErrors, input order
    ex.chat("shop.jpg", "What is written on the sign?")

    scene = vlx.extract("shop.jpg", StreetScene, model="runs/base")  # a base model, schema per call

A fine-tune run stores its schema and response-format prompt; `extract` applies that prompt and
decodes under the grammar of the schema's canonical serialization, so every result is a valid
instance or an `ExtractionError` (with the text produced), never a truncated or invalid object.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from pydantic import BaseModel

from vlx.data.templates import Turn, answer_prefix, prompt_text
from vlx.decode import ConstrainedDecoder, DecodeConfig, ExtractionError, generate
from vlx.inputs import InputError, open_image
from vlx.model.build import ModelLoadError, resolve_checkpoint
from vlx.model.llava import IMAGE_TOKEN
from vlx.run import RunInfo
from vlx.schema import SchemaError, check_supported, format_prompt, grammar_schema, load_schema

ImageInput = str | Path | bytes | Image.Image


class ImageError(ExtractionError, ValueError):
    """An image that cannot be used (missing, unreadable, not an image, empty)."""


def load_image(image: ImageInput) -> Image.Image:
    """A path, raw bytes or a PIL image -> an RGB PIL image; `ImageError` says what is wrong.

    Read through `vlx.inputs.open_image`: a file PIL cannot decode, an empty or truncated one, or
    one over the pixel limit (`--max-image-pixels`) costs only its own result."""
    if not isinstance(image, (str, Path, bytes, bytearray, Image.Image)):
        raise ImageError(f"expected a path, bytes or a PIL image, got {type(image).__name__}")
    source = str(image) if isinstance(image, (str, Path)) else "<bytes>" if not isinstance(image, Image.Image) else None
    try:
        return open_image(image, origin=source or "")
    except InputError as e:
        raise ImageError(str(e).removeprefix(f"{source}: ") if source else str(e), source=source) from None


class Extractor:
    """A loaded model with its template, and (for fine-tune runs) its schema and format prompt."""

    def __init__(self, model, processor, *, template: str | None, Schema: type[BaseModel] | None = None,
                 format_prompt: str | None = None, path: str | None = None, **decode_options):
        self.model, self.processor = model, processor
        self.template = template
        """Conversation template; None: the processor's own chat template (a foreign checkpoint)."""
        self.Schema = Schema
        self.format_prompt = format_prompt
        self.path = path
        self.options = DecodeConfig(**decode_options)
        self._decoders: dict = {}

    def __repr__(self) -> str:
        schema = self.Schema.__name__ if self.Schema else None
        return f"Extractor({self.path!r}, template={self.template!r}, schema={schema})"

    # ---- prompts ---------------------------------------------------------------------------

    def prompt(self, user: str) -> str:
        """The generation prompt for one user message (`<image>` included where it goes)."""
        if self.template is not None:
            return prompt_text(self.template, [Turn(user=user, assistant=None)])
        from vlx.data.vlm_data import render_prompt

        return render_prompt(self.processor, [Turn(user=user, assistant=None)])

    def _schema_and_prompt(self, Schema, allow_schema_change: bool) -> tuple[type[BaseModel], str]:
        if Schema is None:
            if self.Schema is None:
                raise SchemaError(f"{self.path or 'this model'} was not fine-tuned with a schema; pass one: "
                                  "extract(image, Schema)")
            # An empty stored prompt is a run trained without one (the ablation): keep it empty.
            return self.Schema, self.format_prompt if self.format_prompt is not None else format_prompt(self.Schema)
        check_supported(Schema)
        if self.Schema is None or Schema is self.Schema:
            return Schema, (self.format_prompt if Schema is self.Schema and self.format_prompt is not None
                            else format_prompt(Schema))
        if grammar_schema(Schema) == grammar_schema(self.Schema):
            return Schema, self.format_prompt if self.format_prompt is not None else format_prompt(Schema)
        if not allow_schema_change:
            raise SchemaError(
                f"{Schema.__name__} differs from the schema {self.path} was fine-tuned with "
                f"({self.Schema.__name__}); the model was not trained to answer in it. Fields that differ "
                f"(- run, + given):\n{schema_diff(self.Schema, Schema)}\n"
                "Pass allow_schema_change=True to decode under the new schema anyway."
            )
        return Schema, format_prompt(Schema)

    def _decoder(self, Schema, options: dict) -> ConstrainedDecoder:
        cfg = DecodeConfig(**{**self.options.__dict__, **options})
        key = (Schema, tuple(sorted(cfg.__dict__.items())))
        if key not in self._decoders:
            self._decoders[key] = ConstrainedDecoder(self.model, self.processor, Schema, template=self.template,
                                                     config=cfg)
        return self._decoders[key]

    # ---- extraction ------------------------------------------------------------------------

    def extract(self, image: ImageInput, Schema: type[BaseModel] | None = None, *,
                allow_schema_change: bool = False, **options) -> BaseModel:
        """One image -> a validated `Schema` instance; raises `ImageError` or `ExtractionError`.

        `options`: `backend`, `temperature`, `seed`, `max_new_tokens` (see `DecodeConfig`).
        """
        result = self.extract_many([image], Schema, allow_schema_change=allow_schema_change, **options)[0]
        if isinstance(result, ExtractionError):
            raise result
        return result

    def extract_many(self, images: Sequence[ImageInput], Schema: type[BaseModel] | None = None, *,
                     batch_size: int | None = None, allow_schema_change: bool = False,
                     on_progress: Callable[[int], None] | None = None, **options) -> list[BaseModel | ExtractionError]:
        """Many images -> one result per image, in input order: an instance, or the error for that image.

        Images are decoded `batch_size` at a time in one left-padded batch; an unreadable image
        becomes an `ImageError` in its slot and the others are still extracted. `on_progress(n)`
        is called with the number of images just finished: as each row of a batch ends its answer,
        and at once for the images that could not be read.
        """
        Schema, fmt = self._schema_and_prompt(Schema, allow_schema_change)
        if batch_size is not None:
            options["batch_size"] = batch_size
        decoder = self._decoder(Schema, options)
        prompt = self.prompt(f"{IMAGE_TOKEN}\n{fmt}")
        results: list[BaseModel | ExtractionError | None] = [None] * len(images)
        ok: list[tuple[int, Image.Image, str]] = []
        for i, image in enumerate(images):
            try:
                ok.append((i, load_image(image), _source(image, i)))
            except ImageError as e:
                results[i] = e
        if len(ok) < len(images) and on_progress:
            on_progress(len(images) - len(ok))
        step = decoder.config.batch_size
        for start in range(0, len(ok), step):
            chunk = ok[start:start + step]
            out = decoder.decode([prompt] * len(chunk), [im for _, im, _ in chunk], [s for _, _, s in chunk],
                                 on_row_done=on_progress)
            for (i, _, _), result in zip(chunk, out):
                results[i] = result
        return results

    # ---- chat ------------------------------------------------------------------------------

    def chat(self, image: ImageInput | None, message: str, *, max_new_tokens: int = 256, temperature: float = 0.0,
             seed: int | None = None) -> str:
        """Free-form answer to `message` about `image` (or no image): no format prompt, no grammar."""
        img = None if image is None else load_image(image)
        user = f"{IMAGE_TOKEN}\n{message}" if img is not None else message
        text = generate(self.model, self.processor, [self.prompt(user)], [img], max_new_tokens=max_new_tokens,
                        temperature=temperature, seed=seed)[0]
        prefix = answer_prefix(self.template, self.processor)
        return (text[len(prefix):] if prefix and text.startswith(prefix) else text).strip()


def _source(image: ImageInput, i: int) -> str:
    return str(image) if isinstance(image, (str, Path)) else f"<image {i}>"


def schema_diff(old: type[BaseModel], new: type[BaseModel]) -> str:
    """The fields that differ between two schemas, one `path: constraints` line each (- old, + new)."""
    a, b = _field_lines(grammar_schema(old)), _field_lines(grammar_schema(new))
    lines = [line for line in difflib.unified_diff(a, b, lineterm="", n=0)
             if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return "\n".join("  " + line for line in lines)


def _field_lines(node: dict, path: str = "") -> list[str]:
    if node.get("type") == "object":
        return [line for key, sub in node["properties"].items()
                for line in _field_lines(sub, f"{path}.{key}" if path else key)]
    if node.get("type") == "array":
        head = f"{path}: list of {node['minItems']} to {node['maxItems']}"
        return [head] + _field_lines(node["items"], f"{path}[]")
    branches = node.get("anyOf", [])
    if len(branches) == 2 and {"type": "null"} in branches:
        other = next(b for b in branches if b != {"type": "null"})
        return [line + " or null" if i == 0 else line for i, line in enumerate(_field_lines(other, path))]
    return [f"{path}: {json.dumps(node, ensure_ascii=False, separators=(',', ':'))}"]


def _template_of(processor) -> str | None:
    """The vlx template that renders like the checkpoint's own (`vlx.model.families.training_template`);
    None: prompt with the processor's chat template as it is."""
    from vlx.config import ConfigError
    from vlx.model.families import training_template

    try:
        return training_template(processor)
    except ConfigError:
        return None


def load(run: str | Path | Extractor, *, device: str | None = None, dtype: torch.dtype | None = None,
         **decode_options) -> Extractor:
    """Load a model once for many extractions.

    `run` is a `vlx finetune` run (base model + LoRA adapter in `RUN/adapter`, with `vlx_run.json`,
    `schema.py` and `format_prompt.txt`), a merged `vlx export`, a `vlx train-base` run, or any
    llava-hf checkpoint directory (then give the schema per call). `decode_options` set defaults
    for `backend`, `temperature`, `seed`, `max_new_tokens`, `batch_size`.

    >>> ex = vlx.load("runs/poi")  # doctest: +SKIP
    >>> ex.extract("shop.jpg").pois[0].category  # doctest: +SKIP
    <Category.cafe: 'cafe'>
    """
    if isinstance(run, Extractor):
        return run
    path = resolve_checkpoint(run)
    if not path.is_dir():
        raise ModelLoadError(f"{path} is not a directory; give a vlx run directory, a LLaVA checkpoint directory "
                             "or a hub id")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    info = RunInfo.load(path)
    if info is not None and info.kind == "finetune":
        model, processor = _load_finetune(path, info, dtype)
    elif (path / "config.json").exists():
        from vlx.model.families import family_of_checkpoint

        from vlx.model.vlm import load_checkpoint

        try:
            family_of_checkpoint(path, use="extract")  # refuses a family vlx cannot decode with
            model, processor = load_checkpoint(path, dtype=dtype)
        except InputError as e:
            raise ModelLoadError(f"{path}/config.json is not a model config ({e})") from None
        except ModelLoadError as e:
            raise ModelLoadError(f"{e}; {path} is neither a vlx run nor a LLaVA checkpoint") from e
    else:
        raise ModelLoadError(f"{path} is neither a vlx run (no vlx_run.json) nor a LLaVA checkpoint (no config.json)")
    Schema, fmt = None, None
    if info is not None and info.schema_class and (path / "schema.py").exists():
        Schema = load_schema(path / "schema.py", class_name=info.schema_class)
        fmt_file = path / "format_prompt.txt"
        fmt = fmt_file.read_text(encoding="utf-8").strip() if fmt_file.exists() else format_prompt(Schema)
    template = info.template if info is not None else _template_of(processor)
    model.to(device)
    return Extractor(model, processor, template=template, Schema=Schema, format_prompt=fmt, path=str(path),
                     **decode_options)


def _load_finetune(path: Path, info: RunInfo, dtype):
    from peft import PeftModel

    from vlx.model.vlm import load_run_base

    model, processor = load_run_base(path, info, dtype=dtype)
    # Merged in memory: inference then runs at the base model's speed.
    model = PeftModel.from_pretrained(model, path / "adapter").merge_and_unload()
    return model.eval(), processor


_loaded: dict[str, Extractor] = {}


def extract(image: ImageInput, Schema: type[BaseModel] | None = None, *, model: str | Path | Extractor,
            **options) -> BaseModel:
    """Extract one validated `Schema` instance from `image` with `model` (a run directory or an `Extractor`).

    Run directories are loaded once per process and reused. See `Extractor.extract` for options.

    >>> scene = vlx.extract("shop.jpg", StreetScene, model="runs/poi")  # doctest: +SKIP
    """
    if not isinstance(model, Extractor):
        key = str(Path(model).resolve())
        if key not in _loaded:
            _loaded[key] = load(model)
        model = _loaded[key]
    return model.extract(image, Schema, **options)
