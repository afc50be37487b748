"""The data pipeline: pairs -> bucketed crops -> cached VAE latents and prompt embeddings -> batches.

Every tensor the loop trains on comes from a cache file (see :mod:`longcat.training.cache`), so a fresh run,
a second run and a resumed run read bit-identical inputs. The reference goes through
:func:`longcat.conditioning.prepare_reference` exactly as in serving: its ``.pixels`` are VAE-encoded for the
reference latents and its ``.prompt_image`` is what Qwen2.5-VL sees with the caption.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from longcat.api.datasets import Pair, read_inside
from longcat.conditioning import Geometry, pack_latents, prepare_reference, vae_encode
from longcat.errors import Cancelled
from longcat.images import decode_image, image_content_hash
from longcat.training.buckets import bucket_for, fit_to_bucket
from longcat.training.cache import TensorCache, cache_key
from longcat.training.embed import Embedder

log = logging.getLogger(__name__)

# Bump when cropping/preprocessing changes: old cache files then miss instead of being reused.
PIPELINE_VERSION = 1


@dataclass(frozen=True)
class CachedSample:
    name: str
    caption: str
    bucket: tuple[int, int]           # (width, height)
    edit_latents: Path                # (C, H/8, W/8) normalized VAE latents of the edit (the target)
    reference_latents: Path           # the same for the reference (the conditioning)
    prompt_embeds: Path               # (L, D) caption seen with the reference
    empty_embeds: Path | None         # (L, D) "" seen with the reference, for caption dropout


@dataclass
class PreparedData:
    samples: list[CachedSample]
    stats: dict[str, dict[str, int]] = field(default_factory=dict)  # {"vae": {...}, "text": {...}}


@dataclass
class Batch:
    names: list[str]
    geometry: Geometry
    edit: torch.Tensor                # (B, N, 64) packed target latents x0
    reference: torch.Tensor           # (B, N, 64) packed reference latents
    prompt_embeds: torch.Tensor       # (B, L, D)
    empty_embeds: torch.Tensor | None


class DataPreparer:
    """Fills the caches for a list of pairs with one VAE and one :class:`Embedder`."""

    def __init__(self, vae, embedder: Embedder, model_fingerprint: str, text_cache_dir: str | Path,
                 default_vae_cache_root: str | Path, text_dim: int | None = None):
        self.vae = vae
        self.embedder = embedder
        self.vae_fingerprint = f"{model_fingerprint}:vae:{vae.dtype}"
        self.text_cache = TensorCache(text_cache_dir, "text")
        self.default_vae_cache_root = Path(default_vae_cache_root)
        self.text_dim = text_dim
        self._vae_caches: dict[str, TensorCache] = {}

    def vae_cache(self, dataset) -> TensorCache:
        if dataset.id not in self._vae_caches:
            root = dataset.cache_dir_vae or self.default_vae_cache_root / dataset.id
            self._vae_caches[dataset.id] = TensorCache(root, f"vae[{dataset.id}]")
        return self._vae_caches[dataset.id]

    def prepare(self, pairs: list[Pair], caption_dropout: bool, should_stop: Callable[[], bool] | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> PreparedData:
        samples = []
        for i, pair in enumerate(pairs):
            if should_stop is not None and should_stop():
                raise Cancelled(f"cancelled while caching ({i} of {len(pairs)} pairs done)")
            samples.append(self.prepare_pair(pair, caption_dropout))
            if on_progress is not None:
                on_progress(i + 1, len(pairs))
        return PreparedData(samples, self.stats())

    def stats(self) -> dict[str, dict[str, int]]:
        vae = {"hits": 0, "misses": 0, "rebuilt": 0}
        for cache in self._vae_caches.values():
            for k, v in cache.stats.as_dict().items():
                vae[k] += v
        return {"vae": vae, "text": self.text_cache.stats.as_dict()}

    @torch.no_grad()
    def prepare_pair(self, pair: Pair, caption_dropout: bool) -> CachedSample:
        edit_bytes = read_inside(pair.edit_path, pair.roots, pair.name)
        ref_bytes = read_inside(pair.reference_path, pair.roots, pair.name)
        edit_hash, ref_hash = image_content_hash(edit_bytes), image_content_hash(ref_bytes)
        edit_img = decode_image(edit_bytes, field=pair.name)
        ds = pair.edit_dataset
        bucket = bucket_for(*edit_img.size, ds.resolution, ds.resolution_type)
        geometry = Geometry(*bucket)
        crops: dict[str, object] = {"edit": fit_to_bucket(edit_img, bucket)}

        def reference():
            # Decoded and prepared only when some cache misses: a warm cache never touches the pixels.
            if "reference" not in crops:
                crops["reference"] = prepare_reference(
                    fit_to_bucket(decode_image(ref_bytes, field=pair.name), bucket), geometry)
            return crops["reference"]

        c = self.vae.config.latent_channels
        h, w = geometry.latent_hw

        def latent_check(t):
            return None if tuple(t.shape) == (c, h, w) else f"shape {tuple(t.shape)}, expected {(c, h, w)}"

        def vae_key(image_hash):
            return cache_key(kind="vae", image=image_hash, bucket=bucket, model=self.vae_fingerprint,
                             version=PIPELINE_VERSION)

        edit_latents = self.vae_cache(pair.edit_dataset).get_or_create(
            vae_key(edit_hash), lambda: self._encode(prepare_reference(crops["edit"], geometry).pixels),
            latent_check)
        reference_latents = self.vae_cache(pair.reference_dataset).get_or_create(
            vae_key(ref_hash), lambda: self._encode(reference().pixels), latent_check)
        prompt = self._embed(pair.caption, ref_hash, bucket, reference)
        empty = self._embed("", ref_hash, bucket, reference) if caption_dropout else None
        return CachedSample(pair.name, pair.caption, bucket, edit_latents, reference_latents, prompt, empty)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return vae_encode(self.vae, pixels)[0]

    def _embed(self, prompt: str, ref_hash: str, bucket, reference) -> Path:
        key = cache_key(kind="text", prompt=prompt, reference=ref_hash, bucket=bucket,
                        model=self.embedder.fingerprint, version=PIPELINE_VERSION)

        def check(t):
            if t.ndim != 2:
                return f"shape {tuple(t.shape)}, expected (tokens, hidden)"
            if self.text_dim is not None and t.shape[1] != self.text_dim:
                return f"hidden size {t.shape[1]}, the transformer expects {self.text_dim}"
            return None

        def create():
            out = self.embedder.embed(prompt, reference().prompt_image, key)
            return out[0] if out.ndim == 3 else out

        return self.text_cache.get_or_create(key, create, check)


class PairDataset:
    """Cached samples, loaded from their files on demand (memory stays flat for large datasets)."""

    def __init__(self, samples: list[CachedSample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def buckets(self) -> list[tuple[int, int]]:
        return [s.bucket for s in self.samples]

    def batch(self, indices: list[int]) -> Batch:
        chosen = [self.samples[i] for i in indices]
        buckets = {s.bucket for s in chosen}
        if len(buckets) != 1:
            raise ValueError(f"a batch mixes buckets {sorted(buckets)}")
        load = TensorCache.load
        edit = pack_latents(torch.stack([load(s.edit_latents) for s in chosen]))
        reference = pack_latents(torch.stack([load(s.reference_latents) for s in chosen]))
        embeds = torch.stack([load(s.prompt_embeds) for s in chosen])
        empty = None
        if all(s.empty_embeds is not None for s in chosen):
            empty = torch.stack([load(s.empty_embeds) for s in chosen])
        return Batch([s.name for s in chosen], Geometry(*chosen[0].bucket), edit, reference, embeds, empty)


class BucketBatchSampler:
    """Batches of same-bucket samples in a seeded order: epoch ``e``'s order depends only on (seed, e).

    So the batch at any global step is a pure function of the step, and resuming needs no sampler state
    beyond the step count.
    """

    def __init__(self, buckets: list[tuple[int, int]], batch_size: int, seed: int):
        self.batch_size = batch_size
        self.seed = seed
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, b in enumerate(buckets):
            groups[b].append(i)
        self.groups = [groups[b] for b in sorted(groups)]
        self.per_epoch = sum(-(-len(g) // batch_size) for g in self.groups)
        self._last: tuple[int, list[list[int]]] | None = None

    def __len__(self) -> int:
        return self.per_epoch

    def generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))

    def epoch(self, epoch: int) -> list[list[int]]:
        gen = self.generator(epoch)
        batches = []
        for group in self.groups:
            order = [group[i] for i in torch.randperm(len(group), generator=gen).tolist()]
            batches += [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    def at(self, step: int) -> tuple[int, list[int]]:
        """(epoch, indices) of the batch for 0-based global ``step``."""
        epoch, position = divmod(step, self.per_epoch)
        if self._last is None or self._last[0] != epoch:
            self._last = (epoch, self.epoch(epoch))
        return epoch, self._last[1][position]
