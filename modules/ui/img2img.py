"""The img2img tab: A1111's sub-tabs (img2img, Sketch, Inpaint, Inpaint sketch, Inpaint upload, Batch),
resize modes, denoising strength and inpaint options, feeding the engine's one img2img job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gradio as gr
import numpy as np
from PIL import Image

from modules import images
from modules.engine import BadRequest, Engine
from modules.generation.params import Img2ImgParams
from modules.ui import (common, extra_networks as extra_networks_ui, extra_options, override_settings, progress,
                        refiner, runner, scripts, soft_inpainting, toprow)
from modules.ui.common import OutputPanel, SeedControls
from modules.ui.toprow import Toprow

MODES = ("img2img", "Sketch", "Inpaint", "Inpaint sketch", "Inpaint upload", "Batch")
INPAINT_MODES = (2, 3, 4)
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS = ("Whole picture", "Only masked")


@dataclass
class Img2ImgTab:
    toprow: Toprow
    fields: dict  # GenerationParams / Img2ImgParams field name -> component
    inputs: dict  # the image inputs and tab state, by name
    seed: SeedControls
    panel: OutputPanel
    size_info: gr.HTML
    tabs: gr.Tabs
    cards: extra_networks_ui.CardsView
    tab_sets: dict  # tab index number -> its tabs (see common.tabs_read_on_click)


def _editor(elem_id: str, brush_color: str | None) -> gr.ImageEditor:
    brush = gr.Brush(colors=[brush_color], color_mode="fixed", default_size=24) if brush_color else \
        gr.Brush(default_size=12)
    return gr.ImageEditor(label="Image", type="pil", image_mode="RGBA", brush=brush, elem_id=elem_id, height=480,
                          sources=["upload", "clipboard"], layers=False, transforms=())


def build(engine: Engine, size: tuple[int, int]) -> Img2ImgTab:
    row = toprow.build(engine, "img2img")
    cards = extra_networks_ui.build(engine, "img2img")
    inputs: dict = {"mode": common.tab_index("img2img_mode"), "scale_tab": common.tab_index("img2img_scale_tab")}
    with gr.Row(elem_id="img2img_settings_and_results", equal_height=False):
        with gr.Column(scale=1, variant="compact", elem_id="img2img_settings"):
            with gr.Tabs(elem_id="mode_img2img") as tabs:
                with gr.Tab("img2img", id="img2img_img2img_tab", elem_id="img2img_img2img_tab") as t0:
                    inputs["init_img"] = gr.Image(label="Image for img2img", type="pil", image_mode="RGBA",
                                                  elem_id="img2img_image", height=480,
                                                  sources=["upload", "clipboard"])
                with gr.Tab("Sketch", id="img2img_img2img_sketch_tab", elem_id="img2img_img2img_sketch_tab") as t1:
                    inputs["sketch"] = _editor("img2img_sketch", None)
                with gr.Tab("Inpaint", id="img2img_inpaint_tab", elem_id="img2img_inpaint_tab") as t2:
                    inputs["init_img_with_mask"] = _editor("img2maskimg", "#ffffff")
                with gr.Tab("Inpaint sketch", id="img2img_inpaint_sketch_tab",
                            elem_id="img2img_inpaint_sketch_tab") as t3:
                    inputs["inpaint_color_sketch"] = _editor("inpaint_sketch", None)
                with gr.Tab("Inpaint upload", id="img2img_inpaint_upload_tab",
                            elem_id="img2img_inpaint_upload_tab") as t4:
                    inputs["init_img_inpaint"] = gr.Image(label="Image for img2img", type="pil", image_mode="RGBA",
                                                          elem_id="img_inpaint_base", sources=["upload", "clipboard"])
                    inputs["init_mask_inpaint"] = gr.Image(label="Mask", type="pil", image_mode="RGBA",
                                                           elem_id="img_inpaint_mask", sources=["upload", "clipboard"])
                with gr.Tab("Batch", id="img2img_batch_tab", elem_id="img2img_batch_tab") as t5:
                    gr.HTML("<p class='sd-hint'>Process every image of a folder on this computer; leave the "
                            "output folder empty to save into the usual img2img folder. With an inpaint mask "
                            "folder, each image uses the mask of the same name.</p>")
                    inputs["batch_input_dir"] = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
                    inputs["batch_output_dir"] = gr.Textbox(label="Output directory",
                                                            elem_id="img2img_batch_output_dir")
                    inputs["batch_mask_dir"] = gr.Textbox(label="Inpaint batch mask directory (optional)",
                                                          elem_id="img2img_batch_inpaint_mask_dir")
            sub_tabs = (t0, t1, t2, t3, t4, t5)

            fields: dict = {}
            fields["resize_mode"] = gr.Radio(list(images.RESIZE_MODES), value=images.RESIZE_MODES[0], type="index",
                                             label="Resize mode", elem_id="resize_mode")
            fields.update(common.sampler_controls("img2img", hidden=engine.options.values.hide_samplers))
            with gr.Tabs(elem_id="img2img_dimensions_row"):
                with gr.Tab("Resize to", elem_id="img2img_tab_resize_to") as resize_to:
                    dims, _swap = common.size_controls("img2img", size)
                    fields.update(dims)
                with gr.Tab("Resize by", elem_id="img2img_tab_resize_by") as resize_by:
                    inputs["scale_by"] = gr.Slider(0.05, 4.0, value=1.0, step=0.05, label="Scale",
                                                   elem_id="img2img_scale")
                    size_info = gr.HTML("", elem_id="img2img_scale_resolution_preview")
            tab_sets = {inputs["scale_tab"]: [resize_to, resize_by]}
            common.follow_tabs(tab_sets[inputs["scale_tab"]], inputs["scale_tab"])
            fields.update(common.batch_controls("img2img"))
            fields["cfg_scale"] = common.cfg_control("img2img")
            fields["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength",
                                                     elem_id="img2img_denoising_strength")
            seed = common.seed_controls("img2img")
            fields.update(seed.fields)
            fields["tiling"] = common.tiling_control("img2img", engine.options.values.tiling)
            fields["override_settings"] = override_settings.control("img2img")
            fields.update(extra_options.build(engine, "img2img"))  # Settings > Settings in UI
            with gr.Group(visible=False, elem_id="inpaint_controls") as inpaint_controls:
                fields["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
                fields["inpainting_mask_invert"] = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], type="index",
                                                            label="Mask mode", elem_id="img2img_mask_mode")
                fields["inpainting_fill"] = gr.Radio(list(MASKED_CONTENT), value="original", type="index",
                                                     label="Masked content", elem_id="img2img_inpainting_fill")
                with gr.Row():
                    fields["inpaint_full_res"] = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], type="index",
                                                          label="Inpaint area", elem_id="img2img_inpaint_full_res")
                    fields["inpaint_full_res_padding"] = gr.Slider(0, 256, value=32, step=4,
                                                                   label="Only masked padding, pixels",
                                                                   elem_id="img2img_inpaint_full_res_padding")
                fields.update(soft_inpainting.build())
            fields.update(refiner.build(engine, "img2img"))
            fields.update(scripts.build(engine, "img2img"))
            # The sub-tab's select sets the mode in the page and the inpaint options' visibility from the server
            # (at once, rather than through the mode's change); the change covers "Send to inpaint".
            tab_sets[inputs["mode"]] = list(sub_tabs)
            common.follow_tabs(sub_tabs, inputs["mode"])
            for index, tab in enumerate(sub_tabs):
                tab.select(lambda i=index: gr.Group(visible=i in INPAINT_MODES), outputs=inpaint_controls, queue=False)
            inputs["mode"].change(lambda m: gr.Group(visible=m in INPAINT_MODES), inputs=inputs["mode"],
                                  outputs=inpaint_controls, queue=False)
        with gr.Column(scale=1, elem_id="img2img_results_column"):
            panel = common.output_panel("img2img")
    fields["prompt"], fields["negative_prompt"], fields["styles"] = row.prompt, row.negative_prompt, row.styles
    return Img2ImgTab(row, fields, inputs, seed, panel, size_info, tabs, cards, tab_sets)


# --- turning the controls into a request ---------------------------------------------------------

def _alpha_mask(layer: Image.Image | None, size: tuple[int, int], above: int = 0) -> Image.Image | None:
    """White where the user painted on `layer` (alpha over `above`: 0, any visible stroke), black elsewhere."""
    if layer is None:
        return None
    alpha = np.asarray(layer.convert("RGBA"))[..., 3]
    mask = Image.fromarray(np.where(alpha > above, 255, 0).astype(np.uint8), "L")
    return mask if mask.size == size else mask.resize(size)


def _editor_parts(value) -> tuple[Image.Image | None, Image.Image | None, Image.Image | None]:
    """(background, strokes, composite) of an ImageEditor value."""
    if not value:
        return None, None, None
    layers = [lay for lay in (value.get("layers") or []) if lay is not None]
    strokes = None
    for lay in layers:
        lay = lay.convert("RGBA")
        strokes = lay if strokes is None else Image.alpha_composite(strokes, lay)
    return value.get("background"), strokes, value.get("composite")


def _mask_from_upload(mask: Image.Image) -> Image.Image:
    """An uploaded mask as the engine reads it (A1111's rule, see masking.binary_mask): its alpha channel when it
    has transparency (opaque = repaint), else its brightness (white = repaint)."""
    if images.may_be_transparent(mask):
        return mask.convert("RGBA")
    return mask.convert("L")


def init_and_mask(mode: int, values: dict) -> tuple[Image.Image, Image.Image | None]:
    """The init image and the mask (None: no inpainting) the chosen sub-tab holds; BadRequest when the
    sub-tab has no image yet."""
    if mode == 0:
        image, mask = values.get("init_img"), None
    elif mode == 1:
        _bg, _strokes, image = _editor_parts(values.get("sketch"))
        mask = None
    elif mode == 2:
        image, strokes, _c = _editor_parts(values.get("init_img_with_mask"))
        # A1111 rounds the painted mask at once (create_binary_mask: alpha over 128), whatever mask_round says
        mask = _alpha_mask(strokes, image.size, 128) if image is not None and strokes is not None else None
        if image is not None and mask is None:
            raise BadRequest("Inpaint: paint over the area to repaint first (the mask is empty).")
    elif mode == 3:
        background, strokes, image = _editor_parts(values.get("inpaint_color_sketch"))
        mask = _alpha_mask(strokes, image.size) if image is not None and strokes is not None else None
        if image is not None and mask is None:
            raise BadRequest("Inpaint sketch: draw over the area to repaint first (the mask is empty).")
    elif mode == 4:
        image, upload = values.get("init_img_inpaint"), values.get("init_mask_inpaint")
        if image is not None and upload is None:
            raise BadRequest("Inpaint upload: upload a mask too (white = the area to repaint).")
        mask = _mask_from_upload(upload) if upload is not None else None
    else:
        raise BadRequest("Batch mode works on folders; use its own fields.")
    if image is None:
        raise BadRequest(f"{MODES[mode]}: upload an image first.")
    return image, mask


def make_params(values: dict, image: Image.Image, mask: Image.Image | None, scale_tab: int,
                scale_by: float) -> Img2ImgParams:
    v = soft_inpainting.request_values(refiner.request_values(values))
    v["tiling"] = bool(v.get("tiling"))  # what the box shows (it starts as the setting)
    v["override_settings"] = override_settings.for_job(v)
    for name in ("steps", "width", "height", "n_iter", "batch_size", "seed", "subseed", "seed_resize_from_w",
                 "seed_resize_from_h", "mask_blur", "inpaint_full_res_padding"):
        if v.get(name) is not None:
            v[name] = int(v[name])
    if v.get("seed") is None:
        v["seed"] = -1
    if scale_tab == 1:  # Resize by: the image's size times the scale, down to a multiple of 8
        v["width"] = int(image.width * scale_by) // 8 * 8
        v["height"] = int(image.height * scale_by) // 8 * 8
    if v.get("scheduler") == "Automatic":
        v["scheduler"] = None
    v["styles"] = list(v.get("styles") or [])
    v["inpaint_full_res"] = bool(v.get("inpaint_full_res"))
    if mask is None:
        for name in ("mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res",
                     "inpaint_full_res_padding"):
            v.pop(name, None)
    return Img2ImgParams(init_images=[image], mask=mask, **v)


def batch_files(engine: Engine, input_dir: str, mask_dir: str) -> list[tuple[Path, Path | None]]:
    if not input_dir or not input_dir.strip():
        raise BadRequest("Batch: give an input directory")
    folder = engine.options.page_folder("Batch: input directory", input_dir)
    if not folder.is_dir():
        raise BadRequest(f"Batch: input directory {input_dir!r} is not a folder")
    masks = engine.options.page_folder("Batch: inpaint mask directory", mask_dir) \
        if mask_dir and mask_dir.strip() else None
    if masks is not None and not masks.is_dir():
        raise BadRequest(f"Batch: inpaint mask directory {mask_dir!r} is not a folder")
    files = common.images_in(folder, "Batch: input directory")
    if not files:
        raise BadRequest(f"Batch: no images ({', '.join(common.IMAGE_TYPES)}) in {folder}")
    by_stem: dict[str, Path] = {}
    for m in common.images_in(masks, "Batch: inpaint mask directory") if masks else []:
        by_stem.setdefault(m.stem, m)
    return [(f, by_stem.get(f.stem)) for f in files]


def run_batch(engine: Engine, values: dict, inputs: dict) -> Iterator[list]:
    """Batch: one img2img job per image of the input folder, in name order, each saved to the output
    folder (the usual one when empty). Stops at an interrupt or an error; what finished is kept."""
    try:
        files = batch_files(engine, inputs.get("batch_input_dir") or "", inputs.get("batch_mask_dir") or "")
        out_dir = (inputs.get("batch_output_dir") or "").strip()
        if out_dir:
            out_dir = str(engine.options.page_folder("Batch: output directory", out_dir))
    except BadRequest as e:
        yield runner.error(str(e))
        return
    scale_tab, scale_by = int(inputs.get("scale_tab") or 0), float(inputs.get("scale_by") or 1.0)
    show_limit = engine.options.values.img2img_batch_show_results_limit  # A1111's: what the page gets of a batch
    shown, texts, seeds, notes, made, done = [], [], [], [], 0, 0
    for n, (path, mask_path) in enumerate(files, 1):
        def make(path=path, mask_path=mask_path):
            mask = _mask_from_upload(common.open_image(mask_path, "RGBA", engine)) if mask_path else None
            params = make_params(values, common.open_image(path, "RGBA", engine), mask, scale_tab, scale_by)
            if out_dir:  # as A1111 saves a batch: right into the folder, each file named after its input
                several = params.n_iter > 1 or params.batch_size > 1
                params.override_settings = {
                    **params.override_settings, "outdir_samples": out_dir, "save_to_dirs": False,
                    "save_images_replace_action": "Add number suffix",
                    "samples_filename_pattern": f"{path.stem}-[generation_number]" if several else path.stem}
            return params

        job = runner.submit(engine, "img2img", make)
        outcome = job if isinstance(job, BaseException) else \
            (yield from runner.watch(engine, job, f"{path.name}: image {n} of {len(files)}"))
        if isinstance(outcome, BaseException):
            notes.append(progress.error_html(f"{path.name}: {runner.describe_error(outcome)}"))
            break
        made += len(outcome.images)
        done += not outcome.interrupted
        room = len(outcome.images) if show_limit < 0 else max(0, show_limit - len(shown))
        shown += list(outcome.images)[:room]
        texts += list(outcome.infotexts)[:room]
        seeds += list(outcome.seeds)[:room]
        if outcome.interrupted:
            notes.append(progress.note_html(f"Interrupted at {path.name}."))
            break
    saved_to = out_dir or "the img2img output folder"
    notes.insert(0, progress.note_html(f"Batch: {done} of {len(files)} images done, saved to {saved_to}."))
    if len(shown) < made:
        notes.insert(1, progress.note_html(f"Showing the first {len(shown)} (the setting \"Show the first N batch "
                                           "img2img results in UI\")."))
    yield [progress.gallery_value(shown, texts), texts, seeds, 0, texts[0] if texts else "", "",
           gr.Image(visible=False), "".join(notes), *runner.buttons(False)]


def wire(engine: Engine, tab: Img2ImgTab) -> None:
    toprow.wire(engine, tab.toprow, tab.fields["steps"])
    extra_networks_ui.wire(engine, tab.cards, tab.toprow.prompt, tab.toprow.negative_prompt, tab.panel)
    by_component = {c: name for name, c in tab.fields.items()}
    input_components = {c: name for name, c in tab.inputs.items()}

    def generate(data: dict):
        script, values = scripts.request({by_component[c]: v for c, v in data.items() if c in by_component})
        inputs = {input_components[c]: v for c, v in data.items() if c in input_components}
        mode = int(inputs.get("mode") or 0)
        if mode == 5:
            yield from run_batch(engine, values, inputs)
            return

        def make():
            image, mask = init_and_mask(mode, inputs)
            return make_params(values, image, mask, int(inputs.get("scale_tab") or 0),
                               float(inputs.get("scale_by") or 1.0))

        yield from runner.run(engine, "img2img", make, script)

    # a list of inputs (not a set) so that the page's JS knows where the tab indexes are
    ordered = list(dict.fromkeys([*tab.fields.values(), *tab.inputs.values()]))

    def generate_from(*values):
        yield from generate(dict(zip(ordered, values)))

    event_outputs = runner.outputs(tab.panel, tab.toprow.generate, tab.toprow.interrupt, tab.toprow.skip)
    tab.toprow.generate.click(generate_from, inputs=ordered, outputs=event_outputs, api_name="img2img",
                              concurrency_limit=None, show_progress="hidden",
                              js=common.tabs_read_on_click(ordered, tab.tab_sets))

    def scaled_size(image, scale):
        if image is None:
            return '<span class="sd-hint">Upload an image to see the size it will be processed at.</span>'
        w, h = int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8
        return f'<span class="sd-hint">{image.width}x{image.height} → {w}x{h}</span>'

    sized = (tab.inputs["init_img"], tab.inputs["scale_by"])  # one event: its answers keep the changes' order
    gr.on([c.change for c in sized], scaled_size, inputs=list(sized), outputs=tab.size_info, queue=False,
          show_progress="hidden", trigger_mode="always_last")
