"""Run the denoiser service: ``python -m services.denoiser`` or ``longcat serve denoiser``."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from longcat.adapters import AdapterManager, AdapterStore
from longcat.api.edit import Limits
from longcat.api.model_defaults import read_model_defaults
from longcat.blobs.flags import add_blob_args
from longcat.conditioning import Geometry
from longcat.engine.denoise import DenoiseJob, DenoiseLoop
from longcat.engine.quality_gate import PresetGate
from longcat.logs import setup_logging
from longcat.models.loading import DENOISER_COMPONENTS, load_components
from longcat.rpc.config import EnvDefaults, ModelServerSettings, add_model_args, add_server_args
from longcat.rpc.metrics import serve_metrics
from longcat.rpc.server import GrpcServer
from longcat.tracing import setup_tracing
from longcat.v1 import denoiser_pb2_grpc
from services.denoiser.servicer import SERVICE, DenoiserBackend, DenoiserServicer

log = logging.getLogger("longcat.denoiser")


def build_parser(parser=None):
    p = parser or EnvDefaults(prog="longcat serve denoiser",
                              description="The denoiser service (transformer + VAE + scheduler).")
    add_server_args(p, "denoiser")
    add_model_args(p)
    p.add_argument("--adapter-dir", default="~/.cache/longcat/adapters",
                   help="adapter store: NAME/pytorch_lora_weights.safetensors")
    p.add_argument("--adapter-cache", type=int, default=8, help="LoRA adapters kept loaded at once (LRU)")
    p.add_argument("--no-cfg-batch", action="store_true",
                   help="run CFG as two forwards instead of one batch-2 forward (half the activation memory)")
    p.add_argument("--speed", choices=("auto", "off"), default="auto",
                   help="speed levers: the device's defaults (longcat/engine/levers.py; with adapters served, "
                        "compile and fused QKV stay off) or none")
    p.add_argument("--vae-tiling", action="store_true", help="decode in tiles (less memory for large outputs)")
    p.add_argument("--group-offload", action="store_true",
                   help="keep transformer blocks in CPU memory, stream them to the GPU (fits small GPUs, slower)")
    p.add_argument("--parallel", default="auto",
                   help="under torchrun with N ranks: how they split each denoise, e.g. cfg=2,ulysses=2 "
                        "('auto' = CFG-parallel, then Ulysses); rank 0 serves, the others follow")
    p.add_argument("--quality-record", default="",
                   help="JSON from `longcat quality` for this model: speed presets serve only where recorded")
    p.add_argument("--min-psnr-db", type=float, default=30.0,
                   help="refuse a speed preset whose recorded PSNR against exact is below this")
    p.add_argument("--redis-url", default="", help="consume edit jobs from this Redis ('' = gRPC only)")
    p.add_argument("--namespace", default="lc", help="Redis key prefix (as the gateway's)")
    p.add_argument("--encoder", default="127.0.0.1:50061", help="encoder service address for edit jobs")
    p.add_argument("--heartbeat-timeout-s", type=float, default=6.0,
                   help="a job whose worker is silent this long is taken over by another worker (beats every "
                        "fifth of it; a crashed worker's job continues elsewhere within about this long)")
    p.add_argument("--worker-id", default="",
                   help="this worker's consumer name, stable across restarts so a restarted worker resumes its "
                        "own pending jobs at once ('' = POD_NAME, else host-port); unique per live worker")
    p.add_argument("--max-attempts", type=int, default=3, help="deliveries before a job is FAILED (dead letter)")
    p.add_argument("--encoder-timeout-s", type=float, default=60.0,
                   help="how long a job waits for the encoder (also while it restarts) before the attempt fails")
    p.add_argument("--max-inflight", type=int, default=0,
                   help="edit jobs denoised at once by the step scheduler (0 = the device's default: 10 on CPU)")
    p.add_argument("--max-batch-tokens", type=int, default=0,
                   help="tokens (rows x sequence) in one batched forward (0 = the device's default)")
    p.add_argument("--reserved-slots", type=int, default=-1,
                   help="in-flight slots kept for HIGH jobs and tenants with nothing in flight "
                        "(-1 = the device's default: 2 on CPU, a quarter on GPU)")
    p.add_argument("--shared-batch-tokens", type=int, default=0,
                   help="when tenants share a step: tokens beyond each tenant's oldest job (0 = the device's "
                        "default: about two 256x256 jobs on CPU, --max-batch-tokens on GPU)")
    p.add_argument("--lookahead", type=int, default=0,
                   help="queue entries held waiting, to choose by priority and tenant (0 = 2 x max-inflight)")
    p.add_argument("--result-ttl-s", type=int, default=3600, help="how long finished jobs and results are kept")
    add_blob_args(p)
    return p


@dataclasses.dataclass(frozen=True)
class DenoiserSettings(ModelServerSettings):
    """The denoiser's configuration, typed (see :class:`longcat.rpc.config.ServerSettings`)."""

    adapter_dir: str
    adapter_cache: int
    no_cfg_batch: bool
    speed: str
    vae_tiling: bool
    group_offload: bool
    parallel: str
    quality_record: str
    min_psnr_db: float
    redis_url: str
    namespace: str
    encoder: str
    heartbeat_timeout_s: float
    worker_id: str
    max_attempts: int
    encoder_timeout_s: float
    result_ttl_s: int
    max_inflight: int
    max_batch_tokens: int
    reserved_slots: int
    shared_batch_tokens: int
    lookahead: int
    blob_dir: str


def warm_up(backend: DenoiserBackend) -> None:
    """One real step and decode at the smallest size before SERVING."""
    g = Geometry(width=64, height=64)
    loop = backend.loop
    embeds = torch.zeros(1, 8, backend.embed_dim, dtype=loop.dtype, device=loop.device)
    reference = torch.zeros(1, g.image_seq_len, 64, dtype=loop.dtype, device=loop.device)
    loop.decode(loop.run(DenoiseJob(embeds, embeds, reference, g, 1, 2.0, 0)), g)


def build_backend(args: DenoiserSettings) -> DenoiserBackend:
    from longcat.engine.levers import SpeedConfig, apply_speed_config

    components = load_components(args.model, DENOISER_COMPONENTS, device=args.device, precision=args.precision)
    speed = SpeedConfig.for_device(components.device, adapters=True) if args.speed == "auto" else SpeedConfig()
    speed = speed.replace(cfg_batch=speed.cfg_batch and not args.no_cfg_batch, vae_tiling=args.vae_tiling,
                          group_offload=args.group_offload)
    applied = apply_speed_config(components, speed)
    log.info("speed levers", extra={"levers": applied.applied, "notes": applied.notes})
    root = Path(os.path.expanduser(args.adapter_dir))
    root.mkdir(parents=True, exist_ok=True)
    return DenoiserBackend(
        loop=DenoiseLoop(components.transformer, components.vae, components.scheduler,
                         cfg_batch=speed.cfg_batch),
        adapters=AdapterManager(components.transformer, AdapterStore(root), capacity=args.adapter_cache),
        limits=Limits(max_pixels=args.max_pixels, max_steps=args.max_steps),
        adapter_root=root,
        defaults=read_model_defaults(components.model_path),
        gate=PresetGate.from_file(args.quality_record or None, components.transformer, args.min_psnr_db),
    )


def join_ranks(args: DenoiserSettings) -> tuple[DenoiserSettings, int, int]:
    """Under torchrun (WORLD_SIZE > 1): join the process group; (settings on this rank's device, rank, world).
    One process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return args, 0, 1
    from longcat.engine.parallel import init_from_env

    rank, world = init_from_env()
    if args.device in (None, "", "auto", "cuda") and torch.cuda.is_available():
        args = dataclasses.replace(args, device=f"cuda:{torch.cuda.current_device()}")
    return args, rank, world


def attach_parallel(args: DenoiserSettings, backend: DenoiserBackend, world: int) -> None:
    from longcat.engine.parallel import Parallel, ParallelLayout

    layout = ParallelLayout.parse(args.parallel, world)
    backend.loop.parallel = Parallel(backend.loop.transformer, layout)
    log.info("denoiser spans ranks", extra={"world": world, "cfg": layout.cfg, "ulysses": layout.ulysses})


def serve(args: DenoiserSettings) -> None:
    setup_logging(args.log_level)
    setup_tracing("longcat-denoiser", args.otlp_endpoint)
    args, rank, world = join_ranks(args)
    if rank != 0:  # a follower: no server, runs what rank 0 shares until it shuts down
        from longcat.engine.parallel import follow

        backend = build_backend(args)
        attach_parallel(args, backend, world)
        follow(backend.loop)
        return
    serve_metrics(args.metrics_port)
    servicer = DenoiserServicer()
    server = GrpcServer([SERVICE], args.host, args.port, args.max_message_mb, args.threads)
    denoiser_pb2_grpc.add_DenoiserServicer_to_server(servicer, server.server)
    workers = []
    # On SIGTERM the worker stops taking jobs at once; gRPC calls and the job in hand get the grace period.
    server.install_signal_handlers(args.grace_s, on_signal=lambda: [w.stop() for w in workers])
    server.start()  # health answers NOT_SERVING while the model loads
    backend = build_backend(args)
    if world > 1:
        attach_parallel(args, backend, world)
    warm_up(backend)
    servicer.backend = backend
    if args.redis_url:
        workers.append(start_worker(args, backend))
    server.mark_serving()
    server.wait()
    for worker in workers:
        worker.idle.wait(args.grace_s)  # finish the job in hand; past the grace it is reclaimed elsewhere
    if world > 1:
        from longcat.engine.parallel import stop_followers

        stop_followers(backend.loop)


def start_worker(args: DenoiserSettings, backend: DenoiserBackend):
    import threading

    from longcat.api.keys import Keys
    from longcat.blobs import open_blob_store
    from longcat.engine.step_scheduler import SchedulerBounds
    from longcat.jobs.connection import connect
    from longcat.jobs.store import JobStore
    from longcat.redact import redact_url
    from longcat.rpc.encoder_client import EncoderClient
    from services.denoiser.worker import EditWorker

    store = JobStore(connect(args.redis_url), Keys(args.namespace), result_ttl_s=args.result_ttl_s,
                     blobs=open_blob_store(args.blob_dir))
    bounds = SchedulerBounds.for_device(backend.loop.device).overridden(
        args.max_inflight, args.max_batch_tokens, args.reserved_slots, args.shared_batch_tokens)
    worker = EditWorker(store, backend, EncoderClient(args.encoder), heartbeat_timeout_s=args.heartbeat_timeout_s,
                        max_attempts=args.max_attempts, encoder_timeout_s=args.encoder_timeout_s, bounds=bounds,
                        lookahead=args.lookahead, name=worker_id(args))
    threading.Thread(target=worker.run_forever, name="edit-worker", daemon=True).start()
    log.info("consuming edit jobs", extra={"redis": redact_url(args.redis_url), "namespace": args.namespace})
    return worker


def worker_id(args: DenoiserSettings) -> str:
    """Stable across restarts of this worker: the flag, the pod's name, or host and gRPC port."""
    import socket

    return args.worker_id or os.environ.get("POD_NAME", "") or f"{socket.gethostname()}-{args.port}"


def main(argv=None) -> None:
    serve(DenoiserSettings.from_args(build_parser().parse_args(argv)))
