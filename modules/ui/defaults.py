"""A1111's ui-config.json: the page's own defaults. Each control of the txt2img, img2img, Extras and Checkpoint Merger
tabs is known by `TAB/LABEL/FIELD` ("txt2img/Sampling steps/value", "img2img/Denoising strength/maximum"): its
starting value, a slider's range and step, and whether it is shown. The file is read when the page is built (a
file from A1111 works, as far as the labels are the same). Settings > Defaults shows which controls the user has
changed since the page started ("View changes") and writes those into the file ("Apply"); new defaults apply when
the server starts again, as in A1111. Unlike A1111, the file is not filled with every control's own default: a
default that follows the model (Width and Height: SDXL 1024) would then be frozen at the first model's.

A value that a control could not take (a choice it does not have, a number out of its range, the wrong type) is
left out and said in the log; the control keeps its own."""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from modules import fileio

log = logging.getLogger(__name__)

FILE_NAME = "ui-config.json"


def _choice_values(component) -> list:
    return [c[1] if isinstance(c, (tuple, list)) else c for c in (getattr(component, "choices", None) or [])]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class UiDefaults:
    """The defaults of the page's controls, read from and written to ui-config.json."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.on_disk: dict[str, Any] = {}
        self.readable = True
        try:
            self.on_disk = self._read()
        except (OSError, ValueError) as e:
            self.readable = False  # never overwritten: the user's file may be fixable
            log.warning("%s was not read (%s); the page starts with its own defaults and the file is left as it "
                        "is", self.path, e)
        self.values: dict[str, Any] = {}  # every known key: its default (the file's where it had a usable one)
        self.mapping: dict[str, Any] = {}  # "TAB/LABEL/value" -> its control, in page order
        self.refused: list[str] = []
        # keys whose default follows something else (Width and Height: the model's size): a page value equal to
        # what it follows now is that, not a choice of the user's
        self.follows: dict[str, Callable[[], Any]] = {}

    def _read(self, holds: str = "does not hold") -> dict[str, Any]:
        """The file's object ({} when there is no file); ValueError when it is not JSON, or `holds` no object."""
        data = fileio.read_json(self.path)
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"{self.path.name} {holds} a JSON object")
        return data or {}

    # --- building ----------------------------------------------------------------------------------
    def add_block(self, block, path: str, skip: frozenset[str] = frozenset()) -> None:
        """Apply the file to every labelled control inside `block` (a tab), known under `path`; containers whose
        elem_id is in `skip` (cards, editors, results) are left out with what they hold."""
        if getattr(block, "elem_id", None) in skip:
            return
        children = getattr(block, "children", None)
        if children is not None:
            for child in children:
                self.add_block(child, path, skip)
            return
        label = getattr(block, "label", None)
        if label and getattr(block, "visible", True) is not False and getattr(block, "interactive", None) is not False:
            self._add_control(f"{path}/{label}", block)

    def _add_control(self, key: str, c) -> None:
        kind = type(c)
        if kind is gr.Slider:
            # the range first: a saved value is checked against the saved range
            for name in ("minimum", "maximum", "step"):
                self._field(key, c, name, _number)
            self._field(key, c, "value", lambda v: _number(v) and c.minimum <= v <= c.maximum)
        elif kind is gr.Number:
            self._field(key, c, "value", lambda v: _number(v) and (c.minimum is None or v >= c.minimum)
                        and (c.maximum is None or v <= c.maximum))
        elif kind is gr.Checkbox:
            self._field(key, c, "value", lambda v: isinstance(v, bool))
        elif kind is gr.Textbox:
            self._field(key, c, "value", lambda v: isinstance(v, str))
        elif kind in (gr.Dropdown, gr.Radio):
            def choice(v) -> bool:
                values = _choice_values(c)
                if getattr(c, "multiselect", False):
                    return isinstance(v, list) and all(x in values for x in v)
                return v in values or (getattr(c, "allow_custom_value", False) and isinstance(v, str))
            self._field(key, c, "value", choice)
        else:
            return
        self._field(key, c, "visible", lambda v: isinstance(v, bool))

    def _field(self, key: str, component, name: str, usable: Callable[[Any], bool]) -> None:
        full = f"{key}/{name}"
        saved = self.on_disk.get(full)
        if saved is not None and usable(saved):
            setattr(component, name, saved)
        elif saved is not None:
            self.refused.append(full)
            log.warning("%s: %s = %r is not a value that control takes; it keeps %r", self.path.name, full, saved,
                        getattr(component, name))
        self.values.setdefault(full, getattr(component, name))
        if name == "value":
            self.mapping.setdefault(full, component)  # a label used twice in a tab: the first control is written

    # --- Settings > Defaults ----------------------------------------------------------------------
    def _current(self, values: tuple) -> dict[str, Any]:
        out = {}
        for (key, component), value in zip(self.mapping.items(), values):
            if getattr(component, "type", None) == "index" and isinstance(value, int):  # a choice by position
                choices = _choice_values(component)
                value = choices[value] if 0 <= value < len(choices) else None
            if value is not None:
                out[key] = value
        return out

    def changes(self, values: tuple) -> list[tuple[str, Any, Any]]:
        """(key, the default the page started with, the value on the page) for each control the user changed."""
        return [(key, self.values.get(key), new) for key, new in self._current(values).items()
                if new != self.values.get(key) and not (self.values.get(key) is None and new in ("", []))
                and not (key in self.follows and new == self.follows[key]())]

    def view(self, *values) -> str:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(repr(old))}</td>"
                       f"<td>{html.escape(repr(new))}</td></tr>" for k, old, new in self.changes(values))
        body = rows or '<tr><td colspan="3">No changes</td></tr>'
        return (f'<table class="sd-file-facts"><thead><tr><th>Path</th><th>Old value</th><th>New value</th></tr>'
                f"</thead><tbody>{body}</tbody></table>")

    def apply(self, *values) -> str:
        if not self.readable:
            return (f'<div class="sd-error">{html.escape(self.path.name)} could not be read when the server started; '
                    "fix or remove it, then restart, before defaults are written into it.</div>")
        found = self.changes(values)
        if not found:
            return '<div class="sd-note">No changes.</div>'
        try:
            on_file = self._read("no longer holds")  # keys of controls not on this page stay
            on_file.update({key: new for key, _old, new in found})
            fileio.atomic_write_json(self.path, on_file)
        except (OSError, ValueError) as e:
            return f'<div class="sd-error">Not written: {html.escape(str(e))}</div>'
        self.values.update({key: new for key, _old, new in found})  # the defaults from now on
        return (f'<div class="sd-note">Wrote {len(found)} change{"s" if len(found) != 1 else ""} to '
                f"{html.escape(str(self.path))}; they apply when the server starts again.</div>")

    def wire(self, view: gr.Button, apply: gr.Button, review: gr.HTML) -> None:
        inputs = list(self.mapping.values())
        view.click(self.view, inputs=inputs, outputs=review, queue=False)
        apply.click(self.apply, inputs=inputs, outputs=review, queue=False)


def skipped(path: str) -> frozenset[str]:
    """What holds no defaults in a tab: the extra-network cards and their editor, the style editor, the results, and
    the settings shown there (Settings in UI: they start as the settings are)."""
    return frozenset({f"{path}_extra_networks", f"{path}_styles_dialog", f"{path}_results", f"extra_options_{path}"})
