"""--api-server-stop: A1111's POST /sdapi/v1/server-stop, /server-restart and /server-kill.

stop: uvicorn stops accepting connections, the queued jobs are cancelled and the running one is interrupted
(its answer goes out with what it had made, as after Interrupt), the answers in progress are sent (at most
GRACE_SECONDS, so an open page's event stream cannot hold it up), and the program exits with code 0.
restart: the same, then the process runs its own command line again in place (os.execv: the same
process id, so webui.sh, a terminal or a service manager still see one process) on the same port (also
when --port 0 picked it). A1111 instead exits
and relies on webui.sh/webui.bat looping while a `tmp/restart` file exists; running again in place
works however the program was started and needs no launcher loop. Not on Windows, whose exec starts a
separate process: there restart answers 501, as A1111 does when it cannot restart.
kill: exit at once with code 0 once the answer is sent (jobs in progress are lost), as A1111's.
"""

from __future__ import annotations

import logging
import os
import sys

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from modules.api.routes import basic_auth
from modules.auth import Credentials

log = logging.getLogger(__name__)
GRACE_SECONDS = 10


class ServerControl:
    """Holds the running uvicorn server (set by webui.main) and what a stop route asked for."""

    def __init__(self, port: int | None = None):
        self.server = None  # uvicorn.Server
        self.port = port  # the port served on (what --port 0 picked), kept by a restart
        self.restart_requested = False
        self.on_stop = None  # called when a stop begins (start-up sets it: the job queue cancels its jobs)

    @property
    def can_restart(self) -> bool:
        return os.name == "posix"

    def stop(self, restart: bool = False) -> None:
        if self.server is None:
            return
        self.restart_requested = restart
        self.server.config.timeout_graceful_shutdown = GRACE_SECONDS
        self.server.should_exit = True
        self.stopping()

    def stopping(self) -> None:
        """A stop has begun (a route above, or a signal: webui.main's server calls this from handle_exit)."""
        if self.on_stop is not None:
            self.on_stop()

    def run_again(self) -> None:
        """Replace this process with a fresh start of the same program and arguments (never returns)."""
        main_file = os.path.abspath(sys.modules["__main__"].__file__)  # launch.py or webui.py
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        again = ["--port", str(self.port)] if self.port is not None else []  # the last --port wins
        os.execv(sys.executable, [sys.executable, main_file, *sys.argv[1:], *again])


def build_router(control: ServerControl, credentials: Credentials | None = None) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["sdapi"],
                  dependencies=[Depends(basic_auth(credentials))] if credentials else [])

    @r.post("/server-stop")
    def server_stop():
        """Stop the server cleanly (answers in progress finish, up to 10 s); the program exits with code 0."""
        log.warning("Stopping: asked by POST /sdapi/v1/server-stop")
        control.stop()
        return {}

    @r.post("/server-restart")
    def server_restart():
        """Stop as server-stop does, then start the program again with the same arguments (same process).
        501 where that is not possible (Windows)."""
        if not control.can_restart:
            return JSONResponse(status_code=501, content={"error": "NotImplemented", "detail": "Restart is not "
                                "available on this platform; use server-stop and start the program again"})
        log.warning("Restarting: asked by POST /sdapi/v1/server-restart")
        control.stop(restart=True)
        return {}

    @r.post("/server-kill")
    def server_kill():
        """End the program at once (exit code 0) after this answer; jobs in progress are lost."""
        log.warning("Exiting at once: asked by POST /sdapi/v1/server-kill")
        return JSONResponse({}, background=BackgroundTask(os._exit, 0))

    return r
