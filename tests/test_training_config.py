"""Training config and dataloader JSON: the quickstart's files as written, every wrong value at once."""

from __future__ import annotations

import json
import logging
import os

import pytest

from longcat.adapters import OFFICIAL_TARGET_MODULES
from longcat.api.jsonc import strip_jsonc
from longcat.errors import InvalidArgument
from longcat.training import ConfigError, TrainingConfig, parse_config, parse_dataloader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Section 2 of the quickstart, verbatim (comments included).
QUICKSTART_CONFIG = """{
  "model_type": "lora",
  "model_family": "longcat_image",
  "model_flavour": "edit",
  "base_model_precision": "int8-quanto",      // fp8-torchao también sirve; ayuda a encajar 16–24 GB
  "train_batch_size": 1,
  "gradient_checkpointing": true,
  "learning_rate": 5e-5,
  "validation_guidance": 4.5,
  "validation_num_inference_steps": 40,
  "validation_resolution": "768x768"
}"""

# Section 3 of the quickstart, verbatim.
QUICKSTART_DATALOADER = """[
  {
    "id": "edit-images",
    "type": "local",
    "instance_data_dir": "/data/edits",
    "caption_strategy": "textfile",
    "resolution": 768,
    "cache_dir_vae": "/cache/vae/longcat/edit",
    "conditioning_data": ["ref-images"]
  },
  {
    "id": "ref-images",
    "type": "local",
    "instance_data_dir": "/data/refs",
    "caption_strategy": null,
    "resolution": 768,
    "cache_dir_vae": "/cache/vae/longcat/ref"
  }
]"""


def test_quickstart_config_parses_as_written(tmp_path, monkeypatch):
    monkeypatch.delenv("LONGCAT_MODEL", raising=False)
    path = tmp_path / "config.json"
    path.write_text(QUICKSTART_CONFIG)
    c = parse_config(path)
    assert c.warnings == []
    assert (c.model_type, c.model_family, c.model_flavour) == ("lora", "longcat_image", "edit")
    assert c.base_model_precision == "int8-quanto" and c.learning_rate == 5e-5 and c.gradient_checkpointing
    assert c.validation_resolution == (768, 768) and c.validation_num_inference_steps == 40
    # Defaults for what the quickstart leaves out.
    assert c.pretrained_model_name_or_path == "tiny"
    # Meituan's edit-LoRA recipe (rank 32, PEFT's alpha 8, gaussian init, 10% caption dropout; its 1e-4 at
    # batch 32 sqrt-scaled to batch 1), see README "Training defaults".
    assert c.lora_rank == 32 and c.effective_lora_alpha == 8.0 and c.lora_init_type == "gaussian"
    assert c.caption_dropout_probability == 0.1
    assert c.lora_target_modules == OFFICIAL_TARGET_MODULES
    assert c.lr_scheduler == "constant_with_warmup" and c.aspect_bucket_alignment == 64
    assert c.resolved_mixed_precision("cpu") == "no" and c.resolved_mixed_precision("cuda") == "bf16"


def test_model_defaults_to_the_environment(monkeypatch):
    monkeypatch.setenv("LONGCAT_MODEL", "/models/longcat-edit")
    assert parse_config({}).pretrained_model_name_or_path == "/models/longcat-edit"
    assert parse_config({"pretrained_model_name_or_path": "x/y"}).pretrained_model_name_or_path == "x/y"


def test_every_wrong_value_is_listed_once_naming_its_key():
    bad = {
        "model_type": "full", "model_family": "flux", "model_flavour": "final", "base_model_precision": "fp4",
        "train_batch_size": 0, "gradient_checkpointing": "maybe", "learning_rate": -1, "lr_scheduler": "warm",
        "lr_warmup_steps": -2, "lora_rank": "sixteen", "lora_alpha": 0, "lora_target_modules": [],
        "max_train_steps": 0, "validation_steps": -1, "validation_guidance": 99,
        "validation_num_inference_steps": 0, "validation_resolution": "770x768", "validation_seed": -5,
        "aspect_bucket_alignment": 32, "output_dir": "", "seed": "abc", "checkpointing_steps": 1.5,
        "checkpoints_total_limit": 0, "resume_from_checkpoint": 7, "caption_dropout_probability": 1.5,
        "mixed_precision": "fp16", "use_reference_captions": "sometimes", "embeddings_source": "grpc",
    }
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    err = info.value
    assert isinstance(err, InvalidArgument) and err.code == "INVALID_ARGUMENT"
    assert [p.field for p in err.problems] == list(bad)
    assert err.field == "model_type"
    text = str(err)
    assert text.startswith(f"{len(bad)} config problems")
    for key in bad:
        assert f"  - {key}: " in text
    assert "only LoRA training is supported" in text and "must be 64" in text and "use \"bf16\" or \"no\"" in text


def test_cross_field_rules():
    with pytest.raises(ConfigError) as info:
        parse_config({"embeddings_source": "encoder_service", "max_train_steps": 10, "lr_warmup_steps": 20})
    assert {p.field for p in info.value.problems} == {"encoder_address", "lr_warmup_steps"}
    c = parse_config({"embeddings_source": "encoder_service", "encoder_address": "encoder:50051"})
    assert c.encoder_address == "encoder:50051"


def test_unknown_keys_are_warnings_with_hints(caplog):
    with caplog.at_level(logging.WARNING, logger="longcat.api.training_config"):
        c = parse_config({"learning_rte": 1e-3, "report_to": "wandb", "lora_rank": 8})
    assert c.lora_rank == 8 and c.learning_rate == TrainingConfig().learning_rate  # the misspelt key set nothing
    assert len(c.warnings) == 2
    assert "'learning_rte'" in c.warnings[0] and "did you mean 'learning_rate'" in c.warnings[0]
    assert "'report_to'" in c.warnings[1]
    assert sum("unknown key" in r.getMessage() for r in caplog.records) == 2


def test_cli_style_keys_and_string_values():
    c = parse_config({"--learning_rate": "5e-5", "--gradient_checkpointing": "true", "--max_train_steps": "100",
                      "--lora-rank": "8", "--validation_resolution": "512", "--lora_target_modules": "attn.to_q, attn.to_k",
                      "--resume_from_checkpoint": "latest", "--seed": "3"})
    assert c.learning_rate == 5e-5 and c.gradient_checkpointing is True and c.max_train_steps == 100
    assert c.lora_rank == 8 and c.validation_resolution == (512, 512) and c.seed == 3
    assert c.lora_target_modules == ["attn.to_q", "attn.to_k"] and c.resume_from_checkpoint == "latest"
    with pytest.raises(ConfigError) as info:
        parse_config({"--seed": 1, "seed": 2})
    assert info.value.problems[0].field == "seed" and "given twice" in str(info.value)


def test_off_values_and_non_object():
    c = parse_config({"checkpointing_steps": 0, "validation_steps": None, "resume_from_checkpoint": None})
    assert c.checkpointing_steps is None and c.validation_steps is None and c.resume_from_checkpoint is None
    with pytest.raises(ConfigError, match="JSON object"):
        parse_config([1, 2])


def test_files_that_are_not_json_name_the_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{\n  "lora_rank": 4,\n  "seed" 3\n}')
    with pytest.raises(InvalidArgument, match="line 3"):
        parse_config(path)


def test_jsonc_comments_and_trailing_commas_outside_strings_only():
    text = '{"url": "http://x//y", /* block\n comment */ "a": [1, 2,], // tail\n "b": "/* kept */",}'
    assert json.loads(strip_jsonc(text)) == {"url": "http://x//y", "a": [1, 2], "b": "/* kept */"}
    assert json.loads(strip_jsonc('{"q": "say \\"hi\\" // not a comment"}')) == {"q": 'say "hi" // not a comment'}


def test_quickstart_dataloader_parses_as_written(tmp_path):
    path = tmp_path / "dataloader.json"
    path.write_text("// the quickstart's block\n" + QUICKSTART_DATALOADER)
    dl = parse_dataloader(path)
    assert dl.warnings == []
    edit, ref = dl.datasets
    assert [d.id for d in dl.edit_datasets()] == ["edit-images"] and dl.referenced_ids() == {"ref-images"}
    assert edit.caption_strategy == "textfile" and edit.resolution == 768 and edit.conditioning_data == ["ref-images"]
    assert ref.caption_strategy is None and ref.cache_dir_vae == "/cache/vae/longcat/ref"
    assert ref.conditioning_data == []


def test_dataloader_structure_problems_are_all_listed():
    bad = [
        {"type": "local", "instance_data_dir": "/a"},
        {"id": "e", "type": "s3", "instance_data_dir": "", "caption_strategy": "parquet", "resolution": "big",
         "conditioning_data": "r", "crop": True},
        {"id": "e", "instance_data_dir": "/b", "conditioning_data": [3]},
        "not a dataset",
    ]
    with pytest.raises(ConfigError) as info:
        parse_dataloader(bad)
    fields = [p.field for p in info.value.problems]
    assert fields == ["datasets[0].id", "datasets[e].type", "datasets[e].instance_data_dir",
                      "datasets[e].caption_strategy", "datasets[e].resolution", "datasets[e].id",
                      "datasets[e].conditioning_data", "datasets[3]"]


def test_dataloader_extras(caplog):
    dl = parse_dataloader([
        {"id": "e", "instance_data_dir": "/e", "caption_strategy": "textfile", "conditioning_data": "r",
         "repeats": 2},
        {"id": "r", "instance_data_dir": "/r"},
        {"id": "off", "instance_data_dir": "/x", "disabled": True},
        {"id": "text", "dataset_type": "text_embeds", "cache_dir": "/cache/text"},
    ])
    assert [d.id for d in dl.datasets] == ["e", "r"]
    assert dl.datasets[0].conditioning_data == ["r"]      # a single id as a string is accepted
    assert dl.text_cache_dir == "/cache/text"
    assert dl.warnings == ["datasets[e]: unknown key 'repeats' ignored"]


def test_shipped_examples_parse_cleanly():
    c = parse_config(os.path.join(ROOT, "config", "config.json.example"))
    assert c.warnings == [] and c.pretrained_model_name_or_path == "tiny"
    assert isinstance(c, TrainingConfig) and c.validation_resolution == (64, 64)
    dl = parse_dataloader(os.path.join(ROOT, "config", "dataloader.json.example"))
    assert dl.warnings == [] and [d.id for d in dl.datasets] == ["edit-images", "ref-images"]
    assert dl.datasets[0].conditioning_data == ["ref-images"]
