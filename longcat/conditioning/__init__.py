"""The ONE conditioning code path, shared by serving (encoder + denoiser services) and LoRA training.

prompt + reference image -> embeddings; reference image -> packed latents; position ids; sigma schedules;
the transformer call itself (:func:`predict_velocity`). Nothing here is copied anywhere else.
"""

from longcat.conditioning.geometry import (
    Geometry,
    check_size,
    default_size,
    image_position_ids,
    pack_latents,
    text_position_ids,
    unpack_latents,
)
from longcat.conditioning.prompt import (
    MAX_PROMPT_TOKENS,
    PromptEncoder,
    check_prompt_length,
    prompt_token_ids,
)
from longcat.conditioning.reference import (
    PreparedReference,
    decode_latents,
    encode_reference_latents,
    prepare_reference,
    reference_pixels,
    reference_prompt_image,
    to_pil,
    vae_encode,
)
from longcat.conditioning.schedule import sample_training_sigmas, set_inference_timesteps, shift_mu
from longcat.conditioning.velocity import predict_velocity

__all__ = [
    "Geometry", "check_size", "default_size", "image_position_ids", "pack_latents", "text_position_ids",
    "unpack_latents", "MAX_PROMPT_TOKENS", "PromptEncoder", "check_prompt_length", "prompt_token_ids",
    "PreparedReference", "decode_latents", "encode_reference_latents", "prepare_reference", "reference_pixels",
    "reference_prompt_image", "to_pil",
    "vae_encode", "sample_training_sigmas", "set_inference_timesteps", "shift_mu", "predict_velocity",
]
