"""The PNG Info tab: drop an image, read its generation parameters, send them to txt2img or img2img."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr
from PIL import UnidentifiedImageError

from modules import images
from modules.limits import Limits


@dataclass
class PngInfoTab:
    image: gr.Image
    info: gr.HTML
    parameters: gr.Textbox  # the parameters text, what "Send to" reads
    send_txt2img: gr.Button
    send_img2img: gr.Button
    send_inpaint: gr.Button
    send_extras: gr.Button


def build(engine=None) -> PngInfoTab:
    """`engine`: whose input-image limit and decode budget reading an upload keeps to."""
    with gr.Row(equal_height=False):
        with gr.Column(variant="panel"):
            image = gr.Image(label="Source", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                             elem_id="pnginfo_image", height=480)
        with gr.Column(variant="panel"):
            info = gr.HTML(elem_id="pnginfo_html_info")
            parameters = gr.Textbox(visible=False, elem_id="pnginfo_generation_info")
            with gr.Row():
                send_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img")
                send_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img")
                send_inpaint = gr.Button("Send to inpaint", elem_id="pnginfo_send_to_inpaint")
                send_extras = gr.Button("Send to extras", elem_id="pnginfo_send_to_extras")
    # preprocess=False: Gradio's own preprocessing opens the upload with PIL and, for a file that is not an
    # image, fails with a bare 500 that the page does not show; `read` says what is wrong instead.
    image.change(lambda value: read_upload(value, engine), inputs=image, outputs=[info, parameters], queue=False,
                 preprocess=False)
    return PngInfoTab(image, info, parameters, send_txt2img, send_img2img, send_inpaint, send_extras)


def read_upload(value, engine=None) -> tuple[str, str]:
    """`read` for the Image component's unprocessed value (a file dict with the uploaded file's path)."""
    return read(value.get("path") if isinstance(value, dict) else value, engine)


def read(path: str | None, engine=None) -> tuple[str, str]:
    """(the HTML shown, the parameters text) for an uploaded image file: one with more pixels than the
    `engine`'s limit is refused from its header, others are decoded within its decode budget."""
    if not path:
        return "", ""
    max_pixels = engine.limits.max_input_pixels if engine is not None else Limits().max_input_pixels
    try:
        with images.open_image(path, max_pixels) as im:
            text, items = images.read_info(images.load(im, engine.decode_budget if engine is not None else None))
            kind = im.format or "image"
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        return (f'<div class="sd-error"><b>Cannot read this file as an image:</b> {html.escape(str(e))}</div>', "")
    parts = []
    if text:
        parts.append(f'<div class="sd-infotext"><p><b>parameters</b></p><p>{html.escape(text)}</p></div>')
    else:
        parts.append(f'<div class="sd-note" id="pnginfo_none">This {html.escape(kind)} has no generation parameters '
                     '(it was not made by this program or by AUTOMATIC1111\'s WebUI, or they were removed).</div>')
    for key, value in items.items():
        parts.append(f'<div class="sd-infotext"><p><b>{html.escape(key)}</b></p>'
                     f'<p>{html.escape(str(value))}</p></div>')
    return "".join(parts), text or ""
