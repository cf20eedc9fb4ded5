"""Prepare the Python environment, then start the web UI. webui.sh and webui.bat run this inside the
venv they made; it can also be run directly with any Python that should hold the packages.

1. torch, installed with TORCH_COMMAND (default chosen for this platform, see default_torch_command)
   when it is missing or --reinstall-torch is given;
2. requirements.txt, then requirements-nodeps.txt without dependencies (see that file), each installed only
   when an installed version differs from a pin, so a second start runs no pip at all;
3. webui.main() in this same process, with the command line and COMMANDLINE_ARGS.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent
NODEPS_REQUIREMENTS = ROOT / "requirements-nodeps.txt"  # installed with --no-deps (spandrel: see the file)
TORCH_VERSION = "2.13.0"
# PyTorch's own wheel index for CUDA builds on Windows (PyPI's Windows wheels are CPU-only).
WINDOWS_CUDA_INDEX = "https://download.pytorch.org/whl/cu130"
MIN_PYTHON, TESTED_PYTHON = (3, 10), ((3, 10), (3, 11), (3, 12))
LAUNCH_FLAGS = ("--skip-install", "--skip-prepare-environment", "--reinstall-torch", "--skip-python-version-check")


def say(message: str) -> None:
    print(message, flush=True)


def default_torch_command(system: str | None = None, has_nvidia: bool | None = None) -> str:
    """The pip command that installs torch for this platform, before TORCH_COMMAND overrides it.

    Linux: PyPI's wheel for the pin is the CUDA build and also runs on a CPU. macOS: PyPI's wheel
    has MPS. Windows: PyPI's wheel is CPU-only, so with an NVIDIA driver present the CUDA build comes
    from PyTorch's index (TORCH_INDEX_URL overrides which one)."""
    system = system or platform.system()
    pin = f"torch=={TORCH_VERSION}"
    if system == "Windows":
        if has_nvidia is None:
            has_nvidia = shutil.which("nvidia-smi") is not None
        if has_nvidia:
            index = os.environ.get("TORCH_INDEX_URL") or WINDOWS_CUDA_INDEX
            return f"pip install {pin} --extra-index-url {index}"
    return f"pip install {pin}"


def pip_argv(command: str) -> list[str]:
    """TORCH_COMMAND is written as A1111 writes it ('pip install ...'); run pip as a module of
    this interpreter so it installs into the venv whatever 'pip' is first on PATH."""
    argv = shlex.split(command, posix=os.name != "nt")
    if argv and argv[0] in ("pip", "pip3"):
        return [sys.executable, "-m", "pip", *argv[1:]]
    return argv


def run(argv: list[str], what: str) -> None:
    say(f"Installing {what}: {' '.join(argv)}")
    result = subprocess.run(argv, cwd=ROOT)
    if result.returncode != 0:
        say(f"Could not install {what} (exit code {result.returncode}). The output above says why; fix "
            f"it and start again (nothing else was changed).")
        sys.exit(result.returncode or 1)


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)\s*(#.*)?$")


def unmet_requirements(path: Path) -> list[str]:
    """Lines of a requirements file not satisfied by what is installed. Only exact pins
    (name==version) can be checked without pip; any other line counts as unmet."""
    unmet = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _PIN.match(line)
        if not m or installed_version(m.group(1)) != m.group(3):
            unmet.append(line)
    return unmet


def check_python(skip: bool) -> None:
    version = sys.version_info[:2]
    if version < MIN_PYTHON:
        say(f"Python {platform.python_version()} is too old: this program needs Python "
            f"{'.'.join(map(str, MIN_PYTHON))} or newer (3.11 recommended). Set python_cmd in "
            f"webui-user.sh (or PYTHON in webui-user.bat) to a newer one, delete the venv folder, "
            f"and start again.")
        sys.exit(1)
    if version not in TESTED_PYTHON and not skip:
        say(f"Warning: Python {platform.python_version()} has not been tested with this program "
            f"(tested: 3.10 to 3.12). If installing fails, use Python 3.11.")


def prepare_environment(args: list[str]) -> None:
    if "--skip-prepare-environment" in args:
        return
    check_python("--skip-python-version-check" in args)
    torch_command = os.environ.get("TORCH_COMMAND") or default_torch_command()
    if installed_version("torch") is None or "--reinstall-torch" in args:
        run(pip_argv(torch_command), "torch")
    if "--skip-install" in args:
        return
    requirements = ROOT / os.environ.get("REQS_FILE", "requirements.txt")
    unmet = unmet_requirements(requirements)
    if unmet:
        run([sys.executable, "-m", "pip", "install", "-r", str(requirements)],
            f"requirements ({len(unmet)} not met, e.g. {unmet[0]})")
    unmet = unmet_requirements(NODEPS_REQUIREMENTS)
    if unmet:
        run([sys.executable, "-m", "pip", "install", "--no-deps", "-r", str(NODEPS_REQUIREMENTS)],
            f"packages without their dependencies ({', '.join(unmet)})")


def main() -> None:
    args = sys.argv[1:] + shlex.split(os.environ.get("COMMANDLINE_ARGS", ""))
    prepare_environment(args)
    say("Environment ready; starting the web UI.")
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    import webui

    webui.main()  # parses sys.argv and COMMANDLINE_ARGS itself


if __name__ == "__main__":
    main()
