"""The Extras tab in a real browser: upscale an uploaded image (Scale by / Scale to with crop), save it with
A1111's extras infotext, get there with Send to extras from txt2img, and upscale a folder (Batch from
Directory), shown or only saved."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.support.browser import (  # noqa: F401 (browser and page are fixtures)
    block, browser, fetch_image, fill_text, gallery_image_urls, open_accordion, page, select_option, set_checkbox,
    set_number, upload_file, wait_for_gallery)
from tests.support.server import start_server, stop_server
from tests.support.tabs import open_tab
from tests.support.upscalers import compact_state_dict, write
from tools import shapes_world as world

pytestmark = [pytest.mark.browser, pytest.mark.server]


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """As tests/support/browser's, with a tiny 2x model upscaler in models/ESRGAN before the server starts (the
    page lists upscalers when it is built)."""
    data = tmp_path_factory.mktemp("ui_server")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    write(data / "models" / "ESRGAN" / "tiny-2x.pth", compact_state_dict(scale=2))
    proc, url = start_server(data, "--api")
    yield url, data, proc
    stop_server(proc)


def upscale_upload(page, source, upscaler: str) -> Image.Image:
    """Single Image: `source` uploaded and upscaled 2x with `upscaler`; the result once the page names it."""
    open_tab(page, "tab_extras")
    upload_file(page, "extras_image", source)
    set_number(page, "extras_upscaling_resize", 2)
    select_option(page, "extras_upscaler_1", upscaler)
    page.locator("#extras_generate").click()
    expect(page.locator("#html_info_extras")).to_contain_text(f"Postprocess upscaler: {upscaler}", timeout=60_000)
    return fetch_image(page, wait_for_gallery(page, "extras_gallery", 1)[0])


def test_extras_upscales_saves_and_receives_images(page, ui_server, tmp_path):
    _, data, _ = ui_server
    source = tmp_path / "circle.png"
    Image.fromarray(world.render(world.Scene("red", "circle", "blue", 64, 64, 60))).save(source)

    result = upscale_upload(page, source, "Lanczos")
    assert result.size == (256, 256)
    page.locator("#html_info_extras").get_by_text("Postprocess upscale by: 2").wait_for()
    saved = sorted((data / "outputs" / "extras-images").glob("*.png"))
    assert len(saved) == 1 and "Postprocess upscaler: Lanczos" in Image.open(saved[0]).info["extras"]
    expected = Image.open(source).convert("RGB").resize((256, 256), Image.Resampling.LANCZOS)
    diff = np.abs(np.asarray(result.convert("RGB"), dtype=int) - np.asarray(expected, dtype=int))
    assert diff.mean() < 2  # Lanczos resampling of the upload, not some other picture

    open_tab(page, "extras_scale_to_tab")  # and wait for its first render: Gradio writes its stored values then
    set_number(page, "extras_upscaling_resize_w", 200)
    set_number(page, "extras_upscaling_resize_h", 96)
    set_checkbox(page, "extras_upscaling_crop", True)
    page.locator("#extras_generate").click()
    page.locator("#html_info_extras").get_by_text("Postprocess crop to").wait_for(timeout=60_000)
    assert fetch_image(page, wait_for_gallery(page, "extras_gallery", 1)[0]).size[1] == 96

    # txt2img -> Send to extras puts the generated image into the Single Image sub-tab
    open_tab(page, "tab_txt2img")
    fill_text(page, "txt2img_prompt", "a green square on a white background")
    set_number(page, "txt2img_steps", 4)
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    shown = page.locator("#extras_image img").first
    uploaded = shown.get_attribute("src") if shown.count() else None  # the picture uploaded above
    page.locator("#txt2img_send_to_extras").click()
    shown.wait_for(timeout=30_000)
    expect(shown).not_to_have_attribute("src", uploaded or "", timeout=30_000)  # replaced by the one sent
    assert page.get_by_role("tab", name="Extras").get_attribute("aria-selected") == "true"


def test_extras_batch_from_directory_saves_every_file_and_names_what_it_skipped(page, ui_server):
    data = ui_server[1]  # folders the page names must be inside the data folder (or --allowed-paths)
    inputs, shown_out, unshown_out = data / "extras-in", data / "extras-out", data / "extras-out-2"
    inputs.mkdir()
    for n, colour in enumerate(("red", "green")):
        Image.fromarray(world.render(world.Scene(colour, "circle", "blue", 64, 64, 60))).save(inputs / f"{n}.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    (inputs / "notes.txt").write_text("not an image, and not named like one")

    open_tab(page, "tab_extras")
    open_tab(page, "extras_batch_directory_tab")
    fill_text(page, "extras_batch_input_dir", str(inputs))
    fill_text(page, "extras_batch_output_dir", str(shown_out))
    set_number(page, "extras_upscaling_resize", 2)
    select_option(page, "extras_upscaler_1", "Lanczos")
    page.locator("#extras_generate").click()
    urls = wait_for_gallery(page, "extras_gallery", 2)
    assert [fetch_image(page, url).size for url in urls] == [(256, 256)] * 2  # 128x128 pictures
    info = page.locator("#html_info_extras")
    expect(info).to_contain_text(f"Saved 2 images to {shown_out}")
    expect(info).to_contain_text("Skipped 1 file that could not be done: broken.png: not an image that can be read")
    assert sorted(p.name for p in shown_out.iterdir()) == ["0-0000.png", "1-0000.png"]  # named after the inputs

    # "Show result images" off: saved, not shown (nothing held for the page)
    set_checkbox(page, "extras_show_extras_results", False)
    fill_text(page, "extras_batch_output_dir", str(unshown_out))
    page.locator("#extras_generate").click()
    expect(info).to_contain_text(f"Saved 2 images to {unshown_out}", timeout=60_000)
    assert gallery_image_urls(page, "extras_gallery") == []
    assert len(list(unshown_out.iterdir())) == 2

    # Batch Process: uploaded files, saved under their own names too (the page's upload keeps each file's name)
    open_tab(page, "extras_batch_process_tab")
    uploads = block(page, "extras_image_batch")
    uploads.locator("input[type=file]").set_input_files([str(inputs / "0.png"), str(inputs / "1.png")])
    expect(uploads.locator("tbody tr")).to_have_count(2)  # both are uploaded
    page.locator("#extras_generate").click()
    expect(info).to_contain_text(f"Saved 2 images to {data / 'outputs' / 'extras-images'}", timeout=60_000)
    saved = sorted(p.name for p in (data / "outputs" / "extras-images").iterdir() if "-" in p.name)
    assert saved == ["0-0000.png", "1-0000.png"], saved


def test_a_model_upscaler_from_models_esrgan_is_offered_and_used(page, ui_server, tmp_path):
    _, data, _ = ui_server
    source = tmp_path / "square.png"
    Image.fromarray(world.render(world.Scene("green", "square", "white", 64, 64, 60))).save(source)
    assert upscale_upload(page, source, "tiny-2x").size == (256, 256)
    saved = max((data / "outputs" / "extras-images").glob("*.png"), key=lambda p: p.stat().st_mtime)
    assert Image.open(saved).info["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: tiny-2x"
    open_tab(page, "tab_txt2img")  # offered to Hires. fix too
    open_accordion(page, "txt2img_hr", "Hires. fix")
    select_option(page, "txt2img_hr_upscaler", "tiny-2x")
