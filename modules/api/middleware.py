"""HTTP plumbing around every response: the `X-Process-Time` header and, with `--api-log`, one log line
per API request; the limit on the size of a request body. Plain ASGI (no per-request task), so streaming
responses and client disconnects pass through untouched."""

from __future__ import annotations

import json
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


class BodySizeLimit:
    """Refuses a request whose body is larger than `max_bytes` (--max-upload-size) with a 413 that says the
    limit: at once when its Content-Length says so, else as soon as that much has arrived (whatever the app
    would have answered is replaced). Nothing over the limit is kept: the rest of the body is read and
    dropped, so that the client gets the answer instead of a broken connection."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(receive, send, more=True)
            return
        received, over, more, started = 0, False, False, False

        async def counted() -> Message:
            nonlocal received, over, more
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over, more = True, message.get("more_body", False)
                    return {"type": "http.disconnect"}  # the app stops reading
            return message

        async def answer(message: Message) -> None:
            nonlocal started
            if not over:
                started = started or message["type"] == "http.response.start"
                await send(message)

        try:
            await self.app(scope, counted, answer)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(receive, send, more)

    async def _refuse(self, receive: Receive, send: Send, more: bool) -> None:
        while more:  # drop the rest of the body
            message = await receive()
            more = message["type"] == "http.request" and message.get("more_body", False)
        detail = (f"The request is larger than this server's limit of {self.max_bytes / (1024 * 1024):g} MB "
                  "(--max-upload-size)")
        body = json.dumps({"error": "RequestTooLarge", "detail": detail, "body": "", "errors": detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
