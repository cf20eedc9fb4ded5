"""An SD 2 depth checkpoint (512-depth-ema's layout, tiny) through the live server's A1111 API: listed, img2img
runs on the depth of the init image, the depth map comes back when the setting asks, and txt2img is refused
with a message that says to use img2img while the server keeps running."""

from __future__ import annotations

import base64
import io
import json

import pytest
import requests
from PIL import Image, ImageDraw

from tests.support import tiny_models
from tests.support.server import decode, post, start_server, stop_server

pytestmark = pytest.mark.server

SMALL = dict(width=64, height=64, steps=3, sampler_name="Euler a", cfg_scale=5, seed=21)


def picture() -> str:
    image = Image.new("RGB", (64, 64), (30, 30, 30))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(230, 230, 230))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def depth_server(tmp_path_factory):
    data = tmp_path_factory.mktemp("depth-server")
    tiny_models.build("sd2", depth=True, seed=4).write(data / "models" / "Stable-diffusion" / "depth.safetensors")
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": "depth.safetensors"}))
    proc, url = start_server(data, "--api")
    yield url, data, proc
    stop_server(proc)


def test_img2img_with_the_depth_model_and_its_depth_map(depth_server):
    url, _, proc = depth_server
    titles = [m["title"] for m in requests.get(url + "/sdapi/v1/sd-models", timeout=30).json()]
    assert any(t.startswith("depth.safetensors") for t in titles), titles

    r = post(url, "/sdapi/v1/img2img", init_images=[picture()], denoising_strength=0.6, prompt="a ball", **SMALL)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 1 and decode(body["images"][0]).size == (64, 64)
    again = post(url, "/sdapi/v1/img2img", init_images=[picture()], denoising_strength=0.6, prompt="a ball",
                 override_settings={"depth_map_show": True}, **SMALL).json()
    assert len(again["images"]) == 2 and again["images"][0] == body["images"][0]
    shown = decode(again["images"][1]).convert("L")
    assert shown.size == (64, 64) and shown.getextrema() == (0, 255)

    refused = post(url, "/sdapi/v1/txt2img", prompt="a ball", **SMALL)
    assert refused.status_code == 400 and "use img2img" in refused.text, refused.text
    assert proc.poll() is None
    after = post(url, "/sdapi/v1/img2img", init_images=[picture()], denoising_strength=0.6, prompt="a ball", **SMALL)
    assert after.status_code == 200 and after.json()["images"][0] == body["images"][0]
