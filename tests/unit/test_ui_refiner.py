"""The page's Refiner accordion turned into a request (modules/ui/refiner.py, the tabs' make_params) and the
Settings tab's controls for the refiner's settings. No checkpoint is loaded."""

from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image

from modules.settings import Settings
from modules.ui import img2img, refiner, settings_tab, txt2img

BASE = dict(prompt="a cat", steps=4, width=64, height=64, seed=3, sampler_name="Euler a", scheduler="Automatic")


def test_an_enabled_refiner_with_a_checkpoint_goes_into_the_request():
    params = txt2img.make_params({**BASE, "enable_refiner": True, "refiner_checkpoint": "sd1.safetensors [0abe17c7f2]",
                                  "refiner_switch_at": 0.55})
    assert (params.refiner_checkpoint, params.refiner_switch_at) == ("sd1.safetensors [0abe17c7f2]", 0.55)


@pytest.mark.parametrize("enabled, checkpoint", [(False, "sd1.safetensors"), (True, None), (True, ""),
                                                 (True, "None"), (True, "  ")])
def test_no_refiner_unless_enabled_with_a_checkpoint(enabled, checkpoint):
    """A1111's setup: `not enable_refiner or refiner_checkpoint in (None, "", "None")` means no refiner."""
    params = txt2img.make_params({**BASE, "enable_refiner": enabled, "refiner_checkpoint": checkpoint,
                                  "refiner_switch_at": 0.5})
    assert (params.refiner_checkpoint, params.refiner_switch_at) == (None, None)


def test_the_accordion_s_controls_leave_the_other_values_alone():
    values = {**BASE, "enable_refiner": True, "refiner_checkpoint": "x", "refiner_switch_at": None}
    out = refiner.request_values(values)
    assert "enable_refiner" not in out and out["refiner_switch_at"] == refiner.SWITCH_AT
    assert {k: out[k] for k in BASE} == BASE and values["enable_refiner"] is True  # the input is not changed
    assert refiner.request_values(BASE) == {**BASE, "refiner_checkpoint": None, "refiner_switch_at": None}


def test_img2img_takes_the_refiner_too():
    image = Image.new("RGB", (64, 64))
    values = {**BASE, "denoising_strength": 0.5, "enable_refiner": True, "refiner_checkpoint": "sd1",
              "refiner_switch_at": 0.3}
    params = img2img.make_params(values, image, None, 0, 1.0)
    assert (params.refiner_checkpoint, params.refiner_switch_at) == ("sd1", 0.3)
    params = img2img.make_params({**values, "enable_refiner": False}, image, None, 0, 1.0)
    assert params.refiner_checkpoint is None


def test_the_settings_tab_shows_the_refiner_settings():
    shown = dict(settings_tab.sections())
    assert shown["Refiner"] == ["hires_fix_refiner_pass", "refiner_switch_by_sample_steps"]
    scores = {"sdxl_refiner_low_aesthetic_score", "sdxl_refiner_high_aesthetic_score"}
    assert scores <= set(shown["Stable Diffusion XL"])
    defaults = Settings()
    with gr.Blocks():
        hires_pass = settings_tab.control("hires_fix_refiner_pass", Settings.model_fields["hires_fix_refiner_pass"],
                                          defaults.hires_fix_refiner_pass)
        by_steps = settings_tab.control("refiner_switch_by_sample_steps",
                                        Settings.model_fields["refiner_switch_by_sample_steps"],
                                        defaults.refiner_switch_by_sample_steps)
        low = settings_tab.control("sdxl_refiner_low_aesthetic_score",
                                   Settings.model_fields["sdxl_refiner_low_aesthetic_score"],
                                   defaults.sdxl_refiner_low_aesthetic_score)
    assert isinstance(hires_pass, gr.Radio) and hires_pass.value == "second pass"  # a radio, as in A1111
    assert [c[0] for c in hires_pass.choices] == ["first pass", "second pass", "both passes"]
    assert isinstance(by_steps, gr.Checkbox) and by_steps.value is False
    assert isinstance(low, gr.Slider) and (low.minimum, low.maximum, low.value) == (0.0, 10.0, 2.5)
