"""Edit-Turbo: defaults read from the model folder, the tiny Turbo variant, served by the same engine."""

from __future__ import annotations

import json

import pytest
import torch

from longcat.api.model_defaults import DEFAULTS_FILE, STANDARD, TURBO, read_model_defaults
from longcat.errors import InvalidArgument


@pytest.fixture(scope="module")
def turbo_path():
    from longcat.models.loading import resolve_model

    return resolve_model("tiny-turbo")


def test_turbo_defaults_come_from_the_model_folder(turbo_path, tiny_model_path, tmp_path):
    assert read_model_defaults(turbo_path) == TURBO == type(TURBO)(8, 1.0)
    assert TURBO.turbo and not STANDARD.turbo
    assert read_model_defaults(tiny_model_path) == STANDARD
    assert read_model_defaults("meituan-longcat/LongCat-Image-Edit-Turbo") == TURBO  # by name, no file
    assert read_model_defaults("meituan-longcat/LongCat-Image-Edit") == STANDARD
    (tmp_path / DEFAULTS_FILE).write_text(json.dumps({"num_inference_steps": 12, "guidance_scale": 2.0}))
    assert read_model_defaults(tmp_path) == type(TURBO)(12, 2.0)
    (tmp_path / DEFAULTS_FILE).write_text("[1, 2]")
    with pytest.raises(InvalidArgument) as err:
        read_model_defaults(tmp_path)
    assert err.value.field == "model"


def test_tiny_turbo_cli_writes_the_defaults(tmp_path):
    from longcat.cli.main import main

    assert main(["tiny", "--turbo", "--out", str(tmp_path / "t"), "--json"]) == 0
    assert json.loads((tmp_path / "t" / DEFAULTS_FILE).read_text()) == {"num_inference_steps": 8,
                                                                         "guidance_scale": 1.0}


def test_unset_fields_of_a_queued_request_take_the_models_defaults():
    from longcat.api.edit_proto import request_from_proto
    from longcat.v1 import edit_pb2

    msg = edit_pb2.EditRequest(image=b"x", prompt="p")
    turbo = request_from_proto(msg, TURBO)
    assert (turbo.num_inference_steps, turbo.guidance_scale) == (8, 1.0)
    std = request_from_proto(msg)
    assert (std.num_inference_steps, std.guidance_scale) == (50, 4.5)
    msg = edit_pb2.EditRequest(image=b"x", prompt="p", num_inference_steps=3, guidance_scale=2.0)
    assert (request_from_proto(msg, TURBO).num_inference_steps, request_from_proto(msg, TURBO).guidance_scale) \
        == (3, 2.0)


def test_turbo_is_served_by_the_same_engine(turbo_path, engine, sample_image):
    from longcat.engine import EditEngine, EditRequest

    turbo = EditEngine.load(turbo_path, device="cpu")
    assert turbo.defaults == TURBO and engine.defaults == STANDARD
    d = turbo.defaults
    steps = []
    req = EditRequest(image=sample_image, prompt="make the sky purple", width=64, height=64, seed=5,
                      num_inference_steps=d.num_inference_steps, guidance_scale=d.guidance_scale)
    out = turbo.edit(req, on_step=lambda ev: steps.append(ev.step))
    assert steps == list(range(1, 9))
    assert not turbo.validate(req).do_cfg  # one forward per step
    # Same weights as the tiny model here: the same engine code gives the same pixels.
    assert torch.equal(out.pixels, engine.edit(req).pixels)
