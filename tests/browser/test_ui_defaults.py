"""ui-config.json in a real browser: the controls start from the file written before the server started (A1111's
keys), and Settings > Defaults lists what was changed on the page and writes it into the file."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.support.browser import (  # noqa: F401 (browser and page are fixtures)
    block, browser, open_accordion, page, read_value, set_number)
from tests.support.server import start_server, stop_server
from tests.support.tabs import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.server]

FILE = {"txt2img/Sampling steps/value": 33, "txt2img/Sampling method/value": "Euler a",
        "txt2img/CFG Scale/maximum": 20, "img2img/Denoising strength/value": 0.42,
        "txt2img/Sampling method/visible": True, "customscript/xyz_grid.py/txt2img/X type/value": "Seed"}


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """A server whose data folder has a ui-config.json before it starts (the page fixture uses this one)."""
    data = tmp_path_factory.mktemp("ui_defaults")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    (data / "ui-config.json").write_text(json.dumps(FILE), encoding="utf-8")
    proc, url = start_server(data, "--api")
    yield url, data, proc
    stop_server(proc)


def test_the_page_starts_from_ui_config_and_writes_changed_defaults(page, ui_server):
    _, data, _ = ui_server
    assert read_value(page, "txt2img_steps") == "33"
    assert read_value(page, "txt2img_sampling") == "Euler a"
    assert block(page, "txt2img_cfg_scale").locator("input[type=range]").get_attribute("max") == "20"
    open_tab(page, "tab_img2img")
    assert read_value(page, "img2img_denoising_strength") == "0.42"

    open_tab(page, "tab_txt2img")
    set_number(page, "txt2img_batch_count", 3)
    open_tab(page, "tab_settings")
    open_accordion(page, "settings_defaults", "Defaults (ui-config.json)")
    page.locator("#ui_defaults_view").click()
    review = page.locator("#ui_defaults_review")
    expect(review).to_contain_text("txt2img/Batch count/value")
    assert "Sampling steps" not in review.inner_text()  # unchanged since the page started: not listed
    page.locator("#ui_defaults_apply").click()
    expect(review).to_contain_text("Wrote 1 change")
    written = json.loads((data / "ui-config.json").read_text(encoding="utf-8"))
    assert written == {**FILE, "txt2img/Batch count/value": 3}  # the rest as it was, keys of A1111's scripts too
