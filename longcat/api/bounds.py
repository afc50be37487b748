"""Size bounds every door checks before any work: prompt characters (before tokenization or quote splitting),
reference image bytes, numbers a proto int32 / Redis integer must hold, and how much of a hostile value an
error message may echo. Cheap, torch-free checks; the engine's own rules (``longcat.api.edit``) come after."""

from __future__ import annotations

import dataclasses
from typing import Any

from longcat.errors import InvalidArgument, TooLarge

# 512 tokens (api.prompts.MAX_PROMPT_TOKENS) at a generous 16 characters a token: no prompt the model can
# read is refused by characters (truncate_prompt still truncates by tokens), yet tokenizing is bounded.
DEFAULT_MAX_PROMPT_CHARS = 512 * 16
# A reference image's encoded size: a 16 Mpx photo as JPEG is a few MB, as PNG ~25-50 MB; the model renders
# ~1 Mpx (at most --max-pixels), so 24 MiB leaves room for large lossless references.
DEFAULT_MAX_IMAGE_BYTES = 24 << 20
# A reference image's decoded size, read from its header before decoding: 4096x4096 (a 12 Mpx phone photo
# fits); the model downsizes any reference to the output area anyway.
DEFAULT_MAX_INPUT_PIXELS = 4096 * 4096

INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)  # seeds: any int64 (a random generator's seed, never a proto int32)
ECHO_CHARS = 64     # a hostile value is shown at most this long in an error message
# An error message as sent, UTF-8 bytes: gRPC percent-encodes it into a trailer (<= 3 bytes a byte), and
# clients refuse metadata over 8 KiB; HTTP bodies stay small too.
MAX_MESSAGE_BYTES = 1500


def shown(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters: errors name what was wrong without echoing it whole."""
    text = repr(value if not isinstance(value, (str, bytes)) else value[: limit + 1])
    return text if len(text) <= limit else text[:limit] + f"...({_length(value)})"


def _length(value: Any) -> str:
    return f"{len(value)} chars" if isinstance(value, str) else f"{len(value)} bytes" if isinstance(
        value, (bytes, bytearray)) else "cut"


def cap_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    data = message.encode("utf-8", "replace")
    return message if len(data) <= limit else data[:limit].decode("utf-8", "ignore") + "...(cut)"


def check_prompt_chars(prompt: str, field: str, limit: int = DEFAULT_MAX_PROMPT_CHARS) -> None:
    if isinstance(prompt, str) and len(prompt) > limit:
        raise InvalidArgument(f"is {len(prompt)} characters, over the limit of {limit} (the model reads at most "
                              "512 tokens)", field)


def check_image_bytes(data, field: str = "image", limit: int = DEFAULT_MAX_IMAGE_BYTES) -> None:
    if isinstance(data, (bytes, bytearray, memoryview)) and len(data) > limit:
        raise TooLarge(f"is {len(data)} bytes, over the limit of {limit} bytes", field)


def check_int(value, field: str, lo: int = INT32[0], hi: int = INT32[1]) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not lo <= value <= hi:
        raise InvalidArgument(f"must be between {lo} and {hi}, got {shown(value)}", field)


def clamp_int32(value: int) -> int:
    """A stored number shown in a proto int32 field (a job stored before these checks may hold more)."""
    return max(INT32[0], min(INT32[1], value))


def check_ints(obj, field: str, lo: int = INT32[0], hi: int = INT32[1]) -> None:
    """Every int inside a parsed config (dataclasses, lists, tuples, dicts) fits ``lo..hi`` (a proto int32,
    a Redis integer): a number the job cannot carry is refused at submission, not when the job runs."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            bounds = INT64 if f.name.endswith("seed") else (lo, hi)
            check_ints(getattr(obj, f.name), f"{field}.{f.name}", *bounds)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_ints(v, f"{field}[{i}]", lo, hi)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_ints(v, f"{field}.{k}", lo, hi)
    else:
        check_int(obj, field, lo, hi)


# A training job's config / dataloader JSON: a few KB in practice.
MAX_JSON_CHARS = 1 << 20


def check_json_chars(text: str, field: str, limit: int = MAX_JSON_CHARS) -> None:
    if len(text) > limit:
        raise InvalidArgument(f"is {len(text)} characters, over the limit of {limit}", field)
