"""The Script dropdown in a real browser: X/Y/Z plot chosen, an axis with choices shows them in a dropdown,
Generate makes the plot's grid with its infotext, and pasting that infotext chooses the plot again; SD upscale in
the img2img tab, Loopback, Poor man's outpainting and Outpainting mk2."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from PIL import Image

from tests.support.browser import (  # noqa: F401 (browser, page and ui_server are fixtures)
    block, browser, fetch_image, fill_text, page, read_value, select_option, set_number, ui_server, upload_file,
    wait_for_gallery)
from tests.support.tabs import PROMPT, open_tab, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.server]


def test_xyz_plot_from_the_page_and_pasted_back(page):
    expect(page.locator("#txt2img_xyz_x_type")).to_be_hidden()  # None: no script's controls
    select_option(page, "txt2img_script_list", "X/Y/Z plot")
    expect(page.locator("#txt2img_xyz_x_type")).to_be_visible()
    assert read_value(page, "txt2img_xyz_x_type") == "Seed"  # A1111's default X type

    select_option(page, "txt2img_xyz_x_type", "Sampler")  # an axis with choices: a dropdown of them
    expect(page.locator("#txt2img_xyz_x_values_dropdown")).to_be_visible()
    expect(page.locator("#txt2img_xyz_x_values")).to_be_hidden()

    select_option(page, "txt2img_xyz_x_type", "CFG Scale")
    expect(page.locator("#txt2img_xyz_x_values")).to_be_visible()
    fill_text(page, "txt2img_xyz_x_values", "3, 7")
    fill_text(page, "txt2img_prompt", PROMPT)
    set_number(page, "txt2img_seed", 5)
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    wait_idle(page, "txt2img")
    infotext = read_value(page, "txt2img_infotext")
    assert 'Script: X/Y/Z plot, X Type: CFG Scale, X Values: "3, 7"' in infotext, infotext

    # changed to an axis whose values are a dropdown, then the script put away
    select_option(page, "txt2img_xyz_x_type", "Sampler")
    expect(page.locator("#txt2img_xyz_x_values_dropdown")).to_be_visible()
    select_option(page, "txt2img_script_list", "None")
    expect(page.locator("#txt2img_xyz_x_type")).to_be_hidden()
    fill_text(page, "txt2img_prompt", infotext)
    page.locator("#txt2img_paste").click()
    expect(page.locator("#txt2img_script_list input[role=combobox]")).to_have_value("X/Y/Z plot")
    expect(page.locator("#txt2img_xyz_x_type input[role=combobox]")).to_have_value("CFG Scale")
    # The paste writes values only. The type's change event, which the paste fires, answers later: it alone
    # hides the dropdown and shows the text box again. It used to write back values it had read before the
    # paste; once it has answered, the pasted values must still be there.
    expect(page.locator("#txt2img_xyz_x_values_dropdown")).to_be_hidden()
    expect(page.locator("#txt2img_xyz_x_values")).to_be_visible()
    assert read_value(page, "txt2img_xyz_x_values") == "3, 7"


def img2img_with_script(page, tmp_path, colour: tuple[int, int, int], script: str, size: int = 64) -> None:
    """The img2img tab with a plain init image of `colour`, the test prompt, 2 steps at 64x64 and `script` chosen."""
    source = tmp_path / "init.png"
    Image.new("RGB", (size, size), colour).save(source)
    open_tab(page, "tab_img2img")
    upload_file(page, "img2img_image", source)
    fill_text(page, "img2img_prompt", PROMPT)
    set_number(page, "img2img_steps", 2)
    set_number(page, "img2img_width", 64)
    set_number(page, "img2img_height", 64)
    select_option(page, "img2img_script_list", script)


def test_sd_upscale_from_the_img2img_tab(page, tmp_path):
    img2img_with_script(page, tmp_path, (200, 40, 30), "SD upscale", size=96)
    set_number(page, "img2img_sd_upscale_overlap", 16)
    block(page, "img2img_sd_upscale_upscaler_index").get_by_label("Lanczos", exact=True).check()
    page.locator("#img2img_generate").click()
    result = fetch_image(page, wait_for_gallery(page, "img2img_gallery", 1)[0])
    wait_idle(page, "img2img")
    assert result.size == (192, 192)  # 96 x the scale factor's default 2, in 64-pixel tiles
    expect(page.locator("#img2img_infotext textarea")).to_have_value(
        re.compile(r"Size: 64x64, .*SD upscale overlap: 16, SD upscale upscaler: Lanczos, Version: ", re.S))


def test_loopback_from_the_img2img_tab(page, tmp_path):
    img2img_with_script(page, tmp_path, (30, 90, 200), "Loopback")
    set_number(page, "img2img_seed", 9)
    set_number(page, "img2img_loopback_loops", 2)
    select_option(page, "img2img_loopback_curve", "Lazy")
    page.locator("#img2img_generate").click()
    urls = wait_for_gallery(page, "img2img_gallery", 3)
    wait_idle(page, "img2img")
    assert [fetch_image(page, u).size for u in urls] == [(128, 64), (64, 64), (64, 64)]  # the row grid, the loops
    text = read_value(page, "img2img_infotext")
    assert "Final denoising strength: 0.5, Denoising curve: Lazy" in text and "Seed: 9," in text, text


def test_poor_mans_outpainting_from_the_img2img_tab(page, tmp_path):
    img2img_with_script(page, tmp_path, (230, 200, 40), "Poor man's outpainting")
    set_number(page, "img2img_poor_mans_outpainting_pixels", 32)
    for side in ("left", "up", "down"):  # grow to the right only
        block(page, "img2img_poor_mans_outpainting_direction").get_by_label(side, exact=True).uncheck()
    page.locator("#img2img_generate").click()
    result = fetch_image(page, wait_for_gallery(page, "img2img_gallery", 1)[0])
    wait_idle(page, "img2img")
    assert result.size == (128, 64)
    assert "Mask blur: 8" in read_value(page, "img2img_infotext")


def test_outpainting_mk2_from_the_img2img_tab(page, tmp_path):
    img2img_with_script(page, tmp_path, (60, 160, 220), "Outpainting mk2")
    set_number(page, "img2img_outpainting_mk2_pixels", 32)
    set_number(page, "img2img_outpainting_mk2_mask_blur", 2)
    for side in ("left", "right", "up"):  # grow downwards only
        block(page, "img2img_outpainting_mk2_direction").get_by_label(side, exact=True).uncheck()
    page.locator("#img2img_generate").click()
    result = fetch_image(page, wait_for_gallery(page, "img2img_gallery", 1)[0])
    wait_idle(page, "img2img")
    assert result.size == (64, 128)
    text = read_value(page, "img2img_infotext")  # the first pass's: a 64x64 strip, blurred up-down only (no key)
    assert "Size: 64x64," in text and "Mask blur" not in text, text
