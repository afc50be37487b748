"""Adapter references of an edit, resolved at submission: every ``adapters[i].name`` the caller wrote
(``name``, ``name@vN``, ``owner/name[@vN]``) becomes the canonical ``owner/name@vN`` it may see, before the job
is queued. The worker then loads exactly that immutable version: a later publish (or another tenant's adapter
of the same name) never changes a queued job's image, and the denoisers' loaded-adapter LRU keys on it."""

from __future__ import annotations

from longcat.adapters.registry import AdapterRegistry, Viewer
from longcat.errors import InvalidArgument
from longcat.v1 import edit_pb2


def viewer_of(caller) -> Viewer:
    """With API keys off there are no tenants: everyone sees and manages everything (as before owners)."""
    return Viewer(caller.owner, admin=caller.admin or not caller.authenticated)


def resolve_edit_adapters(registry: AdapterRegistry | None, caller, msg: edit_pb2.EditRequest) -> None:
    """Rewrite ``msg.adapters[i].name`` in place; NOT_FOUND naming ``adapters[i].name`` when one is unknown or
    not visible to ``caller`` (nothing is queued then)."""
    if registry is None:  # a gateway without an adapter registry: the workers check names
        return
    viewer, seen = viewer_of(caller), set()
    for i, ref in enumerate(msg.adapters):
        field = f"adapters[{i}].name"
        canonical = registry.resolve(ref.name, viewer, field).ref
        if canonical in seen:
            raise InvalidArgument(f"adapter {ref.name!r} is listed twice (as {canonical})", field)
        seen.add(canonical)
        ref.name = canonical
