"""Filling the page's controls from an infotext: PNG Info's "Send to", the ↙ paste button, and
txt2img's "Send to img2img". The infotext is read with the same parser the API's `infotext` field
uses, so both fill the same fields with the same values."""

from __future__ import annotations

from typing import Any, Sequence

import gradio as gr

from modules import infotext
from modules.engine import Engine
from modules.generation import hires, samplers
from modules.ui import common, img2img, scripts, soft_inpainting


SEED_FIELDS = ("seed", "subseed", "subseed_strength", "seed_resize_from_w", "seed_resize_from_h")


def sent_with(values: dict[str, Any], picture_size: tuple[int, int] | None, to_inpaint: bool, from_gallery: bool,
              send_size: bool, send_seed: bool, max_side: int) -> None:
    """A picture sent to img2img with an infotext's `values` (changed in place), as A1111's send_size and
    send_seed: with send_size, img2img takes the picture's own size (in the sliders' steps, within the server's
    --max-image-side), which for a Hires. fix or upscaled picture is not the infotext's first-pass `Size`. A picture
    from a tab's results (`from_gallery`) leaves the size as it is without send_size, and for inpaint (A1111 sends
    no size there), and leaves the seed fields without send_seed. From PNG Info or History the infotext's own
    fields are pasted, as A1111 pastes them, unless send_size gives the picture's size."""
    if picture_size is not None and send_size and not to_inpaint:
        values["width"], values["height"] = common.slider_size(*picture_size, largest=max_side)
    elif from_gallery:
        values.pop("width", None), values.pop("height", None)
    if from_gallery and not send_seed:
        for name in SEED_FIELDS:
            values.pop(name, None)


def field_values(engine: Engine, text: str, txt2img: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """({GenerationParams field or page control: value}, {setting: value}) named by infotext `text`. Legacy
    sampler names with a schedule ("DPM++ 2M Karras") become sampler + schedule type, as A1111's paste does."""
    pasted = engine.paste.read(text, txt2img)
    values, settings = dict(pasted.values), dict(pasted.settings)
    if "sampler_name" in values:  # the page's dropdowns show the sampler and the schedule apart
        try:
            choice = samplers.resolve(values["sampler_name"], values.get("scheduler"))
            values["sampler_name"] = choice.spec.name
            values["scheduler"] = choice.schedule_label or "Automatic"
        except samplers.UnknownSampler:
            values.pop("sampler_name")  # keep the current choice rather than an unknown name
    if values.get("hr_sampler_name") not in hires.SAME:  # a legacy "DPM++ 2M Karras" as sampler + schedule here too
        schedule = values.get("hr_scheduler")
        try:
            choice = samplers.resolve(values["hr_sampler_name"], None if schedule in hires.SAME else schedule)
            values["hr_sampler_name"] = choice.spec.name
            if schedule in hires.SAME and choice.schedule_label:
                values["hr_scheduler"] = choice.schedule_label
        except samplers.UnknownSampler:
            values.pop("hr_sampler_name")
    if pasted.checkpoint and not engine.options.values.disable_weights_auto_swap:  # A1111's default: not swapped
        settings["sd_model_checkpoint"] = pasted.checkpoint
    # the Refiner accordion is on exactly when the infotext names a refiner (A1111: `'Refiner' in d`); its
    # dropdown shows the checkpoint here, or the name as given when there is none
    values["enable_refiner"] = "refiner_checkpoint" in values
    # the Tiling box is ticked exactly when the infotext says `Tiling: True` (A1111 writes nothing otherwise)
    values.setdefault("tiling", False)
    # Soft inpainting's accordion: filled when the infotext has its keys, left as it is when not (as A1111)
    soft = values.pop("soft_inpainting", None)
    if soft is not None:
        values.update(soft_inpainting.pasted(soft))
    values.update(scripts.pasted_values(engine, text, "txt2img" if txt2img else "img2img"))  # a plot's grid
    if not txt2img:
        values.update(inpaint_values(text, engine.options.values.infotext_skip_pasting))
    return values, settings


def inpaint_values(text: str, skip: Sequence[str] = ()) -> dict[str, Any]:
    """img2img's inpainting options an infotext gives (A1111's paste fields): Mask blur when it is written, and
    Mask mode, Masked content, Inpaint area and Masked area padding, whose absence means A1111's defaults. A
    value the page has no choice for leaves its control as it is."""
    parsed = infotext.parse_with_defaults(text or "", skip=skip)  # (infotext_skip_pasting: keys left out)
    out: dict[str, Any] = {}
    for name, key in (("mask_blur", "Mask blur"), ("inpaint_full_res_padding", "Masked area padding")):
        try:
            out[name] = int(parsed[key])
        except (KeyError, TypeError, ValueError):
            pass
    for name, key, choices in (("inpainting_mask_invert", "Mask mode", img2img.MASK_MODES),
                               ("inpainting_fill", "Masked content", img2img.MASKED_CONTENT),
                               ("inpaint_full_res", "Inpaint area", img2img.INPAINT_AREAS)):
        if parsed.get(key) in choices:
            out[name] = parsed[key]
    return out


def updates(fields: dict[str, gr.components.Component], values: dict[str, Any]) -> list:
    """One value per component of `fields` (in its order): the infotext's, or unchanged."""
    return [values[name] if name in values else gr.skip() for name in fields]
