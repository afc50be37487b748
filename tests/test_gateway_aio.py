"""The gateway's asyncio door keeps the old semantics of its waiting calls: a blocking Edit whose caller goes
away (or whose deadline passes) cancels its job; WatchJob reports queue positions while QUEUED, resumes after
an event id, and ends at the terminal event; SIGTERM drains and exits. A real gateway and redis-server, no
denoiser: the jobs stay queued until cancelled."""

from __future__ import annotations

import signal
import threading
import uuid

import grpc
import httpx
import pytest

from longcat.launch import ServiceProcess
from longcat.rpc.channel import health_status, make_channel
from longcat.v1 import edit_pb2, edit_pb2_grpc, training_pb2, training_pb2_grpc
from tests.gateway_stack import request, rpc_error, wait_for


def start_gateway(redis_server, tmp_path, *args) -> ServiceProcess:
    ns = f"aio{uuid.uuid4().hex[:8]}"
    g = ServiceProcess("gateway", ["--redis-url", redis_server.url, "--namespace", ns,
                                   "--adapter-dir", str(tmp_path / "adapters"), *args], tmp_path)
    return g.wait_serving(120)


@pytest.fixture(scope="module")
def gateway(redis_server, tmp_path_factory):
    g = start_gateway(redis_server, tmp_path_factory.mktemp("gw-aio"))
    yield g
    g.stop()


@pytest.fixture(scope="module")
def stubs(gateway):
    channel = make_channel(gateway.address)
    yield edit_pb2_grpc.EditServiceStub(channel), training_pb2_grpc.TrainingServiceStub(channel)
    channel.close()


def job_with_request_id(training, rid: str):
    jobs = training.ListJobs(training_pb2.ListJobsRequest(kind=edit_pb2.EDIT, limit=1000), timeout=30).jobs
    return next((j for j in jobs if j.request_id == rid), None)


def test_a_blocking_edit_whose_caller_goes_away_cancels_its_job(stubs):
    edit, training = stubs
    rid = f"gone-{uuid.uuid4().hex}"
    call = edit.Edit.future(request(64, 2, request_id=rid), timeout=300)
    job = wait_for(lambda: job_with_request_id(training, rid), 60, "the blocking edit's job")
    assert job.state == edit_pb2.QUEUED
    call.cancel()
    wait_for(lambda: job_with_request_id(training, rid).state == edit_pb2.CANCELLED, 60,
             "the job of the caller that went away to be cancelled")


def test_a_blocking_edit_past_its_deadline_ends_and_cancels_its_job(stubs):
    edit, training = stubs
    rid = f"late-{uuid.uuid4().hex}"
    err = rpc_error(edit.Edit, request(64, 2, request_id=rid), timeout=3)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    wait_for(lambda: job_with_request_id(training, rid).state == edit_pb2.CANCELLED, 60,
             "the job of the caller whose deadline passed to be cancelled")


def watchers(gateway) -> float:
    line = next(x for x in gateway.metrics().splitlines() if x.startswith("longcat_gateway_watchers "))
    return float(line.split()[1])


def test_watch_reports_queue_positions_resumes_and_ends_at_the_terminal_event(gateway, stubs):
    edit, _ = stubs
    ahead = edit.SubmitEdit(request(64, 2), timeout=30)
    job = edit.SubmitEdit(request(64, 2), timeout=30)
    first = next(iter(edit.WatchJob(edit_pb2.WatchJobRequest(job_id=job.id), timeout=60)))
    assert first.state == edit_pb2.QUEUED and first.event_id
    # Resumed after its only event: nothing new is written while it waits, yet its position comes (with the
    # last real event id, so a later resume skips nothing), then the job ahead leaves and it moves up.
    events, done = [], threading.Event()

    def follow():
        for ev in edit.WatchJob(edit_pb2.WatchJobRequest(job_id=job.id, after_event_id=first.event_id),
                                timeout=120):
            events.append(ev)
        done.set()

    threading.Thread(target=follow, daemon=True).start()
    wait_for(lambda: any(e.queue_position for e in events), 60, "a queue position while QUEUED")
    assert watchers(gateway) >= 1  # operators see the waiting calls
    before = [e.queue_position for e in events if e.queue_position][-1]
    assert events[0].event_id == first.event_id and events[0].state == edit_pb2.QUEUED
    edit.CancelJob(edit_pb2.CancelJobRequest(job_id=ahead.id), timeout=30)
    wait_for(lambda: [e.queue_position for e in events if e.queue_position][-1] == before - 1, 60,
             "the position to move up once the job ahead left")
    edit.CancelJob(edit_pb2.CancelJobRequest(job_id=job.id), timeout=30)
    assert done.wait(60), "the stream did not end at the terminal event"
    assert events[-1].state == edit_pb2.CANCELLED and events[-1].job.state == edit_pb2.CANCELLED


def test_sigterm_stops_taking_calls_drains_and_exits(redis_server, tmp_path):
    g = start_gateway(redis_server, tmp_path, "--grace-s", "3")
    channel = make_channel(g.address)
    edit = edit_pb2_grpc.EditServiceStub(channel)
    training = training_pb2_grpc.TrainingServiceStub(channel)
    try:
        rid = f"drained-{uuid.uuid4().hex}"
        call = edit.Edit.future(request(64, 2, request_id=rid), timeout=300)
        job = wait_for(lambda: job_with_request_id(training, rid), 60, "the blocking edit's job")
        stream = edit.WatchJob(edit_pb2.WatchJobRequest(job_id=job.id), timeout=300)
        assert next(iter(stream)).state == edit_pb2.QUEUED
        g.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: health_status(channel) != "SERVING", 30, "health to stop answering SERVING")
        assert g.proc.wait(60) == 0, g.log()
        with pytest.raises(grpc.RpcError) as info:
            call.result(timeout=30)
        assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), info.value
    finally:
        channel.close()
        g.stop()
    # Its caller's wait was cut by the drain: the job was cancelled, not left to render for nobody.
    again = start_gateway(redis_server, tmp_path, "--namespace", g.cmd[g.cmd.index("--namespace") + 1])
    try:
        stub = training_pb2_grpc.TrainingServiceStub(make_channel(again.address))
        wait_for(lambda: job_with_request_id(stub, rid).state == edit_pb2.CANCELLED, 60, "the drained job cancelled")
    finally:
        again.stop()


def test_a_bad_resume_cursor_is_refused_and_harms_no_other_watcher(stubs):
    """Watchers share their Redis reads: one caller's junk event id must be refused at the door."""
    edit, _ = stubs
    job = edit.SubmitEdit(request(64, 2), timeout=30)
    stream = edit.WatchJob(edit_pb2.WatchJobRequest(job_id=job.id), timeout=60)
    first = next(stream)
    for junk in ("nonsense", "1-2-3", "9" * 30, "-1"):
        err = rpc_error(edit.WatchJob, edit_pb2.WatchJobRequest(job_id=job.id, after_event_id=junk), timeout=30)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("after_event_id:"), err
    edit.CancelJob(edit_pb2.CancelJobRequest(job_id=job.id), timeout=30)
    rest = list(stream)  # the first watcher still hears its job end
    assert first.state == edit_pb2.QUEUED and rest[-1].state == edit_pb2.CANCELLED


def test_sse_refuses_a_bad_last_event_id_before_the_stream_starts(gateway, stubs):
    edit, _ = stubs
    job = edit.SubmitEdit(request(64, 2), timeout=30)
    try:
        r = httpx.get(f"{gateway.http_url}/v1/jobs/{job.id}/events", headers={"Last-Event-ID": "nonsense"},
                      timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "Last-Event-ID", r.text
        with httpx.stream("GET", f"{gateway.http_url}/v1/jobs/{job.id}/events", timeout=60) as ok:
            assert ok.status_code == 200
            lines = ok.iter_lines()
            assert any(line.startswith("data:") for line in lines)  # its queued event, over the hub
    finally:
        edit.CancelJob(edit_pb2.CancelJobRequest(job_id=job.id), timeout=30)


def test_the_aio_door_implements_every_public_method():
    """The asyncio servicers replace the generated base classes' methods one by one: a method a proto gains
    (SetAdapterVisibility did) must be implemented here too, or it answers UNIMPLEMENTED."""
    from longcat.v1 import adapters_pb2
    from longcat.v1 import edit_pb2 as edit_desc
    from longcat.v1 import training_pb2 as training_desc
    from services.gateway import aio_servicers

    for cls, desc in ((aio_servicers.AioEditServicer, edit_desc.DESCRIPTOR.services_by_name["EditService"]),
                      (aio_servicers.AioTrainingServicer,
                       training_desc.DESCRIPTOR.services_by_name["TrainingService"]),
                      (aio_servicers.AioAdapterServicer, adapters_pb2.DESCRIPTOR.services_by_name["AdapterService"])):
        missing = [m.name for m in desc.methods if m.name not in vars(cls)]
        assert not missing, f"{cls.__name__} lacks {missing}"
