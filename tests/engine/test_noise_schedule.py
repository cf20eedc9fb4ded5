"""A1111's overrides of the model's noise schedule in a job (the maths against k-diffusion: tests/engine/
test_samplers.py): use_downcasted_alpha_bar (`Downcast alphas_cumprod`, which pictures from A1111 before
v1.7.0-225 were made with) and sd_noise_schedule "Zero Terminal SNR" (`Noise Schedule`). Each job's infotext
says so, and reading that infotext back makes the same picture."""

from __future__ import annotations

import re

from modules.api import routes, schemas
from tests.support.generation import engine, params  # noqa: F401  (fixture)


def pixels(result) -> list[bytes]:
    return [im.tobytes() for im in result.images]


def again(engine, infotext: str, **fields):
    """The job an infotext describes, through the API's `infotext` field."""
    request = schemas.Txt2ImgRequest(infotext=infotext, save_images=False, **fields)
    assert not routes.apply_infotext(request, engine)
    return request, engine.txt2img(routes.to_params(request))


def test_a_downcast_schedule_says_so_and_an_a1111_1_6_infotext_makes_it_again(engine):  # noqa: F811
    job = dict(sampler_name="DPM++ 2M", steps=6, seed=3, save_images=False)
    plain = engine.txt2img(params(**job))
    down = engine.txt2img(params(**job, override_settings={"use_downcasted_alpha_bar": True}))
    assert "Downcast alphas_cumprod: True" in down.infotexts[0]
    assert "Downcast alphas_cumprod" not in plain.infotexts[0]
    assert pixels(down) != pixels(plain)
    assert engine.options.values.use_downcasted_alpha_bar is False  # an override, for the job only
    request, same = again(engine, down.infotexts[0])
    assert request.override_settings["use_downcasted_alpha_bar"] is True and pixels(same) == pixels(down)
    # a picture from A1111 1.6 does not write the key: its Version implies it
    old = re.sub(r"Version: [^,\n]+", "Version: v1.6.0", plain.infotexts[0])
    assert "Version: v1.6.0" in old
    request, same = again(engine, old)
    assert request.override_settings["use_downcasted_alpha_bar"] is True and pixels(same) == pixels(down)


def test_zero_terminal_snr_says_so_and_its_infotext_makes_it_again(engine):  # noqa: F811
    job = dict(sampler_name="Euler", steps=6, seed=8, save_images=False,
               override_settings={"sd_model_checkpoint": "sd2-v"})
    plain = engine.txt2img(params(**job))
    ztsnr = engine.txt2img(params(**{**job, "override_settings": {**job["override_settings"],
                                                                   "sd_noise_schedule": "Zero Terminal SNR"}}))
    assert "Noise Schedule: Zero Terminal SNR" in ztsnr.infotexts[0]
    assert "Noise Schedule" not in plain.infotexts[0]
    assert pixels(ztsnr) != pixels(plain)
    request, same = again(engine, ztsnr.infotexts[0], override_settings={"sd_model_checkpoint": "sd2-v"})
    assert request.override_settings["sd_noise_schedule"] == "Zero Terminal SNR"
    assert pixels(same) == pixels(ztsnr)


def test_the_sgm_noise_multiplier_is_written_where_a1111_applies_it(engine):  # noqa: F811
    # A1111 scales the start of a txt2img pass of its k-diffusion samplers only (KDiffusionSampler.sample)
    on = {"sgm_noise_multiplier": True}
    euler = engine.txt2img(params(sampler_name="Euler", steps=3, save_images=False, override_settings=on))
    plain = engine.txt2img(params(sampler_name="Euler", steps=3, save_images=False))
    assert "SGM noise multiplier: True" in euler.infotexts[0] and pixels(euler) != pixels(plain)
    ddim = engine.txt2img(params(sampler_name="DDIM", steps=3, save_images=False, override_settings=on))
    assert "SGM noise multiplier" not in ddim.infotexts[0]
    assert pixels(ddim) == pixels(engine.txt2img(params(sampler_name="DDIM", steps=3, save_images=False)))
    request, same = again(engine, euler.infotexts[0])
    assert request.override_settings["sgm_noise_multiplier"] is True and pixels(same) == pixels(euler)
