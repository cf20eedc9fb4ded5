"""The page on the server: the Gradio app mounted into the FastAPI app with Gradio's own checks in force.

- Files. `mount_gradio_app` leaves `blocks.has_launched` false, and while it is false Gradio skips its own
  path check (`processing_utils._check_allowed`): an event's file input could then name any file on the
  server, which Gradio copied into its cache and `/gradio_api/file=` served. Marking the page launched
  makes Gradio accept as an event's input only files uploaded through `/gradio_api/upload` (or files
  Gradio itself put in its cache: the page's outputs and previews), and serve only those, the folders in
  `allowed_paths` and its static files.
- File objects. Gradio checks only the objects of an event's data that are marked as its FileData
  (`"meta": {"_type": "gradio.FileData"}`), yet gr.Image and gr.Gallery (Gradio 6.31) open the `path` of
  an unmarked one, unchecked. `MarkFileInputs` marks every object with a `path` in a request body to the
  page's routes, so that Gradio's check applies to all of them.
- Login. Gradio checks its login only on some routes (not `/gradio_api/cancel`, `reset`, `heartbeat`,
  `stream/...`, ...), and its login page embeds the whole API description, whose defaults are the
  current settings. With a login, `LoginGate` lets through without it only what the login page needs and
  asks Gradio's own `/gradio_api/login_check` for everything else; the login page goes out with an empty
  API description (the page loaded after the login has the whole one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import gradio as gr
from gradio.routes import App as GradioApp

# What the login page needs before the login (exact paths and path prefixes), all of it free of user data.
OPEN_PATHS = frozenset({"/", "/login", "/login/", "/logout", "/theme.css", "/favicon.ico", "/manifest.json",
                        "/robots.txt", "/gradio_api/login_check", "/gradio_api/login_check/", "/gradio_api/user",
                        "/gradio_api/user/", "/gradio_api/token", "/gradio_api/token/", "/gradio_api/theme.css"})
OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon")
_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.DOTALL)
_NO_API_INFO = b'window.gradio_api_info = {"named_endpoints":{},"unnamed_endpoints":{}};</script>'


class UiLogin:
    """Whether a request carries the page's login, as Gradio itself answers it at `/gradio_api/login_check`
    (200: logged in, or the page has no login). Made before the page is mounted (the /internal routes take
    it) and attached to the mounted Gradio app afterwards."""

    def __init__(self):
        self.gradio_app: GradioApp | None = None

    async def __call__(self, scope: dict) -> bool:
        if self.gradio_app is None:
            return False
        return await _status(self.gradio_app, scope, "/gradio_api/login_check") == 200


async def _status(app, scope: dict, path: str) -> int | None:
    """The status `app` answers a GET of `path` with, sent with the cookies of the request `scope`."""
    headers = [(k, v) for k, v in scope.get("headers", []) if k in (b"cookie", b"host")]
    sub = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
           "scheme": scope.get("scheme", "http"), "path": path, "raw_path": path.encode(), "root_path": "",
           "query_string": b"", "headers": headers, "client": scope.get("client"), "server": scope.get("server")}
    status: list[int] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(sub, receive, send)
    return status[0] if status else None


class LoginGate:
    """ASGI middleware on the Gradio app: without the login, only OPEN_PATHS / OPEN_PREFIXES get through
    (the login page without the API description); everything else answers 401."""

    def __init__(self, app, login: Callable[[dict], Awaitable[bool]]):
        self.app = app
        self.login = login

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        is_open = path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)
        if (is_open and path != "/") or await self.login(scope):
            await self.app(scope, receive, send)
        elif path == "/" and scope["type"] == "http":
            await self._login_page(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        else:
            await _json_response(send, 401, b'{"detail":"Not authenticated"}')

    async def _login_page(self, scope, receive, send):
        """Gradio's login page (uncompressed, so that it can be read) without the API description."""
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"accept-encoding"]}
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def keep(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, keep)
        body, found = _API_INFO.subn(_NO_API_INFO, b"".join(chunks), count=1)
        if not found and scope["method"] != "HEAD" and start.get("status") == 200:  # fail closed
            await _json_response(send, 500, b'{"detail":"The login page could not be served"}')
            return
        headers = [(k, v) for k, v in start.get("headers", []) if k != b"content-length"]
        if scope["method"] != "HEAD":
            headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})


FILE_META = {"_type": "gradio.FileData"}


class MarkFileInputs:
    """ASGI middleware on the Gradio app: in the JSON body of a POST to /gradio_api/..., every object with a
    string `path` is marked as Gradio's FileData (see the module's doc), so Gradio accepts it only from its
    upload cache. A body this cannot read goes on unchanged (Gradio cannot read it either)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not _route_path(scope).startswith("/gradio_api/"):
            await self.app(scope, receive, send)
            return
        content_type = dict(scope["headers"]).get(b"content-type", b"")
        if content_type.startswith(b"multipart/"):  # uploads: files, not references to them
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = _marked(b"".join(chunks))
        if body is None:
            await _json_response(send, 400, b'{"detail":"Request body nested too deeply"}')
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)


def _marked(body: bytes) -> bytes | None:
    """`body` with every object that has a string `path` marked as FileData; None when too deeply nested."""
    try:
        data = json.loads(body)
    except RecursionError:
        return None
    except ValueError:
        return body
    changed, stack = False, [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            meta = item.get("meta")
            if isinstance(item.get("path"), str) and not (isinstance(meta, dict) and
                                                          meta.get("_type") == FILE_META["_type"]):
                item["meta"] = dict(FILE_META)
                changed = True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return json.dumps(data).encode() if changed else body


async def _json_response(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _route_path(scope: dict) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def mount(app, blocks: gr.Blocks, credentials, login: UiLogin | None, allowed_paths: list[str], **page_options):
    """Mount `blocks` at the root of `app` with Gradio's path checks in force and, with `credentials`, its
    login in front of every route of the page (`login`, when given, is attached to the mounted app)."""
    app = gr.mount_gradio_app(app, blocks, path="", auth=credentials, allowed_paths=allowed_paths,
                              auth_message="Log in to Stable Diffusion WebUI" if credentials else None,
                              **page_options)
    # What Gradio's launch() sets once it serves; without it Gradio accepts any server path as a file input.
    blocks.has_launched = True
    gradio_app = next(r.app for r in app.routes if isinstance(getattr(r, "app", None), GradioApp))
    gradio_app.add_middleware(MarkFileInputs)
    if credentials:  # added last: the outermost, so nothing of the page runs before the login
        login = login or UiLogin()
        login.gradio_app = gradio_app
        gradio_app.add_middleware(LoginGate, login=login)
    return app
