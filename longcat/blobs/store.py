"""The blob store interface and its references. Torch-free, Redis-free: the gateway, workers and trainer
all use it."""

from __future__ import annotations

import re
from typing import BinaryIO, Iterable, Protocol

from longcat.errors import NotFound, Unavailable

PREFIX = "blob:"
_ID = re.compile(r"[0-9a-f]{32}")


class BlobError(Unavailable):
    """The store could not be read or written (a volume missing, a disk full): transient, retried."""


class BlobMissing(NotFound):
    """The reference is well formed but its bytes are gone (expired, swept, deleted)."""


def parse_ref(ref: str | bytes) -> str:
    """``blob:<32 lowercase hex>`` -> the id. Anything else (a path, ``..``, a separator, another length) is
    refused, so a reference read back from Redis can never name a file outside the store."""
    ref = ref.decode("ascii", "replace") if isinstance(ref, bytes) else str(ref)
    blob_id = ref[len(PREFIX):] if ref.startswith(PREFIX) else None
    if blob_id is None or not _ID.fullmatch(blob_id):
        raise ValueError(f"not a blob reference: {ref[:80]!r}")
    return blob_id


def is_ref(value) -> bool:
    try:
        parse_ref(value)
        return True
    except ValueError:
        return False


class BlobStore(Protocol):
    """Write-once blobs with an expiry time. ``put`` returns a reference (``blob:<id>``), the only thing a
    caller stores elsewhere; ``sweep`` removes what has expired."""

    def put(self, data: bytes | BinaryIO | Iterable[bytes], ttl_s: float) -> str: ...

    def get(self, ref: str) -> bytes: ...           # BlobMissing when gone (or expired)

    def open(self, ref: str) -> BinaryIO: ...       # the same, as a file to stream

    def expire(self, ref: str, ttl_s: float) -> bool: ...   # a new expiry, from now; False when gone

    def delete(self, ref: str) -> bool: ...

    def sweep(self, now: float | None = None) -> int: ...   # -> blobs removed
