"""The public gateway end to end: Redis, encoder, a denoiser worker and three gateways as real processes.

One stack for the module (namespace of its own on the session's private Redis): the gateway "main" with
auth off, "auth" with API keys (alice from --api-keys-file, bob from LONGCAT_API_KEYS), and "small" with
--max-queue 2; one worker, so a long job makes everything submitted after it wait in the queue.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid

import grpc
import httpx
import pytest

from longcat.blobs import LocalBlobStore
from longcat.jobs import payloads
from longcat.v1 import adapters_pb2, edit_pb2
from tests.blob_checks import assert_no_bytes_in_redis, noise_png
from tests.gateway_stack import (
    LONG_SIDE,
    LONG_STEPS,
    STATE,
    TERMINAL,
    Stack,
    Watcher,
    busy_worker,
    png_size,
    progress_steps,
    request,
    rpc_error,
    submit,
    terminal_events,
    wait_for,
    wait_job,
    watch,
)
from tests.procs import ROOT

pytestmark = pytest.mark.slow

ALICE = (("authorization", "Bearer key-alice"),)
BOB = (("authorization", "Bearer key-bob"),)
Q, R, OK, FAILED, CANCELLED = edit_pb2.QUEUED, edit_pb2.RUNNING, edit_pb2.SUCCEEDED, edit_pb2.FAILED, \
    edit_pb2.CANCELLED


@pytest.fixture(scope="module")
def stack(tiny_model_path, redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway-e2e")
    keys_file = root / "api-keys.txt"
    keys_file.write_text("# owner:key\nalice:key-alice\n")
    # One job in flight: these tests queue work behind a busy worker (tests/test_step_batching_e2e.py batches).
    s = Stack(tiny_model_path, root, redis_server, ns=f"e2e-{uuid.uuid4().hex[:6]}", worker_args=("--max-inflight", "1"))
    try:
        s.add_worker()
        s.add_gateway("main", ["--model", tiny_model_path], env={"LONGCAT_API_KEYS": ""})
        s.add_gateway("auth", ["--api-keys-file", str(keys_file)], env={"LONGCAT_API_KEYS": "bob:key-bob"})
        s.add_gateway("small", ["--max-queue", "2"], env={"LONGCAT_API_KEYS": ""})
        s.wait_serving()
        yield s
    finally:
        s.close()


@pytest.fixture
def stub(stack):
    return stack.edit("main")


def _idem_job(stack, request_id: str, owner: str = "anonymous") -> str:
    job_id = stack.r.get(stack.key("idem", owner, request_id))
    assert job_id, f"no job recorded for request_id {request_id!r}"
    return job_id.decode()


def _states(events) -> list[str]:
    """The job's states in order, repeats collapsed: e.g. ['QUEUED', 'RUNNING', 'SUCCEEDED']."""
    out = []
    for ev in events:
        if not out or out[-1] != STATE(ev.state):
            out.append(STATE(ev.state))
    return out


# --- 1. blocking Edit, and bad input -------------------------------------------------------------------------

def test_edit_returns_a_png_of_the_requested_size_with_seed_and_timings(stack, stub):
    res = stub.Edit(request((128, 96), 3, seed=7), timeout=180)
    assert png_size(res.image) == (128, 96)
    assert (res.width, res.height, res.seed) == (128, 96, 7)
    t = res.timings
    assert t.encode_s > 0 and t.denoise_s > 0 and t.decode_s > 0 and t.queued_s >= 0
    assert t.total_s + 1e-6 >= t.encode_s + t.denoise_s + t.decode_s
    job = stub.GetJob(edit_pb2.GetJobRequest(job_id=res.job_id), timeout=30)
    assert job.state == OK and job.result.image == res.image and job.attempts == 1 and job.total_steps == 3

    # Unset seed: the server picks one and reports it; the same seed again renders the same image.
    a = stub.Edit(request(64, 2, seed=None), timeout=180)
    again = stub.Edit(request(64, 2, seed=a.seed), timeout=180)
    assert a.seed > 0 and again.seed == a.seed and again.image == a.image


BAD_INPUT = [
    (dict(image=b"\x89PNG\r\n\x1a\n but not really"), "image"),
    (dict(image=b""), "image"),
    (dict(size=(100, 64)), "width"),
    (dict(size=(64, 0)), "height"),
    (dict(size=(8192, 8192)), "width"),
    (dict(steps=-1), "num_inference_steps"),
    (dict(steps=100000), "num_inference_steps"),
    (dict(guidance_scale=math.nan), "guidance_scale"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(prompt=""), "prompt"),
    (dict(prompt="purple " * 700), "prompt"),  # over 512 tokens: the gateway has the tokenizer
    (dict(seed=-5), "seed"),
    (dict(adapters=[("../etc", 1.0)]), "adapters[0].name"),
    (dict(adapters=[("style", math.inf)]), "adapters[0].scale"),
]


@pytest.mark.parametrize("method", ["Edit", "SubmitEdit"])
@pytest.mark.parametrize("change,field", BAD_INPUT, ids=[f for _, f in BAD_INPUT])
def test_bad_input_is_refused_naming_the_field_and_nothing_is_queued(stack, stub, method, change, field):
    change = dict(change)
    req = request(change.pop("size", 64), change.pop("steps", 2), **change)
    before = stack.created_and_queued()
    err = rpc_error(getattr(stub, method), req, timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err.details().startswith(field + ":"), err.details()
    assert stack.created_and_queued() == before  # no job record, nothing on the queue or the stream


def test_zero_steps_means_the_server_default(stack, stub):
    """Per edit.proto, num_inference_steps 0 is "server default (50)", not an error."""
    job = submit(stub, request(64, 0))
    assert job.total_steps == 50
    stub.CancelJob(edit_pb2.CancelJobRequest(job_id=job.id), timeout=30)
    assert wait_job(stub, job.id, TERMINAL, 120).state in (CANCELLED, OK)


def test_unknown_adapter_is_not_found_at_submission(stack, stub):
    rid = f"unknown-adapter-{uuid.uuid4().hex}"
    before = stack.created_and_queued()
    err = rpc_error(stub.Edit, request(64, 2, adapters=[("no-such-style", 1.0)], request_id=rid), timeout=180)
    assert err.code() == grpc.StatusCode.NOT_FOUND, err
    assert err.details().startswith("adapters[0].name:") and "no-such-style" in err.details()
    assert stack.r.get(stack.key("idem", "anonymous", rid)) is None  # the gateway queued nothing
    assert stack.created_and_queued() == before


# --- 2. SubmitEdit + WatchJob + GetJob -----------------------------------------------------------------------

def test_submit_watch_resume_and_get(stack, stub):
    with busy_worker(stub):
        job = submit(stub, request(64, 4, seed=11))
        assert job.state == Q and job.queue_position == 1 and job.total_steps == 4
        got = stub.GetJob(edit_pb2.GetJobRequest(job_id=job.id), timeout=30)
        assert got.state == Q and got.queue_position == 1
        live = Watcher(stub, job.id)
        live.start()
        wait_for(lambda: live.events, 60, "the QUEUED event")
    events = live.result(300)

    assert _states(events) == ["QUEUED", "RUNNING", "SUCCEEDED"], [str(e) for e in events]
    assert events[0].queue_position == 1
    assert progress_steps(events) == [1, 2, 3, 4]
    assert all(ev.progress.total == 4 for ev in events if ev.HasField("progress"))
    (final,) = terminal_events(events)
    assert final is events[-1] and final.job.state == OK and final.job.attempts == 1
    assert png_size(final.job.result.image) == (64, 64) and final.job.result.seed == 11
    ids = [ev.event_id for ev in events]
    assert len(set(ids)) == len(ids) and all(ids)

    # A new watcher from the start sees the same stored events; resuming replays only the later ones.
    assert [ev.event_id for ev in watch(stub, job.id)] == ids
    step2 = next(i for i, ev in enumerate(events) if ev.HasField("progress") and ev.progress.step == 2)
    resumed = watch(stub, job.id, after=ids[step2])
    assert [ev.event_id for ev in resumed] == ids[step2 + 1:]
    assert progress_steps(resumed) == [3, 4] and len(terminal_events(resumed)) == 1
    # Resuming after the terminal event: nothing more to send, and the stream ends (it does not hang).
    t0 = time.monotonic()
    assert watch(stub, job.id, after=ids[-1], timeout=60) == []
    assert time.monotonic() - t0 < 15

    got = stub.GetJob(edit_pb2.GetJobRequest(job_id=job.id), timeout=30)
    assert got.state == OK and got.result.image == final.job.result.image and got.attempts == 1
    assert got.created_at <= got.started_at <= got.finished_at


def test_unknown_job_is_not_found(stub):
    for call, req in [(stub.GetJob, edit_pb2.GetJobRequest(job_id="nope")),
                      (stub.WatchJob, edit_pb2.WatchJobRequest(job_id="nope")),
                      (stub.CancelJob, edit_pb2.CancelJobRequest(job_id="nope"))]:
        assert rpc_error(call, req, timeout=30).code() == grpc.StatusCode.NOT_FOUND


# --- 3. cancellation -------------------------------------------------------------------------------------------

def test_cancel_a_queued_job_is_immediate_and_it_never_runs(stack, stub):
    with busy_worker(stub):
        job = submit(stub, request(64, 2))
        assert job.state == Q
        t0 = time.monotonic()
        cancelled = stub.CancelJob(edit_pb2.CancelJobRequest(job_id=job.id), timeout=30)
        assert cancelled.state == CANCELLED and cancelled.error_code == "CANCELLED"
        assert time.monotonic() - t0 < 5
        assert stack.counters()[1] == 0  # off the queue at once
    # The worker reaches the cancelled entry after the long job and skips it: a job behind it still runs.
    after = stub.Edit(request(64, 2), timeout=180)
    assert after.image
    wait_for(lambda: stack.counters()[2] == 0, 60, "the stream to drain")
    events = watch(stub, job.id)
    assert _states(events) == ["QUEUED", "CANCELLED"] and not progress_steps(events)
    got = stub.GetJob(edit_pb2.GetJobRequest(job_id=job.id), timeout=30)
    assert got.state == CANCELLED and got.attempts == 0 and got.started_at == 0


def test_cancel_a_running_job_stops_between_steps(stack, stub):
    job = submit(stub, request(LONG_SIDE, LONG_STEPS))
    watch(stub, job.id, until=lambda ev: ev.HasField("progress") and ev.progress.step >= 2)
    t0 = time.monotonic()
    answer = stub.CancelJob(edit_pb2.CancelJobRequest(job_id=job.id), timeout=30)
    assert answer.state in (R, CANCELLED)  # requested: the worker stops at its next step
    final = wait_job(stub, job.id, TERMINAL, 120)
    assert final.state == CANCELLED and final.error_code == "CANCELLED"
    assert time.monotonic() - t0 < 30
    events = watch(stub, job.id)
    steps = progress_steps(events)
    assert 2 <= max(steps) < LONG_STEPS and len(terminal_events(events)) == 1
    # The worker is free again at once.
    assert stub.Edit(request(64, 2), timeout=60).image


# --- 4. idempotency --------------------------------------------------------------------------------------------

def test_resubmitting_the_same_request_id_returns_the_same_job(stack, stub):
    rid = f"idem-{uuid.uuid4().hex}"
    created = stack.counters()[0]
    a = submit(stub, request(64, 2, request_id=rid))
    b = submit(stub, request(64, 2, request_id=rid))
    res = stub.Edit(request(64, 2, request_id=rid), timeout=180)  # blocking Edit with the key: same job too
    c = submit(stub, request(64, 2, request_id=rid))
    assert a.id == b.id == res.job_id == c.id and a.request_id == rid
    assert c.state == OK and c.result.image == res.image
    assert stack.counters()[0] == created + 1  # one job record
    events = watch(stub, a.id)
    assert _states(events).count("RUNNING") == 1 and len(terminal_events(events)) == 1
    assert c.attempts == 1


# --- 5. API keys -------------------------------------------------------------------------------------------------

def test_auth_keys_and_owners(stack, stub):
    auth = stack.edit("auth")
    before = stack.created_and_queued()
    for md in (None, (("authorization", "Bearer wrong-key"),), (("authorization", "key-alice"),)):
        for call, req in [(auth.SubmitEdit, request()), (auth.Edit, request()),
                          (auth.GetJob, edit_pb2.GetJobRequest(job_id="x")),
                          (auth.WatchJob, edit_pb2.WatchJobRequest(job_id="x")),
                          (auth.CancelJob, edit_pb2.CancelJobRequest(job_id="x")),
                          (stack.adapters("auth").ListAdapters, adapters_pb2.ListAdaptersRequest())]:
            err = rpc_error(call, req, metadata=md, timeout=30)
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (md, err)
            assert "API key" in err.details()
    assert stack.created_and_queued() == before

    with busy_worker(stub):
        job = submit(auth, request(64, 2), metadata=ALICE)
        assert job.state == Q
        missing = rpc_error(auth.GetJob, edit_pb2.GetJobRequest(job_id="no-such-job"), metadata=BOB, timeout=30)
        for who, gateway in ((BOB, auth), (None, stub)):  # bob, and the anonymous owner of the open gateway
            for call, req in [(gateway.GetJob, edit_pb2.GetJobRequest(job_id=job.id)),
                              (gateway.WatchJob, edit_pb2.WatchJobRequest(job_id=job.id)),
                              (gateway.CancelJob, edit_pb2.CancelJobRequest(job_id=job.id))]:
                err = rpc_error(call, req, metadata=who, timeout=30)
                assert err.code() == grpc.StatusCode.NOT_FOUND, err
                assert err.details() == missing.details().replace("no-such-job", job.id)  # nothing leaked
        # Bob's cancel did nothing: alice's job is still waiting.
        assert auth.GetJob(edit_pb2.GetJobRequest(job_id=job.id), metadata=ALICE, timeout=30).state == Q
    events = watch(auth, job.id, metadata=ALICE)
    assert terminal_events(events)[0].job.state == OK
    assert auth.GetJob(edit_pb2.GetJobRequest(job_id=job.id), metadata=ALICE, timeout=30).state == OK
    assert auth.CancelJob(edit_pb2.CancelJobRequest(job_id=job.id), metadata=ALICE, timeout=30).state == OK

    # Alice can cancel her own queued job; bob (key from the environment) runs his own edit.
    with busy_worker(stub):
        mine = submit(auth, request(64, 2), metadata=ALICE)
        assert auth.CancelJob(edit_pb2.CancelJobRequest(job_id=mine.id), metadata=ALICE,
                              timeout=30).state == CANCELLED
    assert png_size(auth.Edit(request(64, 2), metadata=BOB, timeout=180).image) == (64, 64)
    stack.adapters("auth").ListAdapters(adapters_pb2.ListAdaptersRequest(), metadata=BOB, timeout=30)

    # Auth off: no metadata needed (and a stray key is ignored).
    assert stub.Edit(request(64, 2), timeout=180).image
    assert stub.Edit(request(64, 2), metadata=(("authorization", "Bearer whatever"),), timeout=180).image


# --- 9. backpressure ---------------------------------------------------------------------------------------------

def test_a_full_queue_answers_resource_exhausted_with_retry_after(stack, stub):
    small = stack.edit("small")
    with busy_worker(stub):
        a, b = submit(small, request()), submit(small, request())
        assert (a.queue_position, b.queue_position) == (1, 2)
        before = stack.created_and_queued()
        for call in (small.SubmitEdit, small.Edit):
            err = rpc_error(call, request(), timeout=30)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert "queue is full" in err.details()
            trailers = dict(err.trailing_metadata() or ())
            assert int(trailers["retry-after-ms"]) > 0, trailers
        assert stack.created_and_queued() == before
        # Room again as soon as a job leaves the queue.
        small.CancelJob(edit_pb2.CancelJobRequest(job_id=a.id), timeout=30)
        c = submit(small, request())
        assert c.queue_position == 2
        for j in (b, c):
            assert small.CancelJob(edit_pb2.CancelJobRequest(job_id=j.id), timeout=30).state == CANCELLED


# --- 10. deadlines -----------------------------------------------------------------------------------------------

def test_a_job_whose_deadline_passes_in_the_queue_is_dropped_not_run(stack, stub):
    rid = f"edit-deadline-{uuid.uuid4().hex}"
    with busy_worker(stub):
        job = stub.SubmitEdit(request(64, 2), timeout=3.0)  # the call's deadline is the job's
        assert job.state == Q
        t0 = time.monotonic()
        err = rpc_error(stub.Edit, request(64, 2, request_id=rid), timeout=2.0)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 10
        wait_for(lambda: time.time() > job.created_at + 4.0, 30, "the job's deadline to pass")
    final = wait_job(stub, job.id, TERMINAL, 120)
    assert final.state == FAILED and final.error_code == "DEADLINE_EXCEEDED", final
    assert "not run" in final.reason and final.started_at == 0
    events = watch(stub, job.id)
    assert _states(events) == ["QUEUED", "FAILED"] and not progress_steps(events)

    # The blocking Edit's job went with its caller: dropped, never run.
    edit_job = wait_job(stub, _idem_job(stack, rid), TERMINAL, 120)
    assert edit_job.state in (CANCELLED, FAILED) and edit_job.started_at == 0
    assert "RUNNING" not in _states(watch(stub, edit_job.id))


def test_a_running_job_stops_at_its_deadline(stack, stub):
    rid = f"edit-deadline-running-{uuid.uuid4().hex}"
    t0 = time.monotonic()
    err = rpc_error(stub.Edit, request(LONG_SIDE, LONG_STEPS, request_id=rid), timeout=5.0)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 15
    job = wait_job(stub, _idem_job(stack, rid), TERMINAL, 60)
    assert job.state in (FAILED, CANCELLED) and job.error_code in ("DEADLINE_EXCEEDED", "CANCELLED")
    assert max(progress_steps(watch(stub, job.id)) or [0]) < LONG_STEPS
    assert stub.Edit(request(64, 2), timeout=60).image  # the worker is free again


# --- 12. AdapterService --------------------------------------------------------------------------------------------

def test_adapter_service_and_edits_by_adapter_name(stack, stub, tiny_components):
    from tests.test_engine import _random_lora

    _random_lora(tiny_components.transformer, stack.adapter_dir / "style", seed=3)
    ad = stack.adapters()
    listed = ad.ListAdapters(adapters_pb2.ListAdaptersRequest(), timeout=30).adapters
    assert "style" in [a.name for a in listed]
    info = ad.GetAdapter(adapters_pb2.GetAdapterRequest(name="style"), timeout=30)
    assert (info.name, info.rank, info.format) == ("style", 4, "diffusers") and info.size_bytes > 0
    assert rpc_error(ad.GetAdapter, adapters_pb2.GetAdapterRequest(name="missing"),
                     timeout=30).code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(ad.GetAdapter, adapters_pb2.GetAdapterRequest(name="../x"), timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("name:")

    base = stub.Edit(request(64, 2, seed=5), timeout=180)
    styled = stub.Edit(request(64, 2, seed=5, adapters=[("style", 1.0)]), timeout=180)
    again = stub.Edit(request(64, 2, seed=5), timeout=180)
    assert styled.image != base.image and again.image == base.image

    deleted = ad.DeleteAdapter(adapters_pb2.DeleteAdapterRequest(name="style"), timeout=30)
    assert deleted.name == "style" and not (stack.adapter_dir / "style").exists()
    assert "style" not in [a.name for a in ad.ListAdapters(adapters_pb2.ListAdaptersRequest(),
                                                           timeout=30).adapters]
    err = rpc_error(stub.Edit, request(64, 2, seed=5, adapters=[("style", 1.0)]), timeout=180)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "style" in err.details()
    assert rpc_error(ad.DeleteAdapter, adapters_pb2.DeleteAdapterRequest(name="style"),
                     timeout=30).code() == grpc.StatusCode.NOT_FOUND
    assert stub.Edit(request(64, 2, seed=5), timeout=180).image == base.image  # the worker is back to base


# --- 13. a client written against the .proto files alone ------------------------------------------------------

CLIENT = r"""
import json, sys
gen, address, image_path = sys.argv[1:4]
sys.path.insert(0, gen)
import grpc
from longcat.v1 import edit_pb2, edit_pb2_grpc
import longcat
assert longcat.__file__.startswith(gen), longcat.__file__  # the generated package, not the project's
with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
    res = edit_pb2_grpc.EditServiceStub(ch).Edit(edit_pb2.EditRequest(
        image=open(image_path, "rb").read(), prompt="make the sky purple", width=96, height=64,
        num_inference_steps=2, guidance_scale=1.0, seed=3), timeout=180)
print(json.dumps({"png": res.image[:8].hex(), "size": [res.width, res.height], "seed": res.seed,
                  "job_id": res.job_id, "modules": edit_pb2.__file__}))
"""


def test_a_client_generated_from_the_protos_alone(stack, tmp_path):
    gen = tmp_path / "gen"
    gen.mkdir()
    protos = ROOT / "protos"
    files = [str(p.relative_to(protos)) for p in sorted(protos.rglob("*.proto"))]
    out = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(protos), f"--python_out={gen}",
                          f"--grpc_python_out={gen}", *files], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for pkg in (gen / "longcat", gen / "longcat" / "v1"):
        (pkg / "__init__.py").touch()
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    run = subprocess.run([sys.executable, "-I", str(script), str(gen), stack.gateways["main"].address,
                          str(ROOT / "examples" / "sample.png")], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["png"] == b"\x89PNG\r\n\x1a\n".hex() and got["size"] == [96, 64] and got["seed"] == 3
    assert got["modules"].startswith(str(gen)) and got["job_id"]


# ---- large payloads out of Redis: images and results in the blob store (longcat/blobs, --blob-dir) -----------

BIG_REFERENCE = noise_png(768)  # ~1.7 MB


def test_reference_and_result_live_in_the_blob_store_and_missing_blobs_say_so(stack):
    stub = stack.edit()
    blobs = LocalBlobStore(stack.blob_dir)
    with busy_worker(stub, side=256, steps=200):  # both jobs wait in the queue meanwhile
        job = submit(stub, request(64, 2, image=BIG_REFERENCE, preview_every=1))
        lost = submit(stub, request(64, 2, image=BIG_REFERENCE, seed=2))
        assert job.state == lost.state == edit_pb2.QUEUED
        ref = stack.job_field(job.id, payloads.IMAGE)
        assert blobs.get(ref) == BIG_REFERENCE  # the reference image, byte for byte, in the blob store
        assert_no_bytes_in_redis(stack.r, stack.ns)  # ... and the queued edits' requests without it
        assert blobs.delete(stack.job_field(lost.id, payloads.IMAGE))  # a volume emptied while it waited

    done = wait_job(stub, job.id, [edit_pb2.SUCCEEDED, edit_pb2.FAILED], timeout=300)
    assert done.state == edit_pb2.SUCCEEDED, done.reason
    assert png_size(done.result.image) == (64, 64)
    assert blobs.get(stack.job_field(job.id, payloads.RESULT)) == done.result.image
    # A finished job's reference image expires with its request record (--result-ttl-s, 3600 s here), not
    # --blob-ttl-s (7 days) after submission.
    assert blobs.path(ref).stat().st_mtime < time.time() + 3600 + 60, "a finished job's reference was kept"
    assert not stack.r.exists(stack.key("job", job.id, "result"))
    assert_no_bytes_in_redis(stack.r, stack.ns)

    # The job whose reference image vanished: FAILED at once, NOT_FOUND, saying why (not INTERNAL, no retry).
    failed = wait_job(stub, lost.id, [edit_pb2.SUCCEEDED, edit_pb2.FAILED], timeout=300)
    assert failed.state == edit_pb2.FAILED and failed.error_code == "NOT_FOUND", failed
    assert "reference image is no longer stored" in failed.reason
    assert int(stack.job_field(lost.id, "attempts")) == 1

    # Every door reads the result from the blob store: HTTP, and the blocking Edit.
    http = stack.gateways["main"].http_url
    resp = httpx.get(f"{http}/v1/jobs/{job.id}/result", timeout=60)
    assert resp.status_code == 200 and resp.content == done.result.image
    result = stub.Edit(request(64, 2, image=BIG_REFERENCE, seed=1), timeout=300)
    assert result.image == done.result.image  # same request, same seed: same image
    assert_no_bytes_in_redis(stack.r, stack.ns)

    # A result whose blob is gone: the job still reads, and says where its image went.
    assert blobs.delete(stack.job_field(job.id, payloads.RESULT))
    again = stub.GetJob(edit_pb2.GetJobRequest(job_id=job.id), timeout=30)
    assert again.state == edit_pb2.SUCCEEDED and not again.result.image
    assert "result image is no longer stored" in again.reason
    resp = httpx.get(f"{http}/v1/jobs/{job.id}/result", timeout=60)
    assert resp.status_code == 404 and "expired" in resp.text, resp.text
    assert stack.health() == "SERVING"
