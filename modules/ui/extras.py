"""The Extras tab: upscale one image, several uploaded ones, or a folder, with A1111's controls (Scale by /
Scale to, Upscaler 1 and 2 with visibility). The work is the engine's `submit_extras` (queued behind
generations, as A1111's), the same the `/sdapi/v1/extra-*` routes run; a folder goes to `submit_extras_folder`,
which reads and saves one file at a time."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image
from pydantic import ValidationError

from modules import limits, postprocessing
from modules.engine import BadRequest, Engine, ExtrasResult
from modules.limits import Limits
from modules.ui import common, progress, runner
from modules.ui.common import IMAGE_TYPES, open_image


MAX_LISTED = 10  # files named in the note of those a folder batch skipped


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
                    show_results = gr.Checkbox(label="Show result images", value=True,
                                               elem_id="extras_show_extras_results")
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
                upscaler_1 = gr.Dropdown(engine.upscalers.names(), value="None", label="Upscaler 1",
                                         elem_id="extras_upscaler_1")
                upscaler_2 = gr.Dropdown(engine.upscalers.names(), value="None", label="Upscaler 2",
                                         elem_id="extras_upscaler_2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                       elem_id="extras_upscaler_2_visibility")
            gr.HTML("<p class='sd-hint'>Lanczos and Nearest resample the image; model upscalers are the files in "
                    "models/ESRGAN, RealESRGAN, DAT and HAT (restart to list new ones). Face restoration (GFPGAN, "
                    "CodeFormer) is not available yet.</p>")
        with gr.Column(variant="panel"):
            gallery = gr.Gallery(label="Result", show_label=False, format="png", columns=3, height=480,
                                 object_fit="contain", elem_id="extras_gallery", interactive=False)
            info = gr.HTML(elem_id="html_info_extras")

    def run(current_mode, single, uploads, in_dir, out_dir, show, tab, by_value, max_len, w, h, crop_on, up1, up2,
            vis):
        try:
            params = postprocessing.ExtrasParams(
                resize_mode=int(tab), upscaling_resize=float(by_value), upscaling_max_side_length=int(max_len),
                upscaling_resize_w=int(w), upscaling_resize_h=int(h), upscaling_crop=bool(crop_on),
                upscaler_1=up1, upscaler_2=up2, extras_upscaler_2_visibility=float(vis))
            if int(current_mode) == 2:
                files, outdir = _folder(engine, in_dir, out_dir)
                job = engine.submit_extras_folder(files, params, outdir, show=bool(show))
            else:
                images, names = _uploaded(engine, int(current_mode), single, uploads)
                job = engine.submit_extras(images, params, save=True, names=names)
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
        yield [(im, None) for im in result.images], _notes(result, bool(show) or int(current_mode) != 2,
                                                           engine.limits)

    inputs = [mode, image, files, input_dir, output_dir, show_results, scale_tab, resize, max_side, width, height,
              crop, upscaler_1, upscaler_2, visibility]
    submit.click(run, inputs=inputs, outputs=[gallery, info], concurrency_limit=None, show_progress="hidden",
                 js=common.tabs_read_on_click(inputs, {mode: [t0, t1, t2], scale_tab: [by, to]}))
    return ExtrasTab(image, tabs, mode, gallery, info)


def _notes(result: ExtrasResult, shown: bool, lim: Limits) -> str:
    """The page's lines under the results: the extras infotexts, where the images went, and what was left."""
    saved = [p for p in result.paths if p]
    notes = [f"<p>{html.escape(t)}</p>" for t in dict.fromkeys(result.infotexts) if t]
    if saved:
        notes.append(progress.note_html(f"Saved {len(saved)} image{'s' if len(saved) != 1 else ''} to "
                                        f"{Path(saved[0]).parent}"))
    if shown and len(result.images) < len(saved):
        notes.append(progress.note_html(
            f"Showing the first {len(result.images)}: this server shows at most {lim.max_extras_images} results of "
            f"a batch, and {limits.megapixels(lim.max_extras_pixels)} megapixels (--max-extras-images, "
            "--max-extras-megapixels); the others are only saved."))
    if result.skipped:
        listed = ", ".join(result.skipped[:MAX_LISTED]) + (", ..." if len(result.skipped) > MAX_LISTED else "")
        notes.append(progress.note_html(f"Skipped {len(result.skipped)} file{'s' if len(result.skipped) != 1 else ''}"
                                        f" that could not be done: {listed}"))
    if result.interrupted:
        notes.append(progress.note_html("Interrupted: the images done before that are kept."))
    return "".join(notes)


def _uploaded(engine: Engine, mode: int, single, uploads) -> tuple[list[Image.Image], list[str] | None]:
    """The images of the Single Image or Batch Process sub-tab, and (a batch's) their file names."""
    if mode == 0:
        if single is None:
            raise BadRequest("Extras: upload an image first.")
        return [single], None
    if not uploads:
        raise BadRequest("Extras: upload one or more images first.")
    paths = [getattr(f, "name", f) for f in uploads]  # Gradio keeps an upload's own name, in a folder of its own
    return [open_image(p, engine=engine) for p in paths], [Path(p).name for p in paths]


def _folder(engine: Engine, in_dir: str, out_dir: str) -> tuple[list[Path], str | None]:
    """Batch from Directory: the image files of the input folder, in name order, and the folder to save them in
    (None: the usual one). Both must be folders the page may name (see OptionsService.page_folder)."""
    if not in_dir or not in_dir.strip():
        raise BadRequest("Extras: give an input directory")
    folder = engine.options.page_folder("Extras: input directory", in_dir)
    if not folder.is_dir():
        raise BadRequest(f"Extras: input directory {in_dir!r} is not a folder")
    files = common.images_in(folder, "Extras: input directory")
    if not files:
        raise BadRequest(f"Extras: no images ({', '.join(IMAGE_TYPES)}) in {folder}")
    outdir = str(engine.options.page_folder("Extras: output directory", out_dir)) \
        if out_dir and out_dir.strip() else None
    return files, outdir
