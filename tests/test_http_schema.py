"""Property-based tests of the HTTP door from its own OpenAPI schema (schemathesis + hypothesis): hundreds of
generated requests (valid and invalid, schemathesis's two generation modes) against a real gateway process on a private Redis, no 5xx, and the
server healthy afterwards (HTTP and gRPC). Bounded: a fixed number of examples per operation, derandomized,
no shrinking deadline (a few seconds on a 2-core machine)."""

from __future__ import annotations

import uuid

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from longcat.launch import ServiceProcess
from longcat.rpc.channel import health_status, make_channel

EXAMPLES_PER_OPERATION = 20   # per operation and mode (valid, invalid): ~400 requests
SEEN: list[int] = []


@pytest.fixture(scope="module")
def gateway(redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("http-schema")
    gw = ServiceProcess("gateway", ["--redis-url", redis_server.url, "--namespace", f"fuzz-{uuid.uuid4().hex[:6]}",
                                    "--adapter-dir", str(root / "adapters"), "--data-root", str(root / "data"),
                                    "--output-root", str(root / "out"), "--callback-hosts", "127.0.0.1",
                                    "--max-upload-mb", "4"],
                        root / "logs", env={"LONGCAT_API_KEYS": ""})
    try:
        gw.wait_serving(120)
        yield gw
    finally:
        gw.stop()


def test_no_generated_request_gets_a_server_error(gateway):
    """Each operation of /openapi.json: hypothesis drives schemathesis's strategy for it (the pytest plugin's
    lazy fixtures are not used: one plain test, one loop, a fixed budget per operation)."""
    api = schemathesis.openapi.from_url(gateway.http_url + "/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    for op, mode in [(op, mode) for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]:
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call(timeout=30)
            SEEN.append(response.status_code)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            run()
        except Unsatisfiable:  # nothing in this operation can be made invalid (no parameters, say)
            assert mode == GenerationMode.NEGATIVE, op.label


def test_hundreds_of_requests_ran_and_the_server_is_healthy_after(gateway):
    print(f"{len(SEEN)} generated requests, statuses {sorted(set(SEEN))}")
    assert len(SEEN) >= 200, f"only {len(SEEN)} generated requests ran"
    assert all(code < 500 for code in SEEN)
    assert {400, 404} <= set(SEEN)  # invalid input was refused, naming nothing the server could not handle
    assert httpx.get(gateway.http_url + "/healthz", timeout=10).status_code == 200
    assert httpx.get(gateway.http_url + "/readyz", timeout=10).status_code == 200
    with make_channel(gateway.address) as ch:
        assert health_status(ch) == "SERVING"
    assert gateway.proc.poll() is None
