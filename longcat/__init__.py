"""LongCat Edit Stack: the shared package (model loading, conditioning, engine, adapters, codec, config).

Every service (encoder, denoiser, trainer, gateway) and the CLI import from here; nothing is copied.
"""

__version__ = "0.1.0"
