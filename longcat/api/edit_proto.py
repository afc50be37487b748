"""The public ``EditRequest`` message -> the engine's request, with the server defaults for unset fields."""

from __future__ import annotations

from longcat.api.edit import AdapterRef, EditRequest
from longcat.api.model_defaults import STANDARD, ModelDefaults
from longcat.v1 import edit_pb2

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 4.5


PRIORITY_NAMES = {edit_pb2.PRIORITY_LOW: "low", edit_pb2.PRIORITY_NORMAL: "normal", edit_pb2.PRIORITY_HIGH: "high"}


def priority_of(msg: edit_pb2.EditRequest) -> str:
    """``low`` / ``normal`` / ``high``; an unknown enum number is refused naming the field."""
    name = PRIORITY_NAMES.get(msg.priority)
    if name is None:
        from longcat.errors import InvalidArgument

        raise InvalidArgument(f"must be LOW, NORMAL or HIGH, got {msg.priority}", "priority")
    return name


def request_from_proto(msg: edit_pb2.EditRequest, defaults: ModelDefaults = STANDARD) -> EditRequest:
    """Unset steps / guidance take the served model's defaults (Edit-Turbo: 8 steps, no CFG)."""
    return EditRequest(
        image=msg.image, prompt=msg.prompt, negative_prompt=msg.negative_prompt, width=msg.width,
        height=msg.height, num_inference_steps=msg.num_inference_steps or defaults.num_inference_steps,
        guidance_scale=msg.guidance_scale if msg.HasField("guidance_scale") else defaults.guidance_scale,
        seed=msg.seed if msg.HasField("seed") else None,
        adapters=[AdapterRef(a.name, a.scale) for a in msg.adapters], truncate_prompt=msg.truncate_prompt,
        speed_preset=msg.speed_preset)
