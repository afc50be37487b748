"""The HTTP application: one FastAPI app over the gateway core (``create_app``).

Routers (one file each): OpenAI-compatible image edits, REST jobs with Server-Sent Events, training jobs,
adapters, health and metrics. The docs page at ``/docs`` serves Swagger UI from the ``swagger-ui-bundle``
package, so it works without a network."""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from services.gateway.auth import ApiKeys
from services.gateway.core import GatewayCore
from services.gateway.http import adapters, errors, health, images, jobs, trainings, ui
from services.gateway.http.guard import Guard
from services.gateway.http.metrics import HttpMetrics
from services.gateway.http.tracing import HttpTracing

DESCRIPTION = """The LongCat Edit Stack over HTTP: OpenAI-compatible `POST /v1/images/edits`, REST jobs with
live events (Server-Sent Events), LoRA training and adapters. With API keys on, send
`Authorization: Bearer <key>`. Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""


def create_app(core: GatewayCore, auth: ApiKeys, *, ready: Callable[[], bool] = lambda: True,
               max_request_bytes: int = 256 << 20, hub=None) -> FastAPI:
    app = FastAPI(title="LongCat Edit Stack", version="1", description=DESCRIPTION, docs_url=None,
                  redoc_url=None)
    app.state.core = core
    app.state.auth = auth
    app.state.ready = ready
    app.state.hub = hub  # services.gateway.hub.EventHub: SSE and blocking edits wait there (None: on threads)
    errors.install(app)
    for module in (images, jobs, trainings, adapters, health):
        app.include_router(module.router)
    _offline_docs(app)
    ui.install(app)
    app.add_middleware(Guard, auth=auth, max_request_bytes=max_request_bytes,
                       max_upload_bytes=core.config.max_upload_bytes)
    app.add_middleware(HttpTracing)  # a span per request, the Guard's refusals included
    app.add_middleware(HttpMetrics)  # outermost: counts the Guard's 401/413 answers too
    return app


def _offline_docs(app: FastAPI) -> None:
    app.mount("/docs/static", StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon-32x32.png")
