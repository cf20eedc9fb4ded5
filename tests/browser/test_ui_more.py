"""More of the page in a real browser, against one live server with the built-in demo model (128x128):
Skip within a batch, the image editors (Inpaint, Sketch, Inpaint sketch) painted with the mouse, img2img
Batch over folders, Hires. fix, txt2img's "Send to inpaint", the ↙ paste button, Save / ♻ / 🎲 under the
gallery, and the live preview. Judged by pixels, saved files and their infotexts, as test_ui_tabs.py does.

The editors are Gradio 6's ImageEditor: a PixiJS (WebGL) canvas that headless Chromium renders. Strokes are
drawn with page.mouse in screen coordinates; where the image lies on the canvas (it is zoomed to fit and
centred) is read from a screenshot of the canvas, and what a stroke painted is read from the next one.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import expect
from scipy import ndimage

from tests.support.browser import (  # noqa: F401 (browser, page and ui_server are fixtures)
    block, browser, error_toasts, fetch_image, fill_text, gallery_image_urls, job_view, open_accordion, page,
    read_value, SentRequests, set_checkbox, set_number, ui_server, wait_for_gallery)
from tests.support.shapes_judge import judge
from tests.support.tabs import (INPUT_SCENE, PROMPT, assert_pasted, generate_txt2img, input_image, open_tab, pngs, rgb,
                                wait_for_step, wait_idle)
from tools.shapes_world import Scene, render

pytestmark = [pytest.mark.browser, pytest.mark.server]


# ---------------------------------------------------------------- helpers


def seed_of(infotext: str) -> int:
    m = re.search(r"(?:^|, )Seed: (-?\d+)(?:,|$)", infotext.splitlines()[-1])
    assert m, f"no seed in {infotext!r}"
    return int(m.group(1))


def saved_infotext(path: Path) -> str:
    with Image.open(path) as im:
        return im.info["parameters"]


def screenshot_array(locator) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(locator.screenshot())).convert("RGB")).astype(int)


class Editor:
    """A Gradio 6 ImageEditor (#elem_id) holding an image: maps image pixels to the screen, draws strokes
    with the mouse and reads back what the canvas shows."""

    def __init__(self, page, elem_id: str):
        self.page, self.elem_id = page, elem_id
        self.block = block(page, elem_id)
        self.canvas = self.block.locator("canvas").first

    def upload(self, path: Path) -> None:
        # The file input exists before the editor has set its canvas up; a file given that early is lost
        # (the editor keeps saying "Upload an image"), so wait for the empty canvas first.
        self.canvas.wait_for(state="visible")
        expect(self.block).to_contain_text("Upload an image")
        self.block.locator("input[type=file]").set_input_files(str(path))
        expect(self.block).not_to_contain_text("Upload an image")
        # after an upload the editor switches to its brush
        expect(self.block.locator("button[aria-label=Brush]")).to_have_class(re.compile(r"\bhighlight\b"))
        with Image.open(path) as im:
            self.locate(rgb(im).astype(int))

    def settled(self, timeout: float = 30) -> np.ndarray:
        """A screenshot of the canvas once it has stopped changing (two shots in a row alike): the editor
        zooms, draws and redraws on the CPU, later the busier the machine is."""
        deadline = time.monotonic() + timeout
        shot = screenshot_array(self.canvas)
        while True:
            self.page.wait_for_timeout(150)
            again = screenshot_array(self.canvas)
            if again.shape == shot.shape and np.array_equal(again, shot):
                return again
            assert time.monotonic() < deadline, f"#{self.elem_id}: the canvas kept changing for {timeout}s"
            shot = again

    def locate(self, image: np.ndarray, tolerance: int = 12, timeout: float = 30) -> None:
        """Find `image` on the canvas: the rectangle of its corner colour (the images here have a plain
        background reaching all four edges; `tolerance`: sum of |RGB| differences), once the editor shows it
        zoomed to fit."""
        self.canvas.scroll_into_view_if_needed()  # before bounding_box: screenshot() would scroll the page
        corner = image[:4, :4].reshape(-1, 3).mean(0)
        self.height, self.width = image.shape[:2]
        deadline = time.monotonic() + timeout
        while True:
            shot = self.settled()
            ys, xs = np.nonzero(np.abs(shot - corner).sum(-1) < tolerance)
            if xs.size:
                x0, y0 = xs.min(), ys.min()
                scale, scale_y = (xs.max() + 1 - x0) / self.width, (ys.max() + 1 - y0) / self.height
                if abs(scale - scale_y) < 0.05 and scale > 1:
                    break
                seen = f"a rectangle scaled {scale:.2f} x {scale_y:.2f}"
            else:
                seen = "nothing of its colour"
            assert time.monotonic() < deadline, \
                f"#{self.elem_id}: the image (background {corner}) is not on its canvas ({seen})"
        self.box = self.canvas.bounding_box()
        self.x0, self.y0, self.scale = x0, y0, scale
        self.before = self.pixels(shot)

    def to_screen(self, x: float, y: float) -> tuple[float, float]:
        """The screen point over the centre of image pixel (x, y)."""
        return (self.box["x"] + self.x0 + (x + 0.5) * self.scale,
                self.box["y"] + self.y0 + (y + 0.5) * self.scale)

    def pixels(self, shot: np.ndarray | None = None) -> np.ndarray:
        """What the canvas shows at each image pixel (at the pixel's centre): an image-sized RGB array."""
        shot = screenshot_array(self.canvas) if shot is None else shot
        cols = (self.x0 + (np.arange(self.width) + 0.5) * self.scale).astype(int)
        rows = (self.y0 + (np.arange(self.height) + 0.5) * self.scale).astype(int)
        return shot[rows][:, cols]

    def stroke(self, points: list[tuple[float, float]], steps: int = 4) -> None:
        """Press the mouse at the first point (image pixels), drag through the others, release. (Each move
        costs about half a second: the editor renders on the CPU.)"""
        self.canvas.scroll_into_view_if_needed()
        self.box = self.canvas.bounding_box()
        mouse = self.page.mouse
        mouse.move(*self.to_screen(*points[0]))
        mouse.down()
        for (xa, ya), (xb, yb) in zip(points, points[1:]):
            for i in range(1, steps + 1):
                mouse.move(*self.to_screen(xa + (xb - xa) * i / steps, ya + (yb - ya) * i / steps))
        mouse.up()

    def painted(self) -> tuple[np.ndarray, np.ndarray]:
        """(mask, colours): the image pixels whose look on the canvas changed since the upload, and what
        the canvas shows at each image pixel now (once the editor has drawn the stroke)."""
        now = self.pixels(self.settled())
        return np.abs(now - self.before).sum(-1) > 30, now


def distance_from(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the nearest pixel of `mask`."""
    return ndimage.distance_transform_edt(~mask)


def wait_for_new_file(folder: Path, before: set[Path], timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while not (new := pngs(folder) - before):
        assert time.monotonic() < deadline, f"nothing saved in {folder} after {timeout}s"
        time.sleep(0.1)
    assert len(new) == 1, new
    return new.pop()


def generate_img2img(page, data: Path, steps: int = 20) -> np.ndarray:
    """Generate on the img2img tab; the image it shows, once the job has saved it (a second run on one
    page would otherwise find the first run's gallery)."""
    folder = data / "outputs" / "img2img-images"
    before = pngs(folder)
    set_number(page, "img2img_steps", steps)
    page.locator("#img2img_generate").click()
    saved = wait_for_new_file(folder, before)
    wait_idle(page, "img2img")
    urls = wait_for_gallery(page, "img2img_gallery", 1)
    expect(page.locator("#html_log_img2img .sd-error")).to_have_count(0)
    assert len(urls) == 1, urls
    shown = rgb(fetch_image(page, urls[0])).astype(int)
    with Image.open(saved) as im:
        assert np.array_equal(rgb(im), shown), "the page shows another image than the job saved"
    return shown


# ---------------------------------------------------------------- Skip


def test_skip_shows_the_skipped_batch_unsaved_and_the_job_goes_on(page, ui_server):
    """A1111's Skip: the running batch stops, is shown (as far as it got) and put in the grid but not saved;
    the job goes on with the next batch."""
    _, data, _ = ui_server
    samples, grids = data / "outputs" / "txt2img-images", data / "outputs" / "txt2img-grids"
    before_samples, before_grids = pngs(samples), pngs(grids)
    fill_text(page, "txt2img_prompt", PROMPT)
    steps = 150  # the most the page allows: seconds a batch, so the click lands in the first one
    set_number(page, "txt2img_steps", steps)
    set_number(page, "txt2img_batch_count", 3)
    set_number(page, "txt2img_seed", 300)
    page.locator("#txt2img_generate").click()

    view, _ = wait_for_step(page, "txt2img", 1)
    assert "batch 1/3" in view.progress and view.step[1] == steps, view
    page.locator("#txt2img_skip").click()
    # the job goes on with the next batch (not to idle, as Interrupt would)
    expect(page.locator("#txt2img_progress")).to_contain_text("batch 2/3", timeout=30_000)
    expect(page.locator("#txt2img_interrupt")).to_be_visible()
    wait_idle(page, "txt2img")
    expect(page.locator("#html_log_txt2img")).to_contain_text("Saved 2 images")
    expect(page.locator("#html_log_txt2img")).not_to_contain_text("Interrupted")
    assert len(gallery_image_urls(page, "txt2img_gallery")) == 4  # the grid, the skipped image, the two finished

    new_samples = sorted(pngs(samples) - before_samples)
    new_grids = sorted(pngs(grids) - before_grids)
    assert len(new_samples) == 2 and len(new_grids) == 1, (new_samples, new_grids)
    sample_texts = [saved_infotext(p) for p in new_samples]
    assert sorted(seed_of(t) for t in sample_texts) == [301, 302], sample_texts  # the skipped one is not saved
    with Image.open(new_grids[0]) as grid:  # 3 images: A1111's about-square grid, 2 x 2 with one spot empty
        assert grid.size == (256, 256), "the grid holds the skipped image and the two finished ones"
        grid_pixels = rgb(grid)
    finished = sorted(new_samples, key=lambda p: seed_of(saved_infotext(p)))
    with Image.open(finished[0]) as first, Image.open(finished[1]) as second:
        assert np.array_equal(grid_pixels[:128, 128:], rgb(first))
        assert np.array_equal(grid_pixels[128:, :128], rgb(second))
    assert not np.array_equal(grid_pixels[:128, :128], rgb(first))  # the skipped one, as far as it got


# ---------------------------------------------------------------- the image editors


def test_inpaint_repaints_only_what_the_mouse_painted(page, ui_server, tmp_path):
    source, original = input_image(tmp_path)
    original = original.astype(int)
    open_tab(page, "tab_img2img")
    open_tab(page, "img2img_inpaint_tab")
    editor = Editor(page, "img2maskimg")
    editor.upload(source)
    editor.stroke([(48, 64), (80, 64)])  # across the middle of the red circle
    painted, colours = editor.painted()
    # the inpaint brush paints white; the stroke covers the line it was dragged along, and not the corners
    assert painted[64, 48:81].all(), "the stroke did not paint where the mouse went"
    inner = ndimage.binary_erosion(painted, iterations=2)  # its edge is antialiased
    assert (colours[inner] > 240).all(), "the inpaint brush should paint white"
    assert not painted[:16, :16].any() and not painted[-16:, -16:].any()
    area = painted.sum()
    assert 32 * 8 < area < 128 * 128 / 2, f"{area} pixels painted"

    set_number(page, "img2img_mask_blur", 0)
    fill_text(page, "img2img_prompt", "a yellow circle on a blue background")
    set_number(page, "img2img_denoising_strength", 0.9)
    set_number(page, "img2img_seed", 4)
    result = generate_img2img(page, ui_server[1])

    far = distance_from(painted) > 12
    differing = np.argwhere((result != original).any(-1) & far)
    assert differing.size == 0, f"{len(differing)} pixels far from the stroke changed, e.g. (y, x) {differing[:5]}"
    core = ndimage.binary_erosion(painted, iterations=4)
    change = np.abs(result - original)[core].mean()
    assert change > 30, f"the painted area barely changed (mean difference {change:.1f})"
    # what was red there is now yellow: the prompt's colour, where the circle was painted over
    red_core = core & (np.abs(original - (220, 40, 40)).sum(-1) < 10)
    r, g, b = result[red_core].mean(0)
    assert r > 180 and g > 150 and b < 120, (r, g, b)


def closer_to(pixels: np.ndarray, colour, than: np.ndarray) -> float:
    """The share of `pixels` nearer to `colour` than to the same pixels of `than` (sum of |RGB|)."""
    return float((np.abs(pixels - colour).sum(-1) < np.abs(pixels - than).sum(-1)).mean())


def test_sketch_strokes_go_into_the_init_image(page, ui_server, tmp_path):
    source, _ = input_image(tmp_path)
    open_tab(page, "tab_img2img")
    open_tab(page, "img2img_img2img_sketch_tab")
    editor = Editor(page, "img2img_sketch")
    editor.upload(source)
    fill_text(page, "img2img_prompt", PROMPT)
    set_number(page, "img2img_denoising_strength", 0.15)
    set_number(page, "img2img_seed", 6)
    plain = generate_img2img(page, ui_server[1])  # the same request without a stroke

    editor.stroke([(14, 20), (14, 108)])  # down the blue left of the circle
    painted, colours = editor.painted()
    inner = ndimage.binary_erosion(painted, iterations=2)  # its edge is antialiased
    assert inner[30:100, 14].all(), "the stroke did not paint where the mouse went"
    brush = colours[inner][0]
    assert (colours[inner] == brush).all(), "a stroke of one colour"
    sketched = generate_img2img(page, ui_server[1])

    # the stroke went into the image: where it was drawn the result took its colour; elsewhere little changed
    assert np.abs(sketched - plain)[inner].mean() > 60
    assert closer_to(sketched[inner], brush, plain[inner]) > 0.9, (brush, sketched[inner].mean(0))
    far = distance_from(painted) > 12
    assert np.abs(sketched - plain)[far].mean() < 10


def test_inpaint_sketch_paints_its_colour_into_the_masked_area_only(page, ui_server, tmp_path):
    source, original = input_image(tmp_path)
    original = original.astype(int)
    open_tab(page, "tab_img2img")
    open_tab(page, "img2img_inpaint_sketch_tab")
    editor = Editor(page, "inpaint_sketch")
    editor.upload(source)
    editor.stroke([(14, 20), (14, 108)])
    painted, colours = editor.painted()
    inner = ndimage.binary_erosion(painted, iterations=2)
    assert inner[30:100, 14].all(), "the stroke did not paint where the mouse went"
    brush = colours[inner][0]

    expect(page.locator("#img2img_mask_blur")).to_be_visible()
    set_number(page, "img2img_mask_blur", 0)
    fill_text(page, "img2img_prompt", PROMPT)
    set_number(page, "img2img_denoising_strength", 0.15)
    set_number(page, "img2img_seed", 6)
    result = generate_img2img(page, ui_server[1])

    far = distance_from(painted) > 12
    differing = np.argwhere((result != original).any(-1) & far)
    assert differing.size == 0, f"{len(differing)} pixels far from the stroke changed, e.g. (y, x) {differing[:5]}"
    assert closer_to(result[inner], brush, original[inner]) > 0.9, (brush, result[inner].mean(0))


# ---------------------------------------------------------------- img2img Batch


def test_batch_processes_a_folder_into_another(page, ui_server):
    data = ui_server[1]  # folders the page names must be inside the data folder (or --allowed-paths)
    inputs, outputs = data / "batch-in", data / "batch-out"
    inputs.mkdir()
    outputs.mkdir()
    scenes = {"a_red_circle.png": INPUT_SCENE, "b_green_square.png": Scene("green", "square", "white", 60, 66, 64)}
    for name, scene in scenes.items():
        Image.fromarray(render(scene)).save(inputs / name)
    (inputs / "notes.txt").write_text("not an image")

    open_tab(page, "tab_img2img")
    open_tab(page, "img2img_batch_tab")
    fill_text(page, "img2img_batch_input_dir", str(inputs))
    fill_text(page, "img2img_batch_output_dir", str(outputs))
    set_number(page, "img2img_denoising_strength", 0.3)
    set_number(page, "img2img_seed", 8)
    set_number(page, "img2img_steps", 10)
    page.locator("#img2img_generate").click()
    log = page.locator("#html_log_img2img")
    expect(log).to_contain_text("2 of 2 images done", timeout=120_000)
    wait_idle(page, "img2img")
    expect(log.locator(".sd-error")).to_have_count(0)
    urls = wait_for_gallery(page, "img2img_gallery", 2)
    assert len(urls) == 2, urls

    # as A1111 saves a batch: right in the folder (no date subfolder), each file named after its input
    saved = sorted(outputs.iterdir())
    assert [p.suffix for p in saved] == [".png", ".png"], saved
    assert all(Path(name).stem in p.name for p, name in zip(saved, scenes)), saved
    for path, scene in zip(saved, scenes.values()):
        text = saved_infotext(path)
        assert "Denoising strength: 0.3" in text and "Steps: 10," in text, text
        with Image.open(path) as im:
            assert im.size == (128, 128)
            verdict = judge(im)
        assert verdict.matches(scene.colour, scene.shape, scene.background), (path.name, verdict)
    assert {seed_of(saved_infotext(p)) for p in saved} == {8}  # each image is its own job with the seed given

    # a folder that is not there: said on the page, nothing run
    fill_text(page, "img2img_batch_input_dir", str(data / "missing"))
    page.locator("#img2img_generate").click()
    error = log.locator(".sd-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("missing")
    expect(error).to_contain_text("is not a folder")
    wait_idle(page, "img2img", timeout_ms=10_000)
    assert error_toasts(page) == []
    assert len(list(outputs.iterdir())) == 2

    # a folder outside the data folder: refused with the reason, nothing read or written
    fill_text(page, "img2img_batch_input_dir", str(inputs))
    fill_text(page, "img2img_batch_output_dir", "/tmp")
    page.locator("#img2img_generate").click()
    expect(error).to_contain_text("Batch: output directory: '/tmp' is outside")
    wait_idle(page, "img2img", timeout_ms=10_000)
    assert len(list(outputs.iterdir())) == 2

    # A1111's setting "Show the first N batch img2img results in UI": every image is saved, the first N shown
    url, shown_one = ui_server[0], data / "batch-out-2"
    set_options(url, img2img_batch_show_results_limit=1)
    try:
        fill_text(page, "img2img_batch_output_dir", str(shown_one))
        page.locator("#img2img_generate").click()
        expect(log).to_contain_text("Showing the first 1 (the setting", timeout=120_000)
        wait_idle(page, "img2img")
        expect(log).to_contain_text("2 of 2 images done")
        assert len(gallery_image_urls(page, "img2img_gallery")) == 1
        assert len(list(shown_one.iterdir())) == 2
    finally:
        set_options(url, img2img_batch_show_results_limit=32)


def set_options(url: str, **values) -> None:
    r = requests.post(url + "/sdapi/v1/options", json=values, timeout=30)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- txt2img extras


def test_hires_fix_from_the_page(page, ui_server):
    """Hires. fix from the page; its result sent to img2img gives img2img the picture's own size (A1111's
    send_size: 192x192, not the infotext's first-pass 128x128) and seed; with send_size and send_seed off, the
    results' Send to leaves img2img's size and seed as they are."""
    fill_text(page, "txt2img_prompt", PROMPT)
    set_number(page, "txt2img_steps", 4)
    set_number(page, "txt2img_seed", 12)
    open_accordion(page, "txt2img_hr", "Hires. fix")
    set_checkbox(page, "txt2img_enable_hr", True)
    set_number(page, "txt2img_hr_scale", 1.5)
    set_number(page, "txt2img_hires_steps", 3)
    expect(page.locator("#txt2img_hires_size")).to_contain_text("from 128x128 to 192x192")
    assert read_value(page, "txt2img_denoising_strength") == "0.7"
    page.locator("#txt2img_generate").click()
    urls = wait_for_gallery(page, "txt2img_gallery", 1)
    wait_idle(page, "txt2img")
    assert len(urls) == 1, urls
    image = fetch_image(page, urls[0])
    assert image.size == (192, 192)
    infotext = read_value(page, "txt2img_infotext")
    for needle in ("Steps: 4,", "Size: 128x128", "Seed: 12,", "Denoising strength: 0.7", "Hires upscale: 1.5",
                   "Hires steps: 3", "Hires upscaler: Latent"):
        assert needle in infotext, (needle, infotext)

    page.locator("#txt2img_send_to_img2img").click()
    expect(page.locator("#tab_img2img-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img_width input[type=number]")).to_have_value("192")
    assert read_value(page, "img2img_height") == "192" and read_value(page, "img2img_seed") == "12"
    url = ui_server[0]
    set_options(url, send_size=False, send_seed=False)
    try:
        set_number(page, "img2img_width", 256)
        set_number(page, "img2img_seed", 5)
        fill_text(page, "img2img_prompt", "something else")
        open_tab(page, "tab_txt2img")
        page.locator("#txt2img_send_to_img2img").click()
        expect(page.locator("#img2img_prompt textarea")).to_have_value(PROMPT)  # the send is done
        assert read_value(page, "img2img_width") == "256" and read_value(page, "img2img_height") == "192"
        assert read_value(page, "img2img_seed") == "5"
    finally:
        set_options(url, send_size=True, send_seed=True)


def test_sparkles_button_upscales_the_selected_image_with_hires_fix(page):
    """✨ (A1111's txt2img_upscale): the shown image through Hires. fix with the accordion's settings, at its seed,
    without a first pass of its own; it takes the image's place in the gallery."""
    urls = generate_txt2img(page, PROMPT, 4, 31)
    assert fetch_image(page, urls[0]).size == (128, 128)
    set_number(page, "txt2img_seed", -1)  # the image's own seed is used, not the box's
    open_accordion(page, "txt2img_hr", "Hires. fix")  # its settings; the box itself may stay off
    set_number(page, "txt2img_hr_scale", 1.5)
    set_number(page, "txt2img_hires_steps", 2)
    page.locator("#txt2img_upscale").click()
    expect(page.locator("#txt2img_infotext textarea")).to_have_value(re.compile("Hires upscale: 1.5"), timeout=180_000)
    wait_idle(page, "txt2img")
    urls = gallery_image_urls(page, "txt2img_gallery")
    assert len(urls) == 1 and fetch_image(page, urls[0]).size == (192, 192)
    infotext = read_value(page, "txt2img_infotext")
    assert "Seed: 31," in infotext and "Size: 128x128" in infotext and "Hires steps: 2" in infotext, infotext
    assert error_toasts(page) == []


def test_send_to_inpaint_carries_image_prompt_and_seed(page):
    prompt = "a yellow square on a purple background"
    urls = generate_txt2img(page, prompt, 8, 21)
    generated = rgb(fetch_image(page, urls[0])).astype(int)

    page.locator("#txt2img_send_to_inpaint").click()
    expect(page.locator("#tab_img2img-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img_inpaint_tab-button")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img_prompt textarea")).to_have_value(prompt)
    assert read_value(page, "img2img_seed") == "21"
    assert read_value(page, "img2img_steps") == "8"
    expect(page.locator("#img2img_mask_blur")).to_be_visible()  # the inpaint options, as for a click on the tab

    editor = Editor(page, "img2maskimg")
    expect(editor.block).not_to_contain_text("Upload an image")
    editor.locate(generated, tolerance=40)  # a generated background is not quite flat
    shown = editor.pixels()
    difference = np.abs(shown - generated).mean()
    assert difference < 8, f"the editor shows another picture (mean difference {difference:.1f})"
    assert error_toasts(page) == []


def test_paste_button_fills_the_fields_from_a_pasted_infotext(page):
    text = ("a blue square\nNegative prompt: red\n"
            "Steps: 9, Sampler: Euler a, Schedule type: Karras, CFG scale: 4, Seed: 77, Size: 136x128")
    fill_text(page, "txt2img_prompt", text)
    page.locator("#txt2img_paste").click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a blue square")
    assert_pasted(page, neg_prompt="red", steps="9", sampling="Euler a", scheduler="Karras", cfg_scale="4",
                  seed="77", width="136", height="128")


def test_pasted_settings_fill_override_settings_for_the_tab_s_jobs(page, ui_server):
    """A1111's Override settings box: a paste lists the settings its infotext gives that differ from the current
    ones; the tab's jobs use those still listed (one taken out with its x is not), for the job only; a paste that
    gives none empties and hides it."""
    box = page.locator("#txt2img_override_settings")
    expect(box).to_be_hidden()
    fill_text(page, "txt2img_prompt", f"{PROMPT}\nSteps: 2, Sampler: Euler a, Seed: 5, Size: 64x64, RNG: NV, "
                                      "ENSD: 31337")
    page.locator("#txt2img_paste").click()
    tokens = box.locator(".token")
    expect(tokens).to_have_count(2)
    expect(tokens.filter(has_text="RNG: NV")).to_have_count(1)
    tokens.filter(has_text="RNG: NV").locator(".token-remove").click()
    expect(tokens).to_have_count(1)
    expect(tokens.first).to_have_text("ENSD: 31337")
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    expect(page.locator("#txt2img_infotext textarea")).to_have_value(re.compile("ENSD: 31337"), timeout=60_000)
    assert "RNG: NV" not in read_value(page, "txt2img_infotext")
    options = requests.get(ui_server[0] + "/sdapi/v1/options", timeout=60).json()
    assert (options["eta_noise_seed_delta"], options["randn_source"]) == (0, "CPU")  # the settings are as they were
    # (an infotext without RNG means A1111's GPU: it would list "RNG: GPU", as A1111's box does)
    fill_text(page, "txt2img_prompt", f"{PROMPT}\nSteps: 2, Sampler: Euler a, Seed: 5, Size: 64x64, RNG: CPU")
    page.locator("#txt2img_paste").click()
    expect(box).to_be_hidden()


def test_the_tiling_box_tiles_and_follows_pasted_infotexts(page):
    fill_text(page, "txt2img_prompt", PROMPT)
    set_number(page, "txt2img_steps", 2)
    set_checkbox(page, "txt2img_tiling", True)
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    wait_idle(page, "txt2img")
    infotext = read_value(page, "txt2img_infotext")
    assert "Tiling: True" in infotext, infotext
    box = block(page, "txt2img_tiling").locator("input[type=checkbox]")
    fill_text(page, "txt2img_prompt", infotext.replace("Tiling: True, ", ""))  # A1111 writes nothing when off
    page.locator("#txt2img_paste").click()
    expect(box).not_to_be_checked()
    fill_text(page, "txt2img_prompt", infotext)
    page.locator("#txt2img_paste").click()
    expect(box).to_be_checked()


def test_save_reuse_seed_and_random_seed(page, ui_server):
    _, data, _ = ui_server
    folder = data / "log" / "images"
    before = pngs(folder)
    fill_text(page, "txt2img_prompt", PROMPT)
    set_number(page, "txt2img_steps", 8)
    set_number(page, "txt2img_batch_count", 2)
    assert read_value(page, "txt2img_seed") == "-1"
    page.locator("#txt2img_generate").click()
    urls = wait_for_gallery(page, "txt2img_gallery", 3)
    wait_idle(page, "txt2img")
    first = seed_of(read_value(page, "txt2img_infotext"))  # the grid's, which is the first image's
    assert first >= 0

    # the second image (after the grid): its own infotext, and ♻ takes its seed
    page.locator("#txt2img_gallery .grid-container button.thumbnail-item").nth(2).click()
    expect(page.locator("#txt2img_infotext textarea")).to_have_value(re.compile(rf"Seed: {first + 1},"))
    page.locator("#txt2img_reuse_seed").click()
    expect(page.locator("#txt2img_seed input[type=number]")).to_have_value(str(first + 1))
    page.locator("#txt2img_random_seed").click()
    expect(page.locator("#txt2img_seed input[type=number]")).to_have_value("-1")

    page.locator("#txt2img_save").click()
    download = page.locator("#download_files_txt2img")
    expect(download).to_be_visible()
    # (the generation's own log line also starts with "Saved", and names the txt2img folder)
    expect(page.locator("#html_log_txt2img")).to_contain_text(re.compile(r"Saved \S*log[/\\]images[/\\]"))
    new = sorted(pngs(folder) - before)
    assert len(new) == 1, new
    text = saved_infotext(new[0])
    assert text.startswith(PROMPT + "\n") and f"Seed: {first + 1}," in text, text
    with Image.open(new[0]) as im:
        assert np.array_equal(rgb(im), rgb(fetch_image(page, urls[2])))
    link = download.locator("a[href]").first
    assert link.get_attribute("href").endswith("/" + quote(new[0].name)), link.get_attribute("href")


def test_generate_forever_repeats_until_cancelled(page, ui_server):
    """A1111's right-click menu on Generate: "Generate forever" runs the tab's job again each time it ends (a new
    random seed each time, with seed -1), also while another tab is open, until "Cancel generate forever", which
    Interrupt's menu offers too."""
    _, data, _ = ui_server
    samples = data / "outputs" / "txt2img-images"
    before = pngs(samples)
    fill_text(page, "txt2img_prompt", PROMPT)
    set_number(page, "txt2img_steps", 2)
    set_number(page, "txt2img_seed", -1)
    sent = SentRequests(page)  # the jobs the page asks for: each saves one picture
    page.locator("#txt2img_generate").click(button="right")
    page.get_by_role("menuitem", name="Generate forever", exact=True).click()
    expect(page.locator("body")).to_have_class(re.compile(r"\bsd-forever-txt2img\b"))
    deadline = time.monotonic() + 180
    while len(pngs(samples) - before) < 2:
        assert time.monotonic() < deadline, "Generate forever did not get to a second job"
        page.wait_for_timeout(200)
    open_tab(page, "tab_img2img")  # it goes on while another tab is open, as A1111's does
    while len(pngs(samples) - before) < 4:
        assert time.monotonic() < deadline, "Generate forever stopped while another tab was open"
        page.wait_for_timeout(200)
    open_tab(page, "tab_txt2img")
    # cancelled from whichever button shows now: Generate between two jobs, Interrupt during one
    page.locator("#txt2img_generate, #txt2img_interrupt").locator("visible=true").first.click(button="right")
    cancel = page.get_by_role("menuitem", name="Cancel generate forever", exact=True)
    opened = len(pngs(samples))
    while len(pngs(samples)) < opened + 2:  # the loop's own click started a job since the menu opened
        assert time.monotonic() < deadline + 60, "Generate forever stopped while its menu was open"
        page.wait_for_timeout(200)
    expect(cancel).to_be_visible()  # those clicks do not close the user's menu (they did, under the pointer)
    cancel.click()
    expect(page.locator("body")).not_to_have_class(re.compile(r"\bsd-forever-txt2img\b"))
    # A job the loop asked for just before the cancel still runs (its request was already sent, as in A1111): wait
    # until every job asked for has saved its picture. Once cancelled, nothing asks for another.
    asked = sent.count("txt2img")
    while len(pngs(samples) - before) < asked:
        assert time.monotonic() < deadline + 120, (len(pngs(samples) - before), asked)
        page.wait_for_timeout(200)
    wait_idle(page, "txt2img")
    done = pngs(samples)
    page.wait_for_timeout(1500)  # three ticks of the repeat: once cancelled, no job starts again
    expect(page.locator("#txt2img_interrupt")).to_be_hidden()
    assert sent.count("txt2img") == asked and pngs(samples) == done
    new = done - before
    assert len(new) == asked
    assert len({seed_of(saved_infotext(p)) for p in new}) == len(new) >= 4


def test_live_preview_shows_while_the_job_runs(page):
    fill_text(page, "txt2img_prompt", PROMPT)
    set_number(page, "txt2img_steps", 150)
    set_number(page, "txt2img_seed", 13)
    preview = page.locator("#txt2img_preview")
    expect(preview).to_be_hidden()
    page.locator("#txt2img_generate").click()
    interrupt = page.locator("#txt2img_interrupt")
    expect(interrupt).to_be_visible()
    seen: list[str] = []  # the previews shown while the progress said a step
    started = time.monotonic()
    deadline = started + 120
    # each look reads the buttons, the progress and the preview in one step in the page: the preview leaves
    # the page when the job ends, so a look in several steps could find it gone half-way
    while (view := job_view(page, "txt2img")).interrupt:
        assert time.monotonic() < deadline, "the job did not end"
        if view.preview and view.step and (not seen or view.preview != seen[-1]):
            seen.append(view.preview)
        page.wait_for_timeout(100)
    ran = time.monotonic() - started
    wait_idle(page, "txt2img")
    # the defaults: a new preview every 10 steps (15 in this job), at most once a second (live_preview_refresh_period)
    assert seen, "no live preview while the job ran"
    assert len(seen) <= ran + 1, f"{len(seen)} previews in {ran:.1f}s: more than one a second"
    if ran > 3:
        assert len(seen) >= 2, f"{len(seen)} previews in {ran:.1f}s: the preview was not refreshed"
    picture = fetch_image(page, seen[-1])
    assert picture.width > 0
    expect(preview).to_be_hidden()
    urls = wait_for_gallery(page, "txt2img_gallery", 1)
    assert judge(fetch_image(page, urls[0])).matches("red", "circle", "blue")
