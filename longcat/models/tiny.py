"""A tiny, randomly initialised LongCat-Image-Edit, built offline in diffusers format.

It has the real model's component classes and folder layout (``model_index.json``, ``scheduler/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``text_processor/``, ``transformer/``), so it loads through
the very same ``from_pretrained`` path as ``meituan-longcat/LongCat-Image-Edit``. Only the sizes differ.
The same seed gives byte-identical files: tests, the demo and CI all rely on it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch

# The special tokens the LongCat edit prompt template and Qwen2.5-VL rely on.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

TINY_SIZES = {
    "text_hidden": 32,
    "text_layers": 2,
    "text_heads": 2,  # head_dim 16 -> mrope sections sum to 8
    "vision_depth": 2,
    "vision_hidden": 32,
    "transformer_heads": 2,
    "transformer_head_dim": 16,
    "vocab_merges": 400,
}

_WORDS = (
    "make the sky purple turn cat into dog add a hat remove background change color of car to red "
    "brighten image darken blur sharpen rotate mirror invert colors replace text with hello world "
    "as an image editing expert first analyze content and attributes input images then based on user "
    "editing instructions clearly precisely determine how modify given ensuring only specified parts "
    "are altered all other aspects remain consistent original system assistant user write on blackboard "
    "please me for it is a photo painting style sunset night day winter summer green blue yellow white "
    "black"
).split()


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(2000):
        n = rng.randint(3, 14)
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(n)) + rng.choice([".", "!", "?", ",", ""]))
    lines.append("".join(chr(c) for c in range(32, 127)))
    return lines


def build_tokenizer(seed: int):
    """A byte-level BPE trained offline, wrapped as the real model's ``Qwen2Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + TINY_SIZES["vocab_merges"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(seed), trainer=trainer)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=state["vocab"], merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL_TOKENS[1:]})
    tokenizer.add_tokens(["<|endoftext|>"], special_tokens=True)
    tokenizer.model_max_length = 32768
    return tokenizer


def _text_encoder(tokenizer, seed: int):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    s = TINY_SIZES
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": s["text_hidden"],
            "intermediate_size": 2 * s["text_hidden"],
            "num_hidden_layers": s["text_layers"],
            "num_attention_heads": s["text_heads"],
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": s["vision_depth"],
            "hidden_size": s["vision_hidden"],
            "intermediate_size": 2 * s["vision_hidden"],
            "num_heads": 2,
            "out_hidden_size": s["text_hidden"],
            "fullatt_block_indexes": [1],
            "window_size": 112,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ).eval()


def _transformer(seed: int):
    from diffusers import LongCatImageTransformer2DModel

    s = TINY_SIZES
    torch.manual_seed(seed + 2)
    return LongCatImageTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=s["transformer_head_dim"],
        num_attention_heads=s["transformer_heads"],
        joint_attention_dim=s["text_hidden"],
        pooled_projection_dim=s["text_hidden"],
        axes_dims_rope=[4, 4, 8],
    ).eval()


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # The real checkpoint's scheduler settings: dynamic shift between 256 and 4096 tokens.
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def _image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)


MODEL_INDEX = {
    "_class_name": "LongCatImageEditPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
    "text_processor": ["transformers", "Qwen2VLProcessor"],
    "tokenizer": ["transformers", "Qwen2Tokenizer"],
    "transformer": ["diffusers", "LongCatImageTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def build_tiny_model(out: str | os.PathLike, seed: int = 0, turbo: bool = False) -> Path:
    """Write a tiny random LongCat-Image-Edit in diffusers format to ``out`` and return its path.
    ``turbo``: the Edit-Turbo variant (same architecture; its folder says 8 steps, no CFG)."""
    import diffusers  # noqa: F401  (imported first so that "Writing model shards" bars can be turned off)
    import transformers  # noqa: F401

    from longcat.quiet import silence_libraries

    silence_libraries()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed)
    tokenizer.save_pretrained(out / "tokenizer")
    tokenizer.save_pretrained(out / "text_processor")
    _image_processor().save_pretrained(out / "text_processor")
    _text_encoder(tokenizer, seed).save_pretrained(out / "text_encoder", safe_serialization=True)
    _vae(seed).save_pretrained(out / "vae", safe_serialization=True)
    _transformer(seed).save_pretrained(out / "transformer", safe_serialization=True)
    _scheduler().save_pretrained(out / "scheduler")
    index = dict(MODEL_INDEX, _diffusers_version=_diffusers_version())
    (out / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (out / "TINY_MODEL").write_text(f"seed={seed}\n")
    if turbo:
        from longcat.api.model_defaults import TURBO, write_model_defaults

        write_model_defaults(out, TURBO)
    return out


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
