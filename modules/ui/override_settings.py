"""A1111's "Override settings" box on the txt2img and img2img tabs: the settings a pasted infotext gives that differ
from the current ones ("RNG: NV", "ENSD: 31337"), used as the override_settings of the tab's jobs while they are
listed. A paste fills it (and empties it when the infotext gives none); a user takes entries out with their x."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules import infotext
from modules.engine import Engine
from modules.ui import extra_options

# infotext key of each setting the box can hold. Clip skip is left to the top bar's slider, which a paste sets.
KEYS: dict[str, str] = {setting: key for setting, key, _ in infotext.SETTING_FIELDS
                        if setting != "CLIP_stop_at_last_layers"}
_BY_KEY: dict[str, tuple[str, type]] = {key: (setting, kind) for setting, key, kind in infotext.SETTING_FIELDS
                                        if setting in KEYS}


def control(tab: str) -> gr.Dropdown:
    return gr.Dropdown(label="Override settings", choices=[], value=[], multiselect=True, visible=False,
                       elem_id=f"{tab}_override_settings",
                       info="from the pasted parameters, where they differ from your settings: this tab's jobs use "
                            "them while they are listed")


def pasted(engine: Engine, settings: dict[str, Any]) -> list[str]:
    """The box's entries for an infotext's `settings` (as the paste reader gives them): those that differ from the
    current values and are valid here, as "KEY: value"."""
    overrides, _warnings = engine.paste.overrides({k: v for k, v in settings.items() if k in KEYS}, {})
    return [f"{KEYS[name]}: {value}" for name, value in overrides.items()]


def update(entries: list[str]) -> gr.Dropdown:
    """The box after a paste: exactly these entries, shown when there are any (A1111's)."""
    return gr.Dropdown(choices=entries, value=entries, visible=bool(entries))


def request_settings(entries: list[str] | None) -> dict[str, Any]:
    """The entries the box still lists, as a request's override_settings. An entry that is not "KEY: value" for a
    setting the box can hold is left out (the box only lists what a paste put there)."""
    out: dict[str, Any] = {}
    for entry in entries or []:
        key, sep, value = str(entry).partition(": ")
        if sep and key in _BY_KEY:
            setting, kind = _BY_KEY[key]
            try:
                out[setting] = infotext.convert(key, value, kind)
            except ValueError:
                continue
    return out


def for_job(values: dict[str, Any]) -> dict[str, Any]:
    """A tab's jobs' override_settings from its control values (the shown settings taken out of `values`): the
    box's entries over the tab's shown settings (Settings in UI), which A1111 applies where the job sets none."""
    return {**extra_options.take(values), **request_settings(values.get("override_settings"))}
