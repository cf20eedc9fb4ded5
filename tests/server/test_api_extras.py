"""The API beyond generation, on live servers: Extras (extra-single-image / extra-batch-images, by plain
HTTP and by webuiapi), /internal routes, CORS and gzip, and --api-server-stop's stop/restart/kill."""

from __future__ import annotations

import base64
import io
import json
import os
import time

import pytest
import requests
import webuiapi
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from modules import postprocessing
from modules.postprocessing import ExtrasParams
from tests.support.server import decode, setup_data, start_server, stop_server
from tests.support.upscalers import compact_state_dict, esrgan_state_dict, write

pytestmark = pytest.mark.server

ALLOWED = "http://allowed.example"
USERS = ("ann", "pw-1")


def picture(size=(48, 32)) -> Image.Image:
    image = Image.new("RGB", size, (200, 40, 30))
    ImageDraw.Draw(image).ellipse((8, 8, size[0] - 8, size[1] - 8), fill=(20, 60, 220))
    return image


def b64(image: Image.Image, meta: PngInfo | None = None) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def post(url, path, auth=None, **body):
    return requests.post(url + path, json=body, auth=auth, timeout=120)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir):
    """UI + API with --api-server-stop, and CORS for two origins and a pattern."""
    data = setup_data(tmp_path_factory.mktemp("extras"), tiny_dir)
    write(data / "models" / "ESRGAN" / "tiny-esrgan.pth", esrgan_state_dict())
    write(data / "models" / "RealESRGAN" / "realesr-general-x4v3.pth", compact_state_dict(scale=4), wrap="params")
    proc, url = start_server(data, "--api", "--api-server-stop", "--cors-allow-origins",
                             f"{ALLOWED}, http://b.example", "--cors-allow-origins-regex",
                             r"https://[a-z]+\.regex\.example")
    yield url, data, proc
    if proc.poll() is None:
        stop_server(proc)


# --- Extras --------------------------------------------------------------------------------------

def test_model_upscalers_are_listed_and_used_by_their_a1111_names(server):
    """Files in models/ESRGAN and models/RealESRGAN: listed by /upscalers after the plain ones (a known Real-ESRGAN
    file under A1111's name), Real-ESRGAN's also by /realesrgan-models, and used by Extras: the 4x Compact model
    once for "upscale by 4"."""
    url, data, _ = server
    listed = requests.get(url + "/sdapi/v1/upscalers", timeout=30).json()
    assert [(u["name"], u["model_name"], u["scale"]) for u in listed] == [
        ("None", None, 4), ("Lanczos", None, 4), ("Nearest", None, 4),
        ("R-ESRGAN General 4xV3", "RealESRGAN", 4), ("tiny-esrgan", "ESRGAN", 4)]
    assert listed[4]["model_path"] == str(data / "models" / "ESRGAN" / "tiny-esrgan.pth")
    assert requests.get(url + "/sdapi/v1/realesrgan-models", timeout=30).json() == [
        {"name": "R-ESRGAN General 4xV3", "scale": 4,
         "path": str(data / "models" / "RealESRGAN" / "realesr-general-x4v3.pth")}]
    for name in ("R-ESRGAN General 4xV3", "tiny-esrgan"):
        r = post(url, "/sdapi/v1/extra-single-image", image=b64(picture()), upscaler_1=name, upscaling_resize=4)
        assert r.status_code == 200, r.text
        assert decode(r.json()["image"]).size == (192, 128)
        assert r.json()["html_info"] == f"<p>Postprocess upscale by: 4, Postprocess upscaler: {name}</p>"


def test_extra_single_image_upscales_and_keeps_the_parameters(server):
    url, data, _ = server
    meta = PngInfo()
    meta.add_text("parameters", "a cat\nSteps: 5, Sampler: Euler a, Seed: 8, Size: 48x32")
    r = post(url, "/sdapi/v1/extra-single-image", image=b64(picture(), meta), upscaler_1="Lanczos",
             upscaling_resize=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"image", "html_info"}
    out = decode(body["image"])
    out.load()
    expected, text = postprocessing.run(picture(), ExtrasParams(upscaler_1="Lanczos"))
    assert out.size == (96, 64) and out.convert("RGB").tobytes() == expected.tobytes()
    assert text == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert out.info["extras"] == out.info["postprocessing"] == text
    assert out.info["parameters"] == "a cat\nSteps: 5, Sampler: Euler a, Seed: 8, Size: 48x32"
    assert body["html_info"] == f"<p>{text}</p>"
    assert not (data / "outputs").exists()  # A1111's extras API never saves
    # scale to, with a data: URL
    r = post(url, "/sdapi/v1/extra-single-image", image="data:image/png;base64," + b64(picture()), resize_mode=1,
             upscaling_resize_w=40, upscaling_resize_h=40, upscaler_1="Nearest")
    assert r.status_code == 200 and decode(r.json()["image"]).size == (40, 40)
    assert "Postprocess upscale to: 40x40, Postprocess crop to: 40x40, Postprocess upscaler: Nearest" in \
        r.json()["html_info"]
    # A1111's defaults (upscaler_1 "None"): the image comes back as it was
    r = post(url, "/sdapi/v1/extra-single-image", image=b64(picture()))
    assert r.status_code == 200 and decode(r.json()["image"]).convert("RGB").tobytes() == picture().tobytes()


def test_extra_batch_images_in_order(server):
    url, _, _ = server
    sizes = [(48, 32), (32, 32), (16, 40)]
    r = post(url, "/sdapi/v1/extra-batch-images", upscaler_1="Lanczos", upscaling_resize=1.5,
             imageList=[{"data": b64(picture(s)), "name": f"im{i}.png"} for i, s in enumerate(sizes)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "html_info"}
    assert [decode(im).size for im in body["images"]] == [(72, 48), (48, 48), (24, 56)]
    assert body["html_info"] == "<p>Postprocess upscale by: 1.5, Postprocess upscaler: Lanczos</p>"


@pytest.mark.parametrize("path,body,status,needle", [
    ("/sdapi/v1/extra-single-image", {"image": "%%% not base64 %%%"}, 400, "image: Invalid encoded image"),
    ("/sdapi/v1/extra-single-image", {"image": ""}, 400, "image: "),
    ("/sdapi/v1/extra-batch-images", {"imageList": [{"data": "PLACEHOLDER", "name": "a"},
                                                    {"data": "bm90IGFuIGltYWdl", "name": "b"}]},
     400, "imageList[1].data: Invalid encoded image"),
    ("/sdapi/v1/extra-batch-images", {"imageList": []}, 400, "imageList: send at least one image"),
    ("/sdapi/v1/extra-single-image", {"upscaler_1": "R-ESRGAN 4x+"}, 400,
     "there is no upscaler 'R-ESRGAN 4x+'; available: None, Lanczos, Nearest, R-ESRGAN General 4xV3, tiny-esrgan. "
     "Model upscalers"),
    ("/sdapi/v1/extra-single-image", {"upscaler_1": "Lanczos", "upscaler_2": "SwinIR 4x",
                                      "extras_upscaler_2_visibility": 0.5}, 400,
     "upscaler_2: there is no upscaler 'SwinIR 4x'"),
    ("/sdapi/v1/extra-single-image", {"gfpgan_visibility": 0.5}, 400, "face restoration (GFPGAN, CodeFormer) is not"),
    ("/sdapi/v1/extra-batch-images", {"codeformer_visibility": 1, "imageList": [{"data": "PLACEHOLDER", "name": "a"}]},
     400, "codeformer_visibility"),
    ("/sdapi/v1/extra-single-image", {"upscaler_1": "Lanczos", "upscaling_resize": 1000}, 400, "between 8 and 16384"),
    ("/sdapi/v1/extra-single-image", {"resize_mode": 2}, 422, "resize_mode"),
])
def test_extras_bad_input_is_refused_with_the_field_named(server, path, body, status, needle):
    url, _, proc = server
    body = json.loads(json.dumps(body).replace("PLACEHOLDER", b64(picture())))
    if path.endswith("single-image"):
        body.setdefault("image", b64(picture()))
    r = post(url, path, **body)
    assert r.status_code == status and needle in r.text, r.text
    assert proc.poll() is None


def test_webuiapi_extras(server):
    url, _, _ = server
    api = webuiapi.WebUIApi(baseurl=url + "/sdapi/v1")
    single = api.extra_single_image(picture(), upscaler_1="Lanczos", upscaling_resize=2)
    assert single.image.size == (96, 64) and single.info == "<p>Postprocess upscale by: 2, Postprocess upscaler: " \
                                                            "Lanczos</p>"
    batch = api.extra_batch_images([picture(), picture((24, 24))], upscaler_1="Nearest", resize_mode=1,
                                   upscaling_resize_w=64, upscaling_resize_h=64, upscaling_crop=False)
    assert [im.size for im in batch.images] == [(96, 64), (64, 64)]
    with pytest.raises(RuntimeError) as e:
        api.extra_single_image(picture(), upscaler_1="ESRGAN_4x")
    assert e.value.args[0] == 400 and "Lanczos" in e.value.args[1]


# --- /internal, CORS, gzip -------------------------------------------------------------------------

def test_internal_routes(server):
    url, _, _ = server
    assert requests.get(url + "/internal/ping").json() == {}
    assert requests.get(url + "/internal/pending-tasks").json() == {"size": 0, "tasks": []}
    info = requests.get(url + "/internal/sysinfo").json()
    assert {"Platform", "Python", "Version", "Torch", "Device"} <= set(info)
    text = json.dumps(info)
    assert "PATH" not in text and os.environ.get("HOME", "/nonexistent") not in text


def test_pending_tasks_lists_the_jobs_waiting_behind_the_running_one(server):
    url, _, _ = server
    import threading

    threads = [threading.Thread(target=post, args=(url, "/sdapi/v1/txt2img"),
                                kwargs=dict(prompt="x", width=64, height=64, steps=steps, seed=1))
               for steps in (400, 2, 2)]
    threads[0].start()
    deadline = time.time() + 60
    while requests.get(url + "/sdapi/v1/progress").json()["state"]["sampling_step"] == 0:
        assert time.time() < deadline
        time.sleep(0.05)
    for t in threads[1:]:
        t.start()
    pending = {}
    while time.time() < deadline and pending.get("size") != 2:
        pending = requests.get(url + "/internal/pending-tasks").json()
        time.sleep(0.05)
    assert pending["size"] == 2 and all(t.startswith("task(txt2img-") for t in pending["tasks"])
    assert post(url, "/sdapi/v1/interrupt").status_code == 200
    for t in threads:
        t.join(120)
    assert requests.get(url + "/internal/pending-tasks").json() == {"size": 0, "tasks": []}


def test_cors_only_for_the_allowed_origins(server):
    url, _, _ = server
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    for origin in (ALLOWED, "http://b.example", "https://abc.regex.example"):
        r = requests.options(url + "/sdapi/v1/txt2img", headers={"Origin": origin, **preflight})
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == origin, origin
        r = requests.get(url + "/sdapi/v1/samplers", headers={"Origin": origin})
        assert r.headers["Access-Control-Allow-Origin"] == origin
    for origin in ("http://evil.example", "https://x.regex.example.evil", "http://allowed.example.evil"):
        r = requests.options(url + "/sdapi/v1/txt2img", headers={"Origin": origin, **preflight})
        assert "Access-Control-Allow-Origin" not in r.headers, origin
        r = requests.get(url + "/sdapi/v1/samplers", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in r.headers


def test_gzip_for_large_responses_only(server):
    url, _, _ = server
    big = requests.get(url + "/sdapi/v1/options", headers={"Accept-Encoding": "gzip"})
    assert big.headers.get("Content-Encoding") == "gzip" and big.json()["samples_format"] == "png"
    small = requests.get(url + "/internal/ping", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in small.headers
    plain = requests.get(url + "/sdapi/v1/options", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers and plain.json() == big.json()


def test_server_stop_shuts_the_server_down_cleanly(server):
    """Last in this file: it ends the module's server (UI and API). The running job is interrupted and its
    answer still goes out, a queued one is answered 503, within the stop's grace whatever the machine's speed;
    then the process exits with code 0."""
    import threading

    url, data, proc = server
    out = {}
    running = threading.Thread(target=lambda: out.setdefault("running", post(
        url, "/sdapi/v1/txt2img", prompt="x", width=64, height=64, steps=1000, seed=3, force_task_id="task(stop)")))
    queued = threading.Thread(target=lambda: out.setdefault("queued", post(
        url, "/sdapi/v1/txt2img", prompt="y", width=64, height=64, steps=2, seed=4, force_task_id="task(queued)")))
    running.start()
    deadline = time.time() + 60
    while not post(url, "/internal/progress", id_task="task(stop)").json()["active"]:
        assert time.time() < deadline
        time.sleep(0.02)
    queued.start()
    while not post(url, "/internal/progress", id_task="task(queued)").json()["queued"]:
        assert time.time() < deadline
        time.sleep(0.02)
    r = post(url, "/sdapi/v1/server-stop")
    assert r.status_code == 200
    running.join(60)
    queued.join(60)
    assert out["running"].status_code == 200, (out["running"].text[:2000], (data / "server.log").read_text()[-4000:])
    assert json.loads(out["running"].json()["info"])["all_seeds"] == [3]
    assert out["queued"].status_code == 503 and "stopping" in out["queued"].json()["detail"], out["queued"].text
    assert proc.wait(60) == 0
    log = (data / "server.log").read_text()
    assert "Traceback" not in log, log[-3000:]


# --- without --api-server-stop; --api-auth over /internal; restart and kill -------------------------

def test_without_the_flag_the_stop_routes_are_absent_and_internal_needs_the_api_login(tmp_path):
    proc, url = start_server(tmp_path, "--nowebui", "--no-builtin-model", "--api-auth", ":".join(USERS),
                             ready_auth=USERS)
    try:
        for name in ("server-kill", "server-restart", "server-stop"):
            assert post(url, f"/sdapi/v1/{name}", auth=USERS).status_code == 404
        for path in ("/internal/ping", "/internal/pending-tasks", "/internal/sysinfo"):
            assert requests.get(url + path).status_code == 401
            assert requests.get(url + path, auth=USERS).status_code == 200
        assert requests.get(url + "/sdapi/v1/cmd-flags", auth=USERS).json()["api_server_stop"] is False
        assert proc.poll() is None
    finally:
        stop_server(proc)


def test_server_restart_starts_the_process_again_and_kill_ends_it(tmp_path):
    proc, url = start_server(tmp_path, "--nowebui", "--no-builtin-model", "--api-server-stop")
    log = tmp_path / "server.log"
    try:
        assert log.read_text().count("Running on local URL") == 1
        r = post(url, "/sdapi/v1/server-restart")
        assert r.status_code == 200
        deadline = time.time() + 120
        while log.read_text().count("Running on local URL") < 2 or not _answers(url):
            assert proc.poll() is None, log.read_text()[-3000:]  # the same process, started again
            assert time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert requests.get(url + "/sdapi/v1/cmd-flags").json()["api_server_stop"] is True
        try:
            r = post(url, "/sdapi/v1/server-kill")
            assert r.status_code == 200
        except requests.ConnectionError:
            pass  # the process may go before the answer is read
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            stop_server(proc)


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/internal/ping", timeout=2).status_code == 200
    except requests.RequestException:
        return False
