"""Token merging (A1111's token_merging_ratio, token_merging_ratio_img2img and token_merging_ratio_hr settings).

A1111 (modules/sd_models.py `apply_token_merging`, v1.10) patches its model with the tomesd library:
`tomesd.apply_patch(sd_model, ratio=..., use_rand=False, merge_attn=True, merge_crossattn=False,
merge_mlp=False)`. The reference here is that call on a copy of the same diffusers U-Net (tomesd patches diffusers'
BasicTransformerBlock class as well as LDM's): our hooks must give the same numbers. Which ratio a pass uses is
A1111's `get_token_merging_ratio` (modules/processing.py), and the infotext keys are those of its `create_infotext`.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import tomesd
import torch

from modules.generation.context import token_merging_ratios
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.models import token_merging
from modules.settings import Settings
from tests.support.generation import engine, params  # noqa: F401  (fixture)
from tests.support.img2img import init_image
from tests.support.tiny_models import SDXL_BIGG_WIDTH, TEXT_WIDTH, build


def a1111_patched(unet, ratio):
    ref = copy.deepcopy(unet)
    tomesd.apply_patch(ref, ratio=ratio, use_rand=False, merge_attn=True, merge_crossattn=False, merge_mlp=False)
    return ref


def unet_inputs(family, rows, columns, seed=1):
    g = torch.Generator().manual_seed(seed)
    width = TEXT_WIDTH[family]
    return torch.randn(2, 4, rows, columns, generator=g), torch.tensor([500.0, 500.0]), \
        torch.randn(2, 7, width, generator=g)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_a_unet_merges_as_tomesd_does_for_a1111(family):
    unet = build(family).unet
    assert token_merging.prepare(unet) == 7 and token_merging.prepare(unet) == 7  # once: the second adds nothing
    for ratio in (0.5, 0.3, 0.9):
        reference = a1111_patched(unet, ratio)
        # square, wide, and sides that are not even (a cell of the 2x2 grid cut short)
        for rows, columns in ((16, 16), (12, 20), (13, 9)):
            x, t, context = unet_inputs(family, rows, columns)
            with torch.no_grad():
                plain = unet(x, t, context).sample
                with token_merging.merging(ratio):
                    ours = unet(x, t, context).sample
                theirs = reference(x, t, context).sample
                after = unet(x, t, context).sample
            assert torch.equal(ours, theirs), (ratio, rows, columns)
            assert (ours - plain).abs().max() > 1e-3  # it does change the output
            assert torch.equal(after, plain)  # the ratio is back to 0 after the block: nothing merges


def test_only_the_thread_that_set_the_ratio_merges():
    unet = build("sd1").unet
    token_merging.prepare(unet)
    x, t, context = unet_inputs("sd1", 16, 16)
    with torch.no_grad():
        plain = unet(x, t, context).sample
        other = []
        with token_merging.merging(0.5):
            merged = unet(x, t, context).sample
            worker = threading.Thread(target=lambda: other.append(unet(x, t, context).sample))
            worker.start()
            worker.join()
    assert torch.equal(other[0], plain) and not torch.equal(merged, plain)


def test_the_ratio_comes_back_after_an_error_in_the_block():
    assert token_merging.ratio() == 0
    with pytest.raises(RuntimeError):
        with token_merging.merging(0.5):
            with token_merging.merging(0.3):
                assert token_merging.ratio() == 0.3
                raise RuntimeError("interrupted")
    assert token_merging.ratio() == 0 and getattr(token_merging._local, "pending", None) is None


def test_sdxl_has_no_transformer_at_full_size_so_nothing_merges():
    unet = build("sdxl").unet  # its first level has no attention, as SDXL's: tomesd merges nowhere either
    token_merging.prepare(unet)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 16, 16, generator=g)
    context = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    added = {"text_embeds": torch.randn(2, SDXL_BIGG_WIDTH, generator=g), "time_ids": torch.randn(2, 6, generator=g)}
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        plain = unet(x, t, context, added_cond_kwargs=added).sample
        with token_merging.merging(0.5):
            merged = unet(x, t, context, added_cond_kwargs=added).sample
        theirs = a1111_patched(unet, 0.5)(x, t, context, added_cond_kwargs=added).sample
    assert torch.equal(plain, merged) and torch.equal(theirs, plain)


# --- which ratio a pass uses (A1111's get_token_merging_ratio) ----------------------------------------------------

def test_the_ratio_of_each_pass():
    s = Settings(token_merging_ratio=0.5)
    txt = GenerationParams(prompt="x")
    assert token_merging_ratios(txt, s) == (0.5, 0.0)  # no Hires. fix: no hires ratio
    hires = GenerationParams(prompt="x", enable_hr=True)
    assert token_merging_ratios(hires, s) == (0.5, 0.5)  # the hires pass falls back on the first pass's
    assert token_merging_ratios(hires, Settings(token_merging_ratio=0.5, token_merging_ratio_hr=0.2)) == (0.5, 0.2)
    assert token_merging_ratios(hires, Settings(token_merging_ratio_hr=0.2)) == (0.0, 0.2)
    i2i = Img2ImgParams(prompt="x", init_images=[init_image()])
    both = Settings(token_merging_ratio=0.5, token_merging_ratio_img2img=0.3)
    assert token_merging_ratios(i2i, both) == (0.3, 0.0)  # img2img's own wins over the general one
    assert token_merging_ratios(i2i, s) == (0.5, 0.0)  # ... when it is set
    # a request (a pasted infotext) that names token_merging_ratio gets it, even in img2img
    named = Img2ImgParams(prompt="x", init_images=[init_image()], override_settings={"token_merging_ratio": 0.5})
    assert token_merging_ratios(named, both) == (0.5, 0.0)


# --- through a job --------------------------------------------------------------------------------------------

def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_a_job_merges_writes_the_infotext_and_pastes_back(engine):  # noqa: F811
    kw = dict(width=128, height=128, steps=3, save_images=False)
    plain = engine.txt2img(params(**kw))
    merged = engine.txt2img(params(**kw, override_settings={"token_merging_ratio": 0.5}))
    again = engine.txt2img(params(**kw, override_settings={"token_merging_ratio": 0.5}))
    assert np.array_equal(pixels(merged), pixels(again)) and not np.array_equal(pixels(merged), pixels(plain))
    assert np.array_equal(pixels(engine.txt2img(params(**kw))), pixels(plain))  # the next job without it: as before
    assert "Token merging ratio" not in plain.infotexts[0]
    # A1111's place for the key: after Clip skip and ENSD, before RNG
    assert ", Model: sd1, Token merging ratio: 0.5, RNG: CPU," in merged.infotexts[0], merged.infotexts[0]
    assert "Token merging ratio hr" not in merged.infotexts[0]  # without Hires. fix

    pasted = engine.paste.read(merged.infotexts[0], txt2img=True)
    assert pasted.settings["token_merging_ratio"] == 0.5
    hr = engine.paste.read("a cat\nSteps: 4, Seed: 1, Token merging ratio: 0.3, Token merging ratio hr: 0.7",
                           txt2img=True)
    assert hr.settings["token_merging_ratio"] == 0.3 and hr.settings["token_merging_ratio_hr"] == 0.7


def first_pass(result) -> np.ndarray:
    """The job's first pass as saved before the hires pass (save_images_before_highres_fix)."""
    from pathlib import Path

    from PIL import Image

    saved = sorted(Path(result.paths[0]).parent.glob("*-before-highres-fix.png"))[-1]
    with Image.open(saved) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_the_hires_pass_merges_with_its_own_ratio(engine):  # noqa: F811
    kw = dict(width=64, height=64, steps=2, enable_hr=True, hr_scale=2, hr_upscaler="Latent", save_images=True)
    keep = {"save_images_before_highres_fix": True}
    plain = engine.txt2img(params(**kw, override_settings=keep))
    plain_first = first_pass(plain)
    second = engine.txt2img(params(**kw, override_settings={**keep, "token_merging_ratio_hr": 0.5}))
    assert not np.array_equal(pixels(second), pixels(plain))  # the 128x128 pass merges...
    assert np.array_equal(first_pass(second), plain_first)  # ... and the first does not
    assert "Token merging ratio hr: 0.5" in second.infotexts[0]
    assert "Token merging ratio:" not in second.infotexts[0]
    first = engine.txt2img(params(**kw, override_settings={**keep, "token_merging_ratio": 0.5,
                                                           "token_merging_ratio_hr": 0.3}))
    assert not np.array_equal(first_pass(first), plain_first)  # the first pass's own ratio
    assert "Token merging ratio: 0.5, Token merging ratio hr: 0.3" in first.infotexts[0]
    both = engine.txt2img(params(**kw, override_settings={"token_merging_ratio": 0.5}))
    assert "Token merging ratio: 0.5, Token merging ratio hr: 0.5" in both.infotexts[0]  # A1111's fallback


def test_img2img_uses_its_own_ratio(engine):  # noqa: F811
    from tests.support.img2img import params as i2i_params

    plain = engine.img2img(i2i_params(steps=3))
    merged = engine.img2img(i2i_params(steps=3, override_settings={"token_merging_ratio_img2img": 0.4}))
    assert not np.array_equal(pixels(merged), pixels(plain))
    assert "Token merging ratio: 0.4" in merged.infotexts[0]


def test_a_hires_checkpoint_and_the_refiner_merge_too(engine, data_dir):  # noqa: F811
    kw = dict(width=64, height=64, steps=2, enable_hr=True, hr_scale=2, hr_upscaler="Latent", save_images=False,
              hr_checkpoint_name="sd1-fp16.safetensors")
    plain = engine.txt2img(params(**kw))
    merged = engine.txt2img(params(**kw, override_settings={"token_merging_ratio_hr": 0.5}))
    assert not np.array_equal(pixels(merged), pixels(plain))
    # a refiner with the job's own weights (another file) gives the job's own picture only if it merges as well
    import shutil

    folder = data_dir / "models" / "Stable-diffusion"
    for ext in ("safetensors", "yaml"):  # the tiny model's config beside it too
        shutil.copyfile(folder / f"sd1.{ext}", folder / f"sd1-twin.{ext}")
    engine.checkpoints.refresh()
    kw = dict(width=64, height=64, steps=4, save_images=False, override_settings={"token_merging_ratio": 0.5})
    alone = engine.txt2img(params(**kw))
    refined = engine.txt2img(params(**kw, refiner_checkpoint="sd1-twin.safetensors", refiner_switch_at=0.5))
    assert "Refiner: sd1-twin" in refined.infotexts[0]
    assert np.array_equal(pixels(refined), pixels(alone))
