"""One infotext reader for the API's `infotext` field and the page's paste buttons (modules/services/paste.py)."""

from __future__ import annotations

import pytest

from modules.api import routes, schemas
from modules.engine import BadRequest
from modules.generation.params import GenerationParams
from modules.ui import paste
from tests.support.generation import engine, pasted_setting  # noqa: F401  (fixture)

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
        if name == "enable_refiner":  # the page's own checkbox (off: the infotext names no refiner)
            assert value is False
            continue
        if name == "tiling":  # no `Tiling` key: the page's box is unticked, the API leaves it to the setting
            assert value is False and request.tiling is None
            continue
        assert getattr(request, name) == value, name
    assert (page_values["sampler_name"], page_values["scheduler"]) == ("DPM++ 2M", "Karras")
    assert request.sampler_name == "DPM++ 2M Karras"  # resolved to the same choice when the job is accepted
    assert request.override_settings["CLIP_stop_at_last_layers"] == page_settings["CLIP_stop_at_last_layers"] == 2
    assert "sd_model_checkpoint" not in request.override_settings


def test_the_page_swaps_the_checkpoint_only_when_disable_weights_auto_swap_is_off(engine):  # noqa: F811
    """A1111's disable_weights_auto_swap (on by default): a pasted Model hash does not change the checkpoint."""
    text = text_for(engine)
    assert engine.paste.read(text, txt2img=True).checkpoint == engine.checkpoints.find("sd1.safetensors").title
    assert engine.options.values.disable_weights_auto_swap is True
    assert "sd_model_checkpoint" not in paste.field_values(engine, text, txt2img=True)[1]
    engine.set_options({"disable_weights_auto_swap": False})
    try:
        settings = paste.field_values(engine, text, txt2img=False)[1]
        assert settings["sd_model_checkpoint"] == engine.checkpoints.find("sd1.safetensors").title
    finally:
        engine.set_options({"disable_weights_auto_swap": True})


def test_tiling_true_ticks_the_box_and_sets_the_request_field(engine):  # noqa: F811
    text = text_for(engine).replace("RNG: CPU,", "RNG: CPU, Tiling: True,")
    assert engine.paste.read(text, txt2img=True).values["tiling"] is True
    assert paste.field_values(engine, text, txt2img=False)[0]["tiling"] is True
    request = schemas.Txt2ImgRequest(infotext=text)
    routes.apply_infotext(request, engine)
    assert request.tiling is True and "tiling" not in (request.override_settings or {})
    with pytest.raises(BadRequest, match="Tiling"):
        engine.paste.read(text.replace("Tiling: True", "Tiling: maybe"), txt2img=True)


# ---------------------------------------------------------------- the refiner's keys

def refiner_text(engine, refiner: str | None = None, version: str = "v1.10.1") -> str:  # noqa: F811
    """An infotext of a job that switched to the tiny sd1-fp16 checkpoint, as A1111 writes it."""
    if refiner is None:
        info = engine.checkpoints.find("sd1-fp16.safetensors")
        refiner = f"sd1-fp16 [{engine.checkpoints.ensure_hash(info)[:10]}]"
    return ("a castle\nSteps: 12, Sampler: Euler a, CFG scale: 6.5, Seed: 77, Size: 64x96, Denoising strength: 0.5, "
            f"Hires upscale: 2, Refiner: {refiner}, Refiner switch at: 0.6, Hires refiner: both passes, "
            f"Refiner switch by sampling steps: True, Version: {version}")


def test_refiner_keys_fill_the_refiner_fields_and_its_settings(engine):  # noqa: F811
    text = refiner_text(engine)
    title = engine.checkpoints.find("sd1-fp16.safetensors").title  # (with the hash the text's made it compute)
    assert title.endswith("]")
    pasted = engine.paste.read(text, txt2img=True)
    assert (pasted.values["refiner_checkpoint"], pasted.values["refiner_switch_at"]) == (title, 0.6)
    assert pasted.unknown_refiner is None
    assert pasted.settings["hires_fix_refiner_pass"] == "both passes"
    assert pasted.settings["refiner_switch_by_sample_steps"] is True
    values, settings = paste.field_values(engine, refiner_text(engine), txt2img=True)
    assert (values["enable_refiner"], values["refiner_checkpoint"], values["refiner_switch_at"]) == (True, title, 0.6)
    # the checkpoint is found by its name or its title too, as A1111's lookup_checkpoint does
    for name in ("sd1-fp16", title):
        assert paste.field_values(engine, refiner_text(engine, name), True)[0]["refiner_checkpoint"] == title


def test_an_infotext_without_refiner_turns_the_accordion_off_and_steps_switching_off(engine):  # noqa: F811
    values, settings = paste.field_values(engine, text_for(engine), txt2img=False)
    assert values["enable_refiner"] is False
    assert "refiner_checkpoint" not in values and "refiner_switch_at" not in values  # the controls keep theirs
    assert settings["refiner_switch_by_sample_steps"] is False  # A1111's default for a missing key
    assert "hires_fix_refiner_pass" not in settings


@pytest.mark.parametrize("version, by_steps", [("v1.7.0", True), ("v1.7.0-225-g1234abc", True), ("v1.8.0", False),
                                               ("v1.8.0-RC-4-g1234abc", True), ("v1.10.1", False),
                                               ("webui-0.1.0", False)])
def test_refiners_before_a1111_1_8_switched_by_sampling_steps(engine, version, by_steps):  # noqa: F811
    text = refiner_text(engine, version=version).replace("Refiner switch by sampling steps: True, ", "")
    assert engine.paste.read(text, txt2img=True).settings["refiner_switch_by_sample_steps"] is by_steps


def test_an_unknown_refiner_is_kept_on_the_page_and_left_out_by_the_api(engine):  # noqa: F811
    text = refiner_text(engine, "sd_xl_refiner_1.0 [7440042bbd]")
    values, _ = paste.field_values(engine, text, txt2img=True)
    assert (values["enable_refiner"], values["refiner_checkpoint"]) == (True, "sd_xl_refiner_1.0 [7440042bbd]")
    request = schemas.Txt2ImgRequest(infotext=text)
    warnings = routes.apply_infotext(request, engine)
    assert (request.refiner_checkpoint, request.refiner_switch_at) == (None, None)
    assert any("sd_xl_refiner_1.0 [7440042bbd]" in w and "no refiner" in w for w in warnings), warnings


def test_the_api_fills_the_refiner_fields_the_request_leaves_unset(engine):  # noqa: F811
    request = schemas.Txt2ImgRequest(infotext=refiner_text(engine))
    title = engine.checkpoints.find("sd1-fp16.safetensors").title
    routes.apply_infotext(request, engine)
    assert (request.refiner_checkpoint, request.refiner_switch_at) == (title, 0.6)
    assert request.override_settings["hires_fix_refiner_pass"] == "both passes"
    assert request.override_settings["refiner_switch_by_sample_steps"] is True
    request = schemas.Img2ImgRequest(infotext=refiner_text(engine), refiner_switch_at=0.9, init_images=["x"])
    routes.apply_infotext(request, engine)
    assert (request.refiner_checkpoint, request.refiner_switch_at) == (title, 0.9)  # the request's own wins
    request = schemas.Txt2ImgRequest(infotext=refiner_text(engine, "elsewhere [0123456789]"), refiner_checkpoint="")
    assert not any("elsewhere" in w for w in routes.apply_infotext(request, engine))  # "" (no refiner) was asked
    assert request.refiner_checkpoint == ""


# ---------------------------------------------------------------- Soft inpainting's keys

SOFT_TEXT = ("a cat\nSteps: 4, Sampler: Euler a, Seed: 3, Size: 64x64, Denoising strength: 0.7, "
             "Soft inpainting enabled: True, Soft inpainting schedule bias: 1.5, Soft inpainting preservation "
             "strength: 0.5, Soft inpainting transition contrast boost: 4, Soft inpainting mask influence: 0, "
             "Soft inpainting difference threshold: 0.75, Soft inpainting difference contrast: 2, Mask blur: 4")


def test_soft_inpainting_keys_fill_the_accordion_and_the_apis_script_args(engine):  # noqa: F811
    page, _ = paste.field_values(engine, SOFT_TEXT, txt2img=False)
    assert page["soft_inpainting_enabled"] is True
    assert (page["mask_blend_power"], page["composite_difference_threshold"], page["inpaint_detail_preservation"]) \
        == (1.5, 0.75, 4.0)
    request = schemas.Img2ImgRequest(infotext=SOFT_TEXT)
    routes.apply_infotext(request, engine)
    assert request.alwayson_scripts == {"soft inpainting": {"args": [True, 1.5, 0.5, 4.0, 0.0, 0.75, 2.0]}}
    own = schemas.Img2ImgRequest(infotext=SOFT_TEXT, alwayson_scripts={"Soft Inpainting": {"args": [False]}})
    routes.apply_infotext(own, engine)
    assert own.alwayson_scripts == {"Soft Inpainting": {"args": [False]}}  # the request's own args win
    # without its keys the accordion is left as it is (A1111's paste); txt2img has no accordion
    assert "soft_inpainting_enabled" not in paste.field_values(engine, "a cat\nSteps: 4", txt2img=False)[0]
    assert "soft_inpainting_enabled" not in paste.field_values(engine, SOFT_TEXT, txt2img=True)[0]
    with pytest.raises(BadRequest, match="Soft inpainting difference threshold"):
        engine.paste.read(SOFT_TEXT.replace("threshold: 0.75", "threshold: wide"), txt2img=False)


def test_the_pages_soft_inpainting_runs_and_pastes_back(engine):  # noqa: F811
    from PIL import Image, ImageDraw

    from modules.ui import img2img

    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 31, 63), fill=255)
    controls = dict(prompt="a cat", steps=3, width=64, height=64, seed=5, sampler_name="Euler a",
                    scheduler="Automatic", denoising_strength=0.7, mask_blur=4, soft_inpainting_enabled=True,
                    mask_blend_power=2.0, mask_blend_scale=0.5, inpaint_detail_preservation=4,
                    composite_mask_influence=0.25, composite_difference_threshold=0.5,
                    composite_difference_contrast=2)
    params = img2img.make_params(controls, Image.new("RGB", (64, 64), (200, 0, 0)), mask, 0, 1.0)
    assert params.soft_inpainting.composite_mask_influence == 0.25
    text = engine.submit_img2img(params).wait().infotexts[0]
    assert "Soft inpainting schedule bias: 2, " in text and "Soft inpainting mask influence: 0.25" in text
    page, _ = paste.field_values(engine, text, txt2img=False)
    assert {k: page[k] for k in controls if k.startswith(("soft", "mask_blend", "inpaint_", "composite"))} == {
        k: v for k, v in controls.items() if k.startswith(("soft", "mask_blend", "inpaint_", "composite"))}
    off = img2img.make_params({**controls, "soft_inpainting_enabled": False}, Image.new("RGB", (64, 64)), mask, 0,
                              1.0)
    assert off.soft_inpainting is None


def test_inpainting_keys_fill_img2imgs_inpaint_options(engine):  # noqa: F811
    text = ("a cat\nSteps: 4, Seed: 3, Size: 64x64, Denoising strength: 0.7, Mask mode: Inpaint not masked, "
            "Mask blur: 8, Inpaint area: Only masked, Masked area padding: 16, Masked content: latent noise")
    page, _ = paste.field_values(engine, text, txt2img=False)
    assert {k: page[k] for k in ("mask_blur", "inpainting_mask_invert", "inpainting_fill", "inpaint_full_res",
                                 "inpaint_full_res_padding")} == {
        "mask_blur": 8, "inpainting_mask_invert": "Inpaint not masked", "inpainting_fill": "latent noise",
        "inpaint_full_res": "Only masked", "inpaint_full_res_padding": 16}
    # left out: A1111's defaults, except Mask blur, which stays as it is
    plain, _ = paste.field_values(engine, "a cat\nSteps: 4, Seed: 3", txt2img=False)
    assert (plain["inpainting_mask_invert"], plain["inpainting_fill"], plain["inpaint_full_res"],
            plain["inpaint_full_res_padding"]) == ("Inpaint masked", "original", "Whole picture", 32)
    assert "mask_blur" not in plain
    odd, _ = paste.field_values(engine, "a cat\nSteps: 4, Seed: 3, Masked content: sparkles", txt2img=False)
    assert "inpainting_fill" not in odd


def test_hires_sampler_schedule_and_checkpoint_fill_the_hires_controls(engine):  # noqa: F811
    text = ("a cat\nSteps: 4, Sampler: Euler a, Seed: 3, Size: 64x64, Denoising strength: 0.5, "
            "Hires sampler: DPM++ 2M Karras, Hires prompt: a dog, Hires upscale: 2, Hires upscaler: Latent")
    page, _ = paste.field_values(engine, text, txt2img=True)
    assert (page["hr_sampler_name"], page["hr_scheduler"], page["hr_prompt"], page["hr_checkpoint_name"]) == (
        "DPM++ 2M", "Karras", "a dog", "Use same checkpoint")
    request = schemas.Txt2ImgRequest(infotext=text)
    routes.apply_infotext(request, engine)
    assert request.hr_sampler_name == "DPM++ 2M Karras" and request.hr_prompt == "a dog"  # resolved when accepted
    plain, _ = paste.field_values(engine, "a cat\nSteps: 4, Seed: 3, Size: 64x64", txt2img=True)
    assert (plain["hr_sampler_name"], plain["hr_scheduler"]) == ("Use same sampler", "Use same scheduler")


def test_the_pages_hires_controls_run_and_say_only_what_differs(engine):  # noqa: F811
    from modules.ui import txt2img

    controls = dict(prompt="a cat", steps=3, width=64, height=64, seed=5, sampler_name="Euler a",
                    scheduler="Automatic", n_iter=1, batch_size=1, cfg_scale=7, enable_hr=True, hr_scale=1.5,
                    hr_upscaler="Latent", hr_second_pass_steps=2, denoising_strength=0.5, hr_resize_x=0,
                    hr_resize_y=0, hr_checkpoint_name="Use same checkpoint", hr_sampler_name="Use same sampler",
                    hr_scheduler="Use same scheduler", hr_prompt="", hr_negative_prompt="")
    same = engine.submit_txt2img(txt2img.make_params(controls)).wait().infotexts[0]
    assert "Hires sampler" not in same and "Hires schedule type" not in same and "Hires checkpoint" not in same
    other = engine.submit_txt2img(txt2img.make_params({**controls, "hr_sampler_name": "DDIM",
                                                       "hr_prompt": "a dog"})).wait().infotexts[0]
    assert "Hires sampler: DDIM, Hires prompt: a dog, Hires upscale: 1.5" in other, other


# ---------------------------------------------------------------- styles found in the prompts (infotext_styles)

STYLED = "a castle in ink, photo, sharp\nNegative prompt: fog, blurry\nSteps: 4, Seed: 3, Size: 64x64"


def test_styles_in_pasted_prompts_follow_infotext_styles(engine):  # noqa: F811
    (engine.paths.data / "styles.csv").write_text(
        "name,prompt,negative_prompt\nInk,{prompt} in ink,\nPhoto,\"photo, sharp\",blurry\n", encoding="utf-8")

    def read(mode, text=STYLED):
        engine.set_options({"infotext_styles": mode})
        return engine.paste.read(text, txt2img=True).values

    v = read("Apply if any")  # A1111's default
    assert (v["prompt"], v["negative_prompt"], v["styles"]) == ("a castle", "fog", ["Ink", "Photo"])
    assert "styles" not in read("Apply if any", "a dog\nSteps: 4, Seed: 3")  # none found: the list stays
    assert read("Apply", "a dog\nSteps: 4, Seed: 3")["styles"] == []  # Apply: the list is what was found
    v = read("Discard")
    assert (v["prompt"], "styles" in v) == ("a castle", False)
    v = read("Ignore")
    assert (v["prompt"], "styles" in v) == ("a castle in ink, photo, sharp", False)
    # the page gets the same; the API takes the styles only with the infotext's own prompts
    engine.set_options({"infotext_styles": "Apply if any"})
    assert paste.field_values(engine, STYLED, True)[0]["styles"] == ["Ink", "Photo"]
    request = schemas.Txt2ImgRequest(infotext=STYLED)
    routes.apply_infotext(request, engine)
    assert (request.prompt, request.styles) == ("a castle", ["Ink", "Photo"])
    request = schemas.Txt2ImgRequest(infotext=STYLED, prompt="my own")
    routes.apply_infotext(request, engine)
    assert request.prompt == "my own" and not request.styles
    assert request.negative_prompt == "fog, blurry"  # the infotext's, whole
    request = schemas.Txt2ImgRequest(infotext=STYLED, styles=["Ink"])
    routes.apply_infotext(request, engine)
    assert (request.prompt, request.styles) == ("a castle in ink, photo, sharp", ["Ink"])
    # a job from the pasted fields has the infotext's prompts again
    v = read("Apply if any")
    job = engine.txt2img(GenerationParams(prompt=v["prompt"], negative_prompt=v["negative_prompt"],
                                          styles=v["styles"], steps=2, width=64, height=64, save_images=False))
    assert job.infotexts[0].startswith("a castle in ink, photo, sharp\nNegative prompt: fog, blurry\n")


# ---------------------------------------------------------------- A1111's back-compat by Version

# infotext_versions.backcompat in A1111 1.10: a `Version` before v1.7.0-225 (the commit that stopped holding the
# schedule in 16 bits) gets `Downcast alphas_cumprod`; before 1.6.0, DDIM and PLMS get `Pad conds v0`. A1111
# reads the version with packaging after cutting it to "v1.7.0-225": a commit count is a post-release, an RC a
# pre-release (v1.8.0-RC-4 is 1.8.0rc0, before 1.8.0, whatever its commits).
@pytest.mark.parametrize("version, downcast", [("v1.5.2", True), ("v1.6.0", True), ("v1.7.0", True),
                                               ("v1.7.0-224-g1234abc", True), ("v1.7.0-225-g1234abc", False),
                                               ("v1.7.0-RC-300-g1234abc", True), ("v1.8.0-RC", False),
                                               ("v1.10.1", False), ("webui-0.1.0", False)])
def test_infotexts_before_a1111_1_7_0_225_paste_the_downcast_schedule(engine, version, downcast):  # noqa: F811
    text = f"a cat\nSteps: 4, Sampler: Euler, Seed: 1, Size: 64x64, Version: {version}"
    assert pasted_setting(engine, text, "use_downcasted_alpha_bar") == (downcast, downcast)


@pytest.mark.parametrize("sampler, padded", [("DDIM", True), ("PLMS", True), ("Euler a", False)])
def test_ddim_and_plms_infotexts_before_a1111_1_6_paste_pad_conds_v0(engine, sampler, padded):  # noqa: F811
    text = f"a cat\nSteps: 4, Sampler: {sampler}, Seed: 1, Size: 64x64, Version: v1.5.2"
    assert engine.paste.read(text, txt2img=True).settings.get("pad_cond_uncond_v0", False) is padded
    newer = text.replace("v1.5.2", "v1.6.0")
    assert "pad_cond_uncond_v0" not in engine.paste.read(newer, txt2img=True).settings


def test_auto_backcompat_off_pastes_no_version_settings(engine):  # noqa: F811
    text = ("a [red:blue:0.5] cat\nSteps: 4, Sampler: DDIM, Seed: 1, Size: 64x64, Refiner: sd1 [0123456789], "
            "Version: v1.5.2")
    keys = ("use_old_scheduling", "pad_cond_uncond_v0", "use_downcasted_alpha_bar", "refiner_switch_by_sample_steps")
    on = engine.paste.read(text, txt2img=True).settings
    assert all(on[key] is True for key in keys), on
    engine.options.update({"auto_backcompat": False})
    try:
        off = engine.paste.read(text, txt2img=True).settings
        assert not any(off.get(key) for key in keys), off
        # a key the infotext writes itself is still read
        written = engine.paste.read(text.replace("Version:", "Downcast alphas_cumprod: True, Version:"), True)
        assert written.settings["use_downcasted_alpha_bar"] is True
    finally:
        engine.options.update({"auto_backcompat": True})


def test_first_pass_size_infotexts_paste_as_today_s_fields_and_the_old_rule_reads_them_back(engine):  # noqa: F811
    old = "a cat\nSteps: 4, Sampler: Euler, Seed: 1, Size: 1024x768, First pass size: 0x0, Denoising strength: 0.6"
    v = engine.paste.read(old, txt2img=True).values
    assert (v["width"], v["height"], v["hr_resize_x"], v["hr_resize_y"], v["enable_hr"]) == (640, 448, 1024, 768,
                                                                                              True)
    today = "a cat\nSteps: 4, Sampler: Euler, Seed: 1, Size: 640x448, Hires resize: 1024x768, Denoising strength: 0.6"
    engine.options.update({"use_old_hires_fix_width_height": True})
    try:  # Width and Height are the final size under that setting
        v = engine.paste.read(today, txt2img=True).values
        assert (v["width"], v["height"]) == (1024, 768)
    finally:
        engine.options.update({"use_old_hires_fix_width_height": False})


def test_infotext_skip_pasting_leaves_those_keys_out_everywhere_an_infotext_is_read(engine):  # noqa: F811
    text = text_for(engine)
    engine.options.update({"infotext_skip_pasting": ["Seed", "Size-1", "Clip skip"]})
    try:
        pasted = engine.paste.read(text, txt2img=True)
        assert "seed" not in pasted.values and "width" not in pasted.values and pasted.values["height"] == 96
        assert "CLIP_stop_at_last_layers" not in pasted.settings and pasted.settings["randn_source"] == "CPU"
        request = schemas.Txt2ImgRequest(infotext=text)  # the API's field: the request keeps its own seed
        routes.apply_infotext(request, engine)
        assert request.seed == -1 and request.steps == 12
    finally:
        engine.options.update({"infotext_skip_pasting": []})
