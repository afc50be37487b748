"""LoRA adapters on the real tiny LongCat transformer (real diffusers + peft, no mocks of either)."""

from __future__ import annotations

import copy
import json
import math
import os
import threading
import time

import pytest
import torch

from longcat.adapters import (
    OFFICIAL_TARGET_MODULES,
    AdapterManager,
    AdapterStore,
    read_lora,
    save_lora,
    save_peft_format,
    validate_name,
)
from longcat.errors import AdapterMismatch, AdapterNotFound, InvalidArgument


@pytest.fixture(scope="session")
def base_transformer(tmp_path_factory):
    """The tiny model's transformer, loaded once; tests deep-copy it."""
    if "LONGCAT_CACHE" not in os.environ:  # tests/conftest.py normally sets it; never write to ~/.cache
        os.environ["LONGCAT_CACHE"] = str(tmp_path_factory.mktemp("longcat-cache"))
    from longcat.models.loading import load_components

    return load_components("tiny", components=("transformer",)).transformer


@pytest.fixture
def transformer(base_transformer):
    return copy.deepcopy(base_transformer)


@pytest.fixture(scope="session")
def inputs():
    g = torch.Generator().manual_seed(1234)
    return dict(
        hidden_states=torch.randn(1, 16, 64, generator=g),
        encoder_hidden_states=torch.randn(1, 8, 32, generator=g),
        timestep=torch.tensor([0.5]),
        img_ids=torch.randn(16, 3, generator=g),
        txt_ids=torch.randn(8, 3, generator=g),
    )


def forward(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def add_random_adapter(model, name="trained", seed=0, rank=4, alpha=8.0, targets=OFFICIAL_TARGET_MODULES):
    """peft's way, with nonzero random weights (peft starts lora_B at zero, which would change nothing)."""
    import peft

    model.add_adapter(peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)), adapter_name=name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "lora_" in pname and f".{name}." in pname:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.fixture(scope="session")
def adapters(base_transformer, inputs, tmp_path_factory):
    """Three random adapters written to a store (diffusers format), one also in PEFT format, and the output
    peft gives for each when it is added directly."""
    root = tmp_path_factory.mktemp("adapters")
    peft_root = tmp_path_factory.mktemp("peft")
    expected = {}
    for i, (name, rank, alpha) in enumerate([("a", 4, 8.0), ("b", 2, 2.0), ("c.v1", 3, 6.0)]):
        m = copy.deepcopy(base_transformer)
        add_random_adapter(m, "trained", seed=100 + i, rank=rank, alpha=alpha)
        m.set_adapters(["trained"], [1.0])
        expected[name] = forward(m, inputs)
        save_lora(m, "trained", root / name, rank=rank, alpha=alpha)
        if name == "a":
            save_peft_format(m, "trained", peft_root / "a-peft", rank=rank, alpha=alpha)
    return {"store": AdapterStore(root), "root": root, "peft": peft_root / "a-peft", "expected": expected}


@pytest.fixture
def manager(transformer, adapters):
    return AdapterManager(transformer, adapters["store"], capacity=8)


def structure(model):
    return [(n, type(m).__name__) for n, m in model.named_modules()], sorted(model.state_dict())


# -- formats ----------------------------------------------------------------------------------------------


def test_save_and_read_diffusers_format(adapters):
    lora = read_lora(adapters["root"] / "a")
    assert lora.format == "diffusers" and lora.rank == 4 and lora.alpha == 8.0
    assert lora.source.name == "pytorch_lora_weights.safetensors"
    assert all(k.startswith("transformer.") for k in lora.state_dict)
    assert "transformer_blocks.0.attn.to_q" in lora.module_names()
    # The single-file form reads the same.
    assert read_lora(lora.source).state_dict.keys() == lora.state_dict.keys()


def test_read_peft_format(adapters):
    lora = read_lora(adapters["peft"])
    assert lora.format == "peft" and lora.rank == 4 and lora.alpha == 8.0
    assert lora.state_dict.keys() == read_lora(adapters["root"] / "a").state_dict.keys()


def test_diffusers_file_loads_with_plain_diffusers(transformer, adapters, inputs):
    # Our header carries diffusers' own metadata, so diffusers alone scales it right (alpha 8 / rank 4).
    transformer.load_lora_adapter(str(adapters["root"] / "a"), prefix="transformer", adapter_name="x",
                                  use_safetensors=True)
    assert torch.allclose(forward(transformer, inputs), adapters["expected"]["a"], atol=1e-6)


def test_read_errors(tmp_path):
    with pytest.raises(AdapterNotFound) as e:
        read_lora(tmp_path / "missing")
    assert e.value.field == "adapters"
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterNotFound):
        read_lora(tmp_path / "empty")
    from safetensors.torch import save_file

    save_file({"transformer.x.weight": torch.ones(2, 2)}, str(tmp_path / "nolora.safetensors"))
    with pytest.raises(InvalidArgument) as e:
        read_lora(tmp_path / "nolora.safetensors")
    assert e.value.field == "adapters"
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InvalidArgument):
        read_lora(tmp_path / "junk.safetensors")


# -- store ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "..", ".hidden", "a..b", "x" * 65, "a\\b", None])
def test_bad_names_refused(bad):
    with pytest.raises(InvalidArgument) as e:
        validate_name(bad)
    assert e.value.field == "adapters.name"


def test_store(adapters):
    store = adapters["store"]
    assert store.list() == ["a", "b", "c.v1"]
    assert store.exists("a") and not store.exists("zzz") and not store.exists("../a")
    assert store.path_for("a") == adapters["root"] / "a"
    with pytest.raises(AdapterNotFound) as e:
        store.path_for("zzz")
    assert e.value.field == "adapters.name"


# -- manager ----------------------------------------------------------------------------------------------


def test_activate_matches_peft(manager, transformer, adapters, inputs):
    base = forward(transformer, inputs)
    with manager.activate([("a", 1.0)]):
        out = forward(transformer, inputs)
    assert not torch.equal(out, base)
    assert torch.allclose(out, adapters["expected"]["a"], atol=1e-6)
    # A name with a '.' works (PEFT itself refuses such adapter names).
    with manager.activate([("c.v1", 1.0)]):
        assert torch.allclose(forward(transformer, inputs), adapters["expected"]["c.v1"], atol=1e-6)


def test_peft_format_same_as_diffusers(transformer, adapters, inputs):
    m = AdapterManager(transformer)
    m.load("diff", adapters["root"] / "a")
    m.load("meituan", adapters["peft"])
    with m.activate([("diff", 1.0)]):
        out_diff = forward(transformer, inputs)
    with m.activate([("meituan", 1.0)]):
        out_peft = forward(transformer, inputs)
    assert torch.allclose(out_peft, out_diff, atol=1e-6)
    assert torch.allclose(out_peft, adapters["expected"]["a"], atol=1e-6)


def test_two_adapters_weighted(manager, transformer, inputs):
    outs = {}
    for key, refs in {"a": [("a", 1.0)], "b": [("b", 0.5)], "ab": [("a", 1.0), ("b", 0.5)],
                      "ab11": [("a", 1.0), ("b", 1.0)]}.items():
        with manager.activate(refs):
            outs[key] = forward(transformer, inputs)
    assert not torch.equal(outs["ab"], outs["a"])
    assert not torch.equal(outs["ab"], outs["b"])
    assert not torch.allclose(outs["ab"], outs["ab11"], atol=1e-5)


def test_switching_and_none_is_bit_exact(manager, transformer, inputs):
    before = structure(transformer)
    base = forward(transformer, inputs)
    with manager.activate([("a", 1.0)]):
        out_a = forward(transformer, inputs)
    with manager.activate([("b", 1.0)]):
        out_b = forward(transformer, inputs)
    with manager.activate([]):
        assert torch.equal(forward(transformer, inputs), base)
    assert torch.equal(forward(transformer, inputs), base)  # outside activate: disabled
    assert not torch.equal(out_a, base) and not torch.equal(out_b, out_a)
    with manager.activate([("a", 1.0)]):  # switching back gives the same result
        assert torch.equal(forward(transformer, inputs), out_a)
    for name in manager.loaded():
        assert manager.unload(name)
    assert manager.loaded() == [] and not getattr(transformer, "peft_config", None)
    assert torch.equal(forward(transformer, inputs), base)
    assert structure(transformer) == before  # LoRA wrappers removed again


def test_lru_eviction_and_reload(transformer, adapters, inputs):
    m = AdapterManager(transformer, adapters["store"], capacity=2)
    first = m.load("a")
    m.load("b")
    m.load("c.v1")
    assert m.loaded() == ["b", "c.v1"]
    assert first not in transformer.peft_config and len(transformer.peft_config) == 2
    with m.activate([("a", 1.0)]):  # reloaded on use, evicting the least recently used ("b")
        assert torch.allclose(forward(transformer, inputs), adapters["expected"]["a"], atol=1e-6)
    assert m.loaded() == ["c.v1", "a"]
    with pytest.raises(InvalidArgument) as e:  # more than fit at once
        with m.activate([("a", 1.0), ("b", 1.0), ("c.v1", 1.0)]):
            pass
    assert e.value.field == "adapters"


def test_changed_file_is_reloaded(transformer, base_transformer, adapters, inputs, tmp_path):
    store = AdapterStore(tmp_path)
    m = AdapterManager(transformer, store)
    src = copy.deepcopy(base_transformer)
    add_random_adapter(src, "trained", seed=7)
    save_lora(src, "trained", tmp_path / "live")
    with m.activate([("live", 1.0)]):
        out1 = forward(transformer, inputs)
    old = m.peft_name("live")
    with torch.no_grad():
        for pname, p in src.named_parameters():
            if "lora_B" in pname:
                p.mul_(2.0)
    time.sleep(0.01)
    save_lora(src, "trained", tmp_path / "live")  # the trainer republishing
    with m.activate([("live", 1.0)]):
        out2 = forward(transformer, inputs)
    assert m.peft_name("live") != old and old not in transformer.peft_config
    assert not torch.allclose(out1, out2)
    src.set_adapters(["trained"], [1.0])
    assert torch.allclose(out2, forward(src, inputs), atol=1e-6)


def test_unknown_adapter(manager, transformer, inputs):
    base = forward(transformer, inputs)
    with pytest.raises(AdapterNotFound) as e:
        with manager.activate([("a", 1.0), ("nope", 1.0)]):
            pass
    assert e.value.field == "adapters[1].name"
    assert torch.equal(forward(transformer, inputs), base)
    with pytest.raises(AdapterNotFound) as e:
        AdapterManager(transformer).load("x")  # no store, no path
    assert e.value.field == "adapters.name"


def test_bad_refs(manager):
    cases = [([("a", float("nan"))], "adapters[0].scale"), ([("a", 1.0), ("b", math.inf)], "adapters[1].scale"),
             ([("a", "1")], "adapters[0].scale"), ([("../a", 1.0)], "adapters[0].name"),
             ([("a", 1.0), ("a", 0.5)], "adapters[1].name"), (["a"], "adapters[0]")]
    for refs, field in cases:
        with pytest.raises(InvalidArgument) as e:
            with manager.activate(refs):
                pass
        assert e.value.field == field, refs
    # dicts and objects with .name/.scale are accepted too
    with manager.activate([{"name": "a", "scale": 0.5}]) as active:
        assert active == [("a", 0.5)]


def _corrupt(src_dir, out_dir, how):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(src_dir / "pytorch_lora_weights.safetensors"))
    if how == "inner_dim":  # a model with a wider hidden size: lora_A (r, 99) / lora_B (99, r)
        sd = {k: (torch.randn(4, 99) * 0.05 if k.endswith("lora_A.weight") else torch.randn(99, 4) * 0.05)
              if ".attn.to_q." in k else v for k, v in sd.items()}
    else:  # module names of another architecture
        sd = {k.replace("attn.to_q", "self_attn.q_proj"): v for k, v in sd.items()}
    out_dir.mkdir(parents=True)
    save_file(sd, str(out_dir / "pytorch_lora_weights.safetensors"), metadata={"lora_rank": "4", "lora_alpha": "8"})


@pytest.mark.parametrize("how", ["inner_dim", "modules"])
@pytest.mark.parametrize("preloaded", [False, True])
def test_adapter_for_another_architecture(transformer, adapters, inputs, tmp_path, how, preloaded, monkeypatch):
    _corrupt(adapters["root"] / "a", tmp_path / "alien", how)
    m = AdapterManager(transformer, AdapterStore(tmp_path))
    if preloaded:
        m.load("good", adapters["root"] / "b")
    base = forward(transformer, inputs)
    before, peft_before = structure(transformer), dict(getattr(transformer, "peft_config", {}))
    with pytest.raises(AdapterMismatch) as e:
        with m.activate([("alien", 1.0)]):
            pass
    assert e.value.field == "adapters[0]"
    assert structure(transformer) == before and dict(getattr(transformer, "peft_config", {})) == peft_before
    assert torch.equal(forward(transformer, inputs), base)
    # Same guarantee when the failure only shows inside diffusers/peft (our pre-check switched off).
    monkeypatch.setattr(AdapterManager, "_check_fits", lambda self, lora, field: None)
    with pytest.raises(AdapterMismatch):
        m.load("alien")
    assert structure(transformer) == before and torch.equal(forward(transformer, inputs), base)
    monkeypatch.undo()
    assert "alien" not in m.loaded()
    m.load("a", adapters["root"] / "a")
    with m.activate([("a", 1.0)]):
        assert torch.allclose(forward(transformer, inputs), adapters["expected"]["a"], atol=1e-6)


def test_activate_serialises_requests(manager, transformer, inputs):
    base = forward(transformer, inputs)
    seen = []

    def other():
        with manager.activate([]):
            seen.append(torch.equal(forward(transformer, inputs), base))

    with manager.activate([("a", 1.0)]):
        t = threading.Thread(target=other)
        t.start()
        t.join(0.2)
        assert t.is_alive()  # blocked while this request holds the transformer
        assert not torch.equal(forward(transformer, inputs), base)
    t.join(10)
    assert seen == [True]


def test_int8_quanto_base(transformer, base_transformer, adapters, inputs):
    from longcat.models.precision import is_quantized, quantize_module, resolve_precision

    fp32_base = forward(base_transformer, inputs)
    quantize_module(transformer, resolve_precision("int8-quanto", "cpu"))
    assert is_quantized(transformer)

    def base_weights():
        return {k.replace(".base_layer", ""): v.clone() for k, v in transformer.state_dict().items()
                if "lora_" not in k}

    weights = base_weights()
    qbase = forward(transformer, inputs)
    m = AdapterManager(transformer, adapters["store"])
    with m.activate([("a", 1.0)]):
        out = forward(transformer, inputs)
    assert not torch.equal(out, qbase)
    # The LoRA adds (almost) the same delta as on the fp32 base: it runs unfused, in full precision.
    assert torch.allclose(out - qbase, adapters["expected"]["a"] - fp32_base, atol=1e-3)
    with m.activate([]):
        assert torch.equal(forward(transformer, inputs), qbase)
    after = base_weights()
    assert after.keys() == weights.keys() and all(torch.equal(after[k], weights[k]) for k in weights)  # no fuse
    m.unload("a")
    assert torch.equal(forward(transformer, inputs), qbase)


def test_peft_config_json_is_read(tmp_path, adapters):
    # Meituan-style folder whose alpha differs from the weights' rank: alpha comes from adapter_config.json.
    import shutil

    shutil.copytree(adapters["peft"], tmp_path / "p")
    conf = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    conf["lora_alpha"] = 2
    (tmp_path / "p" / "adapter_config.json").write_text(json.dumps(conf))
    assert read_lora(tmp_path / "p").alpha == 2.0
