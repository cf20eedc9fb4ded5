"""The launchers: ./webui.sh run for real on a fresh copy of the repo with a throwaway venv, up to a
server that answers HTTP, then a second start that installs nothing (launch.py's decisions are in
tests/unit/test_launch.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import launch
from tests.support.server import URL_LINE

ROOT = Path(__file__).resolve().parents[2]


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
    # spandrel came without its dependencies: no torchvision (see requirements-nodeps.txt), and it imports
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import importlib.util as u; print(u.find_spec('torchvision') is None); "
                            "from modules.models import upscalers; print(upscalers._spandrel().__version__)"],
                           capture_output=True, text=True, check=True, cwd=copy)
    assert probe.stdout.split() == ["True", "0.4.2"], probe.stdout + probe.stderr
    # img2img color correction's libraries, blendmodes at A1111's version (without its numpy<2 pin); token merging's
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "from modules.generation import color_correction; color_correction._libraries(); "
                            "from modules.models import token_merging; "
                            "import importlib.metadata as m; print(m.version('blendmodes'))"],
                           capture_output=True, text=True, check=True, cwd=copy)
    assert probe.stdout.split() == ["2022"], probe.stdout + probe.stderr

    second_log = tmp_path / "second.log"
    second = run_until_serving(copy, user_env(venv), second_log, timeout=300)
    out = second_log.read_text()
    assert "Creating venv" not in out and "Installing" not in out, out[-3000:]
    assert "Environment ready" in out
    print(f"webui.sh: first start {first:.1f} s (venv + installs), second start {second:.1f} s")
