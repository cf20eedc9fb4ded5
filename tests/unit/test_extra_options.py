"""Settings in UI (modules/ui/extra_options.py): what a tab's shown settings send with its jobs."""

from __future__ import annotations

from modules.ui import extra_options, txt2img


def test_a_tabs_shown_settings_become_its_jobs_override_settings_below_the_box():
    """Settings in UI (A1111's extra options section): the tab's values go with its jobs as override_settings, an
    Override settings entry for the same setting wins, an emptied number box sends nothing."""
    controls = dict(prompt="a cat", steps=3, width=64, height=64, seed=5, sampler_name="Euler a", n_iter=1,
                    batch_size=1, cfg_scale=7, override_settings=["ENSD: 5"])
    controls.update({"setting:eta_ancestral": 0.5, "setting:eta_noise_seed_delta": 31337.0,
                     "setting:uni_pc_order": None})
    params = txt2img.make_params(controls)
    assert params.override_settings == {"eta_ancestral": 0.5, "eta_noise_seed_delta": 5}
    assert extra_options.take({"setting:uni_pc_order": 2.0, "steps": 3}) == {"uni_pc_order": 2}  # int settings
    # a paste fills those of them the infotext gives
    assert extra_options.pasted({"eta_ancestral": 0.7, "randn_source": "NV"}, {"setting:eta_ancestral": None}) == {
        "setting:eta_ancestral": 0.7}
