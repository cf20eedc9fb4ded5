"""HTTP plumbing around every response: the `X-Process-Time` header and, with `--api-log`, one log line
per API request. Plain ASGI (no per-request task), so streaming responses and client disconnects
pass through untouched."""

from __future__ import annotations

import logging
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("webui.api")


class ProcessTime:
    def __init__(self, app: ASGIApp, log_requests: bool = False, log_prefix: str = "/sdapi"):
        self.app = app
        self.log_requests = log_requests
        self.log_prefix = log_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_with_time(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Process-Time", f"{time.perf_counter() - start:.4f}")
            await send(message)

        try:
            await self.app(scope, receive, send_with_time)
        finally:
            path = scope.get("path", "")
            if self.log_requests and path.startswith(self.log_prefix):
                client = scope.get("client") or ("-", 0)
                log.info("API %s %s %s %s %.3fs", status or "---", client[0], scope.get("method", "?"), path,
                         time.perf_counter() - start)
