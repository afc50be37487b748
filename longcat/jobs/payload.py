"""The fingerprint of a submission as the caller sent it, kept with its request_id: a retry with the same
request_id must carry the same payload (else ALREADY_EXISTS), so a reused id never silently answers with
another request's job."""

from __future__ import annotations

import hashlib

from google.protobuf.message import Message


def payload_hash(kind: str, request: Message) -> str:
    """sha256 of the kind and the message's deterministic serialization (map order fixed), taken before the
    gateway fills anything in (a resolved random seed would make every retry look different)."""
    digest = hashlib.sha256(kind.encode() + b"\0")
    digest.update(request.SerializeToString(deterministic=True))
    return digest.hexdigest()
