"""The SD 2 depth model from the page: img2img makes an image from an uploaded picture's depth, and txt2img
says to use img2img instead (the page keeps working)."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from tests.support import tiny_models
from tests.support.browser import (browser, fill_text, open_app, set_number, upload_file,  # noqa: F401 (fixture)
                                   wait_for_gallery)
from tests.support.server import start_server, stop_server
from tests.support.tabs import open_tab, wait_idle


@pytest.fixture(scope="module")
def depth_ui(tmp_path_factory):
    data = tmp_path_factory.mktemp("depth-ui")
    tiny_models.build("sd2", depth=True, seed=4).write(data / "models" / "Stable-diffusion" / "depth.safetensors")
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": "depth.safetensors"}))
    proc, url = start_server(data, "--api")
    yield url, data
    stop_server(proc)


def test_img2img_from_the_page_and_txt2img_refused(browser, depth_ui, tmp_path):
    url, data = depth_ui
    source = tmp_path / "ball.png"
    image = Image.new("RGB", (64, 64), (30, 30, 30))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(230, 230, 230))
    image.save(source)
    page = open_app(browser, url)
    try:
        open_tab(page, "tab_img2img")
        upload_file(page, "img2img_image", source)
        fill_text(page, "img2img_prompt", "a ball")
        for name, value in (("steps", 3), ("width", 64), ("height", 64), ("seed", 5)):
            set_number(page, f"img2img_{name}", value)
        page.locator("#img2img_generate").click()
        urls = wait_for_gallery(page, "img2img_gallery", 1)
        wait_idle(page, "img2img")
        assert len(urls) == 1
        expect(page.locator("#html_log_img2img .sd-error")).to_have_count(0)
        assert len(list((data / "outputs" / "img2img-images").rglob("*.png"))) == 1

        open_tab(page, "tab_txt2img")
        fill_text(page, "txt2img_prompt", "a ball")
        set_number(page, "txt2img_steps", 3)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#html_log_txt2img .sd-error")).to_contain_text("use img2img")
        wait_idle(page, "txt2img")
    finally:
        page.context.close()
