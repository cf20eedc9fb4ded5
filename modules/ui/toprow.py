"""The row above txt2img and img2img: prompt boxes with token counters, Generate / Interrupt / Skip,
and the tool buttons (paste parameters, clear prompt, styles), laid out as in A1111."""

from __future__ import annotations

import csv
import html
from dataclasses import dataclass

import gradio as gr

from modules import prompt_syntax, styles
from modules.engine import Engine
from modules.generation.conditioning import token_count
from modules.ui.progress import note_html

PROMPT_HINT = ("Prompt\n(Ctrl+Enter to generate, Alt+Enter to skip, Esc to interrupt; ↙ reads the parameters "
               "of a pasted infotext or of the last image)")


@dataclass
class Toprow:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    token_counter: gr.HTML
    negative_token_counter: gr.HTML
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    paste: gr.Button
    clear: gr.Button
    apply_styles: gr.Button
    styles: gr.Dropdown
    editor: StyleEditor


@dataclass
class StyleEditor:
    """A1111's style editor (🖌️): pick a style or type a new name, edit its two texts, Save or Delete."""
    open: gr.Button
    dialog: gr.Column
    selection: gr.Dropdown
    copy: gr.Button  # the main prompts into the style's
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    save: gr.Button
    delete: gr.Button
    close: gr.Button
    status: gr.HTML


def counter_html(engine: Engine, text: str, steps: float | None) -> str:
    text = text or ""
    if len(text) > prompt_syntax.MAX_PROMPT_CHARS:  # refused when generating; not tokenized step by step
        return (f'<span class="sd-token-counter sd-token-over" title="{len(text)} characters; at most '
                f'{prompt_syntax.MAX_PROMPT_CHARS}">too long</span>')
    steps = max(1, min(int(steps or 20), engine.limits.max_steps))  # the schedule has a text per step
    tokens, target = token_count(engine.tokenizer, text, steps, engine.options.values.comma_padding_backtrack)
    over = " sd-token-over" if tokens > target else ""
    problems = prompt_syntax.bracket_problems(text)
    if problems:  # as A1111's prompt bracket checker: the counter turns red and says why when pointed at
        title = html.escape("Imbalanced brackets: " + "; ".join(problems), quote=True)
        return f'<span class="sd-token-counter sd-token-brackets{over}" title="{title}">{tokens}/{target}</span>'
    return f'<span class="sd-token-counter{over}">{tokens}/{target}</span>'


def build(engine: Engine, tab: str) -> Toprow:
    """The prompt row of tab `tab` ("txt2img" or "img2img"), with A1111's element ids."""
    with gr.Row(elem_id=f"{tab}_toprow", elem_classes="sd-toprow"):
        with gr.Column(scale=6, elem_classes="sd-prompts"):
            with gr.Row(elem_classes="sd-prompt-row"):
                prompt = gr.Textbox(label="Prompt", show_label=False, lines=3, max_lines=12,
                                    placeholder=PROMPT_HINT, elem_id=f"{tab}_prompt", scale=10)
                token_counter = gr.HTML(counter_html(engine, "", 20), elem_id=f"{tab}_token_counter",
                                        elem_classes="sd-token-box", padding=False, scale=0, min_width=60)
            with gr.Row(elem_classes="sd-prompt-row"):
                negative = gr.Textbox(label="Negative prompt", show_label=False, lines=2, max_lines=12,
                                      placeholder="Negative prompt (press Ctrl+Enter to generate)",
                                      elem_id=f"{tab}_neg_prompt", scale=10)
                negative_counter = gr.HTML(counter_html(engine, "", 20), elem_id=f"{tab}_negative_token_counter",
                                           elem_classes="sd-token-box", padding=False, scale=0, min_width=60)
        with gr.Column(scale=1, min_width=200, elem_classes="sd-actions"):
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate", size="lg")
                interrupt = gr.Button("Interrupt", variant="stop", elem_id=f"{tab}_interrupt", visible=False)
                skip = gr.Button("Skip", elem_id=f"{tab}_skip", visible=False)
            with gr.Row(elem_classes="sd-tools"):
                paste = gr.Button("↙", elem_id=f"{tab}_paste", min_width=36, size="sm",
                                  elem_classes="sd-tool")
                clear = gr.Button("🗑", elem_id=f"{tab}_clear_prompt", min_width=36, size="sm",
                                  elem_classes="sd-tool")
                apply_styles = gr.Button("📋", elem_id=f"{tab}_style_apply", min_width=36, size="sm",
                                         elem_classes="sd-tool")
                edit_styles = gr.Button("🖌️", elem_id=f"{tab}_styles_edit_button", min_width=36, size="sm",
                                        elem_classes="sd-tool")
            # a name that is no longer in styles.csv (deleted in the editor or the file) stays selectable: the job
            # then says it was not found, where a strict list would refuse Generate
            styles = gr.Dropdown(label="Styles", choices=list(engine.styles.all()), value=[], multiselect=True,
                                 elem_id=f"{tab}_styles", allow_custom_value=True)
    editor = _style_editor(engine, tab, edit_styles)
    return Toprow(prompt, negative, token_counter, negative_counter, generate, interrupt, skip, paste, clear,
                  apply_styles, styles, editor)


def _style_editor(engine: Engine, tab: str, open_button: gr.Button) -> StyleEditor:
    with gr.Column(visible=False, variant="panel", elem_id=f"{tab}_styles_dialog") as dialog:
        with gr.Row(equal_height=True):
            selection = gr.Dropdown(label="Styles", choices=list(engine.styles.all()), value=None,
                                    allow_custom_value=True, elem_id=f"{tab}_styles_edit_select", scale=10,
                                    info="Pick a style to edit, or type a new name. Use {prompt} in a style's text "
                                         "and the prompt takes its place; otherwise the style's text is added at "
                                         "the end of the prompt.")
            copy = gr.Button("📝 Copy prompt", elem_id=f"{tab}_style_copy", size="sm", scale=0, min_width=140)
        prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{tab}_edit_style_prompt")
        negative = gr.Textbox(label="Negative prompt", lines=3, elem_id=f"{tab}_edit_style_neg_prompt")
        with gr.Row():
            save = gr.Button("Save", variant="primary", elem_id=f"{tab}_edit_style_save", visible=False)
            delete = gr.Button("Delete", variant="stop", elem_id=f"{tab}_edit_style_delete", visible=False)
            close = gr.Button("Close", elem_id=f"{tab}_edit_style_close")
        status = gr.HTML("", elem_id=f"{tab}_edit_style_status")
    return StyleEditor(open_button, dialog, selection, copy, prompt, negative, save, delete, close, status)


def interrupt(engine: Engine) -> None:
    """Interrupt, as A1111's button: with "Don't Interrupt in the middle" (interrupt_after_current) a job making
    more than one image first finishes the one it is on and stops; a second click, or a job of one image, is
    interrupted at once."""
    if engine.options.values.interrupt_after_current and engine.queue.stop_after_current():
        gr.Info("Generation will stop after finishing this image; click Interrupt again to stop at once.")
    else:
        engine.queue.interrupt()


def wire(engine: Engine, row: Toprow, steps: gr.Slider) -> None:
    """The row's own events: token counters, clear, apply styles, Interrupt and Skip."""
    def count(text, n):
        return counter_html(engine, text, n)

    for box, counter in ((row.prompt, row.token_counter), (row.negative_prompt, row.negative_token_counter)):
        # one event per counter for both triggers: always_last orders its answers; two events' could cross
        gr.on([box.change, steps.change], count, inputs=[box, steps], outputs=counter, trigger_mode="always_last",
              queue=False, show_progress="hidden")

    row.clear.click(lambda: ("", ""), outputs=[row.prompt, row.negative_prompt], queue=False)

    def apply_styles(prompt, negative, names):
        found, _missing = engine.styles.resolve(names or [])
        try:
            prompt, negative = styles.apply(found, prompt or "", negative or "", prompt_syntax.MAX_PROMPT_CHARS)
        except styles.TooLong as e:
            gr.Warning(str(e))
            return gr.skip(), gr.skip(), gr.skip()
        return prompt, negative, []

    # styles.csv is read again when it changes: offer its current styles whenever the list is opened
    row.styles.focus(lambda: gr.Dropdown(choices=list(engine.styles.all())), outputs=row.styles, queue=False,
                     show_progress="hidden")
    row.apply_styles.click(apply_styles, inputs=[row.prompt, row.negative_prompt, row.styles],
                           outputs=[row.prompt, row.negative_prompt, row.styles], queue=False)
    # through the queue (its toast needs it), never waiting: no concurrency limit
    row.interrupt.click(lambda: interrupt(engine), concurrency_limit=None, show_progress="hidden")
    row.skip.click(engine.queue.skip, queue=False)
    _wire_style_editor(engine, row)


def _wire_style_editor(engine: Engine, row: Toprow) -> None:
    ed = row.editor

    def choices(value=None) -> list:
        names = list(engine.styles.all())
        return [gr.Dropdown(choices=names), gr.Dropdown(choices=names, value=value)]

    ed.open.click(lambda: [gr.Column(visible=True), *choices()[1:], ""], outputs=[ed.dialog, ed.selection, ed.status],
                  queue=False)
    ed.close.click(lambda: gr.Column(visible=False), outputs=ed.dialog, queue=False)

    def select(name):
        # this runs after Delete empties the name too: only a name picked or typed clears what Delete said
        name = (name or "").strip()
        style = engine.styles.all().get(name)
        return (style.prompt if style else gr.skip(), style.negative_prompt if style else gr.skip(),
                gr.Button(visible=bool(name)), gr.Button(visible=style is not None), "" if name else gr.skip())

    ed.selection.change(select, inputs=ed.selection, outputs=[ed.prompt, ed.negative_prompt, ed.save, ed.delete,
                                                              ed.status], queue=False, show_progress="hidden")
    ed.copy.click(lambda p, n: (p, n), inputs=[row.prompt, row.negative_prompt],
                  outputs=[ed.prompt, ed.negative_prompt], queue=False)

    def save(name, prompt, negative):
        name = (name or "").strip()
        try:
            path = engine.styles.save(styles.PromptStyle(name, prompt or "", negative or ""))
        except (ValueError, OSError, csv.Error, UnicodeDecodeError) as e:
            return [gr.skip(), gr.skip(), gr.skip(), note_html(f"Not saved: {e}")]
        return [*choices(name), gr.Button(visible=True), note_html(f"Saved style {name!r} in {path.name}")]

    ed.save.click(save, inputs=[ed.selection, ed.prompt, ed.negative_prompt],
                  outputs=[row.styles, ed.selection, ed.delete, ed.status], queue=False)

    def delete(name, selected):
        name = (name or "").strip()
        if not name:  # the confirmation was declined
            return [gr.skip()] * 6
        try:
            path = engine.styles.delete(name)
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            return [gr.skip()] * 5 + [note_html(f"Not deleted: {e}")]
        said = f"Deleted style {name!r} from {path.name}" if path else f"There is no style {name!r}"
        names = list(engine.styles.all())  # the main list drops it from its choices and from what is selected
        return [gr.Dropdown(choices=names, value=[s for s in (selected or []) if s != name]),
                gr.Dropdown(choices=names, value=None), "", "", gr.Button(visible=False), note_html(said)]

    ed.delete.click(delete, inputs=[ed.selection, row.styles],
                    js="(name, selected) => [confirm(`Delete style ${name}?`) ? name : '', selected]",
                    outputs=[row.styles, ed.selection, ed.prompt, ed.negative_prompt, ed.delete, ed.status],
                    queue=False)
