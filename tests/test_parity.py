"""Our engine against ``diffusers.LongCatImageEditPipeline.__call__``: same weights, seed, size, steps, fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import LongCatImageEditPipeline

from longcat.engine import EditEngine, EditRequest

TOLERANCE = 1e-4  # max absolute pixel difference, pixels in [0, 1]


@pytest.fixture(scope="module")
def pipeline_output(tiny_components, sample_image):
    pipe = LongCatImageEditPipeline(**tiny_components.as_pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    out = pipe(sample_image, "make the sky 'purple'", negative_prompt="blurry", num_inference_steps=3,
               guidance_scale=4.5, generator=torch.Generator("cpu").manual_seed(1234), output_type="np")
    return out.images[0]


@pytest.mark.slow
@pytest.mark.parametrize("cfg_batch", [True, False], ids=["cfg-batch2", "cfg-two-forwards"])
def test_engine_matches_the_pipeline_at_its_default_size(tiny_components, sample_image, pipeline_output,
                                                         cfg_batch):
    engine = EditEngine(tiny_components, cfg_batch=cfg_batch)
    result = engine.edit(EditRequest(image=sample_image, prompt="make the sky 'purple'", negative_prompt="blurry",
                                     num_inference_steps=3, guidance_scale=4.5, seed=1234))
    ours = result.pixels[0].permute(1, 2, 0).numpy()
    assert ours.shape == pipeline_output.shape  # the pipeline's own ~1 MP default for a 4:3 reference
    diff = float(np.abs(ours - pipeline_output).max())
    print(f"\nparity ({'batch-2 CFG' if cfg_batch else 'two CFG forwards'}): max |diff| = {diff:.3e}")
    assert diff <= TOLERANCE
    # The 8-bit image the engine returns is the pipeline's rounding of the same pixels.
    assert np.abs(np.asarray(result.image, dtype=np.int16) - (pipeline_output * 255).round()).max() <= 1


@pytest.mark.slow
def test_parity_without_cfg(tiny_components, sample_image):
    pipe = LongCatImageEditPipeline(**tiny_components.as_pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(sample_image, "add a hat", num_inference_steps=2, guidance_scale=1.0,
                  generator=torch.Generator("cpu").manual_seed(5), output_type="np").images[0]
    ours = EditEngine(tiny_components).edit(EditRequest(image=sample_image, prompt="add a hat", num_inference_steps=2,
                                                        guidance_scale=1.0, seed=5))
    assert float(np.abs(ours.pixels[0].permute(1, 2, 0).numpy() - theirs).max()) <= TOLERANCE
