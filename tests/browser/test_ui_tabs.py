"""The page's tabs in a real browser, driven as a user drives them, against one live server with the
built-in demo model (128x128): txt2img (token counters, Ctrl+Enter, progress, Interrupt, batches and
what is saved), img2img and Inpaint upload (judged by pixels), PNG Info with Send to txt2img, and
errors shown on the page without breaking it. Screenshots of the tabs go to
test-output/screenshots/tab_<name>.png. Settings (which restarts its server) are in test_ui_settings.py.
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import expect
from scipy import ndimage

from tests.support.browser import (  # noqa: F401 (browser, page and ui_server are fixtures)
    SCREENSHOTS, JobView, SentRequests, block, browser, error_toasts, fetch_image, fill_text, gallery_image_urls,
    job_view, open_accordion, page, read_value, select_option, set_checkbox, set_number, ui_server, upload_file,
    wait_for_gallery)
from tests.support.shapes_judge import judge
from tests.support.tabs import (INPUT_SCENE, PROMPT, assert_pasted, generate_txt2img, input_image, open_tab, pngs, rgb,
                                wait_for_step, wait_idle)
from tools.shapes_world import render

pytestmark = [pytest.mark.browser, pytest.mark.server]


# ---------------------------------------------------------------- helpers


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"tab_{name}.png"), full_page=True)


# ---------------------------------------------------------------- txt2img


def test_token_counter_counts_and_grows_to_the_next_chunk(page):
    counter = page.locator("#txt2img_token_counter")
    expect(counter).to_have_text("0/75")
    fill_text(page, "txt2img_prompt", PROMPT)  # a, red, circle, on, a, blue, background
    expect(counter).to_have_text("7/75")
    # 7*11 words + 10 commas = 87 tokens. As in A1111, the first chunk ends after the last comma within 20
    # tokens of its end (token 72) and is padded to 75; the other 15 go to the second: 75 + 15 = 90.
    fill_text(page, "txt2img_prompt", ", ".join([PROMPT] * 11))
    expect(counter).to_have_text("90/150")
    expect(counter.locator(".sd-token-over")).to_have_count(0)  # 90 of 150 is not over the limit
    fill_text(page, "txt2img_neg_prompt", "blurry")
    expect(page.locator("#txt2img_negative_token_counter")).to_have_text("1/75")
    fill_text(page, "txt2img_prompt", "")
    expect(counter).to_have_text("0/75")
    # A1111's bracket checker: brackets that do not pair up turn the counter red and say why when pointed at
    fill_text(page, "txt2img_prompt", "a ((red circle:1.2)")
    flagged = counter.locator(".sd-token-brackets")
    expect(flagged).to_have_attribute("title", "Imbalanced brackets: round brackets ( ): 2 opening, 1 closing")
    fill_text(page, "txt2img_prompt", "a (red circle:1.2)")
    expect(flagged).to_have_count(0)  # (the flagged counter is there until this change is answered)


def test_ctrl_enter_generates_a_batch_with_progress_grid_and_saved_files(page, ui_server):
    _, data, _ = ui_server
    samples, grids = data / "outputs" / "txt2img-images", data / "outputs" / "txt2img-grids"
    before_samples, before_grids = pngs(samples), pngs(grids)

    fill_text(page, "txt2img_prompt", PROMPT)
    set_number(page, "txt2img_steps", 30)
    set_number(page, "txt2img_batch_count", 2)
    set_number(page, "txt2img_seed", 5)
    expect(page.locator("#txt2img_interrupt")).to_be_hidden()
    expect(page.locator("#txt2img_skip")).to_be_hidden()
    page.locator("#txt2img_prompt textarea").press("Control+Enter")

    # while the job runs, Interrupt and Skip instead of Generate: seen in the same moment as a step (the job
    # takes about a second, so a separate look at the buttons could come after its end)
    view, _ = wait_for_step(page, "txt2img", 1)
    k, n = view.step
    assert n == 30 and 1 <= k <= 30
    assert view.interrupt and view.skip and not view.generate, view

    wait_idle(page, "txt2img")
    urls = wait_for_gallery(page, "txt2img_gallery", 3)
    assert len(urls) == 3, urls  # the grid first, then the two images
    shown = [fetch_image(page, u) for u in urls]
    assert shown[0].size == (256, 128), "the first item should be the grid of the two 128x128 images"
    assert [im.size for im in shown[1:]] == [(128, 128), (128, 128)]
    grid = rgb(shown[0])
    assert np.array_equal(grid[:, :128], rgb(shown[1])) and np.array_equal(grid[:, 128:], rgb(shown[2]))
    assert not np.array_equal(rgb(shown[1]), rgb(shown[2]))  # seeds 5 and 6 differ
    for im in shown[1:]:
        assert judge(im).matches("red", "circle", "blue"), judge(im)
    expect(page.locator("#txt2img_progress")).not_to_contain_text("step")  # progress cleared afterwards
    infotext = read_value(page, "txt2img_infotext")
    assert infotext.startswith(PROMPT + "\n") and "Steps: 30," in infotext and "Seed: 5," in infotext
    expect(page.locator("#html_log_txt2img")).to_contain_text("Saved 2 images")

    new_samples = sorted(pngs(samples) - before_samples)
    new_grids = sorted(pngs(grids) - before_grids)
    assert len(new_samples) == 2 and len(new_grids) == 1, (new_samples, new_grids)
    seeds = sorted(re.search(r"Seed: (\d+),", Image.open(p).info["parameters"]).group(1) for p in new_samples)
    assert seeds == ["5", "6"]
    assert "Seed: 5," in Image.open(new_grids[0]).info["parameters"]
    with Image.open(new_grids[0]) as saved_grid:
        assert saved_grid.size == (256, 128)
    screenshot(page, "txt2img")


def test_interrupt_returns_to_idle_shows_the_image_and_saves_nothing(page, ui_server):
    _, data, _ = ui_server
    outputs = data / "outputs"
    before = pngs(outputs)

    fill_text(page, "txt2img_prompt", PROMPT)
    steps = 150  # the most the page allows: seconds a batch, so the interrupt lands in the first one
    set_number(page, "txt2img_steps", steps)
    set_number(page, "txt2img_batch_count", 3)
    set_number(page, "txt2img_seed", 11)
    page.locator("#txt2img_generate").click()

    # the step rate, to know how long the rest of the job would take
    first, t1 = wait_for_step(page, "txt2img", 1)
    later, t2 = wait_for_step(page, "txt2img", first.step[0] + 10)
    (k1, n), (k2, _) = first.step, later.step
    assert n == steps
    assert "batch 1/3" in later.progress, later.progress
    per_step = (t2 - t1) / (k2 - k1)
    remaining = (3 * steps - k2) * per_step
    # "Don't Interrupt in the middle" (on by default, as in A1111): the first click asks the job to stop after the
    # image it is making, the second interrupts it at once
    page.locator("#txt2img_interrupt").click()
    expect(page.locator(".toast-body", has_text="will stop after finishing this image")).to_be_visible()
    page.locator("#txt2img_interrupt").click()
    clicked = time.monotonic()
    wait_idle(page, "txt2img", timeout_ms=remaining * 1000 + 60_000)
    took = time.monotonic() - clicked
    assert took < remaining / 3, f"idle {took:.1f}s after Interrupt; the rest of the job takes ~{remaining:.1f}s"

    expect(page.locator("#html_log_txt2img")).to_contain_text("Interrupted")
    expect(page.locator("#html_log_txt2img")).not_to_contain_text("Saved")
    urls = wait_for_gallery(page, "txt2img_gallery", 1)
    assert len(urls) == 1, urls  # the interrupted first image, no grid
    shown = fetch_image(page, urls[0])
    assert shown.size == (128, 128)
    assert "Seed: 11," in read_value(page, "txt2img_infotext")
    assert pngs(outputs) == before, sorted(pngs(outputs) - before)  # shown, not saved (A1111)


def test_one_interrupt_click_finishes_the_image_being_made_and_stops(page, ui_server):
    """A1111's interrupt_after_current: with batch count 3, one click during the first image lets it finish; it is
    saved, and no other image is made."""
    _, data, _ = ui_server
    folder = data / "outputs" / "txt2img-images"
    before = pngs(folder)
    fill_text(page, "txt2img_prompt", PROMPT)
    set_number(page, "txt2img_steps", 150)  # seconds an image: the click lands in the first
    set_number(page, "txt2img_batch_count", 3)
    set_number(page, "txt2img_seed", 12)
    page.locator("#txt2img_generate").click()
    view, _ = wait_for_step(page, "txt2img", 1)
    assert "batch 1/3" in view.progress, view.progress
    page.locator("#txt2img_interrupt").click()
    wait_idle(page, "txt2img")
    expect(page.locator("#html_log_txt2img")).to_contain_text("Stopped after the image it was making")
    expect(page.locator("#html_log_txt2img")).not_to_contain_text("Interrupted")
    assert len(wait_for_gallery(page, "txt2img_gallery", 1)) == 1  # one image, so no grid either
    assert "Seed: 12," in read_value(page, "txt2img_infotext")
    assert len(pngs(folder) - before) == 1, sorted(pngs(folder) - before)


# ---------------------------------------------------------------- img2img


def test_img2img_recolours_the_uploaded_shape_and_saves_denoising_strength(page, ui_server, tmp_path):
    _, data, _ = ui_server
    folder = data / "outputs" / "img2img-images"
    before = pngs(folder)
    source, _ = input_image(tmp_path)
    start = judge(Image.open(source))
    assert start.matches("red", "circle", "blue")

    open_tab(page, "tab_img2img")
    expect(page.locator("#img2img_img2img_tab-button")).to_have_attribute("aria-selected", "true")
    upload_file(page, "img2img_image", source)
    prompt = "a yellow circle on a blue background"
    fill_text(page, "img2img_prompt", prompt)
    set_number(page, "img2img_steps", 20)
    set_number(page, "img2img_denoising_strength", 0.75)
    set_number(page, "img2img_seed", 2)
    page.locator("#img2img_generate").click()
    urls = wait_for_gallery(page, "img2img_gallery", 1)
    wait_idle(page, "img2img")

    assert len(urls) == 1
    result = fetch_image(page, urls[0])
    assert result.size == (128, 128)
    verdict = judge(result)
    assert verdict.matches("yellow", "circle", "blue"), verdict
    dx, dy = verdict.centre[0] - start.centre[0], verdict.centre[1] - start.centre[1]
    assert (dx * dx + dy * dy) ** 0.5 < 16, (start.centre, verdict.centre)  # the shape stays where it was

    saved = sorted(pngs(folder) - before)
    assert len(saved) == 1, saved
    infotext = Image.open(saved[0]).info["parameters"]
    assert infotext.startswith(prompt + "\n") and "Denoising strength: 0.75" in infotext, infotext
    assert "Seed: 2," in infotext
    assert np.array_equal(rgb(Image.open(saved[0])), rgb(result))
    screenshot(page, "img2img")


def test_img2img_resize_by_chosen_just_before_generate_sets_the_size(page, tmp_path):
    """The "Resize by" tab picked right before Generate decides the size: which tab is selected is kept in the
    page itself, so the request carries the tab the user sees (a server-side state could lag behind)."""
    source, _ = input_image(tmp_path)
    sent = SentRequests(page)
    open_tab(page, "tab_img2img")
    upload_file(page, "img2img_image", source)
    set_number(page, "img2img_steps", 2)
    open_tab(page, "img2img_tab_resize_by")
    set_number(page, "img2img_scale", 1.5)
    page.locator("#img2img_generate").click()
    urls = wait_for_gallery(page, "img2img_gallery", 1)
    wait_idle(page, "img2img")
    carried = sent.last("img2img")
    assert (carried["img2img_scale_tab"], carried["img2img_scale"]) == (1, 1.5), carried
    assert fetch_image(page, urls[0]).size == (192, 192)  # 128 x 1.5


def upload_for_inpainting(page, source, mask: np.ndarray, tmp_path: Path) -> None:
    """img2img's Inpaint upload sub-tab with the image and the mask (white = repaint) put in."""
    mask_path = tmp_path / "mask.png"
    Image.fromarray(mask, "L").convert("RGB").save(mask_path)
    open_tab(page, "tab_img2img")
    open_tab(page, "img2img_inpaint_upload_tab")
    upload_file(page, "img_inpaint_base", source)
    upload_file(page, "img_inpaint_mask", mask_path)


def inpaint_yellow(page, steps: int) -> list[str]:
    """Generate with a yellow-circle prompt, denoising 0.9, seed 4; the gallery's URLs once the job has ended."""
    fill_text(page, "img2img_prompt", "a yellow circle on a blue background")
    set_number(page, "img2img_steps", steps)
    set_number(page, "img2img_denoising_strength", 0.9)
    set_number(page, "img2img_seed", 4)
    page.locator("#img2img_generate").click()
    urls = wait_for_gallery(page, "img2img_gallery", 1)
    wait_idle(page, "img2img")
    return urls


def test_inpaint_upload_repaints_only_the_masked_square(page, tmp_path):
    source, original = input_image(tmp_path)
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[40:88, 40:88] = 255  # a white square over the centre of the red circle
    upload_for_inpainting(page, source, mask, tmp_path)
    expect(page.locator("#img2img_mask_blur")).to_be_visible()  # inpaint options show for inpaint modes
    assert read_value(page, "img2img_mask_blur") == "4"  # A1111's default
    urls = inpaint_yellow(page, steps=20)
    expect(page.locator("#html_log_img2img .sd-error")).to_have_count(0)

    result = rgb(fetch_image(page, urls[0]))
    assert result.shape == original.shape
    inside = mask > 0
    band = ndimage.binary_dilation(inside, iterations=10)  # the mask blur's reach, and some
    outside = ~band
    differing = np.argwhere((result != original).any(-1) & outside)
    assert differing.size == 0, f"{len(differing)} pixels outside the mask changed, e.g. at (y, x) {differing[:5]}"
    core = ndimage.binary_erosion(inside, iterations=10)
    change = np.abs(result.astype(int) - original.astype(int))[core].mean()
    assert change > 30, f"the masked area barely changed (mean difference {change:.1f})"


def test_soft_inpainting_from_the_page_and_its_paste(page, tmp_path):
    source, original = input_image(tmp_path)
    mask = np.zeros((128, 128), dtype=np.uint8)
    mask[40:88, 40:88] = 255
    upload_for_inpainting(page, source, mask, tmp_path)
    open_accordion(page, "soft_inpainting", "Soft inpainting")
    set_checkbox(page, "soft_inpainting_enabled", True)
    set_number(page, "mask_blend_power", 1.5)
    urls = inpaint_yellow(page, steps=6)
    infotext = read_value(page, "img2img_infotext")
    assert "Soft inpainting enabled: True, Soft inpainting schedule bias: 1.5, " in infotext, infotext
    result = rgb(fetch_image(page, urls[0])).astype(int)
    # the changed area's reach: the blurred mask, two latent pixels of the soft maximum, the resize and its blur
    far = ~ndimage.binary_dilation(mask > 0, iterations=40)
    assert np.abs(result - original.astype(int))[far].max() <= 2
    core = ndimage.binary_erosion(mask > 0, iterations=10)
    assert np.abs(result - original.astype(int))[core].mean() > 20

    fill_text(page, "img2img_prompt", infotext.replace("schedule bias: 1.5", "schedule bias: 2.5"))
    page.locator("#img2img_paste").click()
    expect(block(page, "mask_blend_power").locator("input[type=number]").first).to_have_value("2.5")
    expect(block(page, "soft_inpainting_enabled").locator("input[type=checkbox]")).to_be_checked()


def test_img2img_without_an_image_says_so_and_the_page_keeps_working(page):
    open_tab(page, "tab_img2img")
    fill_text(page, "img2img_prompt", PROMPT)
    page.locator("#img2img_generate").click()
    error = page.locator("#html_log_img2img .sd-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("upload an image")
    wait_idle(page, "img2img", timeout_ms=10_000)
    assert error_toasts(page) == []  # said on the page, not as a crash popup
    assert gallery_image_urls(page, "img2img_gallery") == []

    open_tab(page, "tab_txt2img")
    urls = generate_txt2img(page, PROMPT, 8, 2)
    assert fetch_image(page, urls[0]).size == (128, 128)
    assert "Seed: 2," in read_value(page, "txt2img_infotext")
    expect(page.locator("#html_log_txt2img .sd-error")).to_have_count(0)


# ---------------------------------------------------------------- PNG Info


def api_png(url: str, tmp_path: Path) -> tuple[Path, str]:
    """A PNG made through the API, with its infotext."""
    r = requests.post(url + "/sdapi/v1/txt2img", timeout=300, json={
        "prompt": "a purple triangle on a white background", "negative_prompt": "a red square",
        "steps": 7, "sampler_name": "Euler a", "scheduler": "Karras", "cfg_scale": 5.5, "seed": 1234,
        "width": 128, "height": 128})
    assert r.status_code == 200, r.text
    path = tmp_path / "generated.png"
    path.write_bytes(base64.b64decode(r.json()["images"][0]))
    text = Image.open(path).info["parameters"]
    assert "Steps: 7, Sampler: Euler a, Schedule type: Karras, CFG scale: 5.5, Seed: 1234, Size: 128x128" in text
    return path, text


def test_png_info_shows_parameters_and_sends_them_to_txt2img(page, ui_server, tmp_path):
    url, _, _ = ui_server
    path, text = api_png(url, tmp_path)

    # txt2img starts with other values, so each one sent over is seen to change
    set_number(page, "txt2img_width", 192)
    set_number(page, "txt2img_height", 256)
    fill_text(page, "txt2img_prompt", "something else")

    open_tab(page, "tab_pnginfo")
    upload_file(page, "pnginfo_image", path)
    info = page.locator("#pnginfo_html_info")
    expect(info).to_contain_text("parameters")
    for needle in ("a purple triangle on a white background", "Negative prompt: a red square", "Steps: 7",
                   "Sampler: Euler a", "Schedule type: Karras", "CFG scale: 5.5", "Seed: 1234", "Size: 128x128"):
        expect(info).to_contain_text(needle)
    screenshot(page, "pnginfo")

    page.locator("#pnginfo_send_to_txt2img").click()
    expect(page.locator("#tab_txt2img-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#txt2img_prompt textarea")).to_be_visible()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a purple triangle on a white background")
    assert_pasted(page, neg_prompt="a red square", steps="7", sampling="Euler a", scheduler="Karras",
                  cfg_scale="5.5", seed="1234", width="128", height="128")


def test_png_info_without_parameters_and_a_broken_file(page, tmp_path):
    plain = tmp_path / "plain.png"
    Image.fromarray(render(INPUT_SCENE)).save(plain)  # no text chunks
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all\n" * 20)
    open_tab(page, "tab_pnginfo")

    upload_file(page, "pnginfo_image", plain)
    expect(page.locator("#pnginfo_none")).to_be_visible()
    expect(page.locator("#pnginfo_none")).to_contain_text("no generation parameters")

    page.locator("#pnginfo_image button[aria-label='Remove Image']").click()
    expect(page.locator("#pnginfo_html_info")).to_have_text("")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(garbage))
    error = page.locator("#pnginfo_html_info .sd-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("Cannot read this file as an image")
    assert error_toasts(page) == []

    # still usable: the next upload is read
    page.locator("#pnginfo_image button[aria-label='Remove Image']").click()
    upload_file(page, "pnginfo_image", plain)
    expect(page.locator("#pnginfo_none")).to_be_visible()
    expect(page.locator("#pnginfo_html_info .sd-error")).to_have_count(0)
