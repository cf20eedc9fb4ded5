"""Filling the page's controls from an infotext: PNG Info's "Send to", the ↙ paste button, and
txt2img's "Send to img2img". The infotext is read with the same parser the API's `infotext` field
uses, so both fill the same fields with the same values."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules import infotext
from modules.engine import Engine
from modules.generation import samplers


def field_values(engine: Engine, text: str, txt2img: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """({GenerationParams field: value}, {setting: value}) named by infotext `text`. Legacy sampler names
    with a schedule ("DPM++ 2M Karras") become sampler + schedule type, as A1111's paste does."""
    parsed = infotext.parse_with_defaults(text or "")
    parsed["Prompt"] = engine.networks.rename_by_hash(parsed.get("Prompt", ""), parsed.get("Lora hashes"))
    values = infotext.request_values(parsed, infotext.REQUEST_FIELDS)
    settings = infotext.request_values(parsed, infotext.SETTING_FIELDS)
    if "sampler_name" in values:
        try:
            choice = samplers.resolve(values["sampler_name"], values.get("scheduler"))
            values["sampler_name"] = choice.spec.name
            values["scheduler"] = choice.schedule_label or "Automatic"
        except samplers.UnknownSampler:
            values.pop("sampler_name")  # keep the current choice rather than an unknown name
    if txt2img:
        values["enable_hr"] = "Denoising strength" in parsed  # A1111: a denoising strength means hires fix
    model = parsed.get("Model hash") or parsed.get("Model")
    if model:
        found = engine.checkpoints.find(str(model)) or engine.checkpoints.find(str(parsed.get("Model")))
        if found is not None:
            settings["sd_model_checkpoint"] = found.title
    return values, settings


def updates(fields: dict[str, gr.components.Component], values: dict[str, Any]) -> list:
    """One value per component of `fields` (in its order): the infotext's, or unchanged."""
    return [values[name] if name in values else gr.skip() for name in fields]
