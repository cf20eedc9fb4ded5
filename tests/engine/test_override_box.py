"""The txt2img / img2img "Override settings" box (A1111's): what a paste puts in it and what a job takes from it."""

from __future__ import annotations

from modules.ui import override_settings
from tests.support.generation import engine, params  # noqa: F401  (fixture)

TEXT = ("a cat\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, Clip skip: 2, RNG: NV, ENSD: 31337, Eta: 0.5, "
        "Token merging ratio: 0.3, Old prompt editing timelines: True, VAE: nowhere.safetensors")


def test_a_paste_lists_the_settings_that_differ_and_a_job_uses_them(engine):  # noqa: F811
    settings = engine.paste.read(TEXT, txt2img=True).settings
    entries = override_settings.pasted(engine, settings)
    # Clip skip is the top bar's; a VAE that is not here is left out (the reader warns); Eta 0.5 differs from 1.0
    assert entries == ["RNG: NV", "ENSD: 31337", "Eta: 0.5", "Old prompt editing timelines: True",
                       "Token merging ratio: 0.3"]
    overrides = override_settings.request_settings(entries)
    assert overrides == {"randn_source": "NV", "eta_ancestral": 0.5, "eta_noise_seed_delta": 31337,
                         "use_old_scheduling": True, "token_merging_ratio": 0.3}
    # what the user took out is not used; anything not "KEY: value" of a known key is ignored
    assert override_settings.request_settings([e for e in entries if not e.startswith("RNG")] + ["nonsense",
                                                                                                "Steps: 4"]) \
        == {k: v for k, v in overrides.items() if k != "randn_source"}
    result = engine.txt2img(params(steps=2, sampler_name="Euler a", override_settings=overrides))
    text = result.infotexts[0]
    assert "RNG: NV" in text and "ENSD: 31337" in text and "Eta: 0.5" in text, text
    assert engine.options.values.randn_source == "CPU"  # for the job only


def test_settings_equal_to_the_current_ones_give_no_entries(engine):  # noqa: F811
    text = "a cat\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, RNG: CPU, ENSD: 0"
    assert override_settings.pasted(engine, engine.paste.read(text, txt2img=True).settings) == []
    # A1111 writes RNG only when it is not GPU: an infotext without it asks for GPU (here the default is CPU)
    without = "a cat\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64"
    assert override_settings.pasted(engine, engine.paste.read(without, txt2img=True).settings) == ["RNG: GPU"]


def test_an_a1111_1_6_picture_lists_its_16_bit_schedule(engine):  # noqa: F811
    # its Version implies Downcast alphas_cumprod (A1111's back-compat); the entry gives the job that setting
    text = "a cat\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, RNG: CPU, Version: v1.6.0"
    entries = override_settings.pasted(engine, engine.paste.read(text, txt2img=True).settings)
    assert entries == ["Downcast alphas_cumprod: True"]
    assert override_settings.request_settings(entries) == {"use_downcasted_alpha_bar": True}
    zero = "a cat\nSteps: 3, Sampler: Euler, Seed: 1, Size: 64x64, RNG: CPU, Noise Schedule: Zero Terminal SNR"
    entries = override_settings.pasted(engine, engine.paste.read(zero, txt2img=True).settings)
    assert override_settings.request_settings(entries) == {"sd_noise_schedule": "Zero Terminal SNR"}
