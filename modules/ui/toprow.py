"""The row above txt2img and img2img: prompt boxes with token counters, Generate / Interrupt / Skip,
and the tool buttons (paste parameters, clear prompt, styles), laid out as in A1111."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules import prompt_syntax, styles
from modules.engine import Engine
from modules.generation.conditioning import token_count

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


def counter_html(engine: Engine, text: str, steps: float | None) -> str:
    text = text or ""
    if len(text) > prompt_syntax.MAX_PROMPT_CHARS:  # refused when generating; not tokenized step by step
        return (f'<span class="sd-token-counter sd-token-over" title="{len(text)} characters; at most '
                f'{prompt_syntax.MAX_PROMPT_CHARS}">too long</span>')
    steps = max(1, min(int(steps or 20), engine.limits.max_steps))  # the schedule has a text per step
    tokens, target = token_count(engine.tokenizer, text, steps)
    over = " sd-token-over" if tokens > target else ""
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
            styles = gr.Dropdown(label="Styles", choices=list(engine.styles.all()), value=[], multiselect=True,
                                 elem_id=f"{tab}_styles", allow_custom_value=False)
    return Toprow(prompt, negative, token_counter, negative_counter, generate, interrupt, skip, paste, clear,
                  apply_styles, styles)


def wire(engine: Engine, row: Toprow, steps: gr.Slider) -> None:
    """The row's own events: token counters, clear, apply styles, Interrupt and Skip."""
    def count(text, n):
        return counter_html(engine, text, n)

    for box, counter in ((row.prompt, row.token_counter), (row.negative_prompt, row.negative_token_counter)):
        box.change(count, inputs=[box, steps], outputs=counter, trigger_mode="always_last", queue=False,
                   show_progress="hidden")
        steps.change(count, inputs=[box, steps], outputs=counter, trigger_mode="always_last", queue=False,
                     show_progress="hidden")

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
    row.interrupt.click(engine.queue.interrupt, queue=False)
    row.skip.click(engine.queue.skip, queue=False)
