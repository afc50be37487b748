"""The offline tiny model: deterministic, diffusers-format, loadable through the real loading path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from longcat.errors import NotFound
from longcat.models.loading import ALL_COMPONENTS, load_components, resolve_model
from longcat.models.tiny import build_tiny_model


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path, tiny_model_path):
    rebuilt = build_tiny_model(tmp_path / "again", seed=0)
    original = _digests(Path(tiny_model_path))
    assert original == _digests(rebuilt)
    assert any(name.endswith(".safetensors") for name in original)


def test_other_seed_gives_other_weights(tmp_path, tiny_model_path):
    other = _digests(build_tiny_model(tmp_path / "seed1", seed=1))
    base = _digests(Path(tiny_model_path))
    assert other["transformer/diffusion_pytorch_model.safetensors"] != base["transformer/diffusion_pytorch_model.safetensors"]


def test_layout_is_the_real_models(tiny_model_path):
    root = Path(tiny_model_path)
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == "LongCatImageEditPipeline"
    assert set(ALL_COMPONENTS) <= set(index)
    for sub in ALL_COMPONENTS:
        assert (root / sub).is_dir(), sub
    assert (root / "text_processor" / "preprocessor_config.json").exists()


def test_components_load_with_the_library_classes(tiny_components):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, LongCatImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    c = tiny_components
    assert isinstance(c.transformer, LongCatImageTransformer2DModel)
    assert isinstance(c.vae, AutoencoderKL) and c.vae.config.latent_channels == 16
    assert isinstance(c.text_encoder, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(c.scheduler, FlowMatchEulerDiscreteScheduler)
    for special in ("<|vision_start|>", "<|image_pad|>", "<|im_start|>", "<|im_end|>"):
        assert c.tokenizer.convert_tokens_to_ids(special) != c.tokenizer.unk_token_id
    assert not any(p.requires_grad for p in c.transformer.parameters())


def test_diffusers_pipeline_from_pretrained_loads_it(tiny_model_path):
    """The library's own loader reads the folder (with our image-only processor where torchvision is absent)."""
    from diffusers import LongCatImageEditPipeline

    from longcat.models.processor import ImageOnlyQwenProcessor

    proc = ImageOnlyQwenProcessor.from_pretrained(tiny_model_path, subfolder="text_processor")
    pipe = LongCatImageEditPipeline.from_pretrained(tiny_model_path, text_processor=proc)
    assert pipe.transformer.config.in_channels == 64
    assert pipe.image_processor_vl.merge_size == 2


def test_per_component_loading_loads_only_what_is_asked(tiny_model_path):
    c = load_components(tiny_model_path, components=("transformer", "vae", "scheduler"), device="cpu")
    assert c.text_encoder is None and c.tokenizer is None
    assert c.transformer is not None and c.vae is not None


def test_bf16_loads_in_bf16(tiny_model_path):
    c = load_components(tiny_model_path, components=("transformer",), device="cpu", precision="bf16")
    assert c.transformer.dtype == torch.bfloat16


@pytest.mark.parametrize("model", ["/nonexistent/folder", "not a model id", "./relative-missing"])
def test_unknown_model_is_not_found_naming_the_field(model):
    with pytest.raises(NotFound) as err:
        resolve_model(model)
    assert err.value.field == "model"


def test_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(NotFound, match="model_index.json"):
        resolve_model(str(tmp_path))


def test_hub_id_passes_through_to_from_pretrained():
    assert resolve_model("meituan-longcat/LongCat-Image-Edit") == "meituan-longcat/LongCat-Image-Edit"
