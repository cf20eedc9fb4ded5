"""/sdapi/v1/history on a live server: search, one image (with its file as base64), delete, the rescan, the
API's login, ids only (no client path, no file outside the output folders), and the index left consistent by a
kill -9 in the middle of a batch."""

from __future__ import annotations

import base64
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.support.server import setup_data, start_server, stop_server

AUTH = ("hist", "s3cret-pass")
HAND_TEXT = ("a hand added lighthouse\nNegative prompt: fog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 777, "
             "Size: 32x32, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def a1111_png(path: Path, text: str) -> None:
    info = PngInfo()
    info.add_text("parameters", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (200, 100, 0)).save(path, pnginfo=info)


def poll(check, timeout: float = 120, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def rescan_done(url: str, auth=AUTH) -> dict:
    def done():
        status = requests.get(url + "/sdapi/v1/history/rescan", auth=auth, timeout=10).json()
        return status if not status["running"] and status["finished"] else None
    return poll(done, what="the history rescan")


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_dir):
    data = setup_data(tmp_path_factory.mktemp("history"), tiny_dir)
    a1111_png(data / "outputs" / "txt2img-images" / "2024-01-01" / "00003-777.png", HAND_TEXT)  # before start-up
    outside = tmp_path_factory.mktemp("elsewhere") / "secret.png"
    a1111_png(outside, HAND_TEXT.replace("lighthouse", "secret"))
    link = data / "outputs" / "txt2img-images" / "link.png"
    link.symlink_to(outside)
    proc, url = start_server(data, "--nowebui", "--api-auth", ":".join(AUTH), ready_auth=AUTH)
    yield url, data, outside
    stop_server(proc)


def get(url: str, path: str, **params):
    return requests.get(url + "/sdapi/v1" + path, params=params, auth=AUTH, timeout=60)


def test_every_history_route_needs_the_api_login(served):
    url, _, _ = served
    for method, path in (("get", "/history"), ("get", "/history/1"), ("delete", "/history/1"),
                         ("post", "/history/rescan"), ("get", "/history/rescan")):
        r = requests.request(method, url + "/sdapi/v1" + path, timeout=30)
        assert r.status_code == 401, (method, path, r.text)
        r = requests.request(method, url + "/sdapi/v1" + path, auth=(AUTH[0], "wrong"), timeout=30)
        assert r.status_code == 401


def test_startup_heal_indexes_a_hand_added_png(served):
    url, data, _ = served
    rescan_done(url)
    page = get(url, "/history", q="lighthouse").json()
    assert page["total"] == 1
    item = page["items"][0]
    assert item["path"] == "txt2img-images/2024-01-01/00003-777.png"  # relative to outputs/
    assert (item["seed"], item["negative_prompt"], item["model"], item["kind"]) == \
        (777, "fog", "v1-5-pruned-emaonly", "txt2img")
    assert get(url, "/history", seed=777).json()["total"] == 2  # and the link (whose file is not served)


def test_generated_images_are_searchable_fetched_and_deleted(served):
    url, data, _ = served
    r = requests.post(url + "/sdapi/v1/txt2img", auth=AUTH, timeout=300, json=dict(
        prompt="a purple triangle", negative_prompt="noise", width=64, height=64, steps=2, seed=31337,
        batch_size=2, save_images=True))
    assert r.status_code == 200, r.text
    page = get(url, "/history", q="purple triangle", limit=10).json()
    assert page["total"] == 3  # two images and their grid
    assert sorted(i["kind"] for i in page["items"]) == ["grid", "txt2img", "txt2img"]
    assert get(url, "/history", q="purple", limit=1, offset=1).json()["items"][0]["id"] == page["items"][1]["id"]
    assert get(url, "/history", q="seed:31337 kind:grid").json()["total"] == 1
    assert get(url, "/history", q="purple", model="sd1").json()["total"] == 3
    assert get(url, "/history", q="purple", model="nosuchmodel").json()["total"] == 0
    assert get(url, "/history", q="purple", since="2000-01-01", until="2001-01-01").json()["total"] == 0
    assert get(url, "/history", q="seed:x").status_code == 400

    image_item = next(i for i in page["items"] if i["kind"] == "txt2img")
    one = get(url, f"/history/{image_item['id']}").json()
    assert one["image"] is None and one["prompt"] == "a purple triangle" and one["steps"] == 2
    one = get(url, f"/history/{image_item['id']}", image="true").json()
    file = data / "outputs" / image_item["path"]
    assert base64.b64decode(one["image"]) == file.read_bytes()

    r = requests.delete(url + f"/sdapi/v1/history/{image_item['id']}", auth=AUTH, timeout=30)
    assert r.status_code == 200 and not file.exists()
    assert get(url, f"/history/{image_item['id']}").status_code == 404
    assert requests.delete(url + f"/sdapi/v1/history/{image_item['id']}", auth=AUTH, timeout=30).status_code == 404
    assert get(url, "/history", q="purple triangle").json()["total"] == 2


def test_ids_only_and_no_file_outside_the_outputs(served):
    url, data, outside = served
    assert get(url, "/history/999999").status_code == 404
    assert get(url, "/history/..%2F..%2Fconfig.json").status_code in (404, 422)
    assert get(url, "/history/abc").status_code == 422
    assert get(url, f"/history/{10 ** 30}").status_code == 404  # beyond SQLite's integers: no such image
    assert requests.delete(url + f"/sdapi/v1/history/{-10 ** 30}", auth=AUTH, timeout=30).status_code == 404
    assert get(url, "/history", seed=10 ** 30).status_code == 400
    assert get(url, "/history", q=f"seed:{10 ** 30}").status_code == 400
    assert get(url, "/history", offset=10 ** 30).json()["items"] == []
    rescan_done(url)
    linked = get(url, "/history", q="secret").json()["items"]
    assert len(linked) == 1  # indexed (it is in the folder) ...
    r = get(url, f"/history/{linked[0]['id']}", image="true")
    assert r.status_code == 404 and "secret" not in r.text  # ... but its file, outside the outputs, is not served
    assert requests.delete(url + f"/sdapi/v1/history/{linked[0]['id']}", auth=AUTH, timeout=30).status_code == 200
    assert outside.is_file()  # nor deleted


def test_rescan_route_answers_at_once_and_heals(served):
    url, data, _ = served
    rescan_done(url)
    added = data / "outputs" / "img2img-images" / "00001-5.png"
    a1111_png(added, HAND_TEXT.replace("lighthouse", "windmill"))
    r = requests.post(url + "/sdapi/v1/history/rescan", auth=AUTH, timeout=10)
    assert r.status_code == 200 and set(r.json()) >= {"running", "scanned", "added", "removed", "skipped"}
    rescan_done(url)
    item = poll(lambda: get(url, "/history", q="windmill").json()["items"], what="the new file indexed")[0]
    assert item["kind"] == "img2img"
    added.unlink()
    requests.post(url + "/sdapi/v1/history/rescan", auth=AUTH, timeout=10)
    rescan_done(url)
    assert get(url, "/history", q="windmill").json()["total"] == 0


def image_files(folder: Path) -> set[str]:
    return {os.path.realpath(os.path.join(d, n)) for d, _, names in os.walk(folder) for n in names
            if n.lower().endswith(IMAGE_SUFFIXES) and not n.startswith(".")}


def test_kill_9_mid_batch_leaves_index_and_folder_consistent_after_restart(tmp_path, tiny_dir):
    data = setup_data(tmp_path / "data", tiny_dir)
    proc, url = start_server(data, "--nowebui")
    outputs = data / "outputs"
    failures = []

    def generate():
        try:
            requests.post(url + "/sdapi/v1/txt2img", timeout=600, json=dict(
                prompt="a killed batch", width=64, height=64, steps=2, seed=5, n_iter=100, save_images=True))
        except requests.RequestException as e:  # the server is killed under it
            failures.append(e)

    client = threading.Thread(target=generate)
    client.start()
    try:
        poll(lambda: len(image_files(outputs)) >= 4, timeout=300, what="a few images of the batch")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        client.join(60)
    assert failures, "the batch finished before the kill; the test proves nothing"
    db = sqlite3.connect(str(data / "history.sqlite3"))  # whole after the kill (WAL replayed on open)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()

    proc, url = start_server(data, "--nowebui")
    try:
        rescan_done(url, auth=None)
        page = requests.get(url + "/sdapi/v1/history", params={"limit": 500}, timeout=60).json()
    finally:
        stop_server(proc)
    indexed = {os.path.realpath(outputs / i["path"]) for i in page["items"]}
    assert page["total"] == len(indexed) >= 4
    assert all(os.path.isfile(p) for p in indexed)  # every row has its file
    assert indexed == image_files(outputs)  # every image file has its row
