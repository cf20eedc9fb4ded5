"""The Refiner accordion of txt2img and img2img (A1111's scripts/refiner.py): an enable checkbox, the checkpoint
sampling switches to (any checkpoint, titled as in the top bar's dropdown) and the fraction of the denoising
at which it switches.

Its controls are keyed like the tabs' other fields: `refiner_checkpoint` and `refiner_switch_at` are
GenerationParams fields, `enable_refiner` is the page's own and only decides whether they are sent, so a paste
fills all three by these names (see ui/paste.py)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.engine import Engine

SWITCH_AT = 0.8  # A1111's default
NO_REFINER = (None, "", "None")  # A1111: a checkpoint that is one of these means no refiner


def checkpoint_titles(engine: Engine) -> list[str]:
    """The choices: the checkpoints as the top bar lists them."""
    return [i.title for i in engine.checkpoints.list()]


def build(engine: Engine, tab: str) -> dict[str, gr.components.Component]:
    """The accordion (closed, off), laid out where it is called; its controls by field name."""
    with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_refiner"):
        enable = gr.Checkbox(label="Enable Refiner", value=False, elem_id=f"{tab}_enable_refiner")
        with gr.Row():
            checkpoint = gr.Dropdown(label="Checkpoint", choices=checkpoint_titles(engine), value=None,
                                     elem_id=f"{tab}_refiner_checkpoint", scale=4, min_width=200,
                                     # a pasted name that is not here is shown as given; a title gains its hash
                                     allow_custom_value=True,
                                     info="switch to another model in the middle of generation")
            refresh = gr.Button("🔄", elem_id=f"{tab}_refiner_checkpoint_refresh", scale=0, min_width=40, size="sm",
                                elem_classes="sd-tool")
        switch_at = gr.Slider(0.01, 1.0, value=SWITCH_AT, step=0.01, label="Switch at",
                              elem_id=f"{tab}_refiner_switch_at",
                              info="fraction of sampling steps when the switch to the refiner happens; 1 = never")

    def refresh_choices(current):
        engine.checkpoints.refresh()
        return gr.Dropdown(choices=checkpoint_titles(engine), value=current)

    refresh.click(refresh_choices, inputs=checkpoint, outputs=checkpoint, queue=False)
    return {"enable_refiner": enable, "refiner_checkpoint": checkpoint, "refiner_switch_at": switch_at}


def request_values(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (the tab's controls by name) with the accordion's three turned into the request's two: the
    checkpoint and the switch point when the refiner is enabled and a checkpoint chosen, else no refiner
    (A1111's setup: `if not enable_refiner or refiner_checkpoint in (None, "", "None")`)."""
    v = dict(values)
    enabled = bool(v.pop("enable_refiner", False))
    checkpoint = v.pop("refiner_checkpoint", None)
    switch_at = v.pop("refiner_switch_at", None)
    checkpoint = checkpoint.strip() if isinstance(checkpoint, str) else checkpoint
    if not enabled or checkpoint in NO_REFINER:
        v["refiner_checkpoint"], v["refiner_switch_at"] = None, None
    else:
        v["refiner_checkpoint"] = checkpoint
        v["refiner_switch_at"] = float(switch_at) if switch_at is not None else SWITCH_AT
    return v
