"""A step scheduler: many jobs in flight, one transformer forward per step over a batch of compatible jobs.

Jobs join and leave at every step boundary. Each step, the highest priority present is served (lower ones
pause, their latents kept), tenants are taken round-robin within it, and the batch is every job of that
priority sharing the first one's token layout (same latent/reference geometry and text length: the
transformer's position ids are shared by the batch, and it has no attention mask, so nothing is padded),
up to ``max_batch_tokens``. Each job keeps its own diffusers scheduler, sigma, step count, guidance, CFG
rows, adapters and scales; the math per row is :class:`DenoiseLoop`'s.

Batched = alone, and what that covers: in fp32 on CPU (torch's MKL GEMMs; 1-16 threads tried), a job gives
bit for bit the latents and PNG it gives alone, in any batch, with any batchmates, joining at any step
(tests/test_step_scheduler.py). Both this forward and :class:`DenoiseLoop` run under
:func:`longcat.engine.batch_invariance.batch_invariant`, which keeps every linear on the GEMM path whose
rows do not depend on the row count. On GPU the mode is off and nothing is promised beyond closeness:
cuBLAS chooses algorithms and split-K by problem size, and flash/memory-efficient attention kernels are not
batch-invariant in general, so a batched job may differ from its solo run in the last bits (bf16: more).
"""

from __future__ import annotations

import copy
import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from longcat.adapters.mixed import per_row_adapters
from longcat.conditioning import image_position_ids, predict_velocity, set_inference_timesteps, text_position_ids
from longcat.engine.batch_invariance import batch_invariant, wanted
from longcat.engine.denoise import DenoiseJob, DenoiseLoop, StepEvent
from longcat.errors import Cancelled, DeadlineExceeded
from longcat.logs import job_context

log = logging.getLogger("longcat.engine.scheduler")

LOW, NORMAL, HIGH = 0, 1, 2


@dataclass(frozen=True)
class SchedulerBounds:
    """How much a worker holds: jobs in flight, and tokens (rows x sequence) in one forward.

    ``reserved`` of the ``max_inflight`` slots are kept for a HIGH job or a tenant with nothing in flight, so
    neither waits for a flooding tenant's jobs to end (the worker's admission applies it).

    ``shared_batch_tokens``: when several tenants have jobs at the served priority, a batch takes the oldest
    job of each, then more only within this many tokens. Where a step's cost grows with its rows (CPU), a
    flooding tenant's extra rows would slow every other tenant's steps; where a bigger batch costs little
    more (GPU) it is the whole ``max_batch_tokens``."""

    max_inflight: int = 8
    max_batch_tokens: int = 16384
    reserved: int = 2
    shared_batch_tokens: int = 16384

    @classmethod
    def for_device(cls, device: torch.device | str) -> "SchedulerBounds":
        device = torch.device(device)
        if device.type != "cuda":
            # CPU: one forward holds 8 jobs of 256x256 with CFG (2 rows x (2 x 256 latent + 593 text tokens)
            # each); two slots beyond them are kept for a HIGH job or another tenant. The step's cost grows
            # with its rows, so tenants sharing a step bring one job each (about two jobs' tokens).
            return cls(max_inflight=10, max_batch_tokens=18432, reserved=2, shared_batch_tokens=4096)
        gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        # Activations grow with batch tokens; ~1k tokens per GiB above the bf16 weights (~13 GiB) is roomy.
        tokens = int(max(4096, min(65536, (gib - 16) * 1024)))
        inflight = 16 if gib >= 40 else 8
        return cls(max_inflight=inflight, max_batch_tokens=tokens, reserved=inflight // 4,
                   shared_batch_tokens=tokens)

    def overridden(self, max_inflight: int = 0, max_batch_tokens: int = 0, reserved: int = -1,
                   shared_batch_tokens: int = 0) -> "SchedulerBounds":
        """These bounds with an operator's values (0 / -1: keep). The reserve follows ``max_inflight``: a quarter
        of its slots (at least one, none for a single slot), never more than these bounds reserve."""
        inflight = max_inflight or self.max_inflight
        if reserved < 0:
            reserved = min(self.reserved, max(1, inflight // 4)) if inflight > 1 else 0
        return SchedulerBounds(max_inflight=inflight, max_batch_tokens=max_batch_tokens or self.max_batch_tokens,
                               reserved=reserved, shared_batch_tokens=shared_batch_tokens or self.shared_batch_tokens)


@dataclass(eq=False)
class StepJob:
    """One job in the scheduler. ``on_step`` may raise to end the job (the exception is its outcome)."""

    job: DenoiseJob
    adapters: Sequence[tuple[str, float]] = ()
    priority: int = NORMAL
    tenant: str = ""
    batchable: bool = True        # False: always a batch of its own (e.g. a non-exact speed preset)
    on_step: Callable[[StepEvent], None] | None = None
    cancel: threading.Event | None = None
    deadline: float = 0.0         # epoch seconds, 0 = none
    preview_every: int = 0
    preview_max_side: int = 128
    tag: object = None            # the caller's handle (e.g. the queue entry)
    job_id: str = ""              # for log lines: a job's own carry it, a batch's list every job of the batch
    # state, set by the scheduler
    latents: torch.Tensor | None = None
    error: BaseException | None = None
    index: int = 0
    forwards: int = 0             # how many batched forwards this job took part in
    _rows: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self._timesteps)

    @property
    def done(self) -> bool:
        return self.error is not None or self.index >= self.total

    @property
    def cfg(self) -> bool:
        return self.job.negative_embeds is not None

    def layout(self) -> tuple:
        g = self.job.geometry
        return (g.width, g.height, self.job.prompt_embeds.shape[1], self.job.prompt_embeds.dtype)

    def tokens(self) -> int:
        rows = 2 if self.cfg else 1
        return rows * (2 * self.job.geometry.image_seq_len + self.job.prompt_embeds.shape[1])


class StepScheduler:
    """Holds up to ``bounds.max_inflight`` jobs; :meth:`step` runs one batched forward and returns the jobs
    that ended (finished, cancelled, failed). Not thread-safe: one thread admits and steps."""

    def __init__(self, loop: DenoiseLoop, adapters=None, bounds: SchedulerBounds | None = None):
        self.loop = loop
        self.adapters = adapters  # an AdapterManager, or None (no adapters)
        self.bounds = bounds or SchedulerBounds.for_device(loop.device)
        self.active: list[StepJob] = []
        self._served: OrderedDict[str, None] = OrderedDict()  # tenants, least recently served first
        self._order = itertools.count()
        self._ids: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # layout -> (text ids, image ids)

    # --- admission -----------------------------------------------------------------------------------------

    def has_room(self, adapters: Sequence[tuple[str, float]] = ()) -> bool:
        if len(self.active) >= self.bounds.max_inflight:
            return False
        return not adapters or self.adapters is None or self.adapters.can_hold(list(adapters))

    def admit(self, sj: StepJob) -> StepJob:
        """Join at the next step boundary: seeded noise, its own diffusers scheduler, its adapters held."""
        if len(self.active) >= self.bounds.max_inflight:
            raise RuntimeError("the scheduler is full (check has_room first)")
        if sj.adapters:
            if self.adapters is None:
                from longcat.errors import AdapterNotFound

                raise AdapterNotFound("this denoiser has no adapter store", "adapters[0].name")
            sj._rows = self.adapters.hold(list(sj.adapters))
        job, loop = sj.job, self.loop
        sj._device = device = loop.device  # read once: a diffusers model's .device walks its parameters
        sj._scheduler = copy.deepcopy(loop.scheduler)  # stateful: one per job, as DenoiseLoop does
        sj._timesteps = set_inference_timesteps(sj._scheduler, job.steps, job.geometry.image_seq_len, device)
        dtype = job.prompt_embeds.dtype
        sj.latents = loop.initial_noise(job.geometry, job.seed, dtype)
        sj._reference = job.reference_latents.to(device, dtype)
        sj._embeds = job.prompt_embeds.to(device) if not sj.cfg else torch.cat(
            [job.prompt_embeds.to(device), job.negative_embeds.to(device)])
        sj._start = time.perf_counter()
        sj._seq = next(self._order)
        sj.index = 0
        self.active.append(sj)
        return sj

    # --- one step --------------------------------------------------------------------------------------------

    def pick(self) -> list[StepJob]:
        """The next batch: top priority, tenants round-robin, the first job's layout, within the token bounds
        (``max_batch_tokens``; with several tenants, beyond each one's oldest job, ``shared_batch_tokens``)."""
        if not self.active:
            return []
        top = max(sj.priority for sj in self.active)
        rank = {t: i for i, t in enumerate(self._served)}
        # Round-robin: each tenant's jobs in arrival order, tenants interleaved, least recently served first.
        per_tenant: dict[str, list[StepJob]] = {}
        for sj in sorted((s for s in self.active if s.priority == top), key=lambda s: s._seq):
            per_tenant.setdefault(sj.tenant, []).append(sj)
        tenants = sorted(per_tenant, key=lambda t: (rank.get(t, -1), min(s._seq for s in per_tenant[t])))
        ordered = [sj for group in itertools.zip_longest(*(per_tenant[t] for t in tenants)) for sj in group if sj]
        first = ordered[0]
        if not first.batchable:
            return [first]
        oldest = {id(group[0]) for group in per_tenant.values()} if len(per_tenant) > 1 else None
        batch, tokens = [], 0
        for sj in ordered:
            bound = self.bounds.max_batch_tokens
            if oldest is not None and id(sj) not in oldest:
                bound = min(bound, self.bounds.shared_batch_tokens)
            if sj.batchable and sj.layout() == first.layout() and (not batch or tokens + sj.tokens() <= bound):
                batch.append(sj)
                tokens += sj.tokens()
        return batch

    @torch.no_grad()
    def step(self) -> list[StepJob]:
        """Advance one batch by one step; returns the jobs that ended (removed from ``active``)."""
        ended = [sj for sj in self.active if self._check_stop(sj)]
        batch = [sj for sj in self.pick() if sj not in ended] if len(ended) < len(self.active) else []
        batch = [sj for sj in batch if sj.error is None]
        if batch:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("batched step", extra={"job_ids": [sj.job_id for sj in batch],
                                                 "tenants": sorted({sj.tenant for sj in batch}),
                                                 "rows": sum(2 if sj.cfg else 1 for sj in batch)})
            try:
                self._forward(batch)
            except BaseException as exc:  # noqa: BLE001 - every job of the failed forward ends with its error
                log.warning("batched forward failed; its jobs end with the error", extra={
                    "job_ids": [sj.job_id for sj in batch], "tenants": sorted({sj.tenant for sj in batch}),
                    "error": f"{type(exc).__name__}: {exc}"})
                for sj in batch:
                    sj.error = exc
            for sj in batch:
                for t in dict.fromkeys([sj.tenant]):
                    self._served.pop(t, None)
                    self._served[t] = None
        ended += [sj for sj in batch if sj.done and sj not in ended]
        for sj in ended:
            self._retire(sj)
        return ended

    def _check_stop(self, sj: StepJob) -> bool:
        if sj.error is None and sj.cancel is not None and sj.cancel.is_set():
            sj.error = Cancelled(f"cancelled before step {sj.index + 1} of {sj.total}")
        if sj.error is None and sj.deadline and time.time() > sj.deadline:
            sj.error = DeadlineExceeded(f"its deadline passed during the run, before step {sj.index + 1} of "
                                        f"{sj.total}; it was not finished")
        return sj.error is not None

    def _retire(self, sj: StepJob) -> None:
        if sj in self.active:
            self.active.remove(sj)
        if sj.adapters and self.adapters is not None and sj._rows:
            self.adapters.release(list(sj.adapters))
            sj._rows = []

    def _forward(self, batch: list[StepJob]) -> None:
        loop, first = self.loop, batch[0]
        device, dtype = first._device, first.job.prompt_embeds.dtype
        text_len = first.job.prompt_embeds.shape[1]
        key = (*first.layout(), device)
        if key not in self._ids:  # the same for every step of every job of this layout
            if len(self._ids) >= 64:
                self._ids.clear()
            self._ids[key] = (text_position_ids(text_len, device),
                              image_position_ids(first.job.geometry, text_len, device))
        text_ids, image_ids = self._ids[key]
        latents, reference, embeds, sigmas, row_adapters = [], [], [], [], []
        # Jobs with the same adapters side by side: each adapter group is one slice of the batch in every LoRA
        # layer. A row's result does not depend on its position (batch-invariant), only the hook's cost does.
        groups: dict[tuple, int] = {}
        batch = sorted(batch, key=lambda sj: groups.setdefault(tuple(sj.adapters), len(groups)))
        for sj in batch:
            rows = 2 if sj.cfg else 1
            t = sj._timesteps[sj.index]
            sj._sigma = t.expand(1).to(dtype) / 1000
            latents.append(sj.latents.expand(rows, -1, -1))
            reference.append(sj._reference.expand(rows, -1, -1))
            embeds.append(sj._embeds)
            sigmas.append(sj._sigma.expand(rows))
            row_adapters += [sj._rows] * rows
        lock = self.adapters.batch_lock() if self.adapters is not None else _nullcontext()
        invariant = batch_invariant(loop.transformer, loop.batch_invariant and wanted(device))  # a row's result never sees its batch
        with lock, loop.lock, per_row_adapters(loop.transformer, row_adapters), invariant:
            v_all = predict_velocity(loop.transformer, torch.cat(latents), torch.cat(reference), torch.cat(embeds),
                                     text_ids, image_ids, torch.cat(sigmas))
        at = 0
        for sj in batch:
            if sj.cfg:
                v_cond, v_uncond = v_all[at:at + 1], v_all[at + 1:at + 2]
                v = v_uncond + sj.job.guidance_scale * (v_cond - v_uncond)
                at += 2
            else:
                v = v_all[at:at + 1]
                at += 1
            t = sj._timesteps[sj.index]
            noisy = sj.latents
            sj.latents = sj._scheduler.step(v, t, noisy, return_dict=False)[0]
            sj.index += 1
            sj.forwards += 1
            if sj.on_step is not None:
                self._report(sj, noisy, v)

    def _report(self, sj: StepJob, noisy: torch.Tensor, v: torch.Tensor) -> None:
        elapsed = time.perf_counter() - sj._start
        done, total = sj.index, sj.total
        preview = None
        try:
            if sj.preview_every and (done % sj.preview_every == 0 or done == total):
                with self.loop.lock:
                    preview = self.loop._preview(noisy - sj._sigma * v, sj.job.geometry, sj.preview_max_side)
            with job_context(sj.job_id or None, sj.tenant or None):  # its own log lines name it
                sj.on_step(StepEvent(step=done, total=total, elapsed_s=elapsed,
                                     eta_s=elapsed / done * (total - done), preview=preview))
        except BaseException as exc:  # noqa: BLE001 - the job's own outcome (cancel, deadline, taken over)
            sj.error = exc

    def run_all(self) -> list[StepJob]:
        """Step until nothing is in flight (tests, benches); returns the jobs in the order they ended."""
        out = []
        while self.active:
            out += self.step()
        return out


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
