"""Reproducible training: same config and data -> same losses and adapter bytes; a run interrupted and
resumed from its latest checkpoint ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import pytest

from longcat.training import Trainer
from longcat.training.sample_data import quickstart_dataloader, write_pairs

WEIGHTS = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume-data")
    edits, refs = write_pairs(root / "data", count=8, size=(64, 64), seed=1)
    return quickstart_dataloader(edits, refs, root / "cache", resolution=64)


@pytest.fixture(scope="module")
def components(tiny_model_path):
    from longcat.models.loading import load_components

    return load_components(tiny_model_path, device="cpu", precision="fp32")


def config(out, **overrides):
    # Batches of 2, warmup, caption dropout and validation in the middle: all of it must resume exactly.
    return {"learning_rate": 3e-3, "lr_warmup_steps": 3, "lr_scheduler": "cosine", "max_train_steps": 12,
            "train_batch_size": 2, "seed": 11, "output_dir": str(out), "checkpointing_steps": 4,
            "caption_dropout_probability": 0.3, "validation_steps": 5, "num_validation_images": 1,
            "validation_num_inference_steps": 2, "validation_resolution": "64x64", **overrides}


@pytest.fixture(scope="module")
def uninterrupted(dataset, components, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, Trainer(config(out), dataset, components=components).run()


def test_same_config_same_losses_and_bytes(uninterrupted, dataset, components, tmp_path):
    out, first = uninterrupted
    second = Trainer(config(tmp_path), dataset, components=components).run()
    assert second.losses == first.losses and len(first.losses) == 12
    assert (tmp_path / WEIGHTS).read_bytes() == (out / WEIGHTS).read_bytes()
    other_seed = Trainer(config(tmp_path / "other", seed=12, max_train_steps=2, lr_warmup_steps=0, validation_steps=None,
                                num_validation_images=0), dataset, components=components).run()
    assert other_seed.losses != first.losses[:2]


def test_interrupted_and_resumed_equals_uninterrupted(uninterrupted, dataset, components, tmp_path):
    out, reference = uninterrupted

    def crash_at_6(event):
        if event["type"] == "step" and event["step"] == 6:
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        Trainer(config(tmp_path), dataset, components=components, on_event=crash_at_6).run()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-4"]
    assert not (tmp_path / WEIGHTS).exists()

    events = []
    resumed = Trainer(config(tmp_path, resume_from_checkpoint="latest"), dataset, components=components,
                      on_event=events.append).run()
    assert resumed.resumed_from == tmp_path / "checkpoints" / "checkpoint-4"
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(5, 13))
    assert resumed.losses == reference.losses
    assert (tmp_path / WEIGHTS).read_bytes() == (out / WEIGHTS).read_bytes()
    for step in (4, 8, 12):  # the checkpoints written after resuming match too
        name = f"checkpoints/checkpoint-{step}/{WEIGHTS}"
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_resume_refuses_another_adapter_shape(uninterrupted, dataset, components, tmp_path):
    import shutil

    from longcat.errors import InvalidArgument

    out, _ = uninterrupted
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(InvalidArgument, match="lora") as info:
        Trainer(config(tmp_path, resume_from_checkpoint="latest", lora_rank=8), dataset, components=components).run()
    assert info.value.field == "resume_from_checkpoint"
    assert not getattr(components.transformer, "peft_config", None)  # cleaned up after the failure


def test_time_based_checkpoints_bound_what_a_kill_re_runs_and_resume_exactly(uninterrupted, dataset, components,
                                                                           tmp_path):
    """A trainer's --checkpoint-every-s: with it at ~0 every step checkpoints, so a kill re-runs nothing that
    finished, and the run still ends bit-identical (saving draws no randomness)."""
    out, reference = uninterrupted

    def crash_at_7(event):
        if event["type"] == "step" and event["step"] == 7:
            raise RuntimeError("worker lost")

    cfg = config(tmp_path, checkpointing_steps=None, checkpoints_total_limit=1)
    with pytest.raises(RuntimeError, match="worker lost"):
        Trainer(cfg, dataset, components=components, on_event=crash_at_7, checkpoint_every_s=1e-9).run()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-6"]

    events = []
    resumed = Trainer(dict(cfg, resume_from_checkpoint="latest"), dataset, components=components,
                      on_event=events.append, checkpoint_every_s=1e-9).run()
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(7, 13))
    assert resumed.losses == reference.losses
    assert (tmp_path / WEIGHTS).read_bytes() == (out / WEIGHTS).read_bytes()
