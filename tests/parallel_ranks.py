"""Rank processes for tests/test_parallel.py: N gloo ranks on loopback running one denoiser in lockstep."""

from __future__ import annotations

import os
import socket
import traceback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_job(transformer, steps: int = 4, text_len: int = 15, side: int = 64, guidance: float = 4.5,
             preset: str = "exact"):
    """Deterministic inputs; an odd prompt length on purpose (Ulysses must not need divisible lengths)."""
    import torch

    from longcat.conditioning import Geometry
    from longcat.engine.denoise import DenoiseJob

    g = torch.Generator().manual_seed(0)
    geometry = Geometry(width=side, height=side)
    dim = transformer.config.joint_attention_dim
    return DenoiseJob(torch.randn(1, text_len, dim, generator=g), torch.randn(1, text_len, dim, generator=g),
                      torch.randn(1, geometry.image_seq_len, 64, generator=g), geometry, steps, guidance, 9, preset)


def rank_main(rank: int, world: int, port: int, layout_text: str, model_path: str, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch.distributed as dist

    try:
        from longcat.engine.denoise import DenoiseLoop
        from longcat.engine.parallel import Parallel, ParallelLayout, follow, init_from_env, stop_followers
        from longcat.errors import Cancelled
        from longcat.models.loading import DENOISER_COMPONENTS, load_components

        init_from_env("gloo")
        c = load_components(model_path, DENOISER_COMPONENTS, device="cpu", precision="fp32")
        loop = DenoiseLoop(c.transformer, c.vae, c.scheduler, cfg_batch=False)
        loop.parallel = Parallel(c.transformer, ParallelLayout.parse(layout_text, world))
        if rank != 0:
            follow(loop)
            results.put((rank, "followed", None))
        else:
            # 1. A job the leader abandons after step 2 (a cancel, a lost claim): the followers must stop too.
            def abandon(ev):
                if ev.step == 2:
                    raise Cancelled("abandoned")
            try:
                loop.run(make_job(c.transformer), on_step=abandon)
            except Cancelled:
                pass
            # 2. Then real jobs, which the followers still serve: CFG, and no CFG.
            out = loop.run(make_job(c.transformer)).numpy().copy()
            no_cfg = loop.run(make_job(c.transformer, guidance=1.0)).numpy().copy()
            stop_followers(loop)
            results.put((rank, "ok", (out, no_cfg)))
    except BaseException:  # noqa: BLE001 - reported to the test
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
