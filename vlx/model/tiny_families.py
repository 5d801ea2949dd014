"""Tiny random checkpoints of the image-text-to-text families in `vlx.model.families`, built in-process
and saved as the hub lays each family out (its processor, chat template or none, special tokens), so that
the family tests exercise the code paths real checkpoints take, with no download.

    path = tiny_qwen2_vl(tmp / "qwen", model_type="qwen2_5_vl")
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from vlx.model.tiny import tiny_corpus, tiny_text_config, tiny_tokenizer, tiny_vision_config

TINY_TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8)
"""A 32 px vision tower of 4 x 4 patches (SigLIP, BLIP and Idefics3 configs take these keys)."""


def _save(path, model_cls, config, processor, *, seed: int, eos, pad: int):
    """Build `model_cls(config)` with random weights from `seed` (the process's RNG untouched), set its
    generation stop and pad tokens, save it and `processor` under `path`."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# ---- a tiny Qwen2-VL, laid out as the hub ships one (tests of the family table) -------------------

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL's chat layout: ChatML with the image as <|vision_start|><|image_pad|><|vision_end|>, after a
# default system turn; Qwen3-VL's has no default system turn.
_QWEN_SYSTEM = ("{% if loop.first and message['role'] != 'system' %}"
                "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}")
_QWEN_TURNS = (
    "{{ '<|im_start|>' + message['role'] + '\n' }}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN_CHAT_TEMPLATE = "{% for message in messages %}" + _QWEN_SYSTEM + _QWEN_TURNS
QWEN3_CHAT_TEMPLATE = "{% for message in messages %}" + _QWEN_TURNS
# Qwen3.5's layout with thinking off: the generation prompt ends in an empty thinking block, which
# answers after the last question keep and earlier answers drop (the template rewrites history).
QWEN3_5_CHAT_TEMPLATE = (
    "{% set ns = namespace(last=0) %}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' and loop.index0 > ns.last %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}{% endif %}"
)


def tiny_qwen2_vl(path, *, seed: int = 0, model_type: str = "qwen2_vl"):
    """Save a random 2-layer Qwen2-VL, Qwen2.5-VL or Qwen3-VL (`model_type`): model, tokenizer, image
    processor and chat template, laid out as the hub ships them."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(tiny_corpus(), trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=QWEN_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        model_max_length=4096,
                                        extra_special_tokens={"image_token": "<|image_pad|>",
                                                              "video_token": "<|video_pad|>"})
    return save_qwen2_vl(path, tokenizer, model_type=model_type, seed=seed,
                         text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, mrope_section=[2, 1, 1]),
                         vision=dict(depth=2, hidden_size=32, num_heads=2, mlp=64),
                         min_pixels=56 * 56, max_pixels=112 * 112)


def save_qwen2_vl(path, tokenizer, *, text: dict, vision: dict, model_type: str = "qwen2_vl", seed: int = 0,
                  min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 1280):
    """Save a random Qwen2-VL / Qwen2.5-VL / Qwen3-VL of the given sizes around `tokenizer` (its Qwen special tokens
    added where missing): `text` takes hidden_size, intermediate_size, num_hidden_layers,
    num_attention_heads, num_key_value_heads, mrope_section; `vision` depth, hidden_size, num_heads, mlp."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    names = {"qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
             "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
             "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
             "qwen3_5": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor")}
    if model_type not in names:
        raise ValueError(f"model_type {model_type!r}: use one of {', '.join(names)}")
    config_cls, model_cls, processor_cls = (getattr(transformers, n) for n in names[model_type])
    missing = [t for t in QWEN_SPECIAL if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    tokenizer.image_token, tokenizer.video_token = "<|image_pad|>", "<|video_pad|>"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL}
    text = dict(text)
    mrope = text.pop("mrope_section")
    v = dict(vision)
    mlp = v.pop("mlp")
    patch = 16 if model_type in ("qwen3_vl", "qwen3_5") else 14
    v.update(patch_size=patch, spatial_merge_size=2, temporal_patch_size=2)
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope}
    if model_type == "qwen2_vl":
        v.update(embed_dim=v["hidden_size"], mlp_ratio=mlp // v["hidden_size"], hidden_size=text["hidden_size"])
    elif model_type == "qwen2_5_vl":  # a gated MLP, window attention but in the blocks listed as full, merger out to the LLM width
        v.update(intermediate_size=mlp, out_hidden_size=text["hidden_size"], window_size=56,
                 fullatt_block_indexes=[v["depth"] - 1])
    elif model_type == "qwen3_vl":  # patch 16, learnt position embeddings on a square grid, deepstack mergers
        v.update(intermediate_size=mlp, out_hidden_size=text["hidden_size"], num_position_embeddings=64,
                 deepstack_visual_indexes=list(range(v["depth"] - 1)))
        text.setdefault("head_dim", text["hidden_size"] // text["num_attention_heads"])
        rope.update(mrope_interleaved=True)
    else:  # Qwen3.5: Qwen3-VL's tower without deepstack; a language model of linear (Gated DeltaNet) and full
        # attention layers, RoPE on a quarter of each head
        v.update(intermediate_size=mlp, out_hidden_size=text["hidden_size"], num_position_embeddings=64)
        head = text.setdefault("head_dim", 4 * 2 * sum(mrope))  # the 2 x sum(mrope) rotary dims are a quarter
        text.update(layer_types=["linear_attention", "full_attention"] * (text["num_hidden_layers"] // 2),
                    linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=head // 2,
                    linear_value_head_dim=head // 2)
        rope.update(mrope_interleaved=True, partial_rotary_factor=0.25)
    config = config_cls(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=4096, **text, rope_parameters=rope,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=v,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=patch)
    from vlx.model.vlm import without_video

    template = {"qwen3_vl": QWEN3_CHAT_TEMPLATE, "qwen3_5": QWEN3_5_CHAT_TEMPLATE}.get(model_type, QWEN_CHAT_TEMPLATE)
    processor = without_video(processor_cls)(image_processor=image_processor, tokenizer=tokenizer,
                                             chat_template=template)
    return _save(path, model_cls, config, processor, seed=seed, eos=ids["<|im_end|>"],
                 pad=ids["<|endoftext|>"])


# ---- a tiny LLaVA-NeXT (anyres), laid out as llava-hf ships llava-v1.6-mistral -----------------------

# llava-v1.6-mistral's chat layout: `[INST] <image>\n{question} [/INST]`, the answer after a space and
# closed by `</s> `; no generation prompt of its own (the prompt ends at `[/INST]`).
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for part in message['content'] if part['type'] == 'image' %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'][0]['text'] + '</s> ' }}{% endif %}{% endfor %}"
)


def tiny_llava_next(path, *, seed: int = 0):
    """Save a random LLaVA-NeXT: a 32 px CLIP tower (4 x 4 patches), anyres tiles on 32 x 64, 64 x 32 and
    64 x 64 grids, a 2-layer Llama, and llava-v1.6-mistral's chat layout."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.image_token = "<image>"
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    text = tiny_text_config(len(tokenizer))
    config = LlavaNextConfig(vision_config=tiny_vision_config().to_dict(), text_config=text.to_dict(),
                             image_token_index=image_id, image_grid_pinpoints=pinpoints,
                             vision_feature_select_strategy="default", vision_feature_layer=-2)
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_NEXT_TEMPLATE)
    return _save(path, LlavaNextForConditionalGeneration, config, processor, seed=seed,
                 eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)


# ---- a tiny Idefics3 / SmolVLM (image splits), laid out as the hub ships them ------------------------

# Idefics3's and SmolVLM's chat layout: `User:<image>{question}<end_of_utterance>\nAssistant: {answer}`,
# the generation prompt `Assistant:` (the answer follows a space); Idefics3 opens with BOS, SmolVLM with
# `<|im_start|>`.
_IDEFICS3_TURNS = (
    "{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS3_TEMPLATE = "<s>" + _IDEFICS3_TURNS
SMOLVLM_TEMPLATE = "<|im_start|>" + _IDEFICS3_TURNS


def tiny_idefics3(path, *, seed: int = 0, model_type: str = "idefics3"):
    """Save a random Idefics3 or SmolVLM (`model_type`): a 32 px SigLIP-style tower (patch 8, 16 patches
    pixel-shuffled by 2 into 4 image tokens per split), images split into up to 3 x 3 tiles of 32 px plus a
    global image, a 2-layer Llama, and the family's chat layout."""
    import transformers

    names = {"idefics3": ("Idefics3Config", "Idefics3ForConditionalGeneration", "Idefics3Processor", IDEFICS3_TEMPLATE),
             "smolvlm": ("SmolVLMConfig", "SmolVLMForConditionalGeneration", "SmolVLMProcessor", SMOLVLM_TEMPLATE)}
    if model_type not in names:
        raise ValueError(f"model_type {model_type!r}: use one of {', '.join(names)}")
    config_name, model_name, processor_name, template = names[model_type]
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = tiny_tokenizer()
    tiles = [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<fake_token_around_image>", "<global-img>",
                                                                "<end_of_utterance>", *tiles]})
    tokenizer.image_token = "<image>"
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    end = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    text = tiny_text_config(len(tokenizer)).to_dict()
    vision = dict(TINY_TOWER)
    config = getattr(transformers, config_name)(vision_config=vision, text_config=text, image_token_id=image_id,
                                                scale_factor=2)
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 96}, max_image_size={"longest_edge": 32})
    processor_cls = getattr(transformers, processor_name)
    if model_type == "smolvlm":  # a video processor cannot be built without torchvision
        from vlx.model.vlm import without_video

        processor_cls = without_video(processor_cls)
    processor = processor_cls(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                              chat_template=template)
    return _save(path, getattr(transformers, model_name), config, processor, seed=seed,
                 eos=[end, tokenizer.eos_token_id], pad=tokenizer.pad_token_id)


# ---- a tiny Gemma 3, laid out as the hub ships gemma-3-4b-it -----------------------------------------

# Gemma 3's chat layout: `<bos><start_of_turn>user\n...<end_of_turn>\n<start_of_turn>model\n`, the image as
# `<start_of_image>` (which the processor expands), the assistant's role written `model`.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] | trim }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<start_of_image>' }}{% elif part['type'] == 'text' %}{{ part['text'] | trim }}"
    "{% endif %}{% endfor %}{% endif %}{{ '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


def tiny_gemma3(path, *, seed: int = 0):
    """Save a random Gemma 3: a 32 px SigLIP tower (4 x 4 patches, pooled to 4 image tokens), a 2-layer Gemma 3
    text model (one sliding-window layer, one global), and gemma-3-it's chat layout."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    extra = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    base = tiny_tokenizer()
    base.add_special_tokens({"additional_special_tokens": [*extra.values(), "<start_of_turn>", "<end_of_turn>"]})
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", pad_token="<pad>", model_max_length=2048,
                                        extra_special_tokens=extra)
    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in extra.items()}
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                layer_types=["sliding_attention", "full_attention"], max_position_embeddings=2048,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    vision = dict(TINY_TOWER, vision_use_head=False)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=ids["boi_token"],
                          eoi_token_index=ids["eoi_token"], image_token_index=ids["image_token"])
    processor = Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size={"height": 32, "width": 32}),
                                tokenizer=tokenizer, image_seq_length=4, chat_template=GEMMA3_TEMPLATE)
    end = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    return _save(path, Gemma3ForConditionalGeneration, config, processor, seed=seed,
                 eos=[end, tokenizer.eos_token_id], pad=tokenizer.pad_token_id)


# ---- a tiny InstructBLIP, laid out as the hub ships Salesforce/instructblip-vicuna-7b ---------------------

def _tiny_wordpiece() -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer (the Q-Former's), trained on the built-in corpus."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(tiny_corpus(), trainer=trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials,
                                                                         show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def tiny_instructblip(path, *, seed: int = 0):
    """Save a random InstructBLIP: a 32 px ViT (4 x 4 patches), a 2-layer Q-Former with 4 query tokens that
    reads the instruction too (its own WordPiece tokenizer), a 2-layer Llama. No chat template, as on the hub."""
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.image_token = "<image>"
    qformer_tokenizer = _tiny_wordpiece()
    text = tiny_text_config(len(tokenizer)).to_dict()
    vision = dict(TINY_TOWER)
    qformer = dict(vocab_size=len(qformer_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=1,
                   max_position_embeddings=512)
    config = InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=4,
                                image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    image_processor = BlipImageProcessorPil(size={"height": 32, "width": 32})
    processor = InstructBlipProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                      qformer_tokenizer=qformer_tokenizer, num_query_tokens=4)
    return _save(path, InstructBlipForConditionalGeneration, config, processor, seed=seed,
                 eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)


def tiny_blip2(path, *, seed: int = 0):
    """Save a random BLIP-2 with an OPT language model (as Salesforce/blip2-opt-2.7b): a 32 px ViT, a 2-layer
    Q-Former with 4 query tokens, a 2-layer OPT. No chat template, as on the hub."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, OPTConfig
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.image_token = "<image>"
    text = OPTConfig(vocab_size=len(tokenizer), hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                     word_embed_proj_dim=32, max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).to_dict()
    vision = dict(TINY_TOWER)
    qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   encoder_hidden_size=32, cross_attention_frequency=1, max_position_embeddings=128)
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=4,
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    processor = Blip2Processor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, num_query_tokens=4)
    return _save(path, Blip2ForConditionalGeneration, config, processor, seed=seed,
                 eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)


# ---- a tiny PaliGemma, laid out as the hub ships google/paligemma-3b-pt-224 ---------------------------

def tiny_paligemma(path, *, seed: int = 0):
    """Save a random PaliGemma: a 32 px SigLIP tower (16 image tokens), a 2-layer Gemma, and its processor (which
    adds `<image>` and the location / segmentation tokens to the tokenizer). No chat template, as on the hub."""
    from transformers import GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokenizer = tiny_tokenizer()
    image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    image_processor.image_seq_length = 16
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    tokenizer = processor.tokenizer
    text = GemmaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id).to_dict()
    vision = dict(TINY_TOWER, projection_dim=32)
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             projection_dim=32, hidden_size=32)
    return _save(path, PaliGemmaForConditionalGeneration, config, processor, seed=seed,
                 eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
