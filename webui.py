"""Start the web UI and the A1111-compatible API: flags -> settings -> engine -> server."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import webbrowser

# Before any library is imported (several read their switches then): no model hub, no usage statistics.
from modules import offline  # noqa: E402

offline.apply()

from modules import cmd_args, devices, logs  # noqa: E402

log = logging.getLogger("webui")


def build(args, control=None):
    """Everything the server needs, from parsed flags. Returns (FastAPI app, Engine). `control` (a
    ServerControl) is what --api-server-stop's routes act on."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware
    from fastapi.middleware.gzip import GZipMiddleware

    from modules import auth, bootstrap, images
    from modules.api.middleware import BodySizeLimit, ProcessTime, SameSite
    from modules.version import VERSION

    api_credentials = auth.from_flags(args.api_auth, flag="--api-auth")
    # Secure by default: without a login of its own the page asks for the API's (it reaches the same engine).
    page_credentials = auth.from_flags(args.gradio_auth, args.gradio_auth_path, flag="--gradio-auth")
    ui_credentials = page_credentials or (api_credentials if not args.nowebui else None)
    # and the API (which reaches the same engine) asks for the page's login when it has none of its own
    api_login = api_credentials if api_credentials is not None else page_credentials
    if not args.nowebui:
        log.info("%s", ui_login_note(args))
    # No server folders from the page when the network reaches a server without any login.
    engine = bootstrap.build(args, server_folders=not cmd_args.on_network(args) or
                             bool(ui_credentials or api_credentials))
    log.info("Device: %s", engine.device.describe)
    # A1111 selects --ckpt's file at start-up, whatever config.json remembered.
    ckpt = bootstrap.ckpt_file(args)
    if ckpt and not os.path.isfile(ckpt):
        log.error("--ckpt %s: no such file%s", args.ckpt,
                  f" (the link points to {ckpt})" if os.path.islink(os.path.expanduser(args.ckpt)) else "")
    if not engine.folders.server_folders:
        log.warning("The page's server-folder fields (img2img Batch, Extras batch from directory) are refused: the "
                    "server is reachable from the network without a login.")
    images.refuse_in_pillow(engine.limits.max_input_pixels)  # also what Gradio decodes itself (page uploads)
    if bootstrap.cluster_workers(args):
        bootstrap.start_cluster(engine, args)  # the replicas load what each job needs; this process loads nothing
    else:
        engine.checkpoints.start_loading(ckpt)  # a missing --ckpt is said on the page (nothing loads until a job asks)
    engine.history.rescan()  # the history's heal runs in the background; start-up does not wait for it

    app = FastAPI(title="Stable Diffusion WebUI API", version=VERSION,
                  description="AUTOMATIC1111-compatible API. Generation requests wait in one queue shared with "
                              "the UI and run one at a time, in arrival order (with --ray-workers N, up to N at "
                              "once on Ray replicas).")
    app.add_middleware(ProcessTime, log_requests=args.api_log)
    app.add_middleware(BodySizeLimit, max_bytes=engine.limits.max_upload_bytes)
    app.add_middleware(GZipMiddleware, minimum_size=1000)  # as A1111 (event streams are never compressed)
    origins = [o.strip() for o in (args.cors_allow_origins or "").split(",") if o.strip()]
    if args.cors_allow_origins or args.cors_allow_origins_regex:  # as A1111: only when asked for
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_origin_regex=args.cors_allow_origins_regex,
                           allow_methods=["*"], allow_headers=["*"], allow_credentials=True)
    hosts, any_host = cmd_args.allowed_hosts(args)
    if any_host or hosts:  # (a browser on another name gets a 403 that points to --allowed-hosts)
        log.info("Host names the server answers to besides addresses and localhost: %s",
                 "any (--allowed-hosts *)" if any_host else ", ".join(sorted(hosts)))
    app.add_middleware(SameSite, hosts=hosts, any_host=any_host, cors_origins=origins,  # outermost: before all
                       cors_regex=args.cors_allow_origins_regex)
    from modules.api import routes

    routes.install_error_handlers(app)
    ui_login = None
    if ui_credentials is not None:
        from modules.ui.mount import UiLogin

        ui_login = UiLogin()  # attached to the page once it is mounted (below)
    app.include_router(routes.build_internal_router(engine, api_login, ui_login))
    if args.api or args.nowebui:
        app.include_router(routes.build_router(engine, cmd_args.public_flags(args), api_login))
        from modules.api import job_routes

        app.include_router(job_routes.build_jobs_router(
            engine, api_login, (args.api_callback_hosts or "").split(",")))
        if args.api_server_stop:
            from modules.api import server_control

            app.include_router(server_control.build_router(control or server_control.ServerControl(),
                                                           api_login))
    elif args.api_server_stop:
        log.warning("--api-server-stop has no effect without --api or --nowebui")
    if not args.nowebui:
        from modules.ui import app as ui_app
        from modules.ui import common as ui_common
        from modules.ui import mount

        page = ui_app.build(engine)
        app = mount.mount(app, page.blocks, ui_credentials, ui_login,
                          allowed_paths=[str(ui_common.download_folder(engine))], css=page.css, head=page.head,
                          max_file_size=engine.limits.max_upload_bytes)
    return app, engine


def ui_login_note(args) -> str:
    """The start-up line that says which login guards the page."""
    if args.gradio_auth or args.gradio_auth_path:
        return "The UI asks for a --gradio-auth login."
    if args.api_auth:
        return "The UI asks for the --api-auth login (no --gradio-auth given; the API's users log in to the page)."
    return "The UI needs no login (set --gradio-auth or --api-auth to require one)."


def unprotected_parts(args) -> list[str]:
    """What a --listen server would serve to the network without any login."""
    parts = []
    if not args.nowebui and not (args.gradio_auth or args.gradio_auth_path or args.api_auth):
        parts.append("the UI")
    if (args.api or args.nowebui) and not (args.api_auth or args.gradio_auth or args.gradio_auth_path):
        parts.append("the API")
    return parts


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) for the server to listen on; port 0 picks a free one."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a restart reuses the port at once
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> None:
    args = cmd_args.parse(argv)
    logs.setup()
    try:
        devices.check_torch_version()
    except devices.UnsupportedTorch as e:
        log.error("%s", e)
        sys.exit(1)
    for note in cmd_args.ignored_flags(args):
        log.warning("%s", note)
    host = cmd_args.bind_host(args)
    if cmd_args.on_network(args) and (open_parts := unprotected_parts(args)):
        log.warning("The server is reachable from other machines on your network and %s need%s no password; "
                    "set --gradio-auth / --api-auth user:password to require one.",
                    " and ".join(open_parts), "s" if len(open_parts) == 1 else "")

    import uvicorn

    from modules.api.server_control import ServerControl
    from modules.auth import CredentialsError

    # The address is taken before the (slow) build: a port in use is said at once, and --port 0 takes a free
    # port that nobody else can take in between (the log line below gives its number).
    try:
        sock = listening_socket(host, args.port)
    except OSError as e:
        log.error("Cannot serve on %s port %s: %s", host, args.port, e.strerror or e)
        sys.exit(3)
    port = sock.getsockname()[1]
    control = ServerControl(port=port)
    try:
        app, engine = build(args, control)
    except CredentialsError as e:
        log.error("%s", e)
        sys.exit(2)
    # Stopping (Ctrl+C, SIGTERM, server-stop) cancels the queued jobs and interrupts the running one, so their
    # answers go out within the stop's grace instead of being cut off.
    control.on_stop = engine.queue.cancel_all

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            control.stopping()
            super().handle_exit(sig, frame)
    shown_host = "127.0.0.1" if host == "0.0.0.0" else f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}"
    log.info("Running on local URL: %s%s", url, "  (API only: see /docs)" if args.nowebui else "")
    if args.autolaunch and not args.nowebui:
        threading.Timer(2.0, webbrowser.open, args=(url,)).start()
    # An open page keeps a connection; without a limit a stop (Ctrl+C, SIGTERM) would wait for the browser.
    control.server = Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                   timeout_keep_alive=args.timeout_keep_alive,
                                   timeout_graceful_shutdown=5))
    try:
        control.server.run(sockets=[sock])
    finally:
        engine.queue.stop()  # background threads, and the Ray replicas and instance when there are any
    if not control.server.started:
        sys.exit(3)  # could not start (e.g. the port is taken): uvicorn.run's exit code
    if control.restart_requested:
        control.run_again()


if __name__ == "__main__":
    main()
