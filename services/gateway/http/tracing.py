"""A server span per HTTP request (longcat.tracing), child of the caller's W3C ``traceparent`` header: the
jobs it submits continue its trace as the gRPC door's do. Nothing at all when tracing is off."""

from __future__ import annotations

from longcat import tracing
from longcat.logs import tenant


class HttpTracing:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not tracing.enabled():
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        parent = headers.get(b"traceparent", b"").decode("latin-1")[:256] or None
        status = {"code": 500}

        async def sending(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        method = scope["method"]
        with tracing.span(f"HTTP {method}", parent, kind="server",
                          attributes={"http.request.method": method, "url.path": scope["path"]}) as s:
            try:
                await self.app(scope, receive, sending)
            finally:
                route = getattr(scope.get("route"), "path", None)  # the template: a bounded span name
                if route:
                    s.update_name(f"HTTP {method} {route}")
                s.set_attribute("http.response.status_code", status["code"])
                if tenant.get():  # the Guard resolved the caller's key
                    s.set_attribute("longcat.tenant", tenant.get())
