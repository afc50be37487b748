"""The step scheduler (longcat/engine/step_scheduler.py) on the tiny model, fp32, CPU.

Equality: each job of a mixed batch (seeds, step counts, guidance with and without CFG, adapters and
scales, joining at different steps) gives the latents and the PNG it gives alone through the one denoise
stage (peft's own ``set_adapters`` path). Then the order the scheduler serves: priorities, tenants, bounds.
"""

from __future__ import annotations

import copy

import pytest
import torch

from longcat.adapters import AdapterManager, AdapterStore, save_lora
from longcat.api.sizes import Geometry
from longcat.engine.denoise import DenoiseJob, DenoiseLoop
from longcat.engine.stage import StageRequest, run_denoise_stage
from longcat.engine.step_scheduler import HIGH, LOW, NORMAL, SchedulerBounds, StepJob, StepScheduler
from longcat.images import encode_png
from tests.test_adapters import add_random_adapter

TEXT_LEN = 12


@pytest.fixture(scope="module")
def setup(tiny_components, tmp_path_factory):
    """A private transformer copy with a store of two random adapters, and its loop + manager."""
    c = tiny_components
    transformer = bare_copy(c.transformer)
    root = tmp_path_factory.mktemp("sched-adapters")
    for i, (name, rank, alpha) in enumerate([("ink", 4, 8.0), ("sun", 2, 2.0)]):
        m = bare_copy(c.transformer)
        add_random_adapter(m, "trained", seed=300 + i, rank=rank, alpha=alpha)
        save_lora(m, "trained", root / name, rank=rank, alpha=alpha)
    loop = DenoiseLoop(transformer, c.vae, c.scheduler)
    manager = AdapterManager(transformer, AdapterStore(root), capacity=4)
    return loop, manager


def bare_copy(transformer):
    """A copy without the LoRA layers other tests' adapter managers left on the shared session model."""
    m = copy.deepcopy(transformer)
    if getattr(m, "peft_config", None):
        m.unload_lora()
    return m


def make_job(loop, seed: int, steps: int, guidance: float, size=(64, 64), text_len=TEXT_LEN) -> DenoiseJob:
    g = Geometry(width=size[0], height=size[1])
    gen = torch.Generator().manual_seed(1000 + seed)
    dim = loop.transformer.config.joint_attention_dim
    prompt = torch.randn(1, text_len, dim, generator=gen)
    negative = torch.randn(1, text_len, dim, generator=gen) if guidance > 1 else None
    reference = torch.randn(1, g.image_seq_len, 64, generator=gen)
    return DenoiseJob(prompt, negative, reference, g, steps, guidance, seed)


def alone(loop, manager, job: DenoiseJob, adapters):
    stage = run_denoise_stage(loop, manager, StageRequest(
        job.prompt_embeds, job.negative_embeds, job.geometry, job.steps, job.guidance_scale, job.seed,
        reference_latents=job.reference_latents, adapters=adapters))
    return stage.latents, encode_png_of(stage.pixels)


def pixels_of_png(png: bytes):
    import io

    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.array(Image.open(io.BytesIO(png)))).int()


def encode_png_of(pixels):
    from longcat.conditioning import to_pil

    return encode_png(to_pil(pixels)[0])


SPECS = [  # seed, steps, guidance, adapters, joins before the scheduler's step number
    (1, 4, 4.5, [("ink", 1.0)], 0),
    (2, 3, 1.0, [], 0),
    (3, 5, 2.5, [("ink", 0.5), ("sun", 1.0)], 1),
    (4, 2, 3.0, [("sun", 0.7)], 2),
    (5, 3, 1.0, [("sun", -0.4)], 2),
    (6, 3, 4.5, [("ink", 1.0)], 1),  # the first job's adapters: the two share one slice in each LoRA layer
]


def test_mixed_batch_equals_each_job_alone(setup):
    loop, manager = setup
    jobs = [make_job(loop, seed, steps, g) for seed, steps, g, _, _ in SPECS]
    expected = [alone(loop, manager, job, spec[3]) for job, spec in zip(jobs, SPECS)]

    sched = StepScheduler(loop, manager, SchedulerBounds(max_inflight=8, max_batch_tokens=1 << 20))
    handles, step_no, batch_sizes = {}, 0, []
    while step_no == 0 or sched.active:
        for i, (spec, job) in enumerate(zip(SPECS, jobs)):
            if spec[4] == step_no:
                handles[i] = sched.admit(StepJob(job, adapters=spec[3]))
        batch_sizes.append(len(sched.pick()))
        sched.step()
        step_no += 1
    assert max(batch_sizes) == len(SPECS)  # all five shared forwards at some step
    for i, (spec, (lat, png)) in enumerate(zip(SPECS, expected)):
        sj = handles[i]
        assert sj.error is None and sj.index == spec[1] and sj.forwards == spec[1]
        diff = (sj.latents - lat).abs().max().item()
        assert diff <= 1e-5, f"job {i}: max abs diff {diff}"
        # The same PNG, byte for byte: batch-invariant linears (longcat.engine.batch_invariance) make a row's
        # numerics independent of its batchmates (without them, ~1e-6 on the latents moved a pixel a level).
        ours = encode_png_of(loop.decode(sj.latents, sj.job.geometry))
        moved = (pixels_of_png(ours) != pixels_of_png(png)).sum().item()
        assert ours == png, f"job {i}: {moved} 8-bit values differ (latents max abs diff {diff:.2e})"
    assert manager._in_use == {}  # every hold released


def test_one_job_through_the_scheduler_is_bit_exact(setup):
    """A batch of one (our per-row LoRA hook, not peft's set_adapters): identical latents and PNG."""
    loop, manager = setup
    seed, steps, g, adapters, _ = SPECS[2]
    job = make_job(loop, seed, steps, g)
    lat, png = alone(loop, manager, job, adapters)
    sched = StepScheduler(loop, manager, SchedulerBounds(max_inflight=8, max_batch_tokens=1 << 20))
    sj = sched.admit(StepJob(job, adapters=adapters))
    sched.run_all()
    assert torch.equal(sj.latents, lat)
    assert encode_png_of(loop.decode(sj.latents, job.geometry)) == png


def test_cancel_deadline_previews_and_progress_are_per_job_inside_a_batch(setup):
    """Three jobs share every forward: one is cancelled after its second step, one's deadline passes after its
    first; each ends with its own error at the next step boundary, and the third gets its progress and a preview
    at every step and ends with the latents it gives alone."""
    import threading
    import time

    from longcat.errors import Cancelled, DeadlineExceeded

    loop, manager = setup
    events: dict[str, list] = {"cancel": [], "deadline": [], "keep": []}
    cancel = threading.Event()

    def on_step(name):
        def record(ev):
            events[name].append(ev)
            if name == "cancel" and ev.step == 2:
                cancel.set()
            if name == "deadline":
                deadline_job.deadline = time.time() - 1  # passes now: it stops before its next step
        return record

    sched = StepScheduler(loop, manager, SchedulerBounds(max_inflight=8, max_batch_tokens=1 << 20))
    cancel_job = sched.admit(StepJob(make_job(loop, 70, 5, 4.5), adapters=[("ink", 1.0)], cancel=cancel,
                                     on_step=on_step("cancel")))
    deadline_job = sched.admit(StepJob(make_job(loop, 71, 5, 1.0), on_step=on_step("deadline")))
    keep = sched.admit(StepJob(make_job(loop, 72, 4, 4.5), adapters=[("sun", 0.5)], on_step=on_step("keep"),
                               preview_every=1))
    assert len(sched.pick()) == 3
    ended = sched.run_all()
    assert isinstance(cancel_job.error, Cancelled) and cancel_job.index == 2 and "step 3 of 5" in str(cancel_job.error)
    assert isinstance(deadline_job.error, DeadlineExceeded) and deadline_job.index == 1
    assert keep.error is None and ended[-1] is keep and [ev.step for ev in events["keep"]] == [1, 2, 3, 4]
    assert all(ev.preview is not None and ev.total == 4 for ev in events["keep"])
    assert [ev.step for ev in events["cancel"]] == [1, 2] and [ev.step for ev in events["deadline"]] == [1]
    lat, _ = alone(loop, manager, keep.job, [("sun", 0.5)])
    assert torch.equal(keep.latents, lat)
    assert manager._in_use == {}  # the ended jobs' adapter holds released


def test_layouts_and_unbatchable_jobs_run_apart(setup):
    loop, manager = setup
    a = StepJob(make_job(loop, 7, 2, 1.0))
    b = StepJob(make_job(loop, 8, 2, 1.0, size=(64, 96)))        # another geometry
    c = StepJob(make_job(loop, 9, 2, 1.0, text_len=TEXT_LEN + 3))  # another text length
    d = StepJob(make_job(loop, 10, 2, 1.0), batchable=False)
    e = StepJob(make_job(loop, 11, 2, 4.0))                      # CFG rows share a's layout
    sched = StepScheduler(loop, manager, SchedulerBounds(max_inflight=8, max_batch_tokens=1 << 20))
    for sj in (a, b, c, d, e):
        sched.admit(sj)
    assert sched.pick() == [a, e]
    sched.run_all()
    ref, _ = alone(loop, manager, b.job, [])
    assert (b.latents - ref).abs().max().item() <= 1e-5


def test_priority_preempts_and_low_resumes(setup):
    loop, manager = setup
    sched = StepScheduler(loop, manager, SchedulerBounds(max_inflight=8, max_batch_tokens=1 << 20))
    low = sched.admit(StepJob(make_job(loop, 20, 4, 1.0), priority=LOW))
    sched.step()
    assert low.index == 1
    high = sched.admit(StepJob(make_job(loop, 21, 3, 1.0), priority=HIGH))
    normal = sched.admit(StepJob(make_job(loop, 22, 2, 1.0), priority=NORMAL))
    order = []
    while sched.active:
        order.append([sj.priority for sj in sched.pick()])
        sched.step()
    assert order == [[HIGH]] * 3 + [[NORMAL]] * 2 + [[LOW]] * 3  # LOW paused with its latents, then resumed
    ref, _ = alone(loop, manager, low.job, [])
    assert (low.latents - ref).abs().max().item() <= 1e-5 and high.index == 3 and normal.index == 2


def test_rows_apart_and_rows_side_by_side_get_the_same_adapter_numbers(setup):
    """The per-row hook gathers a group's rows when they are apart and slices them (in place) when side by
    side, as the scheduler orders them: the same numbers either way, row by row."""
    from longcat.adapters.mixed import per_row_adapters
    from longcat.conditioning import image_position_ids, predict_velocity, text_position_ids
    from longcat.engine.batch_invariance import batch_invariant

    loop, manager = setup
    jobs = [make_job(loop, 60 + i, 1, 1.0) for i in range(3)]
    noisy = [torch.randn(1, j.geometry.image_seq_len, 64, generator=torch.Generator().manual_seed(i))
             for i, j in enumerate(jobs)]
    g = jobs[0].geometry
    rows = manager.hold([("ink", 0.8)])
    try:
        def forward(order, adapters):
            with manager.batch_lock(), per_row_adapters(loop.transformer, adapters), \
                    batch_invariant(loop.transformer), torch.no_grad():
                return predict_velocity(loop.transformer, torch.cat([noisy[i] for i in order]),
                                        torch.cat([jobs[i].reference_latents for i in order]),
                                        torch.cat([jobs[i].prompt_embeds for i in order]),
                                        text_position_ids(TEXT_LEN, "cpu"), image_position_ids(g, TEXT_LEN, "cpu"),
                                        torch.full((len(order),), 0.5))

        apart = forward([0, 1, 2], [rows, [], rows])   # rows 0 and 2: an index
        side = forward([0, 2, 1], [rows, rows, []])    # rows 0 and 1: a slice
        base = forward([0, 1, 2], [[], [], []])
    finally:
        manager.release([("ink", 0.8)])
    assert torch.equal(apart[0], side[0]) and torch.equal(apart[2], side[1]) and torch.equal(apart[1], side[2])
    assert torch.equal(apart[1], base[1]) and not torch.equal(apart[0], base[0])  # only its rows changed


def test_tenants_sharing_a_step_bring_their_oldest_job_then_more_within_the_shared_bound(setup):
    loop, manager = setup
    tokens = StepJob(make_job(loop, 30, 2, 1.0)).tokens()
    bounds = SchedulerBounds(max_inflight=8, max_batch_tokens=1 << 20, shared_batch_tokens=3 * tokens)
    sched = StepScheduler(loop, manager, bounds)
    flood = [sched.admit(StepJob(make_job(loop, 31 + i, 2, 1.0), tenant="flood")) for i in range(4)]
    assert sched.pick() == flood  # alone, a tenant fills the batch up to max_batch_tokens
    other = sched.admit(StepJob(make_job(loop, 40, 2, 1.0), tenant="other"))
    assert sched.pick() == [flood[0], other, flood[1]]  # each one's oldest, then one more within 3 jobs' tokens
    sched.step()
    sched.run_all()
    assert all(sj.index == 2 for sj in flood + [other])


def test_bounds_per_device_and_an_operators_values():
    cpu = SchedulerBounds.for_device("cpu")
    assert cpu.max_inflight - cpu.reserved == 8  # one tenant's 8 concurrent 256x256 edits share each step...
    assert cpu.max_batch_tokens >= 8 * 2 * (2 * Geometry(256, 256).image_seq_len + 593)  # ...all in one forward
    assert cpu.overridden() == cpu
    assert cpu.overridden(max_inflight=1).reserved == 0  # one at a time: nothing to keep
    assert cpu.overridden(max_inflight=4).reserved == 1 and cpu.overridden(max_inflight=40).reserved == cpu.reserved
    assert cpu.overridden(reserved=0, shared_batch_tokens=99) == SchedulerBounds(
        cpu.max_inflight, cpu.max_batch_tokens, 0, 99)


def test_tenants_round_robin_within_the_token_bound(setup):
    loop, manager = setup
    one = make_job(loop, 30, 2, 1.0)
    tokens = StepJob(one).tokens()
    sched = StepScheduler(loop, manager, SchedulerBounds(max_inflight=8, max_batch_tokens=2 * tokens))
    flood = [sched.admit(StepJob(make_job(loop, 31 + i, 2, 1.0), tenant="flood")) for i in range(4)]
    other = sched.admit(StepJob(make_job(loop, 40, 2, 1.0), tenant="other"))
    first = sched.pick()
    assert len(first) == 2 and other in first  # the token bound holds, and the other tenant is not starved
    sched.run_all()
    assert all(sj.index == 2 for sj in flood + [other])


def test_adapter_capacity_holds_with_jobs_in_flight(setup):
    base, _ = setup
    loop = DenoiseLoop(bare_copy(base.transformer), base.vae, base.scheduler)
    manager = AdapterManager(loop.transformer, setup[1].store, capacity=1)
    sched = StepScheduler(loop, manager, SchedulerBounds(max_inflight=8, max_batch_tokens=1 << 20))
    sched.admit(StepJob(make_job(loop, 50, 2, 1.0), adapters=[("ink", 1.0)]))
    assert not sched.has_room([("sun", 1.0)]) and sched.has_room([("ink", 0.3)])
    assert manager.loaded() == ["ink"]
    with pytest.raises(Exception, match="in use"):
        manager.unload("ink")
    sched.run_all()
    assert sched.has_room([("sun", 1.0)]) and manager.unload("ink")


def test_priority_field_routes_to_its_stream_and_unknown_values_are_refused():
    from longcat.api.edit_proto import priority_of
    from longcat.api.keys import Keys
    from longcat.errors import InvalidArgument
    from longcat.v1 import edit_pb2

    assert priority_of(edit_pb2.EditRequest()) == "normal"  # the default
    assert priority_of(edit_pb2.EditRequest(priority=edit_pb2.PRIORITY_HIGH)) == "high"
    assert [Keys("x").edit_stream_for(p) for p in ("high", "normal", "low")] == Keys("x").edit_streams == [
        "x:edit:stream:high", "x:edit:stream", "x:edit:stream:low"]
    with pytest.raises(InvalidArgument) as err:
        priority_of(edit_pb2.EditRequest(priority=7))
    assert err.value.field == "priority"
