"""Styles in a real browser: styles.csv written while the server runs is offered in the Styles list, a
chosen style is merged into the prompts of the job (and its infotext), 📋 writes it into the boxes."""

from __future__ import annotations

import pytest

from tests.support.browser import (  # noqa: F401 (browser, page and ui_server are fixtures)
    browser, fill_text, page, read_value, set_number, ui_server, wait_for_gallery)

pytestmark = [pytest.mark.browser, pytest.mark.server]


def test_styles_are_offered_applied_to_the_job_and_written_into_the_prompt(page, ui_server):
    _, data, _ = ui_server
    (data / "styles.csv").write_text('name,prompt,negative_prompt\n'
                                     '"On blue","{prompt} on a blue background","green"\n', encoding="utf-8")
    fill_text(page, "txt2img_prompt", "a red circle")
    set_number(page, "txt2img_steps", 4)
    styles = page.locator("#txt2img_styles input[role=combobox]")  # a multi-select: the list stays open
    styles.click()
    styles.press_sequentially("On blue")
    page.locator("#txt2img_styles").get_by_role("option", name="On blue", exact=True).click()
    styles.press("Escape")
    page.locator("#txt2img_styles").get_by_text("On blue").first.wait_for()
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Steps: 4')")
    infotext = read_value(page, "txt2img_infotext")
    assert infotext.startswith("a red circle on a blue background\nNegative prompt: green\n")
    assert read_value(page, "txt2img_prompt") == "a red circle"  # the box keeps what was typed

    page.locator("#txt2img_style_apply").click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.includes('blue')")
    assert read_value(page, "txt2img_prompt") == "a red circle on a blue background"
    assert read_value(page, "txt2img_neg_prompt") == "green"
