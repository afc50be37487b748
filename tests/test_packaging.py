"""Packaging and service configuration as a newcomer meets them: a plain `pip install .` (no make) gives a
working, torch-free CLI and client; a bad LONGCAT_* value is one clear line and exit status 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.gateway_stack import Stack

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "sample.png"


@pytest.mark.parametrize("env, names", [
    ({"LONGCAT_MAX_QUEUE": "abc"}, ("LONGCAT_MAX_QUEUE", "--max-queue")),
    ({"LONGCAT_PORT": "50x"}, ("LONGCAT_PORT", "--port")),
    ({"LONGCAT_GRACE_S": "soon"}, ("LONGCAT_GRACE_S", "--grace-s")),
])
def test_a_bad_env_value_exits_2_naming_the_variable_and_its_flag(env, names):
    out = subprocess.run([sys.executable, "-m", "longcat.cli.main", "serve", "gateway"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, **env}, cwd=ROOT)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    error = out.stderr.strip().splitlines()[-1]
    assert all(n in error for n in names), error


def test_help_works_even_with_a_bad_env_value():
    out = subprocess.run([sys.executable, "-m", "services.gateway", "--help"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "LONGCAT_MAX_QUEUE": "abc"}, cwd=ROOT)
    assert out.returncode == 0 and "LONGCAT_MAX_QUEUE" in out.stdout


@pytest.fixture(scope="module")
def stack(tiny_model_path, redis_server, tmp_path_factory):
    s = Stack(tiny_model_path, tmp_path_factory.mktemp("packaging"), redis_server, ns=f"pkg-{uuid.uuid4().hex[:6]}")
    try:
        s.add_worker()
        s.add_gateway("main", ["--model", tiny_model_path], env={"LONGCAT_API_KEYS": ""})
        s.wait_serving()
        yield s
    finally:
        s.close()


@pytest.mark.slow
def test_plain_pip_install_gives_a_working_cli_and_client(stack, tmp_path):
    """The checkout's tracked files -> `pip install .` in a fresh venv: the build generates the stubs, the
    base install has no torch, and `longcat` and the Python client talk to the running test stack."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for f in files.splitlines():
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    assert not (src / "longcat" / "v1").exists()  # never committed: the build must make them
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py, longcat = venv / "bin" / "python", venv / "bin" / "longcat"
    out = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]

    env = {k: v for k, v in os.environ.items() if not k.startswith("LONGCAT_")}
    run = dict(capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    out = subprocess.run([str(longcat), "--help"], **run)
    assert out.returncode == 0 and "edit" in out.stdout, out.stderr
    out = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in ('torch', 'diffusers', "
                          "'transformers', 'peft', 'celery') if u.find_spec(m)])"], **run)
    assert out.stdout.strip() == "[]", out.stdout  # the base install is the thin one

    gateway = stack.gateways["main"].address
    result = tmp_path / "out.png"
    out = subprocess.run([str(longcat), "edit", "--gateway", gateway, "--image", str(SAMPLE), "--prompt",
                          "make the sky purple", "--steps", "2", "--width", "64", "--height", "64", "--seed", "7",
                          "--out", str(result), "--json"], **run)
    assert out.returncode == 0, out.stderr
    assert result.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = ("import sys; from longcat.client import LongCatClient; c = LongCatClient(sys.argv[1]); "
              f"r = c.edit({str(SAMPLE)!r}, 'make the sky purple', steps=2, width=64, height=64, seed=7); "
              "print(r.seed, len(r.image))")
    out = subprocess.run([str(py), "-c", client, gateway], **run)
    assert out.returncode == 0, out.stderr
    seed, size = out.stdout.split()
    assert seed == "7" and int(size) > 0

    # The base install also runs the gateway: edits and adapters, tokenizer.json through `tokenizers`; no
    # Celery there, so training jobs are refused up front (UNAVAILABLE), never queued.
    from longcat.launch import free_port
    from longcat.rpc.channel import make_channel, wait_until_serving

    port = free_port()
    gw = subprocess.Popen([str(py), "-m", "services.gateway", "--port", str(port), "--metrics-port", "0",
                           *stack.stack_args, "--model", stack.model], cwd=tmp_path, env=env,
                          stdout=subprocess.DEVNULL, stderr=open(tmp_path / "gateway.log", "wb"))
    try:
        wait_until_serving(make_channel(f"127.0.0.1:{port}"), timeout=120)
        out = subprocess.run([str(py), "-c", client, f"127.0.0.1:{port}"], **run)
        assert out.returncode == 0, out.stderr
        refuse = ("import sys, grpc; from longcat.v1 import training_pb2 as t, training_pb2_grpc as g; "
                  "stub = g.TrainingServiceStub(grpc.insecure_channel(sys.argv[1]))\n"
                  "try: stub.SubmitTraining(t.SubmitTrainingRequest(config_json='{}'), timeout=30)\n"
                  "except grpc.RpcError as e: print(e.code().name, e.details())")
        out = subprocess.run([str(py), "-c", refuse, f"127.0.0.1:{port}"], **run)
        assert out.stdout.startswith("UNAVAILABLE") and "[train]" in out.stdout, out.stdout + out.stderr
    finally:
        gw.terminate()
        gw.wait(30)


SERVICE_SETTINGS = [("gateway", "GatewaySettings"), ("encoder", "EncoderSettings"),
                    ("denoiser", "DenoiserSettings"), ("trainer", "TrainerSettings")]


@pytest.mark.parametrize("service,settings_name", SERVICE_SETTINGS)
def test_service_settings_are_typed_and_cover_every_flag(monkeypatch, service, settings_name):
    """Every flag of every service lands in its typed settings, with the flag's type (env values included)."""
    import importlib

    from longcat.rpc.config import settings_cover_parser

    module = importlib.import_module(f"services.{service}.server")
    settings_cls, parser_of = getattr(module, settings_name), module.build_parser
    assert settings_cover_parser(settings_cls, parser_of()) == set()
    monkeypatch.setenv("LONGCAT_THREADS", "7")
    settings = settings_cls.from_args(parser_of().parse_args(["--grace-s", "2.5"]))
    assert settings.threads == 7 and settings.grace_s == 2.5 and isinstance(settings.port, int)
    with pytest.raises(Exception):  # frozen: the rest of the service cannot change its configuration
        settings.port = 1
