"""The extra-network cards under the prompt, in a real browser: files dropped into models/Lora and
embeddings/ appear after Refresh (with their NAME.png card image), and a click toggles the tag in the prompt;
a LoRA's user metadata (NAME.json, A1111's format) is used by the click, edited in "Edit card", and
"Replace preview" makes a generated image the card's picture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image
from playwright.sync_api import expect
from safetensors.torch import save_file

from modules import images
from tests.support.browser import (  # noqa: F401 (browser, page and ui_server are fixtures)
    block, browser, fetch_image, fill_text, open_accordion, option_labels, page, read_value, select_option, set_number,
    ui_server, wait_for_gallery)
from tests.support.tabs import generate_txt2img, open_tab

pytestmark = [pytest.mark.browser, pytest.mark.server]


def test_cards_list_files_show_previews_and_toggle_tags(page, ui_server):
    _, data, _ = ui_server
    lora_dir, emb_dir = data / "models" / "Lora", data / "embeddings"
    lora_dir.mkdir(parents=True, exist_ok=True)
    emb_dir.mkdir(parents=True, exist_ok=True)
    # A LoRA file is listed by name (its layers are only matched when it is used); a card image beside it.
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)},
              str(lora_dir / "bright-style.safetensors"))
    Image.new("RGB", (64, 64), (250, 200, 0)).save(lora_dir / "bright-style.png")
    save_file({"emb_params": torch.randn(2, 768)}, str(emb_dir / "shiny.safetensors"))

    open_accordion(page, "txt2img_extra_networks", "Extra networks")
    page.locator("#txt2img_extra_refresh").click()
    # The refresh answers with both galleries. Wait for it on the tab shown (Textual Inversion) before another
    # tab is opened, so that the answer and the tab switch cannot cross; a shared CPU can take long over both.
    wait_for_gallery(page, "txt2img_textual_inversion_cards", 1, timeout=90)
    lora_cards = "#txt2img_lora_cards"
    open_tab(page, "txt2img_lora_cards_tab")
    urls = wait_for_gallery(page, "txt2img_lora_cards", 1, timeout=90)
    assert len(urls) == 1
    card = fetch_image(page, urls[0])
    assert np.asarray(card.convert("RGB"))[8, 8].tolist() == [250, 200, 0]  # the preview beside the file

    fill_text(page, "txt2img_prompt", "a red circle")
    page.locator(f"{lora_cards} .thumbnail-item").first.click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.includes('<lora:')")
    assert read_value(page, "txt2img_prompt") == "a red circle <lora:bright-style:1>"
    page.locator(f"{lora_cards} .thumbnail-item").first.click()  # again: the tag goes
    page.wait_for_function("!document.querySelector('#txt2img_prompt textarea').value.includes('<lora:')")
    assert read_value(page, "txt2img_prompt") == "a red circle"

    open_tab(page, "txt2img_textual_inversion_cards_tab")
    ti_cards = "#txt2img_textual_inversion_cards"
    page.wait_for_function(f"document.querySelectorAll('{ti_cards} .thumbnail-item img').length == 1",
                           timeout=30_000)
    page.locator(f"{ti_cards} .thumbnail-item").first.click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.includes('shiny')")
    assert read_value(page, "txt2img_prompt") == "a red circle shiny"
    # with the negative prompt focused last, an embedding goes there (A1111's way to add negative embeddings)
    fill_text(page, "txt2img_neg_prompt", "blurry")
    page.locator(f"{ti_cards} .thumbnail-item").first.click()
    expect(block(page, "txt2img_neg_prompt").locator("textarea")).to_have_value("blurry shiny")
    assert read_value(page, "txt2img_prompt") == "a red circle shiny"


def test_user_metadata_fills_the_click_is_edited_and_the_preview_replaced(page, ui_server):
    _, data, _ = ui_server
    lora_dir = data / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)},
              str(lora_dir / "ink.safetensors"),
              {"ss_output_name": "ink", "ss_tag_frequency": json.dumps({"5_ink": {"ink": 5, "sketch": 2}})})
    # as A1111 writes it, with a key of some other tool that must survive our Save
    (lora_dir / "ink.json").write_text(json.dumps({
        "description": "Pen drawings", "activation text": "ink lines", "preferred weight": 0.7,
        "negative text": "color", "modelId": 77}), encoding="utf-8")

    open_accordion(page, "txt2img_extra_networks", "Extra networks")
    open_tab(page, "txt2img_lora_cards_tab")
    page.locator("#txt2img_extra_refresh").click()
    card = page.locator("#txt2img_lora_cards .thumbnail-item", has_text="ink — Pen drawings")  # the caption
    expect(card).to_have_count(1, timeout=90_000)

    fill_text(page, "txt2img_prompt", "a castle")
    fill_text(page, "txt2img_neg_prompt", "")
    card.click()
    expect(block(page, "txt2img_prompt").locator("textarea")).to_have_value("a castle <lora:ink:0.7> ink lines")
    assert read_value(page, "txt2img_neg_prompt") == "color"
    card.click()  # again: the tag, its activation text and the negative text go
    expect(block(page, "txt2img_prompt").locator("textarea")).to_have_value("a castle")
    assert read_value(page, "txt2img_neg_prompt") == ""

    open_accordion(page, "txt2img_extra_edit", "Edit card")
    select_option(page, "txt2img_extra_edit_card", "Lora: ink")
    activation = block(page, "txt2img_extra_edit_activation").locator("textarea, input").first
    expect(activation).to_have_value("ink lines")
    assert read_value(page, "txt2img_extra_edit_description") == "Pen drawings"
    assert "Output name" in block(page, "txt2img_extra_edit_facts").inner_text()
    block(page, "txt2img_extra_edit_tags").get_by_text("sketch (2)").click()  # a training tag joins the text
    expect(activation).to_have_value("ink lines, sketch")
    set_number(page, "txt2img_extra_edit_weight", 1.2)
    page.locator("#txt2img_extra_edit_save").click()
    expect(block(page, "txt2img_extra_edit_status")).to_contain_text("Saved ink.json")
    saved = json.loads((lora_dir / "ink.json").read_text(encoding="utf-8"))
    assert saved["activation text"] == "ink lines, sketch" and saved["preferred weight"] == 1.2
    assert saved["modelId"] == 77 and saved["negative text"] == "color"
    card.click()  # the click now writes what was saved
    expect(block(page, "txt2img_prompt").locator("textarea")).to_have_value(
        "a castle <lora:ink:1.2> ink lines, sketch")

    # Replace preview: the generated image (with its infotext) becomes ink.png, the card's picture
    urls = generate_txt2img(page, "a blue square", steps=2, seed=5)
    generated = fetch_image(page, urls[0]).convert("RGB")
    page.locator("#txt2img_extra_edit_replace_preview").click()
    expect(block(page, "txt2img_extra_edit_status")).to_contain_text("ink.png is now the card's picture")
    with Image.open(lora_dir / "ink.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(generated))
        assert "Seed: 5" in images.read_infotext(im)


def test_search_hides_cards_and_a_click_still_names_the_card_shown(page, ui_server):
    _, data, _ = ui_server
    lora_dir = data / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    for name, metadata in (("alpha-glow", None), ("beta-glow", None), ("gamma-ink", None),
                           ("delta-glow-xl", {"ss_base_model_version": "sdxl_base_v1-0"})):
        save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
                   "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)},
                  str(lora_dir / f"{name}.safetensors"), metadata)
    open_accordion(page, "txt2img_extra_networks", "Extra networks")
    open_tab(page, "txt2img_lora_cards_tab")
    page.locator("#txt2img_extra_refresh").click()
    cards = page.locator("#txt2img_lora_cards .thumbnail-item")
    expect(cards.filter(has_text="gamma-ink")).to_have_count(1, timeout=90_000)
    expect(cards.filter(has_text="delta-glow-xl")).to_have_count(0)  # made for SDXL: not listed for this SD 1 model
    total = cards.count()

    fill_text(page, "txt2img_extra_search", "GLOW beta")  # every word, any case
    expect(page.locator("#txt2img_lora_cards .thumbnail-item:visible")).to_have_count(1)
    fill_text(page, "txt2img_prompt", "")
    page.locator("#txt2img_lora_cards .thumbnail-item:visible").click()  # beta-glow is not the first card
    expect(block(page, "txt2img_prompt").locator("textarea")).to_have_value("<lora:beta-glow:1>")
    page.locator("#txt2img_extra_refresh").click()  # drawn again: still filtered
    expect(cards.filter(has_text="gamma-ink")).to_have_count(1)
    expect(page.locator("#txt2img_lora_cards .thumbnail-item:visible")).to_have_count(1)
    fill_text(page, "txt2img_extra_search", "")
    expect(page.locator("#txt2img_lora_cards .thumbnail-item:visible")).to_have_count(total)


def test_a_checkpoint_card_loads_its_checkpoint(page, ui_server):
    """A1111's Checkpoints tab among the cards: each checkpoint with its picture beside the file; a click selects it
    in the top bar and loads it. Its Edit card keeps a preferred VAE in NAME.json ("vae", as A1111's)."""
    import shutil

    from tests.support.server import ROOT

    _, data, _ = ui_server
    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    vae_dir = data / "models" / "VAE"
    vae_dir.mkdir(parents=True, exist_ok=True)
    added = [folder / "painter.safetensors", folder / "painter.yaml", folder / "painter.preview.png",
             folder / "painter.json", vae_dir / "soft-colours.safetensors"]
    try:
        for ext in ("safetensors", "yaml"):  # the demo model again, with its config beside it
            shutil.copyfile(ROOT / "models" / "builtin" / f"shapes-tiny.{ext}", folder / f"painter.{ext}")
        Image.new("RGB", (64, 64), (20, 200, 90)).save(folder / "painter.preview.png")
        save_file({"decoder.conv_in.weight": torch.zeros(1)}, str(vae_dir / "soft-colours.safetensors"))  # listed

        open_accordion(page, "txt2img_extra_networks", "Extra networks")
        page.locator("#txt2img_extra_refresh").click()  # the checkpoints' folder is read again too
        open_tab(page, "txt2img_checkpoints_cards_tab")
        wait_for_gallery(page, "txt2img_checkpoints_cards", 2, timeout=90)
        cards = page.locator("#txt2img_checkpoints_cards .thumbnail-item")
        painter, demo = cards.filter(has_text="painter"), cards.filter(has_text="shapes-tiny")
        expect(painter).to_have_count(1)
        picture = fetch_image(page, painter.locator("img").get_attribute("src"))
        assert np.asarray(picture.convert("RGB"))[8, 8].tolist() == [20, 200, 90]  # the picture beside the file
        painter.click()
        page.locator("#sd_status").get_by_text("Loaded painter.safetensors").wait_for(timeout=60_000)
        page.wait_for_function(
            "document.querySelector('#sd_checkpoint input').value.startsWith('painter.safetensors')")
        demo.click()  # the built-in demo model again
        page.locator("#sd_status").get_by_text("Loaded builtin/shapes-tiny.safetensors").wait_for(timeout=60_000)

        open_accordion(page, "txt2img_extra_edit", "Edit card")
        assert not any("shapes-tiny" in label for label in option_labels(page, "txt2img_extra_edit_card"))  # install
        select_option(page, "txt2img_extra_edit_card", "Checkpoints: painter")
        expect(block(page, "txt2img_extra_edit_vae")).to_be_visible()
        expect(block(page, "txt2img_extra_edit_activation")).to_be_hidden()  # the LoRA fields are not a checkpoint's
        assert read_value(page, "txt2img_extra_edit_vae") == "Automatic"
        assert option_labels(page, "txt2img_extra_edit_vae") == ["Automatic", "None", "soft-colours.safetensors"]
        select_option(page, "txt2img_extra_edit_vae", "soft-colours.safetensors")
        fill_text(page, "txt2img_extra_edit_notes", "soft colours")
        page.locator("#txt2img_extra_edit_save").click()
        expect(block(page, "txt2img_extra_edit_status")).to_contain_text("Saved painter.json")
        saved = json.loads((folder / "painter.json").read_text())
        assert saved["vae"] == "soft-colours.safetensors" and saved["notes"] == "soft colours"
        assert "activation text" not in saved
        box = block(page, "txt2img_extra_edit_vae").locator("input")
        box.fill("made-up.safetensors")  # a name no file has is refused, and the file keeps its value
        box.press("Enter")
        page.locator("#txt2img_extra_edit_save").click()
        expect(block(page, "txt2img_extra_edit_status")).to_contain_text("Not saved: VAE 'made-up.safetensors'")
        assert json.loads((folder / "painter.json").read_text())["vae"] == "soft-colours.safetensors"
    finally:  # the module's other tests share the folder
        for path in added:
            path.unlink(missing_ok=True)


def test_the_lora_cards_follow_a_checkpoint_a_pasted_infotext_loads(page, ui_server):
    """A pasted infotext that names an SDXL checkpoint here loads it, and the Lora tab then lists the networks made
    for SDXL, as after a choice in the top bar; the demo model again lists those for SD 1."""
    from tests.support import tiny_models

    _, data, _ = ui_server
    lora_dir, folder = data / "models" / "Lora", data / "models" / "Stable-diffusion"
    lora_dir.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    xl = folder / "tiny-xl.safetensors"
    added = [xl, xl.with_suffix(".yaml"), lora_dir / "only-xl.safetensors", lora_dir / "only-sd1.safetensors"]
    try:
        tiny_models.build("sdxl", seed=3).write(xl)
        for name, version in (("only-xl", "sdxl_base_v1-0"), ("only-sd1", "sd_v1")):
            save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
                       "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)},
                      str(lora_dir / f"{name}.safetensors"), {"ss_base_model_version": version})
        open_accordion(page, "txt2img_extra_networks", "Extra networks")
        open_tab(page, "txt2img_lora_cards_tab")
        page.locator("#txt2img_extra_refresh").click()  # the new LoRA and checkpoint are listed
        cards = page.locator("#txt2img_lora_cards .thumbnail-item")
        expect(cards.filter(has_text="only-sd1")).to_have_count(1, timeout=90_000)
        expect(cards.filter(has_text="only-xl")).to_have_count(0)

        requests.post(ui_server[0] + "/sdapi/v1/options", json={"disable_weights_auto_swap": False},
                      timeout=60).raise_for_status()  # a pasted Model loads that checkpoint (not A1111's default)
        fill_text(page, "txt2img_prompt", "a cat\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, Model: tiny-xl")
        page.locator("#txt2img_paste").click()
        page.locator("#sd_status").get_by_text("Loaded tiny-xl.safetensors").wait_for(timeout=90_000)
        expect(cards.filter(has_text="only-xl")).to_have_count(1, timeout=30_000)
        expect(cards.filter(has_text="only-sd1")).to_have_count(0)

        fill_text(page, "txt2img_prompt", "a cat\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, Model: shapes-tiny")
        page.locator("#txt2img_paste").click()
        page.locator("#sd_status").get_by_text("Loaded builtin/shapes-tiny.safetensors").wait_for(timeout=90_000)
        expect(cards.filter(has_text="only-sd1")).to_have_count(1, timeout=30_000)
    finally:  # the module's other tests share the folders and the demo model
        requests.post(ui_server[0] + "/sdapi/v1/options", json={"sd_model_checkpoint": "shapes-tiny",
                                                                "disable_weights_auto_swap": True}, timeout=120)
        for path in added:
            path.unlink(missing_ok=True)
