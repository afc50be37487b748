"""LoRA training runs on the real tiny model: learning, outputs, checkpoints, exact resume, cancellation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from longcat.adapters import AdapterManager, AdapterStore, read_lora
from longcat.errors import InvalidArgument, NotFound
from longcat.training import DatasetError, Trainer, publish
from longcat.training.loop import evaluation_loss
from longcat.training.sample_data import quickstart_dataloader, write_pairs


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("training-data")
    edits, refs = write_pairs(root / "data", count=8, size=(64, 64), seed=0)
    return quickstart_dataloader(edits, refs, root / "cache", resolution=64)


@pytest.fixture(scope="module")
def components(tiny_model_path):
    """This module's own copy: training adds (and then removes) a LoRA on it."""
    from longcat.models.loading import load_components

    return load_components(tiny_model_path, device="cpu", precision="fp32")


def config(out, **overrides):
    base = {"model_type": "lora", "model_family": "longcat_image", "model_flavour": "edit",
            "learning_rate": 5e-3, "lr_warmup_steps": 2, "max_train_steps": 40, "seed": 1,
            "output_dir": str(out), "checkpointing_steps": 10, "checkpoints_total_limit": 2,
            "validation_steps": 20, "validation_num_inference_steps": 3, "validation_resolution": "64x64",
            "num_validation_images": 2, "validation_seed": 5,
            # pinned, so this file tests the machinery whatever the recipe defaults are
            "lora_rank": 16, "lora_alpha": 16, "lora_init_type": "default", "caption_dropout_probability": 0.0}
    return {**base, **overrides}


@pytest.fixture(scope="module")
def trained(dataset, components, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    events, evals = [], {}
    trainer = None

    def sink(event):
        events.append(event)
        if event["type"] in ("start", "done"):  # the LoRA is on the transformer at both moments
            evals[event["type"]] = evaluation_loss(trainer.state.transformer, trainer.dataset, trainer.settings)

    trainer = Trainer(config(out), dataset, components=components, on_event=sink)
    result = trainer.run()
    return out, result, events, evals


def test_the_loss_falls(trained):
    _, result, _, evals = trained
    assert result.status == "completed" and result.step == 40 and len(result.losses) == 40
    assert all(np.isfinite(result.losses))
    assert evals["done"] < 0.9 * evals["start"], evals      # fixed-noise loss over the training pairs
    assert np.mean(result.losses[-10:]) < np.mean(result.losses[:10])


def test_progress_events(trained):
    out, result, events, _ = trained
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 41)) and {e["total"] for e in steps} == {40}
    assert [e["loss"] for e in steps] == result.losses
    assert [e["lr"] for e in steps[:3]] == [0.0, 2.5e-3, 5e-3]  # constant_with_warmup, 2 warmup steps
    assert steps[-1]["eta_s"] == 0 and all(e["eta_s"] >= 0 for e in steps)
    kinds = [e["type"] for e in events if e["type"] not in ("step", "caching", "phase")]
    assert kinds == ["start", "checkpoint", "checkpoint", "validation", "checkpoint", "checkpoint", "validation",
                     "result_images", "done"]
    start = next(e for e in events if e["type"] == "start")
    assert start["pairs"] == 6 and start["validation_pairs"] == 2 and start["buckets"] == {"64x64": 6}
    assert next(e for e in events if e["type"] == "done")["adapter_path"] == str(out / "pytorch_lora_weights.safetensors")
    json.dumps(events)  # events travel as JSON


def test_checkpoints_rotate(trained):
    out, result, events, _ = trained
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [10, 20, 30, 40]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-30", "checkpoint-40"]
    files = sorted(p.name for p in (out / "checkpoints" / "checkpoint-40").iterdir())
    assert files == ["optimizer.pt", "pytorch_lora_weights.safetensors", "rng.pt", "scheduler.pt",
                     "training_state.json"]
    state = json.loads((out / "checkpoints" / "checkpoint-40" / "training_state.json").read_text())
    assert state["step"] == 40 and state["losses"] == result.losses and state["seed"] == 1


def test_result_pictures_are_written_with_the_adapter(trained):
    out, result, events, _ = trained
    assert Image.open(out / "loss.png").size == (640, 360)
    grid = Image.open(out / "validation" / "grid.png")
    assert result.result_images == [out / "loss.png", out / "validation" / "grid.png"]
    # 2 validation prompts (reference | edit each) x 2 validation steps (20, 40)
    assert grid.size == (84 + 4 * 198 + 6, 34 + 2 * 198 + 6)
    announced = next(e for e in events if e["type"] == "result_images")
    assert announced["names"] == ["loss.png", "validation/grid.png"]


def test_adapter_and_summary(trained, components):
    out, result, _, _ = trained
    lora = read_lora(out)
    assert (lora.format, lora.rank, lora.alpha) == ("diffusers", 16, 16.0)
    assert all(k.startswith("transformer.") for k in lora.state_dict)
    assert "transformer_blocks.0.attn.to_q" in lora.module_names()
    assert "transformer_blocks.0.ff_context.net.2" in lora.module_names()
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 40 and summary["losses"] == result.losses
    assert summary["lora"]["rank"] == 16 and summary["pairs"] == {"train": 6, "validation": 2, "total": 8}
    assert summary["seed"] == 1 and summary["cache"]["text"]["misses"] == 6
    # Lent components come back as they were: no LoRA left, eval mode.
    assert not getattr(components.transformer, "peft_config", None) and not components.transformer.training


def test_validation_renders_through_the_serving_engine_with_the_lora(trained, components, dataset):
    out, result, events, _ = trained
    shots = {e["step"]: e["images"] for e in events if e["type"] == "validation"}
    assert sorted(shots) == [20, 40]
    assert shots[40] == [str(out / "validation" / "step-40" / f"000{i}.png") for i in range(2)]
    for path in shots[20] + shots[40]:
        assert Image.open(path).size == (64, 64)
    assert Image.open(shots[20][0]).tobytes() != Image.open(shots[40][0]).tobytes()

    # Serving the published adapter by name renders the very same pixels as the in-training validation.
    from longcat.engine import AdapterRef, EditEngine, EditRequest

    reference = Image.open(f"{dataset[1]['instance_data_dir']}/0000.png").convert("RGB")
    request = dict(image=reference, prompt="invert the colors", width=64, height=64, num_inference_steps=3,
                   guidance_scale=4.5, seed=5)
    manager = AdapterManager(components.transformer)
    manager.load("trained", out)
    try:
        engine = EditEngine(components, adapter_manager=manager)
        served = engine.edit(EditRequest(**request, adapters=[AdapterRef("trained", 1.0)]))
        base = engine.edit(EditRequest(**request))
    finally:
        manager.unload("trained")
    assert served.image.tobytes() == Image.open(shots[40][0]).convert("RGB").tobytes()
    assert base.image.tobytes() != served.image.tobytes()


def test_publish_into_the_adapter_store(trained, components, tmp_path):
    out, _, _, _ = trained
    store = AdapterStore(tmp_path / "adapters")
    folder = publish(out, store, "invert-colors")
    assert store.list() == ["invert-colors"] and (folder / "training_summary.json").is_file()
    assert (folder / "pytorch_lora_weights.safetensors").read_bytes() == (out / "pytorch_lora_weights.safetensors").read_bytes()
    with pytest.raises(InvalidArgument, match="already exists"):
        publish(out, store, "invert-colors")
    assert publish(out, store, "invert-colors", overwrite=True) == folder
    with pytest.raises(InvalidArgument) as info:
        publish(out, store, "../escape")
    assert info.value.field == "name"
    with pytest.raises(NotFound):
        publish(tmp_path / "no-run", store, "x")
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    manager = AdapterManager(components.transformer, store)
    with manager.activate([("invert-colors", 1.0)]):
        pass
    manager.unload("invert-colors")


def test_cancellation_stops_within_one_step(dataset, components, tmp_path):
    events = []
    trainer = Trainer(config(tmp_path, checkpointing_steps=None), dataset, components=components,
                      on_event=events.append,
                      should_stop=lambda: sum(e["type"] == "step" for e in events) >= 3)
    result = trainer.run()
    assert result.status == "cancelled" and result.step == 3 and len(result.losses) == 3
    assert [e["type"] for e in events if e["type"] in ("step", "cancelled", "done")] == ["step"] * 3 + ["cancelled"]
    assert result.adapter_path is None and not (tmp_path / "pytorch_lora_weights.safetensors").exists()
    assert json.loads((tmp_path / "training_summary.json").read_text())["status"] == "cancelled"
    assert not getattr(components.transformer, "peft_config", None)


def test_bad_datasets_fail_before_any_model_loads(dataset, tmp_path):
    broken = [dict(d) for d in dataset]
    broken[0]["conditioning_data"] = ["nope"]
    trainer = Trainer(config(tmp_path), broken)
    with pytest.raises(DatasetError, match="names dataset 'nope'"):
        trainer.run()
    assert trainer.components is None and trainer.state is None


def test_int8_quanto_base_trains(dataset, tmp_path):
    from longcat.models.precision import is_quantized

    trainer = Trainer(config(tmp_path, base_model_precision="int8-quanto", gradient_checkpointing=True,
                             max_train_steps=3, validation_steps=None, num_validation_images=1,
                             checkpointing_steps=None), dataset)
    result = trainer.run()
    assert result.status == "completed" and len(result.losses) == 3 and all(np.isfinite(result.losses))
    transformer = trainer.components.transformer
    assert is_quantized(transformer) and transformer.is_gradient_checkpointing
    assert trainer.components.precision.name == "int8-quanto"
    assert read_lora(tmp_path).rank == 16
    assert len(result.validation_images[3]) == 1


def test_fp8_on_cpu_is_refused_clearly(dataset, tmp_path):
    with pytest.raises(InvalidArgument, match="fp8-torchao needs a CUDA GPU"):
        Trainer(config(tmp_path, base_model_precision="fp8-torchao"), dataset, device="cpu").run()


def test_encoder_service_seam(dataset, tiny_components, tmp_path):
    """Without an Embedder for the encoder service the run is refused before loading; with one (any object
    with ``fingerprint`` and ``embed``) it trains with no text encoder in this process."""
    from longcat.training import Embedder, InProcessEmbedder

    service = {"embeddings_source": "encoder_service", "encoder_address": "encoder:50051", "max_train_steps": 2,
               "lr_warmup_steps": 0, "checkpointing_steps": None, "validation_steps": None}
    trainer = Trainer(config(tmp_path, **service), dataset)
    with pytest.raises(InvalidArgument, match="needs an encoder-service Embedder") as info:
        trainer.run()
    assert info.value.field == "embeddings_source" and trainer.state is None

    class Remote:  # stands in for the gRPC client: records the cache keys it is asked for
        def __init__(self):
            self.inner, self.keys = InProcessEmbedder(tiny_components), []
            self.fingerprint = "encoder-service:" + self.inner.fingerprint

        def embed(self, prompt, prompt_image, key):
            self.keys.append(key)
            return self.inner.embed(prompt, prompt_image, key)

    remote = Remote()
    assert isinstance(remote, Embedder)
    trainer = Trainer(config(tmp_path, **service), dataset, embedder=remote)
    result = trainer.run()
    assert result.status == "completed" and len(remote.keys) == 6 and len(set(remote.keys)) == 6
    assert trainer.components.text_encoder is None and result.validation_images == {}
