"""A job's large payloads in the blob store, Redis holding their references (``longcat/blobs``).

- the reference image of a queued edit: the gateway writes it before queueing and stores the request
  without it (job field ``image_blob``); the worker reads it back; once the job is terminal it expires with
  the request record (``result_ttl_s``), not at once: a Redis that loses its last second of writes (a
  crash before the append-only file's fsync) re-runs the job, which must still find its image.
- the result PNG: the worker writes it, the finish records ``result_blob``; the gateway reads it for GetJob,
  Edit and the HTTP result routes; it expires with the job record (``result_ttl_s``).
- large event images (previews, training validation and result images): ``<name>_blob`` in the event.

Every reader also accepts the inline bytes of records written without a blob store (or before it existed),
so nothing already accepted is lost by switching it on.
"""

from __future__ import annotations

import logging

from longcat.blobs import BlobError, BlobMissing, offload
from longcat.blobs.fields import INLINE_MAX

log = logging.getLogger("longcat.jobs.payloads")

IMAGE = "image_blob"    # job field: the reference image of an edit request stored without it
RESULT = "result_blob"  # job field: the result PNG


def stash_reference(blobs, msg, ttl_s: float) -> dict:
    """Move ``msg.image`` (an EditRequest) into the blob store; -> the job fields to record (``{}`` when there
    is no store or no image: the request then carries its bytes, as before)."""
    if blobs is None or not msg.image:
        return {}
    ref = blobs.put(msg.image, ttl_s)
    msg.ClearField("image")
    return {IMAGE: ref}


def load_reference(blobs, msg, view) -> None:
    """Put the job's reference image back into ``msg`` (an EditRequest read from the store). A request that
    carries its bytes (written without a blob store) is left as it is."""
    ref = view.extra.get(IMAGE, "")
    if msg.image or not ref:
        return
    from longcat.errors import NotFound

    if blobs is None:
        raise NotFound("the job's reference image is in a blob store this worker was not given (start it "
                       "with --blob-dir, the gateway's)", "image")
    try:
        msg.image = blobs.get(ref)
    except (BlobMissing, ValueError):
        raise NotFound("the job's reference image is no longer stored (it expired or was removed before a "
                       "worker could run the job); submit the edit again", "image") from None


def store_result(blobs, png: bytes, ttl_s: float) -> dict:
    """The result PNG as a blob; -> the job fields the finish records (``{}`` without a store)."""
    return {RESULT: blobs.put(png, ttl_s)} if blobs is not None else {}


def read_result(blobs, view) -> bytes | None:
    """The result PNG of a SUCCEEDED job recorded as a blob; None when it has none (an inline result).
    Raises BlobMissing (NOT_FOUND, with a clear message) when its bytes are gone."""
    ref = view.extra.get(RESULT, "")
    if not ref:
        return None
    if blobs is None:
        raise BlobMissing(f"job {view.id}'s result is in a blob store this gateway was not given (--blob-dir)",
                          "job_id")
    try:
        return blobs.get(ref)
    except (BlobMissing, ValueError):
        raise BlobMissing(f"job {view.id}'s result image is no longer stored (it expired or was removed)",
                          "job_id") from None


def offload_large(blobs, event: dict, ttl_s: float) -> dict:
    """An event's large byte fields (preview, validation and result images) -> blob references."""
    if blobs is None:
        return event
    out = {}
    for k, v in event.items():
        if isinstance(v, (bytes, bytearray)) and len(v) > INLINE_MAX:
            offload(blobs, out, k, bytes(v), ttl_s)
        else:
            out[k] = v
    return out


def release(blobs, fields: dict, *names: str, ttl_s: float | None = None) -> None:
    """Remove the blobs ``fields`` (a job's fields) refers to under ``names`` (``ttl_s``: let them expire that
    many seconds from now instead); best effort, their TTL is the backstop."""
    if blobs is None:
        return
    for name in names:
        ref = fields.get(name) or fields.get(name.encode()) or ""
        ref = ref.decode() if isinstance(ref, bytes) else ref
        if not ref:
            continue
        try:
            blobs.delete(ref) if ttl_s is None else blobs.expire(ref, ttl_s)
        except (BlobError, ValueError) as exc:
            log.warning("blob not removed; it expires by itself", extra={"ref": ref[:80], "error": str(exc)})
