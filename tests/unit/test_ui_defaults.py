"""ui-config.json (A1111's keys TAB/LABEL/FIELD): the page's controls take the file's values when they can, and
Settings > Defaults writes the controls the user changed."""

from __future__ import annotations

import json

import gradio as gr

from modules.ui.defaults import UiDefaults


def build(path):
    with gr.Blocks() as blocks:
        with gr.Tab("txt2img") as tab:
            steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps")
            sampler = gr.Dropdown(["Euler a", "DPM++ 2M"], value="DPM++ 2M", label="Sampling method")
            tiling = gr.Checkbox(False, label="Tiling")
            prompt = gr.Textbox("", label="Prompt")
            seed = gr.Number(-1, label="Seed", minimum=-1)
            mode = gr.Radio(["Just resize", "Crop and resize"], value="Just resize", type="index", label="Resize mode")
            hidden = gr.Number(0, label="Hidden helper", visible=False)
            shown_only = gr.Textbox("x", label="Generation parameters", interactive=False)
            with gr.Column(elem_id="txt2img_extra_networks"):
                notes = gr.Textbox("", label="Notes")
    defaults = UiDefaults(path)
    defaults.add_block(tab, "txt2img", frozenset({"txt2img_extra_networks"}))
    return blocks, defaults, dict(steps=steps, sampler=sampler, tiling=tiling, prompt=prompt, seed=seed, mode=mode,
                                  hidden=hidden, shown_only=shown_only, notes=notes)


def test_the_file_sets_what_the_controls_can_take(tmp_path, caplog):
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({
        "txt2img/Sampling steps/value": 180, "txt2img/Sampling steps/maximum": 200,  # the range first, then 180
        "txt2img/Sampling method/value": "Euler a", "txt2img/Tiling/value": True, "txt2img/Prompt/value": "a cat",
        "txt2img/Seed/value": 5, "txt2img/Resize mode/value": "Crop and resize", "txt2img/Tiling/visible": False,
        "txt2img/Notes/value": "not a page default", "txt2img/Hidden helper/value": 3,
        "img2img/Sampling steps/value": 7}), encoding="utf-8")
    _, defaults, c = build(path)
    assert (c["steps"].value, c["steps"].maximum) == (180, 200)
    assert (c["sampler"].value, c["tiling"].value, c["tiling"].visible) == ("Euler a", True, False)
    assert (c["prompt"].value, c["seed"].value, c["mode"].value) == ("a cat", 5, "Crop and resize")
    assert c["notes"].value == "" and c["hidden"].value == 0  # inside what is skipped; hidden helpers
    assert "txt2img/Generation parameters/value" not in defaults.values  # an output, not a setting

    path.write_text(json.dumps({"txt2img/Sampling method/value": "Heun", "txt2img/Sampling steps/value": "many",
                                "txt2img/Tiling/value": "yes", "txt2img/Seed/value": -5}), encoding="utf-8")
    _, defaults, c = build(path)
    assert (c["sampler"].value, c["steps"].value, c["tiling"].value, c["seed"].value) == ("DPM++ 2M", 20, False, -1)
    assert sorted(defaults.refused) == ["txt2img/Sampling method/value", "txt2img/Sampling steps/value",
                                        "txt2img/Seed/value", "txt2img/Tiling/value"]
    assert "Heun" in caplog.text


def test_a_broken_file_is_neither_used_nor_overwritten(tmp_path):
    path = tmp_path / "ui-config.json"
    path.write_text("{broken", encoding="utf-8")
    _, defaults, c = build(path)
    assert c["steps"].value == 20 and not defaults.readable
    values = [30, "DPM++ 2M", False, "", -1, 0]
    assert "could not be read" in defaults.apply(*values)
    assert path.read_text(encoding="utf-8") == "{broken"


def test_apply_writes_only_what_the_user_changed(tmp_path):
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"txt2img/Sampling steps/value": 25, "extras/Resize/value": 2}), encoding="utf-8")
    _, defaults, c = build(path)
    assert not path.read_text(encoding="utf-8").count("Sampling method")  # nothing written at start
    # the page's values, in the order of the controls: steps, sampler, tiling, prompt, seed, mode (an index)
    page = [25, "Euler a", False, "", -1, 1]
    assert defaults.changes(page) == [("txt2img/Sampling method/value", "DPM++ 2M", "Euler a"),
                                      ("txt2img/Resize mode/value", "Just resize", "Crop and resize")]
    assert "txt2img/Sampling method/value" in defaults.view(*page)
    assert "Wrote 2 changes" in defaults.apply(*page)
    assert json.loads(path.read_text(encoding="utf-8")) == {
        "txt2img/Sampling steps/value": 25, "extras/Resize/value": 2, "txt2img/Sampling method/value": "Euler a",
        "txt2img/Resize mode/value": "Crop and resize"}
    assert defaults.changes(page) == [] and "No changes" in defaults.apply(*page)


def test_a_default_that_follows_the_model_is_not_a_change(tmp_path):
    _, defaults, _ = build(tmp_path / "ui-config.json")
    page = [30, "DPM++ 2M", False, "", -1, 0]
    assert [k for k, _, _ in defaults.changes(page)] == ["txt2img/Sampling steps/value"]
    defaults.follows["txt2img/Sampling steps/value"] = lambda: 30  # as Width follows the model's size
    assert defaults.changes(page) == []
    (tmp_path / "ui-config.json").write_text("[]", encoding="utf-8")  # replaced meanwhile by something else
    assert "no longer holds a JSON object" in defaults.apply(31, "DPM++ 2M", False, "", -1, 0)


def test_a_sent_pictures_size_fits_the_sliders():
    """Send to img2img gives the picture's own size (send_size) as the Width and Height sliders hold it: multiples
    of 8 (what a job accepts), at least 64, a picture over 2048 scaled down with its shape kept."""
    from modules.ui.common import slider_size

    assert slider_size(192, 192) == (192, 192)
    assert slider_size(1000, 750) == (1000, 752)
    assert slider_size(4096, 2048) == (2048, 1024)
    assert slider_size(3000, 1000) == (2048, 680)
    assert slider_size(30, 500) == (64, 504)
    assert slider_size(1536, 1536, largest=1024) == (1024, 1024)  # --max-image-side 1024


def test_a_picture_sent_to_img2img_gives_its_size_and_seed_as_a1111s_settings_say():
    """A1111's send_size / send_seed (infotext_utils.connect_paste_params_buttons, send_image_and_dimensions): the
    picture's own size for img2img (never for inpaint); from a tab's results, without send_size the size and
    without send_seed the seed fields stay as they are; from PNG Info or History the infotext's are pasted."""
    from modules.ui.paste import sent_with

    def sent(to_inpaint=False, from_gallery=True, send_size=True, send_seed=True, size=(192, 192)):
        values = {"prompt": "p", "width": 128, "height": 128, "seed": 5, "subseed": 6, "subseed_strength": 0.5}
        sent_with(values, size, to_inpaint, from_gallery, send_size, send_seed, 2048)
        return values

    assert sent() == {"prompt": "p", "width": 192, "height": 192, "seed": 5, "subseed": 6, "subseed_strength": 0.5}
    assert sent(send_size=False, send_seed=False) == {"prompt": "p"}
    assert sent(to_inpaint=True) == {"prompt": "p", "seed": 5, "subseed": 6, "subseed_strength": 0.5}
    assert sent(from_gallery=False, send_size=False, send_seed=False)["width"] == 128  # the infotext's
    assert sent(from_gallery=False, to_inpaint=True)["width"] == 128
    assert sent(from_gallery=False)["width"] == 192
    assert sent(size=(1001, 3000))["width"] == 680 and sent(size=(1001, 3000))["height"] == 2048


def test_tab_order_and_hidden_tabs_as_a1111_reads_them():
    """ui_tab_order: the named tabs first, the others after in the default order; hidden_tabs: not shown, except
    Settings; names this page has no tab for (A1111's Train, Extensions) are ignored."""
    from modules.ui.app import tab_layout

    default = ["txt2img", "img2img", "Extras", "PNG Info", "History", "Checkpoint Merger", "Settings"]
    assert tab_layout([], []) == (default, set())
    order, hidden = tab_layout(["Settings", "Train", "img2img", "Settings"], ["Extras", "Settings", "Extensions"])
    assert order == ["Settings", "img2img", "txt2img", "Extras", "PNG Info", "History", "Checkpoint Merger"]
    assert hidden == {"Extras"}
