"""Prompt + reference image -> prompt embeddings through Qwen2.5-VL with vision context.

Follows ``LongCatImageEditPipeline._encode_prompt`` token for token (the parity test holds us to it),
with two fixes: prompts over 512 tokens give a clear error (diffusers raises a TypeError there) or an
explicit truncation with a warning, and the token count is available without running the model, so the
gateway can refuse a long prompt before anything is queued.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from PIL import Image

# The token rules are the contract layer's: the gateway counts tokens the same way without transformers.
from longcat.api.prompts import MAX_PROMPT_TOKENS, check_prompt_length, prompt_token_ids  # noqa: F401

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<|image_pad|>"
PROMPT_PREFIX = (
    "<|im_start|>system\nAs an image editing expert, first analyze the content and attributes of the input "
    "image(s). Then, based on the user's editing instructions, clearly and precisely determine how to modify "
    "the given image(s), ensuring that only the specified parts are altered and all other aspects remain "
    "consistent with the original(s).<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>"
)
PROMPT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class PromptEncoder:
    """The encoder side of conditioning: tokenizer, Qwen image processor and Qwen2.5-VL."""

    tokenizer: object
    image_processor: object
    text_encoder: torch.nn.Module

    @torch.no_grad()
    def encode(self, prompt: str, prompt_image: Image.Image, field: str = "prompt",
               truncate: bool = False) -> torch.Tensor:
        """(1, vision tokens + 512, hidden) embeddings of ``prompt`` seen with ``prompt_image``."""
        device = self.text_encoder.device
        tok = self.tokenizer
        vl = self.image_processor(images=prompt_image, return_tensors="pt")
        pixel_values, grid_thw = vl["pixel_values"], vl["image_grid_thw"]

        text = tok.pad({"input_ids": [check_prompt_length(tok, prompt, field, truncate)]},
                       max_length=MAX_PROMPT_TOKENS, padding="max_length", return_attention_mask=True,
                       return_tensors="pt")
        num_image_tokens = int(grid_thw.prod()) // self.image_processor.merge_size ** 2
        prefix = tok(PROMPT_PREFIX.replace(IMAGE_TOKEN, IMAGE_TOKEN * num_image_tokens),
                     add_special_tokens=False)["input_ids"]
        suffix = tok(PROMPT_SUFFIX, add_special_tokens=False)["input_ids"]
        # The embeddings start at <|vision_start|> and stop before the suffix: [vision tokens + 512 prompt].
        start = prefix.index(tok.convert_tokens_to_ids("<|vision_start|>"))

        ids_dtype, mask_dtype = text.input_ids.dtype, text.attention_mask.dtype
        input_ids = torch.cat([torch.tensor(prefix, dtype=ids_dtype), text.input_ids[0],
                               torch.tensor(suffix, dtype=ids_dtype)])
        mask = torch.cat([torch.ones(len(prefix), dtype=mask_dtype), text.attention_mask[0],
                          torch.ones(len(suffix), dtype=mask_dtype)])
        out = self.text_encoder(
            input_ids=input_ids[None].to(device),
            attention_mask=mask[None].to(device),
            pixel_values=pixel_values.to(device),
            image_grid_thw=grid_thw.to(device),
            output_hidden_states=True,
        )
        return out.hidden_states[-1][:, start:-len(suffix), :]
