"""The ``longcat`` CLI as a user runs it: a separate process, files in and out, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "examples", "sample.png")


def longcat(*args, check=False):
    cmd = [sys.executable, "-m", "longcat.cli.main", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny-model"
    proc = longcat("tiny", "--out", str(out), "--seed", "0", check=True)
    assert "written to" in proc.stdout
    return out


def test_tiny_then_in_process_edit_writes_a_png_of_the_requested_size(cli_model, tmp_path):
    out = tmp_path / "edited.png"
    proc = longcat("edit", "--model", str(cli_model), "--image", SAMPLE, "--prompt", "make the sky purple",
                   "--out", str(out), "--width", "128", "--height", "96", "--steps", "3", "--seed", "5", check=True)
    assert Image.open(out).size == (128, 96) and Image.open(out).format == "PNG"
    assert "seed 5" in proc.stdout
    assert proc.stderr == ""  # piped: no progress bar, and nothing from transformers/diffusers/tqdm


def test_json_output(cli_model, tmp_path):
    out = tmp_path / "e.png"
    proc = longcat("edit", "--model", str(cli_model), "--image", SAMPLE, "--prompt", "x", "--out", str(out),
                   "--width", "64", "--height", "64", "--steps", "2", "--seed", "9", "--json", check=True)
    summary = json.loads(proc.stdout)
    assert summary["ok"] and summary["width"] == 64 and summary["seed"] == 9 and "total_s" in summary["timings"]


@pytest.mark.parametrize("extra,code,text", [
    (["--width", "100", "--height", "64"], 2, "width: must be a multiple of 16"),
    (["--steps", "0"], 2, "--steps: must be between 1 and 200"),
    (["--adapter", "nope"], 3, "--adapter (#1)"),
])
def test_errors_are_one_line_with_meaningful_exit_codes(cli_model, tmp_path, extra, code, text):
    proc = longcat("edit", "--model", str(cli_model), "--image", SAMPLE, "--prompt", "x",
                   "--out", str(tmp_path / "o.png"), *extra)
    assert proc.returncode == code, proc.stderr
    lines = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if ln.startswith("longcat edit: error:")]
    assert len(lines) == 1 and text in lines[0]


def test_corrupt_image_file(cli_model, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    proc = longcat("edit", "--model", str(cli_model), "--image", str(bad), "--prompt", "x", "--out",
                   str(tmp_path / "o.png"), "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["field"] == "image"


def test_fp8_on_cpu_says_so(cli_model, tmp_path):
    proc = longcat("edit", "--model", str(cli_model), "--image", SAMPLE, "--prompt", "x", "--out",
                   str(tmp_path / "o.png"), "--precision", "fp8-torchao", "--device", "cpu")
    assert proc.returncode == 2 and "needs a CUDA GPU" in proc.stderr


def test_serve_runs_a_service_and_its_help_names_the_env_variables(tiny_model_path, tmp_path):
    import signal

    from longcat.launch import free_port
    from longcat.rpc.channel import make_channel, wait_until_serving

    help_text = longcat("serve", "gateway", "--help", check=True).stdout
    assert "LONGCAT_REDIS_URL" in help_text and "LONGCAT_API_KEYS_FILE" in help_text
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "longcat.cli.main", "serve", "encoder", "--host", "127.0.0.1",
                             "--port", str(port), "--metrics-port", "0", "--model", tiny_model_path],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))
    channel = make_channel(f"127.0.0.1:{port}")
    try:
        wait_until_serving(channel, "longcat.v1.Encoder", timeout=240)
    finally:
        channel.close()
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, (tmp_path / "serve.log").read_text()[-2000:]
