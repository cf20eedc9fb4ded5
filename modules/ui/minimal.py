"""A minimal txt2img page, so the product can be tried end to end until the full A1111-style UI lands.

It is a thin adapter: it builds GenerationParams and calls the same engine as the API.
"""

from __future__ import annotations

import html

import gradio as gr
from pydantic import ValidationError

from modules.engine import BadRequest, Engine, describe_validation_error
from modules.generation import samplers
from modules.generation.params import GenerationParams
from modules.models.checkpoint_file import CheckpointError


DEMO_SIZE = 128  # what the built-in demo model was trained at


def demo_notice(engine: Engine, title: str | None) -> str:
    """A plain word about the built-in demo model when it is the selected checkpoint, else nothing."""
    info = engine.models.checkpoints.find(title) if title else None
    if info is None or not info.builtin:
        return ""
    folder = html.escape(str(engine.paths.checkpoint_dirs[-1]))
    return (f"<b>This is the small built-in demo model</b> ({html.escape(info.name)}): it draws one coloured "
            f"circle, square or triangle on a plain background at {DEMO_SIZE}x{DEMO_SIZE}, e.g. "
            "<i>a red circle on a blue background</i>. For real pictures put Stable Diffusion checkpoints "
            f"(.safetensors or .ckpt) into <code>{folder}</code> and press Refresh.")


def build(engine: Engine) -> gr.Blocks:
    def titles() -> list[str]:
        return [i.title for i in engine.models.checkpoints.list()]

    def selected() -> str | None:
        try:
            return engine.resolve_checkpoint().title
        except BadRequest:
            return None

    def refresh():
        engine.models.checkpoints.refresh()
        value = selected()
        return gr.update(choices=titles(), value=value), demo_notice(engine, value)

    def change_checkpoint(title: str):
        if not title:
            return "", gr.update(), gr.update()
        try:
            engine.set_options({"sd_model_checkpoint": title})
            loaded = engine.models.current.info.title
            return (f"Loaded {html.escape(loaded)}", gr.update(choices=titles(), value=loaded),
                    demo_notice(engine, loaded))
        except (BadRequest, CheckpointError) as e:
            current = engine.models.current
            return (f"<b>Could not load {html.escape(title)}:</b> {html.escape(str(e))}",
                    gr.update(value=current.info.title if current else None), gr.update())

    def generate(prompt, negative, sampler, steps, cfg, width, height, seed, batch_count, batch_size):
        try:
            params = GenerationParams(
                prompt=prompt, negative_prompt=negative, sampler_name=sampler, steps=int(steps), cfg_scale=cfg,
                width=int(width), height=int(height), seed=int(seed), n_iter=int(batch_count),
                batch_size=int(batch_size))
        except ValidationError as e:
            return [], "", f"<b>Error:</b> {html.escape(describe_validation_error(e))}"
        try:
            result = engine.txt2img(params)
        except (BadRequest, CheckpointError, RuntimeError) as e:
            return [], "", f"<b>Error:</b> {html.escape(str(e))}"
        note = "Interrupted; the images finished before that are kept." if result.interrupted else ""
        saved = [p for p in result.paths if p]
        if saved:
            note += f" Saved to {html.escape(str(saved[0]).rsplit('/', 1)[0])}."
        return list(zip(result.images, result.infotexts)), result.infotexts[0] if result.infotexts else "", note

    initial = selected()
    notice = demo_notice(engine, initial)
    size = DEMO_SIZE if notice else 512  # the demo model draws nothing recognisable at 512
    with gr.Blocks(title="Stable Diffusion WebUI") as page:
        with gr.Row():
            checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=titles(), value=initial,
                                     elem_id="sd_checkpoint", scale=4)
            refresh_button = gr.Button("Refresh", elem_id="refresh_checkpoints", scale=1)
        status = gr.HTML(engine.startup_error or "", elem_id="status")
        demo_note = gr.HTML(notice, elem_id="demo_model_notice")
        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt")
        negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
        with gr.Row():
            with gr.Column():
                sampler = gr.Dropdown(label="Sampling method", choices=[s.name for s in samplers.SAMPLERS],
                                      value="DPM++ 2M", elem_id="txt2img_sampling")
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
                width = gr.Slider(64, 2048, value=size, step=8, label="Width", elem_id="txt2img_width")
                height = gr.Slider(64, 2048, value=size, step=8, label="Height", elem_id="txt2img_height")
                with gr.Row():
                    batch_count = gr.Slider(1, 16, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                    batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
                cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
                seed = gr.Number(value=-1, label="Seed", precision=0, elem_id="txt2img_seed")
                generate_button = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            with gr.Column():
                gallery = gr.Gallery(label="Output", format="png", columns=2, elem_id="txt2img_gallery")
                info = gr.Textbox(label="Generation parameters", lines=4, elem_id="txt2img_infotext")
                note = gr.HTML(elem_id="txt2img_note")

        refresh_button.click(refresh, outputs=[checkpoint, demo_note])
        checkpoint.input(change_checkpoint, inputs=checkpoint, outputs=[status, checkpoint, demo_note])
        inputs = [prompt, negative, sampler, steps, cfg, width, height, seed, batch_count, batch_size]
        generate_button.click(generate, inputs=inputs, outputs=[gallery, info, note], api_name="txt2img")
        prompt.submit(generate, inputs=inputs, outputs=[gallery, info, note])
    return page
