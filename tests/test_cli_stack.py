"""The CLI and the Python clients against a running local stack (``longcat up``), as a user runs them."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys

import pytest
from PIL import Image

from longcat.client import AsyncLongCatClient, LongCatClient
from longcat.errors import InvalidArgument, NotFound, Unavailable
from longcat.launch import ROOT, free_port
from longcat.training.sample_data import write_pairs
from longcat.v1 import edit_pb2

SAMPLE = str(ROOT / "examples" / "sample.png")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_path):
    data = tmp_path_factory.mktemp("cli-stack")
    ports = [str(free_port()) for _ in range(6)]
    cmd = [sys.executable, "-m", "longcat.cli.main", "up", "--model", tiny_model_path, "--port", ports[0],
           "--encoder-port", ports[1], "--denoiser-port", ports[2], "--trainer-port", ports[3],
           "--redis-url", f"redis://127.0.0.1:{ports[4]}/0", "--http-port", ports[5], "--metrics-port", "0",
           "--data-dir", str(data),
           "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(data / "up.err", "w"), text=True, cwd=ROOT)
    info = json.loads(proc.stdout.readline() or "{}")
    assert info.get("event") == "up", (data / "up.err").read_text()[-3000:]
    yield {"gateway": info["gateway"], "data": data, "info": info}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0


def cli(stack, *args, check=True, cwd=None):
    env = {**os.environ, "LONGCAT_GATEWAY": stack["gateway"]}
    proc = subprocess.run([sys.executable, "-m", "longcat.cli.main", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd or ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"longcat {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_edit_through_the_gateway_with_a_progress_bar(stack, tmp_path):
    out = tmp_path / "e.png"
    # No --gateway and no --model: $LONGCAT_GATEWAY is the gateway. On a terminal, a progress bar.
    proc = cli_on_terminal(stack, "edit", "--image", SAMPLE, "--prompt", "make the sky purple", "--out", str(out),
                           "--width", "128", "--height", "96", "--steps", "4", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (128, 96)
    assert "denoising" in proc.stderr and "4/4" in proc.stderr
    assert "seed 3" in proc.stdout and "job " in proc.stdout  # a job id: it went through the gateway
    # Piped (not a terminal): no bar redrawn line after line, nothing but the result.
    piped = cli(stack, "edit", "--image", SAMPLE, "--prompt", "x", "--out", str(out), "--width", "64",
                "--height", "64", "--steps", "2")
    assert piped.stderr == "" and piped.stdout.startswith("wrote ")


def cli_on_terminal(stack, *args):
    """The CLI with its stderr on a pseudo-terminal (as a person sees it); returns stdout/stderr text."""
    import fcntl
    import pty
    import struct
    import termios

    env = {**os.environ, "LONGCAT_GATEWAY": stack["gateway"]}
    master, slave = pty.openpty()
    # A fresh pty is 0 columns wide, and tqdm would draw an empty bar: give it a terminal's size.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "longcat.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=slave, text=True, env=env, cwd=ROOT)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    out = proc.stdout.read()
    proc.wait(300)
    return subprocess.CompletedProcess(args, proc.returncode, out, b"".join(chunks).decode(errors="replace"))


def test_edit_json(stack, tmp_path):
    proc = cli(stack, "edit", "--image", SAMPLE, "--prompt", "x", "--out", str(tmp_path / "j.png"), "--width", "64",
               "--height", "64", "--steps", "2", "--seed", "5", "--json")
    summary = json.loads(proc.stdout)
    assert summary["ok"] and summary["seed"] == 5 and summary["job_id"] and "denoising" not in proc.stderr


def test_edit_errors_are_one_line_with_exit_codes(stack, tmp_path):
    bad = cli(stack, "edit", "--image", SAMPLE, "--prompt", "x", "--out", str(tmp_path / "o.png"), "--width", "100",
              "--height", "64", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("width: must be a multiple of 16, got 100")
    missing = cli(stack, "edit", "--image", SAMPLE, "--prompt", "x", "--out", str(tmp_path / "o.png"), "--width",
                  "64", "--height", "64", "--steps", "2", "--adapter", "nope", check=False)
    assert missing.returncode == 3 and "nope" in missing.stderr
    down = subprocess.run([sys.executable, "-m", "longcat.cli.main", "jobs", "list", "--gateway",
                           f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=120)
    assert down.returncode == 4 and "UNAVAILABLE" not in down.stderr.splitlines()[-1][:5]


def test_jobs_list_show_watch_cancel(stack, tmp_path):
    cli(stack, "edit", "--image", SAMPLE, "--prompt", "x", "--out", str(tmp_path / "a.png"), "--width", "64",
        "--height", "64", "--steps", "2")
    jobs = json.loads(cli(stack, "jobs", "list", "--kind", "edit", "--json").stdout)
    assert jobs and all(j["kind"] == "EDIT" for j in jobs)
    job_id = jobs[0]["id"]
    assert job_id in cli(stack, "jobs", "list").stdout
    shown = json.loads(cli(stack, "jobs", "show", job_id, "--json").stdout)
    assert shown["id"] == job_id and shown["state"] == "SUCCEEDED"
    events = [json.loads(line) for line in cli(stack, "jobs", "watch", job_id, "--json").stdout.splitlines()]
    assert events[0]["state"] == "QUEUED" and events[-1]["job"]["state"] == "SUCCEEDED"
    assert any("progress" in e for e in events)
    # cancel a long job that is running
    with LongCatClient(stack["gateway"]) as lc:
        job = lc.submit_edit(SAMPLE, "x", width=512, height=512, steps=200, guidance=1.0)
        for ev in lc.watch(job.id):
            if ev.HasField("progress"):
                break
    cancelled = json.loads(cli(stack, "jobs", "cancel", job.id, "--json").stdout)
    assert cancelled["state"] in ("RUNNING", "CANCELLED")
    final = json.loads(cli(stack, "jobs", "watch", job.id, "--json").stdout.splitlines()[-1])
    assert final["job"]["state"] == "CANCELLED"
    assert cli(stack, "jobs", "show", "no-such-job", check=False).returncode == 3


def test_train_then_adapters_list_show_delete(stack, tmp_path):
    write_pairs(tmp_path / "data", count=4, size=(64, 64), seed=3)
    config = json.loads((ROOT / "config" / "config.json.example").read_text())
    config.update(max_train_steps=4, lr_warmup_steps=1, checkpointing_steps=2, validation_steps=2,
                  num_validation_images=1)
    config["data_backend_config"] = "dl.json"  # the quickstart's `train --config FILE` alone
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "dl.json").write_text((ROOT / "config" / "dataloader.json.example").read_text())
    lines = cli(stack, "train", "--config", "config.json", "--name", "cli-style",
                "--wait", "--json", cwd=tmp_path).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["training"]["step"] for e in events if "training" in e] == [1, 2, 3, 4]
    assert events[-1]["job"]["state"] == "SUCCEEDED"
    # The run's pictures come back into the config's output_dir: validation edits, loss.png, the grid.
    results = tmp_path / config["output_dir"]
    assert sorted(e["result_image"]["name"] for e in events if "result_image" in e) == [
        "loss.png", "validation/grid.png"]
    assert Image.open(results / "loss.png").format == "PNG"
    from longcat.training.result_images import validation_grid

    one = Image.new("RGB", (64, 64))  # 1 prompt (reference | edit) x 2 validation steps (2 and 4)
    assert Image.open(results / "validation" / "grid.png").size == validation_grid([one], ["x"], [
        ("step 2", [one]), ("step 4", [one])]).size
    assert list((results / "validation").glob("step-*.png"))
    listed = json.loads(cli(stack, "adapters", "list", "--json").stdout)
    assert "cli-style" in [a["name"] for a in listed]
    shown = json.loads(cli(stack, "adapters", "show", "cli-style", "--json").stdout)
    assert shown["rank"] == 16 and shown["format"] == "diffusers"
    assert "cli-style" in cli(stack, "adapters", "list").stdout
    out = tmp_path / "styled.png"
    cli(stack, "edit", "--image", SAMPLE, "--prompt", "invert the colors", "--out", str(out), "--width", "64",
        "--height", "64", "--steps", "2", "--adapter", "cli-style:0.7")
    assert out.exists()
    assert "deleted" in cli(stack, "adapters", "delete", "cli-style").stdout
    assert cli(stack, "adapters", "show", "cli-style", check=False).returncode == 3


def test_python_client_sync(stack):
    with LongCatClient(stack["gateway"]) as lc:
        steps = []
        result = lc.edit(SAMPLE, "make it purple", width=64, height=64, steps=3, seed=9,
                         on_progress=lambda ev: ev.HasField("progress") and steps.append(ev.progress.step))
        assert steps == [1, 2, 3] and Image.open(io.BytesIO(result.image)).size == (64, 64)
        blocking = lc.edit(SAMPLE, "make it purple", width=64, height=64, steps=3, seed=9)
        assert blocking.image == result.image  # same seed, same pixels
        with pytest.raises(InvalidArgument) as err:
            lc.edit(b"not an image", "x")
        assert err.value.field == "image"
        with pytest.raises(NotFound):
            lc.get_job("missing")
        assert lc.get_job(result.job_id).state == edit_pb2.SUCCEEDED


def test_python_client_asyncio(stack):
    async def main():
        async with AsyncLongCatClient(stack["gateway"]) as lc:
            results = await asyncio.gather(*[lc.edit(SAMPLE, f"edit {i}", width=64, height=64, steps=2, seed=i)
                                             for i in range(3)])
            assert [Image.open(io.BytesIO(r.image)).size for r in results] == [(64, 64)] * 3
            seen = []
            r = await lc.edit(SAMPLE, "x", width=64, height=64, steps=2, on_progress=seen.append)
            assert r.image and any(ev.HasField("progress") for ev in seen)
            with pytest.raises(InvalidArgument):
                await lc.edit(SAMPLE, "x", width=70, height=64)

    asyncio.run(main())


def test_client_retries_unavailable_then_gives_up_typed():
    port = free_port()
    with LongCatClient(f"127.0.0.1:{port}", retries=2, backoff_s=0.05) as lc:
        with pytest.raises(Unavailable):
            lc.list_adapters()
