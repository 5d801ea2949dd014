"""`python bench/format_prompt.py DEMO_DIR [--out DIR]`

The fine-tune's format prompt, one line (`cue`, the default) against every field spelled out
(`schema`), measured side by side on one `vlx demo` directory: the same base model, data, chat
replay and hyperparameters (the demo's `FULL` configuration), only the prompt differs. Prints, for
each: prompt tokens, tokens per training sample (image tokens included), training samples/s,
extraction images/s on the test split, every field's accuracy beside its baseline, schema-valid
rate, empty facades and chat JSON leaks. Results go to `DIR/format_prompt.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    ap.add_argument("demo", type=Path, help="a finished `vlx demo --out DIR` directory")
    ap.add_argument("--out", type=Path, default=None, help="where the two fine-tunes go (default DEMO/format-prompt)")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from vlx.demo import FULL, answer_budget, evaluate, headline, tune
    from vlx.schema import format_prompt, load_schema

    demo, out = args.demo, args.out or args.demo / "format-prompt"
    paths = {"poi_train": demo / "data/poi/train.jsonl", "poi_val": demo / "data/poi/val.jsonl",
             "poi_test": demo / "data/poi/test.jsonl", "chat": demo / "data/chat/data.json",
             "chat-eval": demo / "data/chat-eval/data.json"}
    base = demo / "base"
    tokenizer = AutoTokenizer.from_pretrained(base)
    Schema = load_schema(Path(__file__).resolve().parents[1] / "templates" / "poi.py", class_name="StreetScene")
    targets = [json.loads(line)["target"] for line in paths["poi_train"].read_text().splitlines() if line.strip()]
    answer_tokens = sum(len(tokenizer(json.dumps(t, separators=(",", ":")))["input_ids"]) for t in targets) / len(targets)
    image_tokens = json.loads((base / "config.json").read_text())["image_seq_length"]
    budget = answer_budget(base, paths["poi_train"])
    results = {}
    for style in ("cue", "schema"):
        cfg = dataclasses.replace(FULL, prompt_style=style)
        run = tune(cfg, base, paths, out / style)
        report = evaluate(run, paths, out / style / "eval", max_new_tokens=budget)
        logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        final = next(x for x in reversed(logs) if "train_samples_per_second" in x)
        prompt_tokens = len(tokenizer(format_prompt(Schema, style=style))["input_ids"])
        results[style] = {"prompt_tokens": prompt_tokens,
                          "tokens_per_sample": round(image_tokens + prompt_tokens + answer_tokens, 1),
                          "train_samples_per_second": final["train_samples_per_second"],
                          "images_per_second": report.get("images_per_second"),
                          "headline": headline(report, out / style / "eval")}
    (out / "format_prompt.json").write_text(json.dumps(results, indent=2) + "\n")
    print("| measure | cue | schema |\n|---|---|---|")
    for key in ("prompt_tokens", "tokens_per_sample", "train_samples_per_second", "images_per_second"):
        print(f"| {key} | {results['cue'][key]:.2f} | {results['schema'][key]:.2f} |")
    for key in ("schema_valid_rate", "chat_json_leak_rate", "chat_perplexity_drift"):
        print(f"| {key} | {results['cue']['headline'][key]} | {results['schema']['headline'][key]} |")
    for path, f in results["cue"]["headline"]["fields"].items():
        g = results["schema"]["headline"]["fields"][path]
        print(f"| {path} (baseline {f['baseline']:.2f}) | {f['accuracy']:.3f} {f['ci95']} | {g['accuracy']:.3f} {g['ci95']} |")
    print(f"ratio schema/cue train samples/s: "
          f"{results['schema']['train_samples_per_second'] / results['cue']['train_samples_per_second']:.2f}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
