"""The Checkpoint Merger tab, laid out as A1111's: models A, B, C, the method and multiplier, format, float16,
config, VAE, discarded weights and metadata. The merge runs in the engine's queue; the tab shows its progress, and
the new checkpoint joins every checkpoint dropdown when it is saved."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from modules.engine import BadRequest, Engine
from modules.models import merge
from modules.services.merger import MergeForm
from modules.ui import progress, runner


@dataclass
class MergerTab:
    primary: gr.Dropdown
    secondary: gr.Dropdown
    tertiary: gr.Dropdown
    result: gr.HTML
    merged: gr.EventListener  # the merge event: what follows a merge (the top bar's list) chains on it


def checkpoint_titles(engine: Engine) -> list[str]:
    """The checkpoint dropdowns' choices (the top bar's too)."""
    return [info.title for info in engine.checkpoints.list()]


def _vaes(engine: Engine) -> list[str]:
    return ["None"] + [v.name for v in engine.checkpoints.vaes()]


def status(state, ahead: int) -> str:
    """The merge's progress line: the queue, then hashing, then tensors written of all."""
    if ahead > 0 or not state.started:
        return progress.describe(state, ahead)
    if not state.sampling_steps:
        return progress.bar(0.0, state.textinfo or "Preparing...")
    fraction = state.sampling_step / state.sampling_steps
    return progress.bar(fraction, f"{fraction * 100:.0f}% · merging tensor {state.sampling_step}/"
                                  f"{state.sampling_steps}")


def build(engine: Engine) -> MergerTab:
    titles = checkpoint_titles(engine)
    with gr.Row(equal_height=False):
        with gr.Column(variant="panel"):
            gr.HTML("<p>A merger of the checkpoints will be saved in your <b>checkpoint</b> folder "
                    f"({html.escape(str(engine.paths.checkpoint_dirs[0]))}).</p>")
            with gr.Row():
                primary = gr.Dropdown(titles, label="Primary model (A)", elem_id="modelmerger_primary_model_name")
                secondary = gr.Dropdown(titles, label="Secondary model (B)",
                                        elem_id="modelmerger_secondary_model_name")
                tertiary = gr.Dropdown(titles, label="Tertiary model (C)", elem_id="modelmerger_tertiary_model_name")
                refresh = gr.Button("🔄", elem_id="modelmerger_refresh_checkpoint_names", scale=0, min_width=40,
                                    size="sm", elem_classes="sd-tool")
            custom_name = gr.Textbox(label="Custom Name (Optional)", elem_id="modelmerger_custom_name")
            multiplier = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A",
                                   elem_id="modelmerger_interp_amount")
            method = gr.Radio(list(merge.METHODS), value="Weighted sum", label="Interpolation Method",
                              elem_id="modelmerger_interp_method")
            with gr.Row():
                fmt = gr.Radio(["ckpt", "safetensors"], value="safetensors", label="Checkpoint format",
                               elem_id="modelmerger_checkpoint_format")
                save_as_half = gr.Checkbox(value=False, label="Save as float16", elem_id="modelmerger_save_as_half")
                overwrite = gr.Checkbox(value=False, label="Overwrite an existing file",
                                        elem_id="modelmerger_overwrite")
            config_source = gr.Radio(list(merge.CONFIG_SOURCES), value="A, B or C", label="Copy config from",
                                     elem_id="modelmerger_config_method")
            with gr.Row():
                vae = gr.Dropdown(_vaes(engine), value="None", label="Bake in VAE", elem_id="modelmerger_bake_in_vae")
                refresh_vae = gr.Button("🔄", elem_id="modelmerger_refresh_bake_in_vae", scale=0, min_width=40,
                                        size="sm", elem_classes="sd-tool")
            discard = gr.Textbox(label="Discard weights with matching name", elem_id="modelmerger_discard_weights")
            with gr.Accordion("Metadata", open=False):
                save_metadata = gr.Checkbox(value=True, label="Save metadata", elem_id="modelmerger_save_metadata")
                add_recipe = gr.Checkbox(value=True, label="Add merge recipe metadata",
                                         elem_id="modelmerger_add_recipe")
                copy_metadata = gr.Checkbox(value=True, label="Copy metadata from merged models",
                                            elem_id="modelmerger_copy_metadata")
            submit = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
        with gr.Column(variant="panel"):
            result = gr.HTML(elem_id="modelmerger_result")

    def lists(*chosen):
        engine.checkpoints.refresh()
        choices = checkpoint_titles(engine)

        def same(value):  # a title gains its [hash] once known: keep the same file chosen
            info = engine.checkpoints.find(value) if value else None
            return info.title if info is not None and info.title in choices else None

        return [gr.Dropdown(choices=choices, value=same(value)) for value in chosen]

    refresh.click(lists, inputs=[primary, secondary, tertiary], outputs=[primary, secondary, tertiary], queue=False)
    def vae_list(value):
        engine.checkpoints.refresh_vaes()
        choices = _vaes(engine)
        return gr.Dropdown(choices=choices, value=value if value in choices else "None")

    refresh_vae.click(vae_list, inputs=vae, outputs=vae, queue=False)

    def run(a, b, c, name, m, how, fmt_value, half, over, config, vae_name, discard_regex, meta, recipe, copy):
        try:
            job = engine.merger.submit(MergeForm(
                a or "", b or "", c or "", how, float(m), bool(half), name or "", fmt_value, config, vae_name or "None",
                discard_regex or "", bool(meta), bool(recipe), bool(copy), bool(over)))
        except BadRequest as e:
            yield progress.error_html(str(e)), gr.skip(), gr.skip(), gr.skip()
            return
        while not job.done.wait(progress.POLL_SECONDS):
            yield status(job.state, engine.queue.ahead_of(job)), gr.skip(), gr.skip(), gr.skip()
        try:
            done = job.wait()
        except Exception as e:  # reported on the page
            yield progress.error_html(runner.describe_error(e)), gr.skip(), gr.skip(), gr.skip()
            return
        notes = progress.note_html(done.message) + "".join(progress.note_html(w) for w in done.warnings)
        yield notes, *lists(a, b, c)

    merged = submit.click(run, inputs=[primary, secondary, tertiary, custom_name, multiplier, method, fmt, save_as_half,
                                       overwrite, config_source, vae, discard, save_metadata, add_recipe,
                                       copy_metadata],
                          outputs=[result, primary, secondary, tertiary], concurrency_limit=None,
                          show_progress="hidden")
    return MergerTab(primary, secondary, tertiary, result, merged)
