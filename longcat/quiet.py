"""Only our output: third-party progress bars, banners and C-core chatter off, in services and in the CLI.

Environment defaults are set (``setdefault``: a user's own choice wins) when ``longcat`` is imported, which is
before ``grpc`` is: gRPC's C core reads ``GRPC_VERBOSITY`` once, when it starts. Libraries that keep their
own switch (transformers, diffusers, huggingface_hub) are turned quiet in :func:`silence_libraries`, called
by ``setup_logging`` after they may have been imported.
"""

from __future__ import annotations

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
    # Only touch what is imported: the CLI's doors must not import torch through transformers/diffusers.
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as dlog

        dlog.disable_progress_bar()
        dlog.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    # Celery warns when a worker runs as root (containers do); the pickle danger it names is closed by
    # accept_content=["json"] in our app.
    warnings.filterwarnings("ignore", message=r".*superuser privileges.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|diffusers|peft)\..*")
