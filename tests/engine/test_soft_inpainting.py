"""Soft inpainting (A1111's built-in extension): its maths against A1111's restated per-pixel code
(tests/support/soft_inpainting_ref.py), its settings' infotext and script arguments, and what the engine makes
with it: the mask unrounded, the per-step blend instead of the plain one, the original laid back where the
picture changed little."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from modules import infotext
from modules.generation import soft_inpainting
from modules.generation.params import SoftInpainting
from tests.support import soft_inpainting_ref as ref
from tests.support.img2img import data, engine, init_image, left_half_mask, params  # noqa: F401 (fixtures)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=int)


# --- the maths ---------------------------------------------------------------------------------------

def test_kernel_is_a1111s():
    k = soft_inpainting.gaussian_kernel(1.5, 2)
    assert k.shape == (5, 5) and k[2, 2] == 1.0 and (k > 0).all()  # even the corners (d^2 = 8 < 9) weigh
    assert np.array_equal(k, ref.kernel())
    assert np.array_equal(k, k.T) and np.array_equal(k, k[::-1])


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 9), (16, 16), (70, 9)])  # 70 rows: three bands
@pytest.mark.parametrize("window", [(0.9, 1.0), (0.25, 0.75), (0.0, 1.0), (0.0, 0.05)])
def test_percentile_filter_equals_a1111s_loop_to_the_bit(shape, window):
    gen = np.random.default_rng(shape[0] * 31 + shape[1])
    image = gen.random(shape, dtype=np.float32) * 3
    image[gen.random(shape) < 0.3] = 1.5  # ties: the sort must be stable, as Python's
    k = ref.kernel()
    got = soft_inpainting.percentile_filter(image, k, *window)
    want = ref.percentile_filter(image, k, *window)
    assert got.dtype == np.float32
    assert np.array_equal(got, want)


def test_percentile_filter_is_a_soft_maximum_and_median():
    image = np.zeros((9, 9), dtype=np.float32)
    image[4, 4] = 10.0
    k = ref.kernel()
    high = soft_inpainting.percentile_filter(image, k, 0.9, 1.0)
    assert high[4, 4] > 5 and high[4, 5] > 0 and high[0, 0] == 0  # the spike spreads to its neighbours
    median = soft_inpainting.percentile_filter(image, k, 0.25, 0.75)
    assert median.max() == 0  # a lone spike is not the median of any window


def test_step_blend_equals_a1111s():
    gen = torch.Generator().manual_seed(3)
    init, current = torch.randn((2, 4, 8, 8), generator=gen), torch.randn((2, 4, 8, 8), generator=gen) * 2
    mask = torch.rand((1, 1, 8, 8), generator=gen)
    mask[..., 0, :] = 0
    mask[..., 1, :] = 1
    for settings in (SoftInpainting(), SoftInpainting(mask_blend_power=0.5, mask_blend_scale=2.0,
                                                      inpaint_detail_preservation=1.0)):
        for sigma in (14.6, 1.0, 0.03):
            s = torch.tensor([sigma])
            got = soft_inpainting.blend(settings, init, current, mask, s)
            want = ref.step_blend(init, current, mask, s[0], settings.mask_blend_power, settings.mask_blend_scale,
                                  settings.inpaint_detail_preservation)
            assert torch.equal(got, want)
    got = soft_inpainting.blend(SoftInpainting(), init, current, mask, torch.tensor([5.0]))
    assert torch.allclose(got[..., 0, :], init[..., 0, :], atol=1e-5)  # unmasked: the init latent
    assert torch.allclose(got[..., 1, :], current[..., 1, :], atol=1e-5)  # masked: the model's


@pytest.mark.parametrize("kw", [{}, dict(composite_mask_influence=0.6, composite_difference_threshold=1.5,
                                         composite_difference_contrast=4.0, mask_blend_scale=1.5)])
def test_overlay_masks_equal_a1111s_to_the_bit(kw):
    settings = SoftInpainting(**kw)
    gen = torch.Generator().manual_seed(8)
    init = torch.randn((2, 4, 8, 8), generator=gen)
    samples = init + torch.randn((2, 4, 8, 8), generator=gen) * torch.linspace(0, 1.5, 8)
    mask = torch.rand((1, 1, 8, 8), generator=gen)
    got = soft_inpainting.overlay_masks(settings, mask, init, samples, 64, 64)
    want = ref.overlay_masks(mask, init, samples, 64, 64, settings.mask_blend_scale,
                             settings.composite_mask_influence, settings.composite_difference_threshold,
                             settings.composite_difference_contrast)
    assert len(got) == 2
    for g, w in zip(got, want):
        assert g.mode == "L" and g.size == (64, 64)
        assert g.tobytes() == w.tobytes()
    left, right = np.asarray(got[0])[:, :16].mean(), np.asarray(got[0])[:, 48:].mean()
    assert left < right  # where the latent moved more, more of the generated picture shows


# --- settings: infotext and script arguments ---------------------------------------------------------

def test_infotext_fields_and_back():
    s = SoftInpainting(mask_blend_power=1.5, composite_difference_contrast=3.0)
    fields = s.infotext_fields()
    assert list(fields) == ["Soft inpainting enabled", "Soft inpainting schedule bias",
                            "Soft inpainting preservation strength", "Soft inpainting transition contrast boost",
                            "Soft inpainting mask influence", "Soft inpainting difference threshold",
                            "Soft inpainting difference contrast"]
    text = "a cat\nSteps: 4, " + ", ".join(f"{k}: {v}" for k, v in fields.items())
    assert "Soft inpainting schedule bias: 1.5, Soft inpainting preservation strength: 0.5, " \
           "Soft inpainting transition contrast boost: 4" in text  # A1111's page writes 4, not 4.0
    assert SoftInpainting.from_infotext(infotext.parse(text)) == s
    assert SoftInpainting.from_infotext(infotext.parse("a cat\nSteps: 4")) is None
    assert SoftInpainting.from_infotext({"Soft inpainting enabled": "True"}) == SoftInpainting()
    with pytest.raises(ValueError, match="Soft inpainting mask influence"):
        SoftInpainting.from_infotext({"Soft inpainting enabled": "True", "Soft inpainting mask influence": "x"})


def test_script_args_as_a1111s_api_takes_them():
    assert SoftInpainting.from_script_args([False, 2, 2]) is None
    assert SoftInpainting.from_script_args([]) is None
    assert SoftInpainting.from_script_args([True]) == SoftInpainting()
    s = SoftInpainting.from_script_args([True, 2, 1.5])  # the rest keep their defaults, as in A1111
    assert (s.mask_blend_power, s.mask_blend_scale, s.inpaint_detail_preservation) == (2, 1.5, 4)
    assert SoftInpainting.from_script_args(s.script_args()) == s
    with pytest.raises(ValueError, match="at most 7"):
        SoftInpainting.from_script_args([True] * 8)
    with pytest.raises(ValidationError, match="inpaint_detail_preservation"):
        SoftInpainting.from_script_args([True, 1, 0.5, 0])  # it divides by it
    with pytest.raises(ValidationError):
        SoftInpainting.from_script_args([True, float("nan")])


# --- the engine --------------------------------------------------------------------------------------

def test_infotext_keys_come_before_img2imgs_own(engine):
    result = engine.img2img(params(mask=left_half_mask(), soft_inpainting=SoftInpainting(), steps=4))
    text = result.infotexts[0]
    assert "Soft inpainting enabled: True, Soft inpainting schedule bias: 1, Soft inpainting preservation " \
           "strength: 0.5, Soft inpainting transition contrast boost: 4, Soft inpainting mask influence: 0, " \
           "Soft inpainting difference threshold: 0.5, Soft inpainting difference contrast: 2, Mask blur: 4" in text
    plain = engine.img2img(params(soft_inpainting=SoftInpainting(), steps=4))  # no mask: A1111 does nothing
    assert "Soft inpainting" not in plain.infotexts[0]


def test_a_grey_mask_is_not_rounded(engine):
    """A1111's extension turns mask rounding off: a mask whose alpha is 100 everywhere is all "keep" when rounded
    (A1111 rounds a transparent mask's alpha at 128), so plain inpainting gives the picture back, and soft
    inpainting repaints it partly."""
    grey = Image.new("RGBA", (64, 64), (255, 255, 255, 100))
    plain = engine.img2img(params(mask=grey, mask_blur=0, steps=4, denoising_strength=0.9))
    assert np.abs(pixels(plain.images[0]) - pixels(init_image())).max() <= 1
    soft = engine.img2img(params(mask=grey, mask_blur=0, steps=4, denoising_strength=0.9,
                                 soft_inpainting=SoftInpainting(composite_difference_threshold=0)))
    assert np.abs(pixels(soft.images[0]) - pixels(init_image())).mean() > 5


def test_without_preservation_or_threshold_it_is_plain_img2img(engine):
    """Preservation strength 0 makes every step's blend weight 1 (the model's latent) and difference threshold 0
    lays nothing back: what is left is img2img without a mask, up to the blend's 1e-5 length guard."""
    kw = dict(steps=4, denoising_strength=0.8, sampler_name="Euler", inpainting_fill=1)
    free = engine.img2img(params(**kw)).images[0]
    soft = engine.img2img(params(**kw, mask=left_half_mask(), soft_inpainting=SoftInpainting(
        mask_blend_scale=0, composite_difference_threshold=0))).images[0]
    diff = np.abs(pixels(soft) - pixels(free))
    assert diff.max() <= 2 and diff.mean() < 0.1
    masked = engine.img2img(params(**kw, mask=left_half_mask())).images[0]
    assert np.abs(pixels(masked) - pixels(free)).mean() > 5  # plain inpainting keeps the right half instead


def test_a_higher_threshold_lays_more_of_the_original_back(engine):
    """The sampling is the same whatever the difference threshold; only how much of the original is laid back
    over the repainted half changes, and it grows with the threshold (A1111 composites it even with overlay
    off). The tiny model's latents move far (15-35 where repainted), so the contrast is low enough for
    thresholds up to 8 to matter."""
    base = dict(mask=left_half_mask(), steps=4, denoising_strength=0.9, inpainting_fill=1)
    before = pixels(init_image())
    away = []
    for threshold in (0.0, 2.0, 8.0):
        image = engine.img2img(params(**base, soft_inpainting=SoftInpainting(
            composite_difference_threshold=threshold, composite_difference_contrast=0.5))).images[0]
        away.append(np.abs(pixels(image)[:, :24] - before[:, :24]).mean())
    assert away[0] > away[1] > away[2]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_soft_inpainting_repaints_the_mask_and_keeps_the_rest(engine, sampler):
    """At 128x128: the changed area's reach (the blurred mask's partial latent columns, the 5x5 soft maximum, the
    Lanczos resize and the blur of 4) stays left of x = 108. (DDIM, PLMS and UniPC do not keep it in A1111: see
    the next test.)"""
    size = (128, 128)
    base = dict(init_images=[init_image(size)], mask=left_half_mask(size), width=128, height=128, steps=6,
                denoising_strength=0.9, sampler_name=sampler, batch_size=2)
    soft = engine.img2img(params(**base, soft_inpainting=SoftInpainting()))
    plain = engine.img2img(params(**base))
    before = pixels(init_image(size))
    for image in soft.images:
        out = pixels(image)
        assert np.abs(out[:, 108:] - before[:, 108:]).max() <= 2  # far from the mask: the original
        assert np.abs(out[:, :40] - before[:, :40]).mean() > 5  # inside it: repainted
    assert soft.images[0].tobytes() != plain.images[0].tobytes()
    assert soft.images[0].tobytes() != soft.images[1].tobytes()  # each image its own mask and seed


def test_timestep_samplers_warn_that_the_outside_may_change(engine):
    """A1111 blends these samplers' U-Net input, not their latent, and soft inpainting skips the blend at the end,
    so outside the mask the latent drifts (test_img2img checks the maths): said, not hidden."""
    result = engine.img2img(params(mask=left_half_mask(), steps=4, sampler_name="DDIM",
                                   soft_inpainting=SoftInpainting()))
    assert any("Soft inpainting with DDIM" in w for w in result.warnings)
    euler = engine.img2img(params(mask=left_half_mask(), steps=4, soft_inpainting=SoftInpainting()))
    assert not any("Soft inpainting" in w for w in euler.warnings)


def test_only_masked_lays_the_original_back_around_the_crop(engine):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 24, 24))
    result = engine.img2img(params(mask=mask, inpaint_full_res=True, inpaint_full_res_padding=4, steps=4,
                                   denoising_strength=0.9, soft_inpainting=SoftInpainting()))
    out, before = pixels(result.images[0]), pixels(init_image())
    assert "Inpaint area: Only masked" in result.infotexts[0]
    assert np.array_equal(out[40:, 40:], before[40:, 40:])  # outside the crop box
    assert np.abs(out[8:24, 8:24] - before[8:24, 8:24]).mean() > 5
