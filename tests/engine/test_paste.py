"""One infotext reader for the API's `infotext` field and the page's paste buttons (modules/services/paste.py)."""

from __future__ import annotations

import pytest

from modules.api import routes, schemas
from modules.engine import BadRequest
from modules.ui import paste
from tests.support.generation import engine  # noqa: F401  (fixture)

A1111_TEXT = ("a castle <lora:old_name:0.7>\nNegative prompt: fog\n"
              "Steps: 12, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 77, Size: 64x96, Model hash: {hash}, "
              "Model: sd1, Denoising strength: 0.55, Hires upscale: 1.5, Clip skip: 2, RNG: CPU, "
              "VAE: nowhere.safetensors, Version: v1.10.1")


def text_for(engine) -> str:
    sd1 = engine.checkpoints.find("sd1.safetensors")
    return A1111_TEXT.format(hash=engine.checkpoints.ensure_hash(sd1)[:10])


def test_the_reader_gives_fields_settings_and_the_checkpoint(engine):  # noqa: F811
    pasted = engine.paste.read(text_for(engine), txt2img=True)
    v = pasted.values
    assert (v["prompt"], v["negative_prompt"], v["steps"], v["cfg_scale"], v["seed"]) == (
        "a castle <lora:old_name:0.7>", "fog", 12, 6.5, 77)
    assert (v["width"], v["height"], v["enable_hr"], v["denoising_strength"], v["hr_scale"]) == (64, 96, True, 0.55,
                                                                                                  1.5)
    assert pasted.settings["CLIP_stop_at_last_layers"] == 2 and pasted.settings["randn_source"] == "CPU"
    assert pasted.checkpoint == engine.checkpoints.find("sd1.safetensors").title
    assert pasted.warning is None
    # the settings a request would run with: those that differ and exist here; the rest are warnings
    overrides, warnings = engine.paste.overrides(pasted.settings, {"randn_source": "NV"})
    assert overrides["CLIP_stop_at_last_layers"] == 2 and overrides["randn_source"] == "NV"  # the request's wins
    assert "sd_vae" not in overrides and any("nowhere.safetensors" in w for w in warnings)


def test_a_number_that_is_not_one_is_a_bad_request(engine):  # noqa: F811
    with pytest.raises(BadRequest, match="Seed"):
        engine.paste.read("a cat\nSteps: 2, Seed: many, Sampler: Euler", txt2img=True)


def test_the_api_and_the_page_fill_the_same_fields(engine):  # noqa: F811
    text = text_for(engine)
    request = schemas.Txt2ImgRequest(infotext=text)
    routes.apply_infotext(request, engine)
    page_values, page_settings = paste.field_values(engine, text, txt2img=True)
    for name, value in page_values.items():
        if name in ("sampler_name", "scheduler"):  # the page shows the legacy name as sampler + schedule
            continue
        assert getattr(request, name) == value, name
    assert (page_values["sampler_name"], page_values["scheduler"]) == ("DPM++ 2M", "Karras")
    assert request.sampler_name == "DPM++ 2M Karras"  # resolved to the same choice when the job is accepted
    assert request.override_settings["CLIP_stop_at_last_layers"] == page_settings["CLIP_stop_at_last_layers"] == 2
    assert page_settings["sd_model_checkpoint"] == engine.checkpoints.find("sd1.safetensors").title
