"""API field names -> the CLI flags a user typed, so an error says ``--steps``, not ``num_inference_steps``."""

from __future__ import annotations

import re

# Request fields (engine and gateway name them the API's way) and the flag of `longcat edit` that sets them.
EDIT_FLAGS = {
    "image": "--image", "prompt": "--prompt", "negative_prompt": "--negative-prompt", "width": "--width",
    "height": "--height", "num_inference_steps": "--steps", "steps": "--steps", "guidance_scale": "--guidance",
    "guidance": "--guidance", "seed": "--seed", "adapters": "--adapter", "adapter": "--adapter",
    "precision": "--precision", "device": "--device", "model": "--model", "out": "--out",
}
COMMON_FLAGS = {"gateway": "--gateway", "api_key": "--api-key", "config": "--config",
                "dataloader": "--dataloader", "name": "--name", "model": "--model"}
_INDEXED = re.compile(r"^(\w+)\[(\d+)\](?:\.\w+)?$")


def flag_for(args, field: str | None) -> str | None:
    """The flag for ``field`` in this command, or None when the field is not one of its flags (a config key,
    say, which the user wrote as such)."""
    if not field:
        return None
    table = EDIT_FLAGS if getattr(args, "command", None) == "edit" else COMMON_FLAGS
    m = _INDEXED.match(field)
    if m and m.group(1) in table:  # adapters[1].name -> the 2nd --adapter
        return f"{table[m.group(1)]} (#{int(m.group(2)) + 1})"
    return table.get(field)
