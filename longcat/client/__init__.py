"""Python clients of the LongCat gateway: :class:`LongCatClient` (sync) and :class:`AsyncLongCatClient`."""

from longcat.client.aio import AsyncLongCatClient
from longcat.client.sync import LongCatClient

__all__ = ["LongCatClient", "AsyncLongCatClient"]
