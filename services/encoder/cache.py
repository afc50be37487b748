"""A bounded in-memory cache of embeddings by content key, with single-flight: concurrent identical
requests compute once and share the result."""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Callable

import torch

from longcat.rpc import metrics


class EmbeddingCache:
    def __init__(self, max_bytes: int, name: str = "embeddings"):
        self.max_bytes = max_bytes
        self.name = name
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self._pending: dict[str, Future] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, bool]:
        """Return (value, hit). Exactly one caller computes a missing key; the others wait for it."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                metrics.CACHE.labels(self.name, "hit").inc()
                return self._items[key], True
            pending = self._pending.get(key)
            owner = pending is None
            if owner:
                pending = self._pending[key] = Future()
        if not owner:
            metrics.CACHE.labels(self.name, "coalesced").inc()
            return pending.result(), True
        metrics.CACHE.labels(self.name, "miss").inc()
        try:
            value = compute()
        except BaseException as exc:
            with self._lock:
                del self._pending[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._pending[key]
            self._put(key, value)
        pending.set_result(value)
        return value, False

    def _put(self, key: str, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        if size > self.max_bytes:
            return
        self._items[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()
