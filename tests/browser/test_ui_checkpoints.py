"""The top bar in a real browser: a checkpoint dropped into the folder appears after 🔄, choosing it loads
it with a message while the page stays usable, a broken one is reported and the loaded model stays."""

from __future__ import annotations

import shutil

import pytest
import requests
from PIL import Image
from playwright.sync_api import expect

from tests.support.browser import (  # noqa: F401 (browser, page and ui_server are fixtures)
    browser, fill_text, find_option, page, read_value, select_option, set_number, ui_server, upload_file,
    wait_for_gallery)
from tests.support.tabs import open_tab

pytestmark = [pytest.mark.browser, pytest.mark.server]


def test_refresh_switch_and_broken_checkpoint(page, ui_server, tiny_dir):
    _, data, _ = ui_server
    folder = data / "models" / "Stable-diffusion"
    shutil.copy(tiny_dir / "sd1.safetensors", folder / "sd1.safetensors")
    shutil.copy(tiny_dir / "sd1.yaml", folder / "sd1.yaml")
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")

    page.locator("#refresh_sd_model_checkpoint").click()
    # only the new choices say the refresh has been answered (the box shows the demo model before and after
    # it): ask for the list until they are there
    sd1 = find_option(page, "sd_checkpoint", "sd1.safetensors")
    broken = find_option(page, "sd_checkpoint", "broken.safetensors")

    select_option(page, "sd_checkpoint", sd1)
    status = page.locator("#sd_status")
    status.get_by_text("Loaded sd1.safetensors").wait_for(timeout=60_000)
    assert "demo model" not in page.locator("#demo_model_notice").inner_text()  # the notice is for the demo only
    # Width and Height still at the demo's 128 follow the chosen model's size (SD 1.x: 512) in both tabs
    for tab in ("img2img", "txt2img"):  # (a tab's controls are on the page while it is open)
        open_tab(page, f"tab_{tab}")
        for side in ("width", "height"):
            expect(page.locator(f"#{tab}_{side} input[type=number]")).to_have_value("512")
    set_number(page, "txt2img_width", 128)  # set by hand (and small, for a quick test)
    set_number(page, "txt2img_height", 128)

    fill_text(page, "txt2img_prompt", "a red circle")
    set_number(page, "txt2img_steps", 3)
    page.locator("#txt2img_generate").click()
    wait_for_gallery(page, "txt2img_gallery", 1)
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Model: sd1')")

    box = page.locator("#sd_checkpoint input[role=combobox]")  # picked by hand: the page reverts it at once
    box.click()
    box.press("Control+a")
    box.press("Backspace")
    box.press_sequentially("broken")
    page.locator("#sd_checkpoint").get_by_role("option", name=broken, exact=True).click()
    # (typing into the box and picking the option may each ask for the load, one after the other: wait for
    # the outcome's text, not for the first error line, which the second "Loading..." can replace)
    expect(status.locator(".sd-error")).to_contain_text("Could not load broken.safetensors", timeout=60_000)
    page.wait_for_function("document.querySelector('#sd_checkpoint input').value.startsWith('sd1.safetensors')")

    # the page and the previous model still work
    set_number(page, "txt2img_seed", 11)
    page.locator("#txt2img_generate").click()
    page.wait_for_function("document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 11,')",
                           timeout=60_000)
    assert "Model: sd1" in read_value(page, "txt2img_infotext")

    # back to the demo model: img2img's size, still the previous model's, follows; txt2img's, set by hand, stays
    select_option(page, "sd_checkpoint", find_option(page, "sd_checkpoint", "shapes-tiny"))
    status.get_by_text("Loaded builtin/shapes-tiny").wait_for(timeout=60_000)
    open_tab(page, "tab_img2img")
    expect(page.locator("#img2img_width input[type=number]")).to_have_value("128")
    expect(page.locator("#img2img_height input[type=number]")).to_have_value("128")
    open_tab(page, "tab_txt2img")
    set_number(page, "txt2img_width", 200)  # by hand again, then another model: it stays
    select_option(page, "sd_checkpoint", find_option(page, "sd_checkpoint", "sd1.safetensors"))  # (with its hash now)
    status.get_by_text("Loaded sd1.safetensors").wait_for(timeout=60_000)
    open_tab(page, "tab_img2img")
    expect(page.locator("#img2img_width input[type=number]")).to_have_value("512")
    open_tab(page, "tab_txt2img")
    assert (read_value(page, "txt2img_width"), read_value(page, "txt2img_height")) == ("200", "128")


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_png_info_reads_jpeg_and_webp_and_send_to_selects_the_named_model(page, ui_server, tiny_dir, tmp_path, fmt):
    """An infotext in a JPEG/WebP's EXIF is read; Send to txt2img fills the fields. The infotext names a checkpoint
    that is here but not loaded: it is left alone, as A1111's disable_weights_auto_swap (on by default) says, and
    with that setting off it is selected and loaded."""
    from modules import images

    _, data, _ = ui_server
    folder = data / "models" / "Stable-diffusion"
    for name in ("sd1.safetensors", "sd1.yaml"):
        if not (folder / name).exists():
            shutil.copy(tiny_dir / name, folder / name)
    page.locator("#refresh_sd_model_checkpoint").click()
    # the demo model is listed before the refresh too: wait for its answer (sd1, which only it lists), so that
    # it cannot replace the list or the box's value while the demo model is picked
    find_option(page, "sd_checkpoint", "sd1.safetensors")
    demo = find_option(page, "sd_checkpoint", "shapes-tiny")
    select_option(page, "sd_checkpoint", demo)
    page.locator("#sd_status").get_by_text("Loaded builtin/shapes-tiny").wait_for(timeout=60_000)

    text = ("a blue square\nNegative prompt: red\nSteps: 9, Sampler: Euler a, Schedule type: Karras, CFG scale: 4, "
            "Seed: 77, Size: 136x128, Model hash: 9b448f13c1, Model: sd1, Version: webui-0.1.0")
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(images.encode(Image.new("RGB", (64, 64), (0, 0, 200)), fmt, text))
    open_tab(page, "tab_pnginfo")
    upload_file(page, "pnginfo_image", path)
    page.locator("#pnginfo_html_info").get_by_text("Seed: 77", exact=False).wait_for()
    page.locator("#pnginfo_send_to_txt2img").click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value == 'a blue square'")
    assert read_value(page, "txt2img_steps") == "9" and read_value(page, "txt2img_seed") == "77"
    assert read_value(page, "txt2img_width") == "136" and read_value(page, "txt2img_sampling") == "Euler a"
    # the box's value comes with the fields (one event's outputs): it still names the demo model
    assert "shapes-tiny" in read_value(page, "sd_checkpoint")

    url = ui_server[0]
    requests.post(url + "/sdapi/v1/options", json={"disable_weights_auto_swap": False}, timeout=60).raise_for_status()
    try:
        open_tab(page, "tab_pnginfo")
        page.locator("#pnginfo_send_to_txt2img").click()
        page.locator("#sd_status").get_by_text("Loaded sd1.safetensors").wait_for(timeout=60_000)
        assert read_value(page, "sd_checkpoint").startswith("sd1.safetensors")
    finally:  # the module's other tests share the server
        requests.post(url + "/sdapi/v1/options", json={"disable_weights_auto_swap": True}, timeout=60)


def test_checkpoint_merger_tab_saves_lists_and_refuses_to_overwrite(page, ui_server, tiny_dir):
    _, data, _ = ui_server
    folder = data / "models" / "Stable-diffusion"
    for name in ("sd1.safetensors", "sd1.yaml", "sd1-fp16.safetensors", "sd1-fp16.yaml"):
        shutil.copy(tiny_dir / name, folder / name)
    open_tab(page, "tab_modelmerger")
    page.locator("#modelmerger_refresh_checkpoint_names").click()
    a = find_option(page, "modelmerger_primary_model_name", "sd1.safetensors")
    b = find_option(page, "modelmerger_secondary_model_name", "sd1-fp16.safetensors")
    select_option(page, "modelmerger_primary_model_name", a)
    select_option(page, "modelmerger_secondary_model_name", b)
    fill_text(page, "modelmerger_custom_name", "ui-merge")
    page.locator("#modelmerger_merge").click()
    result = page.locator("#modelmerger_result")
    expect(result).to_contain_text("Checkpoint saved to", timeout=60_000)
    expect(result).to_contain_text("ui-merge.safetensors")
    assert (folder / "ui-merge.safetensors").is_file() and (folder / "ui-merge.yaml").is_file()
    # the new file is in the top bar's list and the merger's own lists without a refresh
    find_option(page, "sd_checkpoint", "ui-merge.safetensors", timeout=10)
    find_option(page, "modelmerger_tertiary_model_name", "ui-merge.safetensors", timeout=10)
    stamp = (folder / "ui-merge.safetensors").stat().st_mtime_ns
    page.locator("#modelmerger_merge").click()
    expect(result.locator(".sd-error")).to_contain_text("ui-merge.safetensors already exists", timeout=60_000)
    assert (folder / "ui-merge.safetensors").stat().st_mtime_ns == stamp
