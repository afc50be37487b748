"""Large payloads (reference images, result PNGs, training images) kept out of Redis: Redis holds only a
short reference (``blob:<32 hex>``), the bytes live in a :class:`BlobStore` (a local folder or a shared volume
now; an object store later, behind the same interface)."""

from longcat.blobs.fields import INLINE_MAX, offload, resolve
from longcat.blobs.local import LocalBlobStore, open_blob_store, start_sweeper
from longcat.blobs.store import BlobError, BlobMissing, BlobStore, is_ref, parse_ref

__all__ = ["INLINE_MAX", "BlobError", "BlobMissing", "BlobStore", "LocalBlobStore", "is_ref", "offload",
           "open_blob_store", "parse_ref", "resolve", "start_sweeper"]
