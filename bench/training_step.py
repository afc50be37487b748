"""Trainer step time vs a plain diffusers + peft loop on the same batch, and an epoch with warm vs cold caches.

    python bench/training_step.py [--model tiny] [--size 128] [--steps 30] [--pairs 8]

Both step loops train the same LoRA (official targets, rank 16) on the same transformer with the same batch
(the same latents and embeddings); the plain loop calls the transformer, AdamW and the MSE loss directly,
ours goes through ``longcat.training.loop.train_step`` (shared conditioning, clipping, LR schedule, RNG).
They are interleaved in one process so machine noise hits both alike; the ratio is ours / plain.
The cache part times ``DataPreparer.prepare`` over a generated dataset twice: empty caches, then warm ones.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def plain_step(transformer, optimizer, batch, text_ids, image_ids, generator) -> float:
    """What one writes with diffusers + peft alone: sigma, noise, forward, MSE on the noisy tokens, AdamW."""
    optimizer.zero_grad(set_to_none=True)
    b = batch.edit.shape[0]
    sigma = torch.rand(b, generator=generator)
    noise = torch.randn(batch.edit.shape, generator=generator)
    noisy = (1 - sigma.view(b, 1, 1)) * batch.edit + sigma.view(b, 1, 1) * noise
    out = transformer(hidden_states=torch.cat([noisy, batch.reference], dim=1), timestep=sigma,
                      encoder_hidden_states=batch.prompt_embeds, txt_ids=text_ids, img_ids=image_ids,
                      return_dict=False)[0][:, : noisy.shape[1]]
    loss = F.mse_loss(out, noise - batch.edit)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args()

    from longcat.adapters import OFFICIAL_TARGET_MODULES
    from longcat.api.dataloader import parse_dataloader
    from longcat.api.datasets import validate_datasets
    from longcat.conditioning import image_position_ids, text_position_ids
    from longcat.models.loading import load_components
    from longcat.training.data import DataPreparer, PairDataset
    from longcat.training.embed import InProcessEmbedder
    from longcat.training.loop import StepSettings, TrainState, train_step
    from longcat.training.lora import add_training_lora
    from longcat.training.sample_data import write_pairs

    components = load_components(args.model, device="cpu", precision="fp32")
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    edits, refs = write_pairs(work / "data", count=args.pairs, size=(args.size, args.size), seed=0)
    loader = parse_dataloader([
        {"id": "edit", "instance_data_dir": str(edits), "caption_strategy": "textfile", "resolution": args.size,
         "cache_dir_vae": str(work / "cache" / "edit"), "conditioning_data": ["ref"]},
        {"id": "ref", "instance_data_dir": str(refs), "resolution": args.size,
         "cache_dir_vae": str(work / "cache" / "ref")}])
    pairs = validate_datasets(loader, False).pairs

    def prepare():
        preparer = DataPreparer(components.vae, InProcessEmbedder(components), components.fingerprint,
                                text_cache_dir=work / "cache" / "text", default_vae_cache_root=work / "cache",
                                text_dim=components.transformer.config.joint_attention_dim)
        t0 = time.perf_counter()
        prepared = preparer.prepare(pairs, caption_dropout=False)
        return time.perf_counter() - t0, prepared

    cold_s, prepared = prepare()
    warm_s, _ = prepare()
    batch = PairDataset(prepared.samples).batch([0])

    def lora_copy(seed):
        t = copy.deepcopy(components.transformer)
        params = add_training_lora(t, 16, 16, OFFICIAL_TARGET_MODULES, seed=seed)
        t.train()
        return t, params, torch.optim.AdamW(params, lr=1e-4)

    ours_t, ours_p, ours_opt = lora_copy(0)
    from diffusers.optimization import get_scheduler

    state = TrainState(ours_t, ours_p, ours_opt, get_scheduler("constant", ours_opt), torch.Generator().manual_seed(0))
    settings = StepSettings(scheduler_config=components.scheduler.config, device=torch.device("cpu"),
                            dtype=torch.float32, max_grad_norm=1.0)
    plain_t, _, plain_opt = lora_copy(0)
    text_ids = text_position_ids(batch.prompt_embeds.shape[1])
    image_ids = image_position_ids(batch.geometry, batch.prompt_embeds.shape[1])
    gen = torch.Generator().manual_seed(0)

    for _ in range(3):  # warm-up both
        train_step(state, batch, settings)
        plain_step(plain_t, plain_opt, batch, text_ids, image_ids, gen)
    ours, plain = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter(); train_step(state, batch, settings); ours.append(time.perf_counter() - t0)  # noqa: E702
        t0 = time.perf_counter(); plain_step(plain_t, plain_opt, batch, text_ids, image_ids, gen)  # noqa: E702
        plain.append(time.perf_counter() - t0)
    o, p = statistics.median(ours), statistics.median(plain)
    print(f"model {args.model}, {args.size}x{args.size}, batch 1, LoRA rank 16 (official targets), "
          f"{args.steps} steps each, torch threads {torch.get_num_threads()}, cpu count {os.cpu_count()}")
    print(f"plain diffusers+peft step : {p * 1000:8.2f} ms (median)")
    print(f"longcat train_step        : {o * 1000:8.2f} ms (median)")
    print(f"ratio ours/plain          : {o / p:.3f}")
    print(f"caches for {len(pairs)} pairs: cold {cold_s:.2f} s, warm {warm_s:.3f} s "
          f"(warm/cold {warm_s / cold_s:.3f})")


if __name__ == "__main__":
    main()
