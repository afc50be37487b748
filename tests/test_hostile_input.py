"""The hostile-input suite: every public RPC (EditService, TrainingService, AdapterService with its streaming
uploads and downloads, grpc.health) and every HTTP route of a real gateway process (API keys on, the tiny
model's tokenizer, a private Redis) gets thousands of generated requests: protos built field by field from
their descriptors with hostile values (huge and odd strings, out-of-range numbers, unknown enum values, bad
ids and cursors, decompression bombs and junk images), the same mixed into valid requests, raw bytes and
invalid UTF-8 on the wire, multipart and JSON junk over HTTP.

After every case: no INTERNAL / UNKNOWN (HTTP: no 5xx), no job created by a request that answered an error
(the namespace's job hashes counted in Redis), and the gateway still answers health SERVING.

Bounded for CI: a derandomized profile with a fixed number of examples per RPC / route (about 2,000 cases);
``LONGCAT_LONG_TESTS=1`` runs ten times as many. ``HOSTILE_FIGURES`` (printed with ``-s``) are the counts
RELIABILITY.md quotes."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import uuid
import zlib
from collections import Counter
from urllib.parse import quote

import grpc
import httpx
import pytest
import redis
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor as FD
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from longcat.launch import ROOT, ServiceProcess
from longcat.rpc.channel import health_status, make_channel
from longcat.v1 import adapters_pb2, edit_pb2, training_pb2

LONG = os.environ.get("LONGCAT_LONG_TESTS") == "1"
SCALE = 10 if LONG else 1
KEY, BOB_KEY = "hostile-alice-key", "hostile-bob-key"
ALICE = (("authorization", f"Bearer {KEY}"),)
BOB = (("authorization", f"Bearer {BOB_KEY}"),)
PROFILE = dict(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck),
               print_blob=False)
FIGURES: Counter = Counter()      # cases run per RPC / route
CODES: Counter = Counter()        # answers by status code (gRPC names, HTTP numbers)
FAILURES: list[str] = []
HOSTILE_FIGURES = FIGURES         # read by RELIABILITY.md's author: pytest -s prints them at the end


# --- hostile material ------------------------------------------------------------------------------------------

def _png(img: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG", **kw)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _header_only_png(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h and whose data is a few bytes: only a decoder would find out."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _chunk(b"IEND", b"")


SMALL_PNG = _png(Image.new("RGB", (64, 64), (200, 30, 30)))
BOMB_PNG = _png(Image.new("1", (8000, 8000)), optimize=True)   # 64 Mpx, a few KB
IMAGES = [SMALL_PNG, BOMB_PNG, _header_only_png(100_000, 100_000), _header_only_png(0, 5),
          _header_only_png(5000, 4000), SMALL_PNG[:40], b"GIF89a\xff\xff\xff\xff" + b"\0" * 20, b"", b"\0" * 64,
          b"\xff\xd8\xff\xe0" + os.urandom(64), (ROOT / "examples" / "sample.png").read_bytes(),
          b"x" * (1536 << 10)]  # over the test gateway's 1 MiB image limit
STRINGS = ["", " ", "x" * 200_000, "'" * 20_000, "don't won't can't isn't " * 2000, "\x00", "\x00" * 50,
           "../../../etc/passwd", "/etc/passwd", "a:request", "lc:job:*", "*", "$", ">", "-", "+", "0",
           "0-0", "0-1", "1-0", "18446744073709551615-18446744073709551615", "18446744073709551616-0",
           "99999999999999999999999-1", "-1", "1e9", "nan", "inf", "\u202e\u2066", "😀" * 3000, "%s%n%x",
           "\r\nX-Evil: 1", "a" * 65, "a" * 64, "name@1", "UPPER", "ünï", "\ud7ff", "\ufeff", "null", "[]",
           "{}", "{\"a\":" * 5000 + "1" + "}" * 5000, "[" * 100_000, "http://127.0.0.1:1/x", "http://[::1]:80/",
           "file:///etc/passwd", "http://" + "a" * 5000]
PROTO_RANGES = {
    FD.TYPE_INT32: (-(1 << 31), (1 << 31) - 1), FD.TYPE_SINT32: (-(1 << 31), (1 << 31) - 1),
    FD.TYPE_SFIXED32: (-(1 << 31), (1 << 31) - 1), FD.TYPE_INT64: (-(1 << 63), (1 << 63) - 1),
    FD.TYPE_SINT64: (-(1 << 63), (1 << 63) - 1), FD.TYPE_SFIXED64: (-(1 << 63), (1 << 63) - 1),
    FD.TYPE_UINT32: (0, (1 << 32) - 1), FD.TYPE_FIXED32: (0, (1 << 32) - 1),
    FD.TYPE_UINT64: (0, (1 << 64) - 1), FD.TYPE_FIXED64: (0, (1 << 64) - 1),
}
IDS: list[str] = []  # filled by the fixture: real job ids (alice's cancelled one, bob's), and variants


def strings() -> st.SearchStrategy:
    return st.one_of(st.text(max_size=40), st.sampled_from(STRINGS), st.sampled_from(IDS or ["x"]))


def integers(lo: int, hi: int) -> st.SearchStrategy:
    edges = [v for v in (0, 1, -1, 2, 64, 200, 201, 4096, (1 << 31) - 1, 1 << 31, -(1 << 31), (1 << 32) - 1,
                         (1 << 63) - 1, -(1 << 63)) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def field_values(fd, depth: int) -> st.SearchStrategy | None:
    if fd.type == FD.TYPE_STRING:
        return strings()
    if fd.type == FD.TYPE_BYTES:
        return st.one_of(st.sampled_from(IMAGES), st.binary(max_size=64))
    if fd.type in PROTO_RANGES:
        return integers(*PROTO_RANGES[fd.type])
    if fd.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return st.one_of(st.sampled_from([0.0, -1.0, 1.0, 4.5, 1e30, -1e30, float("nan"), float("inf")]),
                         st.floats(width=32 if fd.type == FD.TYPE_FLOAT else 64))
    if fd.type == FD.TYPE_BOOL:
        return st.booleans()
    if fd.type == FD.TYPE_ENUM:
        return st.integers(-3, 12)  # proto3 enums are open: unknown numbers arrive as they are
    if fd.type == FD.TYPE_MESSAGE and depth < 2 and not fd.message_type.GetOptions().map_entry:
        return messages(fd.message_type, depth + 1)
    return None


def _repeated(fd) -> bool:
    # protobuf 6 has is_repeated (and no label); older ones only label == LABEL_REPEATED.
    return fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == FD.LABEL_REPEATED


def messages(desc, depth: int = 0) -> st.SearchStrategy:
    """A message of type ``desc`` with a random subset of its fields set to hostile values."""
    cls = message_factory.GetMessageClass(desc)
    parts = {}
    for fd in desc.fields:
        values = field_values(fd, depth)
        if values is None:
            continue
        repeated = _repeated(fd)
        parts[fd.name] = st.one_of(st.none(), st.lists(values, max_size=3 if depth else 12) if repeated else values)

    @st.composite
    def build(draw):
        msg = cls()
        for name, strategy in parts.items():
            value = draw(strategy)
            if value is None:
                continue
            fd = desc.fields_by_name[name]
            try:
                if _repeated(fd):
                    target = getattr(msg, name)
                    for v in value:
                        target.add().CopyFrom(v) if fd.type == FD.TYPE_MESSAGE else target.append(v)
                elif fd.type == FD.TYPE_MESSAGE:
                    getattr(msg, name).CopyFrom(value)
                else:
                    setattr(msg, name, value)
            except (ValueError, TypeError):  # a value the client library itself refuses to send
                pass
        return msg
    return build()


def invalid_utf8(desc) -> st.SearchStrategy:
    """Wire bytes: a string field of ``desc`` holding bytes that are not UTF-8 (or raw junk)."""
    tags = [fd.number for fd in desc.fields if fd.type == FD.TYPE_STRING] or [1]
    junk = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"abc\xfe"])

    def encode(tag, data):
        return bytes([(tag << 3) | 2]) + bytes([len(data)]) + data
    return st.one_of(st.builds(encode, st.sampled_from(tags), junk), st.binary(min_size=1, max_size=40))


# --- valid requests to mutate (so that checks past the first field are reached too) ------------------------------

def valid_requests(dataset: str) -> dict:
    config = {"output_dir": "hostile-out", "max_train_steps": 2, "learning_rate": 1e-4}
    loader = [{"id": "edits", "instance_data_dir": dataset, "conditioning_data": "refs",
               "caption_strategy": "textfile"},
              {"id": "refs", "instance_data_dir": dataset + "-refs"}]
    return {
        "EditRequest": edit_pb2.EditRequest(image=SMALL_PNG, prompt="make the sky purple", width=64, height=64,
                                            num_inference_steps=2, guidance_scale=1.0, seed=1),
        "SubmitTrainingRequest": training_pb2.SubmitTrainingRequest(config_json=json.dumps(config),
                                                                    dataloader_json=json.dumps(loader),
                                                                    adapter_name="hostile"),
    }


def mutated(base, desc) -> st.SearchStrategy:
    def merge(partial):
        msg = type(base)()
        msg.CopyFrom(base)
        msg.MergeFrom(partial)
        return msg
    return st.builds(merge, messages(desc))


# --- the gateway under test -------------------------------------------------------------------------------------

class Target:
    def __init__(self, gw: ServiceProcess, r: redis.Redis, ns: str):
        self.gw, self.r, self.ns = gw, r, ns
        self.channel = make_channel(gw.address)
        self.http = httpx.Client(base_url=gw.http_url, timeout=60)

    def jobs(self) -> int:
        """The namespace's job hashes (``<ns>:job:<id>``, not its request / events / result keys)."""
        return sum(1 for k in self.r.scan_iter(f"{self.ns}:job:*", count=1000) if k.count(b":") == 2)

    def healthy(self) -> bool:
        return health_status(self.channel, timeout=30) == "SERVING"

    def check(self, label: str, failed: bool, code: str, before: int, may_create: bool = False) -> None:
        FIGURES[label] += 1
        CODES[code] += 1
        problems = []
        if code in ("INTERNAL", "UNKNOWN") or code.startswith("5"):
            problems.append(f"answered {code}")
        after = self.jobs()
        if failed and not may_create and after != before:
            problems.append(f"answered {code} but created {after - before} job(s)")
        if not self.healthy():
            problems.append("health is not SERVING afterwards")
        if problems:
            FAILURES.append(f"{label}: {'; '.join(problems)}")
        assert not problems, f"{label}: {problems}"


@pytest.fixture(scope="module")
def target(redis_server, tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    ns = f"hostile-{uuid.uuid4().hex[:6]}"
    data = root / "data"
    dataset = "uploads/hostile/edits"
    for folder in (data / "alice" / dataset, data / "alice" / (dataset + "-refs")):
        folder.mkdir(parents=True)
        (folder / "a.png").write_bytes(SMALL_PNG)
        (folder / "a.txt").write_text("make it red")
    gw = ServiceProcess("gateway", [
        "--redis-url", redis_server.url, "--namespace", ns, "--adapter-dir", str(root / "adapters"),
        "--data-root", str(data), "--output-root", str(root / "out"), "--model", tiny_model_path,
        "--callback-hosts", "127.0.0.1", "--max-upload-mb", "2", "--max-adapter-mb", "2", "--max-image-mb", "1",
        "--max-queue", "1", "--max-message-mb", "8",
        # Generated submissions that pass are real jobs (no trainer here: they stay queued); the per-tenant
        # training quota (tested in test_submission_integrity.py) would fill up in the long variant.
        "--max-training-per-tenant", "100000"],
        root / "logs", env={"LONGCAT_API_KEYS": f"alice:{KEY},bob:{BOB_KEY}"})
    try:
        gw.wait_serving(240)
        t = Target(gw, redis.Redis.from_url(redis_server.url, socket_timeout=30), ns)
        t.valid = valid_requests(dataset)
        from longcat.v1 import edit_pb2_grpc

        stub = edit_pb2_grpc.EditServiceStub(t.channel)
        # A cancelled (terminal) job of alice's, then bob's queued job, which fills the queue of 1: every valid
        # edit the suite generates answers RESOURCE_EXHAUSTED at once instead of blocking a test thread.
        mine = stub.SubmitEdit(t.valid["EditRequest"], metadata=ALICE, timeout=60).id
        stub.CancelJob(edit_pb2.CancelJobRequest(job_id=mine), metadata=ALICE, timeout=60)
        bobs = stub.SubmitEdit(t.valid["EditRequest"], metadata=BOB, timeout=60).id
        IDS[:] = [mine, bobs, mine + ":request", mine + ":events", mine + ":result", mine.upper(), mine[:-1],
                  f"{mine}\n", f"../{mine}"]
        yield t
        t.channel.close()
        t.http.close()
    finally:
        gw.stop()
        print(f"\nHOSTILE_FIGURES {sum(FIGURES.values())} cases: {dict(sorted(FIGURES.items()))}")
        print(f"HOSTILE_CODES {dict(CODES.most_common())}")
        print(f"HOSTILE_FAILURES {FAILURES}")


# --- gRPC: every method of every public service -----------------------------------------------------------------

SERVICES = [edit_pb2.DESCRIPTOR.services_by_name["EditService"],
            training_pb2.DESCRIPTOR.services_by_name["TrainingService"],
            adapters_pb2.DESCRIPTOR.services_by_name["AdapterService"],
            health_pb2.DESCRIPTOR.services_by_name["Health"]]
METHODS = [(s, m) for s in SERVICES for m in s.methods if m.name != "Watch"]  # health Watch streams forever
EXAMPLES = {"default": 60, "SubmitEdit": 150, "Edit": 100, "SubmitTraining": 150, "UploadAdapter": 80,
            "UploadDataset": 80}


def _serialize(x) -> bytes:
    return x if isinstance(x, bytes) else x.SerializeToString()


def call(target: Target, service, method, request, metadata, timeout: float = 20.0) -> str:
    """One call with raw responses; the status code's name ('OK' on success)."""
    path = f"/{service.full_name}/{method.name}"
    kind = ("stream" if method.client_streaming else "unary") + "_" + \
        ("stream" if method.server_streaming else "unary")
    stub = getattr(target.channel, kind)(path, request_serializer=_serialize, response_deserializer=bytes)
    try:
        out = stub(iter(request) if method.client_streaming else request, metadata=metadata, timeout=timeout)
        if method.server_streaming:
            for _ in out:
                pass
        return "OK"
    except grpc.RpcError as err:
        return err.code().name


def requests_for(target: Target, method) -> st.SearchStrategy:
    desc = method.input_type
    one = st.one_of(messages(desc), invalid_utf8(desc))
    base = target.valid.get(desc.name)
    if base is not None:
        one = st.one_of(one, mutated(base, desc), mutated(base, desc))
    if method.name == "UploadAdapter":
        meta = adapters_pb2.UploadAdapterRequest(metadata=adapters_pb2.UploadAdapterMetadata(name="hostile"))
        first = st.one_of(st.just(meta), one)
        return st.tuples(first, st.lists(one, max_size=4)).map(lambda t: [t[0], *t[1]])
    if method.client_streaming:
        return st.lists(one, max_size=5)
    return one


def auth_for(label: str) -> st.SearchStrategy:
    if label.startswith("grpc.health"):
        return st.just(())
    return st.one_of(st.just(ALICE), st.just(ALICE), st.just(ALICE), st.just(()),
                     st.sampled_from([(("authorization", "Bearer nope"),), (("authorization", "bearer"),),
                                      (("authorization", "Basic " + "A" * 4000),), (("x-request-id", "x" * 4000),)]))


@pytest.mark.parametrize("service,method", METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS])
def test_every_rpc_survives_hostile_requests(target, service, method):
    label = f"{service.full_name}.{method.name}"
    examples = EXAMPLES.get(method.name, EXAMPLES["default"]) * SCALE

    @given(request=requests_for(target, method), metadata=auth_for(label))
    @settings(max_examples=examples, **PROFILE)
    def run(request, metadata):
        before = target.jobs()
        code = call(target, service, method, request, metadata, timeout=30 if method.name != "Edit" else 10)
        # A blocking Edit past its deadline may have queued its job (the deadline is the caller's); streams of
        # a live job end at the deadline: both are answers, not failures.
        target.check(label, code != "OK", code, before, may_create=code == "DEADLINE_EXCEEDED")

    run()


def test_a_call_without_a_key_is_refused_before_its_request_is_read(target):
    """Auth runs first (services/gateway/auth_first.py): a decompression bomb sent without a key answers
    UNAUTHENTICATED, not INVALID_ARGUMENT, and creates nothing; and a request over the gateway's 8 MiB message
    limit sent without a key answers UNAUTHENTICATED, not RESOURCE_EXHAUSTED: its body was never read."""
    service, method = SERVICES[0], SERVICES[0].methods_by_name["SubmitEdit"]
    before = target.jobs()
    req = edit_pb2.EditRequest(image=BOMB_PNG, prompt="x" * 200_000)
    assert call(target, service, method, req, (("authorization", "Bearer wrong"),)) == "UNAUTHENTICATED"
    big = edit_pb2.EditRequest(image=b"\0" * (9 << 20), prompt="x")
    assert call(target, service, method, big, ()) == "UNAUTHENTICATED"
    assert call(target, service, method, big, ALICE) == "RESOURCE_EXHAUSTED"  # with a key: read, over the limit
    upload = SERVICES[1].methods_by_name["UploadDataset"]
    chunks = [training_pb2.UploadDatasetChunk(name="x", data=b"\0" * (1 << 20))] * 64
    assert call(target, SERVICES[1], upload, chunks, ()) == "UNAUTHENTICATED"
    assert target.jobs() == before


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_200k_character_prompt_is_refused_at_once(target, field):
    """Refused by length before tokenizing or quote splitting; a health probe during it still answers."""
    req = edit_pb2.EditRequest()
    req.CopyFrom(target.valid["EditRequest"])
    setattr(req, field, "don't 'a' " * 20_000)
    from longcat.v1 import edit_pb2_grpc

    stub = edit_pb2_grpc.EditServiceStub(target.channel)
    future = stub.SubmitEdit.future(req, metadata=ALICE, timeout=60)
    assert target.healthy()
    with pytest.raises(grpc.RpcError) as err:
        future.result()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details() and "characters" in err.value.details()
    assert len(err.value.details()) < 300


@pytest.mark.parametrize("image,words", [(BOMB_PNG, "pixels"), (IMAGES[-1], "bytes")])
def test_a_decompression_bomb_and_an_oversized_image_are_refused_from_the_header(target, image, words):
    from longcat.v1 import edit_pb2_grpc

    req = edit_pb2.EditRequest()
    req.CopyFrom(target.valid["EditRequest"])
    req.image = image
    with pytest.raises(grpc.RpcError) as err:
        edit_pb2_grpc.EditServiceStub(target.channel).SubmitEdit(req, metadata=ALICE, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("image:") and words in err.value.details()


def test_job_ids_and_cursors_name_the_field(target):
    from longcat.v1 import edit_pb2_grpc

    stub = edit_pb2_grpc.EditServiceStub(target.channel)
    mine = IDS[0]
    for bad in (mine + ":request", mine + ":events", "x" * 100_000):
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJob(edit_pb2.GetJobRequest(job_id=bad), metadata=ALICE, timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details().startswith("job_id:")
        assert len(err.value.details()) < 200  # never the whole hostile value
    for cursor in ("x", "1-2-3", "18446744073709551616-0", "$"):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.WatchJob(edit_pb2.WatchJobRequest(job_id=mine, after_event_id=cursor), metadata=ALICE,
                               timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("after_event_id:")
    from longcat.v1 import adapters_pb2_grpc

    with pytest.raises(grpc.RpcError) as err:  # a name is echoed, but never past ~1.5 KB (trailer limits)
        adapters_pb2_grpc.AdapterServiceStub(target.channel).GetAdapter(
            adapters_pb2.GetAdapterRequest(name="😀" * 50_000), metadata=ALICE, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("name:")
    assert len(err.value.details().encode()) < 1600


def test_training_numbers_that_overflow_are_refused_without_a_job(target):
    """The ghost job of issue 15: max_train_steps above 2^31 was queued and then answered INTERNAL."""
    from longcat.v1 import training_pb2_grpc

    stub = training_pb2_grpc.TrainingServiceStub(target.channel)
    base = target.valid["SubmitTrainingRequest"]
    for key, value in (("max_train_steps", 2**31), ("max_train_steps", 2**63), ("checkpointing_steps", 2**40),
                       ("num_train_epochs", 2**32)):
        config = {**json.loads(base.config_json), key: value}
        req = training_pb2.SubmitTrainingRequest(config_json=json.dumps(config),
                                                 dataloader_json=base.dataloader_json, adapter_name="ghost")
        before = target.jobs()
        with pytest.raises(grpc.RpcError) as err:
            stub.SubmitTraining(req, metadata=ALICE, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert f"config_json.{key}" in err.value.details()
        assert target.jobs() == before
    listed = stub.ListJobs(training_pb2.ListJobsRequest(), metadata=ALICE, timeout=30)
    assert all(j.adapter_name != "ghost" for j in listed.jobs)
    # The control: the same request with an ordinary number is accepted (a job, handed to Celery's queue).
    job = stub.SubmitTraining(base, metadata=ALICE, timeout=60)
    assert job.total_steps == 2 and target.jobs() == before + 1
    assert stub.GetJob(training_pb2.GetJobRequest(job_id=job.id) if hasattr(training_pb2, "GetJobRequest")
                       else edit_pb2.GetJobRequest(job_id=job.id), metadata=ALICE, timeout=30).id == job.id


def test_invalid_utf8_on_the_wire_is_invalid_argument(target):
    service, method = SERVICES[0], SERVICES[0].methods_by_name["GetJob"]
    assert call(target, service, method, b"\x0a\x02\xc3\x28", ALICE) == "INVALID_ARGUMENT"
    up = SERVICES[2].methods_by_name["UploadAdapter"]
    assert call(target, SERVICES[2], up, [b"\x0a\x03\x0a\x01\xff"], ALICE) == "INVALID_ARGUMENT"


# --- HTTP: every route ------------------------------------------------------------------------------------------

HTTP_ROUTES = [
    ("POST", "/v1/images/edits"), ("POST", "/v1/jobs/edits"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/cancel"), ("GET", "/v1/jobs/{job_id}/result"), ("GET", "/v1/jobs/{job_id}/events"),
    ("GET", "/v1/images/results/{job_id}.png"), ("POST", "/v1/trainings"), ("GET", "/v1/adapters"),
    ("GET", "/v1/adapters/{name}"), ("DELETE", "/v1/adapters/{name}"), ("GET", "/v1/adapters/{name}/download"),
    ("POST", "/v1/adapters/{name}"), ("PATCH", "/v1/adapters/{name}"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/"),
    ("GET", "/docs"), ("GET", "/openapi.json"),
]
HTTP_EXAMPLES = {"POST /v1/images/edits": 120, "POST /v1/jobs/edits": 120, "POST /v1/trainings": 120,
                 "POST /v1/adapters/{name}": 60}


def test_the_suite_covers_every_http_route(target):
    schema = target.http.get("/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in schema["paths"].items() for m in ops}
    assert documented <= set(HTTP_ROUTES), documented - set(HTTP_ROUTES)


def form_values() -> st.SearchStrategy:
    """A form field's value: text, hostile strings, or raw bytes that are not UTF-8."""
    return st.one_of(strings(), st.sampled_from([b"\xff\xfe", b"\xc3\x28abc", b"ok", "1", "-1", "2147483648",
                                                 "9" * 400, "1.5", "nan", "64x64", "99999x99999", "auto"]),
                     st.integers(-(1 << 70), 1 << 70).map(str))


JSON_JUNK = ["{", "[]", "1", "\"s\"", "null", "[" * 50_000 + "]" * 50_000, "{\"a\":" * 3000 + "1" + "}" * 3000,
             "{\"max_train_steps\": 4294967296, \"output_dir\": \"x\"}", "{\"output_dir\": \"/etc\"}",
             "[{\"id\": 1}]", "{\"datasets\": 5}", "\ufeff{}", "/* c */ {\"x\": 1,}"]

EDIT_FIELDS = ["prompt", "n", "size", "response_format", "negative_prompt", "num_inference_steps",
               "guidance_scale", "seed", "adapters", "speed_preset", "preview_every", "request_id", "callback_url",
               "callback_progress", "user", "model"]


@st.composite
def http_cases(draw, method: str, path: str):
    url = path
    for name in ("job_id", "name"):
        if "{" + name + "}" in url:
            value = draw(st.one_of(strings().filter(lambda s: 0 < len(s) < 3000), st.sampled_from(IDS)))
            url = url.replace("{" + name + "}", quote(value, safe="") or "x")
    headers = dict(draw(st.sampled_from([ALICE, ALICE, ALICE, (), (("authorization", "Bearer nope"),),
                                         (("authorization", "Bearer " + "x" * 6000),)])))
    params = draw(st.dictionaries(st.sampled_from(["cursor", "limit", "kind", "state", "after"]),
                                  form_values().map(lambda v: v if isinstance(v, str) else v.decode("latin-1"))
                                  .filter(lambda s: len(s) < 3000), max_size=3))
    if draw(st.booleans()):
        headers["last-event-id"] = draw(st.sampled_from(["", "0", "1-1", "x", "9" * 30, "$", "1-x"]))
    if draw(st.booleans()):
        headers["x-request-timeout"] = draw(st.sampled_from(["0", "-1", "nan", "inf", "1e308", "x", "0.5"]))
    files, data, content = None, None, None
    if method in ("POST", "PATCH"):
        shape = draw(st.sampled_from(["multipart", "multipart", "json", "raw"] if method == "POST" else
                                     ["json", "json", "raw"]))
        if shape == "multipart":
            names = {"/v1/trainings": ["config", "dataloader", "name", "request_id", "callback_url", "paths"],
                     }.get(path, EDIT_FIELDS if "edits" in path else ["overwrite"])
            data = {k: v for k, v in draw(st.dictionaries(st.sampled_from(names), form_values(), max_size=8)).items()}
            if path == "/v1/trainings" and draw(st.booleans()):
                data["config"] = draw(st.sampled_from(JSON_JUNK))
                data["dataloader"] = draw(st.sampled_from(JSON_JUNK))
            part = {"/v1/trainings": draw(st.sampled_from(["archive", "files"])),
                    "/v1/adapters/{name}": draw(st.sampled_from(["file", "config"]))}.get(path, "image")
            files = {part: ("f.bin", draw(st.one_of(st.sampled_from(IMAGES), st.binary(max_size=256))))} \
                if draw(st.integers(0, 3)) else None
        elif shape == "json":
            junk = JSON_JUNK + ['{"visibility": "public"}', '{"visibility": "shared"}', '{"visibility": 5}',
                                '{"visibility": "' + "x" * 5000 + '"}'] * (method == "PATCH")
            content = draw(st.sampled_from(junk)).encode()
            headers["content-type"] = "application/json"
        else:
            content = draw(st.binary(max_size=512))
            headers["content-type"] = draw(st.sampled_from(["multipart/form-data; boundary=x", "multipart/form-data",
                                                            "application/x-www-form-urlencoded", "text/plain"]))
    return url, params, headers, data, files, content


def _form(data: dict | None):
    """httpx form data: text as is; bytes (non-UTF-8 values) are sent as their own part, not re-encoded."""
    if not data:
        return None, None
    text = {k: v for k, v in data.items() if isinstance(v, str)}
    raw = {k: (None, v) for k, v in data.items() if isinstance(v, bytes)}
    return text, raw


@pytest.mark.parametrize("method,path", HTTP_ROUTES, ids=[f"{m} {p}" for m, p in HTTP_ROUTES])
def test_every_http_route_survives_hostile_requests(target, method, path):
    label = f"{method} {path}"
    examples = HTTP_EXAMPLES.get(label, 40) * SCALE

    @given(case=http_cases(method, path))
    @settings(max_examples=examples, **PROFILE)
    def run(case):
        url, params, headers, data, files, content = case
        text, raw = _form(data)
        if files or raw:
            files = {**(files or {}), **(raw or {})}
        before = target.jobs()
        if path.endswith("/events"):
            with target.http.stream(method, url, params=params, headers=headers, timeout=30) as resp:
                status = resp.status_code
                if status == 200:  # the cancelled job's events end by themselves
                    for _ in resp.iter_lines():
                        pass
        else:
            resp = target.http.request(method, url, params=params, headers=headers, data=text, files=files,
                                       content=content if not (text or files) else None, timeout=60)
            status = resp.status_code
            if status >= 400 and status != 404 and resp.headers.get("content-type", "").startswith("application/json"):
                assert len(resp.text) < 4000, resp.text[:300]  # a hostile value is never echoed whole
        target.check(label, status >= 400, str(status), before, may_create=status == 504)

    run()


def test_a_big_body_without_a_key_is_refused_before_it_is_read(target):
    """The request line and headers of a 200 MB upload, no key, and not one body byte sent: the 401 comes back
    anyway, so the body was never waited for."""
    host, port = target.gw.http_url.rsplit("/", 1)[-1].split(":")
    for key, status in ((b"", b"401"), (f"Authorization: Bearer {KEY}\r\n".encode(), b"413")):
        # With a key, the same body is over what an edit may send (the image limit + 1 MiB): 413, unread too.
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/images/edits HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                      b"boundary=b\r\n" + key + b"Content-Length: 209715200\r\n\r\n")
            head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 " + status), head[:200]


def test_http_junk_names_the_param(target):
    h = dict(ALICE)
    r = target.http.post("/v1/trainings", headers=h, data={"config": "[" * 50_000 + "]" * 50_000,
                                                           "dataloader": "[]"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "config", r.text[:300]
    r = target.http.post("/v1/trainings", headers=h, data={"config": "[1]", "dataloader": "[]"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "config"
    # Starlette reads a form value that is not UTF-8 with replacement characters: an ordinary prompt then
    # (here: refused because the queue of 1 is full), never a server error.
    r = target.http.post("/v1/jobs/edits", headers=h, files={"image": ("a.png", SMALL_PNG),
                                                             "prompt": (None, b"\xff\xfe bad")})
    assert r.status_code == 429, r.text[:300]
    r = target.http.get(f"/v1/jobs/{IDS[0]}:request", headers=h)
    assert r.status_code == 404 and r.json()["error"]["param"] == "job_id"
    r = target.http.get(f"/v1/jobs/{IDS[0]}/events", headers={**h, "last-event-id": "nope"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "Last-Event-ID"
