"""Live servers for tests: webui.py started on 127.0.0.1 in its own process, stopped with its process group,
over a data folder made from the tiny checkpoints."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


URL_LINE = re.compile(r"Running on local URL: (http://[^\s]+)")


def start_server(data: Path, *args: str, timeout: float = 180, ready_auth: tuple[str, str] | None = None,
                 runner: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """webui.py on 127.0.0.1 with --port 0: the server takes a free port itself and its log says which (a port
    picked here and handed over could be taken by another process in between). `runner`: a Python script (and
    its arguments) that runs webui.py, e.g. tests/support/netguard.py RECORD."""
    log_path = data / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, *runner, str(ROOT / "webui.py"), "--port", "0", "--data-dir", str(data),
         "--skip-torch-cuda-test", *args],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "COMMANDLINE_ARGS": ""})
    log.close()  # the child has its own copy
    deadline = time.time() + timeout
    url = None
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()}")
        if url is None:
            m = URL_LINE.search(log_path.read_text())
            url = m and m.group(1)
        if url:
            try:
                if requests.get(url + "/sdapi/v1/sd-models", timeout=2, auth=ready_auth).status_code == 200:
                    return proc, url
            except requests.RequestException:
                pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"server did not start:\n{log_path.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (its shutdown path), then SIGKILL to whatever of the group is
    left: a process the server forked must not outlive the test."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except ProcessLookupError:  # already gone
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is empty: nothing was left
        pass


def demo_data(data: Path) -> Path:
    """`data` as a data folder with no checkpoint of its own: the built-in demo model is selected."""
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    return data


def setup_data(data: Path, tiny_dir: Path) -> Path:
    """`data` as a data folder holding the tiny checkpoints, with sd1.safetensors selected."""
    shutil.copytree(tiny_dir, data / "models" / "Stable-diffusion")
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": "sd1.safetensors"}))
    return data


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir):
    """webui.py --api over the tiny checkpoints, one per test module. Yields (url, data_dir, proc)."""
    data = setup_data(tmp_path_factory.mktemp("server"), tiny_dir)
    proc, url = start_server(data, "--api")
    yield url, data, proc
    stop_server(proc)


def submit_job(url: str, request: dict, kind: str = "txt2img", **extra) -> requests.Response:
    """POST /sdapi/v1/jobs (the job API) with `request` as the body /sdapi/v1/txt2img or /img2img takes."""
    return requests.post(url + "/sdapi/v1/jobs", json={"type": kind, "request": request, **extra}, timeout=60)


def job_status(url: str, job_id: str) -> dict:
    """GET /sdapi/v1/jobs/{job_id}: the job API's status of a job."""
    r = requests.get(f"{url}/sdapi/v1/jobs/{job_id}", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_job(url: str, job_id: str, timeout: float = 120) -> dict:
    """The job's status once it is no longer queued or running (AssertionError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        status = job_status(url, job_id)
        if status["status"] not in ("queued", "running"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {status.get('status')} after {timeout} s")


@contextmanager
def callback_receiver() -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server on 127.0.0.1 (a port the system picks) that keeps the JSON bodies POSTed to it: yields its
    URL and the list they are appended to."""
    received: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{receiver.server_port}/hook", received
    finally:
        receiver.shutdown()
        receiver.server_close()


def wait_received(received: list[dict], timeout: float = 30) -> dict:
    """The first body a callback_receiver got (AssertionError when none came within `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert received, f"no callback within {timeout} s"
    return received[0]


def post(url, path, **body):
    return requests.post(url + path, json=body, timeout=300)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))
