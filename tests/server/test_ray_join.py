"""--ray-address: the app joins a Ray cluster that `ray start --head` started, as on a real cluster's head node
(here with Ray's token authentication on, as `ray start` turns it on where a token is set up), runs its jobs on
the replica it deployed there, and on stopping removes only what it deployed: the cluster stays up."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.server.test_ray_cluster import START_TIMEOUT, builtin_data, cluster, request_for
from tests.support.server import start_server, stop_server

pytestmark = [pytest.mark.server, pytest.mark.ray]

RAY_CLI = str(Path(sys.executable).with_name("ray"))


def head_processes(temp_dir: str, address: str) -> list[psutil.Process]:
    """The processes of the head started with `temp_dir` (they name it or its address), with their children."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info["cmdline"] or [])
        if temp_dir in line or f"--address={address}" in line:
            found.append(proc)
            try:
                found.extend(proc.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
    return found


@pytest.fixture()
def ray_head(monkeypatch):
    """A one-node Ray cluster started by the CLI with a token; yields its address. Its own temp dir (a short
    path: Ray's socket paths live under it) tells its processes from any other Ray on the machine."""
    token = secrets.token_hex(32)
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run(
        [RAY_CLI, "start", "--head", "--port", "0", "--num-cpus", str(os.cpu_count() or 1),
         "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir],
        env=env, capture_output=True, text=True, timeout=300)
    address = ""
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        address = (Path(temp_dir) / "ray_current_cluster").read_text().strip()
        # A node the user set up: the token is there, RAY_AUTH_MODE is not (the app turns it on, as `ray start` does)
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        yield address, temp_dir
    finally:
        procs = head_processes(temp_dir, address) if address else []
        for proc in procs:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_the_app_joins_a_cluster_runs_jobs_there_and_leaves_it_running(ray_head, tmp_path_factory):
    address, temp_dir = ray_head
    data = builtin_data(tmp_path_factory, "ray-join")
    proc, url = start_server(data, "--api", "--ray-address", address, "--ray-workers", "1", timeout=START_TIMEOUT)
    try:
        (replica,) = cluster(url)
        r = requests.post(url + "/sdapi/v1/txt2img", json=request_for(61), timeout=600)
        assert r.status_code == 200, r.text
        assert "Seed: 61," in r.json()["info"]
        (replica,) = cluster(url)
        assert replica["jobs_run"] == 1 and replica["state"] == "idle"
        assert psutil.Process(replica["pid"]).is_running()
    finally:
        stop_server(proc)

    # the replica this app deployed is gone; the cluster it joined is still up
    deadline = time.monotonic() + 120
    while psutil.pid_exists(replica["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not psutil.pid_exists(replica["pid"]), "the app's replica outlived it"
    names = [" ".join(p.cmdline()) for p in head_processes(temp_dir, address) if p.is_running()]
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names
