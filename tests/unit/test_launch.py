"""launch.py's install decisions and the launcher scripts' form (the run of ./webui.sh itself is in
tests/launcher/test_launcher.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import launch

ROOT = Path(__file__).resolve().parents[2]


def test_default_torch_command_per_platform(monkeypatch):
    monkeypatch.delenv("TORCH_INDEX_URL", raising=False)
    pin = f"pip install torch=={launch.TORCH_VERSION}"
    assert launch.default_torch_command("Linux", has_nvidia=True) == pin  # PyPI's Linux wheel is CUDA
    assert launch.default_torch_command("Linux", has_nvidia=False) == pin
    assert launch.default_torch_command("Darwin") == pin  # PyPI's macOS wheel has MPS
    assert launch.default_torch_command("Windows", has_nvidia=False) == pin  # CPU build
    windows_cuda = launch.default_torch_command("Windows", has_nvidia=True)
    assert windows_cuda == f"{pin} --extra-index-url {launch.WINDOWS_CUDA_INDEX}"
    assert launch.WINDOWS_CUDA_INDEX.startswith("https://download.pytorch.org/whl/cu")
    monkeypatch.setenv("TORCH_INDEX_URL", "https://example.invalid/whl/cu999")
    assert launch.default_torch_command("Windows", has_nvidia=True).endswith(
        "--extra-index-url https://example.invalid/whl/cu999")


def test_torch_command_runs_pip_of_this_interpreter():
    assert launch.pip_argv("pip install torch==2.13.0 --index-url https://x/y") == [
        sys.executable, "-m", "pip", "install", "torch==2.13.0", "--index-url", "https://x/y"]
    assert launch.pip_argv("uv pip install torch") == ["uv", "pip", "install", "torch"]


def test_unmet_requirements(tmp_path):
    have = metadata.version("pytest")
    reqs = tmp_path / "r.txt"
    reqs.write_text(f"# comment\n\npytest=={have}\nPyTest=={have}  # same, other spelling\n"
                    "pytest==0.0.1\nno-such-package-xyz==1.0\nrequests>=1\n")
    assert launch.unmet_requirements(reqs) == ["pytest==0.0.1", "no-such-package-xyz==1.0", "requests>=1"]


def test_repo_requirements_are_exact_pins_and_met_here():
    """Every line is an exact pin (so a second start can skip pip without asking it), and the test
    environment holds exactly those versions (the tests run against what users get)."""
    assert launch.unmet_requirements(ROOT / "requirements.txt") == []
    assert launch.unmet_requirements(launch.NODEPS_REQUIREMENTS) == []


def test_launch_flags_are_accepted_by_the_server_parser():
    from modules import cmd_args

    ns = cmd_args.parse(["--skip-install", "--reinstall-torch", "--skip-prepare-environment",
                         "--skip-python-version-check"])
    assert cmd_args.ignored_flags(ns) == []  # read by launch.py, so no "has no effect" warning


def test_windows_launchers_are_consistent():
    for name in ("webui.bat", "webui-user.bat"):
        data = (ROOT / name).read_bytes()
        lines = data.split(b"\n")[:-1]
        assert lines and all(line.endswith(b"\r") for line in lines), f"{name} must use CRLF line ends"
    user = (ROOT / "webui-user.bat").read_text()
    assert "call webui.bat" in user
    for var in ("PYTHON", "VENV_DIR", "COMMANDLINE_ARGS"):
        assert f"set {var}=" in user
    assert "launch.py %*" in (ROOT / "webui.bat").read_text()


def test_shell_launchers_parse():
    for name in ("webui.sh", "webui-user.sh"):
        subprocess.run(["bash", "-n", str(ROOT / name)], check=True)
        assert os.access(ROOT / name, os.X_OK), f"{name} must be executable"
