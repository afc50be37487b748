"""Datasets sent over HTTP (a zip, or files each with its relative path) -> the core's upload path, which
takes a tar stream (the gRPC door's ``UploadDataset`` format): the tar is built here, on a temporary file,
and handed over in chunks. The core checks the size, the names and where every member lands."""

from __future__ import annotations

import tarfile
import tempfile
import zipfile
from typing import BinaryIO, Iterator

from longcat.errors import InvalidArgument
from longcat.v1 import training_pb2

CHUNK = 1 << 20


def zip_to_tar(archive: BinaryIO, out: BinaryIO) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise InvalidArgument(f"is not a zip archive: {exc}", "archive") from None
    with zf, tarfile.open(fileobj=out, mode="w") as tar:
        for info in zf.infolist():
            if info.is_dir():
                continue
            member = tarfile.TarInfo(info.filename)
            member.size = info.file_size
            with zf.open(info) as src:
                tar.addfile(member, src)


def files_to_tar(files: list[tuple[str, BinaryIO]], out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, src in files:
            src.seek(0, 2)
            member = tarfile.TarInfo(path)
            member.size = src.tell()
            src.seek(0)
            tar.addfile(member, src)


def chunks(name: str, tar: BinaryIO) -> Iterator[training_pb2.UploadDatasetChunk]:
    tar.seek(0)
    first = True
    while True:
        data = tar.read(CHUNK)
        if not data and not first:
            return
        yield training_pb2.UploadDatasetChunk(name=name if first else "", data=data)
        first = False


def spooled() -> BinaryIO:
    return tempfile.SpooledTemporaryFile(max_size=16 << 20)
