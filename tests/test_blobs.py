"""The blob store (longcat/blobs) and the job payloads kept in it (longcat/jobs/payloads.py), against a real
folder and a real redis-server: atomic writes, TTL and the sweeper, refused references, missing blobs."""

from __future__ import annotations

import io
import os
import threading
import time
import uuid

import pytest

from longcat.api.keys import Keys
from longcat.blobs import BlobMissing, LocalBlobStore, open_blob_store, parse_ref, resolve, start_sweeper
from longcat.errors import NotFound
from longcat.jobs import payloads
from longcat.jobs.store import JobStore
from longcat.v1 import edit_pb2

BIG = os.urandom(300_000)


@pytest.fixture
def blobs(tmp_path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def store(redis_server, blobs):
    s = JobStore(redis_server.client(), Keys(f"blobs-{uuid.uuid4().hex[:6]}"), result_ttl_s=600, blobs=blobs)
    yield s
    s.r.close()


def test_put_get_open_delete_round_trip(blobs):
    ref = blobs.put(BIG, ttl_s=60)
    blob_id = parse_ref(ref)
    path = blobs.path(ref)
    assert path == blobs.root / blob_id[:2] / blob_id[2:4] / blob_id  # sharded, random id
    assert blobs.get(ref) == BIG
    with blobs.open(ref) as f:
        assert f.read(10) == BIG[:10]
    assert blobs.put(io.BytesIO(BIG), 60) != ref and blobs.get(blobs.put(iter([b"a", b"b"]), 60)) == b"ab"
    assert not list((blobs.root / ".tmp").iterdir()), "a writer's temporary file was left behind"
    assert blobs.delete(ref) and not blobs.delete(ref)
    with pytest.raises(BlobMissing, match="no longer stored"):
        blobs.get(ref)


@pytest.mark.parametrize("ref", ["../../etc/passwd", "blob:../../../etc/passwd", "blob:" + "0" * 31,
                                 "blob:" + "A" * 32, "blob:" + "0" * 30 + "/x", "/tmp/x", "blob:", "",
                                 "blob:" + "0" * 32 + "\n", "blob:%2e%2e" + "0" * 26])
def test_references_that_could_leave_the_store_are_refused(blobs, ref):
    for op in (blobs.get, blobs.open, blobs.delete, lambda r: blobs.expire(r, 1)):
        with pytest.raises(ValueError, match="not a blob reference"):
            op(ref)
    # A record naming such a reference reads as missing, never as a file elsewhere.
    assert resolve(blobs, {"image_png_blob": ref}, "image_png") == b""


def test_expiry_and_the_sweeper(blobs):
    keep = blobs.put(b"keep", ttl_s=3600)
    gone = [blobs.put(BIG, ttl_s=0.5) for _ in range(3)]
    time.sleep(0.6)
    with pytest.raises(BlobMissing, match="expired"):  # expired, not yet swept: already unreadable
        blobs.get(gone[0])
    # A writer that died mid-write leaves a .part file: swept once it is an hour old, not before.
    stale = blobs.root / ".tmp" / f"{time.time_ns() - 2 * 3600 * 10**9}-{uuid.uuid4().hex}.part"
    fresh = blobs.root / ".tmp" / f"{time.time_ns()}-{uuid.uuid4().hex}.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    (blobs.root / "not-a-shard").mkdir()  # anything else in the folder is left alone
    assert blobs.sweep() == 3
    assert blobs.count() == 1 and blobs.get(keep) == b"keep"
    assert not stale.exists() and fresh.exists() and (blobs.root / "not-a-shard").exists()
    assert blobs.expire(keep, 0.2) and not blobs.expire(gone[0], 10)
    assert blobs.sweep(now=time.time() + 1) == 1 and blobs.count() == 0

    # The periodic sweeper (the gateway's thread) removes them by itself.
    stop = threading.Event()
    blobs.put(b"short", ttl_s=0.2)
    start_sweeper(blobs, 0.2, stop)
    try:
        deadline = time.monotonic() + 30
        while blobs.count() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert blobs.count() == 0
    finally:
        stop.set()
    assert start_sweeper(blobs, 0, stop) is None  # 0: off


def test_blob_dir_flag_values(tmp_path):
    assert open_blob_store(f"file://{tmp_path}").root == tmp_path.resolve()
    assert open_blob_store("~/x").root == (open_blob_store(os.path.expanduser("~/x")).root)
    for bad in ("s3://bucket/x", ""):
        with pytest.raises(ValueError, match="--blob-dir"):
            open_blob_store(bad)


def test_a_queued_edit_keeps_only_a_reference_in_redis(store, blobs):
    msg = edit_pb2.EditRequest(image=BIG, prompt="p", width=64, height=64)
    fields = payloads.stash_reference(blobs, msg, ttl_s=600)
    assert not msg.image and set(fields) == {payloads.IMAGE}
    job_id, created, _ = store.submit("edit", "alice", msg.SerializeToString(), fields=fields)
    assert created and len(store.r.get(store.k.request(job_id))) < 100
    view = store.get(job_id)
    back = edit_pb2.EditRequest.FromString(store.request_bytes(job_id))
    payloads.load_reference(blobs, back, view)
    assert back.image == BIG

    # Cancelled while queued: the reference image expires with the request record (result_ttl_s), not 600 s
    # after submission as written.
    assert blobs.path(fields[payloads.IMAGE]).stat().st_mtime > time.time() + 500
    store.result_ttl_s = 1
    assert store.cancel(job_id) == "CANCELLED"
    assert blobs.path(fields[payloads.IMAGE]).stat().st_mtime <= time.time() + 1
    time.sleep(1.1)
    assert blobs.sweep() == 1 and not blobs.exists(fields[payloads.IMAGE])


def test_a_missing_reference_fails_the_job_clearly(store, blobs):
    msg = edit_pb2.EditRequest(image=BIG, prompt="p")
    fields = payloads.stash_reference(blobs, msg, ttl_s=600)
    job_id, _, _ = store.submit("edit", "alice", msg.SerializeToString(), fields=fields)
    blobs.delete(fields[payloads.IMAGE])  # swept, or a volume emptied, while the job waited
    with pytest.raises(NotFound, match="reference image is no longer stored") as err:
        payloads.load_reference(blobs, edit_pb2.EditRequest.FromString(store.request_bytes(job_id)),
                                store.get(job_id))
    assert err.value.code == "NOT_FOUND" and err.value.field == "image"
    # A request stored with its bytes (before the blob store, or without one) still runs as it is.
    old = edit_pb2.EditRequest(image=b"inline", prompt="p")
    payloads.load_reference(blobs, old, store.get(job_id))
    assert old.image == b"inline"


def test_results_and_event_images_are_blobs_and_a_missing_result_says_so(store, blobs):
    job_id, _, _ = store.submit("edit", "alice", b"")
    token = "w:1"
    assert store.claim(job_id, token, 3)[0] == "RUNNING"
    assert store.progress(job_id, token, {"kind": "progress", "state": "RUNNING", "preview_png": BIG})
    assert store.progress(job_id, token, {"kind": "progress", "state": "RUNNING", "preview_png": b"tiny"})
    stored = store.set_result(job_id, BIG)
    assert set(stored) == {payloads.RESULT}
    assert store.finish(job_id, token, "SUCCEEDED", fields={"width": 64, "height": 64, **stored})
    assert not store.r.exists(store.k.result(job_id))
    events = [f for _, f in store.events(job_id)]
    previews = [resolve(blobs, f, "preview_png") for f in events if "preview_png" in f or "preview_png_blob" in f]
    assert previews == [BIG, b"tiny"]
    assert max(len(v) for f in events for v in f.values()) < 4096, "an event carries image bytes"
    assert store.to_proto(store.get(job_id)).result.image == BIG

    blobs.delete(stored[payloads.RESULT])
    job = store.to_proto(store.get(job_id))  # still readable (GetJob, ListJobs), with the reason
    assert job.state == edit_pb2.SUCCEEDED and not job.result.image
    assert "result image is no longer stored" in job.reason


def test_results_written_without_a_blob_store_still_read(redis_server, blobs):
    plain = JobStore(redis_server.client(), Keys(f"blobs-{uuid.uuid4().hex[:6]}"), result_ttl_s=600)
    job_id, _, _ = plain.submit("edit", "alice", edit_pb2.EditRequest(image=b"ref").SerializeToString())
    assert plain.claim(job_id, "w:1", 3)[0] == "RUNNING"
    assert plain.set_result(job_id, b"png") == {}
    assert plain.finish(job_id, "w:1", "SUCCEEDED")
    upgraded = JobStore(plain.r, plain.k, result_ttl_s=600, blobs=blobs)
    assert upgraded.to_proto(upgraded.get(job_id)).result.image == b"png"


def test_an_unwritable_store_is_unavailable_not_internal(tmp_path):
    (tmp_path / "file").write_bytes(b"")  # a file where the folder should be: every write fails
    broken = LocalBlobStore(tmp_path / "file" / "blobs")
    with pytest.raises(Exception) as err:
        broken.put(b"x", 60)
    assert err.value.code == "UNAVAILABLE" and "could not be written" in str(err.value)
    assert broken.sweep() == 0  # nothing there: nothing to do, no error
