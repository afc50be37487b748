"""Optional API keys: ``authorization: Bearer <key>`` metadata -> the caller's owner name.

Keys come from a file (JSON ``{"<key>": "<owner>"}`` or lines ``owner:key``) and/or ``LONGCAT_API_KEYS``
(``owner:key,owner2:key2``). With no keys configured, everyone is the owner "anonymous".

Admins are owners named by the gateway's ``--admin-owners`` (comma-separated): their keys may see, change the
visibility of, and delete every tenant's adapters. With keys off there are no tenants and everyone may.
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path

from longcat.errors import Unauthenticated
from longcat.logs import bind_job
from services.gateway.core import Caller

ANONYMOUS = "anonymous"


def _parse_pairs(text: str) -> dict[str, str]:
    keys = {}
    for item in text.replace(",", "\n").splitlines():
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        owner, sep, key = item.partition(":")
        if not sep or not owner or not key:
            raise ValueError(f"API key entries are owner:key, got {item!r}")
        keys[key.strip()] = owner.strip()
    return keys


class ApiKeys:
    def __init__(self, keys: dict[str, str] | None = None, admins: frozenset[str] | set[str] = frozenset()):
        self.keys = dict(keys or {})
        self.admins = frozenset(admins)

    @classmethod
    def load(cls, path: str | None = None, env: str | None = None, admins: str = "") -> "ApiKeys":
        keys: dict[str, str] = {}
        if path:
            text = Path(path).read_text()
            keys.update(json.loads(text) if text.lstrip().startswith("{") else _parse_pairs(text))
        env = os.environ.get("LONGCAT_API_KEYS", "") if env is None else env
        if env:
            keys.update(_parse_pairs(env))
        return cls(keys, {a.strip() for a in admins.split(",") if a.strip()})

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def owner_for(self, authorization: str) -> str:
        """An ``authorization`` header value (``Bearer <key>``; any door) -> the caller's owner name."""
        if not self.enabled:
            return ANONYMOUS
        token = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        for known, owner in self.keys.items():  # constant-time compare against every key
            if token and hmac.compare_digest(known.encode(), token.encode()):
                return owner
        raise Unauthenticated("a valid API key is required (metadata 'authorization: Bearer <key>')")

    def owner(self, context) -> str:
        """The gRPC door: the ``authorization`` metadata of the call."""
        return self.owner_for(_authorization(context))

    def caller(self, context) -> Caller:
        header = _authorization(context)
        return self.caller_for(header)

    def caller_for(self, authorization: str) -> Caller:
        """Any door: the ``authorization`` header value -> the :class:`Caller` (401 when keys are on and it is
        missing or wrong)."""
        key = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        owner = self.owner_for(authorization)
        bind_job(owner=owner)  # every log line of this call names its tenant (longcat.logs)
        return Caller(owner, authenticated=self.enabled, key=key if self.enabled else "",
                      admin=self.enabled and owner in self.admins)


def _authorization(context) -> str:
    header = ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            header = value
    return header
