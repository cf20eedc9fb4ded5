"""img2img's Soft inpainting accordion (A1111's built-in extension): an enable box and its six sliders, shown with
the other inpainting options.

The controls are keyed like the tab's other fields: `soft_inpainting_enabled` and the SoftInpainting field
names, so a paste fills them by those names (see ui/paste.py) and `request_values` turns them into the request's
one `soft_inpainting`."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.generation.params import SoftInpainting

ENABLED = "soft_inpainting_enabled"


def build() -> dict[str, gr.components.Component]:
    """The accordion (closed, off), laid out where it is called; its controls by name."""
    controls: dict[str, gr.components.Component] = {}
    with gr.Accordion("Soft inpainting", open=False, elem_id="soft_inpainting"):
        controls[ENABLED] = gr.Checkbox(label="Soft inpainting", value=False, elem_id="soft_inpainting_enabled",
                                        info="blend the original and the inpainted content by the mask's opacity "
                                             "(a high Mask blur works best)")
        for name, info in SoftInpainting.model_fields.items():
            if name == "composite_mask_influence":
                gr.Markdown("Pixel composite: where the picture changed little, the original is laid back")
            low, high = SoftInpainting.bounds(name)
            controls[name] = gr.Slider(low, high, value=info.default, step=SoftInpainting.STEPS[name], label=info.title,
                                       info=info.description, elem_id=name)
    return controls


def request_values(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (the tab's controls by name) with the accordion's controls turned into `soft_inpainting`: its
    settings when the box is ticked, else None."""
    v = dict(values)
    enabled = bool(v.pop(ENABLED, False))
    numbers = {name: v.pop(name, None) for name in SoftInpainting.model_fields}
    given = {name: float(x) for name, x in numbers.items() if x is not None}
    v["soft_inpainting"] = SoftInpainting(**given) if enabled else None
    return v


def pasted(settings: SoftInpainting) -> dict[str, Any]:
    """The controls' values for settings read from an infotext (the box ticked)."""
    return {ENABLED: True, **settings.model_dump()}
