"""The Settings tab, drawn from the Settings model: one control per option, grouped in sections.

A control's kind follows the option's type (checkbox, choice, number with its bounds, text) and its
label is the option's description, so a new option appears here by being added to the model. Apply
validates every change together, writes config.json atomically, and takes effect at once (options
are read per job).
"""

from __future__ import annotations

import html
import re
import typing
from dataclasses import dataclass

import gradio as gr
from annotated_types import Ge, Gt, Le, Lt
from pydantic.fields import FieldInfo

from modules import infotext, settings as settings_module
from modules.engine import BadRequest, Engine
from modules.generation import samplers
from modules.settings import Settings
from modules.ui import common

# Shown in the top bar instead (as A1111's quicksettings).
TOP_BAR = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")
# Choices A1111 shows as radio buttons rather than a dropdown.
RADIOS = ("hires_fix_refiner_pass",)


@dataclass
class SettingsTab:
    controls: dict[str, gr.components.Component]
    apply: gr.Button
    result: gr.HTML
    defaults_view: gr.Button  # Defaults: the page's values that differ from ui-config.json
    defaults_apply: gr.Button  # Defaults: write them into it
    defaults_review: gr.HTML
    applied: object  # the event of Apply settings (later steps chain on it with .then)


def _bounds(info: FieldInfo) -> tuple[float | None, float | None]:
    low = high = None
    for m in info.metadata:
        if isinstance(m, (Ge, Gt)):
            low = m.ge if isinstance(m, Ge) else m.gt
        elif isinstance(m, (Le, Lt)):
            high = m.le if isinstance(m, Le) else m.lt
    return low, high


def control(name: str, info: FieldInfo, value, choices: list[str] | None = None) -> gr.components.Component:
    """The page's control for setting `name`; `choices`: a text setting picked from a list (a file name), shown as
    a dropdown that still takes a name not listed (a file added later)."""
    label = info.description or name
    elem_id = f"setting_{name}"
    kind = info.annotation
    if choices is not None and typing.get_origin(kind) is list:  # several of the listed names (hide_samplers)
        # (a name only A1111 has, such as its Train tab, is kept as config.json holds it)
        return gr.Dropdown(choices=choices, value=list(value or []), multiselect=True, allow_custom_value=True,
                           label=label, elem_id=elem_id)
    if choices is not None:
        return gr.Dropdown(choices=choices, value=value, label=label, elem_id=elem_id, allow_custom_value=True)
    if kind == list[str]:  # names of settings (quicksettings_list): any, also one only A1111 has
        return gr.Dropdown(choices=sorted(Settings.model_fields, key=str.casefold), value=list(value or []),
                           multiselect=True, allow_custom_value=True, label=label, elem_id=elem_id)
    if typing.get_origin(kind) is list and typing.get_origin(typing.get_args(kind)[0]) is typing.Literal:
        return gr.Dropdown(choices=list(typing.get_args(typing.get_args(kind)[0])), value=list(value or []),
                           multiselect=True, label=label, elem_id=elem_id)
    if typing.get_origin(kind) is typing.Literal:
        if name in RADIOS:
            return gr.Radio(choices=list(typing.get_args(kind)), value=value, label=label, elem_id=elem_id)
        return gr.Dropdown(choices=list(typing.get_args(kind)), value=value, label=label, elem_id=elem_id)
    if kind is bool:
        return gr.Checkbox(value=value, label=label, elem_id=elem_id)
    if kind in (int, float):
        low, high = _bounds(info)
        step = 1 if kind is int else None
        if low is not None and high is not None and high - low <= 1000:
            return gr.Slider(low, high, value=value, step=step or (0.01 if high - low <= 2 else 0.1), label=label,
                             elem_id=elem_id)
        return gr.Number(value=value, label=label, precision=0 if kind is int else None, minimum=low, maximum=high,
                         elem_id=elem_id)
    return gr.Textbox(value="" if value is None else str(value), label=label, elem_id=elem_id, lines=1)


def quick_names(values: Settings) -> list[str]:
    """The settings quicksettings_list puts into the top bar besides TOP_BAR's, in its order (names this app does
    not have, such as A1111's others, are left out)."""
    out: list[str] = []
    for name in values.quicksettings_list:
        if name in Settings.model_fields and name not in TOP_BAR and name not in out:
            out.append(name)
    return out


def sections(top: typing.Iterable[str] = ()) -> list[tuple[str, list[str]]]:
    """(section title, option names) in display order, without those shown in the top bar (TOP_BAR and `top`);
    options no section names go under "Other"."""
    named = getattr(settings_module, "SECTIONS", {})
    listed = {n for names in named.values() for n in names}
    hidden = {*TOP_BAR, *top}
    out = [(title, [n for n in names if n in Settings.model_fields and n not in hidden])
           for title, names in named.items()]
    rest = [n for n in Settings.model_fields if n not in listed and n not in hidden]
    if rest:
        out.append(("Other", rest))
    return [(title, names) for title, names in out if names]


def section_elem_id(title: str) -> str:
    """The elem_id of a Settings section's tab (its panel; Gradio names the button `<elem_id>-button`)."""
    return "settings_" + "".join(ch if ch.isalnum() else "_" for ch in title.lower())


def choices_for(engine: Engine) -> dict[str, list[str]]:
    """The listed choices of the text settings picked from what is installed."""
    return {"sd_hypernetwork": ["None", *(i.name for i in engine.networks.hypernetworks())],
            "upscaler_for_img2img": engine.upscalers.names(), "hide_samplers": samplers.visible_names(),
            "hidden_tabs": [name for name in common.TAB_IDS if name != "Settings"],
            "infotext_skip_pasting": infotext.pasted_keys(),
            "ui_tab_order": list(common.TAB_IDS)}


def typed(name: str, value):
    """A control's value as the setting takes it (a slider gives an int setting a float)."""
    return int(value) if Settings.model_fields[name].annotation is int and value is not None else value


def quick_controls(engine: Engine) -> dict[str, gr.components.Component]:
    """The controls of `quick_names`, made where the caller is (the top bar's row)."""
    values, choices = engine.options.values, choices_for(engine)
    controls = {}
    for name in quick_names(values):
        controls[name] = control(name, Settings.model_fields[name], getattr(values, name), choices.get(name))
        # usable once the page load has shown the current value (quick_values), so no typing is replaced by it
        controls[name].scale, controls[name].min_width, controls[name].interactive = 2, 200, False
        controls[name].label = short_label(name, Settings.model_fields[name])
    return controls


def quick_values(engine: Engine, controls: dict[str, gr.components.Component]) -> list:
    """The quick settings' current values, for a page load (the page was built with those of the server's start),
    and the controls made usable."""
    values = engine.options.values
    return [gr.update(value=getattr(values, name), interactive=True) for name in controls]


def short_label(name: str, info: FieldInfo) -> str:
    """A setting's name as a top-bar label: its description up to the first colon or bracket ("Token merging
    ratio", "ENSD"), or the name when that is still long."""
    text = re.split(r":|\s\(", info.description or name, maxsplit=1)[0].strip()
    return text if 0 < len(text) <= 40 else name


def wire_quick(engine: Engine, controls: dict[str, gr.components.Component], status: gr.HTML, error_html) -> list:
    """A quick setting is applied when the user changes it (a text box or number once left or submitted): saved
    as Apply settings saves it; what is wrong goes to `status` through `error_html`. Returns the
    events, for steps to chain on."""
    events = []
    for name, component in controls.items():
        def apply(value, name=name):
            try:
                engine.set_options({name: typed(name, value)})
                return ""
            except BadRequest as e:
                return error_html(f"{name}: {e}")

        if isinstance(component, (gr.Textbox, gr.Number)):
            triggers = [component.submit, component.blur]
        else:  # the user's changes only: the page load's refresh (quick_values) writes nothing
            triggers = [component.input]
        events += [trigger(apply, inputs=component, outputs=status, queue=False, show_progress="hidden")
                   for trigger in triggers]
    return events


def build(engine: Engine) -> SettingsTab:
    values = engine.options.values
    choices = choices_for(engine)
    controls: dict[str, gr.components.Component] = {}
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=0, min_width=200)
        result = gr.HTML(elem_id="settings_result")
    with gr.Accordion("Defaults (ui-config.json)", open=False, elem_id="settings_defaults"):
        gr.HTML(f"<p>The default values of the controls on the other tabs (txt2img, img2img, Extras, Checkpoint "
                f"Merger): change them there, press <b>View changes</b> to see what differs from the values the "
                f"page started with, then <b>Apply</b> to write them to "
                f"{html.escape(str(engine.paths.ui_config_file))}. New defaults apply after the server "
                f"restarts. The file uses A1111's keys (TAB/LABEL/value, a slider's minimum, maximum and "
                f"step), so one copied from A1111 works too.</p>")
        with gr.Row():
            defaults_view = gr.Button("View changes", elem_id="ui_defaults_view")
            defaults_apply = gr.Button("Apply", variant="primary", elem_id="ui_defaults_apply")
        defaults_review = gr.HTML("", elem_id="ui_defaults_review")
    with gr.Tabs(elem_id="settings", overflow_behavior="wrap"):  # every section in sight, as A1111 lists them
        for title, names in sections(quick_names(values)):
            with gr.Tab(title, elem_id=section_elem_id(title)):
                for name in names:
                    controls[name] = control(name, Settings.model_fields[name], getattr(values, name),
                                             choices.get(name))

    names = list(controls)

    def apply_settings(*new_values):
        current = engine.options.values
        changes = {}
        for name, value in zip(names, new_values):
            value = typed(name, value)
            if value != getattr(current, name):
                changes[name] = value
        if not changes:
            return '<div class="sd-note">Nothing changed.</div>'
        try:
            engine.set_options(changes)
        except BadRequest as e:
            return f'<div class="sd-error"><b>Not applied:</b> {html.escape(str(e))}</div>'
        listed = ", ".join(changes)
        return f'<div class="sd-note">{len(changes)} setting{"s" if len(changes) != 1 else ""} changed: ' \
               f'{html.escape(listed)}. Saved to {html.escape(str(engine.options.path))}.</div>'

    applied = apply.click(apply_settings, inputs=[controls[n] for n in names], outputs=result)
    return SettingsTab(controls, apply, result, defaults_view, defaults_apply, defaults_review, applied)
