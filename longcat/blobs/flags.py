"""The ``--blob-dir`` flag every service that reads or writes job payloads shares (gateway, denoiser, trainer)."""

DEFAULT_BLOB_DIR = "~/.cache/longcat/blobs"


def add_blob_args(p) -> None:
    p.add_argument("--blob-dir", default=DEFAULT_BLOB_DIR,
                   help="blob store for reference images, results and training images (Redis keeps references): "
                        "a folder, shared by the gateway, denoisers and trainers (a shared volume across machines)")
