"""--ray-workers: generation jobs run on Ray Serve replicas behind the same API (modules/cluster). Live servers on
127.0.0.1 with the built-in demo model; the reference images come from a server without Ray."""

from __future__ import annotations

import base64
import io
import os
import signal
import threading
import time

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from tests.support.server import start_server, stop_server, submit_job, wait_job
from tools.shapes_world import Scene, render

pytestmark = [pytest.mark.server, pytest.mark.ray]

START_TIMEOUT = 600  # Ray, two replicas importing torch, on two shared cores
PROMPTS = ("a red circle on a blue background", "a green square on a yellow background",
           "a blue triangle on a white background")


def builtin_data(tmp_path_factory, name: str):
    data = tmp_path_factory.mktemp(name)
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    return data


@pytest.fixture(scope="module")
def ray_server(tmp_path_factory):
    data = builtin_data(tmp_path_factory, "ray")
    proc, url = start_server(data, "--api", "--ray-workers", "2", timeout=START_TIMEOUT)
    yield url, data, proc
    stop_server(proc)


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    data = builtin_data(tmp_path_factory, "plain")
    proc, url = start_server(data, "--api")
    yield url
    stop_server(proc)


def request_for(seed: int, steps: int = 3, n_iter: int = 1) -> dict:
    return {"prompt": PROMPTS[seed % len(PROMPTS)], "seed": seed, "steps": steps, "width": 64, "height": 64,
            "sampler_name": "Euler a", "n_iter": n_iter}


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def cluster(url: str) -> list[dict]:
    r = requests.get(url + "/sdapi/v1/cluster", timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["replicas"]


def started_job(url: str, body: dict) -> str:
    """The id of a txt2img job queued through the job API."""
    r = submit_job(url, body)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def run_job_api(url: str, body: dict, timeout: float = 600) -> dict:
    return wait_job(url, started_job(url, body), timeout)


def test_jobs_from_six_clients_run_on_both_replicas_and_equal_the_single_process_images(ray_server, plain_server):
    url = ray_server[0]
    before = {r["id"]: r["jobs_run"] for r in cluster(url)}
    assert len(before) == 2
    results: dict[int, tuple[str, str]] = {}  # seed -> (image, infotext)
    errors: list[str] = []

    def client(k: int) -> None:
        try:
            first, second = 100 + 2 * k, 101 + 2 * k
            status = run_job_api(url, request_for(first))  # the job API ...
            assert status["status"] == "done", status
            results[first] = (status["result"]["images"][0], status["result"]["info"])
            r = requests.post(url + "/sdapi/v1/txt2img", json=request_for(second), timeout=600)  # ... and blocking
            assert r.status_code == 200, r.text
            results[second] = (r.json()["images"][0], r.json()["info"])
        except Exception as e:  # reported below, with the others
            errors.append(f"client {k}: {e!r}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    assert not errors, errors
    assert sorted(results) == list(range(100, 112))
    for seed, (_, info) in results.items():
        assert f"Seed: {seed}," in info, (seed, info)

    after = {r["id"]: r["jobs_run"] for r in cluster(url)}
    ran = {rid: after[rid] - before.get(rid, 0) for rid in after}
    assert sum(ran.values()) == 12, ran
    assert all(n >= 1 for n in ran.values()), f"a replica ran no job: {ran}"

    for seed, (image, _) in sorted(results.items()):  # the same request without Ray: the same pixels
        r = requests.post(plain_server + "/sdapi/v1/txt2img", json=request_for(seed), timeout=600)
        assert r.status_code == 200, r.text
        assert np.array_equal(pixels(image), pixels(r.json()["images"][0])), f"seed {seed} differs"


def test_img2img_on_a_replica_equals_the_single_process_image(ray_server, plain_server):
    source = io.BytesIO()
    Image.fromarray(render(Scene("red", "circle", "blue", 32, 32, 36))).save(source, format="PNG")
    body = {**request_for(31), "init_images": [base64.b64encode(source.getvalue()).decode()],
            "denoising_strength": 0.6}
    answers = [requests.post(url + "/sdapi/v1/img2img", json=body, timeout=600) for url in (ray_server[0],
                                                                                         plain_server)]
    for r in answers:
        assert r.status_code == 200, r.text
    assert "Denoising strength: 0.6" in answers[0].json()["info"]
    assert np.array_equal(pixels(answers[0].json()["images"][0]), pixels(answers[1].json()["images"][0]))


def test_a_job_whose_replica_is_killed_finishes_on_another(ray_server):
    url = ray_server[0]
    job_id = started_job(url, request_for(7, steps=30, n_iter=4))
    deadline = time.monotonic() + 300
    victim = None
    while victim is None and time.monotonic() < deadline:
        victim = next((rep for rep in cluster(url) if rep["running"] and rep["state"] == "busy"), None)
        time.sleep(0.2)
    assert victim is not None, "no replica took the job"
    os.kill(victim["pid"], signal.SIGKILL)

    status = wait_job(url, job_id, deadline - time.monotonic())
    assert status["status"] == "done", status
    images = status["result"]["images"]
    assert len(images) == 4
    assert "Seed: 7," in status["result"]["info"]

    replicas = {rep["id"]: rep for rep in cluster(url)}
    assert replicas[victim["id"]]["state"] == "dead"
    # Serve starts a replacement, which registers under a new id
    while time.monotonic() < deadline:
        live = [rep for rep in cluster(url) if rep["state"] != "dead"]
        if len(live) == 2:
            break
        time.sleep(0.5)
    assert len(live) == 2 and victim["id"] not in {rep["id"] for rep in live}, cluster(url)

    # and the server goes on: another job runs
    r = requests.post(url + "/sdapi/v1/txt2img", json=request_for(8), timeout=600)
    assert r.status_code == 200 and "Seed: 8," in r.json()["info"], r.text


def test_interrupting_a_job_reaches_its_replica(ray_server):
    url = ray_server[0]
    job_id = started_job(url, request_for(9, steps=40, n_iter=20))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # until it runs on a replica and has finished its first image
        status = requests.get(f"{url}/sdapi/v1/jobs/{job_id}", timeout=30).json()
        if status["status"] == "running" and status["state"].get("job_no", 0) >= 1:
            break
        time.sleep(0.2)
    assert status["status"] == "running", status
    assert requests.delete(f"{url}/sdapi/v1/jobs/{job_id}", timeout=30).json()["status"] in ("running",
                                                                                               "interrupted")
    status = wait_job(url, job_id, deadline - time.monotonic())
    assert status["status"] == "interrupted", status
    assert 1 <= len(status["result"]["images"]) < 20  # what it had made when the replica stopped


def test_without_ray_the_process_is_the_one_replica(plain_server):
    requests.post(plain_server + "/sdapi/v1/txt2img", json=request_for(1), timeout=600).raise_for_status()
    (replica,) = cluster(plain_server)
    assert replica["id"] == "local" and replica["state"] == "idle" and replica["running"] is None
    assert replica["checkpoint"] == "builtin/shapes-tiny.safetensors" and replica["jobs_run"] >= 1


def test_stopping_the_server_leaves_no_ray_process(tmp_path_factory, monkeypatch):
    data = builtin_data(tmp_path_factory, "ray-stop")
    # a Ray cluster named in the environment (here one that does not exist) is not joined: --ray-workers starts
    # its own instance (ray.init would otherwise connect to it and, here, fail)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    proc, url = start_server(data, "--api", "--ray-workers", "1", timeout=START_TIMEOUT)
    try:
        assert len(cluster(url)) == 1
        family = [p for p in psutil.Process(proc.pid).children(recursive=True)]
        assert any("raylet" in " ".join(p.cmdline()) for p in family), [p.cmdline()[:2] for p in family]
        proc.send_signal(signal.SIGTERM)  # to the server only, as a service manager stops it
        proc.wait(120)
        deadline = time.monotonic() + 60
        left = family
        while left and time.monotonic() < deadline:
            left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.5)
        assert not left, [(p.pid, p.cmdline()[:2]) for p in left]
    finally:
        stop_server(proc)
