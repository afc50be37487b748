"""Speed preset names of the public contract (``EditRequest.speed_preset``) and their validation.

Torch-free on purpose: the gateway validates the field before queueing. What each preset does to the
transformer is :mod:`longcat.engine.caching`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass

from longcat.errors import InvalidArgument

EXACT = "exact"


@dataclass(frozen=True)
class CachePreset:
    name: str
    cache: str             # the diffusers hook it uses
    description: str


PRESETS: dict[str, CachePreset] = {
    EXACT: CachePreset(EXACT, "none", "no step cache: every block runs at every step"),
    "fast": CachePreset("fast", "FirstBlockCache", "skip the other blocks when the first block barely changes"),
    "taylor": CachePreset("taylor", "TaylorSeer", "forecast attention outputs between full steps"),
}
PRESET_NAMES = tuple(PRESETS)


def check_preset(name, field: str = "speed_preset") -> str:
    """'' or None -> ``exact``; an unknown name is a clear error naming the field."""
    if name is None or name == "":
        return EXACT
    if not isinstance(name, str) or name not in PRESETS:
        raise InvalidArgument(f"unknown speed preset {name!r}; use one of {', '.join(PRESET_NAMES)}", field)
    return name
