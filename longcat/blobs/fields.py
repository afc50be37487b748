"""Bytes in Redis records (job hashes, event entries) -> a reference when they are large.

A record field ``name`` holds small bytes inline; large ones go to the blob store and the record holds
``name_blob`` = ``blob:<id>`` instead. Readers accept both, so records written before the blob store existed
(or by a writer without one) still read."""

from __future__ import annotations

import logging

from longcat.blobs.store import BlobMissing

log = logging.getLogger("longcat.blobs")

INLINE_MAX = 4096   # bytes kept inline in Redis: a small preview; anything larger is a blob
SUFFIX = "_blob"


def offload(blobs, fields: dict, name: str, data: bytes, ttl_s: float, inline_max: int = INLINE_MAX) -> dict:
    """Set ``fields[name]`` (small, or no store) or ``fields[name + "_blob"]`` (a new blob); returns ``fields``."""
    if blobs is None or len(data) <= inline_max:
        fields[name] = data
    else:
        fields[name + SUFFIX] = blobs.put(data, ttl_s)
    return fields


def ref_of(fields: dict, name: str) -> str:
    """The blob reference a record holds for ``name`` ('' when none); keys may be str or bytes."""
    v = fields.get(name + SUFFIX, fields.get((name + SUFFIX).encode(), b""))
    return v.decode() if isinstance(v, bytes) else str(v or "")


def resolve(blobs, fields: dict, name: str, missing: bytes = b"") -> bytes:
    """The bytes of ``name``: inline, or read from its blob; ``missing`` when the blob is gone (expired with
    its record's retention, or swept) or there is no store to read it from."""
    inline = fields.get(name, fields.get(name.encode()))
    if inline is not None:
        return inline if isinstance(inline, bytes) else str(inline).encode()
    ref = ref_of(fields, name)
    if not ref or blobs is None:
        return missing
    try:
        return blobs.get(ref)
    except (BlobMissing, ValueError) as exc:
        log.warning("blob unreadable", extra={"ref": ref[:80], "error": str(exc)})
        return missing
