"""Checks for the blob store on a real stack (tests/test_gateway_e2e.py): what Redis holds, and an
incompressible reference image large enough to notice."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

FEW_KB = 4096 + 512   # the largest value a Redis key, hash field, stream field or member may hold


def noise_png(side: int) -> bytes:
    """An incompressible PNG (random pixels): ~3 bytes a pixel, 768 px -> ~1.7 MB."""
    buf = io.BytesIO()
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def largest_values(r, ns: str) -> list[tuple[int, str]]:
    """(size, where) of every value under namespace ``ns``, largest first: strings, hash fields, stream entry
    fields, set / sorted set members."""
    out = []
    for key in r.scan_iter(match=f"{ns}:*", count=1000):
        kind, name = r.type(key).decode(), key.decode()
        if kind == "string":
            out.append((r.strlen(key), name))
        elif kind == "hash":
            out += [(r.hstrlen(key, f), f"{name}[{f.decode()}]") for f in r.hkeys(key)]
        elif kind == "stream":
            out += [(len(v), f"{name}/{eid.decode()}[{f.decode()}]") for eid, fields in r.xrange(key)
                    for f, v in fields.items()]
        elif kind in ("set", "zset"):
            members = r.smembers(key) if kind == "set" else r.zrange(key, 0, -1)
            out += [(len(m), name) for m in members]
    return sorted(out, reverse=True)


def assert_no_bytes_in_redis(r, ns: str) -> None:
    top = largest_values(r, ns)
    assert top and top[0][0] < FEW_KB, f"image bytes in Redis: {top[:3]}"
