"""The ``--blob-dir`` flag every service that reads or writes job payloads shares (gateway, denoiser, trainer)."""

from longcat.api.models import cache_dir


def default_blob_dir() -> str:
    """``$LONGCAT_CACHE/blobs`` (``~/.cache/longcat/blobs``): the same folder for every service of one machine."""
    return str(cache_dir() / "blobs")


def add_blob_args(p) -> None:
    p.add_argument("--blob-dir", default=default_blob_dir(),
                   help="blob store for reference images, results and training images (Redis keeps references): "
                        "a folder shared by the gateway, denoisers and trainers (a shared volume across machines)")
