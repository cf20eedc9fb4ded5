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

from tests.support.server import (callback_receiver, job_status, start_server, stop_server, submit_job,
                                  wait_job, wait_received)
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
    proc, url = start_server(data, "--api", "--ray-workers", "2", "--api-callback-hosts", "127.0.0.1",
                             timeout=START_TIMEOUT)
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


def wait_live(url: str, count: int, deadline: float) -> list[dict]:
    """The replicas that are not dead, once there are `count` of them or the `deadline` (monotonic) has passed."""
    while True:
        live = [rep for rep in cluster(url) if rep["state"] != "dead"]
        if len(live) == count or time.monotonic() >= deadline:
            return live
        time.sleep(0.5)


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


def wait_running(url: str, job_id: str, images_done: int = 0, timeout: float = 300) -> dict:
    """The job's status once it runs on a replica and has finished `images_done` images."""
    deadline = time.monotonic() + timeout
    status = job_status(url, job_id)
    while time.monotonic() < deadline:
        if status["status"] == "running" and status["state"].get("job_no", 0) >= images_done:
            return status
        assert status["status"] in ("queued", "running"), status
        time.sleep(0.2)
        status = job_status(url, job_id)
    raise AssertionError(f"job {job_id} did not get to image {images_done + 1}: {status}")


def test_a_clients_answers_keep_its_order_while_another_clients_go_on(ray_server):
    """A client's short job that ends on one replica while its earlier long job runs on the other is answered
    (status, callback) only after the long one; another client's job is answered as soon as it ends."""
    url = ray_server[0]
    long = started_job(url, request_for(41, steps=40, n_iter=30))
    wait_running(url, long)
    with callback_receiver() as (hook, received):
        r = submit_job(url, request_for(42), callback_url=hook)  # the same client: this address
        assert r.status_code == 200, r.text
        short = r.json()["id"]
        other = requests.post(url + "/sdapi/v1/jobs", json={"type": "txt2img", "request": request_for(43)},
                              auth=("another-client", "x"), timeout=60)  # no --api-auth: the name tells clients apart
        assert other.status_code == 200, other.text
        # Two replicas: `other` starts only when `short` has ended on the replica next to the long job's
        finished = wait_job(url, other.json()["id"], 300)
        assert finished["status"] == "done" and "Seed: 43," in finished["result"]["info"], finished
        held = job_status(url, short)
        assert held["status"] == "running" and held["result"] is None, held  # ended, held for the long job
        assert job_status(url, long)["status"] == "running"
        assert not received  # the callback is an answer too
        requests.delete(f"{url}/sdapi/v1/jobs/{long}", timeout=30).raise_for_status()  # let it end now
        assert wait_job(url, long, 300)["status"] == "interrupted"
        answered = wait_job(url, short, 60)
        assert answered["status"] == "done" and "Seed: 42," in answered["result"]["info"], answered
        body = wait_received(received)
        assert body["id"] == short and body["status"] == "done" and "Seed: 42," in body["result"]["info"]


def test_skip_reaches_the_replica_and_the_job_goes_on(ray_server, plain_server):
    url = ray_server[0]
    body = request_for(51, steps=60, n_iter=3)
    job_id = started_job(url, body)
    status = wait_running(url, job_id)
    deadline = time.monotonic() + 300
    while status["state"]["sampling_step"] < 2 and status["state"]["job_no"] == 0:
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
        status = job_status(url, job_id)
    assert status["state"]["job_no"] == 0, f"the first image ended before the skip could be sent: {status}"
    requests.post(url + "/sdapi/v1/skip", timeout=30).raise_for_status()
    skipped = wait_job(url, job_id, 300)
    assert skipped["status"] == "done", skipped  # a skip abandons one image, not the job
    full = requests.post(plain_server + "/sdapi/v1/txt2img", json=body, timeout=600)
    assert full.status_code == 200, full.text
    got, want = skipped["result"]["images"], full.json()["images"]
    assert len(got) == len(want) == 3
    # One image stopped early (the first, unless the skip reached the replica only after it ended), the others
    # are as asked: the skip was passed on, once, and the job went on
    same = [np.array_equal(pixels(a), pixels(b)) for a, b in zip(got, want)]
    assert same.count(False) == 1, same


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
    live = wait_live(url, 2, deadline)
    assert len(live) == 2 and victim["id"] not in {rep["id"] for rep in live}, cluster(url)

    # and the server goes on: another job runs
    r = requests.post(url + "/sdapi/v1/txt2img", json=request_for(8), timeout=600)
    assert r.status_code == 200 and "Seed: 8," in r.json()["info"], r.text


def test_a_job_whose_replicas_die_twice_fails_with_the_reason_and_the_server_goes_on(ray_server):
    url = ray_server[0]
    task = "task(dies-twice)"  # what /sdapi/v1/cluster shows as the replica's running job
    job_id = started_job(url, {**request_for(71, steps=30, n_iter=40), "force_task_id": task})
    killed: list[str] = []
    deadline = time.monotonic() + 300
    status = job_status(url, job_id)
    while len(killed) < 2 and status["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, (status, cluster(url))
        victim = next((rep for rep in cluster(url)
                       if rep["running"] == task and rep["state"] == "busy" and rep["id"] not in killed), None)
        if victim is not None:
            os.kill(victim["pid"], signal.SIGKILL)
            killed.append(victim["id"])
        time.sleep(0.2)
        status = job_status(url, job_id)
    status = wait_job(url, job_id, deadline - time.monotonic())
    assert status["status"] == "failed" and "failed on 2 replicas" in status["error"], status
    assert "died while running it" in status["error"] and killed, (killed, status)

    wait_live(url, 2, deadline)  # replaced, and the server goes on
    r = requests.post(url + "/sdapi/v1/txt2img", json=request_for(72), timeout=600)
    assert r.status_code == 200 and "Seed: 72," in r.json()["info"], r.text


def test_interrupting_a_job_reaches_its_replica(ray_server):
    url = ray_server[0]
    job_id = started_job(url, request_for(9, steps=40, n_iter=20))
    deadline = time.monotonic() + 300
    wait_running(url, job_id, images_done=1)
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
