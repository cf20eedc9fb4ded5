"""The page's Refiner controls through the engine: what txt2img's and img2img's controls build runs with the
refiner, and the job's infotext, pasted back, fills the same controls (modules/ui/refiner.py, ui/paste.py)."""

from __future__ import annotations

from PIL import Image

from modules.ui import img2img, paste, txt2img
from tests.support.generation import engine  # noqa: F401  (fixture)

CONTROLS = dict(prompt="a red circle on a blue background", negative_prompt="", steps=4, width=64, height=64,
                seed=5, sampler_name="Euler a", scheduler="Automatic", n_iter=1, batch_size=1, cfg_scale=7)


def test_the_page_s_refiner_runs_and_its_infotext_pastes_back(engine):  # noqa: F811
    refiner = engine.checkpoints.find("sd1-fp16.safetensors")
    values = {**CONTROLS, "enable_refiner": True, "refiner_checkpoint": refiner.title, "refiner_switch_at": 0.5}
    result = engine.submit_txt2img(txt2img.make_params(values)).wait()
    text = result.infotexts[0]
    assert "Refiner: sd1-fp16 [" in text and "Refiner switch at: 0.5" in text, text
    pasted, _ = paste.field_values(engine, text, txt2img=True)
    title = engine.checkpoints.find("sd1-fp16.safetensors").title
    assert (pasted["enable_refiner"], pasted["refiner_checkpoint"], pasted["refiner_switch_at"]) == (True, title, 0.5)

    off = engine.submit_txt2img(txt2img.make_params({**values, "enable_refiner": False})).wait()
    assert "Refiner" not in off.infotexts[0]
    assert paste.field_values(engine, off.infotexts[0], txt2img=True)[0]["enable_refiner"] is False


def test_img2img_s_refiner_runs(engine):  # noqa: F811
    values = {**CONTROLS, "denoising_strength": 0.6, "enable_refiner": True,
              "refiner_checkpoint": "sd1-fp16", "refiner_switch_at": 0.3}
    params = img2img.make_params(values, Image.new("RGB", (64, 64), (200, 0, 0)), None, 0, 1.0)
    text = engine.submit_img2img(params).wait().infotexts[0]
    assert "Refiner: sd1-fp16 [" in text and "Refiner switch at: 0.3" in text, text
