"""``longcat validate`` as a user runs it: a separate process, the quickstart's JSON files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from longcat.training.sample_data import quickstart_dataloader, write_pairs


def longcat(*args):
    return subprocess.run([sys.executable, "-m", "longcat.cli.main", *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ))


@pytest.fixture
def files(tmp_path):
    edits, refs = write_pairs(tmp_path / "data", count=4, size=(64, 64), seed=2)
    dataloader = tmp_path / "dataloader.json"
    dataloader.write_text(json.dumps(quickstart_dataloader(edits, refs, tmp_path / "cache")))
    config = {"model_type": "lora", "model_family": "longcat_image", "model_flavour": "edit",
              "output_dir": str(tmp_path / "out"), "validation_resolution": "64x64",
              "validation_num_inference_steps": 2, "validation_seed": 3, "num_validation_images": 2,
              "data_backend_config": str(dataloader), "some_simpletuner_option": 1}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return tmp_path, path, dataloader, edits, refs


def test_check_only_reports_every_dataset_problem(files):
    _, config, dataloader, edits, refs = files
    assert json.loads(longcat("validate", "--config", str(config), "--check-only", "--json").stdout)["pairs"] == 4
    (refs / "0001.png").unlink()
    (edits / "0002.txt").unlink()
    proc = longcat("validate", "--config", str(config), "--dataloader", str(dataloader), "--check-only")
    assert proc.returncode == 2
    assert "2 dataset problems" in proc.stderr
    assert "0001: no reference image with this name" in proc.stderr and "0002: caption file 0002.txt is missing" in proc.stderr


def test_config_errors_list_every_key(files, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_flavour": "final", "learning_rate": "fast", // jsonc\n "lora_rank": 0}')
    proc = longcat("validate", "--config", str(bad), "--dataloader", str(files[2]), "--json")
    assert proc.returncode == 2
    out = json.loads(proc.stdout)
    assert out["code"] == "INVALID_ARGUMENT" and out["field"] == "model_flavour"
    for key in ("model_flavour", "learning_rate", "lora_rank"):
        assert f"- {key}:" in out["error"]


def test_renders_base_edits_then_the_trained_adapter(files, tiny_model_path):
    root, config, dataloader, _, _ = files
    proc = longcat("validate", "--config", str(config), "--model", tiny_model_path, "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    base = json.loads(proc.stdout)
    assert base["adapter"] is None and base["pairs"] == 4
    assert base["images"] == [str(root / "out" / "validation" / "base" / f"000{i}.png") for i in range(2)]
    assert any("some_simpletuner_option" in w for w in base["warnings"])
    assert all(Image.open(p).size == (64, 64) for p in base["images"])

    from longcat.training import Trainer

    Trainer(json.loads(config.read_text()) | {"max_train_steps": 3, "learning_rate": 1e-2, "seed": 0,
                                               "pretrained_model_name_or_path": tiny_model_path,
                                               "checkpointing_steps": None, "num_validation_images": 0},
            str(dataloader)).run()
    proc = longcat("validate", "--config", str(config), "--model", tiny_model_path, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "validation edits (adapter" in proc.stdout and "datasets ok: 4 pairs" in proc.stdout
    tuned = root / "out" / "validation" / "adapter" / "0000.png"
    assert tuned.is_file() and Image.open(tuned).tobytes() != Image.open(base["images"][0]).tobytes()
