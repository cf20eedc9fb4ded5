"""The img2img settings img2img_fix_steps (steps actually run, the schedule they come from),
inpainting_mask_weight (the masked-image conditioning of 9-channel inpainting models), inpainting's mask
pictures (save_mask, save_mask_composite, return_mask, return_mask_composite) and color correction
(img2img_color_correction, save_images_before_color_correction)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import sys

import cv2
import numpy as np
import pytest
from blendmodes.blend import BlendType, blendLayers
from skimage import exposure
import torch
from PIL import Image, ImageDraw

from modules import images
from modules.generation import context, pipeline, samplers
from modules.generation.params import SoftInpainting
from modules.services.errors import BadRequest
from tests.support.img2img import data, engine, init_image, left_half_mask, manager, params  # noqa: F401 (fixtures)

MASK_PICTURES = {"save_mask": True, "save_mask_composite": True, "return_mask": True, "return_mask_composite": True}


def test_img2img_schedule_rule():
    assert samplers.img2img_schedule(10, 0.5) == (10, 5)  # A1111's default: t_enc + 1 = 6 steps run
    assert samplers.img2img_schedule(10, 0.5, fixed=True) == (20, 9)  # 10 run, the last of 20
    assert samplers.img2img_schedule(20, 0.75, fixed=True) == (26, 19)
    assert samplers.img2img_schedule(8, 1.0, fixed=True) == (8, 7)  # min(strength, 0.999)
    assert samplers.img2img_schedule(8, 0.0, fixed=True) == (1, 0)


def steps_seen(model, p, monkeypatch, **kw) -> tuple[list[tuple[int, int]], list[int]]:
    """(step, of) as Hooks.on_step reports them for one img2img batch, and the length of the schedule the
    sampler was prepared with (samplers.prepare, watched and run as it is)."""
    calls, schedules = [], []
    hooks = pipeline.Hooks(on_step=lambda i, n, latent: calls.append((i, n)))
    ctx = dataclasses.replace(context.resolve(p), **kw)
    inputs = pipeline.prepare_img2img(model, ctx)
    real = samplers.prepare

    def watched(choice, steps, *args, **kwargs):
        schedules.append(steps)
        return real(choice, steps, *args, **kwargs)

    monkeypatch.setattr(samplers, "prepare", watched)
    list(pipeline.img2img(model, ctx, hooks=hooks, inputs=inputs))
    monkeypatch.undo()
    return calls, schedules


# k-diffusion samplers run t_enc + 1 steps; A1111's UniPC runs one per timestep of timesteps[:t_enc], t_enc
@pytest.mark.parametrize("sampler,plain,fixed", [("Euler a", 6, 10), ("DPM++ 2M", 6, 10), ("UniPC", 5, 9)])
def test_fix_steps_runs_a1111s_step_counts(manager, sampler, plain, fixed, monkeypatch):
    model = manager.get(manager.checkpoints.find("sd1.safetensors"))
    p = params(steps=10, denoising_strength=0.5, sampler_name=sampler)
    calls, schedules = steps_seen(model, p, monkeypatch)
    assert schedules == [10] and len(calls) == plain and calls[-1] == (plain, plain)  # t_enc = int(0.5 * 10)
    calls, schedules = steps_seen(model, p, monkeypatch, fix_steps=True)
    # the end of a 20-step schedule, with t_enc = 10 - 1 (A1111's setup_img2img_steps)
    assert schedules == [20] and len(calls) == fixed and calls[-1] == (fixed, fixed)


def test_engine_reads_img2img_fix_steps(engine):
    job = engine.submit_img2img(params(steps=10, denoising_strength=0.3))
    job.wait()
    assert job.state.sampling_steps == 4
    job = engine.submit_img2img(params(steps=10, denoising_strength=0.3,
                                       override_settings={"img2img_fix_steps": True}))
    result = job.wait()
    assert job.state.sampling_steps == 10 and "Steps: 10," in result.infotexts[0]


def test_inpainting_mask_weight_blends_the_masked_image_conditioning(engine):
    engine.load_checkpoint("sd1-inpainting")
    model = engine.checkpoints.current
    assert model.config.in_channels == 9
    p = params(mask=left_half_mask(), mask_blur=0, inpainting_fill=1)  # "original": the init image is the source
    pixels = pipeline.image_to_tensor(init_image())[None]
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32] = 1.0
    half = pipeline.prepare_img2img(model, dataclasses.replace(context.resolve(p), mask_weight=0.5)).plan.image_cond
    assert half.shape == (1, 5, 8, 8)
    # the mask channel is the mask itself; the image is lerp(original, masked, 0.5)
    assert torch.equal(half[0, 0, :, :4], torch.ones(8, 4)) and torch.equal(half[0, 0, :, 4:], torch.zeros(8, 4))
    blended = pixels * 0.5 + (pixels * (1 - mask)) * 0.5
    assert torch.allclose(half[:, 1:], pipeline.encode(model, blended), atol=1e-5)
    assert not torch.allclose(half[:, 1:], pipeline.encode(model, pixels * (1 - mask)), atol=1e-3)
    # the default, 1: the masked area is grey
    full = pipeline.prepare_img2img(model, context.resolve(p)).plan.image_cond
    assert torch.allclose(full[:, 1:], pipeline.encode(model, pixels * (1 - mask)), atol=1e-5)
    # 0: the original image
    none = pipeline.prepare_img2img(model, dataclasses.replace(context.resolve(p), mask_weight=0.0)).plan.image_cond
    assert torch.allclose(none[:, 1:], pipeline.encode(model, pixels), atol=1e-5)

    inpaint = {"sd_model_checkpoint": "sd1-inpainting"}
    weighted = engine.img2img(params(mask=left_half_mask(), override_settings={**inpaint,
                                                                              "inpainting_mask_weight": 0.5}))
    default = engine.img2img(params(mask=left_half_mask(), override_settings=inpaint))
    assert "Conditional mask weight: 0.5" in weighted.infotexts[0]
    assert "Conditional mask weight: 1," in default.infotexts[0]
    assert weighted.images[0].tobytes() != default.images[0].tobytes()
    plain = engine.img2img(params(override_settings={"inpainting_mask_weight": 0.5, "sd_model_checkpoint": "sd1"}))
    assert "Conditional mask weight" not in plain.infotexts[0]


# --- the mask pictures: A1111's processing.py (v1.10) after each image: `mask_for_overlay.convert('RGB')` and
# Image.composite(original_denoised_image as RGBa, a clear RGBa, the mask resized by mode 2), saved with the suffixes
# "-mask" / "-mask-composite" and appended after the image

def assert_composite_of(composite: Image.Image, mask: Image.Image, generated: Image.Image) -> np.ndarray:
    """The composite is the generated picture through the mask: alpha = the mask, the pixels where it is opaque."""
    c, m = np.asarray(composite), np.asarray(mask.convert("L"))
    assert composite.mode == "RGBA" and composite.size == mask.size == generated.size
    assert np.array_equal(c[..., 3], m)
    opaque = m == 255
    assert np.array_equal(c[opaque][:, :3], np.asarray(generated.convert("RGB"))[opaque])
    assert not c[m == 0][:, :3].any()  # premultiplied: a clear pixel has no colour
    return m


def test_mask_pictures_are_saved_and_shown_after_each_image(engine, data):
    p = params(mask=left_half_mask(), mask_blur=4, inpaint_full_res=False, inpainting_fill=1, batch_size=2,
               save_images=True, override_settings=MASK_PICTURES)
    result = engine.submit_img2img(p).wait()
    assert len(result.images) == 6 and result.seeds == [7, 7, 7, 8, 8, 8]
    assert result.infotexts[1] == result.infotexts[2] == result.infotexts[0] != result.infotexts[3]
    assert result.grid is not None and result.grid.size == (128, 64)  # the grid has the two images only
    init = np.asarray(init_image())
    for first in (0, 3):
        image, mask, composite = result.images[first:first + 3]
        assert mask.mode == "RGB" and mask.size == image.size
        m = assert_composite_of(composite, mask, image)
        assert 0.4 < (m == 255).mean() <= 0.5 and ((m > 0) & (m < 255)).any()  # the blurred mask, doubled
        kept = m == 0
        assert kept.mean() > 0.3 and np.array_equal(np.asarray(image)[kept], init[kept])  # original where it is 0
        names = [Path(p).name for p in result.paths[first:first + 3]]
        assert names[1].endswith(f"-{result.seeds[first]}-mask.png"), names
        assert names[2].endswith(f"-{result.seeds[first]}-mask-composite.png"), names
        for path, shown in zip(result.paths[first:first + 3], (image, mask, composite)):
            with Image.open(path) as saved:
                assert images.read_infotext(saved) == result.infotexts[first]
                assert np.array_equal(np.asarray(saved), np.asarray(shown))


def test_only_masked_and_soft_inpainting_mask_pictures(engine):
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    only = params(init_images=[init_image((128, 128))], mask=mask, mask_blur=2, inpaint_full_res=True,
                  inpaint_full_res_padding=0, override_settings={"return_mask": True, "return_mask_composite": True})
    result = engine.submit_img2img(only).wait()
    image, mask_picture, composite = result.images
    assert mask_picture.size == composite.size == image.size == (128, 128)  # the whole picture, as the result
    m = assert_composite_of(composite, mask_picture, image)
    assert m[80:, 80:].max() == 0 and m[30, 30] == 255  # the full-size blurred mask ("Only masked": not doubled)
    assert 0 < m[16, 30] < 255

    soft = params(mask=left_half_mask(), mask_blur=4, inpaint_full_res=False, batch_size=2,
                  soft_inpainting=SoftInpainting(), override_settings={"return_mask": True})
    result = engine.submit_img2img(soft).wait()
    assert len(result.images) == 4  # each image and its own overlay mask
    first, second = np.asarray(result.images[1]), np.asarray(result.images[3])
    assert len(np.unique(first)) > 8  # soft inpainting's overlay: shades, not a blurred edge's few
    assert not np.array_equal(first, second)  # made from how far each image moved


def test_no_mask_pictures_without_a_mask_or_in_a_scripts_cells(engine):
    result = engine.submit_img2img(params(override_settings=MASK_PICTURES)).wait()
    assert len(result.images) == 1  # plain img2img has no mask
    result = engine.submit_script("img2img", "Prompts from file or textbox",
                                  params(mask=left_half_mask(), override_settings=MASK_PICTURES),
                                  [False, False, "start", "a cat\na dog"]).wait()
    assert len(result.images) == 2  # the script's images are its cells' images


# --- color correction: A1111's processing.py, restated with the same libraries --------------------------------

def a1111_color_correction(target: Image.Image, image: Image.Image) -> Image.Image:
    """setup_color_correction(target) then apply_color_correction(that, image), as A1111 v1.10 writes them."""
    correction = cv2.cvtColor(np.asarray(target.copy()), cv2.COLOR_RGB2LAB)
    matched = exposure.match_histograms(cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2LAB), correction,
                                        channel_axis=2)
    recoloured = Image.fromarray(cv2.cvtColor(matched, cv2.COLOR_LAB2RGB).astype("uint8"))
    return blendLayers(recoloured, image, BlendType.LUMINOSITY).convert("RGB")


def saved_before_and_after(result) -> tuple[Image.Image, Image.Image]:
    path = Path(result.paths[0])
    before = sorted(path.parent.glob("*-before-color-correction.png"))[-1]
    assert int(before.name[:5]) == int(path.name[:5]) - 1  # saved first, as A1111 saves it
    with Image.open(before) as b, Image.open(path) as a:
        return b.convert("RGB"), a.convert("RGB")


CORRECTED = {"img2img_color_correction": True, "save_images_before_color_correction": True}


def test_color_correction_matches_a1111_towards_the_encoded_input(engine):
    warm = init_image((96, 80))  # resized to 64x64 for encoding: that resized picture is the target
    p = params(init_images=[warm], denoising_strength=0.6, save_images=True)
    plain = engine.submit_img2img(p).wait()
    corrected = engine.submit_img2img(p.model_copy(update={"override_settings": CORRECTED})).wait()
    before, after = saved_before_and_after(corrected)
    assert np.array_equal(np.asarray(before), np.asarray(plain.images[0]))  # the same job, uncorrected
    target = images.resize_image(0, warm, 64, 64)
    expected = a1111_color_correction(target, plain.images[0])
    assert np.array_equal(np.asarray(corrected.images[0]), np.asarray(expected))
    assert np.array_equal(np.asarray(after), np.asarray(expected))
    assert not np.array_equal(np.asarray(expected), np.asarray(plain.images[0]))

    # inpainting: corrected before the original goes back (outside the mask the original stays exact), and
    # towards the filled input ("fill" paints the masked area before encoding, as A1111's target is taken)
    q = params(mask=left_half_mask(), mask_blur=0, inpainting_fill=0, save_images=True,
               override_settings={**CORRECTED, "return_mask_composite": True})
    result = engine.submit_img2img(q).wait()
    image, composite = result.images
    before, _ = saved_before_and_after(result)
    init = np.asarray(init_image())
    assert np.array_equal(np.asarray(image)[:, 32:], init[:, 32:])
    assert np.array_equal(np.asarray(before)[:, 32:], init[:, 32:])
    generated = Image.fromarray(np.asarray(composite)[..., :3])  # the corrected picture inside the mask
    assert not np.array_equal(np.asarray(before)[:, :32], np.asarray(image)[:, :32])
    assert np.array_equal(np.asarray(image)[:, :32], np.asarray(generated)[:, :32])


def test_loopback_corrects_every_loop_towards_the_original(engine, data):
    folder = data / "outputs" / "img2img-images"
    earlier = set(folder.rglob("*.png"))
    warm = init_image((96, 80))
    result = engine.submit_script("img2img", "Loopback", params(init_images=[warm], save_images=True,
                                                                override_settings=CORRECTED),
                                  [2, 0.5, "Linear", "None"]).wait()
    assert len(result.images) == 2
    made = sorted(set(folder.rglob("*.png")) - earlier)
    befores = [f for f in made if f.name.endswith("-before-color-correction.png")]
    assert len(made) == 4 and len(befores) == 2
    for before, shown in zip(befores, result.images):
        after = made[made.index(before) + 1]  # each loop's image right after its uncorrected copy
        with Image.open(before) as b, Image.open(after) as a:
            expected = a1111_color_correction(warm.convert("RGB"), b.convert("RGB"))  # the raw init image
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(expected))
        assert np.array_equal(np.asarray(shown), np.asarray(expected))
    # plain img2img of that picture corrects towards it as encoded (resized), which is not the same
    with Image.open(befores[0]) as b:
        resized = a1111_color_correction(images.resize_image(0, warm, 64, 64), b.convert("RGB"))
    assert not np.array_equal(np.asarray(resized), np.asarray(result.images[0]))


def test_color_correction_without_its_libraries_says_what_is_missing(engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if opencv were not installed
    with pytest.raises(BadRequest, match="img2img_color_correction.* needs opencv-python-headless.*cv2"):
        engine.submit_img2img(params(override_settings={"img2img_color_correction": True})).wait()
    assert len(engine.submit_img2img(params()).wait().images) == 1  # the engine goes on
