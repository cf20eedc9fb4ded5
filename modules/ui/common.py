"""Controls txt2img and img2img share, built with A1111's labels, defaults, ranges and element ids.

Each builder returns its components in a dict keyed by the GenerationParams field they fill, so the
tabs can build a request from them and "Send to" / paste can fill them from an infotext by the same
names.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
from PIL import Image, ImageOps, UnidentifiedImageError

from modules import images
from modules.engine import BadRequest, Engine
from modules.filenames import FileNamer
from modules.generation import samplers
from modules.settings import Settings
from modules.ui.progress import note_html, seed_of

RANDOM, REUSE, SWAP = "🎲", "♻", "⇅"


def tab_index(elem_id: str) -> gr.Number:
    """A hidden number that holds which tab of a set is selected (see `follow_tabs`)."""
    return gr.Number(value=0, precision=0, visible=False, elem_id=elem_id)


def follow_tabs(tabs: list, index: gr.Number) -> None:
    """Keep `index` at the selected tab's position, set in the page itself when a tab is selected (a gr.State
    set by a server event could still hold the old tab when that event was answered after the next one was
    sent). An event that sends `index` should also read the tab from the page as it is clicked: see
    `tabs_read_on_click`."""
    for position, tab in enumerate(tabs):
        tab.select(None, js=f"() => {position}", outputs=index, queue=False, show_progress="hidden")


def tabs_read_on_click(inputs: list, indexes: dict[gr.Number, list]) -> str:
    """JS for an event whose `inputs` hold tab indexes (see `follow_tabs`): when the event fires, each index is
    replaced by the position of the tab whose button the page shows selected, as A1111 reads the tab at submit.
    The request then carries the tab the user sees at the click, whatever the order in which the page applied
    earlier events. An index is kept as it is when none of its tabs' buttons is on the page (tabs folded into
    the overflow menu of a narrow window)."""
    slots = {inputs.index(number): [tab.elem_id for tab in tabs] for number, tabs in indexes.items()}
    return (
        "(...args) => {"
        f" const slots = {json.dumps(slots)};"
        " for (const [at, ids] of Object.entries(slots)) {"
        "  const k = ids.findIndex(id => document.getElementById(id + '-button')?.getAttribute('aria-selected')"
        " === 'true');"
        "  if (k >= 0) args[Number(at)] = k;"
        " }"
        " return args; }")


def sampler_controls(tab: str, default_sampler: str = "DPM++ 2M", hidden: list[str] = ()
                     ) -> dict[str, gr.components.Component]:
    """`hidden`: hide_samplers; a hidden sampler a pasted infotext names is still shown and used (the server checks
    every name), so the dropdown takes names it does not list then."""
    with gr.Row(elem_id=f"{tab}_sampler_row"):
        sampler = gr.Dropdown(label="Sampling method", choices=samplers.visible_names(hidden),
                              value=default_sampler, elem_id=f"{tab}_sampling", allow_custom_value=bool(hidden))
        scheduler = gr.Dropdown(label="Schedule type", choices=[label for _, label in samplers.SCHEDULE_TYPES],
                                value="Automatic", elem_id=f"{tab}_scheduler")
        steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tab}_steps")
    return {"sampler_name": sampler, "scheduler": scheduler, "steps": steps}


# the page's tabs in their default order, with the ids Gradio and the page's script know them by
TAB_IDS = {"txt2img": "txt2img", "img2img": "img2img", "Extras": "extras", "PNG Info": "pnginfo",
           "History": "history", "Checkpoint Merger": "modelmerger", "Settings": "settings"}

MAX_SIDE = 2048  # the Width and Height sliders' maximum


def vae_choices(engine: Engine) -> list[str]:
    """The SD VAE choices: Automatic, None and the VAE files' names."""
    return ["Automatic", "None", *(v.name for v in engine.checkpoints.vaes())]


def slider_size(width: int, height: int, largest: int = MAX_SIDE) -> tuple[int, int]:
    """A picture's size as the Width and Height sliders can hold it and a job takes it: each side to the nearest
    multiple of 8, at least 64 (a very thin picture's shape is not kept then), and a picture over `largest` (the
    sliders' or the server's --max-image-side, whichever is less) scaled down to it with its shape kept."""
    largest = min(MAX_SIDE, largest) // 8 * 8
    scale = min(1.0, largest / max(width, height, 1))
    return tuple(min(largest, max(64, int(side * scale / 8 + 0.5) * 8)) for side in (width, height))


def size_controls(tab: str, size: tuple[int, int]) -> tuple[dict[str, gr.components.Component], gr.Button]:
    with gr.Row(elem_id=f"{tab}_dimensions_row"):
        with gr.Column(scale=6):
            width = gr.Slider(64, MAX_SIDE, value=size[0], step=8, label="Width", elem_id=f"{tab}_width")
            height = gr.Slider(64, MAX_SIDE, value=size[1], step=8, label="Height", elem_id=f"{tab}_height")
        swap = gr.Button(SWAP, elem_id=f"{tab}_res_switch_btn", min_width=40, scale=0, size="sm",
                         elem_classes="sd-tool")
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], queue=False)
    return {"width": width, "height": height}, swap


def batch_controls(tab: str) -> dict[str, gr.components.Component]:
    with gr.Row(elem_id=f"{tab}_column_batch"):
        count = gr.Slider(1, 16, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
        size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")
    return {"n_iter": count, "batch_size": size}


def cfg_control(tab: str) -> gr.Slider:
    return gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{tab}_cfg_scale")


def tiling_control(tab: str, on: bool) -> gr.Checkbox:
    """A1111's Tiling (a checkbox on its page before 1.6, a setting since): ticked, the job's pictures repeat
    seamlessly side by side. It starts as the setting `tiling` is when the page is built, and a job does what the
    box shows."""
    return gr.Checkbox(label="Tiling", value=on, elem_id=f"{tab}_tiling",
                       info="a picture that repeats seamlessly side by side (textures, patterns)")


@dataclass
class SeedControls:
    fields: dict[str, gr.components.Component]
    random: gr.Button
    reuse: gr.Button
    extra: gr.Checkbox


def seed_controls(tab: str) -> SeedControls:
    with gr.Row(elem_id=f"{tab}_seed_row"):
        seed = gr.Number(label="Seed", value=-1, precision=0, elem_id=f"{tab}_seed", scale=6, min_width=100)
        random_seed = gr.Button(RANDOM, elem_id=f"{tab}_random_seed", min_width=40, scale=0, size="sm",
                                elem_classes="sd-tool")
        reuse_seed = gr.Button(REUSE, elem_id=f"{tab}_reuse_seed", min_width=40, scale=0, size="sm",
                               elem_classes="sd-tool")
        extra = gr.Checkbox(label="Extra", value=False, elem_id=f"{tab}_subseed_show", scale=0, min_width=80)
    with gr.Group(visible=False, elem_id=f"{tab}_seed_extras") as extras:
        with gr.Row():
            subseed = gr.Number(label="Variation seed", value=-1, precision=0, elem_id=f"{tab}_subseed")
            subseed_strength = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                         elem_id=f"{tab}_subseed_strength")
        with gr.Row():
            resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                 elem_id=f"{tab}_seed_resize_from_w")
            resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                 elem_id=f"{tab}_seed_resize_from_h")
    random_seed.click(lambda: -1, outputs=seed, queue=False)
    extra.change(lambda on: gr.Group(visible=on), inputs=extra, outputs=extras, queue=False)
    return SeedControls({"seed": seed, "subseed": subseed, "subseed_strength": subseed_strength,
                         "seed_resize_from_w": resize_w, "seed_resize_from_h": resize_h},
                        random_seed, reuse_seed, extra)


@dataclass
class OutputPanel:
    """The right column: progress, live preview, gallery, the selected image's infotext and buttons."""
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    infotext: gr.Textbox
    log: gr.HTML
    open_folder: gr.Button
    save: gr.Button
    send_img2img: gr.Button
    send_inpaint: gr.Button
    send_extras: gr.Button
    download: gr.File
    infotexts: gr.State  # the infotext of each gallery item
    seeds: gr.State  # the seed of each gallery item
    selected: gr.State  # index of the selected gallery item
    send_buttons: list[gr.Button] = field(default_factory=list)
    upscale: gr.Button | None = None  # txt2img's ✨: the selected image through Hires. fix


def output_panel(tab: str) -> OutputPanel:
    with gr.Column(variant="panel", elem_id=f"{tab}_results"):
        progress = gr.HTML("", elem_id=f"{tab}_progress", elem_classes="sd-progress-box")
        preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{tab}_preview",
                           height=256, format="png")
        gallery = gr.Gallery(label="Output", show_label=False, format="png", columns=4, height=512,
                             object_fit="contain", elem_id=f"{tab}_gallery", interactive=False)
        with gr.Row(elem_id=f"image_buttons_{tab}", elem_classes="sd-image-buttons"):
            open_folder = gr.Button("📂", elem_id=f"{tab}_open_folder", min_width=40, size="sm",
                                    elem_classes="sd-tool")
            # A1111's ✨: the selected image again through Hires. fix (its settings), from that image
            upscale = gr.Button("✨ Upscale", elem_id=f"{tab}_upscale", min_width=40, size="sm") \
                if tab == "txt2img" else None
            save = gr.Button("💾 Save", elem_id=f"{tab}_save", min_width=40, size="sm")
            send_img2img = gr.Button("🖼️ Send to img2img", elem_id=f"{tab}_send_to_img2img", min_width=40,
                                     size="sm")
            send_inpaint = gr.Button("🎨️ Send to inpaint", elem_id=f"{tab}_send_to_inpaint", min_width=40,
                                     size="sm")
            send_extras = gr.Button("📐 Send to extras", elem_id=f"{tab}_send_to_extras", min_width=40, size="sm")
        download = gr.File(label="Saved file", visible=False, interactive=False, elem_id=f"download_files_{tab}")
        infotext = gr.Textbox(label="Generation parameters", lines=4, max_lines=12, interactive=False,
                              buttons=["copy"], elem_id=f"{tab}_infotext")
        log = gr.HTML("", elem_id=f"html_log_{tab}")
    return OutputPanel(progress, preview, gallery, infotext, log, open_folder, save, send_img2img, send_inpaint,
                       send_extras, download, gr.State([]), gr.State([]), gr.State(0), upscale=upscale)


def open_folder(path: Path) -> str:
    """Open `path` in the desktop's file manager (the server's desktop: this is a local app). Returns a
    note for the page: the path itself when no file manager can be started."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        if sys.platform == "win32":
            os.startfile(path)  # type: ignore[attr-defined]
        else:
            opener = "open" if sys.platform == "darwin" else "xdg-open"
            subprocess.Popen([opener, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return f"Images are saved in {path}"
    return f"Opened {path}"



IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # what the batch folders read


def images_in(folder: Path, what: str) -> list[Path]:
    """The image files (IMAGE_TYPES) of a batch's input folder, in name order. The folder is one the page may
    name; a file in it that is a link leading out of it is left out, since where it leads was never checked.
    BadRequest naming `what` when the folder cannot be read."""
    try:
        inside = folder.resolve()
        return sorted(f for f in folder.iterdir()
                      if f.suffix.lower() in IMAGE_TYPES and f.is_file() and f.resolve().is_relative_to(inside))
    except OSError as e:
        raise BadRequest(f"{what}: cannot read {folder} ({e.strerror or type(e).__name__})") from None


def open_image(path, mode: str | None = None, engine: Engine | None = None) -> Image.Image:
    """An image file read into memory, turned as its EXIF says (and converted to `mode` when given);
    BadRequest naming the file when it is not an image. With `engine`, one over its input-image limit is
    refused from its header and the pixels are decoded within its decode budget."""
    try:
        if engine is not None:
            image = images.read_image(path, engine.limits.max_input_pixels, engine.decode_budget)
        else:
            with Image.open(path) as im:
                image = ImageOps.exif_transpose(im)
        return image.convert(mode) if mode else image
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise BadRequest(f"Cannot read {Path(str(path)).name} as an image: {e}") from None


def gallery_path(item) -> str:
    """The file behind one item of a Gallery's value (Gradio gives (file, caption) pairs)."""
    item = item[0] if isinstance(item, (tuple, list)) else item
    if isinstance(item, dict):
        return item.get("path") or item["image"]["path"]
    return getattr(item, "path", None) or str(item)


def download_folder(engine: Engine) -> Path:
    """The folder whose files Save offers for download: the default Save folder (log/images in the data
    dir). Fixed at start-up, so that no setting can widen what the page serves (/gradio_api/file=)."""
    return engine.paths.resolve_output_dir(Settings.model_fields["outdir_save"].default)


def wire_output_panel(engine: Engine, panel: OutputPanel, seed: SeedControls, outdir_setting: str) -> None:
    """Gallery selection shows that image's infotext; ♻ takes its seed; 📂 opens the output folder;
    Save copies the selected image (with its infotext) to the `outdir_save` folder and offers it as a
    download, as A1111's Save does."""
    def select(infotexts, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        return index, infotexts[index] if 0 <= index < len(infotexts) else ""

    panel.gallery.select(select, inputs=panel.infotexts, outputs=[panel.selected, panel.infotext], queue=False)

    def reuse(seeds, index):
        if not seeds:
            return gr.skip()
        return seeds[index] if 0 <= index < len(seeds) else seeds[0]

    seed.reuse.click(reuse, inputs=[panel.seeds, panel.selected], outputs=seed.fields["seed"], queue=False)

    def open_outputs():
        values = engine.options.values
        return note_html(open_folder(engine.paths.resolve_output_dir(values.outdir_samples
                                                                     or getattr(values, outdir_setting))))

    panel.open_folder.click(open_outputs, outputs=panel.log, queue=False)

    def save(gallery, infotexts, index):
        if not gallery:
            return gr.File(visible=False), note_html("Nothing to save: generate an image first.")
        index = index if 0 <= index < len(gallery) else 0
        with Image.open(gallery_path(gallery[index])) as im:
            image = im.copy()
        text = infotexts[index] if index < len(infotexts) else None
        folder = engine.paths.resolve_output_dir(engine.options.values.outdir_save)
        settings = engine.options.values.model_copy(update={"save_to_dirs": False})
        namer = FileNamer(prompt=(text or "").split("\nNegative prompt:")[0].split("\nSteps: ")[0])
        saved = images.save_image(image, folder, text, settings, namer, seed_of(text) or 0)
        if not Path(saved).resolve().is_relative_to(download_folder(engine).resolve()):
            return gr.File(visible=False), note_html(f"Saved {saved}")  # the page serves no other folder
        return gr.File(value=str(saved), visible=True), note_html(f"Saved {saved}")

    panel.save.click(save, inputs=[panel.gallery, panel.infotexts, panel.selected],
                     outputs=[panel.download, panel.log])
