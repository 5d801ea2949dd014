"""One way to turn rows into training samples for a base model, whatever its family.

    encoder = SampleEncoder.for_checkpoint("runs/base")          # or .for_model(model, processor, ...)
    examples, problems = encoder.prepare(rows)                      # what `vlx finetune` trains on

A family whose row in `vlx.model.families` says `inputs="template"` (LLaVA-1.5: vlx runs, llava-hf)
renders with a vlx chat template and expands `<image>` to the config's fixed `image_seq_length`
(`vlx.data.dataset.prepare`); `inputs="processor"` (Qwen2/2.5-VL) renders with the checkpoint's own
chat template and lets its processor expand each image (`vlx.data.vlm_data.prepare_vlm`).
`vlx finetune`, `vlx data preview --base` and `vlx data validate --base` all build samples here, so the
token counts they report are the ones training sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlx.data.formats import Problem, Row


@dataclass
class SampleEncoder:
    family: object
    """The checkpoint's `vlx.model.families.Family` row."""
    processor: object
    template: str | None
    """The vlx template (`inputs="template"` families); None: the checkpoint's own chat template."""
    image_token_id: int
    num_image_tokens: int | None
    """Image tokens per image where the family fixes them; None where the processor decides per image."""
    max_length: int

    @classmethod
    def for_model(cls, model, processor, *, template: str | None, max_length: int) -> "SampleEncoder":
        from vlx.model.families import family_of

        family = family_of(model.config)
        fixed = family.inputs == "template"
        return cls(family, processor, template if fixed else None, model.config.image_token_id,
                   model.config.image_seq_length if fixed else None, max_length)

    @classmethod
    def for_checkpoint(cls, base: str | Path, *, template: str | None = None) -> "SampleEncoder":
        """The encoder of a run or checkpoint directory (a fine-tune run: its base, with the run's processor)."""
        from vlx.inputs import read_json
        from vlx.model.build import ModelLoadError
        from vlx.model.families import family_of, training_template
        from vlx.model.vlm import load_processor
        from vlx.run import RunInfo, max_length

        base = Path(base)
        info = RunInfo.load(base)
        processor_dir = base
        if info is not None and info.kind == "finetune" and info.base:
            processor_dir = base if (base / "processor_config.json").exists() else Path(info.base)
            base = Path(info.base)
        if not (base / "config.json").exists():
            raise ModelLoadError(f"--base {base}: not a run or checkpoint directory (no config.json)")
        config = read_json(base / "config.json")
        family = family_of(config.get("model_type"))
        processor = load_processor(processor_dir)
        fixed = family.inputs == "template"
        tmpl = None
        if fixed:
            tmpl = template or (info.template if info is not None else None) or training_template(processor)
        image_id = config.get("image_token_id", config.get("image_token_index"))
        return cls(family, processor, tmpl, image_id, config.get("image_seq_length", 576) if fixed else None,
                   max_length(base))

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def template_name(self) -> str:
        return self.template or "the checkpoint's own"

    def prepare(self, rows: list[Row], *, spell: tuple[str, ...] = ()) -> tuple[list, list[Problem]]:
        """(examples, problems) of `rows`; every problem found, nothing skipped silently."""
        if self.family.inputs == "processor":
            from vlx.data.vlm_data import prepare_vlm

            return prepare_vlm(rows, self.processor, max_length=self.max_length, spell=spell)
        from vlx.data.dataset import prepare

        return prepare(rows, self.tokenizer, template=self.template, image_token_id=self.image_token_id,
                       num_image_tokens=self.num_image_tokens, max_length=self.max_length, spell=spell)


__all__ = ["SampleEncoder"]
