"""LLaVA-1.5's architectural quirks, in one place.

Everything here reproduces a behaviour of the reference implementation
(github.com/haotian-liu/LLaVA, paper arXiv 2310.03744) on top of Hugging Face
`LlavaForConditionalGeneration`, so that a saved model needs nothing but `transformers`:

- Vision features come from the second-to-last CLIP layer (`mm_vision_select_layer=-2`) with
  the CLS token dropped (`mm_vision_select_feature="patch"`): 576 x 1024 features for
  ViT-L/14 at 336 px. In HF terms: `vision_feature_layer=-2`,
  `vision_feature_select_strategy="default"`.
- Projector `mlp2x_gelu` is Linear(Dv->H), GELU, Linear(H->H): HF's `LlavaMultiModalProjector`.
  LLaVA-1's single Linear (the paper's ablation) is expressed in the same module with an
  identity activation and `linear_2` initialised to the identity: the function class is the
  same (a composition of linear maps is linear) and the checkpoint stays loadable by plain
  `transformers`.
- `image_aspect_ratio="pad"`: the image is centred on a square filled with the CLIP mean colour
  (122, 116, 104) and then resized. HF's `LlavaImageProcessor(do_pad=True)` does exactly this,
  so the preprocessing travels with the checkpoint.
- The processor expands one `<image>` into `(size / patch)^2 + 1 - 1` tokens: the `+1` is
  CLIP's CLS token (`num_additional_image_tokens=1`) and the `-1` is the CLS drop of the
  `default` strategy. Getting this wrong makes token counts mismatch at the first forward.
"""

from __future__ import annotations

from typing import Literal

import torch
from transformers import LlavaConfig, LlavaProcessor, PretrainedConfig
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

ImageAspectRatio = Literal["pad", "square", "crop"]
Projector = Literal["mlp2x_gelu", "linear"]

VISION_FEATURE_LAYER = -2
VISION_FEATURE_SELECT_STRATEGY = "default"
IMAGE_TOKEN = "<image>"

PROJECTOR_ACT = {"mlp2x_gelu": "gelu", "linear": "linear"}


def num_image_tokens(vision_config: PretrainedConfig) -> int:
    """Tokens one image occupies in the LLM sequence: the patch grid, CLS dropped.

    >>> from transformers import CLIPVisionConfig
    >>> num_image_tokens(CLIPVisionConfig(image_size=336, patch_size=14))
    576
    """
    return (vision_config.image_size // vision_config.patch_size) ** 2


def has_cls(vision_config: PretrainedConfig) -> bool:
    """CLIP towers prepend a CLS token (dropped: `default`); SigLIP towers have none (kept whole: `full`)."""
    return not vision_config.model_type.startswith("siglip")


def select_strategy(vision_config: PretrainedConfig) -> str:
    return VISION_FEATURE_SELECT_STRATEGY if has_cls(vision_config) else "full"


def llava_config(
    vision_config: PretrainedConfig,
    text_config: PretrainedConfig,
    *,
    image_token_id: int,
    projector: Projector = "mlp2x_gelu",
) -> LlavaConfig:
    if projector not in PROJECTOR_ACT:
        raise ValueError(f"projector={projector!r} is not one of {sorted(PROJECTOR_ACT)}")
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_id,
        image_seq_length=num_image_tokens(vision_config),
        projector_hidden_act=PROJECTOR_ACT[projector],
        vision_feature_layer=VISION_FEATURE_LAYER,
        vision_feature_select_strategy=select_strategy(vision_config),
        multimodal_projector_bias=True,
        tie_word_embeddings=getattr(text_config, "tie_word_embeddings", False),
    )


def init_projector(projector_module: torch.nn.Module, projector: Projector) -> None:
    """LLaVA-1's `linear` projector starts as a single Linear: `linear_2` is the identity."""
    if projector == "linear":
        with torch.no_grad():
            projector_module.linear_2.weight.copy_(torch.eye(projector_module.linear_2.weight.shape[0]))
            projector_module.linear_2.bias.zero_()


def image_processor(
    image_size: int,
    *,
    aspect_ratio: ImageAspectRatio = "pad",
    image_mean: tuple[float, ...] = tuple(OPENAI_CLIP_MEAN),
    image_std: tuple[float, ...] = tuple(OPENAI_CLIP_STD),
) -> LlavaImageProcessorPil:
    """The CLIP preprocessing LLaVA uses, as a plain HF image processor.

    - `pad` (LLaVA-1.5): pad to a square with the mean colour, then resize to `image_size`.
    - `square`: stretch to `image_size` x `image_size`, ignoring the aspect ratio.
    - `crop` (CLIP's own default, LLaVA-1): resize the shortest edge, centre-crop.
    """
    common = dict(image_mean=list(image_mean), image_std=list(image_std), resample=3)  # 3 = bicubic
    crop = {"height": image_size, "width": image_size}
    if aspect_ratio == "pad":
        return LlavaImageProcessorPil(
            do_pad=True, size={"shortest_edge": image_size}, do_center_crop=True, crop_size=crop, **common
        )
    if aspect_ratio == "square":
        return LlavaImageProcessorPil(do_pad=False, size=dict(crop), do_center_crop=False, crop_size=crop, **common)
    if aspect_ratio == "crop":
        return LlavaImageProcessorPil(
            do_pad=False, size={"shortest_edge": image_size}, do_center_crop=True, crop_size=crop, **common
        )
    raise ValueError(f"image_aspect_ratio={aspect_ratio!r}: use one of pad, square, crop")


def llava_processor(tokenizer, vision_config: PretrainedConfig, *, aspect_ratio: ImageAspectRatio = "pad",
                    chat_template: str | None = None, image_mean=None, image_std=None) -> LlavaProcessor:
    """A `LlavaProcessor` whose `<image>` expansion matches the vision tower's output length."""
    kwargs = {}
    if image_mean is not None:
        kwargs.update(image_mean=tuple(image_mean), image_std=tuple(image_std))
    processor = LlavaProcessor(
        image_processor=image_processor(vision_config.image_size, aspect_ratio=aspect_ratio, **kwargs),
        tokenizer=tokenizer,
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=select_strategy(vision_config),
        num_additional_image_tokens=int(has_cls(vision_config)),  # CLIP's CLS; `default` drops it again
        image_token=IMAGE_TOKEN,
        chat_template=chat_template,
    )
    return processor
