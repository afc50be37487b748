"""The web UI at ``/``: plain HTML, CSS and JavaScript from ``static/`` (no build step, no CDN, works offline).

The page talks to the same public HTTP API as any client (``/v1/...``, with the API key from its own field as
``Authorization: Bearer``); nothing here is a second API."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    app.mount("/ui", StaticFiles(directory=STATIC), name="ui")

    @app.get("/", include_in_schema=False)
    def index():
        # no-cache: a browser keeps the page in step with the gateway it came from
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})
