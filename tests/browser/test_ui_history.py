"""The History tab in a browser: a file added to the outputs by hand is indexed by the tab's Rescan, searched,
shown and sent to txt2img, then deleted after the confirmation."""

from __future__ import annotations

import time

import requests
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.support.browser import browser, gallery_image_urls, page, ui_server  # noqa: F401 (fixtures)
from tests.support.tabs import open_tab

TEXT = ("a lighthouse in the storm\nNegative prompt: calm sea\nSteps: 13, Sampler: Euler a, CFG scale: 6, "
        "Seed: 4242, Size: 64x64")


def test_history_search_shows_the_image_and_sends_it_to_txt2img(page, ui_server):
    url, data, _ = ui_server
    path = data / "outputs" / "txt2img-images" / "2025-05-05" / "00001-4242.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("parameters", TEXT)
    Image.new("RGB", (64, 64), (0, 0, 180)).save(path, pnginfo=info)
    open_tab(page, "tab_history")
    page.locator("#history_rescan").click()  # the page's button starts the heal
    page.locator("#history_note").get_by_text("Rescanning the output folders").wait_for()
    deadline = time.monotonic() + 60
    while requests.get(url + "/sdapi/v1/history", params={"q": "lighthouse"}, timeout=30).json()["total"] != 1:
        assert time.monotonic() < deadline, "the rescan did not index the file"
        time.sleep(0.2)

    page.locator("#history_query textarea").fill("lighthouse storm")
    page.locator("#history_search").click()
    page.locator("#history_count").get_by_text("1 image").wait_for()
    assert len(gallery_image_urls(page, "history_gallery")) == 1
    page.locator("#history_gallery .grid-container button.thumbnail-item").first.click()
    page.locator("#history_details").get_by_text("calm sea", exact=False).wait_for()
    assert "4242" in page.locator("#history_details").inner_text()

    page.locator("#history_send_to_txt2img").click()
    page.wait_for_function(
        "document.querySelector('#txt2img_prompt textarea').value == 'a lighthouse in the storm'")
    assert page.locator("#txt2img_neg_prompt textarea").input_value() == "calm sea"

    open_tab(page, "tab_history")  # shows the search again, nothing selected
    page.locator("#history_details").wait_for(state="detached")
    page.locator("#history_gallery .grid-container button.thumbnail-item").first.click()
    page.locator("#history_details").wait_for()
    page.locator("#history_delete").click()
    page.locator("#history_delete_confirm").click()
    page.locator("#history_count").get_by_text("0 images").wait_for()
    assert not path.exists()
