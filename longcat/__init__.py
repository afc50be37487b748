"""LongCat Edit Stack: the shared package (model loading, conditioning, engine, adapters, codec, config).

Every service (encoder, denoiser, trainer, gateway) and the CLI import from here; nothing is copied.
"""

from longcat.quiet import quiet_environment as _quiet_environment

__version__ = "0.1.0"

_quiet_environment()  # before grpc starts: only our own output, in every process that imports longcat
