"""One denoiser across N devices: CFG-parallel and Ulysses sequence parallelism over ``torch.distributed``.

Why these pieces (evaluated on the tiny model, CPU + gloo, 2 ranks; see ``tests/test_parallel.py``):

* **Ulysses** is diffusers' own context parallelism (``ContextParallelConfig`` + ``apply_context_parallel``).
  LongCat has no ``_cp_plan`` in diffusers 0.42, but its forward takes the same inputs as Flux's
  (``hidden_states``, ``encoder_hidden_states``, ``img_ids``, ``txt_ids``) and its attention processor already
  carries ``_parallel_config``, so Flux's plan applies unchanged (:data:`LONGCAT_CP_PLAN`): each rank holds a
  slice of the text and image tokens, the all-to-all swaps to full sequence / partial heads inside attention.
  ``ulysses_anything`` lets the prompt length be any number (it is not padded). On CUDA we call
  ``transformer.enable_parallelism``; on CPU that helper divides by the accelerator count (zero), so
  :func:`enable_sequence_parallel` performs its same three steps (mesh, processors, hooks) itself.
* **Ring attention** through diffusers needs an attention backend that returns the log-sum-exp (flash,
  cuDNN): not torch's native SDPA, so it cannot run on CPU here. It is available on GPUs as
  ``ring_degree`` (same code path), untested in CI.
* **CFG-parallel** is ours (a dozen lines): diffusers' parallel configs split one forward, not the two CFG
  branches. With ``cfg`` ranks = 2, rank 0 computes the conditional forward and rank 1 the unconditional one,
  then one ``all_gather`` shares the velocities.
* xDiT / cache-dit were not taken: another runtime around the model, not needed for these two splits.

Serving: rank 0 is the denoiser service; the other ranks run :func:`follow`, receiving each job from rank 0 by
broadcast and running the same loop in lockstep. Every step all ranks agree whether to continue, so a cancel,
deadline or lost claim on rank 0 stops the followers too (nobody waits forever in a collective).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from longcat.errors import Cancelled, InvalidArgument

log = logging.getLogger(__name__)


def _cp_plan():
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "encoder_hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
            "img_ids": ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
            "txt_ids": ContextParallelInput(split_dim=0, expected_dims=2, split_output=False),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


@dataclass(frozen=True)
class ParallelLayout:
    """How the world's ranks split the work: ``cfg`` (1 or 2) x ``ulysses`` ranks."""

    cfg: int = 1
    ulysses: int = 1

    @property
    def world_size(self) -> int:
        return self.cfg * self.ulysses

    @classmethod
    def parse(cls, text: str, world_size: int) -> "ParallelLayout":
        """``"cfg=2,ulysses=2"``; ``"auto"`` = CFG-parallel first (no attention traffic), then Ulysses."""
        if text in ("", "auto"):
            cfg = 2 if world_size % 2 == 0 else 1
            return cls(cfg=cfg, ulysses=world_size // cfg)
        parts = {}
        for item in text.split(","):
            key, _, value = item.partition("=")
            if key not in ("cfg", "ulysses") or not value.isdigit() or int(value) < 1:
                raise InvalidArgument(f"{item!r} is not cfg=N or ulysses=N", "parallel")
            parts[key] = int(value)
        layout = cls(**parts)
        if layout.cfg > 2:
            raise InvalidArgument("cfg splits the two CFG branches: 1 or 2", "parallel")
        if layout.world_size != world_size:
            raise InvalidArgument(f"cfg x ulysses = {layout.world_size}, but there are {world_size} ranks",
                                  "parallel")
        return layout


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group torchrun (or a test) described in the environment; (rank, world size)."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        dist.init_process_group(backend)
    rank = dist.get_rank()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    return rank, dist.get_world_size()


class Parallel:
    """The distributed side of one :class:`~longcat.engine.denoise.DenoiseLoop` (set as ``loop.parallel``)."""

    def __init__(self, transformer, layout: ParallelLayout):
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised (use init_from_env)")
        if layout.world_size != dist.get_world_size():
            raise InvalidArgument(f"layout needs {layout.world_size} ranks, world has {dist.get_world_size()}",
                                  "parallel")
        self.layout = layout
        self.rank = dist.get_rank()
        self.device = _comm_device(transformer)
        device_type = self.device.type
        from torch.distributed.device_mesh import init_device_mesh

        self.mesh = init_device_mesh(device_type, (layout.cfg, 1, layout.ulysses),
                                     mesh_dim_names=("cfg", "ring", "ulysses"))
        self.cfg_group = self.mesh.get_group("cfg") if layout.cfg > 1 else None
        self.cfg_rank = self.mesh.get_local_rank("cfg")
        if layout.ulysses > 1:
            enable_sequence_parallel(transformer, self.mesh["ring", "ulysses"], layout.ulysses)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def cfg_velocities(self, predict, cond: torch.Tensor, negative: torch.Tensor):
        """(v_cond, v_uncond): each CFG rank computes one branch, one all_gather shares them."""
        mine = predict(cond if self.cfg_rank == 0 else negative).contiguous()
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine, group=self.cfg_group)
        return both[0], both[1]

    def agree_continue(self, stop: bool) -> bool:
        """All ranks take the leader's decision to run another step (followers pass False)."""
        flag = torch.tensor([1 if stop else 0], dtype=torch.int32, device=self.device)
        dist.broadcast(flag, src=0)
        return flag.item() == 0

    def share_job(self, job):
        """Leader: send ``job`` to the followers; follower: receive the next one (None = shut down)."""
        box = [_to_cpu(job) if self.is_leader and job is not None else None]
        dist.broadcast_object_list(box, src=0)
        return job if self.is_leader else box[0]


def enable_sequence_parallel(transformer, mesh, ulysses: int) -> None:
    """diffusers' Ulysses context parallelism on LongCat with :data:`LONGCAT_CP_PLAN` (see the module doc)."""
    from diffusers import ContextParallelConfig
    from diffusers.hooks.context_parallel import apply_context_parallel
    from diffusers.models._modeling_parallel import ParallelConfig

    cp = ContextParallelConfig(ulysses_degree=ulysses, ulysses_anything=True, mesh=mesh)
    if torch.cuda.is_available():
        transformer.enable_parallelism(config=cp, cp_plan=_cp_plan())
        return
    # CPU (gloo): enable_parallelism's device lookup divides by the accelerator count; same steps by hand.
    config = ParallelConfig(context_parallel_config=cp)
    config.setup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), mesh=mesh)
    transformer._parallel_config = config
    for module in transformer.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_parallel_config"):
            processor._parallel_config = config
    apply_context_parallel(transformer, cp, _cp_plan())


def follow(loop) -> None:
    """A follower rank's life: run every job the leader shares, in lockstep, until it shares None."""
    parallel = loop.parallel
    while True:
        job = parallel.share_job(None)
        if job is None:
            return
        try:
            loop.run(job)
        except Cancelled:
            pass  # the leader stopped this job; wait for the next
        except Exception:  # noqa: BLE001 - the leader fails the same way and reports it
            log.exception("follower run failed")


def stop_followers(loop) -> None:
    if loop.parallel is not None and loop.parallel.is_leader:
        loop.parallel.share_job(None)


def _comm_device(transformer) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _to_cpu(job):
    import dataclasses

    return dataclasses.replace(job, **{f.name: getattr(job, f.name).cpu() for f in dataclasses.fields(job)
                                       if isinstance(getattr(job, f.name), torch.Tensor)})
