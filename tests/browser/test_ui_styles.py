"""Styles in a real browser: styles.csv written while the server runs is offered in the Styles list, a
chosen style is merged into the prompts of the job (and its infotext), 📋 writes it into the boxes, and the
🖌️ editor saves and deletes styles in the file."""

from __future__ import annotations

import csv
import io

import pytest
from playwright.sync_api import expect

from tests.support.browser import (  # noqa: F401 (browser, page and ui_server are fixtures)
    browser, fill_text, option_labels, page, read_value, select_option, set_number, ui_server, wait_for_gallery)

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


def test_the_style_editor_creates_changes_and_deletes_styles_in_styles_csv(page, ui_server):
    _, data, _ = ui_server
    csv_file = data / "styles.csv"
    # a row of someone's own (with a column of another tool) that must come through every write
    csv_file.write_text('name,prompt,negative_prompt,notes\n"Kept","{prompt}, kept","","mine"\n', encoding="utf-8")
    page.on("dialog", lambda dialog: dialog.accept())  # Delete asks first, as A1111's does
    fill_text(page, "txt2img_prompt", "a red circle, sharp")
    fill_text(page, "txt2img_neg_prompt", "blurry")
    page.locator("#txt2img_styles_edit_button").click()
    expect(page.locator("#txt2img_styles_dialog")).to_be_visible()
    select = page.locator("#txt2img_styles_edit_select input[role=combobox]")
    select.fill("")
    select.press_sequentially("Sharp")  # a new name: typed, as A1111's editor takes it
    select.press("Enter")
    page.locator("#txt2img_style_copy").click()  # the main prompts into the style's boxes
    expect(page.locator("#txt2img_edit_style_prompt textarea")).to_have_value("a red circle, sharp")
    fill_text(page, "txt2img_edit_style_prompt", "{prompt}, sharp focus")
    page.locator("#txt2img_edit_style_save").click()
    expect(page.locator("#txt2img_edit_style_status")).to_contain_text("Saved style 'Sharp' in styles.csv")
    rows = list(csv.DictReader(io.StringIO(csv_file.read_text(encoding="utf-8-sig"))))
    assert [(r["name"], r["prompt"], r["negative_prompt"], r["notes"]) for r in rows] == [
        ("Kept", "{prompt}, kept", "", "mine"), ("Sharp", "{prompt}, sharp focus", "blurry", "")]
    assert "Sharp" in option_labels(page, "txt2img_styles")  # the main list offers it at once

    # picking a style fills its texts; a change is saved over it
    select_option(page, "txt2img_styles_edit_select", "Kept")
    expect(page.locator("#txt2img_edit_style_prompt textarea")).to_have_value("{prompt}, kept")
    fill_text(page, "txt2img_edit_style_neg_prompt", "dark")
    page.locator("#txt2img_edit_style_save").click()
    expect(page.locator("#txt2img_edit_style_status")).to_contain_text("Saved style 'Kept'")
    rows = list(csv.DictReader(io.StringIO(csv_file.read_text(encoding="utf-8-sig"))))
    assert [(r["name"], r["negative_prompt"], r["notes"]) for r in rows] == [("Kept", "dark", "mine"),
                                                                              ("Sharp", "blurry", "")]
    main = page.locator("#txt2img_styles input[role=combobox]")  # chosen in the main list: the delete drops it
    main.click()
    main.press_sequentially("Kept")
    page.locator("#txt2img_styles").get_by_role("option", name="Kept", exact=True).click()
    main.press("Escape")
    chosen = page.locator("#txt2img_styles .token")
    expect(chosen).to_have_count(1)
    page.locator("#txt2img_edit_style_delete").click()
    expect(page.locator("#txt2img_edit_style_status")).to_contain_text("Deleted style 'Kept'")
    expect(chosen).to_have_count(0)
    # the delete empties the editor's name, and the event that follows (it hides Save) keeps the message: it used
    # to clear it a moment after it appeared, for the user as for a slow test run
    expect(page.locator("#txt2img_edit_style_save")).to_be_hidden()
    expect(page.locator("#txt2img_edit_style_status")).to_contain_text("Deleted style 'Kept'", timeout=1)
    rows = list(csv.DictReader(io.StringIO(csv_file.read_text(encoding="utf-8-sig"))))
    assert [r["name"] for r in rows] == ["Sharp"]
    page.locator("#txt2img_edit_style_close").click()
    expect(page.locator("#txt2img_styles_dialog")).to_be_hidden()
