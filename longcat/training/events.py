"""Progress as plain dicts, handed to a sink (the Celery task forwards them to Redis; tests collect them).

Event types: ``phase`` {phase}, ``caching`` {done, total}, ``start`` {step, total, ...}, ``step`` {step, total,
loss, lr, eta_s}, ``checkpoint`` {step, path}, ``validation`` {step, images}, ``cancelled`` {step},
``done`` {step, adapter_path, summary_path}. Paths are strings, so events serialize as JSON as they are.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

log = logging.getLogger("longcat.training")

EventSink = Callable[[dict[str, Any]], None]


class Events:
    def __init__(self, sink: EventSink | None = None):
        self.sink = sink

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        event = {"type": type, **fields}
        log.info(json.dumps(event, default=str), extra={"event": f"training_{type}"})
        if self.sink is not None:
            self.sink(event)
        return event
