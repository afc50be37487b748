"""Large payloads out of Redis, on a real stack (Redis, encoder, a denoiser worker, the gateway as processes):
a large reference image and the result never enter Redis as bytes, the gateway serves results from the blob
store (GetJob, Edit, HTTP), terminal jobs release their reference image, and a job whose blob is gone fails
(or reads) with a clear reason, never INTERNAL."""

from __future__ import annotations

import io
import time
import uuid

import httpx
import numpy as np
import pytest
from PIL import Image

from longcat.blobs import LocalBlobStore
from longcat.jobs import payloads
from longcat.v1 import edit_pb2
from tests.gateway_stack import Stack, busy_worker, png_size, request, submit, wait_job

pytestmark = pytest.mark.slow

FEW_KB = 4096 + 512   # the largest value a Redis key, hash field, stream field or member may hold here


def _noise_png(side: int) -> bytes:
    """An incompressible PNG (random pixels): ~3 bytes a pixel, 768 px -> ~1.7 MB."""
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


BIG = _noise_png(768)


@pytest.fixture(scope="module")
def stack(tiny_model_path, redis_server, tmp_path_factory):
    s = Stack(tiny_model_path, tmp_path_factory.mktemp("blobs-e2e"), redis_server, ns=f"blob-{uuid.uuid4().hex[:6]}",
              worker_args=("--max-inflight", "1"))
    try:
        s.add_worker()
        s.add_gateway("main", ["--blob-sweep-s", "1"], env={"LONGCAT_API_KEYS": ""})
        s.wait_serving()
        yield s
    finally:
        s.close()


def largest_values(stack) -> list[tuple[int, str]]:
    """(size, where) of the largest values under the stack's namespace: strings, hash fields, stream entry
    fields, set / sorted set members."""
    r, out = stack.r, []
    for key in r.scan_iter(match=f"{stack.ns}:*", count=1000):
        kind, name = r.type(key).decode(), key.decode()
        if kind == "string":
            out.append((r.strlen(key), name))
        elif kind == "hash":
            out += [(r.hstrlen(key, f), f"{name}[{f.decode()}]") for f in r.hkeys(key)]
        elif kind == "stream":
            out += [(len(v), f"{name}/{eid.decode()}[{f.decode()}]") for eid, fields in r.xrange(key)
                    for f, v in fields.items()]
        elif kind in ("set", "zset"):
            members = r.smembers(key) if kind == "set" else r.zrange(key, 0, -1)
            out += [(len(m), name) for m in members]
    return sorted(out, reverse=True)


def assert_no_bytes_in_redis(stack) -> None:
    top = largest_values(stack)
    assert top and top[0][0] < FEW_KB, f"image bytes in Redis: {top[:3]}"


def test_reference_and_result_live_in_the_blob_store_not_in_redis(stack):
    stub = stack.edit()
    blobs = LocalBlobStore(stack.blob_dir)
    with busy_worker(stub, side=256, steps=200):
        job = submit(stub, request(64, 2, image=BIG, preview_every=1))
        assert job.state == edit_pb2.QUEUED
        ref = stack.job_field(job.id, payloads.IMAGE)
        assert blobs.get(ref) == BIG  # the reference image, byte for byte, in the blob store
        assert_no_bytes_in_redis(stack)  # ... and a queued edit's request without it
    done = wait_job(stub, job.id, [edit_pb2.SUCCEEDED, edit_pb2.FAILED], timeout=300)
    assert done.state == edit_pb2.SUCCEEDED, done.reason
    assert png_size(done.result.image) == (64, 64)
    assert blobs.get(stack.job_field(job.id, payloads.RESULT)) == done.result.image
    # A finished job's reference image expires with its request record (--result-ttl-s, 3600 s here), not
    # --blob-ttl-s (7 days) after submission.
    assert blobs.path(ref).stat().st_mtime < time.time() + 3600 + 60, "a finished job's reference was kept"
    assert not stack.r.exists(stack.key("job", job.id, "result"))
    assert_no_bytes_in_redis(stack)

    # Every door reads the result from the blob store: HTTP, and the blocking Edit.
    resp = httpx.get(f"{stack.gateways['main'].http_url}/v1/jobs/{job.id}/result", timeout=60)
    assert resp.status_code == 200 and resp.content == done.result.image
    result = stub.Edit(request(64, 2, image=BIG, seed=1), timeout=300)
    assert result.image == done.result.image  # same request, same seed: same image
    assert_no_bytes_in_redis(stack)


def test_a_job_whose_reference_blob_is_gone_fails_with_a_clear_reason(stack):
    stub = stack.edit()
    blobs = LocalBlobStore(stack.blob_dir)
    with busy_worker(stub, side=256, steps=200):
        job = submit(stub, request(64, 2, image=BIG))
        assert blobs.delete(stack.job_field(job.id, payloads.IMAGE))  # a volume emptied while it waited
    failed = wait_job(stub, job.id, [edit_pb2.SUCCEEDED, edit_pb2.FAILED], timeout=300)
    assert failed.state == edit_pb2.FAILED and failed.error_code == "NOT_FOUND", failed
    assert "reference image is no longer stored" in failed.reason
    assert int(stack.job_field(job.id, "attempts")) == 1  # failed at once: no retry can bring it back

    # A result whose blob is gone: the job still reads, and says where its image went.
    ok = wait_job(stub, submit(stub, request(64, 2)).id, edit_pb2.SUCCEEDED, timeout=300)
    assert blobs.delete(stack.job_field(ok.id, payloads.RESULT))
    again = stub.GetJob(edit_pb2.GetJobRequest(job_id=ok.id), timeout=30)
    assert again.state == edit_pb2.SUCCEEDED and not again.result.image
    assert "result image is no longer stored" in again.reason
    resp = httpx.get(f"{stack.gateways['main'].http_url}/v1/jobs/{ok.id}/result", timeout=60)
    assert resp.status_code == 404, resp.text
    assert stack.health() == "SERVING"
