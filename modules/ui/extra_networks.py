"""A1111's extra-network cards under the prompt: Textual Inversion, Hypernetworks and Lora tabs, one card per file
(its preview image NAME.png when there is one, else a plain card with the name). Clicking a card adds its tag to
the prompt, or takes it out again when it is already there (as A1111's cards do); a LoRA's user metadata adds its
activation text and negative text, and sets its weight.

"Edit card" is A1111's user-metadata editor: description, notes and, for a LoRA, Stable Diffusion version,
activation text, preferred weight and negative text, for a checkpoint its preferred VAE, saved as `NAME.json` beside
the file; "Replace preview" makes the image selected in the results the card's picture."""

from __future__ import annotations

import functools
import html
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import gradio as gr
from PIL import Image, ImageDraw, UnidentifiedImageError

from modules.engine import BadRequest, Engine
from modules.generation import extra_networks
from modules.models import user_metadata
from modules.models.checkpoint_file import CheckpointError
from modules.models.user_metadata import UserMetadata
from modules.ui.common import OutputPanel, gallery_path, vae_choices
from modules.ui.progress import note_html

CARD_SIZE = 192
TABS = ("Textual Inversion", "Hypernetworks", "Lora")  # the networks' tabs (their cards add tags, Edit card edits)
CHECKPOINTS = "Checkpoints"  # a card loads its checkpoint (wire_checkpoints)
EDITABLE = (*TABS, CHECKPOINTS)  # the cards Edit card edits (a checkpoint's: description, notes, preferred VAE)
SHOWN = ("Textual Inversion", "Hypernetworks", CHECKPOINTS, "Lora")  # the tabs in A1111's order


@dataclass
class CardEditor:
    """The "Edit card" accordion: which card, its fields, and what the LoRA fields need."""
    card: gr.Dropdown  # value "TAB:PATH" (two files of one name in two folders are two cards)
    description: gr.Textbox
    sd_version: gr.Dropdown
    tags: gr.Dataset  # the LoRA's training tags; a click adds one to the activation text
    tag_list: gr.State  # the tags the Dataset shows, in its order
    activation: gr.Textbox
    weight: gr.Slider
    negative: gr.Textbox
    vae: gr.Dropdown  # a checkpoint's preferred VAE
    notes: gr.Textbox
    facts: gr.HTML
    save: gr.Button
    replace_preview: gr.Button
    status: gr.HTML


@dataclass
class CardsView:
    galleries: dict[str, gr.Gallery]
    cards: gr.State  # {tab: [Card, ...]} as last listed
    refresh: gr.Button
    editor: CardEditor
    version: gr.State  # the model version the Lora cards were listed for (see follow_model)


def _placeholder(name: str) -> Image.Image:
    image = Image.new("RGB", (CARD_SIZE, CARD_SIZE), (60, 64, 72))
    draw = ImageDraw.Draw(image)
    lines = [name[i:i + 16] for i in range(0, min(len(name), 64), 16)]
    for n, line in enumerate(lines):
        draw.text((10, CARD_SIZE - 16 * (len(lines) - n) - 10), line, fill=(235, 235, 235))
    return image


@functools.lru_cache(maxsize=512)
def _thumbnail(path: str, _mtime_ns: int, _size: int) -> Image.Image | None:
    """A preview file's picture at card size, read once per version of the file (its time and size are the key)."""
    try:
        with Image.open(path) as im:
            im.thumbnail((CARD_SIZE * 2, CARD_SIZE * 2))
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def _card_image(card: extra_networks.Card) -> Image.Image:
    """The preview read into memory (so no model folder is ever served as files), or a placeholder."""
    if card.preview:
        try:
            stat = os.stat(card.preview)
        except OSError:
            stat = None
        picture = _thumbnail(card.preview, stat.st_mtime_ns, stat.st_size) if stat is not None else None
        if picture is not None:
            return picture
    return _placeholder(card.name)


MODEL_VERSIONS = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sdxl_refiner": "SDXL"}  # family -> A1111's name


def model_version(engine: Engine) -> str:
    """The model's version as A1111's Lora page names it: the loaded one's, else the selected checkpoint's (read from
    its file's header), else "SD1"."""
    model = engine.checkpoints.current
    if model is not None:
        return MODEL_VERSIONS.get(model.family.name, "SD1")
    try:
        name = engine.checkpoints.family_name(engine.checkpoints.resolve())
    except (BadRequest, CheckpointError, OSError):  # none there (an empty folder), or an unreadable file
        name = None
    return MODEL_VERSIONS.get(name or "sd1", "SD1")


def listing(engine: Engine) -> dict[str, list[extra_networks.Card]]:
    """The cards by tab, the networks' folders read again (the checkpoints as last listed); the Lora tab lists the
    networks for the loaded model's version (as A1111's does, unless lora_show_all)."""
    found = engine.networks.refresh()
    values, version = engine.options.values, model_version(engine)
    hide_unknown = tuple(values.lora_hide_unknown_for_versions)
    cards = {tab: [c for c in found if c.tab == tab and c.shown_for(version, values.lora_show_all, hide_unknown)]
             for tab in TABS}
    cards[CHECKPOINTS] = [extra_networks.checkpoint_card(info) for info in engine.checkpoints.list()]
    return cards


def _gallery_value(cards: list[extra_networks.Card]) -> list:
    """(picture, caption) per card; the caption is the name, and the description's first line when it has one
    (A1111 shows the description on the card)."""
    out = []
    for c in cards:
        first_line = c.meta.description.strip().splitlines()[0][:80] if c.meta.description.strip() else ""
        out.append((_card_image(c), f"{c.name} — {first_line}" if first_line else c.name))
    return out


def _choices(cards: dict[str, list[extra_networks.Card]]) -> list[tuple[str, str]]:
    """(label, value) per card; a name two files share is told apart by the file's folder."""
    names = [c.name for tab in EDITABLE for c in cards.get(tab, [])]
    out = []
    for tab in EDITABLE:
        for c in (c for c in cards.get(tab, []) if c.editable):
            where = f" ({Path(c.path).parent.name})" if names.count(c.name) > 1 else ""
            out.append((f"{tab}: {c.name}{where}", f"{tab}:{c.path}"))
    return out


def _build_editor(tab: str, cards: dict[str, list[extra_networks.Card]]) -> CardEditor:
    with gr.Accordion("Edit card", open=False, elem_id=f"{tab}_extra_edit"):
        card = gr.Dropdown(_choices(cards), value=None, label="Card", elem_id=f"{tab}_extra_edit_card")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                description = gr.Textbox(label="Description", lines=3, elem_id=f"{tab}_extra_edit_description")
                sd_version = gr.Dropdown(list(user_metadata.SD_VERSIONS), value="Unknown",
                                         label="Stable Diffusion version", visible=False,
                                         elem_id=f"{tab}_extra_edit_sd_version")
                tags = gr.Dataset(components=["textbox"], samples=[], type="index", samples_per_page=24,
                                  label="Training dataset tags (click one to add it to the activation text)",
                                  visible=False, elem_id=f"{tab}_extra_edit_tags")
                activation = gr.Textbox(label="Activation text", info="Will be added to prompt along with Lora",
                                        visible=False, elem_id=f"{tab}_extra_edit_activation")
                weight = gr.Slider(0.0, user_metadata.MAX_PREFERRED_WEIGHT, value=0.0, step=0.01,
                                   label="Preferred weight", info="Set to 0 to disable", visible=False,
                                   elem_id=f"{tab}_extra_edit_weight")
                negative = gr.Textbox(label="Negative prompt", info="Will be added to negative prompts",
                                      visible=False, elem_id=f"{tab}_extra_edit_negative")
                # a name the file holds but the VAE folders lack (a folder shared with A1111) is shown as it is
                vae = gr.Dropdown(["Automatic", "None"], value="Automatic", label="Preferred VAE",
                                  info="Used with this checkpoint while SD VAE is Automatic (Settings > VAE)",
                                  allow_custom_value=True, visible=False, elem_id=f"{tab}_extra_edit_vae")
                notes = gr.Textbox(label="Notes", lines=3, elem_id=f"{tab}_extra_edit_notes")
            with gr.Column(scale=1, min_width=200):
                facts = gr.HTML("", elem_id=f"{tab}_extra_edit_facts")
        with gr.Row():
            save = gr.Button("Save", variant="primary", elem_id=f"{tab}_extra_edit_save")
            replace_preview = gr.Button("Replace preview", elem_id=f"{tab}_extra_edit_replace_preview")
        status = gr.HTML("", elem_id=f"{tab}_extra_edit_status")
    return CardEditor(card, description, sd_version, tags, gr.State([]), activation, weight, negative, vae, notes,
                      facts, save, replace_preview, status)


def build(engine: Engine, tab: str) -> CardsView:
    cards = listing(engine)
    galleries = {}
    with gr.Accordion("Extra networks", open=False, elem_id=f"{tab}_extra_networks"):
        with gr.Row(equal_height=True):
            refresh = gr.Button("🔄 Refresh", elem_id=f"{tab}_extra_refresh", size="sm", scale=0, min_width=120)
            # filtered in the page itself (script.js): hidden cards keep their places, so a click still names its card
            gr.Textbox(placeholder="Search", show_label=False, container=False, elem_id=f"{tab}_extra_search",
                       elem_classes="sd-extra-search", scale=1, min_width=160)
        with gr.Row():
            gr.HTML("<span class='sd-hint'>Click a card to add its tag to the prompt (click again to take it out). "
                    "Files go into models/Lora, models/hypernetworks and embeddings/; a NAME.png beside a file is "
                    "its card image, and Edit card keeps notes, activation text and a preferred weight in a "
                    "NAME.json beside it. A checkpoint's card loads it; its Edit card keeps a preferred VAE. The "
                    "Lora tab lists the networks made for the loaded model's version (Settings > Extra "
                    "Networks).</span>")
        with gr.Tabs():
            for name in SHOWN:
                key = name.lower().replace(" ", "_")
                with gr.Tab(name, elem_id=f"{tab}_{key}_cards_tab"):
                    galleries[name] = gr.Gallery(_gallery_value(cards[name]), label=name, show_label=False,
                                                 columns=6, height=300, allow_preview=False, format="png",
                                                 elem_id=f"{tab}_{key}_cards", interactive=False)
        editor = _build_editor(tab, cards)
    return CardsView(galleries, gr.State(cards), refresh, editor, gr.State(model_version(engine)))


def _pretty_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return f"{size} B"


def _facts_html(card: extra_networks.Card, lora_metadata: dict) -> str:
    """The file's name, size and date, and for a LoRA what its training metadata (`lora_metadata`) says."""
    facts: list[tuple[str, str]] = [("Filename", Path(card.path).name)]
    try:
        stat = Path(card.path).stat()
        facts += [("File size", _pretty_bytes(stat.st_size)),
                  ("Modified", datetime.fromtimestamp(stat.st_mtime).strftime("%Y-%m-%d %H:%M"))]
    except OSError:
        pass
    if card.tab == "Lora":
        facts += user_metadata.lora_facts(lora_metadata)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts)
    return f'<table class="sd-file-facts">{rows}</table>'


def _cards_and_galleries(engine: Engine, view: CardsView) -> list:
    """The view's cards listed again, and its galleries' values."""
    cards = listing(engine)
    return [cards] + [_gallery_value(cards[name]) for name in view.galleries]


def _relisted(engine: Engine, view: CardsView, choice: str | None) -> list:
    """The view's cards, galleries and editor choices listed again (the editor keeps its card if still listed)."""
    listed = _cards_and_galleries(engine, view)
    choices = _choices(listed[0])
    kept = choice if choice in [value for _, value in choices] else None
    return listed + [gr.Dropdown(choices=choices, value=kept)]


def follow_model(engine: Engine, view: CardsView, model_chosen) -> None:
    """After another checkpoint is chosen (`model_chosen`: the top bar's event, a card's or a paste's load), list
    the cards again when the model's version changed: the Lora tab shows the networks for that version."""
    outputs = [view.cards] + list(view.galleries.values()) + [view.editor.card, view.version]

    def relist(choice, listed_for):
        version = model_version(engine)
        if version == listed_for:  # (a paste that loaded nothing, or a model of the same version)
            return [gr.skip()] * len(outputs)
        return _relisted(engine, view, choice) + [version]

    model_chosen.then(relist, inputs=[view.editor.card, view.version], outputs=outputs, queue=False,
                      show_progress="hidden")


def wire_checkpoints(engine: Engine, view: CardsView, checkpoint: gr.Dropdown):
    """A checkpoint's card puts its title into the top bar's `checkpoint` dropdown (A1111's selectCheckpoint); the
    caller chains the load on the returned event, as a pasted infotext's checkpoint is loaded."""
    def chosen(cards, evt: gr.SelectData):
        listed = cards.get(CHECKPOINTS, [])
        if not isinstance(evt.index, int) or not 0 <= evt.index < len(listed):
            return gr.skip()
        info = next((i for i in engine.checkpoints.list() if str(i.filename) == listed[evt.index].path), None)
        return info.title if info is not None else gr.skip()

    return view.galleries[CHECKPOINTS].select(chosen, inputs=view.cards, outputs=checkpoint, queue=False)


def _vae_choices(engine: Engine, kept: str = "") -> list[str]:
    """The Preferred VAE's choices: Automatic, None, the VAE files, and `kept` (what the card's file names) even
    when it is not among them, so that saving other fields keeps it."""
    names = vae_choices(engine)
    return names + [kept] if kept and kept not in names else names


def _split_choice(choice: str | None) -> tuple[str, str]:
    tab, _, path = (choice or "").partition(":")
    return tab, path


def wire(engine: Engine, view: CardsView, prompt: gr.Textbox, negative: gr.Textbox, panel: OutputPanel) -> None:
    # which prompt box was focused last (script.js keeps it per tab): an embedding's card adds to that one
    tab = prompt.elem_id.split("_")[0]
    focused = gr.Textbox("prompt", visible=False, elem_id=f"{tab}_extra_focus")
    read_focus = f"(...args) => {{ args[3] = (window.sdPromptFocus || {{}})['{tab}'] || 'prompt'; return args; }}"
    for name, gallery in view.galleries.items():
        if name not in TABS:  # the checkpoints' cards: see wire_checkpoints
            continue

        def clicked(current_prompt, current_negative, cards, box, evt: gr.SelectData, name=name):
            listed = cards.get(name, [])
            if not isinstance(evt.index, int) or not 0 <= evt.index < len(listed):
                return gr.skip(), gr.skip()
            shown = listed[evt.index]
            card = engine.networks.find_card(shown.tab, shown.path) or shown  # its metadata as the file says now
            values = engine.options.values
            return card.toggled(current_prompt or "", current_negative or "", values.extra_networks_default_multiplier,
                                box == "negative", values.lora_preferred_name != "Filename")

        gallery.select(clicked, inputs=[prompt, negative, view.cards, focused], outputs=[prompt, negative],
                       js=read_focus, queue=False)

    editor = view.editor

    def refreshed(choice, vae):
        engine.checkpoints.refresh()  # as A1111's Refresh, the checkpoints' folders too (and the VAEs, for the editor)
        engine.checkpoints.refresh_vaes()
        return _relisted(engine, view, choice) + [gr.update(choices=_vae_choices(engine, vae or ""))]

    view.refresh.click(refreshed, inputs=[editor.card, editor.vae],
                       outputs=[view.cards] + list(view.galleries.values()) + [editor.card, editor.vae])

    shown = [editor.description, editor.sd_version, editor.activation, editor.weight, editor.negative, editor.vae,
             editor.notes, editor.facts, editor.tags, editor.tag_list, editor.status]

    def show(choice):
        card = engine.networks.find_card(*_split_choice(choice))
        if card is None:
            hidden = gr.update(visible=False)
            return ["", hidden, hidden, hidden, hidden, hidden, "", "", gr.Dataset(samples=[], visible=False), [],
                    note_html("That card is gone: press Refresh.") if choice else ""]
        lora, checkpoint = card.tab == "Lora", card.tab == CHECKPOINTS
        meta = card.meta
        training = engine.networks.lora_metadata(card.path) if lora else {}  # read once for the tags and facts
        tags = user_metadata.dataset_tags(training)
        return [meta.description, gr.update(value=card.sd_version, visible=lora),
                gr.update(value=meta.activation_text, visible=lora),
                gr.update(value=meta.preferred_weight, visible=lora),
                gr.update(value=meta.negative_text, visible=lora),
                gr.update(choices=_vae_choices(engine, meta.vae), value=meta.vae or "Automatic", visible=checkpoint),
                meta.notes, _facts_html(card, training),
                gr.Dataset(samples=[[f"{tag} ({count})"] for tag, count in tags], visible=bool(tags)),
                [tag for tag, _ in tags], ""]

    editor.card.change(show, inputs=editor.card, outputs=shown, queue=False)

    def add_tag(activation, tag_list, index):
        if not isinstance(index, int) or not 0 <= index < len(tag_list):
            return gr.skip()
        return user_metadata.toggle_tag(activation or "", tag_list[index])

    editor.tags.click(add_tag, inputs=[editor.activation, editor.tag_list, editor.tags], outputs=editor.activation,
                      queue=False)

    def save(choice, description, sd_version, activation, weight, negative_text, vae, notes):
        tab, path = _split_choice(choice)
        if not path:
            return [gr.skip()] * (1 + len(view.galleries)) + [note_html("Choose a card first.")]
        try:
            card = engine.networks.find_card(tab, path)
            vae = (vae or "Automatic").strip()
            if tab == CHECKPOINTS and card is not None and vae not in _vae_choices(engine, card.meta.vae):
                raise ValueError(f"VAE {vae!r} not found (Preferred VAE: Automatic, None or a file in the VAE "
                                 "folders; press Refresh if you just added it)")
            engine.networks.save_user_metadata(tab, path, UserMetadata(
                description=description or "", notes=notes or "", sd_version=sd_version or "Unknown",
                activation_text=activation or "", preferred_weight=float(weight or 0.0),
                negative_text=negative_text or "", vae=vae))
        except (ValueError, OSError) as e:
            return [gr.skip()] * (1 + len(view.galleries)) + [note_html(f"Not saved: {e}")]
        return _cards_and_galleries(engine, view) + [note_html(f"Saved {Path(path).with_suffix('.json').name}")]

    editor.save.click(save, inputs=[editor.card, editor.description, editor.sd_version, editor.activation,
                                     editor.weight, editor.negative, editor.vae, editor.notes],
                      outputs=[view.cards] + list(view.galleries.values()) + [editor.status])

    def replace_preview(choice, gallery, infotexts, index):
        tab, path = _split_choice(choice)
        if not path:
            return [gr.skip()] * (1 + len(view.galleries)) + [note_html("Choose a card first.")]
        if not gallery:
            return [gr.skip()] * (1 + len(view.galleries)) + [
                note_html("There is no image in the results to make the card's picture: generate one first.")]
        index = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
        try:
            with Image.open(gallery_path(gallery[index])) as im:
                image = im.copy()
            text = infotexts[index] if index < len(infotexts) else None
            card = engine.networks.replace_preview(tab, path, image, text)
        except (ValueError, OSError) as e:
            return [gr.skip()] * (1 + len(view.galleries)) + [note_html(f"Preview not replaced: {e}")]
        picture = Path(card.preview or "").name
        return _cards_and_galleries(engine, view) + [note_html(f"{picture} is now the card's picture")]

    editor.replace_preview.click(replace_preview, inputs=[editor.card, panel.gallery, panel.infotexts, panel.selected],
                                 outputs=[view.cards] + list(view.galleries.values()) + [editor.status])
