"""The Settings tab in a real browser: Apply saves to config.json, takes effect at once, and the page
shows the saved values after the server restarts on the same data dir; and the server stops promptly
when told to while a page is open. This module has its own server (its tests stop it), so it does not
share test_ui_tabs.py's."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
import requests
from playwright.sync_api import expect

from modules.settings import section_of
from modules.ui.settings_tab import section_elem_id
from tests.support.browser import (  # noqa: F401 (browser and page are fixtures)
    SCREENSHOTS, browser, error_toasts, fill_text, open_app, option_labels, page, read_value, set_checkbox, set_number,
    wait_for_gallery)
from tests.support.server import start_server, stop_server
from tests.support.tabs import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.server]


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """Like tests.support.browser's ui_server, but a list, so the test can put the restarted server's url and
    process in it; teardown stops whichever process runs then. (Overrides the `page` fixture's server.)"""
    data = tmp_path_factory.mktemp("ui_settings")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    # two more settings in the top bar (A1111's quicksettings_list; a name only A1111 has is left out)
    (data / "config.json").write_text(json.dumps({"quicksettings_list": [
        "sd_model_checkpoint", "eta_noise_seed_delta", "sd_unet", "token_merging_ratio"],
        "hide_samplers": ["DDIM", "Euler a"],  # see test_hidden_samplers_...
        "hidden_tabs": ["Checkpoint Merger", "Train"], "ui_tab_order": ["txt2img", "img2img", "PNG Info"],
        # Settings in UI (see test_settings_in_ui_...): the top bar's checkpoint and a name only A1111 has are left out
        "extra_options_txt2img": ["eta_ancestral", "sd_model_checkpoint", "sd_unet"],
        "extra_options_img2img": ["randn_source"]}))
    proc, url = start_server(data, "--api")
    server = [url, data, proc]
    yield server
    if server[2].poll() is None:  # stop_server fails on a process that is gone (its SIGKILL fallback raises)
        stop_server(server[2])


def open_settings(page) -> None:
    open_tab(page, "tab_settings")
    expect(page.locator("#settings_submit")).to_be_visible()


def show_setting(page, name: str) -> None:
    """Select the Settings section (a tab; only the selected one is rendered) that holds option `name`. The
    section is looked up in the app's own table, so the page gets the full wait to draw it."""
    title = section_of(name)
    assert title, f"option {name} is in no Settings section"
    open_tab(page, section_elem_id(title))  # waits for the first render, after which Gradio writes stored values
    page.locator(f"#setting_{name}").wait_for(state="visible")


def test_settings_apply_saves_takes_effect_and_survive_a_restart(browser, page, ui_server):
    url, data, proc = ui_server
    config = data / "config.json"

    open_settings(page)
    show_setting(page, "samples_save")
    assert read_value(page, "setting_samples_save") is True
    set_checkbox(page, "setting_samples_save", False)
    show_setting(page, "n_rows")
    assert read_value(page, "setting_n_rows") == "-1"
    set_number(page, "setting_n_rows", 2)
    page.locator("#settings_submit").click()
    result = page.locator("#settings_result")
    expect(result).to_contain_text("2 settings changed")
    expect(result).to_contain_text("samples_save")
    expect(result).to_contain_text("n_rows")
    expect(result.locator(".sd-error")).to_have_count(0)
    saved = json.loads(config.read_text())
    assert saved["samples_save"] is False and saved["n_rows"] == 2, saved

    # Apply again without changes: nothing to do, said so
    page.locator("#settings_submit").click()
    expect(result).to_contain_text("Nothing changed")

    # in effect at once: a generation now is shown but not saved
    open_tab(page, "tab_txt2img")
    fill_text(page, "txt2img_prompt", "a red circle on a blue background")
    set_number(page, "txt2img_steps", 4)
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    expect(page.locator("#txt2img_generate")).to_be_visible()
    expect(page.locator("#html_log_txt2img")).not_to_contain_text("Saved")
    outputs = data / "outputs"
    assert not outputs.exists() or not list(outputs.rglob("*.png")), list(outputs.rglob("*.png"))

    # restart on the same data dir: the page shows the saved values. The page is closed first: a server
    # with a page open does not stop on SIGTERM (test_server_stops_promptly_while_a_page_is_open).
    page.goto("about:blank")
    stop_server(proc)
    proc.wait(10)
    proc, url = start_server(data, "--api")
    ui_server[0], ui_server[2] = url, proc
    fresh = open_app(browser, url)
    try:
        open_settings(fresh)
        show_setting(fresh, "n_rows")
        assert read_value(fresh, "setting_n_rows") == "2"
        show_setting(fresh, "grid_save")
        assert read_value(fresh, "setting_grid_save") is True  # untouched options keep their defaults
        show_setting(fresh, "samples_save")
        assert read_value(fresh, "setting_samples_save") is False
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        fresh.screenshot(path=str(SCREENSHOTS / "tab_settings.png"), full_page=True)
    finally:
        fresh.context.close()
    assert json.loads(config.read_text())["n_rows"] == 2


def test_quicksettings_sit_in_the_top_bar_and_apply_at_once(page, ui_server):
    _, data, _ = ui_server
    bar = page.locator("#quicksettings")
    expect(bar.locator("#setting_eta_noise_seed_delta")).to_be_visible()
    expect(bar.locator("#setting_token_merging_ratio")).to_be_visible()
    expect(bar.locator("#setting_sd_vae")).to_be_visible()  # the three of the top bar stay
    # the page load's refresh of their values comes first: a value typed before it would be replaced
    page.wait_for_selector("body[data-sd-quick-settings=current]", state="attached")
    set_number(page, "setting_eta_noise_seed_delta", 31337)
    set_number(page, "setting_token_merging_ratio", 0.3)
    config = data / "config.json"
    deadline = time.monotonic() + 30
    while True:
        saved = json.loads(config.read_text())
        if saved.get("eta_noise_seed_delta") == 31337 and saved.get("token_merging_ratio") == 0.3:
            break
        assert time.monotonic() < deadline, saved
        time.sleep(0.2)
    assert saved["quicksettings_list"][2] == "sd_unet"  # kept as written, for A1111
    page.reload()  # a page loaded later shows the values now, not those of the server's start
    page.wait_for_selector("body[data-sd-quick-settings=current]", state="attached")
    expect(page.locator("#setting_eta_noise_seed_delta input")).to_have_value("31337")
    expect(page.locator("#setting_token_merging_ratio input[type=number]")).to_have_value("0.3")
    open_settings(page)
    show_setting(page, "eta_ancestral")  # the section ENSD would be in: it is in the top bar instead
    assert page.locator("#setting_eta_noise_seed_delta").count() == 1
    set_number(page, "setting_eta_noise_seed_delta", 0)  # back as they were, for the next test
    set_number(page, "setting_token_merging_ratio", 0)
    deadline = time.monotonic() + 30  # its own: the steps since the first wait may have used up that one's
    while json.loads(config.read_text()).get("token_merging_ratio") != 0 \
            or json.loads(config.read_text()).get("eta_noise_seed_delta") != 0:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    open_tab(page, "tab_txt2img")


def test_hidden_samplers_are_not_listed_and_a_pasted_one_still_runs(page, ui_server):
    """A1111's hide_samplers (read at start-up, as A1111's needs a reload): the sampler lists leave them out, and an
    infotext that names one still fills the box and its job runs with it."""
    for elem_id in ("txt2img_sampling", "img2img_sampling"):
        if elem_id.startswith("img2img"):
            open_tab(page, "tab_img2img")
        labels = option_labels(page, elem_id)
        assert "Euler" in labels and "DPM++ 2M" in labels, labels
        assert "DDIM" not in labels and "Euler a" not in labels, labels
    open_tab(page, "tab_txt2img")
    fill_text(page, "txt2img_prompt", "a red circle\nSteps: 2, Sampler: DDIM, Seed: 3, Size: 64x64")
    page.locator("#txt2img_paste").click()
    expect(page.locator("#txt2img_sampling input")).to_have_value("DDIM")
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    expect(page.locator("#txt2img_infotext textarea")).to_have_value(re.compile("Sampler: DDIM"))
    assert error_toasts(page) == []


def test_tabs_come_in_ui_tab_order_without_the_hidden_ones(page, ui_server):
    """A1111's ui_tab_order and hidden_tabs (read at start-up): PNG Info moved before Extras, Checkpoint Merger not
    shown (A1111's Train, which this page lacks, is ignored)."""
    shown = ["txt2img", "img2img", "pnginfo", "extras", "history", "settings"]
    for tab in shown:
        expect(page.locator(f"#tab_{tab}-button")).to_be_visible()
    xs = [page.locator(f"#tab_{tab}-button").bounding_box()["x"] for tab in shown]
    assert xs == sorted(xs), dict(zip(shown, xs))
    expect(page.locator("#tab_modelmerger-button")).to_have_count(0)
    expect(page.locator("#tab_txt2img-button")).to_have_attribute("aria-selected", "true")


def prompt_key(page, elem_id: str, text: str, caret: tuple[int, int], key: str) -> str:
    """`key` pressed in the prompt box holding `text` with the selection `caret`; the box's text after it."""
    fill_text(page, elem_id, text)
    area = page.locator(f"#{elem_id} textarea")
    area.evaluate("(el, [a, b]) => { el.focus(); el.setSelectionRange(a, b); }", list(caret))
    area.press(key)
    return area.input_value()


def test_prompt_editing_keys_follow_their_settings(page, ui_server):
    """A1111's Ctrl+Up/Down (edit-attention.js) and Alt+Left/Right (edit-order.js) in a prompt box, with the step
    and the switch from Settings > User interface taking effect on Apply, without a reload; the edited text is
    what Generate sends."""
    box = "txt2img_prompt"
    expect(page.locator(f"#{box} textarea")).to_be_visible()
    assert prompt_key(page, box, "a cat, a dog", (3, 3), "Control+ArrowUp") == "a (cat:1.1), a dog"  # the word
    area = page.locator(f"#{box} textarea")
    area.press("Control+ArrowUp")  # the word stays selected: the group's weight goes on up
    assert area.input_value() == "a (cat:1.2), a dog"
    area.press("Control+ArrowDown")
    area.press("Control+ArrowDown")  # back at 1: the brackets go
    assert area.input_value() == "a cat, a dog"
    assert prompt_key(page, box, "a (cat:0.9), a dog", (5, 5), "Control+ArrowUp") == "a cat, a dog"  # inside a group
    assert prompt_key(page, box, "x <lora:name:0.8> y", (9, 9), "Control+ArrowUp") == "x <lora:name:0.85> y"
    # a group inside another: the word, as A1111 1.10 (not the inner group's weight)
    assert prompt_key(page, box, "(masterpiece, (red hair:1.2), blue eyes)", (32, 32), "Control+ArrowUp") == \
        "(masterpiece, (red hair:1.2), (blue:1.1) eyes)"
    assert prompt_key(page, box, "((cat))", (3, 3), "Control+ArrowUp") == "(cat:1.3)"  # old-style: 1.21, rounded
    assert prompt_key(page, box, "red cat, dog", (0, 7), "Control+ArrowDown") == "(red cat:0.9), dog"  # a selection
    assert prompt_key(page, box, "a, b, c", (3, 3), "Alt+ArrowRight") == "a, c, b"
    assert (area.evaluate("el => [el.selectionStart, el.selectionEnd]")) == [5, 7]  # " b" moved, still selected
    assert prompt_key(page, box, "a, b, c", (0, 4), "Alt+ArrowRight") == " c,a, b"  # two elements at once
    assert prompt_key(page, "txt2img_neg_prompt", "ugly, blurry", (8, 8), "Alt+ArrowLeft") == " blurry,ugly"

    open_settings(page)
    show_setting(page, "keyedit_precision_attention")
    set_number(page, "setting_keyedit_precision_attention", 0.05)
    set_checkbox(page, "setting_keyedit_move", False)
    page.locator("#settings_submit").click()
    expect(page.locator("#settings_result")).to_contain_text("2 settings changed")
    open_tab(page, "tab_txt2img")
    expect(page.locator("#sd-page-options")).to_contain_text('"keyedit_move": false')
    assert prompt_key(page, box, "a, b", (0, 0), "Alt+ArrowRight") == "a, b"  # moving is off
    edited = prompt_key(page, box, "a red circle on a blue background", (4, 4), "Control+ArrowUp")
    assert edited == "a (red:1.05) circle on a blue background"
    set_number(page, "txt2img_steps", 2)
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    assert read_value(page, "txt2img_infotext").startswith(edited + "\n")


def test_settings_in_ui_show_on_their_tab_and_apply_to_its_jobs_only(page, ui_server):
    """A1111's Settings in UI: the chosen settings on the txt2img / img2img tab, starting as the settings are; the
    value there goes with the tab's jobs (not saved), and a paste sets it from the infotext."""
    url = ui_server[0]
    page.wait_for_selector("body[data-sd-extra-options=current]", state="attached")
    eta = page.locator("#txt2img_setting_eta_ancestral")
    expect(eta).to_be_visible()
    expect(page.locator("#txt2img_setting_sd_model_checkpoint")).to_have_count(0)
    expect(page.locator("#txt2img_setting_randn_source")).to_have_count(0)  # chosen for img2img
    job = "a red circle\nSteps: 2, Sampler: DPM++ 2M SDE, Seed: 3, Size: 64x64"
    fill_text(page, "txt2img_prompt", job)
    page.locator("#txt2img_paste").click()
    expect(page.locator("#txt2img_sampling input")).to_have_value("DPM++ 2M SDE")
    set_number(page, "txt2img_setting_eta_ancestral", 0.5)
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    expect(page.locator("#txt2img_infotext textarea")).to_have_value(re.compile("Eta: 0.5"))
    assert requests.get(url + "/sdapi/v1/options", timeout=60).json()["eta_ancestral"] == 1.0  # for the job only
    fill_text(page, "txt2img_prompt", job + ", Eta: 0.7")
    page.locator("#txt2img_paste").click()
    expect(eta.locator("input[type=number]")).to_have_value("0.7")
    open_tab(page, "tab_img2img")
    expect(page.locator("#img2img_setting_randn_source")).to_be_visible()
    assert error_toasts(page) == []


def test_server_stops_promptly_while_a_page_is_open(page, ui_server):
    """SIGTERM (what Ctrl+C's SIGINT also does to uvicorn) ends the server within seconds even while a
    browser tab holds the page open, as A1111's does; it must not wait for the tab to be closed."""
    _, _, proc = ui_server
    expect(page.locator("#txt2img_generate")).to_be_visible()
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        pytest.fail("webui.py still ran 15 s after SIGTERM while a page was open (uvicorn waits for the "
                    "page's open connection to close; it needs a graceful-shutdown timeout)")
    assert time.monotonic() - started < 15
