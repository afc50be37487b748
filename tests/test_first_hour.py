"""A newcomer's first hour, as they meet it: the CLI's defaults, exit codes and messages, only our own output,
the quickstart's commands as written (``longcat`` for ``simpletuner``), the cache, and compose.yaml."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from PIL import Image

from longcat.launch import ROOT, free_port

SAMPLE = str(ROOT / "examples" / "sample.png")
NO_GATEWAY = "no LongCat gateway at {}; start one with `longcat up` or set LONGCAT_GATEWAY"


def longcat(*args, env=None, cwd=None, timeout=300):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LONGCAT_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "longcat.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd or ROOT)


# -- the edit command's default route and its messages -------------------------------------------------


def test_edit_goes_to_the_gateway_by_default_and_a_missing_one_fails_at_once_with_what_to_do(tmp_path):
    address = f"127.0.0.1:{free_port()}"  # nothing listens here
    started = time.monotonic()
    proc = longcat("edit", "--image", SAMPLE, "--prompt", "x", "--out", str(tmp_path / "o.png"),
                   env={"LONGCAT_GATEWAY": address})
    elapsed = time.monotonic() - started
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr == f"longcat edit: error: {NO_GATEWAY.format(address)}\n"
    # The client used to retry a refused connection for 6.5 s in silence; now the refusal is final at once
    # (a generous bound: Python start-up and imports only).
    assert elapsed < 5.0
    assert not (tmp_path / "o.png").exists()


def test_gateway_flag_wins_over_the_environment_and_the_default_is_port_50051(tmp_path):
    flag, env = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    proc = longcat("jobs", "list", "--gateway", flag, env={"LONGCAT_GATEWAY": env})
    assert proc.returncode == 4 and NO_GATEWAY.format(flag) in proc.stderr
    from longcat.client.sync import resolve_address

    saved = os.environ.pop("LONGCAT_GATEWAY", None)
    try:
        assert resolve_address(None) == "127.0.0.1:50051"
    finally:
        if saved is not None:
            os.environ["LONGCAT_GATEWAY"] = saved


def test_the_python_client_also_fails_at_once_without_a_gateway():
    from longcat.client import LongCatClient
    from longcat.errors import Unavailable

    address = f"127.0.0.1:{free_port()}"
    with LongCatClient(address, retries=5, backoff_s=1.0) as lc:
        started = time.monotonic()
        with pytest.raises(Unavailable, match="no LongCat gateway at"):
            lc.list_adapters()
        assert time.monotonic() - started < 1.0  # not 1 + 2 + 4 + ... seconds of backoff


@pytest.mark.parametrize("extra,flag,text", [
    (["--steps", "0"], "--steps", "must be between 1 and 200, got 0"),
    (["--guidance", "99"], "--guidance", "must be a number between 0 and 30.0"),
    (["--width", "100", "--height", "64"], "--width", "must be a multiple of 16"),
    (["--width", "64"], "--height", "give both width and height"),
    (["--negative-prompt", "x", "--prompt", " "], "--prompt", "must be a non-empty instruction"),
])
def test_in_process_requests_are_checked_before_the_model_loads_and_errors_name_the_flag(tmp_path, extra, flag,
                                                                                         text):
    # The model folder does not exist: reaching the load would fail with "not found" (exit 3), not this.
    proc = longcat("edit", "--model", str(tmp_path / "no-such-model"), "--image", SAMPLE, "--prompt", "x",
                   "--out", str(tmp_path / "o.png"), *extra)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"longcat edit: error: {flag}: ") and text in proc.stderr
    assert "num_inference_steps" not in proc.stderr and "guidance_scale" not in proc.stderr
    as_json = longcat("edit", "--model", str(tmp_path / "no-such-model"), "--image", SAMPLE, "--prompt", "x",
                      "--out", str(tmp_path / "o.png"), "--json", *extra)
    assert json.loads(as_json.stdout)["flag"] == flag


# -- only our output ---------------------------------------------------------------------------------


def test_in_process_edit_and_tiny_print_nothing_from_third_parties(tmp_path):
    model = tmp_path / "tiny"
    built = longcat("tiny", "--out", str(model))
    assert built.returncode == 0 and built.stderr == "", built.stderr  # no "Writing model shards" bars
    proc = longcat("edit", "--model", str(model), "--image", SAMPLE, "--prompt", "x", "--out",
                   str(tmp_path / "o.png"), "--width", "64", "--height", "64", "--steps", "2")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # no "Loading weights" bars, no warnings
    assert proc.stdout.startswith("wrote ")


def test_log_level_from_the_environment_and_json_lines_when_not_a_terminal(tmp_path, tiny_model_path):
    proc = longcat("edit", "--model", tiny_model_path, "--image", SAMPLE, "--prompt", "x", "--out",
                   str(tmp_path / "o.png"), "--width", "64", "--height", "64", "--steps", "1",
                   env={"LONGCAT_LOG_LEVEL": "INFO"})
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    assert any(rec["msg"] == "component loaded" for rec in lines)
    assert {rec["logger"].split(".")[0] for rec in lines} == {"longcat"}


def test_plain_lines_on_a_terminal_json_elsewhere_and_the_environment_decides(monkeypatch):
    import io
    import logging

    from longcat.logs import PlainFormatter, _want_json

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("LONGCAT_LOG_FORMAT", raising=False)
    assert _want_json(None, Terminal()) is False and _want_json(None, io.StringIO()) is True
    monkeypatch.setenv("LONGCAT_LOG_FORMAT", "json")
    assert _want_json(None, Terminal()) is True
    record = logging.LogRecord("longcat.x", logging.INFO, "", 0, "gateway up", (), None)
    record.port = 50051
    line = PlainFormatter().format(record)
    assert "INFO" in line and line.endswith("gateway up  port=50051") and not line.startswith("{")


def test_grpc_core_logs_at_error_and_a_user_choice_wins():
    code = "import longcat, os; print(os.environ['GRPC_VERBOSITY'], os.environ['HF_HUB_DISABLE_PROGRESS_BARS'])"
    env = {k: v for k, v in os.environ.items() if k not in ("GRPC_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.stdout.split() == ["ERROR", "1"]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "GRPC_VERBOSITY": "DEBUG"}, cwd=ROOT)
    assert out.stdout.split()[0] == "DEBUG"


# -- version, help ------------------------------------------------------------------------------------


def test_version():
    from longcat import __version__

    proc = longcat("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"longcat {__version__}"


def test_serve_help_exits_0_and_lists_the_services():
    proc = longcat("serve", "--help")
    assert proc.returncode == 0
    for name in ("encoder", "denoiser", "gateway", "trainer"):
        assert f"\n  {name} " in proc.stdout
    bare = longcat("serve")
    assert bare.returncode == 2 and "name a service" in bare.stderr


def test_service_help_has_no_help_variable():
    proc = longcat("serve", "gateway", "--help")
    assert proc.returncode == 0 and "LONGCAT_REDIS_URL" in proc.stdout and "LONGCAT_HELP" not in proc.stdout


def test_every_flag_of_every_command_has_help():
    from longcat.cli.main import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "longcat")
    assert missing == []


# -- the quickstart's commands as written ----------------------------------------------------------------


@pytest.fixture
def quickstart(tmp_path):
    """The README's steps in a fresh folder: copy the examples, write the sample dataset."""
    (tmp_path / "config").mkdir()
    config = json.loads((ROOT / "config" / "config.json.example").read_text())
    config.update(validation_num_inference_steps=1, num_validation_images=1)
    (tmp_path / "config" / "config.json").write_text(json.dumps(config))
    shutil.copy(ROOT / "config" / "dataloader.json.example", tmp_path / "config" / "dataloader.json")
    from longcat.training.sample_data import write_pairs

    write_pairs(tmp_path / "data", count=3, size=(64, 64), seed=1)
    return tmp_path


def test_validate_takes_the_quickstarts_flags_as_overrides(quickstart, tiny_model_path):
    # `simpletuner validate --model_family longcat_image --model_flavour edit --validation_resolution 768x768
    #  --validation_guidance 4.5 --validation_num_inference_steps 40`, smaller so that it runs in seconds.
    proc = longcat("validate", "--model_family", "longcat_image", "--model_flavour", "edit",
                   "--validation_resolution", "96x64", "--validation_guidance", "4.5",
                   "--validation_num_inference_steps", "1", "--model", tiny_model_path, "--json", cwd=quickstart)
    assert proc.returncode == 0, proc.stderr
    images = json.loads(proc.stdout)["images"]
    assert images and all(Image.open(quickstart / p).size == (96, 64) for p in images)
    wrong = longcat("validate", "--model_flavour", "final", "--check-only", cwd=quickstart)
    assert wrong.returncode == 2 and "model_flavour" in wrong.stderr


def test_train_with_the_config_alone_reads_data_backend_config(quickstart):
    address = f"127.0.0.1:{free_port()}"
    # The dataloader named by data_backend_config was read: the command got as far as the gateway.
    proc = longcat("train", "--config", "config/config.json", "--gateway", address, cwd=quickstart)
    assert proc.returncode == 4 and NO_GATEWAY.format(address) in proc.stderr, proc.stderr
    (quickstart / "config" / "dataloader.json").unlink()
    proc = longcat("train", "--config", "config/config.json", "--gateway", address, cwd=quickstart)
    assert proc.returncode == 3 and "data_backend_config" in proc.stderr and "config/dataloader.json" in proc.stderr
    from longcat.client.datasets import LocalTrainingJob

    (quickstart / "config" / "dataloader.json").write_text((ROOT / "config" / "dataloader.json.example").read_text())
    job = LocalTrainingJob.load(str(quickstart / "config" / "config.json"), None, base_dir=quickstart)
    assert [d["id"] for d in job.dataloader] == ["edit-images", "ref-images"]


def test_a_dataloader_path_that_does_not_exist_is_named_as_missing_not_parsed_as_json(quickstart):
    from longcat.client.datasets import LocalTrainingJob
    from longcat.errors import NotFound

    with pytest.raises(NotFound, match="no such file 'config/nope.json'") as info:
        LocalTrainingJob.load(str(quickstart / "config" / "config.json"), "config/nope.json", base_dir=quickstart)
    assert info.value.field == "dataloader"


def test_cache_clear_empties_both_vae_caches_and_the_text_cache_and_says_so(quickstart):
    import torch

    from longcat.training.cache import TensorCache

    dataloader = json.loads((quickstart / "config" / "dataloader.json").read_text())
    dataloader.append({"id": "text-cache", "dataset_type": "text_embeds", "cache_dir": "cache/text"})
    (quickstart / "config" / "dataloader.json").write_text(json.dumps(dataloader))
    folders = [quickstart / "cache/vae/longcat/edit", quickstart / "cache/vae/longcat/ref", quickstart / "cache/text"]
    for i, folder in enumerate(folders):
        for k in range(i + 1):
            TensorCache(folder, "t").get_or_create(f"{i}{k}".ljust(64, "a"), lambda: torch.ones(2, 2))
    keep = quickstart / "cache/vae/longcat/edit/notes.txt"  # not a cache file: never removed
    keep.write_text("mine")
    proc = longcat("cache", "clear", "--config", "config/config.json", cwd=quickstart)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "vae[edit-images]" in lines[0] and "removed 1 file " in lines[0]
    assert "vae[ref-images]" in lines[1] and "removed 2 files" in lines[1]
    assert lines[2].startswith("text") and "removed 3 files" in lines[2]
    assert lines[-1].startswith("cleared 3 caches, 6 files")
    assert not list(quickstart.glob("cache/**/*.safetensors")) and keep.read_text() == "mine"
    again = json.loads(longcat("cache", "clear", "--config", "config/config.json", "--dataloader",
                               "config/dataloader.json", "--json", cwd=quickstart).stdout)
    assert [c["files"] for c in again["cleared"]] == [0, 0, 0]


# -- compose.yaml --------------------------------------------------------------------------------------


def _service_flags(name: str) -> set[str]:
    import importlib

    parser = importlib.import_module(f"services.{name}.server").build_parser()
    return {opt for a in parser._actions for opt in a.option_strings if opt.startswith("--")}


def test_compose_runs_the_stack_from_the_deploy_images():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        rendered = subprocess.run(["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "--quiet"],
                                  capture_output=True, text=True, cwd=ROOT)
        assert rendered.returncode == 0, rendered.stderr
    import jsonschema

    # The Compose Specification's own schema, vendored for offline use: compose-spec/compose-spec at
    # 170098ba07d9f53c383a41bfd4c5166b0a4529a6, schema/compose-spec.json (Apache-2.0).
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    jsonschema.validate(compose, schema)
    services = compose["services"]
    assert set(services) == {"redis", "encoder", "denoiser", "trainer", "gateway"}
    every_flag = set().union(*(_service_flags(n) for n in ("encoder", "denoiser", "trainer", "gateway")))
    for name in ("encoder", "denoiser", "trainer", "gateway"):
        svc = services[name]
        assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["build"]["dockerfile"].startswith("deploy/docker/")
        assert svc["command"][0] == name  # the image's entrypoint runs `python -m services.NAME`
        flags = _service_flags(name)
        assert all(arg in flags for arg in svc["command"][1:] if arg.startswith("--"))
        port = svc["command"][svc["command"].index("--port") + 1]
        assert svc["healthcheck"]["test"][-1] == f"127.0.0.1:{port}"
        for var in svc["environment"]:  # every LONGCAT_* variable is some service's flag (or the model cache)
            flag = "--" + var.removeprefix("LONGCAT_").lower().replace("_", "-")
            assert var == "LONGCAT_CACHE" or flag in every_flag, var
        for dep in svc.get("depends_on", {}):
            assert dep in services
    assert services["gateway"]["ports"] == ["127.0.0.1:50051:50051"]  # the CLI's default address
    assert services["denoiser"]["environment"]["LONGCAT_ENCODER"] == "encoder:50061"


def test_compose_health_check_module_answers(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "longcat.rpc.healthcheck", f"127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and "UNAVAILABLE" in proc.stdout


def test_log_level_from_the_environment_reaches_longcat_up_and_every_service(monkeypatch):
    import importlib

    from longcat.cli.main import build_parser

    monkeypatch.setenv("LONGCAT_LOG_LEVEL", "DEBUG")
    assert build_parser().parse_args(["up"]).service_log_level == "DEBUG"  # passed on to each child
    for name in ("encoder", "denoiser", "trainer", "gateway"):
        assert importlib.import_module(f"services.{name}.server").build_parser().parse_args([]).log_level == "DEBUG"
