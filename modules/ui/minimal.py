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
        return gr.update(choices=titles(), value=selected())

    def change_checkpoint(title: str):
        if not title:
            return "", gr.update()
        try:
            engine.set_options({"sd_model_checkpoint": title})
            return f"Loaded {html.escape(engine.models.current.info.title)}", gr.update(choices=titles(),
                                                                                       value=engine.models.current.info.title)
        except (BadRequest, CheckpointError) as e:
            current = engine.models.current
            return (f"<b>Could not load {html.escape(title)}:</b> {html.escape(str(e))}",
                    gr.update(value=current.info.title if current else None))

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

    with gr.Blocks(title="Stable Diffusion WebUI") as demo:
        with gr.Row():
            checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=titles(), value=selected(),
                                     elem_id="sd_checkpoint", scale=4)
            refresh_button = gr.Button("Refresh", elem_id="refresh_checkpoints", scale=1)
        status = gr.HTML(engine.startup_error or "", elem_id="status")
        prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt")
        negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
        with gr.Row():
            with gr.Column():
                sampler = gr.Dropdown(label="Sampling method", choices=[s.name for s in samplers.SAMPLERS],
                                      value="DPM++ 2M", elem_id="txt2img_sampling")
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
                width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="txt2img_width")
                height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="txt2img_height")
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

        refresh_button.click(refresh, outputs=checkpoint)
        checkpoint.input(change_checkpoint, inputs=checkpoint, outputs=[status, checkpoint])
        inputs = [prompt, negative, sampler, steps, cfg, width, height, seed, batch_count, batch_size]
        generate_button.click(generate, inputs=inputs, outputs=[gallery, info, note], api_name="txt2img")
        prompt.submit(generate, inputs=inputs, outputs=[gallery, info, note])
    return demo
