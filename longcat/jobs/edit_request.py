"""The public ``EditRequest`` message -> the engine's request, with the server defaults for unset fields."""

from __future__ import annotations

from longcat.engine.request import AdapterRef, EditRequest
from longcat.v1 import edit_pb2

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 4.5


def request_from_proto(msg: edit_pb2.EditRequest) -> EditRequest:
    return EditRequest(
        image=msg.image, prompt=msg.prompt, negative_prompt=msg.negative_prompt, width=msg.width,
        height=msg.height, num_inference_steps=msg.num_inference_steps or DEFAULT_STEPS,
        guidance_scale=msg.guidance_scale if msg.HasField("guidance_scale") else DEFAULT_GUIDANCE,
        seed=msg.seed if msg.HasField("seed") else None,
        adapters=[AdapterRef(a.name, a.scale) for a in msg.adapters], truncate_prompt=msg.truncate_prompt,
        speed_preset=msg.speed_preset)
