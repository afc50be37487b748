"""The HTTP door end to end on the real stack (Redis, encoder, a denoiser worker, gateways as processes):
the official ``openai`` package against ``/v1/images/edits``, REST jobs with Server-Sent Events, errors in
OpenAI's shape, API keys, webhooks to a receiver on loopback, adapters. Gateways: "main" (keys off, webhooks
to 127.0.0.1 allowed), "auth" (API keys, webhooks allowed) and "small" (queue of 2, 1 MiB bodies)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import uuid
import zipfile

import httpx
import openai
import pytest

from tests.gateway_stack import IMAGE, Stack, busy_worker, png_size
from tests.http_helpers import Receiver, sse_events

pytestmark = pytest.mark.slow
FAST = {"num_inference_steps": 2, "guidance_scale": 1.0}   # one forward per step: a small CPU


@pytest.fixture(scope="module")
def stack(tiny_model_path, redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("http-e2e")
    s = Stack(tiny_model_path, root, redis_server, ns=f"http-{uuid.uuid4().hex[:6]}")
    hooks = ["--callback-hosts", "127.0.0.1"]
    try:
        s.add_worker()
        s.add_gateway("main", ["--model", tiny_model_path, *hooks], env={"LONGCAT_API_KEYS": ""})
        s.add_gateway("auth", hooks, env={"LONGCAT_API_KEYS": "alice:key-alice,bob:key-bob"})
        s.add_gateway("small", ["--max-queue", "2", "--max-message-mb", "1", "--max-upload-mb", "1"],
                      env={"LONGCAT_API_KEYS": ""})
        s.wait_serving()
        yield s
    finally:
        s.close()


def url(stack, gateway: str = "main") -> str:
    return stack.gateways[gateway].http_url


@pytest.fixture
def http(stack):
    with httpx.Client(base_url=url(stack), timeout=300) as c:
        yield c


def oa(stack, gateway: str = "main", key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url(stack, gateway) + "/v1", api_key=key, max_retries=0, timeout=300)


def form(**fields) -> dict:
    return {k: str(v) for k, v in {"prompt": "make the sky purple", "size": "64x64", **FAST, **fields}.items()}


def files(image: bytes = IMAGE) -> dict:
    return {"image": ("sample.png", image, "image/png")}


# --- OpenAI's client ------------------------------------------------------------------------------------------

def test_openai_client_edits_images_as_b64_json(stack):
    res = oa(stack).images.edit(image=("sample.png", IMAGE, "image/png"), prompt="make the sky purple", n=2,
                                size="64x64", response_format="b64_json", extra_body={**FAST, "seed": 7})
    images = [base64.b64decode(d.b64_json) for d in res.data]
    assert len(images) == 2 and all(png_size(im) == (64, 64) for im in images)
    assert images[0] != images[1]  # image i uses seed + i
    again = oa(stack).images.edit(image=("sample.png", IMAGE, "image/png"), prompt="make the sky purple", n=1,
                                  size="64x64", extra_body={**FAST, "seed": 8})
    assert base64.b64decode(again.data[0].b64_json) == images[1]  # seeds reproduce across calls


def test_openai_client_url_results_are_fetched_with_the_same_key(stack):
    client = oa(stack, "auth", "key-alice")
    res = client.images.edit(image=("sample.png", IMAGE, "image/png"), prompt="invert", size="96x64",
                             response_format="url", extra_body=FAST)
    link = res.data[0].url
    assert link.startswith(url(stack, "auth") + "/v1/images/results/")
    got = httpx.get(link, headers={"Authorization": "Bearer key-alice"}, timeout=30)
    assert got.status_code == 200 and got.headers["content-type"] == "image/png" and png_size(got.content) == (96, 64)
    assert httpx.get(link, timeout=30).status_code == 401
    other = httpx.get(link, headers={"Authorization": "Bearer key-bob"}, timeout=30)
    assert other.status_code == 404 and other.json()["error"]["param"] == "job_id"  # not leaked to others


@pytest.mark.parametrize("extra, param", [({"size": "64"}, "size"), ({"n": 5}, "n"),
                                          ({"num_inference_steps": 100000}, "num_inference_steps"),
                                          ({"guidance_scale": "x"}, "guidance_scale"),
                                          ({"adapters": "style:heavy"}, "adapters"),
                                          ({"response_format": "gif"}, "response_format")])
def test_bad_fields_are_400s_naming_the_field_through_the_openai_client(stack, extra, param):
    body = {**FAST, **extra}
    kwargs = {k: body.pop(k) for k in ("size", "n", "response_format") if k in body}
    with pytest.raises(openai.BadRequestError) as err:
        oa(stack).images.edit(image=("sample.png", IMAGE, "image/png"), prompt="x", extra_body=body, **kwargs)
    error = err.value.body
    assert err.value.status_code == 400 and error["param"] == param and param in error["message"]
    assert error["type"] == "invalid_request_error"


def test_missing_or_wrong_key_is_401_in_openai_shape(stack):
    for key in ("none", "key-mallory"):
        with pytest.raises(openai.AuthenticationError) as err:
            oa(stack, "auth", key).images.edit(image=("s.png", IMAGE, "image/png"), prompt="x", extra_body=FAST)
        assert err.value.status_code == 401 and err.value.body["type"] == "authentication_error"


def test_a_request_past_its_time_limit_is_504(http):
    r = http.post("/v1/images/edits", data=form(), files=files(), headers={"X-Request-Timeout": "0.001"})
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error", r.text
    bad = http.post("/v1/images/edits", data=form(), files=files(), headers={"X-Request-Timeout": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x-request-timeout"


def test_an_undecodable_image_is_a_400_naming_image(http):
    r = http.post("/v1/images/edits", data=form(), files=files(b"not an image"))
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"


# --- REST jobs and events -------------------------------------------------------------------------------------

def test_a_job_streams_progress_with_previews_then_its_result_and_resumes(http):
    r = http.post("/v1/jobs/edits", data=form(num_inference_steps=3, preview_every=1, seed=3), files=files())
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["object"] == "job" and job["kind"] == "edit" and job["state"] in ("QUEUED", "RUNNING")
    events = sse_events(http, f"/v1/jobs/{job['id']}/events")
    kinds = [e["kind"] for e in events]
    assert kinds[-1] == "result" and "progress" in kinds, kinds
    progress = [e for e in events if e["kind"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3] and all(e["total"] == 3 for e in progress)
    assert all(e["preview"].startswith("data:image/png;base64,") for e in progress)
    final = events[-1]
    assert final["state"] == "SUCCEEDED" and final["result"]["image"].startswith("data:image/png;base64,")
    png = base64.b64decode(final["result"]["image"].split(",", 1)[1])
    assert http.get(f"/v1/jobs/{job['id']}/result").content == png
    assert http.get(f"/v1/jobs/{job['id']}").json()["result"]["seed"] == 3

    # Resume after the first progress event: exactly the events after it, no repeats.
    first = progress[0]["_id"]
    resumed = sse_events(http, f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": first})
    assert [e.get("step") for e in resumed if e["kind"] == "progress"] == [2, 3]
    assert resumed[-1]["kind"] == "result"


def test_queued_position_cancel_and_409_for_a_result_not_there(stack, http):
    with busy_worker(stack.edit("main")):
        job = http.post("/v1/jobs/edits", data=form(), files=files()).json()
        events = sse_events(http, f"/v1/jobs/{job['id']}/events", until=lambda e: e["kind"] == "queued")
        assert events[-1]["queue_position"] >= 1
        r = http.get(f"/v1/jobs/{job['id']}/result")
        assert r.status_code == 409 and r.json()["error"]["param"] == "job_id"
        cancelled = http.post(f"/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "CANCELLED"
        assert sse_events(http, f"/v1/jobs/{job['id']}/events")[-1]["state"] == "CANCELLED"
        assert http.get(f"/v1/jobs/{job['id']}/result").status_code == 404


def test_a_full_queue_is_429_with_retry_after(stack):
    with busy_worker(stack.edit("small")), httpx.Client(base_url=url(stack, "small"), timeout=60) as c:
        codes = [c.post("/v1/jobs/edits", data=form(), files=files()) for _ in range(3)]
        assert [r.status_code for r in codes] == [201, 201, 429]
        assert int(codes[-1].headers["Retry-After"]) >= 1 and codes[-1].json()["error"]["type"] == "rate_limit_error"
        for r in codes[:2]:
            c.post(f"/v1/jobs/{r.json()['id']}/cancel")


def test_a_body_over_the_limit_is_413_before_it_is_read(stack):
    big = IMAGE + b"\0" * (2 << 20)
    r = httpx.post(url(stack, "small") + "/v1/images/edits", data=form(), files=files(big), timeout=60)
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"

    def chunked():  # no Content-Length: a well-formed file part that goes on past the limit is cut off
        yield (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(3):
            yield b"x" * (1 << 20)

    r = httpx.post(url(stack, "small") + "/v1/images/edits", content=chunked(), timeout=60,
                   headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


def test_jobs_list_pages_with_a_cursor_and_are_private(stack):
    alice = httpx.Client(base_url=url(stack, "auth"), headers={"Authorization": "Bearer key-alice"}, timeout=300)
    bob = httpx.Client(base_url=url(stack, "auth"), headers={"Authorization": "Bearer key-bob"}, timeout=300)
    ids = [alice.post("/v1/jobs/edits", data=form(seed=i), files=files()).json()["id"] for i in range(3)]
    page1 = alice.get("/v1/jobs", params={"kind": "edit", "limit": 2}).json()
    page2 = alice.get("/v1/jobs", params={"kind": "edit", "limit": 2, "cursor": page1["next_cursor"]}).json()
    listed = [j["id"] for j in page1["data"] + page2["data"]]
    assert listed[:3] == ids[::-1] and len(set(listed)) == len(listed)
    assert not [j for j in bob.get("/v1/jobs").json()["data"] if j["id"] in ids]
    assert bob.get(f"/v1/jobs/{ids[0]}").status_code == 404
    assert bob.post(f"/v1/jobs/{ids[0]}/cancel").status_code == 404
    bad = alice.get("/v1/jobs", params={"kind": "nope"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "kind"
    for job_id in ids:
        sse_events(alice, f"/v1/jobs/{job_id}/events")


# --- webhooks -------------------------------------------------------------------------------------------------

def test_webhook_gets_the_signed_terminal_event_with_retries(stack):
    receiver = Receiver(fail_first=1)
    try:
        c = httpx.Client(base_url=url(stack, "auth"), headers={"Authorization": "Bearer key-alice"}, timeout=60)
        job = c.post("/v1/jobs/edits", data=form(callback_url=receiver.url), files=files()).json()
        (h1, b1), (h2, b2) = receiver.wait(2, timeout=240)   # the first answer was a 500: sent again
        assert b1 == b2
        event = json.loads(b2)
        assert event["job_id"] == job["id"] and event["kind"] == "result" and event["state"] == "SUCCEEDED"
        expected = "sha256=" + hmac.new(b"key-alice", b2, hashlib.sha256).hexdigest()
        assert h2["x-longcat-signature"] == expected
        assert hmac.new(b"key-bob", b2, hashlib.sha256).hexdigest() not in h2["x-longcat-signature"]
    finally:
        receiver.close()


def test_webhook_progress_when_asked(stack, http):
    receiver = Receiver()
    try:
        http.post("/v1/jobs/edits", data=form(num_inference_steps=2, callback_url=receiver.url,
                                              callback_progress="true"), files=files())
        calls = receiver.wait(0, timeout=240, until=lambda calls: calls and json.loads(calls[-1][1])["kind"] ==
                              "result")
        kinds = [json.loads(body)["kind"] for _, body in calls]
        assert [k for k in kinds if k != "state"] == ["progress", "progress", "result"], kinds
    finally:
        receiver.close()


def test_webhook_over_grpc_signed_with_the_metadata_key(stack):
    import grpc

    from tests.gateway_stack import request, rpc_error, submit

    receiver = Receiver()
    try:
        stub, alice = stack.edit("auth"), (("authorization", "Bearer key-alice"),)
        job = submit(stub, request(64, 2, callback_url=receiver.url), metadata=alice)
        headers, body = receiver.wait(0, 240, until=lambda calls: calls)[0]
        assert json.loads(body)["job_id"] == job.id and json.loads(body)["kind"] == "result"
        assert headers["x-longcat-signature"] == "sha256=" + hmac.new(b"key-alice", body, hashlib.sha256).hexdigest()
        err = rpc_error(stub.SubmitEdit, request(64, 2, callback_url="http://169.254.169.254/x"), metadata=alice,
                        timeout=30)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("callback_url:")
    finally:
        receiver.close()


@pytest.mark.parametrize("callback", ["http://10.0.0.1/hook", "http://localhost:1/x", "ftp://127.0.0.1/x",
                                      "not a url"])
def test_webhook_hosts_off_the_allow_list_are_refused_at_submission(stack, http, callback):
    before = stack.created_and_queued()
    r = http.post("/v1/jobs/edits", data=form(callback_url=callback), files=files())
    assert r.status_code == 400 and r.json()["error"]["param"] == "callback_url", r.text
    assert stack.created_and_queued() == before  # nothing queued


def test_a_gateway_without_an_allow_list_refuses_callbacks(stack):
    r = httpx.post(url(stack, "small") + "/v1/jobs/edits", data=form(callback_url="http://127.0.0.1:9/x"),
                   files=files(), timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "callback_url"


# --- adapters, training submission, health ---------------------------------------------------------------------

def test_adapters_list_get_download_delete(stack, http, tiny_components):
    from tests.test_engine import _random_lora

    _random_lora(tiny_components.transformer, stack.adapter_dir / "http-style", seed=3)
    names = [a["name"] for a in http.get("/v1/adapters").json()["data"]]
    assert "http-style" in names
    info = http.get("/v1/adapters/http-style").json()
    assert (info["rank"], info["format"]) == (4, "diffusers")
    got = http.get(info["download_url"])
    on_disk = (stack.adapter_dir / "http-style" / "pytorch_lora_weights.safetensors").read_bytes()
    assert got.status_code == 200 and got.content == on_disk
    assert "pytorch_lora_weights.safetensors" in got.headers["content-disposition"]
    from safetensors import safe_open  # the download is a diffusers-format safetensors file
    path = stack.root / "downloaded.safetensors"
    path.write_bytes(got.content)
    with safe_open(str(path), "pt") as f:
        assert all(k.startswith("transformer.") and "lora" in k for k in f.keys())
    assert http.delete("/v1/adapters/http-style").json()["deleted"] is True
    missing = http.get("/v1/adapters/http-style")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert http.get("/v1/adapters/..%2Fx").status_code in (400, 404)


def test_training_submission_with_a_zip_lands_the_dataset_and_cancels(stack, http, tmp_path):
    from longcat.training.sample_data import write_pairs

    folder = tmp_path / "ds"
    write_pairs(folder, 3, (64, 64))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in folder.rglob("*"):
            if p.is_file():
                z.write(p, f"ds/{p.relative_to(folder)}")
    loader = [{"id": "edit-images", "type": "local", "instance_data_dir": "ds/edits", "caption_strategy": "textfile",
               "resolution": 64, "cache_dir_vae": "cache/e", "conditioning_data": ["ref-images"]},
              {"id": "ref-images", "type": "local", "instance_data_dir": "ds/refs", "caption_strategy": None,
               "resolution": 64, "cache_dir_vae": "cache/r"}]
    config = {"model_type": "lora", "model_family": "longcat_image", "model_flavour": "edit", "max_train_steps": 2,
              "output_dir": "runs/http", "lora_rank": 4}
    r = http.post("/v1/trainings", data={"config": json.dumps(config), "dataloader": json.dumps(loader),
                                         "name": "http-lora"},
                  files={"archive": ("ds.zip", buf.getvalue(), "application/zip")})
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["kind"] == "training" and job["adapter_name"] == "http-lora"
    assert http.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "CANCELLED"  # no trainer runs here
    bad = http.post("/v1/trainings", data={"config": "{", "dataloader": "[]"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "config"
    broken = http.post("/v1/trainings", data={"config": json.dumps(config), "dataloader": json.dumps(loader),
                                              "name": "x"}, files={"archive": ("ds.zip", b"nope", "application/zip")})
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "archive"


def test_health_readiness_metrics_docs_offline(http):
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/readyz").status_code == 200
    metrics = http.get("/metrics").text
    assert "python_info" in metrics and 'longcat_http_requests_total{method="GET",route="/healthz",status="200"}' \
        in metrics
    schema = http.get("/openapi.json").json()
    assert {"/v1/images/edits", "/v1/jobs/{job_id}/events", "/v1/trainings", "/v1/adapters"} <= set(schema["paths"])
    page = http.get("/docs").text
    assert "/docs/static/swagger-ui-bundle.js" in page and "cdn" not in page.lower()
    assert http.get("/docs/static/swagger-ui-bundle.js").status_code == 200
