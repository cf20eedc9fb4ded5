"""The Extras tab: upscale one image, several uploaded ones, or a folder, with A1111's controls (Scale by /
Scale to, Upscaler 1 and 2 with visibility). The work is the engine's `submit_extras` (queued behind
generations, as A1111's), the same the `/sdapi/v1/extra-*` routes run."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from modules import postprocessing
from modules.engine import BadRequest, Engine
from modules.ui import common, progress, runner
from modules.ui.common import IMAGE_TYPES, open_image


@dataclass
class ExtrasTab:
    image: gr.Image
    tabs: gr.Tabs
    mode: gr.Number  # the selected sub-tab (see common.follow_tabs)
    gallery: gr.Gallery
    info: gr.HTML


def build(engine: Engine) -> ExtrasTab:
    mode, scale_tab = common.tab_index("extras_mode"), common.tab_index("extras_scale_tab")
    with gr.Row(equal_height=False):
        with gr.Column(variant="compact"):
            with gr.Tabs(elem_id="mode_extras") as tabs:
                with gr.Tab("Single Image", id="extras_single_tab", elem_id="extras_single_tab") as t0:
                    image = gr.Image(label="Source", type="pil", image_mode=None, elem_id="extras_image",
                                     sources=["upload", "clipboard"], height=400)
                with gr.Tab("Batch Process", id="extras_batch_process_tab", elem_id="extras_batch_process_tab") as t1:
                    files = gr.File(label="Batch Process", file_count="multiple", file_types=["image"],
                                    elem_id="extras_image_batch")
                with gr.Tab("Batch from Directory", id="extras_batch_directory_tab",
                            elem_id="extras_batch_directory_tab") as t2:
                    input_dir = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir")
                    output_dir = gr.Textbox(label="Output directory (empty: the extras output folder)",
                                            elem_id="extras_batch_output_dir")
            common.follow_tabs([t0, t1, t2], mode)
            submit = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as by:
                    resize = gr.Slider(1.0, 8.0, value=4.0, step=0.05, label="Resize",
                                       elem_id="extras_upscaling_resize")
                    max_side = gr.Slider(0, 8192, value=0, step=8, label="Max side length (0: no limit)",
                                         elem_id="extras_upscale_max_side_length")
                with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as to:
                    with gr.Row():
                        width = gr.Slider(64, 8192, value=512, step=8, label="Width",
                                          elem_id="extras_upscaling_resize_w")
                        height = gr.Slider(64, 8192, value=512, step=8, label="Height",
                                           elem_id="extras_upscaling_resize_h")
                    crop = gr.Checkbox(label="Crop to fit", value=True, elem_id="extras_upscaling_crop")
            common.follow_tabs([by, to], scale_tab)
            with gr.Row():
                upscaler_1 = gr.Dropdown(list(postprocessing.UPSCALERS), value="None", label="Upscaler 1",
                                         elem_id="extras_upscaler_1")
                upscaler_2 = gr.Dropdown(list(postprocessing.UPSCALERS), value="None", label="Upscaler 2",
                                         elem_id="extras_upscaler_2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                       elem_id="extras_upscaler_2_visibility")
            gr.HTML("<p class='sd-hint'>Lanczos and Nearest resample the image; model upscalers (ESRGAN, ...) and "
                    "face restoration (GFPGAN, CodeFormer) are not available yet.</p>")
        with gr.Column(variant="panel"):
            gallery = gr.Gallery(label="Result", show_label=False, format="png", columns=3, height=480,
                                 object_fit="contain", elem_id="extras_gallery", interactive=False)
            info = gr.HTML(elem_id="html_info_extras")

    def run(current_mode, single, uploads, in_dir, out_dir, tab, by_value, max_len, w, h, crop_on, up1, up2, vis):
        try:
            params = postprocessing.ExtrasParams(
                resize_mode=int(tab), upscaling_resize=float(by_value), upscaling_max_side_length=int(max_len),
                upscaling_resize_w=int(w), upscaling_resize_h=int(h), upscaling_crop=bool(crop_on),
                upscaler_1=up1, upscaler_2=up2, extras_upscaler_2_visibility=float(vis))
            inputs, outdir = _inputs(engine, int(current_mode), single, uploads, in_dir, out_dir)
            job = engine.submit_extras(inputs, params, save=True, outdir=outdir)
        except (ValidationError, BadRequest) as e:
            yield gr.skip(), progress.error_html(runner.describe_error(e))
            return
        while not job.done.wait(progress.POLL_SECONDS):
            yield gr.skip(), progress.describe(job.state, engine.queue.ahead_of(job))
        try:
            result = job.wait()
        except Exception as e:  # reported on the page
            yield gr.skip(), progress.error_html(runner.describe_error(e))
            return
        saved = [p for p in result.paths if p]
        notes = [f"<p>{html.escape(t)}</p>" for t in dict.fromkeys(result.infotexts) if t]
        if saved:
            notes.append(progress.note_html(f"Saved {len(saved)} image{'s' if len(saved) != 1 else ''} to "
                                            f"{Path(saved[0]).parent}"))
        if result.interrupted:
            notes.append(progress.note_html("Interrupted: the images done before that are kept."))
        yield [(im, None) for im in result.images], "".join(notes)

    inputs = [mode, image, files, input_dir, output_dir, scale_tab, resize, max_side, width, height, crop, upscaler_1,
              upscaler_2, visibility]
    submit.click(run, inputs=inputs, outputs=[gallery, info], concurrency_limit=None, show_progress="hidden",
                 js=common.tabs_read_on_click(inputs, {mode: [t0, t1, t2], scale_tab: [by, to]}))
    return ExtrasTab(image, tabs, mode, gallery, info)


def _inputs(engine: Engine, mode: int, single, uploads, in_dir: str, out_dir: str
            ) -> tuple[list[Image.Image], str | None]:
    """The images the chosen sub-tab holds, and the folder to save them in (None: the usual one)."""
    if mode == 0:
        if single is None:
            raise BadRequest("Extras: upload an image first.")
        return [single], None
    if mode == 1:
        if not uploads:
            raise BadRequest("Extras: upload one or more images first.")
        return [open_image(getattr(f, "name", f), engine=engine) for f in uploads], None
    if not in_dir or not in_dir.strip():
        raise BadRequest("Extras: give an input directory")
    folder = engine.options.page_folder("Extras: input directory", in_dir)
    if not folder.is_dir():
        raise BadRequest(f"Extras: input directory {in_dir!r} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_TYPES)
    if not files:
        raise BadRequest(f"Extras: no images ({', '.join(IMAGE_TYPES)}) in {folder}")
    outdir = str(engine.options.page_folder("Extras: output directory", out_dir)) \
        if out_dir and out_dir.strip() else None
    return [open_image(f, engine=engine) for f in files], outdir
