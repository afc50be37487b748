"""Run the HTTP app with uvicorn on a thread of the gateway process (beside the gRPC server, over the same
core). ``--http-port 0`` leaves it off."""

from __future__ import annotations

import logging
import threading

import uvicorn

log = logging.getLogger("longcat.gateway.http")


class HttpServer:
    def __init__(self, app, host: str, port: int, threads: int = 64, grace_s: float = 30.0):
        # On stop: no new connections, in-flight requests get the same drain time as gRPC calls (--grace-s).
        self.config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                     timeout_graceful_shutdown=max(1, int(grace_s)), lifespan="off")
        self.server = uvicorn.Server(self.config)
        self.threads = threads
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)

    def _run(self) -> None:
        import anyio.to_thread

        async def main():
            # Blocking edits hold a worker thread each while they wait on Redis (like gRPC's handler threads).
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
            await self.server.serve()

        anyio.run(main)

    def start(self, timeout: float = 30.0) -> "HttpServer":
        self.thread.start()
        deadline = threading.Event()
        for _ in range(int(timeout * 20)):
            if self.server.started or not self.thread.is_alive():
                break
            deadline.wait(0.05)
        if not self.server.started:
            raise RuntimeError(f"the HTTP server did not start on {self.config.host}:{self.config.port} "
                               "(is the port taken? --http-port 0 turns HTTP off)")
        log.info("http up", extra={"url": f"http://{self.config.host}:{self.config.port}"})
        return self

    def begin_stop(self) -> None:
        self.server.should_exit = True

    def stop(self, timeout: float = 60.0) -> None:
        self.begin_stop()
        self.thread.join(timeout)
