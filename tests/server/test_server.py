"""The live server on 127.0.0.1: A1111 API routes and the page, driven over HTTP."""

from __future__ import annotations

import base64
import json
import threading
import time

import psutil
import pytest
import requests
from PIL import Image

from tests.support.server import decode, post, server, start_server, stop_server  # noqa: F401 (server: fixture)

pytestmark = pytest.mark.server


def test_txt2img_api_defaults_and_response_shape(server):
    url, data, _ = server
    r = post(url, "/sdapi/v1/txt2img", prompt="a red circle", width=64, height=64, seed=5, batch_size=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    info = json.loads(body["info"])
    assert info["seed"] == 5 and info["all_seeds"] == [5, 6] and info["steps"] == 50  # A1111's API default
    assert info["sampler_name"] == "Euler" and info["sd_model_name"] == "sd1" and len(info["sd_model_hash"]) == 10
    assert body["parameters"]["prompt"] == "a red circle" and body["parameters"]["sampler_index"] == "Euler"
    images = [decode(b) for b in body["images"]]
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert images[0].info["parameters"] == info["infotexts"][0]
    assert "Steps: 50, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 5," in info["infotexts"][0]
    assert not (data / "outputs").exists()  # the API saves only when asked (save_images)
    again = post(url, "/sdapi/v1/txt2img", prompt="a red circle", width=64, height=64, seed=5, save_images=True,
                 steps=8, sampler_name="DPM++ 2M Karras")
    assert again.status_code == 200
    saved = list((data / "outputs" / "txt2img-images").rglob("*.png"))
    assert [p.name for p in saved] == ["00000-5.png"]
    assert base64.b64decode(again.json()["images"][0]) == saved[0].read_bytes()
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in Image.open(saved[0]).info["parameters"]


def test_txt2img_firstpass_image_runs_the_hires_pass_from_it(server):
    """A1111's `firstpass_image`: with enable_hr the hires pass starts from it (its size: the first pass's), no first
    pass is sampled; without enable_hr it is ignored, with a warning here."""
    url, _, _ = server
    base = dict(prompt="a red circle", width=64, height=64, seed=5, steps=3, sampler_name="Euler")
    first = post(url, "/sdapi/v1/txt2img", **base).json()["images"][0]
    hires = dict(enable_hr=True, hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5)
    r = post(url, "/sdapi/v1/txt2img", **base, **hires, firstpass_image=first)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert decode(r.json()["images"][0]).size == (128, 128) and info["warnings"] == []
    assert "Hires upscale: 2, Hires steps: 2, Hires upscaler: Latent" in info["infotexts"][0]
    own = post(url, "/sdapi/v1/txt2img", **base, **hires).json()["images"][0]
    assert own != r.json()["images"][0]  # its own first pass gives another picture
    again = post(url, "/sdapi/v1/txt2img", **base, **hires, firstpass_image="data:image/png;base64," + first)
    assert again.json()["images"][0] == r.json()["images"][0]
    ignored = post(url, "/sdapi/v1/txt2img", **base, firstpass_image=first)
    assert json.loads(ignored.json()["info"])["warnings"] == [
        "firstpass_image is used only with enable_hr (Hires. fix, as in A1111); it was ignored"]
    bad = post(url, "/sdapi/v1/txt2img", **base, **hires, firstpass_image="bm9wZQ==")
    assert bad.status_code == 400 and "firstpass_image" in bad.text
    # A1111's hr_checkpoint_name is used (it was accepted and ignored): one that is not there is a 400
    gone = post(url, "/sdapi/v1/txt2img", **base, **hires, hr_checkpoint_name="nowhere")
    assert gone.status_code == 400 and "hr_checkpoint_name: checkpoint 'nowhere' not found" in gone.text


def test_models_list_and_switch_by_title_name_and_hash(server):
    url, _, _ = server
    models = requests.get(url + "/sdapi/v1/sd-models").json()
    names = {m["model_name"]: m for m in models}
    assert set(names) >= {"sd1", "sd2-v", "sub_sd1-inpainting"}
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert names["sd1"]["config"].endswith("sd1.yaml")
    # sd2-v is not hashed until first loaded; switch by title, then by name and by hash
    for query in ("sd2-v.safetensors", "sd2-v"):
        r = post(url, "/sdapi/v1/txt2img", width=64, height=64, steps=2,
                 override_settings={"sd_model_checkpoint": query})
        assert json.loads(r.json()["info"])["sd_model_name"] == "sd2-v"
    sd2 = {m["model_name"]: m for m in requests.get(url + "/sdapi/v1/sd-models").json()}["sd2-v"]
    assert sd2["hash"] and sd2["title"] == f"sd2-v.safetensors [{sd2['hash']}]"
    r = post(url, "/sdapi/v1/txt2img", width=64, height=64, steps=2,
             override_settings={"sd_model_checkpoint": sd2["hash"]})
    assert json.loads(r.json()["info"])["sd_model_hash"] == sd2["hash"]
    # restored afterwards: the selected checkpoint is still sd1
    assert requests.get(url + "/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("sd1.safetensors")
    r = post(url, "/sdapi/v1/txt2img", width=64, height=64, steps=2)
    assert json.loads(r.json()["info"])["sd_model_name"] == "sd1"


@pytest.mark.parametrize("body,status,needle", [
    ({"width": 513}, 400, "width must be a multiple of 8"),
    ({"steps": 0}, 400, "steps"),
    ({"sampler_name": "Magic"}, 400, "Unknown sampler 'Magic'"),
    ({"override_settings": {"sd_model_checkpoint": "ghost"}}, 400, "Checkpoint 'ghost' not found"),
    ({"width": "wide"}, 422, "width"),
])
def test_bad_input_gets_a_clear_message_and_server_keeps_running(server, body, status, needle):
    url, _, proc = server
    r = post(url, "/sdapi/v1/txt2img", **body)
    assert r.status_code == status and needle in r.text
    assert proc.poll() is None
    assert post(url, "/sdapi/v1/txt2img", width=64, height=64, steps=1).status_code == 200


def test_options_get_set_and_unknown_keys(server):
    url, _, _ = server
    opts = requests.get(url + "/sdapi/v1/options").json()
    assert opts["CLIP_stop_at_last_layers"] == 1 and opts["sd_vae"] == "Automatic"
    r = post(url, "/sdapi/v1/options", no_such_option=1, samples_save=False)
    assert r.status_code == 422 and "no_such_option" in r.text
    assert requests.get(url + "/sdapi/v1/options").json()["samples_save"] is True  # nothing applied
    assert post(url, "/sdapi/v1/options", CLIP_stop_at_last_layers=2).status_code == 200
    assert requests.get(url + "/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    assert post(url, "/sdapi/v1/options", CLIP_stop_at_last_layers=1).status_code == 200
    flags = requests.get(url + "/sdapi/v1/cmd-flags").json()
    assert flags["api"] is True and flags["listen"] is False
    samplers = requests.get(url + "/sdapi/v1/samplers").json()
    assert {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {"scheduler": "karras"}} in samplers


def test_corrupt_checkpoint_is_reported_and_previous_model_stays(server):
    url, data, proc = server
    folder = data / "models" / "Stable-diffusion"
    (folder / "zz-corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert post(url, "/sdapi/v1/refresh-checkpoints").status_code == 200
    r = post(url, "/sdapi/v1/options", sd_model_checkpoint="zz-corrupt.safetensors")
    assert r.status_code == 400 and "zz-corrupt.safetensors" in r.json()["detail"]  # asked for: a client error
    r = post(url, "/sdapi/v1/txt2img", width=64, height=64, steps=2)
    assert r.status_code == 200 and json.loads(r.json()["info"])["sd_model_name"] == "sd1"
    assert proc.poll() is None


def test_progress_and_interrupt_while_a_job_runs(server):
    url, _, _ = server
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", post(url, "/sdapi/v1/txt2img", width=64, height=64,
                                                                  steps=400, n_iter=3)))
    t.start()
    seen = None
    deadline = time.time() + 60
    while time.time() < deadline:
        p = requests.get(url + "/sdapi/v1/progress").json()
        if p["state"]["sampling_step"] > 0:
            seen = p
            break
        time.sleep(0.05)
    assert seen and 0 < seen["progress"] < 1 and seen["state"]["job_count"] == 3
    assert seen["state"]["sampling_steps"] == 400
    assert post(url, "/sdapi/v1/interrupt").status_code == 200
    t.join(120)
    info = json.loads(out["r"].json()["info"])
    assert info["interrupted"] is True and len(out["r"].json()["images"]) < 3


def test_page_is_served_with_the_a1111_layout(server):
    """The page and its Gradio config (the browser tests drive the page itself)."""
    url, _, _ = server
    page = requests.get(url + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    config = requests.get(url + "/config").json()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    for elem_id in ("sd_checkpoint", "tab_txt2img", "tab_img2img", "tab_pnginfo", "tab_settings", "txt2img_prompt",
                    "txt2img_generate", "txt2img_interrupt", "txt2img_skip", "txt2img_gallery", "img2img_image",
                    "img2maskimg", "img_inpaint_mask", "pnginfo_image", "settings_submit"):
        assert elem_id in ids, elem_id


def test_binds_to_loopback_only(server):
    _, _, proc = server
    addrs = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections(kind="tcp") if c.status == "LISTEN"}
    assert addrs == {"127.0.0.1"}


def test_api_only_server_without_checkpoints(tmp_path):
    proc, url = start_server(tmp_path, "--nowebui", "--no-builtin-model")
    try:
        assert requests.get(url + "/sdapi/v1/sd-models").json() == []
        assert requests.get(url + "/").status_code == 404  # no UI in API-only mode
        assert requests.get(url + "/docs").status_code == 200
        r = post(url, "/sdapi/v1/txt2img", width=64, height=64)
        assert r.status_code == 400 and "No checkpoint found" in r.json()["detail"]
    finally:
        stop_server(proc)


def test_out_of_memory_is_a_507_with_advice_and_other_failures_a_500():
    """The API's error handlers on a real allocation failure (the CPU allocator refusing 32 TiB)."""
    import torch
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.api import routes

    app = FastAPI()
    routes.install_error_handlers(app)

    @app.get("/huge")
    def huge():
        return {"n": torch.empty(2 ** 45, dtype=torch.uint8).numel()}

    @app.get("/broken")
    def broken():
        raise RuntimeError("the VAE fell over")

    client = TestClient(app, raise_server_exceptions=False)
    r = client.get("/huge")
    assert r.status_code == 507 and "Out of memory" in r.json()["detail"] and "allocate" in r.json()["detail"]
    r = client.get("/broken")
    assert r.status_code == 500 and r.json() == {"error": "RuntimeError", "detail": "the VAE fell over", "body": "",
                                                 "errors": "the VAE fell over"}
