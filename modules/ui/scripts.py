"""The Script dropdown of txt2img and img2img (A1111's: None, Loopback, Outpainting mk2, Poor man's outpainting (these
three img2img only), Prompt matrix, Prompts from file or textbox, SD upscale (img2img), X/Y/Z plot) and each
script's controls, shown when it is chosen, laid out as A1111's.

The controls are keyed like the tabs' fields (`script_name`, `script_xyz_x_type`, ...) so that a paste fills
them by name (see ui/paste.py); `request` turns them into the script's name and A1111's script_args."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.engine import Engine

NONE = "None"
XYZ, MATRIX, FROM_FILE, SD_UPSCALE = "X/Y/Z plot", "Prompt matrix", "Prompts from file or textbox", "SD upscale"
LOOPBACK, OUTPAINTING, MK2 = "Loopback", "Poor man's outpainting", "Outpainting mk2"
DIRECTIONS = ("left", "right", "up", "down")
XYZ_FLAGS = ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
             "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode")


def build(engine: Engine, tab: str) -> dict[str, gr.components.Component]:
    """The dropdown and the scripts' groups (hidden until chosen); their controls by name."""
    titles = engine.scripts.titles(tab)
    c: dict[str, gr.components.Component] = {}
    c["script_name"] = gr.Dropdown(label="Script", choices=[NONE, *titles], value=NONE,
                                   elem_id=f"{tab}_script_list")
    groups = {}
    if LOOPBACK in titles:
        with gr.Group(visible=False, elem_id=f"{tab}_script_loopback") as groups[LOOPBACK]:
            c["script_lb_loops"] = gr.Slider(1, 32, value=4, step=1, label="Loops", elem_id=f"{tab}_loopback_loops")
            c["script_lb_final"] = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="Final denoising strength",
                                             elem_id=f"{tab}_loopback_final_denoising_strength")
            c["script_lb_curve"] = gr.Dropdown(["Aggressive", "Linear", "Lazy"], value="Linear",
                                               label="Denoising strength curve", elem_id=f"{tab}_loopback_curve")
    if MK2 in titles:
        with gr.Group(visible=False, elem_id=f"{tab}_script_outpainting_mk2") as groups[MK2]:
            gr.HTML("<p class='sd-hint'>Recommended settings: Sampling Steps: 80-100, Sampler: Euler a, Denoising "
                    "strength: 0.8</p>")
            _growth_controls(c, "script_mk2", f"{tab}_outpainting_mk2", blur=8)
            _direction_control(c, "script_mk2", f"{tab}_outpainting_mk2")
            c["script_mk2_noise_q"] = gr.Slider(0.0, 4.0, value=1.0, step=0.01,
                                                label="Fall-off exponent (lower=higher detail)",
                                                elem_id=f"{tab}_outpainting_mk2_noise_q")
            c["script_mk2_color_variation"] = gr.Slider(0.0, 1.0, value=0.05, step=0.01, label="Color variation",
                                                        elem_id=f"{tab}_outpainting_mk2_color_variation")
    if OUTPAINTING in titles:
        with gr.Group(visible=False, elem_id=f"{tab}_script_poor_mans_outpainting") as groups[OUTPAINTING]:
            _growth_controls(c, "script_po", f"{tab}_poor_mans_outpainting", blur=4)
            c["script_po_fill"] = gr.Radio(["fill", "original", "latent noise", "latent nothing"], value="fill",
                                           type="index", label="Masked content",
                                           elem_id=f"{tab}_poor_mans_outpainting_inpainting_fill")
            _direction_control(c, "script_po", f"{tab}_poor_mans_outpainting")
    with gr.Group(visible=False, elem_id=f"{tab}_script_prompt_matrix") as groups[MATRIX]:
        c["script_pm_put_at_start"] = gr.Checkbox(label="Put variable parts at start of prompt", value=False)
        c["script_pm_different_seeds"] = gr.Checkbox(label="Use different seed for each picture", value=False)
        with gr.Row():
            c["script_pm_prompt_type"] = gr.Radio(["positive", "negative"], label="Select prompt", value="positive")
            c["script_pm_delimiter"] = gr.Radio(["comma", "space"], label="Select joining char", value="comma")
        c["script_pm_margin_size"] = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)")
    with gr.Group(visible=False, elem_id=f"{tab}_script_prompts_from_file") as groups[FROM_FILE]:
        c["script_pf_iterate"] = gr.Checkbox(label="Iterate seed every line", value=False)
        c["script_pf_iterate_batch"] = gr.Checkbox(label="Use same random seed for all lines", value=False)
        c["script_pf_position"] = gr.Radio(["start", "end"], label="Insert prompts at the", value="start")
        c["script_pf_text"] = gr.Textbox(label="List of prompt inputs", lines=2, elem_id=f"{tab}_prompt_txt")
        upload = gr.File(label="Upload prompt inputs", type="binary", elem_id=f"{tab}_prompt_file")
    if SD_UPSCALE in titles:
        with gr.Group(visible=False, elem_id=f"{tab}_script_sd_upscale") as groups[SD_UPSCALE]:
            gr.HTML("<p class='sd-hint'>Will upscale the image by the selected scale factor; use width and height "
                    "sliders to set tile size</p>")
            c["script_sdu_overlap"] = gr.Slider(0, 256, value=64, step=16, label="Tile overlap",
                                                elem_id=f"{tab}_sd_upscale_overlap")
            c["script_sdu_scale"] = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Scale Factor",
                                              elem_id=f"{tab}_sd_upscale_scale_factor")
            c["script_sdu_upscaler"] = gr.Radio(engine.upscalers.names(), value="None", label="Upscaler",
                                                elem_id=f"{tab}_sd_upscale_upscaler_index")
    with gr.Group(visible=False, elem_id=f"{tab}_script_xyz_plot") as groups[XYZ]:
        fills = _xyz_controls(engine, tab, c)
    c["script_name"].change(lambda name: [gr.Group(visible=name == t) for t in groups], inputs=c["script_name"],
                            outputs=list(groups.values()), queue=False, show_progress="hidden")
    upload.upload(lambda data: (data or b"").decode("utf-8", errors="replace"), inputs=upload,
                  outputs=c["script_pf_text"], queue=False)
    _wire_xyz(engine, tab, c, fills)
    return c


def _growth_controls(c: dict, key: str, elem: str, blur: int) -> None:
    """The outpainting scripts' "Pixels to expand" and "Mask blur" (A1111's sliders; the blur's default differs)."""
    c[f"{key}_pixels"] = gr.Slider(8, 256, value=128, step=8, label="Pixels to expand", elem_id=f"{elem}_pixels")
    c[f"{key}_mask_blur"] = gr.Slider(0, 64, value=blur, step=1, label="Mask blur", elem_id=f"{elem}_mask_blur")


def _direction_control(c: dict, key: str, elem: str) -> None:
    """The outpainting scripts' "Outpainting direction": every side ticked."""
    c[f"{key}_direction"] = gr.CheckboxGroup(list(DIRECTIONS), value=list(DIRECTIONS), label="Outpainting direction",
                                             elem_id=f"{elem}_direction")


def _xyz_controls(engine: Engine, tab: str, c: dict) -> dict[str, gr.Button]:
    labels = [a.label for a in engine.scripts.xyz_axes(tab)]
    fills = {}
    for axis, default in (("x", 1), ("y", 0), ("z", 0)):
        with gr.Row():
            c[f"script_xyz_{axis}_type"] = gr.Dropdown(labels, value=labels[default], type="index", scale=2,
                                                       label=f"{axis.upper()} type", elem_id=f"{tab}_xyz_{axis}_type")
            c[f"script_xyz_{axis}_values"] = gr.Textbox(label=f"{axis.upper()} values", lines=1, scale=5,
                                                        elem_id=f"{tab}_xyz_{axis}_values")
            c[f"script_xyz_{axis}_values_dropdown"] = gr.Dropdown(label=f"{axis.upper()} values", visible=False,
                                                                  multiselect=True, choices=[], scale=5,
                                                                  allow_custom_value=True,  # a pasted list
                                                                  elem_id=f"{tab}_xyz_{axis}_values_dropdown")
            fills[axis] = gr.Button("📒", visible=False, scale=0, min_width=40, elem_classes="sd-tool",
                                    elem_id=f"{tab}_xyz_fill_{axis}")
    with gr.Row():
        with gr.Column():
            c["script_xyz_draw_legend"] = gr.Checkbox(label="Draw legend", value=True)
            c["script_xyz_no_fixed_seeds"] = gr.Checkbox(label="Keep -1 for seeds", value=False)
            with gr.Row():
                for axis in "xyz":
                    c[f"script_xyz_vary_seeds_{axis}"] = gr.Checkbox(label=f"Vary seeds for {axis.upper()}",
                                                                     value=False)
        with gr.Column():
            c["script_xyz_include_lone_images"] = gr.Checkbox(label="Include Sub Images", value=False)
            c["script_xyz_include_sub_grids"] = gr.Checkbox(label="Include Sub Grids", value=False)
            c["script_xyz_csv_mode"] = gr.Checkbox(label="Use text inputs instead of dropdowns", value=False)
        with gr.Column():
            c["script_xyz_margin_size"] = gr.Slider(0, 500, value=0, step=2, label="Grid margins (px)")
    with gr.Row():
        for a, b in (("x", "y"), ("y", "z"), ("x", "z")):
            fills[f"swap_{a}{b}"] = gr.Button(f"Swap {a.upper()}/{b.upper()} axes", elem_id=f"{tab}_xyz_swap_{a}{b}")
    return fills


def _wire_xyz(engine: Engine, tab: str, c: dict, buttons: dict[str, gr.Button]) -> None:
    labels = [a.label for a in engine.scripts.xyz_axes(tab)]

    def show(index, text, chosen, csv_mode):
        """A1111's select_axis: an axis with choices shows them in a dropdown (unless csv_mode) and the 📒
        button that fills them all; the values move between the text and the dropdown."""
        choices = engine.scripts.axis_choices(tab)[int(index or 0)]
        listed = choices is not None and not csv_mode
        # values are written only when they move, so an event that read them before a paste changed them does
        # not put the old ones back
        text_update, drop_update = gr.Textbox(visible=not listed), gr.Dropdown(choices=choices or [], visible=listed)
        if listed and text and not chosen:
            text_update = gr.Textbox(visible=False, value="")
            drop_update = gr.Dropdown(choices=choices, visible=True, value=[v for v in _csv(text) if v in choices])
        elif choices is not None and csv_mode and chosen:
            text_update = gr.Textbox(visible=True, value=",".join(v for v in chosen if v in choices))
            drop_update = gr.Dropdown(choices=choices, visible=False, value=[])
        return gr.Button(visible=choices is not None), text_update, drop_update

    def fill(index, csv_mode):
        choices = engine.scripts.axis_choices(tab)[int(index or 0)] or []
        return (",".join(choices), gr.skip()) if csv_mode else (gr.skip(), choices)

    def swap(type_a, text_a, drop_a, type_b, text_b, drop_b):
        return labels[int(type_b or 0)], text_b, drop_b, labels[int(type_a or 0)], text_a, drop_a

    for axis in "xyz":
        parts = [c[f"script_xyz_{axis}_type"], c[f"script_xyz_{axis}_values"], c[f"script_xyz_{axis}_values_dropdown"]]
        parts[0].change(show, inputs=parts + [c["script_xyz_csv_mode"]],
                        outputs=[buttons[axis], parts[1], parts[2]], show_progress="hidden")
        buttons[axis].click(fill, inputs=[parts[0], c["script_xyz_csv_mode"]], outputs=parts[1:], queue=False)
    for a, b in (("x", "y"), ("y", "z"), ("x", "z")):
        both = [c[f"script_xyz_{n}{suffix}"] for n in (a, b) for suffix in ("_type", "_values", "_values_dropdown")]
        buttons[f"swap_{a}{b}"].click(swap, inputs=both, outputs=both, queue=False)
    for axis in "xyz":  # csv mode moves every axis's values between the text and the dropdown
        parts = [c[f"script_xyz_{axis}_type"], c[f"script_xyz_{axis}_values"], c[f"script_xyz_{axis}_values_dropdown"]]
        c["script_xyz_csv_mode"].change(show, inputs=parts + [c["script_xyz_csv_mode"]],
                                        outputs=[buttons[axis], parts[1], parts[2]], show_progress="hidden")


def _csv(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def request(values: dict[str, Any]) -> tuple[tuple[str, list[Any]] | None, dict[str, Any]]:
    """((script title, script_args) or None, the other values) from a tab's values by name."""
    script = {k: values[k] for k in values if k.startswith("script_")}
    rest = {k: v for k, v in values.items() if not k.startswith("script_")}
    name = script.get("script_name") or NONE
    if name == NONE:
        return None, rest
    if name == MATRIX:
        return (name, [script.get(f"script_pm_{k}") for k in ("put_at_start", "different_seeds", "prompt_type",
                                                               "delimiter", "margin_size")]), rest
    if name == FROM_FILE:
        return (name, [script.get(f"script_pf_{k}") for k in ("iterate", "iterate_batch", "position", "text")]), rest
    if name == LOOPBACK:  # A1111's fourth argument, the interrogation, is "None": no interrogator here
        return (name, [script.get("script_lb_loops"), script.get("script_lb_final"), script.get("script_lb_curve"),
                       "None"]), rest
    if name == MK2:
        return (name, ["", script.get("script_mk2_pixels"), script.get("script_mk2_mask_blur"),
                       list(script.get("script_mk2_direction") or []), script.get("script_mk2_noise_q"),
                       script.get("script_mk2_color_variation")]), rest
    if name == OUTPAINTING:
        return (name, [script.get("script_po_pixels"), script.get("script_po_mask_blur"), script.get("script_po_fill"),
                       list(script.get("script_po_direction") or [])]), rest
    if name == SD_UPSCALE:
        return (name, ["", script.get("script_sdu_overlap"), script.get("script_sdu_upscaler") or "None",
                       script.get("script_sdu_scale")]), rest
    args: list[Any] = []
    for axis in "xyz":
        args += [script.get(f"script_xyz_{axis}_type") or 0, script.get(f"script_xyz_{axis}_values") or "",
                 list(script.get(f"script_xyz_{axis}_values_dropdown") or [])]
    return (name, args + [script.get(f"script_xyz_{k}") for k in XYZ_FLAGS]), rest


def pasted_values(engine: Engine, text: str, kind: str) -> dict[str, Any]:
    """The controls an X/Y/Z plot grid's infotext fills (the script chosen, its axes and values); {} for
    another infotext."""
    args = engine.scripts.args_from_infotext(text, kind)
    if args is None:
        return {}
    labels = [a.label for a in engine.scripts.xyz_axes(kind)]
    out: dict[str, Any] = {"script_name": XYZ}
    for i, axis in enumerate("xyz"):
        index, values, dropdown = args[i * 3:i * 3 + 3]
        out[f"script_xyz_{axis}_type"] = labels[index]
        out[f"script_xyz_{axis}_values"] = "" if dropdown else values
        out[f"script_xyz_{axis}_values_dropdown"] = dropdown
    return out
