"""The page's routes against attack, over HTTP: no server file through a file input, no page without the
login (--gradio-auth, or --api-auth when it is the only one), no API description or open Gradio route
before the login. Two live servers for the module."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
import requests
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import webui
from modules import cmd_args
from tests.support.server import demo_data, start_server, stop_server

pytestmark = pytest.mark.server

API_USER = ("alice", "s3cret")
UI_USER = ("carol", "ui-pass")
PRIVATE_INFOTEXT = "private prompt\nSteps: 3, Sampler: Euler, Seed: 77, Size: 64x64"


def _png(text: str | None = None) -> bytes:
    info = PngInfo()
    if text:
        info.add_text("parameters", text)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _data_dir(tmp_path_factory, name: str) -> Path:
    return demo_data(tmp_path_factory.mktemp(name))


@pytest.fixture(scope="module")
def api_auth_server(tmp_path_factory):
    """--api --api-auth and no --gradio-auth. Beside the data: a text file and a PNG nobody uploaded."""
    data = _data_dir(tmp_path_factory, "sec_api_auth")
    secret = data / f"secret-{uuid.uuid4().hex}.txt"
    secret.write_text("the server's secret " + uuid.uuid4().hex)
    private_png = data / f"private-{uuid.uuid4().hex}.png"
    private_png.write_bytes(_png(PRIVATE_INFOTEXT))
    proc, url = start_server(data, "--api", "--api-auth", ":".join(API_USER), ready_auth=API_USER)
    yield url, data, secret, private_png
    stop_server(proc)


@pytest.fixture(scope="module")
def gradio_auth_server(tmp_path_factory):
    """--api --gradio-auth (the API with no login of its own)."""
    data = _data_dir(tmp_path_factory, "sec_gradio_auth")
    proc, url = start_server(data, "--api", "--gradio-auth", ":".join(UI_USER), ready_auth=UI_USER)
    yield url, data
    stop_server(proc)


def login(url: str, user: tuple[str, str]) -> requests.Session:
    s = requests.Session()
    r = s.post(url + "/login", data={"username": user[0], "password": user[1]}, timeout=30)
    assert r.status_code == 200, r.text
    return s


def call(s, url: str, name: str, data: list) -> tuple[int, str, object]:
    """POST /gradio_api/call/<name>, then read its event stream: (status of the POST, last event, its data)."""
    r = s.post(f"{url}/gradio_api/call/{name}", json={"data": data}, timeout=30)
    if r.status_code != 200:
        return r.status_code, "", r.text
    stream = s.get(f"{url}/gradio_api/call/{name}/{r.json()['event_id']}", timeout=120)
    event, payload = "", None
    for line in stream.text.splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            payload = json.loads(line[len("data: "):])
    return r.status_code, event, payload


def api_name(s, url: str, elem_id: str, trigger: str) -> str:
    """The api_name of the page's event `trigger` (click, change, ...) of the component `elem_id`."""
    config = s.get(url + "/config").json()
    target = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id)
    return next(d["api_name"] for d in config["dependencies"] if [target, trigger] in [list(t) for t in d["targets"]])


def file_data(path, meta: object = "FileData") -> dict:
    """Gradio's file object; `meta` None leaves the marker out, anything else replaces it."""
    value = {"path": str(path)}
    if meta is not None:
        value["meta"] = {"_type": "gradio.FileData"} if meta == "FileData" else meta
    return value


def upload(s, url: str, content: bytes, name: str = "upload.png") -> str:
    r = s.post(url + "/gradio_api/upload", files={"files": (name, content, "image/png")}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()[0]


def file_value(python_type: str, path, meta: object = "FileData"):
    """A value for a parameter of this Gradio type whose every file is `path`; None for other types."""
    f = file_data(path, meta)
    if python_type == "filepath":
        return f
    if python_type == "list[filepath]":
        return [f]
    if python_type.startswith("dict(background"):  # ImageEditor
        return {"background": f, "layers": [f], "composite": f, "id": None}
    if python_type.startswith("list[dict(image"):  # Gallery
        return [{"image": f, "caption": None}]
    return None


def file_endpoints(info: dict) -> dict[str, list]:
    """Every named endpoint with a file parameter -> its data with each file parameter set to None (to be
    filled) and the others at their defaults."""
    out = {}
    for name, endpoint in info["named_endpoints"].items():
        types = [p.get("python_type", {}).get("type", "") for p in endpoint["parameters"]]
        if any(file_value(t, "x") is not None for t in types):
            out[name.lstrip("/")] = endpoint["parameters"]
    return out


def endpoint_data(parameters: list, path, meta: object = "FileData") -> list:
    data = []
    for p in parameters:
        value = file_value(p.get("python_type", {}).get("type", ""), path, meta)
        data.append(value if value is not None else p.get("parameter_default"))
    return data


# --- --api-auth alone guards the page ---------------------------------------------------------------

def test_api_auth_guards_the_ui_when_there_is_no_gradio_auth(api_auth_server):
    url, data, _, _ = api_auth_server
    anonymous = requests.Session()
    assert anonymous.get(url + "/config").status_code == 401
    assert anonymous.get(url + "/gradio_api/info").status_code == 401
    # generating, changing settings (output folders), server folders (Extras batch from directory, Save)
    for name in ("txt2img", "img2img", "apply_settings", "run", "save"):
        assert anonymous.post(f"{url}/gradio_api/call/{name}", json={"data": []}).status_code == 401, name
        assert anonymous.post(f"{url}/gradio_api/run/{name}", json={"data": []}).status_code == 401, name
    join = anonymous.post(url + "/gradio_api/queue/join",
                          json={"data": [], "fn_index": 0, "session_hash": "attacker", "trigger_id": None})
    assert join.status_code == 401
    upload = {"files": ("a.png", _png(), "image/png")}
    assert anonymous.post(url + "/gradio_api/upload", files=upload).status_code == 401
    assert anonymous.post(url + "/login", data={"username": "alice", "password": "wrong"}).status_code == 400
    # the API's login opens the page, and with it the /internal routes
    s = login(url, API_USER)
    assert s.get(url + "/gradio_api/info").status_code == 200
    for path in ("/internal/ping", "/internal/pending-tasks"):
        assert anonymous.get(url + path).status_code == 401
        assert s.get(url + path).status_code == 200
        assert requests.get(url + path, auth=API_USER).status_code == 200
    assert "The UI asks for the --api-auth login" in (data / "server.log").read_text()


def test_listen_without_gradio_auth_but_with_api_auth_leaves_nothing_open():
    def parse(*argv):
        return cmd_args.parse(["--listen", *argv])

    assert webui.unprotected_parts(parse("--api", "--api-auth", "a:b")) == []
    assert webui.ui_login_note(parse("--api-auth", "a:b")).startswith("The UI asks for the --api-auth login")
    assert webui.ui_login_note(parse("--gradio-auth", "a:b", "--api-auth", "c:d")) == \
        "The UI asks for a --gradio-auth login."
    assert webui.ui_login_note(parse()).startswith("The UI needs no login")


# --- file inputs take uploads only ------------------------------------------------------------------

def test_no_file_input_takes_a_path_on_the_server(api_auth_server):
    """Every endpoint with a file parameter, sent a FileData naming a server file (a text file, a PNG,
    /proc/self/cmdline; the PNG also without Gradio's FileData marker, which gr.Image and gr.Gallery would
    take unchecked): refused before the function runs; no copy in Gradio's cache; nothing to fetch."""
    url, data, secret, private_png = api_auth_server
    s = login(url, API_USER)
    endpoints = file_endpoints(s.get(url + "/gradio_api/info").json())
    expected = {api_name(s, url, elem_id, trigger) for elem_id, trigger in (
        ("pnginfo_image", "change"), ("img2img_generate", "click"), ("extras_generate", "click"),
        ("txt2img_save", "click"), ("pnginfo_send_to_extras", "click"))}
    assert expected <= set(endpoints) and len(endpoints) >= 10, sorted(endpoints)
    secret_text = secret.read_text()
    attempts = [(secret, "FileData"), (private_png, "FileData"), ("/proc/self/cmdline", "FileData"),
                (private_png, None), (private_png, {"_type": "not.FileData"})]
    for path, meta in attempts:
        for name, parameters in endpoints.items():
            status, event, payload = call(s, url, name, endpoint_data(parameters, path, meta))
            text = json.dumps(payload)
            assert status == 200 and event == "error", (name, path, meta, event, text[:300])
            assert "not uploaded by a user" in text, (name, path, meta, text[:300])
            assert secret_text not in text and "private prompt" not in text and "/gradio/" not in text
    for name in (secret.name, private_png.name):
        assert not list(Path(_upload_folder()).rglob(name)), name  # never copied into Gradio's cache
    for path in (secret, private_png, data / "config.json", "/proc/self/cmdline"):
        assert s.get(f"{url}/gradio_api/file={path}").status_code == 403, path


def _upload_folder() -> str:
    from gradio.utils import get_upload_folder

    return get_upload_folder()


def test_uploaded_files_and_the_apps_own_outputs_still_work(api_auth_server):
    url, data, _, _ = api_auth_server
    s = login(url, API_USER)
    uploaded = upload(s, url, _png("uploaded prompt\nSteps: 5, Sampler: Euler, Seed: 3, Size: 16x16"))
    _, event, payload = call(s, url, api_name(s, url, "pnginfo_image", "change"), [file_data(uploaded)])
    assert event == "complete" and payload[1].startswith("uploaded prompt"), payload
    # Save: the gallery item goes back to the server, is copied to log/images and offered as a download
    save = api_name(s, url, "txt2img_save", "click")
    _, event, payload = call(s, url, save, [[{"image": file_data(uploaded), "caption": None}]])
    assert event == "complete", payload
    download = payload[0]["value"]  # gr.File(value=..., visible=True): an update
    saved = list((data / "log" / "images").glob("*.png"))
    assert len(saved) == 1 and download["orig_name"] == saved[0].name
    r = s.get(url + download["url"][download["url"].index("/gradio_api/"):])
    assert r.status_code == 200 and r.content == saved[0].read_bytes()


# --- --gradio-auth: nothing before the login but the login page ------------------------------------

def test_the_login_page_does_not_describe_the_api(gradio_auth_server):
    url, _ = gradio_auth_server
    for encoding in ("identity", "gzip, deflate, br"):
        page = requests.get(url + "/", headers={"Accept-Encoding": encoding})
        assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")
        for leak in ("txt2img-images", "log/images", "shapes-tiny", "/txt2img", "apply_settings"):
            assert leak not in page.text, (encoding, leak)
    logged_in = login(url, UI_USER).get(url + "/").text
    assert "txt2img-images" in logged_in and "shapes-tiny" in logged_in  # what the login page had leaked


def test_every_route_of_the_page_but_the_login_page_needs_the_login(gradio_auth_server):
    url, _ = gradio_auth_server
    anonymous = requests.Session()
    body = {"event_id": "e", "session_hash": "s", "fn_index": 0}
    assert anonymous.post(url + "/gradio_api/cancel", json=body).status_code == 401
    assert anonymous.post(url + "/gradio_api/reset", json=body).status_code == 401
    assert anonymous.get(url + "/gradio_api/heartbeat/s", timeout=10).status_code == 401
    assert anonymous.get(url + "/gradio_api/queue/data", params={"session_hash": "s"}).status_code == 401
    assert anonymous.post(url + "/gradio_api/stream/e/close").status_code == 401
    assert anonymous.get(url + "/gradio_api/runs").status_code == 401
    for path in ("/theme.css", "/manifest.json"):
        assert anonymous.get(url + path).status_code == 200, path
    s = login(url, UI_USER)
    assert s.post(url + "/gradio_api/cancel", json=body).status_code == 200
    assert s.post(url + "/gradio_api/reset", json=body).status_code == 200
    with s.get(url + "/gradio_api/heartbeat/s", stream=True, timeout=10) as beat:
        assert beat.status_code == 200
    s.get(url + "/logout")
    assert s.post(url + "/gradio_api/cancel", json=body).status_code == 401


def test_internal_routes_follow_the_ui_login(gradio_auth_server):
    url, _ = gradio_auth_server
    routes = [("GET", "/internal/ping", None), ("GET", "/internal/pending-tasks", None),
              ("GET", "/internal/sysinfo", None), ("POST", "/internal/progress", {"id_task": "task(x)"})]
    for method, path, body in routes:
        assert requests.request(method, url + path, json=body).status_code == 401, path
        assert requests.request(method, url + path, json=body, auth=("x", "y")).status_code == 401, path
        assert requests.request(method, url + path, json=body, auth=UI_USER).status_code == 200, path
    s = login(url, UI_USER)
    for method, path, body in routes:
        assert s.request(method, url + path, json=body).status_code == 200, path


def test_gradio_auth_also_guards_the_api(gradio_auth_server):
    """--gradio-auth without --api-auth: the API (same engine, same queue) asks for the page's users with HTTP
    Basic; A1111 leaves it open then. The page's session alone does not open it (no cross-site requests ride
    on the page's cookie)."""
    url, data = gradio_auth_server
    routes = [("GET", "/sdapi/v1/options", None), ("GET", "/sdapi/v1/sd-models", None),
              ("POST", "/sdapi/v1/options", {"outdir_samples": ""}), ("POST", "/sdapi/v1/interrupt", None),
              ("GET", "/sdapi/v1/progress", None), ("GET", "/sdapi/v1/jobs", None)]
    for method, path, body in routes:
        assert requests.request(method, url + path, json=body, timeout=30).status_code == 401, path
        assert requests.request(method, url + path, json=body, auth=("x", "y"), timeout=30).status_code == 401, path
        assert login(url, UI_USER).request(method, url + path, json=body, timeout=30).status_code == 401, path
        assert requests.request(method, url + path, json=body, auth=UI_USER, timeout=30).status_code == 200, path
    r = requests.post(url + "/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64},
                      timeout=30)
    assert r.status_code == 401 and not list((data / "outputs").rglob("*.png"))
