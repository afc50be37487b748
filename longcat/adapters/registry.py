"""The adapter registry: adapters owned per tenant, versioned, with a visibility; metadata in Redis, weights in
the shared adapter store folder.

* An adapter is ``owner/name``; each publish (an upload, a training run) adds version N+1, written once into
  the store and never rewritten, so a reference pinned to ``owner/name@vN`` always loads the same weights.
* Visibility is per adapter (all its versions): ``private`` (the owner only; the default), ``shared`` (every
  authenticated tenant may list, describe and use it in edits) or ``public`` (also download its weights).
  The owner or an admin sets it. Admins see and may delete everything.
* A folder placed by hand in the store (``root/<name>/``) is an operator's adapter: no owner, public, one
  unversioned copy, addressed by its plain name.

Redis keys (under the namespace's ``adapters`` key): ``:ver`` hash ``owner/name@vN`` -> the version's JSON,
``:vis`` hash ``owner/name`` -> visibility, ``:seq`` hash ``owner/name`` -> the last version number handed out.
The store is the truth about which versions exist (Redis may lose metadata; a version then lists as private).
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

from longcat.adapters.header import describe
from longcat.adapters.store import ADAPTER_FILES, AdapterStorage
from longcat.api.keys import Keys
from longcat.api.names import NAME_RE, AdapterRef, parse_adapter_ref, validate_name
from longcat.errors import AdapterNotFound, AlreadyExists, InvalidArgument, PermissionDenied

VISIBILITIES = ("private", "shared", "public")
ANONYMOUS = "anonymous"


@dataclass
class AdapterInfo:
    name: str
    rank: int = 0
    alpha: float = 0.0
    format: str = ""
    size_bytes: int = 0
    created_at: float = 0.0
    job_id: str = ""
    owner: str = ""
    version: int = 0             # 0: a hand-placed folder (unversioned)
    visibility: str = "public"
    versions: list[int] = field(default_factory=list)  # every stored version of this adapter, oldest first

    @property
    def ref(self) -> str:
        """The canonical reference a worker loads: ``owner/name@vN`` (a hand-placed folder: its name)."""
        return str(AdapterRef(self.name, self.owner, self.version)) if self.version else self.name


@dataclass(frozen=True)
class Viewer:
    """Who asks, as far as visibility goes."""

    owner: str = ANONYMOUS
    admin: bool = False

    def sees(self, owner: str, visibility: str) -> bool:
        return self.admin or owner == self.owner or visibility in ("shared", "public")

    def may_download(self, owner: str, visibility: str) -> bool:
        return self.admin or owner == self.owner or visibility == "public"

    def may_manage(self, owner: str) -> bool:
        return self.admin or owner == self.owner


class AdapterRegistry:
    def __init__(self, client: redis.Redis, store: AdapterStorage, keys: Keys = Keys()):
        self.r = client
        self.store = store
        self.key = keys.adapters  # also the pre-versioning hash: name -> info of hand-placed/older adapters
        self.ver, self.vis, self.seq = f"{self.key}:ver", f"{self.key}:vis", f"{self.key}:seq"

    # ---- publishing: always a new version of the publisher's own adapter ----

    def publish(self, name: str, source: str | Path, owner: str = "", job_id: str = "") -> AdapterInfo:
        """Copy the LoRA folder or file ``source`` into the store as the next version of ``owner/name``.

        Never replaces anything: another owner's ``name`` is another adapter, and an existing version is never
        rewritten. A training job published again (a redelivery) gets its earlier version back."""
        validate_name(name, "adapter_name")
        owner = validate_name(owner or ANONYMOUS, "owner")
        src = Path(source)
        if not src.exists():
            raise AdapterNotFound(f"no LoRA file or folder at {str(src)!r}", "adapter")
        if job_id:
            for v in reversed(self.store.versions(owner, name)):
                info = self._version(AdapterRef(name, owner, v))
                if info is not None and info.job_id == job_id:
                    return self._with_versions(info)
        files = [src] if src.is_file() else [p for p in src.iterdir() if p.name in ADAPTER_FILES]
        base = f"{owner}/{name}"
        while True:
            version = int(self.r.hincrby(self.seq, base, 1))
            known = self.store.versions(owner, name)
            if known and version <= known[-1]:  # Redis lost its counter: continue after the stored versions
                self.r.hset(self.seq, base, known[-1])
                continue
            ref = AdapterRef(name, owner, version)
            try:
                stored = self.store.put(str(ref), files)
                break
            except AlreadyExists:  # another publisher took this number meanwhile: take the next
                continue
        lora = describe(self.store, str(ref), "adapter")
        info = AdapterInfo(name=name, rank=lora.rank, alpha=float(lora.alpha), format=lora.format,
                           size_bytes=stored.size_bytes, created_at=time.time(), job_id=job_id, owner=owner,
                           version=version, visibility=self._visibility(owner, name))
        self.r.hset(self.ver, str(ref), json.dumps(_record(info)))
        return self._with_versions(info)

    @contextlib.contextmanager
    def claim(self, name: str, ttl_s: int = 600, owner: str = ""):
        """Hold ``owner/name`` for one writer (an upload): a second upload of it meanwhile is refused."""
        base = f"{owner}/{validate_name(name, 'name')}" if owner else validate_name(name, "name")
        key, token = f"{self.key}:claim:{base}", uuid.uuid4().hex
        if not self.r.set(key, token, nx=True, ex=ttl_s):
            raise AlreadyExists(f"adapter {name!r} is being uploaded by another request", "name")
        try:
            yield
        finally:
            if self.r.get(key) == token.encode():
                self.r.delete(key)

    # ---- reading: resolve a reference as a viewer may see it ----

    def resolve(self, ref: str, viewer: Viewer = Viewer(), field: str = "name") -> AdapterInfo:
        """``[owner/]name[@vN]`` -> that version, if ``viewer`` may see it; else NOT_FOUND naming ``field``.

        A plain ``name`` is the viewer's own adapter first, then the one other owners share (ambiguous when
        several do: qualify it), then a hand-placed folder. No version = the latest."""
        parsed = parse_adapter_ref(ref, field)
        if parsed.owner:
            candidates = [parsed.owner]
        else:
            own = [viewer.owner] if NAME_RE.match(viewer.owner) and self.store.versions(viewer.owner, parsed.name) \
                else []
            candidates = own or [o for o in self._owners_of(parsed.name)
                                 if viewer.sees(o, self._visibility(o, parsed.name))]
            if not candidates and self.store.exists(parsed.name) and not parsed.version:
                return self._hand_placed(parsed.name, field)
            if len(candidates) > 1:
                raise InvalidArgument(f"adapter {parsed.name!r} is shared by several owners "
                                      f"({', '.join(candidates[:5])}): name it as owner/{parsed.name}", field)
        for owner in candidates:
            if not viewer.sees(owner, self._visibility(owner, parsed.name)):
                break
            versions = self.store.versions(owner, parsed.name)
            version = parsed.version or (versions[-1] if versions else 0)
            if version in versions:
                info = self._version(AdapterRef(parsed.name, owner, version)) or self._described(
                    AdapterRef(parsed.name, owner, version), field)
                info.visibility = self._visibility(owner, parsed.name)
                info.versions = versions
                return info
        raise AdapterNotFound(f"no adapter {ref!r}", field)

    def exists(self, name: str, owner: str = "") -> bool:
        """Whether ``owner`` has an adapter ``name`` (no owner: a hand-placed folder ``name``)."""
        return bool(self.store.versions(owner, name)) if owner else self.store.exists(name)

    def get(self, name: str, field: str = "name", viewer: Viewer = Viewer(admin=True)) -> AdapterInfo:
        return self.resolve(name, viewer, field)

    def list(self, viewer: Viewer = Viewer(admin=True)) -> list[AdapterInfo]:
        """The latest version of every adapter ``viewer`` may see (its ``versions`` lists them all)."""
        out = []
        latest: dict[tuple[str, str], int] = {}
        for ref in self.store.owned():
            latest[(ref.owner, ref.name)] = max(ref.version, latest.get((ref.owner, ref.name), 0))
        for (owner, name), version in sorted(latest.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            if viewer.sees(owner, self._visibility(owner, name)):
                with contextlib.suppress(AdapterNotFound, InvalidArgument):
                    out.append(self.resolve(f"{owner}/{name}@v{version}", viewer))
        for name in self.store.list():
            with contextlib.suppress(AdapterNotFound, InvalidArgument):
                out.append(self._hand_placed(name, "name"))
        return sorted(out, key=lambda a: (a.name, a.owner))

    # ---- managing: the owner or an admin ----

    def set_visibility(self, ref: str, visibility: str, viewer: Viewer, field: str = "name") -> AdapterInfo:
        if visibility not in VISIBILITIES:
            raise InvalidArgument(f"visibility must be one of {', '.join(VISIBILITIES)}, got {visibility!r}",
                                  "visibility")
        info = self.resolve(ref, viewer, field)
        if not info.version:
            raise InvalidArgument(f"adapter {info.name!r} was placed in the store by hand: it is public", field)
        if not viewer.may_manage(info.owner):
            raise PermissionDenied(f"adapter {ref!r} belongs to {info.owner!r}: only its owner or an admin "
                                   "changes its visibility", field)
        self.r.hset(self.vis, f"{info.owner}/{info.name}", visibility)
        info.visibility = visibility
        return info

    def delete(self, name: str, owner: str | None = None, field: str = "name",
               viewer: Viewer | None = None) -> AdapterInfo:
        """Delete ``name@vN`` (that version) or ``name`` (every version). ``owner`` (the pre-versioning API):
        the caller, None = anyone may. Only the adapter's owner or an admin deletes."""
        viewer = viewer or (Viewer(admin=True) if owner is None else Viewer(owner))
        parsed = parse_adapter_ref(name, field)
        info = self.resolve(name, viewer, field)
        if not info.version:  # hand-placed: its recorded publisher (pre-versioning), an admin, or open gateways
            if info.owner and not viewer.may_manage(info.owner) or not info.owner and not viewer.admin:
                raise PermissionDenied(f"adapter {name!r} was placed in the store by hand: only an admin "
                                       "deletes it", field)
            self.r.hdel(self.key, info.name)
            self.store.delete(info.name)
            return info
        if not viewer.may_manage(info.owner):
            raise PermissionDenied(f"adapter {name!r} belongs to {info.owner!r}: only its owner or an admin "
                                   "deletes it", field)
        base = f"{info.owner}/{info.name}"
        if parsed.version:
            self.store.delete(info.ref)
            self.r.hdel(self.ver, info.ref)
            info.versions = [v for v in info.versions if v != info.version]
        else:
            self.store.delete(base)
            self.r.hdel(self.ver, *[f"{base}@v{v}" for v in info.versions])
            info.versions = []
        if not info.versions:
            self.r.hdel(self.vis, base)  # a later adapter of this name starts private again
        return info

    # ---- internals ----

    def _visibility(self, owner: str, name: str) -> str:
        raw = self.r.hget(self.vis, f"{owner}/{name}")
        return raw.decode() if raw else "private"

    def _owners_of(self, name: str) -> list[str]:
        return sorted({ref.owner for ref in self.store.owned() if ref.name == name})

    def _version(self, ref: AdapterRef) -> AdapterInfo | None:
        raw = self.r.hget(self.ver, str(ref))
        if raw is None or not self.store.exists(str(ref)):
            return None
        data = json.loads(raw)
        return AdapterInfo(**{k: v for k, v in data.items() if k in AdapterInfo.__dataclass_fields__})

    def _with_versions(self, info: AdapterInfo) -> AdapterInfo:
        info.versions = self.store.versions(info.owner, info.name)
        return info

    def _described(self, ref: AdapterRef, field: str) -> AdapterInfo:
        """A version whose metadata Redis lost: described from its file."""
        stored = self.store.get(str(ref), field)
        lora = describe(self.store, str(ref), field)
        return AdapterInfo(name=ref.name, rank=lora.rank, alpha=float(lora.alpha), format=lora.format,
                           size_bytes=stored.size_bytes, created_at=stored.modified_at, owner=ref.owner,
                           version=ref.version)

    def _hand_placed(self, name: str, field: str) -> AdapterInfo:
        raw = self.r.hget(self.key, name)  # an adapter published before versioning records its publisher here
        if raw is not None:
            data = json.loads(raw)
            info = AdapterInfo(**{k: v for k, v in data.items() if k in AdapterInfo.__dataclass_fields__})
            info.version, info.visibility, info.versions = 0, "public", []
            return info
        stored = self.store.get(name, field)
        lora = describe(self.store, name, field)
        return AdapterInfo(name=name, rank=lora.rank, alpha=float(lora.alpha), format=lora.format,
                           size_bytes=stored.size_bytes, created_at=stored.modified_at)


def _record(info: AdapterInfo) -> dict:
    """What Redis keeps per version (visibility and the version list live elsewhere)."""
    data = asdict(info)
    data.pop("versions")
    data.pop("visibility")
    return data
