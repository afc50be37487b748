"""Run a trainer: ``python -m services.trainer`` or ``longcat serve trainer``.

One process: a Celery worker (threads pool, one job at a time) consuming ``longcat.training``, the reaper
that re-dispatches jobs of dead workers, and a small gRPC face (health + ``longcat.v1.Trainer``).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from longcat.adapters import AdapterStore
from longcat.adapters.registry import AdapterRegistry
from longcat.api.keys import Keys
from longcat.api.training import Roots
from longcat.blobs import open_blob_store
from longcat.blobs.flags import add_blob_args
from longcat.jobs.celery_app import QUEUE, TASK, make_app, waiting_job_ids
from longcat.jobs.connection import connect
from longcat.jobs.store import JobStore
from longcat.logs import setup_logging
from longcat.redact import redact_url
from longcat.rpc.config import EnvDefaults, ServerSettings, add_server_args
from longcat.rpc.handler import rpc_method
from longcat.rpc.metrics import serve_metrics
from longcat.rpc.server import GrpcServer
from longcat.tracing import setup_tracing
from longcat.v1 import trainer_pb2, trainer_pb2_grpc
from services.trainer import celery_logs
from services.trainer.reaper import run_reaper, take_back_own_jobs
from services.trainer.runner import TrainerContext, run_training_job

log = logging.getLogger("longcat.trainer")
SERVICE = "longcat.v1.Trainer"


def build_parser(parser=None):
    p = parser or EnvDefaults(prog="longcat serve trainer", description="A LoRA training worker (Celery).")
    add_server_args(p, "trainer")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="Celery broker and job store")
    p.add_argument("--namespace", default="lc", help="Redis key prefix (as the gateway's)")
    p.add_argument("--model", default="tiny", help="model trained on by default (a job's config may name another)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--precision", default="", help="override every job's base_model_precision ('' = the job's)")
    p.add_argument("--adapter-dir", default="~/.cache/longcat/adapters", help="where trained adapters are published")
    p.add_argument("--data-root", default="~/.cache/longcat/data", help="datasets and their caches live inside")
    p.add_argument("--output-root", default="~/.cache/longcat/outputs", help="training outputs live inside")
    p.add_argument("--encoder", default="127.0.0.1:50061",
                   help="encoder service for jobs with embeddings_source=encoder_service")
    p.add_argument("--lease-ttl-s", type=float, default=4.0,
                   help="a job whose worker is silent this long is dispatched again (resuming); renewed every "
                        "third of it")
    p.add_argument("--max-attempts", type=int, default=3, help="deliveries before a training job is FAILED")
    p.add_argument("--reaper-period-s", type=float, default=1.0, help="how often dead workers' jobs are looked for")
    p.add_argument("--worker-id", default="",
                   help="this trainer's name, stable across restarts: a restarted trainer takes back the jobs its "
                        "previous run held at once, without waiting for their leases to expire ('' = POD_NAME, "
                        "else host-port); unique per live trainer")
    p.add_argument("--checkpoint-every-s", type=float, default=0.0,
                   help="also checkpoint a running job whenever this many seconds passed since its last "
                        "checkpoint (bounds what a kill re-runs whatever the job's checkpointing_steps; 0 = the "
                        "job's checkpointing_steps only)")
    p.add_argument("--result-ttl-s", type=int, default=7 * 86400, help="how long finished jobs are kept")
    add_blob_args(p)  # validation and result images of its events
    return p


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, ctx: TrainerContext):
        self.ctx = ctx

    @rpc_method(SERVICE)
    def GetTrainerStatus(self, request, context):
        return trainer_pb2.TrainerStatus(running_job_ids=list(self.ctx.running), workers=1, model=self.ctx.model)


@dataclass(frozen=True)
class TrainerSettings(ServerSettings):
    """The trainer's configuration, typed (see :class:`longcat.rpc.config.ServerSettings`)."""

    redis_url: str
    namespace: str
    model: str
    device: str
    precision: str
    adapter_dir: str
    data_root: str
    output_root: str
    encoder: str
    lease_ttl_s: float
    max_attempts: int
    reaper_period_s: float
    worker_id: str
    checkpoint_every_s: float
    result_ttl_s: int
    blob_dir: str


def build_context(args: TrainerSettings) -> TrainerContext:
    client = connect(args.redis_url)
    keys = Keys(args.namespace)
    store = JobStore(client, keys, result_ttl_s=args.result_ttl_s, blobs=open_blob_store(args.blob_dir))
    registry = AdapterRegistry(client, AdapterStore(os.path.expanduser(args.adapter_dir)), keys)
    return TrainerContext(store=store, registry=registry,
                          roots=Roots.make(args.data_root, args.output_root),
                          model=args.model, device=None if args.device == "auto" else args.device,
                          precision=args.precision or None, encoder=args.encoder, lease_ttl_s=args.lease_ttl_s,
                          max_attempts=args.max_attempts, consumer=trainer_id(args),
                          checkpoint_every_s=args.checkpoint_every_s)


def trainer_id(args: TrainerSettings) -> str:
    """Stable across restarts of this trainer: the flag, the pod's name, or host and gRPC port."""
    import socket

    return args.worker_id or os.environ.get("POD_NAME", "") or f"{socket.gethostname()}-{args.port}"


def serve(args: TrainerSettings) -> None:
    setup_logging(args.log_level)
    setup_tracing("longcat-trainer", args.otlp_endpoint)
    serve_metrics(args.metrics_port)
    ctx = build_context(args)
    app = make_app(args.redis_url)
    celery_logs.install(ctx.store)  # Celery's own per-task lines name the job and tenant

    @app.task(name=TASK, bind=True)
    def train(task, job_id: str) -> str:
        return run_training_job(ctx, job_id)

    def dispatch(job_id: str) -> None:
        app.send_task(TASK, args=[job_id], queue=QUEUE)

    from celery.signals import worker_shutting_down

    @worker_shutting_down.connect(weak=False)
    def pause_running_job(**_):
        # Warm shutdown (SIGTERM, e.g. a scale-down): the running job checkpoints at its next step and is
        # handed to another worker, instead of holding this one until the pod is killed.
        ctx.shutting_down.set()

    server = GrpcServer([SERVICE], args.host, args.port, args.max_message_mb, args.threads)
    trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(ctx), server.server)
    server.start()
    stop = threading.Event()
    take_back_own_jobs(ctx.store, ctx.consumer, dispatch)  # what this trainer held before a crash, at once
    # A queued job that no broker message carries (lost in a failover) is dispatched again after this grace.
    grace_s = 2 * max(args.lease_ttl_s, args.reaper_period_s)
    threading.Thread(target=run_reaper, args=(ctx.store, dispatch, stop, args.reaper_period_s,
                                              lambda: waiting_job_ids(ctx.store.r), grace_s), daemon=True).start()
    server.mark_serving()
    log.info("trainer up", extra={"queue": QUEUE, "redis": redact_url(args.redis_url)})
    # Celery's own warm shutdown on SIGTERM: it stops taking jobs; the running one pauses at a checkpoint.
    try:
        # --quiet: no banner; our own "trainer up" line above says what a person needs.
        app.worker_main(["--quiet", "worker", "--loglevel", args.log_level, "--queues", QUEUE, "--concurrency", "1",
                         "--pool", "threads", "--without-gossip", "--without-mingle", "--hostname",
                         f"trainer-{os.getpid()}@%h"])
    finally:
        stop.set()
        server.stop(0)


def main(argv=None) -> None:
    serve(TrainerSettings.from_args(build_parser().parse_args(argv)))
