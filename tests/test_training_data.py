"""Dataset checks, path policy, buckets and crops, and the content-addressed caches (real tiny VAE/encoder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from longcat.errors import InvalidArgument
from longcat.training import DatasetError, parse_dataloader, resolve_inside, validate_datasets
from longcat.training.buckets import bucket_for, fit_to_bucket
from longcat.training.data import BucketBatchSampler, DataPreparer, PairDataset
from longcat.training.embed import InProcessEmbedder
from longcat.training.sample_data import quickstart_dataloader, write_pairs


@pytest.fixture
def data(tmp_path):
    edits, refs = write_pairs(tmp_path / "data", count=8, size=(64, 64), seed=3)
    return tmp_path, edits, refs


def dataloader(root, edits, refs, **changes):
    dl = quickstart_dataloader(edits, refs, root / "cache")
    for key, value in changes.items():
        index, field = key.split("__")
        dl[int(index)][field] = value
    return parse_dataloader(dl)


def problems_of(dl, **kw) -> list[str]:
    with pytest.raises(DatasetError) as info:
        validate_datasets(dl, **kw)
    return info.value.messages()


def test_valid_datasets_give_sorted_pairs(data):
    root, edits, refs = data
    report = validate_datasets(dataloader(root, edits, refs))
    assert [p.name for p in report.pairs] == [f"{i:04d}" for i in range(8)]
    p = report.pairs[0]
    assert p.caption == "invert the colors" and p.edit_path == edits / "0000.png" and p.reference_path == refs / "0000.png"
    assert (p.edit_dataset.id, p.reference_dataset.id) == ("edit-images", "ref-images")


def test_every_problem_is_reported_at_once(data):
    root, edits, refs = data
    (refs / "0001.png").unlink()                                  # edit without reference
    Image.new("RGB", (64, 64)).save(refs / "extra.png")           # reference without edit
    (edits / "0002.txt").unlink()                                 # missing caption
    (edits / "0003.txt").write_text("  \n")                       # empty caption
    (edits / "0004.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # undecodable edit
    (refs / "0005.png").write_bytes(b"")                          # undecodable reference
    msgs = problems_of(dataloader(root, edits, refs))
    assert msgs == [
        "datasets[edit-images]: 0001: no reference image with this name in ref-images (%s)" % refs,
        "datasets[edit-images]: 0002: caption file 0002.txt is missing",
        "datasets[edit-images]: 0003: caption file 0003.txt is empty",
        "datasets[ref-images]: extra: reference image has no edit image with this name in edit-images",
        msgs[4], msgs[5],
    ]
    assert msgs[4].startswith("datasets[edit-images]: 0004: 0004.png cannot be decoded")
    assert msgs[5].startswith("datasets[ref-images]: 0005: 0005.png is empty")


@pytest.mark.parametrize("changes,expected", [
    ({"1__cache_dir_vae": "SAME", "0__cache_dir_vae": "SAME"},
     "datasets[ref-images].cache_dir_vae: is the same folder as edit-images's; edit and reference VAE caches must be separate paths"),
    ({"0__conditioning_data": ["refs"]},
     "datasets[edit-images].conditioning_data: names dataset 'refs', which is not in the dataloader (datasets: edit-images, ref-images)"),
    ({"1__instance_data_dir": "MISSING"}, "datasets[ref-images].instance_data_dir: 'MISSING' does not exist"),
    ({"0__caption_strategy": None},
     "datasets[edit-images].caption_strategy: must be \"textfile\": an edit dataset's captions are the edit instructions"),
    ({"0__conditioning_data": []}, "datasets[ref-images]: has no conditioning_data and no edit dataset links to it"),
])
def test_malformed_dataloaders_are_refused_with_their_message(data, changes, expected):
    root, edits, refs = data
    changes = {k: (str(root / v) if v in ("SAME", "MISSING") else v) for k, v in changes.items()}
    expected = expected.replace("'MISSING'", repr(str(root / "MISSING")))
    msgs = problems_of(dataloader(root, edits, refs, **changes))
    assert any(m.startswith(expected) for m in msgs), msgs


def test_reference_captions_replace_edit_captions_only_when_asked(data):
    root, edits, refs = data
    (refs / "0000.txt").write_text("reference caption")
    dl = dataloader(root, edits, refs, **{"1__caption_strategy": "textfile"})
    assert validate_datasets(dl).pairs[0].caption == "invert the colors"
    assert validate_datasets(dl, use_reference_captions=True).pairs[0].caption == "reference caption"
    assert validate_datasets(dl, use_reference_captions=True).pairs[1].caption == "invert the colors"


def test_captions_over_the_token_limit_are_refused(data, tiny_components):
    root, edits, refs = data
    (edits / "0006.txt").write_text("make the sky purple " * 200)
    msgs = problems_of(dataloader(root, edits, refs), tokenizer=tiny_components.tokenizer)
    assert len(msgs) == 1 and "0006: caption is" in msgs[0] and "at most 512" in msgs[0]


def test_resolve_inside(tmp_path):
    root = tmp_path / "data"
    (root / "set").mkdir(parents=True)
    outside = tmp_path / "secret"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    assert resolve_inside(root / "set", [root], "f") == (root / "set").resolve()
    assert resolve_inside("set", [str(root)], "f") == (root / "set").resolve()
    for bad, why in [("../secret", "'..'"), (str(root / "set" / ".." / ".." / "secret"), "'..'"),
                     (str(root / "link"), "outside"), (str(outside), "outside"), ("", "non-empty")]:
        with pytest.raises(InvalidArgument, match=why) as info:
            resolve_inside(bad, [root], "datasets[0].instance_data_dir")
        assert info.value.field == "datasets[0].instance_data_dir"
    with pytest.raises(InvalidArgument, match="no data roots"):
        resolve_inside(root, [], "f")


@pytest.mark.parametrize("size,resolution,expected", [
    ((64, 64), 64, (64, 64)), ((768, 768), 768, (768, 768)), ((1024, 768), 768, (896, 640)),
    ((768, 1024), 768, (640, 896)), ((1920, 1080), 1024, (1344, 768)), ((2000, 1000), 1024, (1408, 704)),
    ((100, 300), 768, (448, 1344)),
])
def test_buckets_sit_on_the_64_grid_near_the_area_and_aspect(size, resolution, expected):
    w, h = bucket_for(*size, resolution)
    assert (w, h) == expected
    assert w % 64 == 0 and h % 64 == 0
    assert abs(np.log(w * h / resolution**2)) < 0.3
    assert abs(np.log(w / h) - np.log(size[0] / size[1])) < 0.15


def test_pairs_are_cropped_identically():
    rng = np.random.RandomState(0)
    ref = Image.fromarray((rng.rand(90, 160, 3) * 255).astype("uint8"))
    swapped = Image.fromarray(np.asarray(ref)[:, :, ::-1].copy())  # a per-channel edit: resize commutes with it
    bucket = bucket_for(*ref.size, 64)
    a, b = fit_to_bucket(ref, bucket), fit_to_bucket(swapped, bucket)
    assert a.size == b.size == bucket
    assert np.array_equal(np.asarray(a)[:, :, ::-1], np.asarray(b))
    assert fit_to_bucket(a, bucket).tobytes() == a.tobytes()  # already the bucket's size: untouched


def test_sampler_batches_share_a_bucket_and_are_seeded():
    buckets = [(64, 64)] * 5 + [(128, 64)] * 3
    s = BucketBatchSampler(buckets, batch_size=2, seed=7)
    assert len(s) == 5  # 3 + 2 batches
    epoch0 = s.epoch(0)
    assert sorted(i for b in epoch0 for i in b) == list(range(8))
    assert all(len({buckets[i] for i in b}) == 1 for b in epoch0)
    assert epoch0 == BucketBatchSampler(buckets, 2, 7).epoch(0) and epoch0 != s.epoch(1)
    assert s.at(6) == (1, s.epoch(1)[1])


def preparer(components, root, fingerprint=None):
    return DataPreparer(components.vae, InProcessEmbedder(components), fingerprint or components.fingerprint,
                        text_cache_dir=root / "cache" / "text", default_vae_cache_root=root / "cache" / "vae",
                        text_dim=components.transformer.config.joint_attention_dim)


def test_caches_hit_miss_change_and_rebuild(data, tiny_components):
    root, edits, refs = data
    dl = dataloader(root, edits, refs)
    pairs = validate_datasets(dl).pairs[:4]
    first = preparer(tiny_components, root).prepare(pairs, caption_dropout=True)
    assert first.stats == {"vae": {"hits": 0, "misses": 8, "rebuilt": 0}, "text": {"hits": 0, "misses": 8, "rebuilt": 0}}
    # Separate folders per dataset, as the dataloader says.
    s0 = first.samples[0]
    assert s0.edit_latents.is_relative_to(root / "cache" / "vae" / "edit")
    assert s0.reference_latents.is_relative_to(root / "cache" / "vae" / "ref")
    batch = PairDataset(first.samples).batch([0, 1])
    assert batch.edit.shape == (2, 16, 64) and batch.reference.shape == (2, 16, 64)
    assert batch.prompt_embeds.shape[0] == 2 and batch.prompt_embeds.shape[2] == 32
    assert batch.empty_embeds.shape == batch.prompt_embeds.shape
    assert not torch.equal(batch.edit, batch.reference)

    again = preparer(tiny_components, root).prepare(pairs, caption_dropout=True)
    assert again.stats == {"vae": {"hits": 8, "misses": 0, "rebuilt": 0}, "text": {"hits": 8, "misses": 0, "rebuilt": 0}}
    assert again.samples == first.samples

    # A changed edit image re-encodes only itself; a changed reference also re-embeds its captions.
    Image.new("RGB", (64, 64), (10, 200, 30)).save(edits / "0000.png")
    Image.new("RGB", (64, 64), (200, 10, 30)).save(refs / "0001.png")
    changed = preparer(tiny_components, root).prepare(pairs, caption_dropout=True)
    assert changed.stats["vae"] == {"hits": 6, "misses": 2, "rebuilt": 0}
    assert changed.stats["text"] == {"hits": 6, "misses": 2, "rebuilt": 0}
    assert changed.samples[0].edit_latents != first.samples[0].edit_latents

    # Corrupt files (truncated, wrong shape, non-finite) are detected and rebuilt to the right values.
    from safetensors.torch import save_file

    from longcat.training.cache import KEY_META, TensorCache

    good = {p: TensorCache.load(p) for p in (changed.samples[1].edit_latents, changed.samples[2].reference_latents,
                                              changed.samples[3].prompt_embeds)}
    truncated, wrong_shape, nan = good
    truncated.write_bytes(truncated.read_bytes()[:40])
    save_file({"tensor": torch.zeros(16, 4, 4)}, str(wrong_shape), metadata={KEY_META: wrong_shape.stem})
    save_file({"tensor": torch.full_like(good[nan], float("nan"))}, str(nan), metadata={KEY_META: nan.stem})
    rebuilt = preparer(tiny_components, root).prepare(pairs, caption_dropout=True)
    assert rebuilt.stats["vae"]["rebuilt"] == 2 and rebuilt.stats["text"]["rebuilt"] == 1
    for path, tensor in good.items():
        assert torch.equal(TensorCache.load(path), tensor)

    # Another model (fingerprint) never reads these files.
    other = preparer(tiny_components, root, fingerprint="another-model").prepare(pairs[:1], caption_dropout=False)
    assert other.stats["vae"] == {"hits": 0, "misses": 2, "rebuilt": 0}
    assert other.stats["text"] == {"hits": 1, "misses": 0, "rebuilt": 0}  # the encoder's own fingerprint


def test_reference_conditioning_is_the_serving_path(data, tiny_components):
    """The cached reference latents and embeddings equal what the edit engine computes for that image."""
    from longcat.conditioning import Geometry, PromptEncoder, encode_reference_latents, prepare_reference

    root, edits, refs = data
    pair = validate_datasets(dataloader(root, edits, refs)).pairs[0]
    sample = preparer(tiny_components, root).prepare([pair], caption_dropout=False).samples[0]
    ref = prepare_reference(Image.open(pair.reference_path).convert("RGB"), Geometry(64, 64))
    c = tiny_components
    with torch.no_grad():
        expected_latents = encode_reference_latents(c.vae, ref.pixels)
        expected_embeds = PromptEncoder(c.tokenizer, c.text_processor.image_processor, c.text_encoder).encode(
            pair.caption, ref.prompt_image)
    batch = PairDataset([sample]).batch([0])
    assert torch.equal(batch.reference, expected_latents)
    assert torch.equal(batch.prompt_embeds, expected_embeds)
