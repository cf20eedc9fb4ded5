"""The txt2img tab: A1111's layout (prompts on top, settings left, results right) and its defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import gradio as gr

from modules import infotext
from modules.engine import BadRequest, Engine
from modules.generation import hires, samplers
from modules.generation.params import GenerationParams
from modules.ui import (common, extra_networks as extra_networks_ui, extra_options, override_settings, progress,
                        refiner, runner, scripts, toprow)
from modules.ui.common import OutputPanel, SeedControls
from modules.ui.toprow import Toprow

HIRES_FIELDS = ("enable_hr", "hr_upscaler", "hr_second_pass_steps", "denoising_strength", "hr_scale",
                "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
                "hr_negative_prompt")
SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER = "Use same checkpoint", "Use same sampler", "Use same scheduler"


@dataclass
class Txt2ImgTab:
    toprow: Toprow
    fields: dict  # GenerationParams field name -> component
    seed: SeedControls
    panel: OutputPanel
    hires_info: gr.HTML
    cards: extra_networks_ui.CardsView


def build(engine: Engine, size: tuple[int, int]) -> Txt2ImgTab:
    row = toprow.build(engine, "txt2img")
    cards = extra_networks_ui.build(engine, "txt2img")
    with gr.Row(elem_id="txt2img_settings_and_results", equal_height=False):
        with gr.Column(scale=1, variant="compact", elem_id="txt2img_settings"):
            fields = common.sampler_controls("txt2img", hidden=engine.options.values.hide_samplers)
            dims, _swap = common.size_controls("txt2img", size)
            fields.update(dims)
            fields.update(common.batch_controls("txt2img"))
            fields["cfg_scale"] = common.cfg_control("txt2img")
            seed = common.seed_controls("txt2img")
            fields.update(seed.fields)
            fields["tiling"] = common.tiling_control("txt2img", engine.options.values.tiling)
            fields["override_settings"] = override_settings.control("txt2img")
            fields.update(extra_options.build(engine, "txt2img"))  # Settings > Settings in UI
            with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
                fields["enable_hr"] = gr.Checkbox(label="Enable Hires. fix", value=False,
                                                  elem_id="txt2img_enable_hr")
                with gr.Row():
                    fields["hr_upscaler"] = gr.Dropdown(label="Upscaler", choices=hires.names(engine.upscalers.names()),
                                                        value="Latent", elem_id="txt2img_hr_upscaler")
                    fields["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                                               elem_id="txt2img_hires_steps")
                    fields["denoising_strength"] = gr.Slider(0.0, 1.0, value=0.7, step=0.01,
                                                             label="Denoising strength",
                                                             elem_id="txt2img_denoising_strength")
                with gr.Row():
                    fields["hr_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by",
                                                   elem_id="txt2img_hr_scale")
                    fields["hr_resize_x"] = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                                      elem_id="txt2img_hr_resize_x")
                    fields["hr_resize_y"] = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                                      elem_id="txt2img_hr_resize_y")
                # A1111 shows these two rows when its settings hires_fix_show_sampler / _prompts are on
                with gr.Row():
                    fields["hr_checkpoint_name"] = gr.Dropdown(
                        label="Hires checkpoint", choices=[SAME_CHECKPOINT, *refiner.checkpoint_titles(engine)],
                        value=SAME_CHECKPOINT, elem_id="hr_checkpoint", allow_custom_value=True)
                    hidden = engine.options.values.hide_samplers
                    fields["hr_sampler_name"] = gr.Dropdown(
                        label="Hires sampling method", choices=[SAME_SAMPLER, *samplers.visible_names(hidden)],
                        value=SAME_SAMPLER, elem_id="hr_sampler", allow_custom_value=bool(hidden))
                    fields["hr_scheduler"] = gr.Dropdown(
                        label="Hires schedule type",
                        choices=[SAME_SCHEDULER, *(label for _, label in samplers.SCHEDULE_TYPES)],
                        value=SAME_SCHEDULER, elem_id="hr_scheduler")
                with gr.Row():
                    fields["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, elem_id="hires_prompt",
                                                     placeholder="Prompt for the hires pass; empty: the same prompt")
                    fields["hr_negative_prompt"] = gr.Textbox(
                        label="Hires negative prompt", lines=2, elem_id="hires_neg_prompt",
                        placeholder="Negative prompt for the hires pass; empty: the same negative prompt")
                hires_info = gr.HTML("", elem_id="txt2img_hires_size")
            fields.update(refiner.build(engine, "txt2img"))
            fields.update(scripts.build(engine, "txt2img"))
        with gr.Column(scale=1, elem_id="txt2img_results_column"):
            panel = common.output_panel("txt2img")
    fields["prompt"], fields["negative_prompt"], fields["styles"] = row.prompt, row.negative_prompt, row.styles
    return Txt2ImgTab(row, fields, seed, panel, hires_info, cards)


def make_params(values: dict) -> GenerationParams:
    """A txt2img request from the tab's control values ({field name: value})."""
    v = refiner.request_values(values)
    v["tiling"] = bool(v.get("tiling"))  # what the box shows (it starts as the setting)
    v["override_settings"] = override_settings.for_job(v)
    for name in ("steps", "width", "height", "n_iter", "batch_size", "seed", "subseed", "seed_resize_from_w",
                 "seed_resize_from_h", "hr_second_pass_steps", "hr_resize_x", "hr_resize_y"):
        if v.get(name) is not None:
            v[name] = int(v[name])
    if v.get("seed") is None:
        v["seed"] = -1
    if not v.get("enable_hr"):
        for name in HIRES_FIELDS[1:]:
            v.pop(name, None)
    if v.get("scheduler") == "Automatic":
        v["scheduler"] = None
    v["styles"] = list(v.get("styles") or [])
    return GenerationParams(**v)


def upscale_params(values: dict, text: str, image) -> GenerationParams:
    """✨ (A1111's txt2img_upscale): the tab's request with Hires. fix on, for one image, from `image` as the first
    pass at the seed and variation seed its infotext `text` gives (-1 where it gives none)."""
    parsed = infotext.parse(text or "")
    v = {**values, "enable_hr": True, "batch_size": 1, "n_iter": 1}
    for name, key in (("seed", "Seed"), ("subseed", "Variation seed")):
        try:
            v[name] = int(parsed.get(key, -1))
        except ValueError:
            raise BadRequest(f"✨: the image's {key} {parsed[key]!r} is not a number") from None
    return make_params(v).model_copy(update={"firstpass_image": image})


def upscale(engine: Engine, values: dict, gallery, texts, seeds, index) -> Iterator[list]:
    """The ✨ button's job: the selected image through Hires. fix with the tab's settings (the chosen script is not
    run). The result takes its place in the gallery; the other images stay."""
    if not gallery:
        yield runner.error("✨ upscales the selected image of the gallery: generate one first.")
        return
    index = index if isinstance(index, int) and 0 <= index < len(gallery) else 0
    texts, seeds = list(texts or []), list(seeds or [])
    text = texts[index] if index < len(texts) else ""
    path = common.gallery_path(gallery[index])
    job = runner.submit(engine, "txt2img",
                        lambda: upscale_params(values, text, common.open_image(path, "RGB", engine)))
    if isinstance(job, BaseException):
        yield runner.error(runner.describe_error(job))
        return
    outcome = yield from runner.watch(engine, job, "✨ Hires. fix of the selected image", show_images=False)
    if isinstance(outcome, BaseException):
        yield runner.error(runner.describe_error(outcome))
        return
    log = runner.result_log(outcome)
    if not outcome.images:
        yield [gr.skip()] * 5 + ["", gr.Image(visible=False, value=None), log, *runner.buttons(False)]
        return
    items = [common.gallery_path(item) for item in gallery]
    items[index] = outcome.images[0]
    texts += [""] * (len(items) - len(texts))
    seeds += [-1] * (len(items) - len(seeds))
    texts[index], seeds[index] = outcome.infotexts[0], outcome.seeds[0]
    yield [progress.gallery_value(items, texts), texts, seeds, index, texts[index], "",
           gr.Image(visible=False, value=None), log, *runner.buttons(False)]


def hires_size(width, height, enabled, scale, resize_x, resize_y, old_rule: bool = False) -> str:
    """The line under the hires fix's sliders: from the first pass's size to the final one (with the setting
    use_old_hires_fix_width_height, `old_rule`, Width and Height are the final size)."""
    if not enabled:
        return ""
    try:
        params = GenerationParams(width=int(width), height=int(height), enable_hr=True, hr_scale=float(scale),
                                  hr_resize_x=int(resize_x), hr_resize_y=int(resize_y))
        if old_rule:
            params = hires.old_size_rule(params)
        w, h = hires.target_size(params)
    except Exception:  # a half-typed value: say nothing rather than something wrong
        return ""
    return f'<span class="sd-hint">from {params.width}x{params.height} to {w}x{h}</span>'


def wire(engine: Engine, tab: Txt2ImgTab) -> None:
    toprow.wire(engine, tab.toprow, tab.fields["steps"])
    extra_networks_ui.wire(engine, tab.cards, tab.toprow.prompt, tab.toprow.negative_prompt, tab.panel)
    components = {c: name for name, c in tab.fields.items()}

    def generate(data: dict):
        script, values = scripts.request({components[c]: value for c, value in data.items() if c in components})
        yield from runner.run(engine, "txt2img", lambda: make_params(values), script)

    event_outputs = runner.outputs(tab.panel, tab.toprow.generate, tab.toprow.interrupt, tab.toprow.skip)
    inputs = set(tab.fields.values())
    tab.toprow.generate.click(generate, inputs=inputs, outputs=event_outputs, api_name="txt2img",
                              concurrency_limit=None, show_progress="hidden")
    panel = tab.panel

    def upscale_selected(data: dict):
        _script, values = scripts.request({components[c]: value for c, value in data.items() if c in components})
        yield from upscale(engine, values, data[panel.gallery], data[panel.infotexts], data[panel.seeds],
                           data[panel.selected])

    panel.upscale.click(upscale_selected, inputs=inputs | {panel.gallery, panel.infotexts, panel.seeds,
                                                           panel.selected},
                        outputs=event_outputs, concurrency_limit=None, show_progress="hidden")
    size_inputs = [tab.fields[n] for n in ("width", "height", "enable_hr", "hr_scale", "hr_resize_x", "hr_resize_y")]
    # one event for all six, so that its answers come in the order of the changes (always_last), not in the order
    # six separate events happen to be answered
    def size_line(*values) -> str:
        return hires_size(*values, old_rule=engine.options.values.use_old_hires_fix_width_height)

    gr.on([c.change for c in size_inputs], size_line, inputs=size_inputs, outputs=tab.hires_info, queue=False,
          show_progress="hidden", trigger_mode="always_last")
