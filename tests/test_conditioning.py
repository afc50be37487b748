"""The shared conditioning math against the library's own functions and the model's conventions."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from diffusers.pipelines.longcat_image.pipeline_longcat_image_edit import (
    LongCatImageEditPipeline,
    retrieve_timesteps,
)

from longcat.conditioning import (
    MAX_PROMPT_TOKENS,
    Geometry,
    PromptEncoder,
    check_prompt_length,
    default_size,
    image_position_ids,
    pack_latents,
    prepare_reference,
    sample_training_sigmas,
    set_inference_timesteps,
    shift_mu,
    text_position_ids,
    unpack_latents,
)
from longcat.errors import PromptTooLong


def test_pack_is_the_pipelines_pack_and_unpack_inverts_it():
    g = Geometry(width=96, height=64)
    z = torch.randn(1, 16, 8, 12)
    packed = pack_latents(z)
    assert packed.shape == (1, 24, 64)
    assert torch.equal(packed, LongCatImageEditPipeline._pack_latents(z, 1, 16, 8, 12))
    assert torch.equal(unpack_latents(packed, g), z)


def test_position_ids_layout():
    g = Geometry(width=64, height=32)  # 2 x 4 tokens
    L = 5
    text = text_position_ids(L)
    assert text.tolist() == [[0, i, i] for i in range(L)]
    ids = image_position_ids(g, L)
    assert ids.shape == (16, 3)
    noisy, ref = ids[:8], ids[8:]
    assert (noisy[:, 0] == 1).all() and (ref[:, 0] == 2).all()
    assert noisy[:, 1:].tolist() == ref[:, 1:].tolist() == [[L + r, L + c] for r in range(2) for c in range(4)]


@pytest.mark.parametrize("steps,seq", [(1, 256), (4, 1024), (50, 4096), (8, 6000)])
def test_inference_timesteps_match_the_pipelines(tiny_components, steps, seq):
    import copy

    ours = set_inference_timesteps(copy.deepcopy(tiny_components.scheduler), steps, seq, "cpu")
    theirs_sched = copy.deepcopy(tiny_components.scheduler)
    theirs, _ = retrieve_timesteps(theirs_sched, steps, "cpu", sigmas=np.linspace(1.0, 1.0 / steps, steps),
                                   mu=shift_mu(seq, theirs_sched.config))
    assert torch.equal(ours, theirs)
    assert ours[0] == 1000  # starts from pure noise


def test_dynamic_shift_grows_with_tokens(tiny_components):
    cfg = tiny_components.scheduler.config
    assert shift_mu(256, cfg) == pytest.approx(0.5)
    assert shift_mu(4096, cfg) == pytest.approx(1.15)


def test_training_sigmas_are_shifted_logit_normal(tiny_components):
    gen = torch.Generator().manual_seed(0)
    s = sample_training_sigmas(4000, 4096, tiny_components.scheduler.config, generator=gen)
    assert ((s > 0) & (s < 1)).all()
    # mu = 1.15 pushes the logit-normal's median 0.5 to exp(mu) / (exp(mu) + 1) ~ 0.76
    assert s.median().item() == pytest.approx(np.exp(1.15) / (np.exp(1.15) + 1), abs=0.03)


def test_default_size_is_about_one_megapixel_keeping_aspect():
    w, h = default_size(1600, 900)
    assert w % 16 == 0 and h % 16 == 0
    assert abs(w * h - 1024 * 1024) / (1024 * 1024) < 0.03
    assert abs(w / h - 16 / 9) < 0.02


def test_reference_is_resized_and_halved_for_the_vlm(sample_image):
    ref = prepare_reference(sample_image, Geometry(width=128, height=96))
    assert ref.pixels.shape == (1, 3, 96, 128)
    assert ref.prompt_image.size == (64, 48)
    assert ref.pixels.min() >= -1 and ref.pixels.max() <= 1


def _encoder(c):
    return PromptEncoder(c.tokenizer, c.text_processor.image_processor, c.text_encoder)


def test_embeddings_are_vision_tokens_plus_512(tiny_components, sample_image):
    ref = prepare_reference(sample_image, Geometry(width=128, height=96))
    emb = _encoder(tiny_components).encode("make it purple", ref.prompt_image)
    proc = tiny_components.text_processor.image_processor
    grid = proc(images=ref.prompt_image, return_tensors="pt")["image_grid_thw"]
    vision = int(grid.prod()) // proc.merge_size ** 2
    # <|vision_start|> + image pads + <|vision_end|> + 512 padded prompt tokens
    assert emb.shape == (1, 1 + vision + 1 + MAX_PROMPT_TOKENS, tiny_components.text_encoder.config.text_config.hidden_size)


def test_embeddings_match_the_pipelines_encoder(tiny_components, sample_image):
    pipe = LongCatImageEditPipeline(**tiny_components.as_pipeline_kwargs())
    ref = prepare_reference(sample_image, Geometry(width=128, height=96))
    for prompt in ["make the sky purple", "write 'Hello' on the wall", ""]:
        ours = _encoder(tiny_components).encode(prompt, ref.prompt_image)
        theirs = pipe._encode_prompt([prompt], ref.prompt_image)
        assert torch.equal(ours, theirs), prompt


def test_long_prompt_is_a_clear_error_naming_the_field(tiny_components):
    long = "purple " * 600
    with pytest.raises(PromptTooLong, match=r"prompt: is \d+ tokens; the model reads at most 512") as err:
        check_prompt_length(tiny_components.tokenizer, long)
    assert err.value.field == "prompt"


def test_long_prompt_truncates_with_a_warning_when_asked(tiny_components, caplog):
    with caplog.at_level(logging.WARNING):
        ids = check_prompt_length(tiny_components.tokenizer, "purple " * 600, truncate=True)
    assert len(ids) == MAX_PROMPT_TOKENS
    assert "truncated" in caplog.text


def test_quoted_text_is_tokenized_per_character(tiny_components):
    plain = check_prompt_length(tiny_components.tokenizer, "write hello")
    quoted = check_prompt_length(tiny_components.tokenizer, "write 'hello'")
    assert len(quoted) >= len(plain) + 4
