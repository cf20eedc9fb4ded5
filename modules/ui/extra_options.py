"""A1111's "Settings in UI" (its built-in extra-options-section): the settings Settings > Settings in UI names are
shown on the txt2img / img2img tab as well. What they show there is the tab's own: sent with each of its jobs as
override_settings (an entry of the Override settings box wins, as in A1111), filled by a paste where the infotext
gives the setting, and set to the current settings when the page loads. Nothing is saved from them."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from modules.engine import Engine
from modules.settings import Settings
from modules.ui import settings_tab

# The tab's field name of setting NAME (beside the request's own fields)
PREFIX = "setting:"


def names(engine: Engine, tab: str) -> list[str]:
    """The settings shown on `tab`, in their order: those this app has, but the top bar's (always there)."""
    values = engine.options.values
    chosen = values.extra_options_txt2img if tab == "txt2img" else values.extra_options_img2img
    return list(dict.fromkeys(n for n in chosen if n in Settings.model_fields and n not in settings_tab.TOP_BAR))


def build(engine: Engine, tab: str) -> dict[str, gr.components.Component]:
    """The controls, made where the caller is, as {PREFIX + name: control}; none when no setting is chosen."""
    shown = names(engine, tab)
    if not shown:
        return {}
    values, choices = engine.options.values, settings_tab.choices_for(engine)
    columns = values.extra_options_cols
    out: dict[str, gr.components.Component] = {}
    holder = gr.Accordion("Options", open=False, elem_id=f"extra_options_{tab}") if values.extra_options_accordion \
        else gr.Group(elem_id=f"extra_options_{tab}")
    with holder:
        for row in range(math.ceil(len(shown) / columns)):
            with gr.Row():
                for name in shown[row * columns:(row + 1) * columns]:
                    with gr.Column(min_width=160):
                        control = settings_tab.control(name, Settings.model_fields[name], getattr(values, name),
                                                       choices.get(name))
                        control.elem_id = f"{tab}_setting_{name}"  # not the Settings tab's own control's id
                        control.interactive = False  # until the page load has shown the current value (`current`)
                    out[PREFIX + name] = control
    return out


def current(engine: Engine, keys: list[str]) -> list:
    """The controls of these field names (PREFIX + setting) for a page load: the settings as they are now (the page
    was built at the start), made usable (so that nothing typed before is replaced)."""
    values = engine.options.values
    return [gr.update(value=getattr(values, key.removeprefix(PREFIX)), interactive=True) for key in keys]


def take(values: dict[str, Any]) -> dict[str, Any]:
    """The shown settings' values, taken out of a tab's `values` ({field: value}), as override_settings; a number
    box left empty is left out."""
    out = {}
    for key in [k for k in values if k.startswith(PREFIX)]:
        value = values.pop(key)
        if value is not None:
            name = key.removeprefix(PREFIX)
            out[name] = settings_tab.typed(name, value)
    return out


def pasted(settings: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """What a paste puts in the shown settings: the values an infotext gives for them (its `settings`, as the paste
    reader reads them), for those among `fields`."""
    return {PREFIX + name: value for name, value in settings.items() if PREFIX + name in fields}
