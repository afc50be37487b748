"""Observability on a real stack (Redis, gateway, encoder, denoiser, Celery trainer; tiny model): every log line
of a job names the job and its tenant, and one trace follows a job gateway -> queue -> worker -> encoder (and
gateway -> Celery -> trainer -> encoder), received by a real OTLP/HTTP endpoint in this process."""

from __future__ import annotations

import gzip
import json
import signal
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest
import redis
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from longcat.client import LongCatClient
from longcat.launch import ServiceProcess
from longcat.training.sample_data import write_pairs
from longcat.v1 import edit_pb2, edit_pb2_grpc
from tests.gateway_stack import request, wait_for

NS = "observability"
KEY, TENANT = "key-alice", "alice"
AUTH = [("authorization", f"Bearer {KEY}")]
# The client's own trace: the gateway's span must continue it.
CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class OtlpReceiver:
    """A tiny OTLP/HTTP trace endpoint: decodes every ExportTraceServiceRequest into flat span dicts."""

    def __init__(self):
        self.spans: list[dict] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._add(trace_service_pb2.ExportTraceServiceRequest.FromString(body), self.path)
                out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _add(self, req, path: str) -> None:
        assert path == "/v1/traces", path
        self.requests += 1
        for rs in req.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append({
                        "service": service, "name": s.name, "trace": s.trace_id.hex(), "id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(), "kind": s.kind,
                        "attrs": {a.key: a.value.string_value for a in s.attributes}})

    def find(self, service: str, name: str, **attrs) -> list[dict]:
        return [s for s in list(self.spans) if s["service"] == service and s["name"] == name
                and all(s["attrs"].get(k) == v for k, v in attrs.items())]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class ObservedStack:
    def __init__(self, root, model, redis_url, otlp_url):
        self.data, self.out, adapters, self.logs = root / "data", root / "out", root / "adapters", root / "logs"
        for d in (self.data, self.out, adapters, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url, "OTEL_BSP_SCHEDULE_DELAY": "100",
               "LONGCAT_LOG_FORMAT": "json", "LONGCAT_API_KEYS": f"{TENANT}:{KEY}"}
        shared = ["--redis-url", redis_url, "--namespace", NS, "--adapter-dir", str(adapters)]
        roots = ["--data-root", str(self.data), "--output-root", str(self.out)]
        self.encoder = ServiceProcess("encoder", ["--model", model], self.logs, env)
        self.denoiser = ServiceProcess("denoiser", ["--model", model, *shared, "--encoder", self.encoder.address],
                                       self.logs, env)
        self.gateway = ServiceProcess("gateway", ["--model", model, *shared, *roots], self.logs, env)
        self.trainer = ServiceProcess("trainer", ["--model", model, *shared, *roots, "--encoder",
                                                  self.encoder.address], self.logs, env)
        self.services = {"encoder": self.encoder, "denoiser": self.denoiser, "gateway": self.gateway,
                         "trainer": self.trainer}
        for svc in self.services.values():
            svc.wait_serving(240)
        self.channel = grpc.insecure_channel(self.gateway.address)
        self.edit = edit_pb2_grpc.EditServiceStub(self.channel)
        self.client = LongCatClient(self.gateway.address, api_key=KEY)

    def lines(self, service: str, start: float, end: float) -> list[dict]:
        """The service's log lines stamped within [start, end] (epoch seconds)."""
        out = []
        for raw in self.services[service].log_path.read_text(errors="replace").splitlines():
            line = json.loads(raw)  # every line is JSON: a non-JSON line fails the test, as it should
            ts = datetime.strptime(line["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
            if start <= ts <= end:
                out.append(line)
        return out

    def close(self):
        self.client.close()
        self.channel.close()
        stops = [threading.Thread(target=svc.stop, args=(signal.SIGTERM, 30)) for svc in self.services.values()]
        for t in stops:  # side by side: each drains on its own
            t.start()
        for t in stops:
            t.join()


@pytest.fixture(scope="module")
def receiver():
    r = OtlpReceiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_path, redis_server, receiver):
    s = ObservedStack(tmp_path_factory.mktemp("observed"), tiny_model_path, redis_server.url, receiver.url)
    yield s
    s.close()


def _window_lines(stack, services, run) -> tuple[object, dict]:
    """Run a job to its end on the quiet stack; every service's log lines meanwhile (+2 s for the last ones)."""
    start = time.time() - 0.002
    result = run()
    time.sleep(2.0)
    end = time.time()
    return result, {svc: stack.lines(svc, start, end) for svc in services}


@pytest.fixture(scope="module")
def edited(stack):
    def run():
        meta = [*AUTH, ("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")]
        result = stack.edit.Edit(request(64, 2), timeout=300, metadata=meta)
        return result.job_id
    return _window_lines(stack, ("gateway", "denoiser", "encoder"), run)


@pytest.fixture(scope="module")
def trained(stack, edited):  # after the edit: the two jobs' windows do not overlap
    write_pairs(stack.data / TENANT / "ds", count=2, size=(64, 64), seed=0)
    config = {"model_type": "lora", "model_family": "longcat_image", "model_flavour": "edit",
              "base_model_precision": "no_change", "max_train_steps": 3, "train_batch_size": 1,
              "output_dir": "runs/observed", "lora_rank": 4, "checkpointing_steps": 2, "validation_steps": None,
              "num_validation_images": 0, "aspect_bucket_alignment": 64, "embeddings_source": "encoder_service",
              "encoder_address": stack.encoder.address}
    dataloader = [{"id": "edit-images", "type": "local", "instance_data_dir": "ds/edits",
                   "caption_strategy": "textfile", "resolution": 64, "cache_dir_vae": "cache/ds/edit",
                   "conditioning_data": ["ref-images"]},
                  {"id": "ref-images", "type": "local", "instance_data_dir": "ds/refs", "caption_strategy": None,
                   "resolution": 64, "cache_dir_vae": "cache/ds/ref"}]

    def run():
        job = stack.client.train(config, dataloader, name="observed", upload="never")
        final = list(stack.client.watch(job.id))[-1].job
        assert final.state == edit_pb2.SUCCEEDED, final.reason
        return job.id
    return _window_lines(stack, ("gateway", "trainer", "encoder"), run)


def _assert_every_line_names(lines_by_service: dict, job_id: str) -> None:
    for service, lines in lines_by_service.items():
        assert lines, f"{service} logged nothing while it handled job {job_id}: the check would prove nothing"
        for line in lines:
            named = line.get("job_id") == job_id or job_id in (line.get("job_ids") or [])
            assert named and line.get("tenant") == TENANT, f"{service}: a line without the job or tenant: {line}"


def test_every_log_line_of_an_edit_names_the_job_and_tenant(edited):
    job_id, lines = edited
    _assert_every_line_names(lines, job_id)
    msgs = {svc: {line["msg"] for line in ls} for svc, ls in lines.items()}
    assert "job succeeded" in msgs["denoiser"] and "rpc ok" in msgs["encoder"] and "rpc ok" in msgs["gateway"]


def test_every_log_line_of_a_training_job_names_the_job_and_tenant(trained):
    job_id, lines = trained
    _assert_every_line_names(lines, job_id)
    assert "training job done" in {line["msg"] for line in lines["trainer"]}
    assert any(line["logger"] == "longcat.rpc" and line.get("method") == "EncodePrompt" for line in lines["encoder"])


def _spans(receiver, timeout: float = 60.0, **want):
    """{label: span}: waits until every (service, name, attrs) in ``want`` has arrived."""
    def found():
        out = {}
        for label, (service, name, attrs) in want.items():
            hits = receiver.find(service, name, **attrs)
            if not hits:
                return None
            out[label] = hits[0]
        return out
    return wait_for(found, timeout, f"spans {list(want)}")


def test_one_trace_follows_an_edit_from_the_client_through_the_gateway_worker_and_encoder(edited, receiver):
    job_id, _ = edited
    s = _spans(receiver,
               gateway=("longcat-gateway", "longcat.v1.EditService/Edit", {"longcat.job_id": job_id}),
               job=("longcat-denoiser", "denoiser.job", {"longcat.job_id": job_id}),
               encoder=("longcat-encoder", "longcat.v1.Encoder/EncodePrompt", {"longcat.job_id": job_id}))
    assert {sp["trace"] for sp in s.values()} == {CLIENT_TRACE}
    assert s["gateway"]["parent"] == CLIENT_SPAN            # the client's span -> the gateway's RPC
    assert s["job"]["parent"] == s["gateway"]["id"]         # through the queue (traceparent in the job hash)
    assert s["encoder"]["parent"] == s["job"]["id"]         # gRPC metadata from the worker to the encoder
    assert s["job"]["attrs"]["longcat.tenant"] == s["encoder"]["attrs"]["longcat.tenant"] == TENANT


def test_one_trace_follows_a_training_job_through_celery_to_the_trainer_and_encoder(trained, receiver):
    job_id, _ = trained
    s = _spans(receiver,
               gateway=("longcat-gateway", "longcat.v1.TrainingService/SubmitTraining", {"longcat.job_id": job_id}),
               job=("longcat-trainer", "trainer.job", {"longcat.job_id": job_id}),
               encoder=("longcat-encoder", "longcat.v1.Encoder/EncodePrompt", {"longcat.job_id": job_id}))
    assert s["gateway"]["parent"] == ""                     # no client trace: the gateway starts one
    assert s["job"]["trace"] == s["gateway"]["trace"] == s["encoder"]["trace"]
    assert s["job"]["parent"] == s["gateway"]["id"]
    assert s["encoder"]["parent"] == s["job"]["id"]


def test_without_an_endpoint_nothing_is_traced_and_the_log_fields_still_work(tmp_path, redis_server):
    """Off: no SDK set up, so no span is made for the call and no trace context is stored with the job, even
    though the client sent one (on, both happen: see the tests above); the job / tenant log fields do not
    depend on tracing."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "", "LONGCAT_LOG_FORMAT": "json",
           "LONGCAT_API_KEYS": f"{TENANT}:{KEY}"}
    gw = ServiceProcess("gateway", ["--redis-url", redis_server.url, "--namespace", "observability-off"], tmp_path,
                        env)
    try:
        gw.wait_serving(120)
        with grpc.insecure_channel(gw.address) as ch:
            stub = edit_pb2_grpc.EditServiceStub(ch)
            meta = [*AUTH, ("traceparent", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")]
            job = stub.SubmitEdit(request(64, 2), timeout=60, metadata=meta)
            assert stub.GetJob(edit_pb2.GetJobRequest(job_id=job.id), timeout=30, metadata=AUTH).state == \
                edit_pb2.QUEUED
        r = redis.Redis.from_url(redis_server.url)
        fields = r.hgetall(f"observability-off:job:{job.id}")
        r.close()
        assert fields and b"traceparent" not in fields
    finally:
        gw.stop(signal.SIGTERM, timeout=30)
    lines = [json.loads(raw) for raw in gw.log_path.read_text().splitlines()]
    assert not [line for line in lines if line["logger"] == "longcat.tracing"]
    rpcs = [line for line in lines if line["msg"] == "rpc ok" and line.get("method") in ("SubmitEdit", "GetJob")]
    assert len(rpcs) == 2 and all(line["job_id"] == job.id and line["tenant"] == TENANT for line in rpcs), rpcs


def test_an_edit_submitted_over_http_continues_the_callers_trace(stack, receiver):
    import httpx

    from tests.gateway_stack import IMAGE

    trace, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    with httpx.Client(base_url=stack.gateway.http_url, timeout=120) as http:
        r = http.post("/v1/jobs/edits", headers={"authorization": f"Bearer {KEY}",
                                                 "traceparent": f"00-{trace}-{parent}-01"},
                      data={"prompt": "make the sky purple", "size": "64x64", "num_inference_steps": "2",
                            "guidance_scale": "1"}, files={"image": ("in.png", IMAGE, "image/png")})
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    s = _spans(receiver,
               http=("longcat-gateway", "HTTP POST /v1/jobs/edits", {"longcat.tenant": TENANT}),
               job=("longcat-denoiser", "denoiser.job", {"longcat.job_id": job_id}),
               encoder=("longcat-encoder", "longcat.v1.Encoder/EncodePrompt", {"longcat.job_id": job_id}))
    assert s["http"]["trace"] == s["job"]["trace"] == s["encoder"]["trace"] == trace
    assert s["http"]["parent"] == parent
    # FastAPI's own spans (its dependencies, the endpoint) may sit between the request's span and the job's
    by_id = {sp["id"]: sp for sp in receiver.spans if sp["trace"] == trace}
    chain, at = [], s["job"]["parent"]
    while at in by_id and at != s["http"]["id"]:
        chain.append(by_id[at]["name"])
        at = by_id[at]["parent"]
    assert at == s["http"]["id"] and all(name.startswith("fastapi.") for name in chain), (chain, at)
    assert s["encoder"]["parent"] == s["job"]["id"]
