"""The training run: validate data -> load model -> fill caches -> LoRA -> steps, checkpoints, validation ->
adapter + summary. Each stage lives in its own module; this file only puts them in order."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from longcat.api.dataloader import DataloaderConfig, parse_dataloader
from longcat.api.datasets import validate_datasets
from longcat.api.training_config import TrainingConfig, parse_config
from longcat.training import checkpoint as ckpt
from longcat.training.data import BucketBatchSampler, DataPreparer, PairDataset
from longcat.training.embed import Embedder, make_embedder
from longcat.training.events import Events, EventSink
from longcat.training.loop import StepSettings, TrainState, make_lr_scheduler, make_optimizer, train_step
from longcat.training.lora import add_training_lora, remove_training_lora
from longcat.training.output import write_adapter, write_summary
from longcat.training.validation import VALIDATION_DIR, Validator, validation_items, validation_pairs

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    status: str                               # "completed" | "cancelled" | "paused"
    step: int
    total_steps: int
    losses: list[float]                       # every step's loss since step 1 (restored ones included)
    seed: int
    adapter_path: Path | None = None
    summary_path: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)
    validation_images: dict[int, list[Path]] = field(default_factory=dict)
    cache_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    resumed_from: Path | None = None
    result_images: list[Path] = field(default_factory=list)  # loss.png, validation/grid.png


class Trainer:
    """One LoRA training run.

    ``components``: already-loaded model parts to train on (a warm worker); the LoRA is taken off again at
    the end. Otherwise the model is loaded as the config says. ``embedder``: where prompt embeddings come
    from (default: in-process Qwen2.5-VL, or what ``embeddings_source`` asks for). ``should_stop`` is polled
    before every step: the run stops within one step and reports ``cancelled``.
    """

    def __init__(self, config: TrainingConfig | str | dict, dataloader: DataloaderConfig | str | list, *,
                 on_event: EventSink | None = None, should_stop: Callable[[], bool] | None = None,
                 should_pause: Callable[[], bool] | None = None,
                 components=None, embedder: Embedder | None = None, device: str | None = None,
                 checkpoint_every_s: float = 0.0):
        self.config = config if isinstance(config, TrainingConfig) else parse_config(config)
        self.dataloader = dataloader if isinstance(dataloader, DataloaderConfig) else parse_dataloader(dataloader)
        self.events = Events(on_event)
        self.should_stop = should_stop or (lambda: False)
        # Polled like should_stop; true = checkpoint now and stop, to be resumed elsewhere (worker shutdown).
        self.should_pause = should_pause or (lambda: False)
        self.components = components
        self.embedder = embedder
        self.device = device
        # Also checkpoint when this long passed since the last one (a trainer's bound on what a kill re-runs).
        self.checkpoint_every_s = checkpoint_every_s
        # Set while running, for sinks and tests that want to look inside (e.g. evaluation_loss).
        self.dataset: PairDataset | None = None
        self.state: TrainState | None = None
        self.settings: StepSettings | None = None

    # -- the run ---------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        lent = self.components is not None
        checkpointing = lent and getattr(self.components.transformer, "is_gradient_checkpointing", False)
        try:
            return self._run()
        finally:
            if lent:
                self._give_back(self.components.transformer, checkpointing)

    def _run(self) -> TrainResult:
        c = self.config
        out = Path(c.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(out)
        started = time.time()

        self.events.emit("phase", phase="checking_data")
        components = self.components or self._load(("tokenizer",))
        report = validate_datasets(self.dataloader, c.use_reference_captions, tokenizer=components.tokenizer)
        val_pairs = validation_pairs(report.pairs, c.num_validation_images)
        train_pairs = report.pairs
        if c.validation_holdout and val_pairs and len(report.pairs) > len(val_pairs):
            train_pairs = report.pairs[len(val_pairs):]

        if self.embedder is None and c.embeddings_source != "in_process":
            make_embedder(c, None)  # refuses now, before the model loads, if there is no way to embed
        resume_path = ckpt.resolve_resume(c.resume_from_checkpoint, out)
        meta = ckpt.read_meta(resume_path) if resume_path else {}
        seed = c.seed if c.seed is not None else meta.get("seed", random.SystemRandom().randrange(2**31))

        self.events.emit("phase", phase="loading_model")
        if self.components is None:
            self.components = components = self._load()
        embedder = self.embedder or make_embedder(c, components)
        transformer = components.transformer

        self.events.emit("phase", phase="caching")
        preparer = DataPreparer(
            components.vae, embedder, components.fingerprint,
            text_cache_dir=self.dataloader.text_cache_dir or out / "cache" / "text",
            default_vae_cache_root=out / "cache" / "vae", text_dim=transformer.config.joint_attention_dim)
        prepared = preparer.prepare(train_pairs, c.caption_dropout_probability > 0, self.should_stop,
                                    lambda done, total: self.events.emit("caching", done=done, total=total))
        self.dataset = dataset = PairDataset(prepared.samples)
        sampler = BucketBatchSampler(dataset.buckets(), c.train_batch_size, seed)
        total = c.max_train_steps or c.num_train_epochs * len(sampler)

        rank, alpha = c.lora_rank, c.effective_lora_alpha
        params = add_training_lora(transformer, rank, alpha, c.lora_target_modules, c.lora_dropout, seed,
                                   init=c.lora_init_type)
        if c.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        optimizer = make_optimizer(params, c)
        self.state = state = TrainState(transformer, params, optimizer, make_lr_scheduler(optimizer, c, total),
                                        torch.Generator().manual_seed(_noise_seed(seed)))
        run_meta = {
            "seed": seed,
            "total_steps": total,
            "lora": {"rank": rank, "alpha": alpha, "targets": sorted(c.lora_target_modules)},
            "model_fingerprint": components.fingerprint,
            "data_fingerprint": _data_fingerprint(prepared.samples),
        }
        if resume_path:
            ckpt.load_checkpoint(resume_path, state, run_meta)

        device = transformer.device
        self.settings = settings = StepSettings(
            scheduler_config=components.scheduler.config, device=device, dtype=components.precision.compute_dtype,
            caption_dropout=c.caption_dropout_probability, max_grad_norm=c.max_grad_norm,
            autocast_bf16=c.resolved_mixed_precision(device.type) == "bf16")
        validator = self._validator(components, val_pairs, out)
        result = TrainResult("completed", state.step, total, state.losses, seed, resumed_from=resume_path,
                             cache_stats=prepared.stats)
        self.events.emit("start", step=state.step, total=total, pairs=len(train_pairs),
                         validation_pairs=len(val_pairs), buckets=_bucket_counts(prepared.samples), seed=seed,
                         resumed_from=str(resume_path) if resume_path else None)

        self.events.emit("phase", phase="training")
        t0, first = time.perf_counter(), state.step
        last_checkpoint = time.monotonic()
        while state.step < total:
            if self.should_stop():
                result.status = "cancelled"
                break
            if self.should_pause() and state.step > 0:
                path = ckpt.save_checkpoint(state, out, run_meta, rank, alpha, c.checkpoints_total_limit)
                result.checkpoints.append(path)
                self.events.emit("checkpoint", step=state.step, path=str(path))
                result.status = "paused"
                break
            _, indices = sampler.at(state.step)
            loss, lr = train_step(state, dataset.batch(indices), settings)
            elapsed = time.perf_counter() - t0
            eta = elapsed / (state.step - first) * (total - state.step)
            self.events.emit("step", step=state.step, total=total, loss=loss, lr=lr, eta_s=round(eta, 3))
            due = bool(c.checkpointing_steps) and state.step % c.checkpointing_steps == 0
            if not due and self.checkpoint_every_s and state.step < total:
                due = time.monotonic() - last_checkpoint >= self.checkpoint_every_s
            if due:  # cheap: LoRA weights + optimizer/scheduler/RNG state (checkpoint.py); saving draws no RNG
                path = ckpt.save_checkpoint(state, out, run_meta, rank, alpha, c.checkpoints_total_limit)
                last_checkpoint = time.monotonic()
                result.checkpoints.append(path)
                self.events.emit("checkpoint", step=state.step, path=str(path))
            if validator and c.validation_steps and state.step % c.validation_steps == 0 and state.step < total:
                self._validate(validator, state.step, result)

        result.step = state.step
        if result.status in ("cancelled", "paused"):
            self.events.emit(result.status, step=state.step, total=total)
        else:
            result.adapter_path = write_adapter(transformer, out, rank, alpha)
            if validator:
                self._validate(validator, state.step, result)
            self._write_result_images(out, result, validator)
        result.summary_path = write_summary(out, self._summary(result, components, report, train_pairs,
                                                                val_pairs, prepared, time.time() - started))
        if result.status == "completed":
            self.events.emit("done", step=state.step, total=total, adapter_path=str(result.adapter_path),
                             summary_path=str(result.summary_path))
        return result

    # -- pieces ----------------------------------------------------------------------------------------

    def _load(self, names=None):
        from longcat.models.loading import ALL_COMPONENTS, DENOISER_COMPONENTS, load_components

        if names is None:
            # With an encoder service the text encoder stays out of this process.
            names = ALL_COMPONENTS if self.config.embeddings_source == "in_process" else DENOISER_COMPONENTS
        return load_components(self.config.pretrained_model_name_or_path, names, device=self.device,
                               precision=self.config.base_model_precision)

    def _validator(self, components, pairs, out: Path) -> Validator | None:
        if not pairs or self.config.num_validation_images == 0:
            return None
        if components.text_encoder is None:
            # The engine encodes prompts in-process; see the report on wiring an external encoder into it.
            log.warning("validation images skipped: the edit engine needs an in-process text encoder",
                        extra={"event": "validation_skipped"})
            return None
        return Validator(components, self.config, validation_items(pairs, self.config), out / VALIDATION_DIR)

    def _validate(self, validator: Validator, step: int, result: TrainResult) -> None:
        images = validator.render(f"step-{step}")
        result.validation_images[step] = images
        self.events.emit("validation", step=step, images=[str(p) for p in images])

    def _write_result_images(self, out: Path, result: TrainResult, validator: Validator | None) -> None:
        """loss.png and validation/grid.png next to the adapter, announced as one event (clients fetch them)."""
        from PIL import Image

        from longcat.training.result_images import GRID_FILE, LOSS_FILE, write_loss_plot, write_validation_grid

        files = [write_loss_plot(result.losses, out / LOSS_FILE)]
        if validator and result.validation_images:
            rows = [(f"step {step}", [Image.open(p) for p in paths])
                    for step, paths in sorted(result.validation_images.items())]
            files.append(write_validation_grid([i.reference for i in validator.items],
                                               [i.caption for i in validator.items], rows,
                                               out / VALIDATION_DIR / GRID_FILE))
        result.result_images = files
        self.events.emit("result_images", step=result.step, paths=[str(p) for p in files],
                         names=[str(p.relative_to(out)) for p in files])

    def _give_back(self, transformer, checkpointing: bool) -> None:
        """Leave lent components as we found them: no LoRA, checkpointing as it was, eval mode."""
        remove_training_lora(transformer)
        if getattr(transformer, "is_gradient_checkpointing", False) and not checkpointing:
            transformer.disable_gradient_checkpointing()
        transformer.eval()

    def _summary(self, result, components, report, train_pairs, val_pairs, prepared, elapsed) -> dict[str, Any]:
        c = self.config
        losses = result.losses
        return {
            "status": result.status,
            "step": result.step,
            "total_steps": result.total_steps,
            "final_loss": losses[-1] if losses else None,
            "mean_loss_last_10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
            "losses": losses,
            "seed": result.seed,
            "model": components.model_path,
            "model_fingerprint": components.fingerprint,
            "precision": components.precision.name,
            "device": str(components.device),
            "lora": {"rank": c.lora_rank, "alpha": c.effective_lora_alpha, "targets": c.lora_target_modules},
            "pairs": {"train": len(train_pairs), "validation": len(val_pairs), "total": len(report.pairs)},
            "buckets": _bucket_counts(prepared.samples),
            "cache": result.cache_stats,
            "adapter_path": str(result.adapter_path) if result.adapter_path else None,
            "checkpoints": [str(p) for p in result.checkpoints],
            "validation_images": {str(k): [str(p) for p in v] for k, v in result.validation_images.items()},
            "resumed_from": str(result.resumed_from) if result.resumed_from else None,
            "elapsed_s": round(elapsed, 3),
            "warnings": c.warnings + self.dataloader.warnings + report.warnings,
            "config": c.to_dict(),
        }


def train(config, dataloader, **kwargs) -> TrainResult:
    """``Trainer(config, dataloader, **kwargs).run()``."""
    return Trainer(config, dataloader, **kwargs).run()


def _noise_seed(seed: int) -> int:
    # Distinct from the data-order seeds (seed * 1_000_003 + epoch), so noise and order never share a stream.
    return (seed + 0x9E3779B97F4A7C15) % (2**63)


def _data_fingerprint(samples) -> str:
    parts = [(s.name, s.bucket, s.edit_latents.name, s.reference_latents.name, s.prompt_embeds.name)
             for s in samples]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _bucket_counts(samples) -> dict[str, int]:
    return dict(sorted(Counter("{}x{}".format(*s.bucket) for s in samples).items()))
