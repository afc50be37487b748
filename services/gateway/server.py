"""Run the gateway: ``python -m services.gateway`` or ``longcat serve gateway``. It never loads a model
(at most the tokenizer, to refuse over-long prompts before they are queued)."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from longcat.adapters.check import ModelShapes
from longcat.adapters.registry import AdapterRegistry
from longcat.adapters.store import AdapterStore
from longcat.api.bounds import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_INPUT_PIXELS, DEFAULT_MAX_PROMPT_CHARS
from longcat.api.edit import Limits
from longcat.api.keys import Keys
from longcat.api.prompts import load_prompt_tokenizer
from longcat.api.training import Roots
from longcat.blobs import open_blob_store, start_sweeper
from longcat.blobs.flags import add_blob_args
from longcat.errors import LongCatError
from longcat.jobs.connection import REDIS_ERRORS, connect
from longcat.jobs.store import JobStore
from longcat.logs import setup_logging
from longcat.redact import redact_url
from longcat.rpc.config import EnvDefaults, ServerSettings, add_server_args
from longcat.rpc.metrics import serve_metrics
from longcat.tracing import setup_tracing
from services.gateway.aio_main import serve_grpc
from services.gateway.auth import ApiKeys
from services.gateway.core import GatewayConfig, GatewayCore
from services.gateway.hub import EventHub
from services.gateway.webhooks import Webhooks

log = logging.getLogger("longcat.gateway")


def add_stack_args(p) -> None:
    """Flags every service that talks to Redis shares."""
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0",
                   help="Redis for jobs and events: redis://[:pw@]host:port/db, or through Sentinels "
                        "redis+sentinel://[:pw@]host:26379,host2:26379/MASTER/db (follows a failover)")
    p.add_argument("--namespace", default="lc", help="Redis key prefix (several stacks can share one Redis)")
    p.add_argument("--adapter-dir", default="~/.cache/longcat/adapters", help="the shared adapter store folder")
    p.add_argument("--result-ttl-s", type=int, default=3600, help="how long finished jobs and results are kept")
    p.add_argument("--durable-ack-replicas", type=int, default=0,
                   help="acknowledge a submission only once this many Redis replicas have it (WAIT), else "
                        "UNAVAILABLE; 0 = once the primary has it (fast; a failover can lose the last writes)")
    p.add_argument("--durable-ack-timeout-ms", type=int, default=1000,
                   help="how long a submission waits for the replicas (with --durable-ack-replicas)")


def durability(args) -> dict:
    """The JobStore's durable-acknowledgement settings from the shared flags."""
    return {"durable_replicas": max(0, args.durable_ack_replicas), "durable_timeout_ms": args.durable_ack_timeout_ms}


def build_parser(parser=None):
    p = parser or EnvDefaults(prog="longcat serve gateway", description="The public gateway.")
    # Threads for short calls (Redis round trips, uploads); waiting calls (WatchJob, Edit, SSE) hold none.
    add_server_args(p, "gateway", threads=64)
    add_stack_args(p)
    p.add_argument("--model", default="", help="load this model's tokenizer to check prompt lengths ('' = skip)")
    p.add_argument("--api-keys-file", default="", help="API keys: JSON {key: owner} or lines owner:key "
                                                       "(also LONGCAT_API_KEYS=owner:key,...); none = auth off")
    p.add_argument("--admin-owners", default="",
                   help="owners (from the API keys) who administer every tenant's adapters, comma-separated")
    p.add_argument("--max-queue", type=int, default=1000, help="edit jobs waiting before RESOURCE_EXHAUSTED")
    p.add_argument("--max-active-per-tenant", type=int, default=250,
                   help="queued + running edit jobs one API key owner may have (with API keys on; --max-queue "
                        "still bounds them all); 0 = no per-tenant limit")
    p.add_argument("--max-training-per-tenant", type=int, default=10,
                   help="queued + running training jobs one API key owner may have; 0 = no per-tenant limit")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048, help="largest output (width x height)")
    p.add_argument("--max-steps", type=int, default=200, help="most denoising steps a request may ask for")
    p.add_argument("--max-prompt-chars", type=int, default=DEFAULT_MAX_PROMPT_CHARS,
                   help="longest prompt / negative prompt, characters (checked before tokenizing)")
    p.add_argument("--max-image-mb", type=int, default=DEFAULT_MAX_IMAGE_BYTES >> 20,
                   help="largest reference image, MiB (encoded)")
    p.add_argument("--max-input-pixels", type=int, default=DEFAULT_MAX_INPUT_PIXELS,
                   help="largest reference image, pixels (read from its header before decoding)")
    p.add_argument("--data-root", default="~/.cache/longcat/data",
                   help="datasets (and their caches) of training jobs must lie inside (shared with trainers)")
    p.add_argument("--output-root", default="~/.cache/longcat/outputs", help="training outputs must lie inside")
    p.add_argument("--max-upload-mb", type=int, default=4096, help="largest UploadDataset archive, MiB")
    p.add_argument("--max-adapter-mb", type=int, default=2048, help="largest uploaded LoRA file, MiB")
    p.add_argument("--http-port", type=int, default=8080,
                   help="HTTP port (OpenAI-compatible /v1/images/edits, REST jobs, /docs) on --host; 0 = off")
    add_blob_args(p)
    p.add_argument("--blob-ttl-s", type=int, default=7 * 86400,
                   help="how long a queued edit's reference image is kept; a job still queued after that fails "
                        "naming it (its result is kept --result-ttl-s)")
    p.add_argument("--blob-sweep-s", type=float, default=60.0,
                   help="how often expired blobs are removed from --blob-dir (0 = never, another sweeper runs)")
    p.add_argument("--hub-readers", type=int, default=4,
                   help="Redis connections that read job events for all watchers (WatchJob, blocking edits, SSE)")
    p.add_argument("--callback-hosts", default="",
                   help="webhook allow-list: hosts (or host:port) callback_url may name, comma-separated; "
                        "empty = callback URLs refused")
    return p


@dataclass(frozen=True)
class GatewaySettings(ServerSettings):
    """The gateway's configuration, typed (see :class:`ServerSettings`)."""

    redis_url: str
    namespace: str
    durable_ack_replicas: int
    durable_ack_timeout_ms: int
    adapter_dir: str
    result_ttl_s: int
    model: str
    api_keys_file: str
    admin_owners: str
    max_queue: int
    max_active_per_tenant: int
    max_training_per_tenant: int
    max_pixels: int
    max_steps: int
    max_prompt_chars: int
    max_image_mb: int
    max_input_pixels: int
    data_root: str
    output_root: str
    max_upload_mb: int
    max_adapter_mb: int
    http_port: int
    callback_hosts: str
    blob_dir: str
    blob_ttl_s: int
    blob_sweep_s: float
    hub_readers: int


def training_dispatch(redis_url: str):
    """job_id -> a Celery task for the trainers; None when Celery (the [train] extra) is not installed: the
    gateway then serves edits and adapters, and refuses training jobs before queueing them."""
    from longcat.jobs.celery_app import QUEUE, TASK, make_app

    try:
        celery = make_app(redis_url)
    except ImportError:
        log.warning("celery is not installed (pip install 'longcat-edit-stack[train]'): training jobs are refused")
        return None

    def dispatch(job_id: str) -> None:
        celery.send_task(TASK, args=[job_id], queue=QUEUE)

    return dispatch


def serve(args: GatewaySettings) -> None:
    import os

    setup_logging(args.log_level)
    setup_tracing("longcat-gateway", args.otlp_endpoint)
    serve_metrics(args.metrics_port)
    # Each thread that may call Redis at once (gRPC calls, HTTP calls, the event hub) may hold a connection.
    client = connect(args.redis_url, max_connections=2 * args.threads + args.hub_readers + EventHub.THREADS + 32)
    keys = Keys(args.namespace)
    blobs = open_blob_store(args.blob_dir)  # reference images and results; Redis keeps references
    store = JobStore(client, keys, result_ttl_s=args.result_ttl_s, blobs=blobs, **durability(args))
    auth = ApiKeys.load(args.api_keys_file or None, admins=args.admin_owners)
    # The model's tokenizer.json through `tokenizers` (no transformers, no torch): the same ids as the encoder.
    tokenizer = load_prompt_tokenizer(args.model) if args.model else None
    # The transformer's linear layers from its safetensors headers: uploaded LoRAs are checked against them.
    shapes = None
    if args.model:
        try:
            shapes = ModelShapes.from_model(args.model)
        except LongCatError as exc:  # a hub id, say: serve anyway, refuse uploads with a clear message
            log.warning("adapter uploads are off: no local transformer weights to check them against",
                        extra={"model": args.model, "error": str(exc)})
    limits = Limits(max_pixels=args.max_pixels, max_steps=args.max_steps, max_prompt_chars=args.max_prompt_chars,
                    max_image_bytes=args.max_image_mb << 20, max_input_pixels=args.max_input_pixels)
    registry = AdapterRegistry(client, AdapterStore(os.path.expanduser(args.adapter_dir)), keys)

    roots = Roots.make(args.data_root, args.output_root, per_owner=auth.enabled)
    dispatch = training_dispatch(args.redis_url)

    core = GatewayCore(store, GatewayConfig(limits, max_queue=args.max_queue,
                                            max_active_per_tenant=args.max_active_per_tenant,
                                            max_training_per_tenant=args.max_training_per_tenant,
                                            max_upload_bytes=args.max_upload_mb * 1024 * 1024,
                                            max_adapter_bytes=args.max_adapter_mb * 1024 * 1024,
                                            reference_ttl_s=args.blob_ttl_s),
                       roots=roots, dispatch=dispatch, registry=registry, tokenizer=tokenizer, model_shapes=shapes,
                       webhooks=Webhooks.from_flag(store, args.callback_hosts))
    log.info("gateway up", extra={"auth": "on" if auth.enabled else "off", "redis": redact_url(args.redis_url),
                                  "http_port": args.http_port})
    # gRPC on an asyncio server; every watcher (gRPC, HTTP) multiplexed over the event hub's few Redis reads.
    hub = EventHub(store, readers=args.hub_readers, threads=EventHub.THREADS)

    def start_rest(stopping: threading.Event):  # once gRPC listens: the blob sweeper and the HTTP door
        start_sweeper(blobs, args.blob_sweep_s, stopping)
        return start_http(core, auth, client, args, stopping, hub)

    asyncio.run(serve_grpc(core, auth, client, args, hub, start_rest))


def start_http(core: GatewayCore, auth: ApiKeys, client, args: GatewaySettings, stopping: threading.Event,
               hub=None):
    """The HTTP door on ``--http-port`` (0: none), over the same core as the gRPC servicers."""
    if not args.http_port:
        return None
    from services.gateway.http.app import create_app
    from services.gateway.http.server import HttpServer

    def ready() -> bool:
        if stopping.is_set():
            return False
        try:
            return bool(client.ping())
        except REDIS_ERRORS:
            return False

    # An edit's body is one reference image plus form fields: over that, 413 from Content-Length, unread.
    edit_body = (args.max_image_mb + 1) << 20
    app = create_app(core, auth, ready=ready, max_request_bytes=min(args.max_message_mb << 20, edit_body), hub=hub)
    return HttpServer(app, args.host, args.http_port, threads=args.threads, grace_s=args.grace_s).start()


def main(argv=None) -> None:
    serve(GatewaySettings.from_args(build_parser().parse_args(argv)))
