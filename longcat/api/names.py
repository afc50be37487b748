"""Names and file conventions clients and services agree on: adapter/dataset/owner names, LoRA file names,
the modules the official LoRA recipe trains. Pure data; the adapter code (torch) reads them from here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from longcat.errors import InvalidArgument

# One path component, no hidden files, no ``..``: a request-supplied name can never leave ``root``.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# The modules the official LongCat-Image-Edit LoRA recipe trains (suffixes, PEFT ``target_modules`` style).
OFFICIAL_TARGET_MODULES = [
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "ff.net.0.proj",
    "ff.net.2",
    "ff_context.net.0.proj",
    "ff_context.net.2",
]

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"


def validate_name(name: object, field: str = "adapters.name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise InvalidArgument(
            f"adapter name {name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit, and no '..'", field)
    return name


# -- adapter references: ``[owner/]name[@vN]`` -----------------------------------------------------------------
# A request names an adapter as ``name`` (the caller's own first, then one another tenant shares), ``name@v3``
# (that version), ``owner/name`` or ``owner/name@v3``. The gateway rewrites every reference into the canonical
# ``owner/name@vN`` before queueing, so a worker loads exactly one immutable version. A plain ``name`` is also
# what a folder placed by hand in the adapter store answers to (no owner, no versions).
_REF_RE = re.compile(r"^(?:(?P<owner>[^/@]*)/)?(?P<name>[^/@]*)(?:@(?P<version>[^/@]*))?$")
_VERSION_RE = re.compile(r"^v?([1-9][0-9]{0,8})$")


@dataclass(frozen=True)
class AdapterRef:
    name: str
    owner: str = ""   # "" = not qualified (resolved by the gateway) or a hand-placed folder
    version: int = 0  # 0 = the latest

    @property
    def canonical(self) -> bool:
        return bool(self.owner and self.version)

    def __str__(self) -> str:
        return f"{self.owner + '/' if self.owner else ''}{self.name}{f'@v{self.version}' if self.version else ''}"


def parse_adapter_ref(ref: object, field: str = "adapters.name") -> AdapterRef:
    """``[owner/]name[@vN]`` -> :class:`AdapterRef`, or INVALID_ARGUMENT naming ``field``."""
    m = _REF_RE.match(ref) if isinstance(ref, str) and len(ref) <= 160 else None
    if m is None:
        raise InvalidArgument(f"adapter reference {str(ref)[:80]!r} is invalid: use name, name@vN, owner/name or "
                              "owner/name@vN", field)
    name = validate_name(m["name"], field)
    owner = m["owner"]
    if owner is not None and (not NAME_RE.match(owner) or ".." in owner):
        raise InvalidArgument(f"owner {owner[:80]!r} in adapter reference {ref[:80]!r} is invalid", field)
    version = 0
    if m["version"] is not None:
        v = _VERSION_RE.match(m["version"])
        if v is None:
            raise InvalidArgument(f"version {m['version'][:20]!r} in adapter reference {ref[:80]!r} is invalid: "
                                  "use @vN (N >= 1)", field)
        version = int(v[1])
    return AdapterRef(name, owner or "", version)


def validate_adapter_ref(ref: object, field: str = "adapters.name") -> str:
    parse_adapter_ref(ref, field)
    return ref  # type: ignore[return-value]
