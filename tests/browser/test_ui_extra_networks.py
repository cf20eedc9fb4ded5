"""The extra-network cards under the prompt, in a real browser: files dropped into models/Lora and
embeddings/ appear after Refresh (with their NAME.png card image), and a click toggles the tag in the prompt."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.support.browser import (  # noqa: F401 (browser, page and ui_server are fixtures)
    browser, fetch_image, fill_text, open_accordion, page, read_value, ui_server, wait_for_gallery)
from tests.support.tabs import open_tab

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
