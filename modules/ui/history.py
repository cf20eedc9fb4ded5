"""The History tab: search every saved image (words of the prompt, seed:, model:, lora:, kind, dates), a paged
grid of thumbnails, newest first; the selected image's parameters with "Send to" buttons (wired with PNG Info's
in app.common_wiring), open its folder, delete it."""

from __future__ import annotations

import datetime
import html
import io
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
from PIL import Image

from modules.engine import BadRequest, Engine
from modules.ui.common import open_folder
from modules.ui.progress import note_html

PAGE = 24
KIND_CHOICES = ["All", "txt2img", "img2img", "extras", "grid"]
SHOWN_FIELDS = (("kind", "Kind"), ("seed", "Seed"), ("steps", "Steps"), ("sampler", "Sampler"),
                ("schedule", "Schedule type"), ("cfg_scale", "CFG scale"), ("model", "Model"),
                ("model_hash", "Model hash"), ("vae", "VAE"), ("denoising_strength", "Denoising strength"),
                ("hires", "Hires"))


@dataclass
class HistoryTab:
    parameters: gr.Textbox  # the selected image's infotext, what "Send to" reads
    path: gr.State  # the selected image's file on the server (kept server-side; never sent by the client)
    send_txt2img: gr.Button
    send_img2img: gr.Button
    send_inpaint: gr.Button
    send_extras: gr.Button
    refresh: object  # the search as an event handler, for the tab's select


def _details(engine: Engine, row: dict) -> str:
    when = datetime.datetime.fromtimestamp(row["time"]).strftime("%Y-%m-%d %H:%M:%S")
    size = f"{row['width']}x{row['height']}" if row.get("width") else ""
    lines = [f"<p><b>{html.escape(engine.history.relative(row['path']))}</b> · {when}"
             f"{' · ' + size if size else ''} · {row['size'] // 1024 or 1} KB</p>"]
    if row.get("prompt"):
        lines.append(f"<p>{html.escape(row['prompt'])}</p>")
    if row.get("negative_prompt"):
        lines.append(f"<p><b>Negative prompt:</b> {html.escape(row['negative_prompt'])}</p>")
    loras = [n for n in (row.get("loras") or "").split("|") if n]
    pairs = [(label, row.get(key)) for key, label in SHOWN_FIELDS] + [("LoRA", ", ".join(loras) or None)]
    lines.append("<p>" + ", ".join(f"<b>{label}:</b> {html.escape(str(v))}" for label, v in pairs
                                   if v not in (None, "")) + "</p>")
    return f'<div class="sd-infotext" id="history_details">{"".join(lines)}</div>'


def search_page(engine: Engine, query: str, kind: str, page: int) -> tuple[list, list[int], str, int]:
    """(gallery value, the ids shown, the page line, the page number) of a search."""
    try:
        rows, total = engine.history.search(query or "", kind=None if kind in (None, "All") else kind,
                                            limit=PAGE, offset=max(0, page) * PAGE)
    except BadRequest as e:
        return [], [], f'<div class="sd-error">{html.escape(str(e))}</div>', 0
    pages = max(1, -(-total // PAGE))
    if page >= pages and total:
        return search_page(engine, query, kind, pages - 1)
    thumbs = engine.history.thumbnails([r["id"] for r in rows])
    gallery = []
    for r in rows:
        data = thumbs.get(r["id"])
        image = Image.open(io.BytesIO(data)) if data else Image.new("RGB", (8, 8), "gray")
        gallery.append((image, (r.get("prompt") or Path(r["path"]).name)[:80]))
    line = f"{total} image{'s' if total != 1 else ''}" + (f" · page {page + 1} of {pages}" if total else "")
    return gallery, [r["id"] for r in rows], f'<div class="sd-note" id="history_count">{line}</div>', page


def build(engine: Engine) -> HistoryTab:
    with gr.Row(equal_height=True):
        query = gr.Textbox(label="Search", placeholder="words of the prompt, seed:123, model:NAME, lora:NAME, "
                           "since:2026-01-01, until:2026-12-31", elem_id="history_query", scale=5)
        kind = gr.Dropdown(KIND_CHOICES, value="All", label="Kind", elem_id="history_kind", scale=1, min_width=120)
        search = gr.Button("Search", variant="primary", elem_id="history_search", scale=0, min_width=100)
        rescan = gr.Button("🔄 Rescan folders", elem_id="history_rescan", scale=0, min_width=100)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="History", columns=6, height=560, allow_preview=False, object_fit="contain",
                                 elem_id="history_gallery", interactive=False)
            with gr.Row():
                previous = gr.Button("◀ Newer", elem_id="history_previous", size="sm")
                count = gr.HTML(elem_id="history_count_box")
                following = gr.Button("Older ▶", elem_id="history_next", size="sm")
        with gr.Column(scale=2, variant="panel"):
            details = gr.HTML(elem_id="history_info")
            parameters = gr.Textbox(visible=False, elem_id="history_generation_info")
            with gr.Row():
                send_txt2img = gr.Button("Send to txt2img", elem_id="history_send_to_txt2img")
                send_img2img = gr.Button("Send to img2img", elem_id="history_send_to_img2img")
                send_inpaint = gr.Button("Send to inpaint", elem_id="history_send_to_inpaint")
                send_extras = gr.Button("Send to extras", elem_id="history_send_to_extras")
            with gr.Row():
                open_button = gr.Button("📂 Open folder", elem_id="history_open_folder", size="sm")
                delete = gr.Button("🗑️ Delete", elem_id="history_delete", size="sm", variant="stop")
            with gr.Row(visible=False) as confirm_row:
                confirm = gr.Button("Delete this image for good" if not engine.history.trash_available()
                                    else "Move this image to the trash", elem_id="history_delete_confirm",
                                    variant="stop", size="sm")
                cancel = gr.Button("Cancel", elem_id="history_delete_cancel", size="sm")
            note = gr.HTML(elem_id="history_note")
    ids, page, selected, path = gr.State([]), gr.State(0), gr.State(None), gr.State("")

    def run(q, k, p):
        return (*search_page(engine, q, k, p), None, "", "", "", gr.Row(visible=False))

    results = [gallery, ids, count, page, selected, details, parameters, path, confirm_row]
    search.click(lambda q, k: run(q, k, 0), inputs=[query, kind], outputs=results, queue=False)
    query.submit(lambda q, k: run(q, k, 0), inputs=[query, kind], outputs=results, queue=False)
    kind.input(lambda q, k: run(q, k, 0), inputs=[query, kind], outputs=results, queue=False)
    previous.click(lambda q, k, p: run(q, k, max(0, p - 1)), inputs=[query, kind, page], outputs=results,
                   queue=False)
    following.click(lambda q, k, p: run(q, k, p + 1), inputs=[query, kind, page], outputs=results, queue=False)

    def select(shown, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        row = engine.history.get(shown[index]) if 0 <= index < len(shown) else None
        if row is None:
            return None, note_html("This image is no longer in the history."), "", ""
        file = engine.history.file(row["id"])
        return row["id"], _details(engine, row), row.get("infotext") or "", str(file) if file else ""

    gallery.select(select, inputs=ids, outputs=[selected, details, parameters, path], queue=False)

    def open_selected(file):
        return note_html(open_folder(Path(file).parent) if file else "Select an image first.")

    open_button.click(open_selected, inputs=path, outputs=note, queue=False)
    delete.click(lambda s: gr.Row(visible=s is not None), inputs=selected, outputs=confirm_row, queue=False)
    cancel.click(lambda: gr.Row(visible=False), outputs=confirm_row, queue=False)

    def remove(s, q, k, p):
        done = s is not None and engine.history.delete(s)
        return (*run(q, k, p), note_html("Deleted." if done else "Nothing was deleted."))

    def start_rescan():
        status = engine.history.rescan()
        return note_html("Rescanning the output folders in the background; search again in a moment to see the "
                         "files added or removed by hand." if status.running
                         else "The rescan could not start (the server is stopping).")

    rescan.click(start_rescan, outputs=note, queue=False)
    confirm.click(remove, inputs=[selected, query, kind, page], outputs=[*results, note], queue=False)
    return HistoryTab(parameters, path, send_txt2img, send_img2img, send_inpaint, send_extras,
                      (lambda q, k, p: run(q, k, p), [query, kind, page], results))
