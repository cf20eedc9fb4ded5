"""HTTP plumbing around every response: the `X-Process-Time` header and, with `--api-log`, one log line
per API request; the limit on the size of a request body; the refusal of requests another web site makes a
browser send. Plain ASGI (no per-request task), so streaming responses and client disconnects pass through
untouched."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

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
                log.info("API %s %s %s %s %.3fs", status or "---", client[0], scope.get("method", "?"),
                         _loggable(path), time.perf_counter() - start)


def _loggable(path: str) -> str:
    """A request's path for a log line: it is decoded already, so a %0A in it would start a line of its own."""
    return path.encode("unicode_escape").decode("ascii")


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


SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class SameSite:
    """Refuses what a web page on another site can make the user's browser send to this server:

    - a request whose Host header names neither an IP address, nor localhost, nor a name in `hosts` (the
      owner's --allowed-hosts, --server-name and, on the network, this machine's names). Without that, a site
      whose name it points at 127.0.0.1 afterwards (DNS rebinding) would be the same origin as this server
      and could use it all, where no login guards it;
    - a request that may change something (not GET, HEAD or OPTIONS; a WebSocket too) whose `Origin` is
      another site, unless the CORS flags let that origin in. A cross-site form or a `no-cors` fetch needs no
      CORS answer to run a POST without a body, such as /sdapi/v1/interrupt or /server-kill.

    Requests without these headers (scripts, curl) pass: the check is about browsers. A refusal is a 403
    that names the header and the flag that would let it in."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str] = (), any_host: bool = False,
                 cors_origins: Iterable[str] = (), cors_regex: str | None = None):
        self.app = app
        self.hosts = {h.strip().lower().rstrip(".") for h in hosts if h and h.strip()}
        self.any_host = any_host
        self.cors_origins = {o.strip().lower().rstrip("/") for o in cors_origins if o and o.strip()}
        self.cors_regex = re.compile(cors_regex) if cors_regex else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode(): v.decode("latin-1") for k, v in scope.get("headers", []) if k in (b"host", b"origin")}
        host, origin = headers.get("host"), headers.get("origin")
        problem = None
        if host is not None and not self.host_allowed(host):
            problem = (f"Host {host!r} is not a name of this server. If it is (a reverse proxy, a name on your "
                       "network), start the server with --allowed-hosts naming it.")
        elif origin is not None and (scope["type"] == "websocket" or scope.get("method") not in SAFE_METHODS) \
                and not self.origin_allowed(origin, host):
            problem = (f"Origin {origin!r} is another site: this server takes such requests only from the "
                       "origins --cors-allow-origins lists.")
        if problem is None:
            await self.app(scope, receive, send)
            return
        log.warning("Refused %s %s: %s", scope.get("method", "WebSocket"), _loggable(scope.get("path", "")), problem)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"error": "Forbidden", "detail": problem, "body": "", "errors": problem}).encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        place = _name_and_port(host)
        if place is None:
            return False
        name = place[0]
        if name == "localhost" or name.endswith(".localhost") or name in self.hosts:
            return True
        try:
            ipaddress.ip_address(name)  # an address cannot be pointed elsewhere
            return True
        except ValueError:
            return False

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if origin in self.cors_origins or "*" in self.cors_origins or \
                (self.cors_regex is not None and self.cors_regex.fullmatch(origin)):
            return True
        scheme, _, netloc = origin.partition("://")
        place = _name_and_port(netloc, scheme) if scheme in ("http", "https") else None
        if place is None:
            return False  # "null" (a sandboxed frame, a file) and anything odd
        if host is not None and place == _name_and_port(host, scheme):
            return True  # the page this server served
        return place[0] in self.hosts  # a name the owner gave (a proxy in front)


def _name_and_port(netloc: str, scheme: str = "http") -> tuple[str, int] | None:
    """(name or address, port) of a Host header or an origin's host[:port]: lower case, without IPv6 brackets or
    a trailing dot, the port `scheme`'s default when none is given; None when there is no name or it is malformed."""
    try:
        parts = urlsplit("//" + netloc.strip())
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name:
        return None
    return name.rstrip("."), port or (443 if scheme == "https" else 80)
