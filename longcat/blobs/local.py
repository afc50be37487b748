"""A :class:`~longcat.blobs.store.BlobStore` on a local folder or a shared volume (NFS, EFS, a compose volume).

Layout: ``ROOT/ab/cd/<32 hex>`` (random ids, two levels of 256 shards), written to ``ROOT/.tmp/`` and
renamed into place, so a reader sees a whole blob or none. A blob's expiry time is its file's mtime (set
before the rename): expiring is one ``utime``, the sweeper needs only a ``stat``, and nothing else is kept.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Iterable

from longcat.blobs.store import PREFIX, BlobError, BlobMissing, parse_ref

log = logging.getLogger("longcat.blobs")

TMP = ".tmp"
STALE_TMP_S = 3600.0   # a half-written file older than this belongs to a writer that died: swept
_CHUNK = 1 << 20


class LocalBlobStore:
    def __init__(self, root: str | os.PathLike, fsync: bool = True):
        self.root = Path(os.path.expanduser(str(root))).resolve()
        self.fsync = fsync  # on by default: a reference Redis acknowledged must not point at a lost file

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def path(self, ref: str) -> Path:
        blob_id = parse_ref(ref)  # ValueError for anything that is not blob:<32 hex>: no way out of the root
        return self.root / blob_id[:2] / blob_id[2:4] / blob_id

    # --- writing ----------------------------------------------------------------------------------------

    def put(self, data: bytes | BinaryIO | Iterable[bytes], ttl_s: float) -> str:
        blob_id = uuid.uuid4().hex
        ref = PREFIX + blob_id
        final = self.path(ref)
        tmp_dir = self.root / TMP
        tmp = tmp_dir / f"{time.time_ns()}-{blob_id}.part"
        expires = time.time() + max(0.0, float(ttl_s))
        try:
            tmp_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as f:
                for chunk in _chunks(data):
                    f.write(chunk)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            os.utime(tmp, (expires, expires))
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        except OSError as exc:
            _discard(tmp)
            raise BlobError(f"the blob store at {self.root} could not be written: {exc.strerror or exc}") from exc
        except BaseException:
            _discard(tmp)
            raise
        return ref

    def expire(self, ref: str, ttl_s: float) -> bool:
        when = time.time() + max(0.0, float(ttl_s))
        try:
            os.utime(self.path(ref), (when, when))
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise BlobError(f"the blob store at {self.root} could not be written: {exc.strerror or exc}") from exc

    def delete(self, ref: str) -> bool:
        return _unlink(self.path(ref))

    # --- reading ----------------------------------------------------------------------------------------

    def open(self, ref: str) -> BinaryIO:
        path = self.path(ref)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise BlobMissing(f"{ref} is no longer stored (expired or removed)", "blob") from None
        except OSError as exc:
            raise BlobError(f"the blob store at {self.root} could not be read: {exc.strerror or exc}") from exc
        if os.fstat(f.fileno()).st_mtime < time.time():  # expired, not yet swept: gone all the same
            f.close()
            raise BlobMissing(f"{ref} is no longer stored (expired)", "blob")
        return f

    def get(self, ref: str) -> bytes:
        with self.open(ref) as f:
            try:
                return f.read()
            except OSError as exc:
                raise BlobError(f"the blob store at {self.root} could not be read: {exc.strerror or exc}") from exc

    def exists(self, ref: str) -> bool:
        try:
            return self.path(ref).stat().st_mtime >= time.time()
        except FileNotFoundError:
            return False

    # --- expiry -----------------------------------------------------------------------------------------

    def sweep(self, now: float | None = None) -> int:
        """Remove every blob whose expiry time has passed (and writers' leftovers); -> blobs removed."""
        now = time.time() if now is None else now
        removed = 0
        for shard in _dirs(self.root, 2):
            for sub in _dirs(shard, 2):
                for entry in _scan(sub):
                    try:
                        if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < now:
                            removed += _unlink(Path(entry.path))
                    except FileNotFoundError:
                        continue  # removed meanwhile (another sweeper, a delete)
        for entry in _scan(self.root / TMP):
            born = entry.name.split("-", 1)[0]
            if born.isdigit() and int(born) / 1e9 < now - STALE_TMP_S:
                _unlink(Path(entry.path))
        return removed

    def count(self) -> int:
        return sum(1 for shard in _dirs(self.root, 2) for sub in _dirs(shard, 2) for _ in _scan(sub))


def open_blob_store(spec: str) -> LocalBlobStore:
    """``--blob-dir``: a folder, or ``file:///path``. (An object store would be another scheme here.)"""
    spec = (spec or "").strip()
    if spec.startswith("file://"):
        spec = spec[len("file://"):]
    elif "://" in spec:
        raise ValueError(f"--blob-dir: unsupported blob store {spec.split('://')[0]!r}:// (a folder or file:///path)")
    if not spec:
        raise ValueError("--blob-dir: empty (a folder for reference images and results)")
    return LocalBlobStore(spec)


def start_sweeper(store, period_s: float, stop: threading.Event, name: str = "blob-sweeper"):
    """Sweep ``store`` every ``period_s`` seconds until ``stop`` is set; None when ``period_s`` <= 0 (off)."""
    if period_s <= 0:
        return None

    def loop() -> None:
        while not stop.wait(period_s):
            try:
                removed = store.sweep()
                if removed:
                    log.info("expired blobs removed", extra={"removed": removed, "store": str(store)})
            except Exception:  # noqa: BLE001 - a failed pass is retried at the next period
                log.exception("blob sweep failed")

    t = threading.Thread(target=loop, name=name, daemon=True)
    t.start()
    return t


def _chunks(data) -> Iterable[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
    elif hasattr(data, "read"):
        while chunk := data.read(_CHUNK):
            yield chunk
    else:
        yield from data


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EISDIR, errno.EPERM):
            return False
        raise BlobError(f"could not remove {path.name}: {exc.strerror or exc}") from exc


def _discard(path: Path) -> None:
    """Remove a half-written file if it is there; quiet (the sweeper removes what this could not)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def _dirs(parent: Path, width: int) -> list[Path]:
    """The shard folders of ``parent`` (two hex digits); anything else there is left alone."""
    return [Path(e.path) for e in _scan(parent)
            if len(e.name) == width and all(c in "0123456789abcdef" for c in e.name) and e.is_dir(follow_symlinks=False)]


def _scan(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []
