"""img2img and inpainting: A1111's step rule checked against k-diffusion, seeds, resize modes, masks
(unmasked pixels come back unchanged), 9-channel inpainting models, the engine's outputs and infotext,
and POST /sdapi/v1/img2img on a live server."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil

import numpy as np
import pytest
import requests
import torch
from PIL import Image, ImageDraw

from modules import images, infotext
from modules.generation import context, masking, pipeline, rng, samplers, schedules
from modules.generation.params import SoftInpainting
from tests.support import kdiffusion_ref as K
from tests.support import soft_inpainting_ref as soft_ref
from tests.support.img2img import data, engine, init_image, left_half_mask, manager, params  # noqa: F401 (fixtures)
from tests.support.server import start_server, stop_server

SHAPE = (4, 8, 8)
BLUR_REACH = 11  # pixels a mask blur of 4 reaches beyond the mask: OpenCV kernel radius int(2.5*4 + 0.5) + 1


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=int)


def b64png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


@pytest.fixture(scope="module", params=["sd1.safetensors", "sd2-v.safetensors"])
def model(request, manager):
    return manager.get(manager.checkpoints.find(request.param))


# --- the step rule, against k-diffusion (the code A1111 runs) --------------------------------------

def test_t_enc_is_a1111s():
    assert samplers.img2img_t_enc(20, 0.75) == 15
    assert samplers.img2img_t_enc(20, 1.0) == 19  # min(denoise, 0.999): never the whole schedule + 1
    assert samplers.img2img_t_enc(20, 0.0) == 0  # one step, at the smallest sigma
    assert samplers.img2img_t_enc(7, 0.5) == 3


class Recording(pipeline.Denoiser):
    """The denoiser, noting the U-Net input and time of every call."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.calls = []

    def __call__(self, x_in, t, level=None):
        self.calls.append((x_in.clone(), float(t)))
        return super().__call__(x_in, t, level)


def k_reference(model, name, steps, t_enc, init, noise, gens, cond, uncond, cfg, mask=None, our_model=False):
    """A1111's sample_img2img for a k-diffusion sampler: sigma_sched = sigmas[steps - t_enc - 1:],
    x = init + noise * sigma_sched[0]; with a mask its CFG denoiser blends denoised*nmask + init*mask.
    `our_model`: k-diffusion's solver driven by our U-Net + CFG, so only the solvers' arithmetic differs."""
    ks, ke = K.load()
    inner = K.CompVisModel(model.unet, model.alphas_cumprod)
    wrap = (ke.CompVisVDenoiser if model.prediction_type == "v_prediction" else ke.CompVisDenoiser)(inner)
    choice = samplers.resolve(name)
    if choice.effective_schedule == "karras":
        sigmas = ks.get_sigmas_karras(steps, wrap.sigmas[0].item(), wrap.sigmas[-1].item())
    else:
        sigmas = wrap.get_sigmas(steps)
    sched = sigmas[steps - t_enc - 1:]
    cfg_denoiser = K.CFGDenoiser(wrap, cond, uncond, cfg)
    if our_model:
        ours = pipeline.Denoiser(model, cond, uncond, cfg)
        log_sigmas = schedules.model_sigmas(model.alphas_cumprod).log()

        def cfg_denoiser(x, sigma):
            s = sigma[0]
            out = ours(x * (1 / (s ** 2 + 1) ** 0.5), schedules.sigma_to_t(s, log_sigmas))
            if model.prediction_type == "v_prediction":
                return x * (1 / (s ** 2 + 1)) + out * (-s / (s ** 2 + 1) ** 0.5)
            return x + out * -s

    def denoiser(x, sigma):
        denoised = cfg_denoiser(x, sigma)
        return denoised if mask is None else denoised * mask + init * (1 - mask)

    fn = {"Euler a": ks.sample_euler_ancestral, "Euler": ks.sample_euler, "DPM++ 2M": ks.sample_dpmpp_2m}[name]
    extra = {"noise_sampler": K.PerImageNoise(gens, SHAPE, "cpu")} if name == "Euler a" else {}
    return fn(denoiser, init + noise * sched[0], sched, disable=True, **extra), sched


@pytest.mark.parametrize("masked", [False, True], ids=["img2img", "inpaint"])
@pytest.mark.parametrize("name", ["Euler a", "Euler", "DPM++ 2M"])
def test_sampling_starts_at_a1111s_sigma_and_runs_t_enc_plus_one_steps(model, name, masked):
    steps, t_enc = 10, samplers.img2img_t_enc(10, 0.55)
    init = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(5)) * 0.8
    mask = None
    if masked:
        mask = torch.zeros(1, 1, *SHAPE[1:])
        mask[..., :, :4] = 1
    cond, uncond = model.text.encode("a red circle")[None], model.text.encode("")[None]
    with torch.no_grad():
        gens = rng.create_generators([11, 12], "CPU", torch.device("cpu"))
        noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
        expected, sched = k_reference(model, name, steps, t_enc, init, noise, gens, cond, uncond, 7.0, mask)
        gens = rng.create_generators([11, 12], "CPU", torch.device("cpu"))
        noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
        solver_only, _ = k_reference(model, name, steps, t_enc, init, noise, gens, cond, uncond, 7.0, mask, True)
        gens = rng.create_generators([11, 12], "CPU", torch.device("cpu"))
        noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
        denoiser = Recording(model, cond, uncond, 7.0)
        reported = []
        got = pipeline.sample(model, denoiser, noise, samplers.resolve(name), steps, gens,
                              pipeline.Hooks(on_step=lambda i, n, x: reported.append((i, n))),
                              pipeline.Start(init, t_enc, mask))
    assert len(denoiser.calls) == t_enc + 1 == len(sched) - 1
    assert reported == [(i, t_enc + 1) for i in range(1, t_enc + 2)]
    first_x, first_t = denoiser.calls[0]
    sigma = sched[0].item()
    assert torch.allclose(first_x, (init + noise * sigma) / (sigma ** 2 + 1) ** 0.5, atol=1e-5)
    log_sigmas = torch.log(((1 - model.alphas_cumprod) / model.alphas_cumprod) ** 0.5)
    assert abs(first_t - schedules.sigma_to_t(sched[:1], log_sigmas).item()) < 1e-4
    scale = expected.abs().max().item()
    assert (got - solver_only).abs().max().item() <= 1e-6 * scale, "the solver differs from k-diffusion's"
    # A1111's CFG combines x0 predictions where ours combines the U-Net outputs: equal up to rounding
    assert (got - expected).abs().max().item() <= 2e-5 * scale, "differs from A1111 beyond float rounding"
    if masked:  # outside the mask the result is the init latent
        assert torch.allclose(got[..., 4:], init[..., 4:], atol=1e-4 * scale)


def recorded_run(model, sampler: str, steps: int, t_enc: int, **start):
    """One image's img2img sampling from a random init latent, its U-Net calls recorded: (denoiser, init, noise)."""
    init = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(3))
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    gens = rng.create_generators([4], "CPU", torch.device("cpu"))
    noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    denoiser = Recording(model, cond, uncond, 5.0)
    with torch.no_grad():
        pipeline.sample(model, denoiser, noise, samplers.resolve(sampler), steps, gens, pipeline.Hooks(),
                        pipeline.Start(init, t_enc, **start))
    return denoiser, init, noise


def test_ddim_starts_at_the_noise_level_of_a1111s_t_enc(model):
    """A1111's DDIM noises the init latent to timestep 1 + t_enc * (1000 // steps), then (as its loop over
    timesteps[:t_enc] does) calls the model from the timestep below that down to 1 + 1000 // steps."""
    steps, t_enc = 10, samplers.img2img_t_enc(10, 0.5)
    denoiser, init, noise = recorded_run(model, "DDIM", steps, t_enc)
    assert [t for _, t in denoiser.calls] == [1 + k * (1000 // steps) for k in range(t_enc - 1, 0, -1)]
    a = model.alphas_cumprod[1 + t_enc * (1000 // steps)]
    assert torch.allclose(denoiser.calls[0][0], a.sqrt() * init + (1 - a).sqrt() * noise, atol=1e-5)


@pytest.mark.parametrize("soft", [False, True], ids=["plain", "soft"])
def test_ddim_inpainting_blends_the_unet_input_as_a1111(model, soft):
    """A1111 (1.8 on) blends the init latent into DDIM's U-Net input before each call
    (CFGDenoiserTimesteps.mask_before_denoising), while its DDIM loop (sd_samplers_timesteps_impl.ddim) goes on
    from x unblended; after sampling, img2img's `sample` blends the result once more (not with soft inpainting,
    whose step blend takes the U-Net timestep as its sigma). Written out here from those sources."""
    steps, t_enc = 10, samplers.img2img_t_enc(10, 0.6)
    init = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(5)) * 0.8
    mask = torch.zeros(1, 1, *SHAPE[1:])
    mask[..., :4] = 1
    mask[..., 4] = 0.4  # a partly masked column (an unrounded mask)
    cond, uncond = model.text.encode("a red circle")[None], model.text.encode("")[None]
    settings = SoftInpainting() if soft else None
    gens = rng.create_generators([11, 12], "CPU", torch.device("cpu"))
    noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    denoiser = Recording(model, cond, uncond, 5.0)
    reported = []  # the x0 each step shows (preview; an interrupted batch's result)
    with torch.no_grad():
        got = pipeline.sample(model, denoiser, noise, samplers.resolve("DDIM"), steps, gens,
                              pipeline.Hooks(on_step=lambda i, n, x0: reported.append(x0)),
                              pipeline.Start(init, t_enc, mask, settings))
        plain = pipeline.Denoiser(model, cond, uncond, 5.0)
        ac = model.alphas_cumprod
        ts = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
        a0 = ac[ts[t_enc]]
        x = init * a0.sqrt() + noise * (1 - a0).sqrt()
        ts = ts[:t_enc]
        a, a_prev = ac[ts], ac[torch.nn.functional.pad(ts[:-1], (1, 0))]
        inputs, previews = [], []
        for i in range(len(ts) - 1):
            index = len(ts) - 1 - i
            t = ts[index].float()
            x_in = soft_ref.step_blend(init, x, mask, t) if soft else x * mask + init * (1 - mask)
            inputs.append(x_in)
            out = plain(x_in, t)
            a_t, a_p = a[index].item(), a_prev[index].item()
            e_t = a_t ** 0.5 * out + (1 - a_t) ** 0.5 * x_in if model.prediction_type == "v_prediction" else out
            x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
            previews.append((x_in - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5)  # CFGDenoiserTimesteps.get_pred_x0(x_in)
            x = a_p ** 0.5 * x0 + (1 - a_p) ** 0.5 * e_t
        expected = x if soft else x * mask + init * (1 - mask)
    assert len(denoiser.calls) == len(inputs)
    for (seen, _), want in zip(denoiser.calls, inputs):
        assert torch.allclose(seen, want, atol=1e-5)
    if not soft:  # the U-Net sees the clean init latent where nothing is repainted
        assert torch.equal(denoiser.calls[0][0][..., 5:], init[..., 5:])
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-5 * scale
    if not soft:
        assert torch.equal(got[..., 5:], init[..., 5:])
    assert len(reported) == len(previews)
    for shown, want in zip(reported, previews):
        assert torch.allclose(shown, want, atol=1e-4 * want.abs().max().item())


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_extra_noise_adds_the_start_noise_again(model, sampler):
    """A1111's img2img_extra_noise (sample_img2img): xi = x + noise * sigma_0, then xi += noise * extra; for
    DDIM, PLMS and UniPC the extra part is scaled by sqrt(alpha) of the start timestep."""
    steps, t_enc = 10, samplers.img2img_t_enc(10, 0.5)
    denoiser, init, noise = recorded_run(model, sampler, steps, t_enc, extra_noise=0.3)
    if sampler == "DDIM":
        a = model.alphas_cumprod[1 + t_enc * (1000 // steps)]
        expected = init * a.sqrt() + noise * (1 - a).sqrt() + noise * 0.3 * a.sqrt()
    else:
        sigma = samplers.prepare(samplers.resolve(sampler), steps, model.alphas_cumprod).sigmas[steps - t_enc - 1]
        expected = (init + noise * sigma + noise * 0.3) / (sigma ** 2 + 1) ** 0.5
    assert torch.allclose(denoiser.calls[0][0], expected, atol=1e-5)
    assert denoiser.fields == {"Extra noise": 0.3}


def test_denoising_strength_controls_how_far_the_latent_moves(manager):
    """Denoising 0 runs one step at the smallest sigma: the latent barely moves (the result is the VAE
    round trip of the input up to that); the change grows with the strength."""
    model = manager.get(manager.checkpoints.find("sd1.safetensors"))
    init = pipeline.encode(model, pipeline.image_to_tensor(init_image())[None])
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    moved = {}
    for strength in (0.0, 0.3, 0.75, 1.0):
        gens = rng.create_generators([1], "CPU", model.device)
        noise = rng.initial_noise(gens, SHAPE, model.device)
        start = pipeline.Start(init, samplers.img2img_t_enc(20, strength))
        with torch.no_grad():
            out = pipeline.sample(model, pipeline.Denoiser(model, cond, uncond, 7.0), noise, samplers.resolve("Euler"),
                                  20, gens, pipeline.Hooks(), start)
        moved[strength] = (out - init).abs().mean().item()
    assert moved[0.0] < moved[0.3] < moved[0.75] < moved[1.0]
    assert moved[0.0] < 0.01 * moved[1.0]


# --- the engine ------------------------------------------------------------------------------

def test_same_seed_same_image_and_batch_image_k_is_seed_plus_k(engine):
    a = engine.img2img(params())
    b = engine.img2img(params())
    other = engine.img2img(params(seed=8))
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert a.images[0].tobytes() != other.images[0].tobytes()
    batch = engine.img2img(params(batch_size=2, n_iter=2))
    assert batch.seeds == [7, 8, 9, 10]
    alone = engine.img2img(params(seed=9)).images[0]
    diff = np.abs(pixels(batch.images[2]) - pixels(alone))
    assert diff.max() <= 2 and diff.mean() < 0.05  # batch-size rounding of the U-Net only (see test_generation)


def test_several_init_images_make_one_batch(engine):
    second = init_image().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    both = engine.img2img(params(init_images=[init_image(), second], batch_size=4))
    assert len(both.images) == 2 and both.info["batch_size"] == 2  # A1111: batch size = number of images
    alone = engine.img2img(params(init_images=[second], seed=8)).images[0]
    assert np.abs(pixels(both.images[1]) - pixels(alone)).max() <= 2


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_resize_modes_give_the_requested_size(engine, mode):
    result = engine.img2img(params(init_images=[init_image((80, 48))], resize_mode=mode, width=64, height=96, steps=4))
    assert result.images[0].size == (64, 96)


def test_resize_image_modes():
    src = Image.new("RGB", (40, 20), (255, 0, 0))
    ImageDraw.Draw(src).rectangle((20, 0, 39, 19), fill=(0, 0, 255))
    stretched = images.resize_image(0, src, 20, 20)
    assert stretched.size == (20, 20)
    cropped = images.resize_image(1, src, 20, 20)  # scaled to cover, centre kept: half red, half blue
    assert cropped.getpixel((2, 10)) == (255, 0, 0) and cropped.getpixel((17, 10)) == (0, 0, 255)
    filled = images.resize_image(2, src, 40, 40)  # fitted in the middle, top/bottom bands from the edge rows
    assert filled.size == (40, 40)
    assert filled.getpixel((2, 2)) == (255, 0, 0) and filled.getpixel((37, 37)) == (0, 0, 255)
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert images.flatten(rgba).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DDIM"])
@pytest.mark.parametrize("only_masked", [False, True], ids=["whole", "only-masked"])
def test_inpainting_keeps_the_unmasked_pixels(engine, sampler, only_masked):
    src = init_image()
    result = engine.img2img(params(sampler_name=sampler, mask=left_half_mask(), inpaint_full_res=only_masked,
                                   inpaint_full_res_padding=8, steps=6))
    out, before = pixels(result.images[0]), pixels(src)
    assert np.array_equal(out[:, 32 + BLUR_REACH:], before[:, 32 + BLUR_REACH:])
    assert np.abs(out[:, :24] - before[:, :24]).mean() > 10  # the masked half was repainted
    assert "Mask blur: 4" in result.infotexts[0] and "Masked content: fill" in result.infotexts[0]
    assert ("Inpaint area: Only masked, Masked area padding: 8" in result.infotexts[0]) == only_masked


def test_overlay_inpaint_off_gives_the_picture_as_generated(engine):
    """A1111's overlay_inpaint off: no original laid back (the unmasked half went through the VAE, so it differs a
    little), and with Only masked its apply_overlay does not uncrop either: the result is the generated crop."""
    off = {"overlay_inpaint": False}
    whole = engine.img2img(params(mask=left_half_mask(), steps=4, override_settings=off))
    laid = engine.img2img(params(mask=left_half_mask(), steps=4))
    out, on, before = pixels(whole.images[0]), pixels(laid.images[0]), pixels(init_image())
    assert not np.array_equal(out[:, 32 + BLUR_REACH:], before[:, 32 + BLUR_REACH:])
    assert np.array_equal(on[:, 32 + BLUR_REACH:], before[:, 32 + BLUR_REACH:])
    assert np.array_equal(out[:, :32 - BLUR_REACH], on[:, :32 - BLUR_REACH])  # the same picture where it was made
    big, mask = init_image((128, 128)), left_half_mask((128, 128))
    crop = engine.img2img(params(init_images=[big], mask=mask, inpaint_full_res=True, inpaint_full_res_padding=8,
                                 steps=4, override_settings=off))
    assert crop.images[0].size == (64, 64)  # the W x H the masked box was processed at
    pasted = engine.img2img(params(init_images=[big], mask=mask, inpaint_full_res=True, inpaint_full_res_padding=8,
                                   steps=4))
    assert pasted.images[0].size == (128, 128)


def test_mask_invert_repaints_the_black_part(engine):
    result = engine.img2img(params(mask=left_half_mask(), inpainting_mask_invert=1, steps=6))
    out, before = pixels(result.images[0]), pixels(init_image())
    assert np.array_equal(out[:, :32 - BLUR_REACH], before[:, :32 - BLUR_REACH])
    assert np.abs(out[:, 40:] - before[:, 40:]).mean() > 10
    assert "Mask mode: Inpaint not masked" in result.infotexts[0]


def test_mask_from_alpha_and_blur_kernel():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    rgba.putpixel((3, 3), (0, 0, 0, 255))
    m = masking.binary_mask(rgba)
    assert m.getpixel((3, 3)) == 255 and m.getpixel((0, 0)) == 0
    blurred = np.asarray(masking.blur(left_half_mask(), 4, 4), dtype=int)
    assert blurred[:, 32 + BLUR_REACH - 1:].max() == 0 and blurred[:, 32 - BLUR_REACH:32 + BLUR_REACH - 1].min() > 0
    assert masking.expand_crop_region((10, 10, 42, 18), 64, 64, 64, 64) == (10, 0, 42, 32)


def test_masks_are_read_as_a1111s_create_binary_mask_reads_them():
    """An RGBA mask with transparency: its alpha, rounded at 128 (or as it is without mask_round); anything else:
    its grey level as it is, soft edges kept."""
    rgba = Image.new("RGBA", (3, 1), (255, 255, 255, 0))
    rgba.putpixel((1, 0), (255, 255, 255, 128))
    rgba.putpixel((2, 0), (255, 255, 255, 129))
    assert list(masking.binary_mask(rgba).getdata()) == [0, 0, 255]
    assert list(masking.binary_mask(rgba, round_mask=False).getdata()) == [0, 128, 129]
    grey = Image.new("L", (1, 1), 100)
    assert masking.binary_mask(grey).getpixel((0, 0)) == 100
    opaque = Image.new("RGBA", (1, 1), (100, 100, 100, 255))  # no transparency: its brightness
    assert masking.binary_mask(opaque).getpixel((0, 0)) == 100


def test_the_pages_masks_keep_a1111s_rules():
    from modules.ui import img2img as page

    la = Image.new("LA", (2, 1), (0, 0))
    la.putpixel((1, 0), (0, 200))
    assert page._mask_from_upload(la).mode == "RGBA"  # its alpha decides (rounded with the job's mask_round)
    assert page._mask_from_upload(Image.new("RGB", (2, 1), (90, 90, 90))).mode == "L"
    strokes = Image.new("RGBA", (3, 1), (255, 255, 255, 0))
    strokes.putpixel((1, 0), (255, 255, 255, 128))
    strokes.putpixel((2, 0), (255, 255, 255, 129))
    assert list(page._alpha_mask(strokes, (3, 1), 128).getdata()) == [0, 0, 255]  # A1111 rounds a painted mask


@pytest.mark.parametrize("fill,label", [(1, None), (2, "latent noise"), (3, "latent nothing")])
def test_masked_content_modes(engine, fill, label):
    result = engine.img2img(params(mask=left_half_mask(), inpainting_fill=fill, steps=4))
    out, before = pixels(result.images[0]), pixels(init_image())
    assert np.array_equal(out[:, 32 + BLUR_REACH:], before[:, 32 + BLUR_REACH:])
    assert (f"Masked content: {label}" in result.infotexts[0]) if label else "Masked content" not in result.infotexts[0]


def test_latent_mask_decides_which_latents_are_kept_and_the_mask_what_is_pasted_back(engine):
    """A1111's latent_mask: the latents are blended by it (used as it is), the original pixels are pasted back by
    the (blurred) mask. The same mask, unblurred, as both gives the image the mask alone gives."""
    sharp = dict(mask=left_half_mask(), mask_blur=0, inpainting_fill=1, steps=4)
    alone = engine.img2img(params(**sharp)).images[0]
    same = engine.img2img(params(**sharp, latent_mask=left_half_mask().convert("RGB"))).images[0]
    assert same.tobytes() == alone.tobytes()
    everything = engine.img2img(params(**sharp, latent_mask=Image.new("L", (64, 64), 255))).images[0]
    out, before = pixels(everything), pixels(init_image())
    assert np.array_equal(out[:, 32:], before[:, 32:])  # pasted back by the mask
    assert not np.array_equal(out[:, :32], pixels(alone)[:, :32])  # the kept half's latents were repainted too
    nothing = engine.img2img(params(**sharp, latent_mask=Image.new("L", (64, 64), 0))).images[0]
    assert not np.array_equal(pixels(nothing)[:, :32], pixels(alone)[:, :32])
    unmasked = engine.img2img(params(steps=2, latent_mask=left_half_mask()))  # A1111 ignores it without a mask
    assert any("latent_mask is used only with a mask" in w for w in unmasked.warnings)
    assert unmasked.images[0].tobytes() == engine.img2img(params(steps=2)).images[0].tobytes()


def test_fill_paints_under_the_latent_mask(engine):
    """A1111 pre-fills (masked content "fill") under its latent mask: the request's latent_mask when given. The
    same as filling the init image by hand under it and asking for "original"."""
    quarter = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(quarter).rectangle((0, 0, 15, 63), fill=255)
    job = dict(mask=left_half_mask(), mask_blur=4, latent_mask=quarter, steps=4)
    filled = engine.img2img(params(**job, inpainting_fill=0)).images[0]
    by_hand = engine.img2img(params(**job, inpainting_fill=1,
                                    init_images=[masking.fill(init_image(), quarter)])).images[0]
    assert filled.tobytes() == by_hand.tobytes()
    wider = masking.blur(left_half_mask(), 4, 4)  # what was filled before: the blurred mask
    assert filled.tobytes() != engine.img2img(params(**job, inpainting_fill=1, init_images=[
        masking.fill(init_image(), wider)])).images[0].tobytes()


def test_nine_channel_inpainting_model_gets_mask_and_masked_image(engine, manager):
    sd1_inpaint = {"sd_model_checkpoint": "sd1-inpainting"}
    result = engine.img2img(params(mask=left_half_mask(), override_settings=sd1_inpaint))
    assert result.info["is_using_inpainting_conditioning"] is True
    assert "Conditional mask weight: 1" in result.infotexts[0]
    assert np.array_equal(pixels(result.images[0])[:, 32 + BLUR_REACH:], pixels(init_image())[:, 32 + BLUR_REACH:])
    model = engine.checkpoints.current
    inputs = pipeline.prepare_img2img(model, context.resolve(params(mask=left_half_mask(), mask_blur=0)))
    cond = inputs.plan.image_cond
    assert cond.shape == (1, 5, 8, 8)
    assert torch.equal(cond[0, 0, :, :4], torch.ones(8, 4)) and torch.equal(cond[0, 0, :, 4:], torch.zeros(8, 4))
    # no mask: all repainted, grey image
    plain = pipeline.prepare_img2img(model, context.resolve(params())).plan.image_cond
    assert torch.equal(plain, pipeline.inpainting_conditioning(model, 1, 64, 64))
    other = engine.img2img(params(mask=left_half_mask(), override_settings=sd1_inpaint,
                                  init_images=[init_image().transpose(Image.Transpose.FLIP_TOP_BOTTOM)]))
    assert other.images[0].tobytes() != result.images[0].tobytes()


def test_outputs_infotext_info_and_progress_steps(engine, data):
    job = engine.submit_img2img(params(denoising_strength=0.5, steps=10, save_images=True,
                                       initial_noise_multiplier=0.9))
    result = job.wait()
    assert job.state.sampling_steps == 6 and job.state.sampling_step == 6  # t_enc + 1
    assert "/outputs/img2img-images/" in result.paths[0]
    assert Image.open(result.paths[0]).info["parameters"] == result.infotexts[0]
    fields = infotext.parse(result.infotexts[0])
    assert fields["Denoising strength"] == "0.5" and fields["Steps"] == "10" and fields["Noise multiplier"] == "0.9"
    assert result.info["denoising_strength"] == 0.5
    assert result.info["extra_generation_params"]["Denoising strength"] == 0.5
    assert not list((data / "outputs").glob("txt2img-images/*/*.png"))


def test_blank_mask_with_only_masked_falls_back_to_img2img(engine):
    result = engine.img2img(params(mask=Image.new("L", (64, 64)), inpaint_full_res=True))
    assert any("mask is blank" in w for w in result.warnings)
    assert result.images[0].tobytes() == engine.img2img(params()).images[0].tobytes()


@pytest.mark.parametrize("kw,needle", [
    (dict(denoising_strength=1.5), "denoising_strength must be between 0 and 1"),
    (dict(init_images=[]), "init_images: at least one init image is required"),
    (dict(init_images=["bm90IGFuIGltYWdl"]), "init_images.0: Invalid encoded image"),
    (dict(mask="%%%"), "mask: Invalid encoded image"),
    (dict(resize_mode=4), "resize_mode"),
    (dict(init_images=[init_image()] * 3, batch_size=2), "3 images but batch_size is 2"),
])
def test_bad_input_names_the_field(kw, needle):
    from pydantic import ValidationError

    from modules.engine import describe_validation_error
    with pytest.raises(ValidationError) as e:
        params(**kw)
    assert needle in describe_validation_error(e.value)


# --- the API on a live server ----------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("img2img-server")
    shutil.copytree(tiny_dir, d / "models" / "Stable-diffusion")
    (d / "config.json").write_text(json.dumps({"sd_model_checkpoint": "sd1.safetensors"}))
    proc, url = start_server(d, "--api")
    yield url, proc
    stop_server(proc)


def post(url: str, **body) -> requests.Response:
    return requests.post(url + "/sdapi/v1/img2img", json=body, timeout=300)


@pytest.mark.server
def test_api_img2img_and_inpaint_round_trip(server):
    url, _ = server
    src = init_image()
    r = post(url, init_images=["data:image/png;base64," + b64png(src)], prompt="a cat", width=64, height=64,
             steps=6, seed=3, denoising_strength=0.6, sampler_name="Euler a")
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert info["denoising_strength"] == 0.6 and info["all_seeds"] == [3]
    assert "Denoising strength: 0.6" in info["infotexts"][0]
    assert body["parameters"]["init_images"] is None and "enable_hr" not in body["parameters"]
    out = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert out.size == (64, 64) and out.info["parameters"] == info["infotexts"][0]
    # inpainting with A1111's API defaults (Only masked, padding 0, fill)
    r = post(url, init_images=[b64png(src)], mask=b64png(left_half_mask()), width=64, height=64, steps=4, seed=3,
             include_init_images=True)
    assert r.status_code == 200, r.text
    out = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert np.array_equal(pixels(out)[:, 32 + BLUR_REACH:], pixels(src)[:, 32 + BLUR_REACH:])
    info = json.loads(r.json()["info"])
    assert "Inpaint area: Only masked, Masked area padding: 0" in info["infotexts"][0]
    assert r.json()["parameters"]["init_images"] == [b64png(src)]
    # A1111's latent_mask is taken (it was "not supported yet and was ignored")
    r = post(url, init_images=[b64png(src)], mask=b64png(left_half_mask()), latent_mask=b64png(left_half_mask()),
             inpaint_full_res=False, width=64, height=64, steps=2, seed=3)
    assert r.status_code == 200 and json.loads(r.json()["info"])["warnings"] == [], r.text


@pytest.mark.server
@pytest.mark.parametrize("body,status,needle", [
    (dict(init_images=["%%% not an image %%%"]), 400, "init_images.0: Invalid encoded image"),
    (dict(denoising_strength=1.5), 400, "denoising_strength must be between 0 and 1"),
    (dict(init_images=None), 400, "init_images"),
    (dict(mask="bm9wZQ=="), 400, "mask: Invalid encoded image"),
    (dict(mask=b64png(left_half_mask()), latent_mask="bm9wZQ=="), 400, "latent_mask: Invalid encoded image"),
    (dict(denoising_strength="lots"), 422, "denoising_strength"),
    (dict(alwayson_scripts={"soft inpainting": {"args": [True, 1, 0.5, 0]}}), 400, "inpaint_detail_preservation"),
    (dict(alwayson_scripts={"Soft Inpainting": {"args": "yes"}}), 400, "args must be a list"),
])
def test_api_bad_input_is_refused_with_the_field_named(server, body, status, needle):
    url, proc = server
    request = {"init_images": [b64png(init_image())], "width": 64, "height": 64, "steps": 2, **body}
    r = post(url, **request)
    assert r.status_code == status and needle in r.text, r.text
    assert proc.poll() is None


@pytest.mark.server
def test_api_soft_inpainting_through_alwayson_scripts_and_infotext(server):
    """A1111's API: always-on scripts by title (any case), args in the script's order; its infotext fills the
    script's args when the request does not give them. A script that is not here is a warning, not silence."""
    url, _ = server
    base = dict(init_images=[b64png(init_image())], mask=b64png(left_half_mask()), inpaint_full_res=False,
                width=64, height=64, steps=4, seed=3)
    r = post(url, **base, alwayson_scripts={"Soft Inpainting": {"args": [True, 1.5, 0.5, 4, 0, 0.5, 2]}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    text = info["infotexts"][0]
    assert "Soft inpainting enabled: True, Soft inpainting schedule bias: 1.5" in text and info["warnings"] == []
    again = post(url, **base, infotext=text)
    assert again.json()["images"][0] == r.json()["images"][0]
    plain = post(url, **base)
    assert plain.json()["images"][0] != r.json()["images"][0]
    assert "Soft inpainting" not in json.loads(plain.json()["info"])["infotexts"][0]
    off = post(url, **base, alwayson_scripts={"soft inpainting": {"args": [False]}, "ControlNet": {"args": []}})
    assert off.json()["images"][0] == plain.json()["images"][0]
    assert json.loads(off.json()["info"])["warnings"] == [
        "alwayson_scripts: 'ControlNet' is not a script here (extensions are not supported); it was ignored"]
    t2i = requests.post(url + "/sdapi/v1/txt2img", json=dict(
        prompt="a cat", width=64, height=64, steps=1, alwayson_scripts={"soft inpainting": {"args": [True]}}),
        timeout=300)
    assert json.loads(t2i.json()["info"])["warnings"] == [
        "alwayson_scripts: 'soft inpainting' works in img2img only and was ignored"]
    names = requests.get(url + "/sdapi/v1/scripts", timeout=30).json()
    assert names["img2img"][-1] == "soft inpainting" and "soft inpainting" not in names["txt2img"]
    soft = next(s for s in requests.get(url + "/sdapi/v1/script-info", timeout=30).json()
                if s["name"] == "soft inpainting")
    assert soft["is_alwayson"] and soft["is_img2img"]
    assert [a["label"] for a in soft["args"]] == [
        "Soft inpainting", "Schedule bias", "Preservation strength", "Transition contrast boost", "Mask influence",
        "Difference threshold", "Difference contrast"]
    assert soft["args"][3] == dict(label="Transition contrast boost", value=4.0, minimum=1.0, maximum=32.0,
                                   step=0.5, choices=None)


@pytest.mark.server
def test_webuiapi_client_img2img(server):
    import webuiapi

    url, _ = server
    api = webuiapi.WebUIApi(baseurl=url + "/sdapi/v1", sampler="Euler a", steps=4)
    result = api.img2img(images=[init_image()], mask_image=left_half_mask(), prompt="a cat", width=64, height=64,
                         seed=5, denoising_strength=0.7)
    assert result.image.size == (64, 64) and result.info["all_seeds"] == [5]
    assert np.array_equal(pixels(result.image)[:, 32 + BLUR_REACH:], pixels(init_image())[:, 32 + BLUR_REACH:])


def test_save_init_img_keeps_each_init_image_under_its_md5_and_says_so(engine, data):  # noqa: F811
    """A1111's save_init_img: the init image as given, saved as <md5 of its pixels>.png in outputs/init-images
    (its text chunks kept), and `Init image hash` in the infotext, before RNG as A1111 orders it."""
    folder = data / "outputs" / "init-images"
    first = init_image()
    first.info["parameters"] = "where it came from"
    plain = engine.img2img(params(steps=2, init_images=[first]))
    assert "Init image hash" not in plain.infotexts[0] and not folder.exists()
    second = init_image((64, 64)).rotate(90)
    result = engine.img2img(params(steps=2, init_images=[first, second], batch_size=2,
                                   override_settings={"save_init_img": True}))
    digests = [hashlib.md5(im.tobytes()).hexdigest() for im in (first, second)]
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{d}.png" for d in digests)
    with Image.open(folder / f"{digests[0]}.png") as saved:
        assert saved.info.get("parameters") == "where it came from" and saved.tobytes() == first.tobytes()
    assert f"Init image hash: {digests[1]}, RNG: CPU" in result.infotexts[0], result.infotexts[0]  # the last one's
