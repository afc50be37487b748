"""Encoder and denoiser services as real processes on real sockets, with the tiny model."""

from __future__ import annotations

import io
import math
import signal
import time

import grpc
import numpy as np
import pytest
import torch
from PIL import Image

from longcat.rpc.channel import health_status, make_channel
from longcat.rpc.codec import to_proto
from longcat.rpc.denoiser_client import DenoiserClient
from longcat.rpc.encoder_client import EncoderClient
from longcat.v1 import common_pb2, denoiser_pb2, denoiser_pb2_grpc, encoder_pb2, encoder_pb2_grpc
from tests.procs import Service, metric_value


@pytest.fixture(scope="module")
def sample_png():
    from tests.procs import ROOT

    return (ROOT / "examples" / "sample.png").read_bytes()


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def services(tiny_model_path, tmp_path_factory, adapter_dir):
    logs = tmp_path_factory.mktemp("logs")
    enc = Service("encoder", ["--model", tiny_model_path], logs)
    den = Service("denoiser", ["--model", tiny_model_path, "--adapter-dir", str(adapter_dir)], logs)
    enc.wait_serving(), den.wait_serving()
    yield enc, den
    assert enc.stop() == 0, enc.log()
    assert den.stop() == 0, den.log()


@pytest.fixture(scope="module")
def clients(services):
    enc, den = services
    e, d = EncoderClient(enc.address), DenoiserClient(den.address)
    yield e, d
    e.close(), d.close()


def _result(events):
    last = None
    steps = []
    for ev in events:
        if ev.HasField("progress"):
            steps.append(ev.progress.step)
        last = ev
    assert last.HasField("result")
    return last.result, steps


def test_health_and_reflection(services):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    for svc, name in zip(services, ["longcat.v1.Encoder", "longcat.v1.Denoiser"]):
        ch = make_channel(svc.address)
        assert health_status(ch) == "SERVING" and health_status(ch, name) == "SERVING"
        names = set(ProtoReflectionDescriptorDatabase(ch).get_services())
        assert {name, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
        ch.close()


def test_round_trip_equals_the_in_process_engine_bit_for_bit(clients, engine, sample_png):
    from longcat.engine import EditRequest

    e, d = clients
    enc = e.encode("make the sky purple", sample_png, 256, 192, negative_prompt="blurry")
    result, steps = _result(d.denoise(enc.prompt_embeds, enc.negative_embeds, sample_png, 256, 192, 4, 4.5, 42))
    assert steps == [1, 2, 3, 4] and (result.width, result.height, result.seed) == (256, 192, 42)
    local = engine.edit(EditRequest(image=sample_png, prompt="make the sky purple", negative_prompt="blurry",
                                    width=256, height=192, num_inference_steps=4, seed=42))
    remote = np.asarray(Image.open(io.BytesIO(result.image)))
    assert np.array_equal(remote, np.asarray(local.image))


def test_encoder_cache_and_default_size(clients, services, sample_png):
    e, _ = clients
    first = e.encode("add a red hat", sample_png)  # 0 x 0: ~1 MP keeping the 4:3 aspect
    second = e.encode("add a red hat", sample_png)
    assert (first.width, first.height) == (1184, 896)
    assert not first.cache_hit and second.cache_hit
    assert torch.equal(first.prompt_embeds, second.prompt_embeds)
    assert metric_value(services[0].metrics(), "longcat_cache_requests_total", result="hit") >= 1


def test_encode_image_and_decode_rpcs(services, sample_png):
    ch = make_channel(services[1].address)
    stub = denoiser_pb2_grpc.DenoiserStub(ch)
    lat = stub.EncodeImage(denoiser_pb2.EncodeImageRequest(image=sample_png, width=128, height=96))
    assert list(lat.latents.shape) == [1, 48, 64]
    png = stub.Decode(denoiser_pb2.DecodeRequest(latents=lat.latents, width=128, height=96)).image
    assert Image.open(io.BytesIO(png)).size == (128, 96)
    ch.close()


def test_previews_stream_as_pngs(clients, sample_png):
    e, d = clients
    enc = e.encode("x", sample_png, 256, 128)
    previews = [ev.progress.preview_png for ev in d.denoise(enc.prompt_embeds, enc.negative_embeds, sample_png,
                                                            256, 128, 4, 4.5, 1, preview_every=2)
                if ev.HasField("progress") and ev.progress.preview_png]
    assert len(previews) == 2 and Image.open(io.BytesIO(previews[0])).width <= 128


def test_cancelled_denoise_stops_early(clients, services, sample_png):
    e, d = clients
    den = services[1]
    enc = e.encode("x", sample_png, 256, 256)
    before = metric_value(den.metrics(), "longcat_rpc_errors_total", method="Denoise", code="CANCELLED")
    events = d.denoise(enc.prompt_embeds, enc.negative_embeds, sample_png, 256, 256, 200, 4.5, 1)
    seen = [next(events).progress.step, next(events).progress.step]
    events.close()  # cancels the call
    assert seen == [1, 2]
    deadline = time.monotonic() + 30
    while metric_value(den.metrics(), "longcat_rpc_errors_total", method="Denoise", code="CANCELLED") == before:
        assert time.monotonic() < deadline, "the server never recorded the cancellation"
        time.sleep(0.1)
    # 200 steps were never run: the server is free at once for the next call.
    start = time.monotonic()
    result, _ = _result(d.denoise(enc.prompt_embeds, None, sample_png, 256, 256, 1, 1.0, 1))
    assert result.image and time.monotonic() - start < 20


def test_expired_deadline(clients, services, sample_png):
    e, _ = clients
    enc = e.encode("x", sample_png, 256, 256)
    ch = make_channel(services[1].address)
    stub = denoiser_pb2_grpc.DenoiserStub(ch)
    req = denoiser_pb2.DenoiseRequest(prompt_embeds=to_proto(enc.prompt_embeds), image=sample_png, width=256,
                                      height=256, num_inference_steps=200, guidance_scale=1.0, seed=1)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Denoise(req, timeout=1.0))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert health_status(ch) == "SERVING"
    ch.close()


# --- bad input over the wire ------------------------------------------------------------------------------

def _encode_error(services, **kw):
    ch = make_channel(services[0].address)
    try:
        encoder_pb2_grpc.EncoderStub(ch).EncodePrompt(encoder_pb2.EncodePromptRequest(**kw), timeout=30)
    except grpc.RpcError as err:
        return err.code(), err.details()
    finally:
        ch.close()
    raise AssertionError("no error")


@pytest.mark.parametrize("kw,field", [
    (dict(prompt="x", image=b"", width=64, height=64), "image"),
    (dict(prompt="x", image=b"GIF89a-broken", width=64, height=64), "image"),
    (dict(prompt="x", width=100, height=64), "width"),
    (dict(prompt="x", width=64, height=0), "height"),
    (dict(prompt="x", width=8192, height=8192), "width"),
    (dict(prompt="purple " * 700, width=64, height=64), "prompt"),
])
def test_encoder_bad_input(services, sample_png, kw, field):
    kw.setdefault("image", sample_png)
    code, details = _encode_error(services, **kw)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field + ":")
    assert health_status(make_channel(services[0].address)) == "SERVING"


def _denoise_error(services, **kw):
    ch = make_channel(services[1].address)
    try:
        list(denoiser_pb2_grpc.DenoiserStub(ch).Denoise(denoiser_pb2.DenoiseRequest(**kw), timeout=60))
    except grpc.RpcError as err:
        return err.code(), err.details()
    finally:
        ch.close()
    raise AssertionError("no error")


GOOD = dict(width=64, height=64, num_inference_steps=2, guidance_scale=1.0, seed=1)


@pytest.mark.parametrize("change,code,field", [
    (dict(prompt_embeds=to_proto(torch.zeros(1, 8, 7))), "INVALID_ARGUMENT", "prompt_embeds"),
    (dict(prompt_embeds=to_proto(torch.full((1, 8, 32), math.nan))), "INVALID_ARGUMENT", "prompt_embeds"),
    (dict(prompt_embeds=common_pb2.Tensor(dtype="float32", shape=[1, 8, 32], data=b"123")),
     "INVALID_ARGUMENT", "prompt_embeds.data"),
    (dict(prompt_embeds=None), "INVALID_ARGUMENT", "prompt_embeds"),
    (dict(num_inference_steps=0), "INVALID_ARGUMENT", "num_inference_steps"),
    (dict(num_inference_steps=100000), "INVALID_ARGUMENT", "num_inference_steps"),
    (dict(guidance_scale=math.nan), "INVALID_ARGUMENT", "guidance_scale"),
    (dict(guidance_scale=-2.0), "INVALID_ARGUMENT", "guidance_scale"),
    (dict(guidance_scale=4.5), "INVALID_ARGUMENT", "negative_embeds"),
    (dict(width=72), "INVALID_ARGUMENT", "width"),
    (dict(image=b"\x89PNG broken"), "INVALID_ARGUMENT", "image"),
    (dict(image=None), "INVALID_ARGUMENT", "image"),
    (dict(image=None, reference_latents=to_proto(torch.zeros(1, 5, 64))), "INVALID_ARGUMENT", "reference_latents"),
    (dict(adapters=[common_pb2.AdapterRef(name="missing", scale=1.0)]), "NOT_FOUND", "adapters[0].name"),
    (dict(adapters=[common_pb2.AdapterRef(name="../etc", scale=1.0)]), "INVALID_ARGUMENT", "adapters[0].name"),
])
def test_denoiser_bad_input(services, sample_png, change, code, field):
    kw = dict(GOOD, prompt_embeds=to_proto(torch.zeros(1, 8, 32)), image=sample_png)
    kw.update(change)
    kw = {k: v for k, v in kw.items() if v is not None}
    got, details = _denoise_error(services, **kw)
    assert got.name == code and details.startswith(field), details
    assert health_status(make_channel(services[1].address)) == "SERVING"


def test_adapters_load_list_unload_and_mismatch(services, clients, adapter_dir, tiny_components, sample_png):
    from safetensors.torch import save_file

    from tests.test_engine import _random_lora

    _random_lora(tiny_components.transformer, adapter_dir / "style", seed=3)
    bad = adapter_dir / "other-arch"
    bad.mkdir()
    save_file({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.randn(4, 3072),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.randn(3072, 4)},
              str(bad / "pytorch_lora_weights.safetensors"))
    ch = make_channel(services[1].address)
    stub = denoiser_pb2_grpc.DenoiserStub(ch)
    assert "style" in stub.LoadAdapter(denoiser_pb2.LoadAdapterRequest(name="style")).names
    with pytest.raises(grpc.RpcError) as err:
        stub.LoadAdapter(denoiser_pb2.LoadAdapterRequest(name="other-arch"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        stub.LoadAdapter(denoiser_pb2.LoadAdapterRequest(name="x", path="/etc"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "path" in err.value.details()

    e, d = clients
    enc = e.encode("x", sample_png, 64, 64)
    base, _ = _result(d.denoise(enc.prompt_embeds, None, sample_png, 64, 64, 2, 1.0, 1))
    styled, _ = _result(d.denoise(enc.prompt_embeds, None, sample_png, 64, 64, 2, 1.0, 1, adapters=[("style", 1.0)]))
    again, _ = _result(d.denoise(enc.prompt_embeds, None, sample_png, 64, 64, 2, 1.0, 1))
    assert styled.image != base.image and again.image == base.image
    assert "style" not in stub.UnloadAdapter(denoiser_pb2.UnloadAdapterRequest(name="style")).names
    with pytest.raises(grpc.RpcError) as err:
        stub.UnloadAdapter(denoiser_pb2.UnloadAdapterRequest(name="style"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    ch.close()


def test_metrics_are_exported(services):
    text = services[1].metrics()
    for name in ("longcat_rpc_requests_total", "longcat_rpc_latency_seconds_bucket", "longcat_rpc_errors_total",
                 "longcat_denoise_steps_per_second", "longcat_denoise_steps_total"):
        assert name in text, name
    assert metric_value(text, "longcat_rpc_requests_total", method="Denoise") > 0


def test_sigterm_drains_in_flight_calls(tiny_model_path, tmp_path, sample_png):
    den = Service("denoiser", ["--model", tiny_model_path, "--adapter-dir", str(tmp_path / "a"), "--grace-s", "60"],
                  tmp_path)
    den.wait_serving()
    client = DenoiserClient(den.address)
    events = client.denoise(torch.zeros(1, 8, 32), None, sample_png, 256, 256, 40, 1.0, 1)
    assert next(events).progress.step == 1
    den.proc.send_signal(signal.SIGTERM)
    ch = make_channel(den.address)
    deadline = time.monotonic() + 10
    while health_status(ch) == "SERVING":  # health flips first, so balancers stop sending
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result, steps = _result(events)  # ...and the call in flight still finishes
    assert steps[-1] == 40 and result.image
    assert den.proc.wait(30) == 0, den.log()
    assert '"msg": "stopped"' in den.log()
    ch.close()
    client.close()


def test_calls_before_the_model_is_ready_are_unavailable():
    """The server answers NOT_SERVING and UNAVAILABLE until the backend is set and warm."""
    from longcat.rpc.server import GrpcServer
    from services.encoder.servicer import SERVICE, EncoderServicer

    servicer = EncoderServicer()
    server = GrpcServer([SERVICE], "127.0.0.1", 0)
    encoder_pb2_grpc.add_EncoderServicer_to_server(servicer, server.server)
    server.start()
    ch = make_channel(f"127.0.0.1:{server.port}")
    try:
        assert health_status(ch) == "NOT_SERVING" and health_status(ch, SERVICE) == "NOT_SERVING"
        with pytest.raises(grpc.RpcError) as err:
            encoder_pb2_grpc.EncoderStub(ch).EncodePrompt(encoder_pb2.EncodePromptRequest(prompt="x"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        server.mark_serving()
        assert health_status(ch) == "SERVING"
    finally:
        ch.close()
        server.stop(0)


def test_port_in_use_is_a_clear_error():
    import socket

    from longcat.rpc.server import GrpcServer, PortInUse

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(PortInUse, match="taken"):
            GrpcServer(["x"], "127.0.0.1", s.getsockname()[1])
