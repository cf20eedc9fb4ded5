"""A1111's extra-network cards under the prompt: Textual Inversion, Hypernetworks and Lora tabs, one card per file
(its preview image NAME.png when there is one, else a plain card with the name). Clicking a card adds
its tag to the prompt, or takes it out again when it is already there (as A1111's cards do)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import gradio as gr
from PIL import Image, ImageDraw, UnidentifiedImageError

from modules.engine import Engine
from modules.generation import extra_networks

CARD_SIZE = 192
TABS = ("Textual Inversion", "Hypernetworks", "Lora")


@dataclass
class CardsView:
    galleries: dict[str, gr.Gallery]
    cards: gr.State  # {tab: [Card, ...]} as last listed
    refresh: gr.Button


def _placeholder(name: str) -> Image.Image:
    image = Image.new("RGB", (CARD_SIZE, CARD_SIZE), (60, 64, 72))
    draw = ImageDraw.Draw(image)
    lines = [name[i:i + 16] for i in range(0, min(len(name), 64), 16)]
    for n, line in enumerate(lines):
        draw.text((10, CARD_SIZE - 16 * (len(lines) - n) - 10), line, fill=(235, 235, 235))
    return image


def _card_image(card: extra_networks.Card) -> Image.Image:
    """The preview read into memory (so no model folder is ever served as files), or a placeholder."""
    if card.preview:
        try:
            with Image.open(card.preview) as im:
                im.thumbnail((CARD_SIZE * 2, CARD_SIZE * 2))
                return im.convert("RGB")
        except (OSError, UnidentifiedImageError):
            pass
    return _placeholder(card.name)


def listing(engine: Engine) -> dict[str, list[extra_networks.Card]]:
    found = engine.networks.refresh()
    return {tab: [c for c in found if c.tab == tab] for tab in TABS}


def _gallery_value(cards: list[extra_networks.Card]) -> list:
    return [(_card_image(c), c.name) for c in cards]


def build(engine: Engine, tab: str) -> CardsView:
    cards = listing(engine)
    galleries = {}
    with gr.Accordion("Extra networks", open=False, elem_id=f"{tab}_extra_networks"):
        with gr.Row():
            refresh = gr.Button("🔄 Refresh", elem_id=f"{tab}_extra_refresh", size="sm", scale=0, min_width=120)
            gr.HTML("<span class='sd-hint'>Click a card to add its tag to the prompt (click again to take it out). "
                    "Files go into models/Lora, models/hypernetworks and embeddings/; a NAME.png beside a file is "
                    "its card image.</span>")
        with gr.Tabs():
            for name in TABS:
                key = name.lower().replace(" ", "_")
                with gr.Tab(name, elem_id=f"{tab}_{key}_cards_tab"):
                    galleries[name] = gr.Gallery(_gallery_value(cards[name]), label=name, show_label=False,
                                                 columns=6, height=300, allow_preview=False, format="png",
                                                 elem_id=f"{tab}_{key}_cards", interactive=False)
    return CardsView(galleries, gr.State(cards), refresh)


def toggle(prompt: str, tag: str) -> str:
    """`prompt` with `tag` appended (space-separated), or removed when it is already in it."""
    if tag in prompt:
        return re.sub(r"\s{2,}", " ", prompt.replace(tag, "")).strip()
    return f"{prompt.rstrip()} {tag}".strip() if prompt.strip() else tag


def wire(engine: Engine, view: CardsView, prompt: gr.Textbox) -> None:
    for name, gallery in view.galleries.items():
        def clicked(current_prompt, cards, evt: gr.SelectData, name=name):
            listed = cards.get(name, [])
            if not isinstance(evt.index, int) or not 0 <= evt.index < len(listed):
                return gr.skip()
            return toggle(current_prompt or "", listed[evt.index].insert)

        gallery.select(clicked, inputs=[prompt, view.cards], outputs=prompt, queue=False)

    def refresh():
        cards = listing(engine)
        return [cards] + [_gallery_value(cards[name]) for name in view.galleries]

    view.refresh.click(refresh, outputs=[view.cards] + list(view.galleries.values()))
