"""Command-line flags, with AUTOMATIC1111's names so existing `COMMANDLINE_ARGS` keep working.

Flags that A1111 has and we do not need (attention backends we pick automatically, launcher
switches, extension access) are accepted and reported as ignored instead of stopping start-up.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex

# Flags A1111 users commonly carry in webui-user.sh/.bat. We accept them so start-up never fails
# on them, and say once that they have no effect here. Value-taking ones are listed separately.
IGNORED_SWITCHES = [
    "--xformers", "--force-enable-xformers", "--xformers-flash-attention", "--opt-sdp-attention",
    "--opt-sdp-no-mem-attention", "--opt-split-attention", "--opt-split-attention-v1",
    "--opt-split-attention-invokeai", "--opt-sub-quad-attention", "--disable-opt-split-attention",
    "--opt-channelslast", "--upcast-sampling",
    "--enable-insecure-extension-access",
    "--skip-version-check", "--reinstall-xformers",
    "--update-check", "--update-all-extensions", "--no-download-sd-model", "--disable-all-extensions",
    "--disable-extra-extensions", "--no-gradio-queue", "--disable-nan-check", "--no-hashing",
    "--disable-safe-unpickle", "--use-textbox-seed", "--log-startup",
]
IGNORED_WITH_VALUE = ["--theme", "--opt-sub-quad-q-chunk-size", "--opt-sub-quad-kv-chunk-size",
                      "--opt-sub-quad-chunk-threshold", "--ngrok", "--ngrok-region", "--loglevel"]

# What a user should know about a few of the ignored flags.
IGNORED_REASONS = {
    "--disable-safe-unpickle": ".ckpt files always load through the restricted loader; convert "
                               "an old file to .safetensors if it is refused",
    "--xformers": "PyTorch's scaled-dot-product attention is used on every device",
}


def _bounded(kind, low, high):
    """An argparse type: a number of `kind` from `low` to `high`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not between {low} and {high}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="webui.py",
        description="Stable Diffusion web UI and A1111-compatible API. Flags use AUTOMATIC1111's names.",
    )
    net = p.add_argument_group("server")
    net.add_argument("--listen", action="store_true",
                     help="listen on all network interfaces (0.0.0.0) instead of 127.0.0.1 only")
    net.add_argument("--server-name", default=None, help="explicit host name or address to bind to")
    net.add_argument("--port", type=int, default=None,
                     help="port to serve on (default 7860; 7861 with --nowebui; 0: a free port, named in the log)")
    net.add_argument("--api", action="store_true", help="serve the /sdapi/v1 HTTP API beside the UI")
    net.add_argument("--nowebui", action="store_true", help="serve only the API, no browser UI")
    net.add_argument("--autolaunch", action="store_true", help="open the UI in the default browser")
    net.add_argument("--api-auth", default=None, metavar="USER:PASS[,USER2:PASS2]",
                     help="require HTTP Basic authentication for every /sdapi/v1 route")
    net.add_argument("--api-log", action="store_true", help="log every API request (status, client, path, time)")
    net.add_argument("--api-callback-hosts", default=None, metavar="HOST[,HOST2]",
                     help="hosts (or host:port) that POST /sdapi/v1/jobs may send its callback_url to (default: none)")
    net.add_argument("--api-server-stop", action="store_true",
                     help="enable POST /sdapi/v1/server-stop, /server-restart and /server-kill")
    net.add_argument("--allowed-hosts", default=None, metavar="HOST[,HOST2]",
                     help="host names the server answers to besides addresses, localhost, --server-name and, with "
                          "--listen, this machine's name (a reverse proxy's, a name on your network); * for any. "
                          "Requests naming another Host are refused, so that no other web site can reach the server "
                          "by pointing its own name at it")
    net.add_argument("--cors-allow-origins", default=None, metavar="ORIGIN[,ORIGIN2]",
                     help="web pages of these origins may call the server from a browser (CORS), "
                          "e.g. http://localhost:3000")
    net.add_argument("--cors-allow-origins-regex", default=None, metavar="REGEX",
                     help="as --cors-allow-origins, for every origin the regular expression matches in full")
    net.add_argument("--gradio-auth", default=None, metavar="USER:PASS[,USER2:PASS2]",
                     help="require a login for the browser UI")
    net.add_argument("--gradio-auth-path", default=None, metavar="FILE",
                     help="file with --gradio-auth logins (same format, one or more per line)")
    net.add_argument("--timeout-keep-alive", type=int, default=30,
                     help="seconds an idle HTTP keep-alive connection stays open (default 30)")

    models = p.add_argument_group("models and data")
    models.add_argument("--data-dir", default=None,
                        help="base folder for models, outputs, config.json and caches (default: the program folder)")
    models.add_argument("--models-dir", default=None, help="base folder for models (default: DATA_DIR/models)")
    models.add_argument("--ckpt", default=None, help="checkpoint file to load at start-up (added to the list)")
    models.add_argument("--ckpt-dir", default=None, help="extra folder searched for checkpoints")
    models.add_argument("--no-builtin-model", action="store_true",
                        help="do not list the small demo model that ships in models/builtin")
    models.add_argument("--vae-dir", default=None, help="extra folder searched for VAE files")
    models.add_argument("--lora-dir", default=None, help="folder with LoRA networks (default: MODELS_DIR/Lora)")
    models.add_argument("--esrgan-models-path", default=None,
                        help="folder with ESRGAN-style upscaler models (default: MODELS_DIR/ESRGAN)")
    models.add_argument("--realesrgan-models-path", default=None,
                        help="folder with Real-ESRGAN upscaler models (default: MODELS_DIR/RealESRGAN)")
    models.add_argument("--dat-models-path", default=None,
                        help="folder with DAT upscaler models (default: MODELS_DIR/DAT)")
    models.add_argument("--hypernetwork-dir", default=None,
                        help="folder with hypernetworks (default: MODELS_DIR/hypernetworks)")
    models.add_argument("--embeddings-dir", default=None,
                        help="folder with textual-inversion embeddings (default: DATA_DIR/embeddings)")
    models.add_argument("--styles-file", action="append", default=None, metavar="FILE",
                        help="styles CSV file (default DATA_DIR/styles.csv); may be given more than once")
    models.add_argument("--allowed-paths", default=None, metavar="DIR[,DIR2]",
                        help="folders outside the data folder that clients (the page, the API) may name as output "
                             "folders in settings and as img2img/Extras batch folders (default: none)")
    models.add_argument("--config", default=None,
                        help="YAML config used for SD 1.x checkpoints without one (default configs/v1-inference.yaml)")

    dev = p.add_argument_group("device and precision")
    dev.add_argument("--use-cpu", nargs="+", default=[], metavar="MODULE",
                     help="run these modules on the CPU; 'all' or 'sd' moves generation to the CPU")
    dev.add_argument("--device-id", default=None, help="CUDA device index to use (cuda:N)")
    dev.add_argument("--no-half", action="store_true", help="keep the U-Net and text encoder in 32-bit floats")
    dev.add_argument("--no-half-vae", action="store_true", help="keep the VAE in 32-bit floats")
    dev.add_argument("--precision", choices=["full", "half", "autocast"], default="autocast",
                     help="'full' runs everything in 32-bit floats; 'half'/'autocast' use 16-bit on GPUs")
    dev.add_argument("--skip-torch-cuda-test", action="store_true",
                     help="do not warn when no GPU is usable (generation then runs on the CPU)")
    for flag in ("--lowram", "--medvram", "--lowvram"):
        dev.add_argument(flag, action="store_true",
                         help="low-memory mode (setting low_memory): weights kept in 16 bits and converted layer by "
                              "layer as they run, on a CPU (or with --no-half); GPUs already run in 16 bits")
    dev.add_argument("--medvram-sdxl", action="store_true", help="low-memory mode for SDXL models only")

    limits = p.add_argument_group("limits (a request over one gets a 400 that names it; see modules/limits.py)")
    limits.add_argument("--max-image-side", type=_bounded(int, 64, 4096), default=2048, metavar="PIXELS",
                        help="largest width or height to generate; the hires fix target may have as many pixels "
                             "as PIXELSxPIXELS in any shape (default 2048, at most 4096)")
    limits.add_argument("--max-batch-size", type=_bounded(int, 1, 64), default=8,
                        help="a batch may hold as many pixels as this many images of --max-image-side squared "
                             "(default 8: A1111's page at most; smaller images come in larger batches; at most 64)")
    limits.add_argument("--max-batch-count", type=_bounded(int, 1, 1000), default=100,
                        help="batch count, n_iter (default 100, at most 1000)")
    limits.add_argument("--max-steps", type=_bounded(int, 1, 1000), default=1000,
                        help="sampling steps, also of the hires pass (default 1000)")
    limits.add_argument("--max-input-megapixels", type=_bounded(float, 0.01, 10000), default=100.0, metavar="MP",
                        help="largest image a request may send (img2img, inpainting masks, Extras, PNG Info), read "
                             "from its header before it is decoded (default 100)")
    limits.add_argument("--max-upload-size", type=_bounded(int, 1, 1 << 20), default=100, metavar="MB",
                        help="largest request body (API) and uploaded file (UI) in megabytes (default 100)")
    limits.add_argument("--max-extras-images", type=_bounded(int, 1, 100_000), default=100, metavar="N",
                        help="images of one Extras batch (API extra-batch-images, the Extras tab's Batch "
                             "Process), and the results of a Batch from Directory the page shows (default 100)")
    limits.add_argument("--max-extras-megapixels", type=_bounded(float, 1, 1_000_000), default=1100.0, metavar="MP",
                        help="the results of one Extras batch together, worked out from the sizes asked for before "
                             "anything is decoded; they are all held until the batch ends (default 1100: four "
                             "16384x16384 results, about 4 GB); of a Batch from Directory, those the page shows")
    limits.add_argument("--memory-limit", type=_bounded(float, 0.5, 1 << 20), default=None, metavar="GB",
                        help="plan jobs as if this process could hold at most GB gibibytes (RAM on the CPU, the "
                             "GPU's memory on a GPU): a job whose estimated peak does not fit runs with the tiled "
                             "VAE, or is refused with what would fit. Without it, what the device has free counts")

    cluster = p.add_argument_group("cluster (Ray Serve; needs `pip install -r requirements-ray.txt`)")
    cluster.add_argument("--ray-workers", type=_bounded(int, 1, 1024), default=None, metavar="N",
                         help="run generation jobs on N Ray Serve replicas of a Ray instance started on this machine "
                              "(one GPU each where there are GPUs, else sharing the CPU); the page, the API and the "
                              "queue stay in this process")
    cluster.add_argument("--ray-address", default=None, metavar="ADDR",
                         help="join an existing Ray cluster (`ray start --head` on one machine, `ray start "
                              "--address=...` on the others) instead of starting one; --ray-workers replicas "
                              "(default 1) are placed by Ray, one GPU each. Every node needs this program and the "
                              "model folders at the same paths (a shared file system)")

    launch = p.add_argument_group("launcher (read by launch.py before the server starts)")
    launch.add_argument("--skip-install", action="store_true", help="do not install requirements.txt")
    launch.add_argument("--skip-prepare-environment", action="store_true", help="install nothing at all")
    launch.add_argument("--reinstall-torch", action="store_true", help="run TORCH_COMMAND again")
    launch.add_argument("--skip-python-version-check", action="store_true",
                        help="no warning for an untested Python version")
    for flag in IGNORED_SWITCHES:
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in IGNORED_WITH_VALUE:
        p.add_argument(flag, default=None, help=argparse.SUPPRESS)
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags from argv plus the COMMANDLINE_ARGS environment variable (as A1111 does)."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ.get("COMMANDLINE_ARGS", "")
    if env.strip() and argv is None:
        args += shlex.split(env)
    ns = build_parser().parse_args(args)
    if ns.port is None:
        ns.port = 7861 if ns.nowebui else 7860
    return ns


def ignored_flags(ns: argparse.Namespace) -> list[str]:
    """Human-readable notes for each A1111 flag that was given but has no effect here."""
    notes = []
    for flag in IGNORED_SWITCHES + IGNORED_WITH_VALUE:
        value = getattr(ns, flag.lstrip("-").replace("-", "_"))
        if value not in (False, None):
            reason = IGNORED_REASONS.get(flag, "not needed here")
            notes.append(f"{flag} is ignored: {reason}")
    return notes


def bind_host(ns: argparse.Namespace) -> str:
    if ns.server_name:
        return ns.server_name
    return "0.0.0.0" if ns.listen else "127.0.0.1"


def allowed_hosts(ns: argparse.Namespace) -> tuple[set[str], bool]:
    """The host names requests may give in their Host header (besides addresses and localhost), and whether
    any is allowed (--allowed-hosts *)."""
    names = {h.strip() for h in (ns.allowed_hosts or "").split(",") if h.strip()}
    if ns.server_name:
        names.add(ns.server_name)
    if on_network(ns):
        import socket

        machine = socket.gethostname()  # (no DNS lookup: getfqdn may wait on a network that is not there)
        names.update({machine, f"{machine}.local", machine.split(".")[0]})
    return names - {"*"}, "*" in names


def on_network(ns: argparse.Namespace) -> bool:
    """Whether the server is reachable from other machines (--listen, or --server-name other than loopback)."""
    host = bind_host(ns)
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: whatever it resolves to, assume others can reach it
        return True


SECRET_FLAGS = ("api_auth", "gradio_auth")


def public_flags(ns: argparse.Namespace) -> dict:
    """The parsed flags as /sdapi/v1/cmd-flags shows them: passwords replaced by '***'."""
    flags = dict(vars(ns))
    for name in SECRET_FLAGS:
        if flags.get(name):
            flags[name] = "***"
    return flags
