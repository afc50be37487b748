"""The denoiser service spanning 2 ranks (as under torchrun, gloo on CPU): rank 0 serves gRPC, rank 1 follows.
A Denoise call equals one process within 1e-4 (fp32), and stopping rank 0 releases rank 1 (no hang)."""

from __future__ import annotations

import signal

import pytest
import torch

from longcat.engine.denoise import DenoiseLoop
from longcat.launch import ServiceProcess
from longcat.rpc.channel import make_channel
from longcat.rpc.codec import from_proto, to_proto
from longcat.v1 import denoiser_pb2, denoiser_pb2_grpc
from tests.parallel_ranks import free_port, make_job

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("layout", ["cfg=2"])
def test_a_two_rank_denoiser_serves_what_one_process_computes(layout, tiny_model_path, tiny_components, tmp_path):
    port = free_port()
    ranks = []
    for rank in range(2):
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "RANK": str(rank),
               "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1"}
        ranks.append(ServiceProcess("denoiser", ["--model", tiny_model_path, "--device", "cpu", "--parallel", layout],
                                    tmp_path, env=env))
    leader, follower = ranks
    try:
        leader.wait_serving(240)
        job = make_job(tiny_components.transformer)
        req = denoiser_pb2.DenoiseRequest(
            prompt_embeds=to_proto(job.prompt_embeds), negative_embeds=to_proto(job.negative_embeds),
            reference_latents=to_proto(job.reference_latents), width=job.geometry.width,
            height=job.geometry.height, num_inference_steps=job.steps, guidance_scale=job.guidance_scale,
            seed=job.seed, return_latents=True)
        with make_channel(leader.address) as channel:
            events = list(denoiser_pb2_grpc.DenoiserStub(channel).Denoise(req, timeout=120))
        served = from_proto(events[-1].result.latents, "latents")
        c = tiny_components
        alone = DenoiseLoop(c.transformer, c.vae, c.scheduler, cfg_batch=False).run(job)
        torch.testing.assert_close(served, alone, rtol=0, atol=1e-4)
        assert follower.proc.poll() is None  # still following
    finally:
        leader.stop(signal.SIGTERM, timeout=60)
        try:
            follower.proc.wait(60)  # released by the leader's shutdown
        finally:
            code = follower.stop(signal.SIGKILL, timeout=10)
    assert code == 0, f"the follower did not exit cleanly ({code}):\n{follower.log()[-2000:]}"
