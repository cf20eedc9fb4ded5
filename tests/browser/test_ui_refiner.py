"""The Refiner accordion in a real browser: a checkpoint picked there (the built-in demo model as the base, a
tiny SD 1.x file as the refiner, as A1111 lets any checkpoint refine) is sent with Generate and the job switches
to it; a pasted infotext that names a refiner turns the accordion on and fills it."""

from __future__ import annotations

import shutil

import pytest
from playwright.sync_api import expect

from tests.support.browser import (  # noqa: F401 (browser, page and ui_server are fixtures)
    SentRequests, browser, fill_text, find_option, open_accordion, page, read_value, select_option, set_checkbox,
    set_number, ui_server, wait_for_gallery)
from tests.support.tabs import PROMPT, open_tab, wait_idle

pytestmark = [pytest.mark.browser, pytest.mark.server]


def add_refiner(ui_server, tiny_dir, page) -> str:
    """sd1.safetensors copied into the server's folder; the title the accordion's 🔄 lists it by."""
    folder = ui_server[1] / "models" / "Stable-diffusion"
    for name in ("sd1.safetensors", "sd1.yaml"):
        if not (folder / name).exists():
            shutil.copy(tiny_dir / name, folder / name)
    open_accordion(page, "txt2img_refiner", "Refiner")
    expect(page.locator("#txt2img_enable_refiner")).to_be_visible()
    assert read_value(page, "txt2img_enable_refiner") is False  # off until asked for, as in A1111
    assert read_value(page, "txt2img_refiner_switch_at") == "0.8"
    page.locator("#txt2img_refiner_checkpoint_refresh").click()
    return find_option(page, "txt2img_refiner_checkpoint", "sd1.safetensors")


def test_generate_with_a_refiner_from_the_accordion(page, ui_server, tiny_dir):
    refiner = add_refiner(ui_server, tiny_dir, page)
    assert "shapes-tiny" in read_value(page, "sd_checkpoint")  # the built-in demo model is the base
    select_option(page, "txt2img_refiner_checkpoint", refiner)
    set_checkbox(page, "txt2img_enable_refiner", True)
    set_number(page, "txt2img_refiner_switch_at", 0.5)
    fill_text(page, "txt2img_prompt", PROMPT)
    set_number(page, "txt2img_steps", 4)
    set_number(page, "txt2img_seed", 31)

    sent = SentRequests(page)
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    wait_idle(page, "txt2img")
    request = sent.last("txt2img")
    assert request["txt2img_enable_refiner"] is True
    assert request["txt2img_refiner_checkpoint"] == refiner
    assert request["txt2img_refiner_switch_at"] == 0.5
    infotext = read_value(page, "txt2img_infotext")
    assert "Refiner: sd1 [" in infotext and "Refiner switch at: 0.5" in infotext, infotext
    assert "Model: shapes-tiny" in infotext, infotext  # the job's own model is still the base


def test_paste_turns_the_refiner_on_and_fills_it(page, ui_server, tiny_dir):
    refiner = add_refiner(ui_server, tiny_dir, page)
    text = ("a blue square\nSteps: 9, Sampler: Euler a, CFG scale: 4, Seed: 77, Size: 128x128, "
            "Refiner: sd1, Refiner switch at: 0.35, Version: v1.10.1")
    fill_text(page, "txt2img_prompt", text)
    page.locator("#txt2img_paste").click()
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a blue square")
    expect(page.locator("#txt2img_enable_refiner input[type=checkbox]")).to_be_checked()
    expect(page.locator("#txt2img_refiner_checkpoint input[role=combobox]")).to_have_value(refiner)
    expect(page.locator("#txt2img_refiner_switch_at input[type=number]")).to_have_value("0.35")

    # an infotext without a refiner turns it off again (the checkpoint stays chosen)
    fill_text(page, "txt2img_prompt", "a red circle\nSteps: 5, Sampler: Euler a, CFG scale: 4, Seed: 7, Size: 128x128")
    page.locator("#txt2img_paste").click()
    expect(page.locator("#txt2img_enable_refiner input[type=checkbox]")).not_to_be_checked()

    open_tab(page, "tab_img2img")  # img2img has the same accordion
    page.locator("#img2img_refiner").get_by_text("Refiner", exact=True).first.click()
    expect(page.locator("#img2img_refiner_switch_at input[type=number]")).to_have_value("0.8")
    assert read_value(page, "img2img_enable_refiner") is False
