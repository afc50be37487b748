"""LoRA training as jobs through the gateway, on the real stack: Redis, gateway, Celery trainer(s), encoder and
a denoiser worker serving the published adapter (tiny model, a generated learnable dataset)."""

from __future__ import annotations

import io
import json
import shutil
import signal
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from longcat.client import LongCatClient
from longcat.errors import InvalidArgument
from longcat.launch import ServiceProcess
from longcat.training.sample_data import CAPTION, write_pairs
from longcat.v1 import edit_pb2

NS = "train-e2e"


def _config(**overrides) -> dict:
    base = {"model_type": "lora", "model_family": "longcat_image", "model_flavour": "edit",
            "base_model_precision": "no_change", "learning_rate": 5e-3, "lr_warmup_steps": 2, "seed": 1,
            "max_train_steps": 60, "train_batch_size": 1, "output_dir": "runs/invert", "lora_rank": 16,
            "checkpointing_steps": 20, "checkpoints_total_limit": 2, "validation_steps": 30,
            "validation_num_inference_steps": 3, "validation_resolution": "64x64", "num_validation_images": 1,
            "validation_seed": 5, "aspect_bucket_alignment": 64}
    return {**base, **overrides}


def _dataloader(folder: str = "ds") -> list:
    return [{"id": "edit-images", "type": "local", "instance_data_dir": f"{folder}/edits",
             "caption_strategy": "textfile", "resolution": 64, "cache_dir_vae": f"cache/{folder}/edit",
             "conditioning_data": ["ref-images"]},
            {"id": "ref-images", "type": "local", "instance_data_dir": f"{folder}/refs", "caption_strategy": None,
             "resolution": 64, "cache_dir_vae": f"cache/{folder}/ref"}]


class TrainStack:
    def __init__(self, root, model, redis_url):
        self.root, self.model, self.redis_url = root, model, redis_url
        self.data, self.out, self.adapters = root / "data", root / "out", root / "adapters"
        for d in (self.data, self.out, self.adapters):
            d.mkdir(parents=True, exist_ok=True)
        self.logs = root / "logs"
        self.logs.mkdir(exist_ok=True)
        shared = ["--redis-url", redis_url, "--namespace", NS, "--adapter-dir", str(self.adapters)]
        self.roots = ["--data-root", str(self.data), "--output-root", str(self.out)]
        self.encoder = ServiceProcess("encoder", ["--model", model], self.logs)
        self.denoiser = ServiceProcess("denoiser", ["--model", model, *shared, "--encoder", self.encoder.address],
                                       self.logs)
        self.gateway = ServiceProcess("gateway", ["--model", model, *shared, *self.roots], self.logs)
        self.trainers = [self.add_trainer()]
        for svc in (self.encoder, self.denoiser, self.gateway, *self.trainers):
            svc.wait_serving(240)
        self.client = LongCatClient(self.gateway.address)

    def add_trainer(self) -> ServiceProcess:
        return ServiceProcess("trainer", ["--model", self.model, "--redis-url", self.redis_url, "--namespace", NS,
                                          "--adapter-dir", str(self.adapters), *self.roots, "--lease-ttl-s", "3",
                                          "--reaper-period-s", "1", "--max-attempts", "3"], self.logs)

    def events(self, job_id: str) -> list:
        return list(self.client.watch(job_id))

    def close(self):
        self.client.close()
        for svc in (self.gateway, *self.trainers, self.denoiser, self.encoder):
            svc.stop(signal.SIGTERM, timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_model_path, redis_server):
    s = TrainStack(tmp_path_factory.mktemp("train-stack"), tiny_model_path, redis_server.url)
    write_pairs(s.data / "ds", count=8, size=(64, 64), seed=0)
    yield s
    s.close()


def _losses(events) -> list[float]:
    return [ev.training.loss for ev in events if ev.WhichOneof("payload") == "training"]


@pytest.fixture(scope="module")
def trained(stack):
    job = stack.client.train(_config(), _dataloader(), name="invert", upload="never")
    assert job.kind == edit_pb2.TRAINING and job.adapter_name == "invert"
    events = stack.events(job.id)
    return job, events


def test_a_job_runs_to_the_end_with_its_events(trained):
    job, events = trained
    final = events[-1].job
    assert final.state == edit_pb2.SUCCEEDED, final.reason
    assert final.adapter_name == "invert" and final.step == 60 and final.attempts == 1
    kinds = [ev.WhichOneof("payload") for ev in events]
    assert kinds[0] == "queue_position"
    assert [ev.training.step for ev in events if ev.WhichOneof("payload") == "training"] == list(range(1, 61))
    assert [ev.checkpoint.step for ev in events if ev.WhichOneof("payload") == "checkpoint"] == [20, 40, 60]
    validations = [ev.validation for ev in events if ev.WhichOneof("payload") == "validation"]
    assert sorted({v.step for v in validations}) == [30, 60]
    assert Image.open(io.BytesIO(validations[-1].image_png)).size == (64, 64)
    t = next(ev.training for ev in events if ev.WhichOneof("payload") == "training" and ev.training.step == 30)
    assert t.lr > 0 and t.eta_s >= 0 and t.total_steps == 60


def test_the_loss_falls(trained):
    losses = _losses(trained[1])
    assert np.mean(losses[-15:]) < np.mean(losses[:15]), losses


def test_the_published_adapter_is_served_at_once_and_moves_edits_toward_the_target(trained, stack, tiny_components):
    assert [a.name for a in stack.client.list_adapters()] == ["invert"]
    info = stack.client.get_adapter("invert")
    assert info.rank == 16 and info.job_id == trained[0].id
    ref_path = sorted((stack.data / "ds" / "refs").glob("*.png"))[0]
    ref = Image.open(ref_path).convert("RGB")
    # The target as the model can express it: the inverted reference through the (random) tiny VAE.
    from longcat.conditioning import Geometry, decode_latents, pack_latents, prepare_reference, vae_encode

    g = Geometry(64, 64)
    with torch.no_grad():
        z = vae_encode(tiny_components.vae, prepare_reference(ImageOps.invert(ref), g).pixels)
        target = decode_latents(tiny_components.vae, pack_latents(z), g)[0].permute(1, 2, 0).numpy()

    def served(adapters):
        r = stack.client.edit(ref_path, CAPTION, width=64, height=64, steps=8, guidance=1.0, seed=3,
                              adapters=adapters)
        return np.asarray(Image.open(io.BytesIO(r.image)), dtype=np.float32) / 255

    base, tuned = served([]), served(["invert"])
    assert not np.array_equal(base, tuned)
    assert np.abs(tuned - target).mean() < np.abs(base - target).mean()


def test_a_validation_render_equals_the_served_edit_with_the_published_adapter(trained, stack):
    """One denoise stage: the trainer's last validation image (its in-process engine, the live LoRA, step 60)
    and the edit the stack serves with the published adapter (gateway -> encoder -> denoiser), for the same
    request and seed, are the same image, pixel for pixel."""
    from longcat.api.training_config import parse_config

    cfg = parse_config(_config())
    validations = [ev.validation for ev in trained[1] if ev.WhichOneof("payload") == "validation"]
    last = validations[-1]
    assert last.step == cfg.max_train_steps and last.index == 0  # the final weights: what was published
    ref_path = sorted((stack.data / "ds" / "refs").glob("*.png"))[0]  # the first pair in name order
    r = stack.client.edit(ref_path, CAPTION, negative_prompt=cfg.validation_negative_prompt, width=64, height=64,
                          steps=cfg.validation_num_inference_steps, guidance=cfg.validation_guidance,
                          seed=cfg.validation_seed, adapters=["invert"])
    served = np.asarray(Image.open(io.BytesIO(r.image)).convert("RGB"))
    rendered = np.asarray(Image.open(io.BytesIO(last.image_png)).convert("RGB"))
    assert served.shape == rendered.shape == (64, 64, 3)
    assert np.array_equal(served, rendered), f"max difference {np.abs(served.astype(int) - rendered).max()}"
    base = stack.client.edit(ref_path, CAPTION, negative_prompt=cfg.validation_negative_prompt, width=64,
                             height=64, steps=cfg.validation_num_inference_steps, guidance=cfg.validation_guidance,
                             seed=cfg.validation_seed)
    assert not np.array_equal(np.asarray(Image.open(io.BytesIO(base.image)).convert("RGB")), rendered)  # not vacuous


def test_cancel_stops_a_running_job(stack):
    job = stack.client.train(_config(max_train_steps=5000, validation_steps=0, checkpointing_steps=0,
                                     output_dir="runs/cancel"), _dataloader(), name="never", upload="never")
    for ev in stack.client.watch(job.id):
        if ev.WhichOneof("payload") == "training":
            break
    stack.client.cancel_job(job.id)
    final = stack.events(job.id)[-1].job
    assert final.state == edit_pb2.CANCELLED and 0 < final.step < 5000
    assert "never" not in [a.name for a in stack.client.list_adapters()]


def test_a_killed_worker_s_job_resumes_from_its_checkpoint(stack):
    job = stack.client.train(_config(max_train_steps=600, validation_steps=0, checkpointing_steps=25,
                                     num_validation_images=0, output_dir="runs/killed"), _dataloader(),
                             name="survivor", upload="never")
    seen = []
    for ev in stack.client.watch(job.id):
        if ev.WhichOneof("payload") == "checkpoint":
            seen.append(ev.checkpoint.step)
            break
    victim = stack.trainers[0]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(30)
    stack.trainers.append(stack.add_trainer())
    stack.trainers[-1].wait_serving(240)
    events = stack.events(job.id)
    final = events[-1].job
    assert final.state == edit_pb2.SUCCEEDED, final.reason
    assert final.attempts == 2 and final.step == 600
    second = next(i for i, ev in enumerate(events) if ev.message == "attempt 2")
    before = [ev.training.step for ev in events[:second] if ev.WhichOneof("payload") == "training"]
    after = [ev.training.step for ev in events[second:] if ev.WhichOneof("payload") == "training"]
    # The second attempt continued from a checkpoint (a multiple of 25, at or after the one seen before the
    # kill), not from zero, and ran every remaining step once, in order.
    assert after[0] - 1 >= seen[0] and (after[0] - 1) % 25 == 0 and after[0] - 1 <= before[-1]
    assert after == list(range(after[0], 601))
    assert "resuming" in " ".join(ev.message for ev in events)


@pytest.mark.parametrize("breakage,message", [
    ("missing-reference", "no reference"),
    ("extra-reference", "no edit image"),
    ("missing-caption", "caption"),
    ("broken-image", "decode"),
])
def test_malformed_datasets_are_refused_before_anything_starts(stack, breakage, message):
    folder = f"bad-{breakage}"
    edits, refs = write_pairs(stack.data / folder, count=3, size=(64, 64), seed=1)
    if breakage == "missing-reference":
        (refs / "0001.png").unlink()
    elif breakage == "extra-reference":
        shutil.copy(refs / "0000.png", refs / "0099.png")
    elif breakage == "missing-caption":
        (edits / "0002.txt").unlink()
    elif breakage == "broken-image":
        (edits / "0000.png").write_bytes(b"\x89PNG not really")
    before = len(stack.client.list_jobs(kind="training"))
    with pytest.raises(InvalidArgument) as err:
        stack.client.train(_config(output_dir=f"runs/{folder}"), _dataloader(folder), name="bad", upload="never")
    assert message in str(err.value).lower(), str(err.value)
    assert len(stack.client.list_jobs(kind="training")) == before


@pytest.mark.parametrize("change,field", [
    (lambda c, d: d[0].update(instance_data_dir="/etc"), "instance_data_dir"),
    (lambda c, d: d[0].update(instance_data_dir="ds/../../edits"), "instance_data_dir"),
    (lambda c, d: d[1].update(cache_dir_vae=d[0]["cache_dir_vae"]), "cache"),
    (lambda c, d: d[0].update(conditioning_data=["nope"]), "nope"),
    (lambda c, d: c.update(output_dir="/tmp/elsewhere"), "output_dir"),
    (lambda c, d: c.update(learning_rate=-1), "learning_rate"),
    (lambda c, d: c.update(model_flavour="dev"), "model_flavour"),
])
def test_bad_paths_and_config_values_are_refused(stack, change, field):
    config, loader = _config(), _dataloader()
    change(config, loader)
    with pytest.raises(InvalidArgument) as err:
        stack.client.train(config, loader, name="bad", upload="never")
    assert field in str(err.value), str(err.value)


def test_bad_adapter_name(stack):
    with pytest.raises(InvalidArgument) as err:
        stack.client.train(_config(), _dataloader(), name="../escape", upload="never")
    assert err.value.field == "adapter_name"


def test_cli_train_uploads_local_folders_and_waits(stack, tmp_path):
    """The quickstart's files with local paths, against a gateway that cannot read them: uploaded, trained."""
    import os
    import subprocess
    import sys

    write_pairs(tmp_path / "data", count=4, size=(64, 64), seed=2)
    cfg = _config(max_train_steps=4, checkpointing_steps=2, validation_steps=2, output_dir="output/cli-lora")
    loader = _dataloader("data")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "dataloader.json").write_text(json.dumps(loader))
    env = {**os.environ, "LONGCAT_GATEWAY": stack.gateway.address}
    proc = subprocess.run([sys.executable, "-m", "longcat.cli.main", "train", "--config", "config.json",
                           "--dataloader", "dataloader.json", "--name", "cli-lora", "--wait"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "published" in proc.stdout and proc.stderr == ""  # piped: no progress bar redrawn line by line
    # validation edits, loss.png and the grid saved locally, in the config's output_dir
    assert sorted(p.name for p in (tmp_path / "output/cli-lora/validation").glob("step-*.png"))
    assert (tmp_path / "output/cli-lora/loss.png").is_file()
    assert (tmp_path / "output/cli-lora/validation/grid.png").is_file()
    assert list((stack.data / "uploads").glob("cli-lora-*/edit-images/*.png"))


def test_a_worker_shutting_down_pauses_its_job_at_a_checkpoint_and_another_resumes_it(stack):
    """SIGTERM (a scale-down): the trainer checkpoints at its next step and exits at once; the job is not lost,
    not restarted from zero, and does not use up an attempt."""
    job = stack.client.train(_config(max_train_steps=3000, validation_steps=0, checkpointing_steps=1000,
                                     num_validation_images=0, output_dir="runs/paused"), _dataloader(),
                             name="paused", upload="never")
    for ev in stack.client.watch(job.id):
        if ev.WhichOneof("payload") == "training" and ev.training.step >= 5:
            break
    live = [t for t in stack.trainers if t.proc.poll() is None]
    assert len(live) == 1
    started = time.monotonic()
    live[0].proc.send_signal(signal.SIGTERM)
    assert live[0].proc.wait(120) == 0
    assert time.monotonic() - started < 60  # it did not run the remaining ~3000 steps first
    stack.trainers.append(stack.add_trainer())
    stack.trainers[-1].wait_serving(240)
    events = stack.events(job.id)
    final = events[-1].job
    assert final.state == edit_pb2.SUCCEEDED and final.step == 3000, final.reason
    assert final.attempts == 1  # the pause was not a failed attempt
    paused = next(i for i, ev in enumerate(events) if ev.message.startswith("paused at step"))
    pause_step = int(events[paused].message.split()[3].rstrip(":"))
    checkpoints = [ev.checkpoint.step for ev in events[:paused] if ev.WhichOneof("payload") == "checkpoint"]
    assert checkpoints[-1] == pause_step  # a checkpoint exactly where it stopped (not a multiple of 1000)
    after = [ev.training.step for ev in events[paused:] if ev.WhichOneof("payload") == "training"]
    assert after == list(range(pause_step + 1, 3001))


# --- the HTTP door: the same jobs over REST and Server-Sent Events ------------------------------------------------

def test_training_events_over_http_carry_the_loss_and_validation_images(trained, stack):
    import httpx

    from tests.http_helpers import sse_events

    job, events = trained
    with httpx.Client(base_url=stack.gateway.http_url, timeout=120) as http:
        sse = sse_events(http, f"/v1/jobs/{job.id}/events")
        assert http.get(f"/v1/jobs/{job.id}").json()["state"] == "SUCCEEDED"
        listed = http.get("/v1/jobs", params={"kind": "training"}).json()["data"]
        assert job.id in [j["id"] for j in listed]
    losses = [e["loss"] for e in sse if e["kind"] == "loss"]
    assert losses == pytest.approx(_losses(events)) and len(losses) == 60
    validations = [e for e in sse if e["kind"] == "validation"]
    assert validations and all(v["image"].startswith("data:image/png;base64,") for v in validations)
    assert sse[-1]["kind"] == "state" and sse[-1]["job"]["adapter_name"] == "invert"


def test_training_submitted_over_http_with_its_files_runs_and_cancels(stack):
    import httpx

    from tests.http_helpers import sse_events

    folder = stack.data / "ds"
    parts = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in parts]
    paths = [("paths", f"mine/{p.relative_to(folder)}") for p in parts]
    with httpx.Client(base_url=stack.gateway.http_url, timeout=120) as http:
        r = http.post("/v1/trainings", data={"config": json.dumps(_config(output_dir="runs/http")),
                                             "dataloader": json.dumps(_dataloader("mine")), "name": "http-lora"},
                      files=[*files, *[("paths", (None, v)) for _, v in paths]])
        assert r.status_code == 201, r.text
        job = r.json()
        assert (stack.data / "uploads" / "http-lora" / "mine" / "edits").is_dir()
        first = sse_events(http, f"/v1/jobs/{job['id']}/events", timeout=300, until=lambda e: e["kind"] == "loss")
        assert first[-1]["kind"] == "loss" and first[-1]["loss"] > 0
        assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200
        assert sse_events(http, f"/v1/jobs/{job['id']}/events", timeout=120)[-1]["state"] == "CANCELLED"
