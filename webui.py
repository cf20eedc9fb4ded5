"""Start the web UI and the A1111-compatible API: flags -> settings -> engine -> server."""

from __future__ import annotations

import logging
import os
import sys
import threading
import webbrowser

# Never let a library reach for a model hub: everything this program needs ships with it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from modules import cmd_args, devices, logs, paths  # noqa: E402

log = logging.getLogger("webui")


def build(args):
    """Everything the server needs, from parsed flags. Returns (FastAPI app, Engine)."""
    from fastapi import FastAPI

    from modules.engine import Engine
    from modules.hashing import HashCache
    from modules.jobs import JobQueue
    from modules.models.manager import ModelManager
    from modules.models.registry import CheckpointRegistry, VaeRegistry
    from modules.settings import SettingsStore
    from modules.version import VERSION

    p = paths.from_args(args.data_dir, args.models_dir, args.ckpt_dir, args.vae_dir, args.config)
    paths.ensure_dirs(p)
    plan = devices.plan(args.use_cpu, args.device_id, args.no_half, args.no_half_vae, args.precision,
                        args.skip_torch_cuda_test)
    devices.configure_torch(plan.device)
    log.info("Device: %s", plan.describe)
    extra = (os.path.abspath(args.ckpt),) if args.ckpt else ()
    if args.ckpt and not os.path.isfile(args.ckpt):
        log.warning("--ckpt %s: no such file", args.ckpt)
    hashes = HashCache(p.hash_cache)
    checkpoints = CheckpointRegistry(p.checkpoint_dirs, hashes, extra_files=extra,
                                     builtin_files=() if args.no_builtin_model else paths.BUILTIN_MODELS)
    vaes = VaeRegistry(p.vae_dirs, p.checkpoint_dirs)
    settings = SettingsStore(p.config_file)
    engine = Engine(p, settings, ModelManager(checkpoints, vaes, plan, p.default_sd1_config), JobQueue())
    engine.start_loading(args.ckpt and os.path.abspath(args.ckpt))

    app = FastAPI(title="Stable Diffusion WebUI API", version=VERSION)
    if args.api or args.nowebui:
        from modules.api import routes

        routes.install_error_handlers(app)
        app.include_router(routes.build_router(engine, vars(args)))
    if not args.nowebui:
        import gradio as gr

        from modules.ui import minimal

        app = gr.mount_gradio_app(app, minimal.build(engine), path="")
    return app, engine


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
    if args.listen:
        log.warning("--listen: the server is reachable from other machines on your network, without a password.")

    import uvicorn

    app, _engine = build(args)
    url = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{args.port}"
    log.info("Running on local URL: %s%s", url, "  (API only: see /docs)" if args.nowebui else "")
    if args.autolaunch and not args.nowebui:
        threading.Timer(2.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(app, host=host, port=args.port, log_level="warning", timeout_keep_alive=30)


if __name__ == "__main__":
    main()
