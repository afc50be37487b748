"""Speed presets through the stack: gateway validation, the queue, and a denoiser worker that applies and
removes the step cache per job (an exact job after a cached one is byte-identical to the exact job alone)."""

from __future__ import annotations

import uuid

import grpc
import pytest

from longcat.v1 import edit_pb2
from tests.gateway_stack import Stack, request, rpc_error, submit, wait_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tiny_model_path, redis_server, tmp_path_factory):
    from longcat.cli.main import main

    root = tmp_path_factory.mktemp("presets-e2e")
    record = root / "quality.json"
    # Only 'taylor' is measured: 'fast' has no record, so the worker must refuse it.
    assert main(["quality", "--model", tiny_model_path, "--device", "cpu", "--presets", "taylor", "--steps", "4",
                 "--size", "64", "--probes", "1", "--record", str(record), "--json"]) == 0
    s = Stack(tiny_model_path, root, redis_server, ns=f"presets-{uuid.uuid4().hex[:6]}",
              worker_args=("--quality-record", str(record), "--min-psnr-db", "30"))
    try:
        s.add_worker()
        s.add_gateway("main", ["--model", tiny_model_path], env={"LONGCAT_API_KEYS": ""})
        s.wait_serving()
        yield s
    finally:
        s.close()


def _edit(stub, preset: str) -> bytes:
    req = request(64, 6, guidance_scale=4.5, seed=11, speed_preset=preset)
    return stub.Edit(req, timeout=300).image


def test_exact_after_a_cached_job_is_byte_identical_to_exact_alone(stack):
    stub = stack.edit("main")
    alone = _edit(stub, "")
    cached = _edit(stub, "taylor")
    assert cached[:8] == b"\x89PNG\r\n\x1a\n"
    assert _edit(stub, "exact") == alone


def test_unmeasured_preset_fails_the_job_naming_the_field(stack):
    stub = stack.edit("main")
    job = submit(stub, request(64, 2, speed_preset="fast"))
    done = wait_job(stub, job.id, (edit_pb2.SUCCEEDED, edit_pb2.FAILED))
    assert done.state == edit_pb2.FAILED and done.error_code == "INVALID_ARGUMENT"
    assert "speed_preset" in done.reason and "no recorded drift" in done.reason, done.reason


def test_unknown_preset_is_refused_at_the_gateway(stack):
    before = stack.created_and_queued()
    err = rpc_error(stack.edit("main").SubmitEdit, request(64, 2, speed_preset="warp"), timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("speed_preset:")
    assert stack.created_and_queued() == before
