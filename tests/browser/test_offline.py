"""The offline promise, proven: the server runs under a network guard (tests/support/netguard.py, an audit hook
that records and refuses every attempt to reach another machine, in the server and in any process it forks)
through a whole session: start-up, checkpoint loads, txt2img, img2img, Extras, the OpenVINO backend's
conversion, every tab of the page in Chromium, a generation from the page, and shutdown. Chromium resolves no
name but loopback, and every request the page makes is recorded. Nothing may leave the machine.
(tests/unit/test_netguard.py shows the guard catches what it must.)"""

from __future__ import annotations

import base64
import io

import pytest
import requests
from PIL import Image

from tests.support import netguard
from tests.support.browser import (BROWSER_ARGS, chromium_path, fill_text, open_app, set_number,
                                   wait_for_gallery)
from tests.support.server import ROOT, decode, setup_data, start_server, stop_server
from tests.support.tabs import open_tab, wait_idle

pytestmark = pytest.mark.server

# Chromium may resolve nothing but loopback: a font or script from a CDN would fail (and be recorded below).
NO_NAMES = "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"
TABS = ("txt2img", "img2img", "extras", "pnginfo", "history", "modelmerger", "settings")


def png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def post(url: str, path: str, **body) -> dict:
    r = requests.post(url + path, json=body, timeout=300)
    assert r.status_code == 200, (path, r.status_code, r.text[:500])
    return r.json()


def test_a_whole_session_never_leaves_the_machine(tmp_path, tiny_dir):
    from playwright.sync_api import sync_playwright

    data = setup_data(tmp_path / "data", tiny_dir)
    record = tmp_path / "network.jsonl"
    proc, url = start_server(data, "--api", runner=(str(ROOT / "tests" / "support" / "netguard.py"), str(record)))
    page_requests: list[str] = []
    try:
        # the API: a generation on the checkpoint loaded at start-up, a switch to another, img2img and Extras
        first = post(url, "/sdapi/v1/txt2img", prompt="a red circle", steps=2, width=64, height=64, seed=1)
        assert decode(first["images"][0]).size == (64, 64)
        titles = [m["title"] for m in requests.get(url + "/sdapi/v1/sd-models", timeout=30).json()]
        other = next(t for t in titles if t.startswith("sd2-v"))
        post(url, "/sdapi/v1/options", sd_model_checkpoint=other)
        # a title gains " [hash]" once the file's SHA-256, computed in the background after the load, is known:
        # whether it has by now is a race, so the file's name is what is compared
        now = requests.get(url + "/sdapi/v1/options", timeout=30).json()["sd_model_checkpoint"]
        assert now.split(" [")[0] == other.split(" [")[0] == "sd2-v.safetensors", now
        made = post(url, "/sdapi/v1/img2img", prompt="a blue square", init_images=[first["images"][0]],
                    denoising_strength=0.5, steps=2, width=64, height=64, seed=2)
        assert decode(made["images"][0]).size == (64, 64)
        extras = post(url, "/sdapi/v1/extra-single-image", image=png_b64(Image.new("RGB", (32, 24), (9, 99, 199))),
                      upscaling_resize=2, upscaler_1="Lanczos")
        assert decode(extras["image"]).size == (64, 48)
        # the OpenVINO backend: its converter is the library found sending usage statistics
        post(url, "/sdapi/v1/options", unet_backend="OpenVINO")
        post(url, "/sdapi/v1/txt2img", prompt="a green triangle", steps=2, width=64, height=64, seed=3)
        post(url, "/sdapi/v1/options", unet_backend="PyTorch")

        # the page: every tab rendered, and a generation from it
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium_path(), args=[*BROWSER_ARGS, NO_NAMES])
            try:
                page = open_app(browser, url, on_request=lambda r: page_requests.append(r.url))
                for tab in TABS:
                    open_tab(page, f"tab_{tab}")
                open_tab(page, "tab_txt2img")
                fill_text(page, "txt2img_prompt", "a yellow star")
                set_number(page, "txt2img_steps", 2)
                page.locator("#txt2img_generate").click()
                wait_for_gallery(page, "txt2img_gallery", 1)
                wait_idle(page, "txt2img")
            finally:
                browser.close()
    finally:
        stop_server(proc)  # shutdown is part of the session: whatever it does is recorded too

    assert proc.returncode is not None
    attempts = [e for e in netguard.read(record) if e["event"].startswith("socket.")]
    assert attempts == [], f"the server tried to reach other machines {len(attempts)} times: {attempts[:5]}"
    assert page_requests, "the page made no requests: the recording did not work"
    ours = (url + "/", "data:", "blob:")
    foreign = [u for u in page_requests if u != url and not u.startswith(ours)]
    assert foreign == [], f"the page asked for something outside the app: {foreign}"

