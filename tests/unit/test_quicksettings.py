"""A1111's quicksettings_list: which settings the top bar shows besides its own three, and that the Settings tab
then leaves them out (one control per setting)."""

from __future__ import annotations

import gradio as gr

from modules.settings import Settings
from modules.ui import settings_tab


def test_the_top_bar_takes_known_names_once_in_order():
    values = Settings(quicksettings_list=["sd_model_checkpoint", "token_merging_ratio", "sd_unet",
                                          "eta_noise_seed_delta", "token_merging_ratio", "sd_vae"])
    assert settings_tab.quick_names(values) == ["token_merging_ratio", "eta_noise_seed_delta"]  # sd_unet: A1111's
    assert settings_tab.quick_names(Settings()) == []  # the default: the top bar's own three
    shown = {n for _, names in settings_tab.sections(settings_tab.quick_names(values)) for n in names}
    assert "token_merging_ratio" not in shown and "eta_noise_seed_delta" not in shown
    assert "quicksettings_list" in shown and "token_merging_ratio_hr" in shown


def test_labels_are_short_and_the_list_is_picked_from_the_settings():
    field = Settings.model_fields
    assert settings_tab.short_label("token_merging_ratio", field["token_merging_ratio"]) == "Token merging ratio"
    assert settings_tab.short_label("eta_noise_seed_delta", field["eta_noise_seed_delta"]) == "ENSD"
    with gr.Blocks():
        listing = settings_tab.control("quicksettings_list", field["quicksettings_list"],
                                       Settings().quicksettings_list)
    assert isinstance(listing, gr.Dropdown) and listing.multiselect and listing.allow_custom_value
    assert ("token_merging_ratio", "token_merging_ratio") in listing.choices
    assert listing.value == ["sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers"]
