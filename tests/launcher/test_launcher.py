"""The launchers: launch.py's install decisions, and ./webui.sh run for real on a fresh copy of the
repo with a throwaway venv, up to a server that answers HTTP, then a second start that installs
nothing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import requests

import launch
from tests.support.server import URL_LINE

ROOT = Path(__file__).resolve().parents[2]


# --- launch.py decisions -------------------------------------------------------------------------

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


# --- ./webui.sh end to end -----------------------------------------------------------------------

def fresh_copy(dest: Path) -> Path:
    """The files a clone would have: tracked files plus new files not ignored by git."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def user_env(venv: Path) -> dict[str, str]:
    """The environment of a user's shell: no test venv active, settings as webui-user.sh sets them."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    test_bin = str(Path(sys.prefix) / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != test_bin)
    env.update(venv_dir=str(venv), COMMANDLINE_ARGS="--api --port 0")  # a free port; the log says which
    return env


def run_until_serving(copy: Path, env: dict[str, str], log_path: Path, timeout: float) -> float:
    """Start ./webui.sh, wait until the API and the page answer, stop it; returns seconds to ready."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["./webui.sh"], cwd=copy, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = None
    try:
        while time.monotonic() - started < timeout:
            if proc.poll() is not None:
                pytest.fail(f"webui.sh exited with {proc.returncode}:\n{log_path.read_text()[-6000:]}")
            if url is None and (m := URL_LINE.search(log_path.read_text())):
                url = m.group(1)
            if url is None:
                time.sleep(1)
                continue
            try:
                r = requests.get(url + "/sdapi/v1/sd-models", timeout=5)
                if r.status_code == 200:
                    assert isinstance(r.json(), list)
                    assert requests.get(url + "/", timeout=10).status_code == 200
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(1)
        pytest.fail(f"webui.sh did not serve within {timeout} s:\n{log_path.read_text()[-6000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.launcher
def test_webui_sh_installs_then_restarts_without_installing(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail("this test copies the repo with git ls-files: run it from a git checkout with git installed")
    copy = fresh_copy(tmp_path / "webui")
    venv = tmp_path / "throwaway-venv"
    first_log = tmp_path / "first.log"
    first = run_until_serving(copy, user_env(venv), first_log, timeout=1200)
    out = first_log.read_text()
    assert "Creating venv" in out and (venv / "bin" / "python").exists()
    assert "Installing torch" in out and "Installing requirements" in out
    if os.geteuid() == 0:
        assert "Warning:" in out and "running as root" in out
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.startswith(launch.TORCH_VERSION)

    second_log = tmp_path / "second.log"
    second = run_until_serving(copy, user_env(venv), second_log, timeout=300)
    out = second_log.read_text()
    assert "Creating venv" not in out and "Installing" not in out, out[-3000:]
    assert "Environment ready" in out
    print(f"webui.sh: first start {first:.1f} s (venv + installs), second start {second:.1f} s")
