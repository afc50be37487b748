"""Only our output: third-party progress bars, banners and C-core chatter off, in services and in the CLI.

Environment defaults are set (``setdefault``: a user's own choice wins) when ``longcat`` is imported, which is
before ``grpc`` is: gRPC's C core reads ``GRPC_VERBOSITY`` once, when it starts. Libraries that keep their
own switch (transformers, diffusers, huggingface_hub) are turned quiet in :func:`silence_libraries`, called
by ``setup_logging`` after they may have been imported.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

QUIET_ENV = {
    "GRPC_VERBOSITY": "ERROR",                 # no "chttp2_transport ... Got goaway" lines at shutdown
    "GRPC_ENABLE_FORK_SUPPORT": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",       # download bars
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TRANSFORMERS_VERBOSITY": "error",         # "Loading weights" / advisory warnings
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DIFFUSERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",         # the fork warning of huggingface tokenizers
}

# Loggers of libraries whose INFO lines say nothing a LongCat user can act on.
NOISY_LOGGERS = ("httpx", "urllib3", "filelock", "celery", "kombu", "amqp", "transformers", "diffusers",
                 "huggingface_hub", "peft", "torch", "PIL", "asyncio", "grpc")


def quiet_environment() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def silence_libraries(level: int = logging.WARNING) -> None:
    """Progress bars of already-imported libraries off; their loggers at ``level`` or above."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    # Only touch what is already imported (by name, through importlib: the doors that call this must not
    # import torch through transformers/diffusers, and the layer check reads static imports).
    for package, module, calls in (("transformers", "transformers.utils.logging",
                                     ("disable_progress_bar", "set_verbosity_error")),
                                    ("diffusers", "diffusers.utils.logging",
                                     ("disable_progress_bar", "set_verbosity_error")),
                                    ("huggingface_hub", "huggingface_hub.utils", ("disable_progress_bars",))):
        if package in sys.modules:
            lib = importlib.import_module(module)
            for call in calls:
                getattr(lib, call)()
    # Celery warns when a worker runs as root (containers do); the pickle danger it names is closed by
    # accept_content=["json"] in our app.
    warnings.filterwarnings("ignore", message=r".*superuser privileges.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|diffusers|peft)\..*")
