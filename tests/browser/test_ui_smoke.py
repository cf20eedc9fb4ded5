"""The page in a real browser: first run with the built-in demo model, one txt2img click end to end."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.support.browser import (  # noqa: F401 (browser, page and ui_server are fixtures)
    browser, fetch_image, fill_text, page, read_value, set_number, ui_server, wait_for_gallery)
from tests.support.shapes_judge import judge

pytestmark = [pytest.mark.browser, pytest.mark.server]

PROMPT = "a red circle on a blue background"


def test_first_run_page_generates_what_the_prompt_asks_for(page, ui_server):
    _, data, _ = ui_server
    assert "shapes-tiny" in read_value(page, "sd_checkpoint")
    assert "demo model" in page.locator("#demo_model_notice").inner_text()

    fill_text(page, "txt2img_prompt", PROMPT)
    set_number(page, "txt2img_seed", 1)
    page.locator("#txt2img_generate").click()
    urls = wait_for_gallery(page, "txt2img_gallery", 1)

    assert len(urls) == 1
    image = fetch_image(page, urls[0])
    assert image.size == (128, 128)
    verdict = judge(image)
    assert verdict.matches("red", "circle", "blue"), verdict

    saved = sorted((data / "outputs" / "txt2img-images").rglob("*.png"))
    assert len(saved) == 1, saved
    infotext = Image.open(saved[0]).info["parameters"]
    assert infotext.startswith(PROMPT + "\n") and "Seed: 1," in infotext


def test_the_page_and_the_api_give_the_same_image_for_the_same_parameters(page, ui_server):
    """A script using /sdapi/v1/txt2img gets exactly the picture the page showed (one engine, one queue)."""
    import base64
    import io

    import numpy as np
    import requests

    url, _, _ = ui_server
    fill_text(page, "txt2img_prompt", "a yellow triangle on a black background")
    set_number(page, "txt2img_seed", 4242)
    set_number(page, "txt2img_steps", 12)
    page.locator("#txt2img_generate").click()
    shown = fetch_image(page, wait_for_gallery(page, "txt2img_gallery", 1)[0]).convert("RGB")
    body = {"prompt": "a yellow triangle on a black background", "seed": 4242, "steps": 12, "width": 128,
            "height": 128, "sampler_name": "DPM++ 2M", "cfg_scale": 7}
    reply = requests.post(url + "/sdapi/v1/txt2img", json=body, timeout=120)
    assert reply.status_code == 200
    api_image = Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]))).convert("RGB")
    assert np.array_equal(np.asarray(shown), np.asarray(api_image))
    assert reply.json()["info"] and "Seed: 4242" in read_value(page, "txt2img_infotext")
