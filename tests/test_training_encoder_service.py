"""Training embeddings from the encoder service over gRPC: the same bits as in-process, the same run."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from longcat.conditioning import Geometry, prepare_reference
from longcat.launch import ServiceProcess
from longcat.training import InProcessEmbedder, Trainer
from longcat.training.buckets import fit_to_bucket
from longcat.training.sample_data import quickstart_dataloader, write_pairs
from services.trainer.embedder import EncoderServiceEmbedder


@pytest.fixture(scope="module")
def encoder(tiny_model_path, tmp_path_factory):
    svc = ServiceProcess("encoder", ["--model", tiny_model_path], tmp_path_factory.mktemp("enc-logs"))
    svc.wait_serving(240)
    yield svc
    assert svc.stop() == 0


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc-train")
    edits, refs = write_pairs(root / "data", count=4, size=(96, 64), seed=4)
    return root, edits, refs


def test_service_embeddings_equal_in_process_bit_for_bit(encoder, tiny_components, pairs):
    _, _, refs = pairs
    bucket = (128, 64)
    view = prepare_reference(fit_to_bucket(Image.open(next(refs.glob("*.png"))).convert("RGB"), bucket),
                             Geometry(*bucket)).prompt_image
    remote = EncoderServiceEmbedder(encoder.address, tiny_components.fingerprint)
    local = InProcessEmbedder(tiny_components)
    for prompt in ("invert the colors", ""):  # "" is what caption dropout embeds
        theirs = remote.embed(prompt, view, "k")
        ours = local.embed(prompt, view, "k")
        assert torch.equal(theirs[0] if theirs.ndim == 3 else theirs, ours[0] if ours.ndim == 3 else ours)


def test_a_run_on_service_embeddings_equals_the_in_process_run(encoder, tiny_model_path, pairs, tmp_path):
    from longcat.models.loading import load_components

    root, edits, refs = pairs

    def run(source: str, out):
        config = {"model_type": "lora", "model_family": "longcat_image", "model_flavour": "edit",
                  "learning_rate": 5e-3, "lr_warmup_steps": 0, "max_train_steps": 3, "seed": 2,
                  "output_dir": str(out), "checkpointing_steps": None, "validation_steps": None,
                  "num_validation_images": 0, "caption_dropout_probability": 0.5, "embeddings_source": source}
        if source == "encoder_service":
            config["encoder_address"] = encoder.address
        components = load_components(tiny_model_path, device="cpu")
        embedder = EncoderServiceEmbedder(encoder.address, components.fingerprint) \
            if source == "encoder_service" else None
        loader = quickstart_dataloader(edits, refs, out / "cache", resolution=64)
        return Trainer(config, loader, components=components, embedder=embedder).run()

    local = run("in_process", tmp_path / "local")
    remote = run("encoder_service", tmp_path / "remote")
    assert remote.status == "completed" and remote.losses == local.losses
