"""Multipart edit fields (OpenAI's ``/v1/images/edits`` names plus this stack's extensions) -> the public
``EditRequest`` the core validates. Only the HTTP spellings are handled here (``size`` "WxH", ``adapters``
"name:scale,..."); every rule about values is the core's (``longcat.api.edit.validate_request``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import File, Form, UploadFile

from longcat.errors import InvalidArgument
from longcat.v1 import common_pb2, edit_pb2

MAX_N = 4
SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")


@dataclass
class EditForm:
    image: bytes
    request: edit_pb2.EditRequest   # n = 1; the seed as given (unset = random)
    n: int
    response_format: str


def parse_size(size: str) -> tuple[int, int]:
    if not size or size.strip() == "auto":
        return 0, 0
    m = SIZE.match(size)
    if not m:
        raise InvalidArgument(f"{size!r} is not \"WIDTHxHEIGHT\" (e.g. \"1024x1024\") or \"auto\"", "size")
    return int(m.group(1)), int(m.group(2))


def parse_adapters(text: str) -> list[common_pb2.AdapterRef]:
    refs = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, scale = item.partition(":")
        try:
            weight = float(scale) if sep else 1.0
        except ValueError:
            raise InvalidArgument(f"{item!r}: the scale after ':' is not a number (\"name:scale,...\")",
                                  "adapters") from None
        refs.append(common_pb2.AdapterRef(name=name.strip(), scale=weight))
    return refs


def _fits(value: int, bits: int, field: str) -> None:
    """A number the message cannot hold is the caller's error, named, not the server's."""
    if not -(1 << bits) <= value < (1 << bits):
        raise InvalidArgument(f"{value} is out of range", field)


async def edit_form(
    image: UploadFile = File(..., description="The image to edit: PNG, JPEG or WebP."),
    prompt: str = Form(..., description="The edit instruction, e.g. \"make the sky purple\"."),
    n: int = Form(1, description="How many images (1-4); image i uses seed + i."),
    size: str = Form("auto", description="\"WIDTHxHEIGHT\" (multiples of 16) or \"auto\" (~1 MP, the input's "
                                         "aspect)."),
    response_format: str = Form("b64_json", description="\"b64_json\" or \"url\" (fetch it with the same key)."),
    user: str = Form("", description="Accepted for OpenAI compatibility; not used."),
    model: str = Form("", description="Accepted for OpenAI compatibility; the server's model answers."),
    negative_prompt: str = Form("", description="Extension: the negative prompt for guidance."),
    num_inference_steps: int = Form(0, description="Extension: denoising steps (0 = server default)."),
    guidance_scale: float | None = Form(None, description="Extension: classifier-free guidance (<= 1: off)."),
    seed: int | None = Form(None, description="Extension: noise seed (unset or -1 = random)."),
    adapters: str = Form("", description="Extension: LoRA adapters, \"name:scale,name2:scale\"."),
    speed_preset: str = Form("", description="Extension: \"exact\" (default) or \"fast\"."),
    preview_every: int = Form(0, description="Extension: a preview image every N steps in job events."),
    request_id: str = Form("", description="Extension: idempotency key (resubmitting returns the same job)."),
    callback_url: str = Form("", description="Jobs only: a URL the terminal event is POSTed to, signed "
                                             "(allow-listed hosts)."),
    callback_progress: bool = Form(False, description="Jobs only: POST progress events to callback_url too."),
) -> EditForm:
    if not 1 <= n <= MAX_N:
        raise InvalidArgument(f"must be 1 to {MAX_N}, got {n}", "n")
    if response_format not in ("b64_json", "url"):
        raise InvalidArgument(f"must be \"b64_json\" or \"url\", got {response_format!r}", "response_format")
    width, height = parse_size(size)
    for name, value in (("num_inference_steps", num_inference_steps), ("preview_every", preview_every)):
        _fits(value, 31, name)
    if seed is not None:
        _fits(seed, 63, "seed")
    data = await image.read()
    req = edit_pb2.EditRequest(image=data, prompt=prompt, negative_prompt=negative_prompt, width=width,
                               height=height, num_inference_steps=num_inference_steps,
                               adapters=parse_adapters(adapters), request_id=request_id,
                               speed_preset=speed_preset, preview_every=preview_every,
                               callback_url=callback_url, callback_progress=callback_progress)
    if guidance_scale is not None:
        req.guidance_scale = guidance_scale
    if seed is not None and seed != -1:
        req.seed = seed
    return EditForm(image=data, request=req, n=n, response_format=response_format)
