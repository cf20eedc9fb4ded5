"""The non-blocking job API on a live server: submit, poll, list with positions, cancel, interrupt,
callbacks only to allowed hosts; a job's result is the blocking route's response for the same request."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.support.server import (callback_receiver, setup_data, start_server, stop_server, submit_job, wait_job,
                                  wait_received)

pytestmark = pytest.mark.server

SMALL = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 3, "sampler_name": "Euler a"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir):
    data = setup_data(tmp_path_factory.mktemp("jobs"), tiny_dir)
    proc, url = start_server(data, "--api", "--api-callback-hosts", "127.0.0.1")
    yield url
    stop_server(proc)


def test_a_job_gives_the_blocking_routes_response(server):
    url = server
    created = submit_job(url, {**SMALL, "seed": 21})
    assert created.status_code == 200 and len(created.json()["id"]) == 32
    done = wait_job(url, created.json()["id"])
    assert done["status"] == "done" and done["progress"] == 1.0
    blocking = requests.post(url + "/sdapi/v1/txt2img", json={**SMALL, "seed": 21}, timeout=120).json()
    assert done["result"]["images"] == blocking["images"]
    assert json.loads(done["result"]["info"])["all_seeds"] == [21]


def test_positions_cancel_and_interrupt(server):
    url = server
    long = submit_job(url, {**SMALL, "steps": 400, "seed": 1}).json()["id"]
    queued = [submit_job(url, {**SMALL, "seed": 2 + i}).json()["id"] for i in range(2)]
    deadline = time.time() + 60
    while requests.get(f"{url}/sdapi/v1/jobs/{long}").json()["status"] != "running" and time.time() < deadline:
        time.sleep(0.05)
    listed = requests.get(url + "/sdapi/v1/jobs").json()
    assert [j["status"] for j in listed[:3]] == ["running", "queued", "queued"]
    assert [j["position"] for j in listed[:3]] == [0, 1, 2]
    assert [j["id"] for j in listed[:3]] == [long] + queued

    cancelled = requests.delete(f"{url}/sdapi/v1/jobs/{queued[0]}").json()
    assert cancelled["status"] == "cancelled"
    assert requests.get(f"{url}/sdapi/v1/jobs/{queued[1]}").json()["position"] == 1  # moved up

    interrupted = requests.delete(f"{url}/sdapi/v1/jobs/{long}")
    assert interrupted.status_code == 200
    assert wait_job(url, long)["status"] == "interrupted"
    last = wait_job(url, queued[1])
    assert last["status"] == "done" and json.loads(last["result"]["info"])["all_seeds"] == [3]
    assert requests.get(f"{url}/sdapi/v1/jobs/{queued[0]}").json()["result"] is None  # never ran

    missing = requests.get(f"{url}/sdapi/v1/jobs/0123456789abcdef0123456789abcdef")
    assert missing.status_code == 404 and "No job" in missing.json()["detail"]


def test_callbacks_go_only_to_allowed_hosts(server):
    url = server
    with callback_receiver() as (hook, received):
        refused = submit_job(url, {**SMALL, "seed": 5}, callback_url="http://example.com/hook")
        assert refused.status_code == 400 and "--api-callback-hosts" in refused.json()["detail"]
        job_id = submit_job(url, {**SMALL, "seed": 5}, callback_url=hook).json()["id"]
        wait_job(url, job_id)
        body = wait_received(received)
        assert body["id"] == job_id and body["status"] == "done"
        assert json.loads(body["result"]["info"])["all_seeds"] == [5]


def test_bad_job_requests_are_refused_with_the_field_named(server):
    url = server
    r = submit_job(url, {**SMALL, "width": 513})
    assert r.status_code == 400 and "width" in r.json()["detail"]
    r = requests.post(url + "/sdapi/v1/jobs", json={"type": "img2img", "request": SMALL})
    assert r.status_code == 400 and "init_images" in r.json()["detail"]
    r = requests.post(url + "/sdapi/v1/jobs", json={"type": "upscale", "request": {}})
    assert r.status_code == 422


def test_internal_progress_follows_a_task_by_its_forced_id(server):
    url = server

    def progress(task):
        return requests.post(url + "/internal/progress", json={"id_task": task, "id_live_preview": -1}).json()

    assert progress("task(nobody)") == {"active": False, "queued": False, "completed": False, "progress": None,
                                        "eta": None, "live_preview": None, "id_live_preview": -1,
                                        "textinfo": "Waiting..."}
    first = submit_job(url, {**SMALL, "steps": 400, "seed": 8, "force_task_id": "task(first)"}).json()["id"]
    submit_job(url, {**SMALL, "seed": 9, "force_task_id": "task(second)"})
    deadline = time.time() + 60
    seen = progress("task(first)")
    while not (seen["active"] and seen["live_preview"]) and time.time() < deadline:
        time.sleep(0.1)
        seen = progress("task(first)")
    assert seen["active"] and 0 < seen["progress"] < 1 and seen["live_preview"].startswith("data:image/png;base64,")
    assert seen["id_live_preview"] > 0
    waiting = progress("task(second)")
    assert waiting["queued"] and not waiting["active"] and waiting["textinfo"] == "In queue: 1 ahead"
    assert "task(second)" in requests.get(url + "/internal/pending-tasks").json()["tasks"]
    requests.delete(f"{url}/sdapi/v1/jobs/{first}")
    deadline = time.time() + 60
    while not progress("task(second)")["completed"] and time.time() < deadline:
        time.sleep(0.1)
    assert progress("task(first)")["completed"] and progress("task(second)")["completed"]
