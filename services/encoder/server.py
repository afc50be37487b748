"""Run the encoder service: ``python -m services.encoder`` or ``longcat serve encoder``."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from PIL import Image

from longcat.api.edit import Limits
from longcat.conditioning import PromptEncoder
from longcat.logs import setup_logging
from longcat.models.loading import ENCODER_COMPONENTS, load_components
from longcat.rpc.config import EnvDefaults, ModelServerSettings, add_model_args, add_server_args
from longcat.rpc.metrics import serve_metrics
from longcat.rpc.server import GrpcServer
from longcat.tracing import setup_tracing
from longcat.v1 import encoder_pb2_grpc
from services.encoder.cache import EmbeddingCache
from services.encoder.servicer import SERVICE, EncoderBackend, EncoderServicer

log = logging.getLogger("longcat.encoder")


def build_parser(parser=None):
    p = parser or EnvDefaults(prog="longcat serve encoder", description="The encoder service (Qwen2.5-VL).")
    add_server_args(p, "encoder")
    add_model_args(p)
    p.add_argument("--cache-mb", type=int, default=1024, help="embedding cache size, MiB (0 = off)")
    p.add_argument("--max-connection-age-s", type=float, default=300.0,
                   help="close client connections after this long so callers re-resolve and spread over "
                        "new encoder replicas (0 = never)")
    return p


@dataclass(frozen=True)
class EncoderSettings(ModelServerSettings):
    """The encoder's configuration, typed (see :class:`longcat.rpc.config.ServerSettings`)."""

    cache_mb: int
    max_connection_age_s: float


def warm_up(backend: EncoderBackend) -> None:
    """One real forward before SERVING, so the first user call is not the slow one."""
    backend.encoder.encode("warm up", Image.new("RGB", (32, 32), (128, 128, 128)))


def serve(args: EncoderSettings) -> None:
    setup_logging(args.log_level)
    setup_tracing("longcat-encoder", args.otlp_endpoint)
    serve_metrics(args.metrics_port)
    servicer = EncoderServicer()
    server = GrpcServer([SERVICE], args.host, args.port, args.max_message_mb, args.threads,
                        max_connection_age_s=args.max_connection_age_s)
    encoder_pb2_grpc.add_EncoderServicer_to_server(servicer, server.server)
    server.install_signal_handlers(args.grace_s)
    server.start()  # health answers NOT_SERVING while the model loads
    components = load_components(args.model, ENCODER_COMPONENTS, device=args.device, precision=args.precision)
    servicer.backend = EncoderBackend(
        PromptEncoder(components.tokenizer, components.text_processor.image_processor, components.text_encoder),
        components.fingerprint, Limits(max_pixels=args.max_pixels, max_steps=args.max_steps),
        EmbeddingCache(args.cache_mb * 1024 * 1024, name="encoder_embeddings"))
    warm_up(servicer.backend)
    server.mark_serving()
    server.wait()


def main(argv=None) -> None:
    serve(EncoderSettings.from_args(build_parser().parse_args(argv)))
