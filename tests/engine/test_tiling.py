"""A1111's Tiling (`tiling`: the request field, the setting, the infotext key `Tiling: True`): every convolution
of the U-Net and the VAE wraps around the picture's edges, so the picture repeats seamlessly side by side.

What it must do, checked on the tiny model's own U-Net and VAE: with wrap-around padding both are equivariant to
a circular shift of their input (the U-Net by a multiple of its downsampling, the VAE decoder's output by 8 times
the latent shift). With zero padding they are not, near the edges, which is what makes a seam."""

from __future__ import annotations

import pytest
import torch

from modules.generation import context
from modules.settings import Settings
from tests.support.generation import engine, params  # noqa: F401  (fixture)
from tests.support.img2img import params as img2img_params

SHIFT = 4  # latent pixels: the tiny U-Net downsamples twice (3 levels), so a multiple of 4 moves every level whole


def convolutions(model) -> list[torch.nn.Conv2d]:
    return [m for part in (model.unet, model.vae) for m in part.modules() if type(m) is torch.nn.Conv2d]


def rolled(x: torch.Tensor, by: int) -> torch.Tensor:
    return torch.roll(x, shifts=(by, -by), dims=(-2, -1))


def unet_and_decoder_shift_errors(model) -> tuple[float, float]:
    """The largest difference between f(shifted input) and the shifted f(input), for the U-Net and the VAE's
    decoder, on a 16x16 latent (a 128x128 picture)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 16, 16, generator=g)
    text = torch.randn(1, 77, model.unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([500])
    with torch.no_grad():
        out = model.unet(x, t, encoder_hidden_states=text).sample
        out_of_shifted = model.unet(rolled(x, SHIFT), t, encoder_hidden_states=text).sample
        pixels = model.vae.decode(x).sample
        pixels_of_shifted = model.vae.decode(rolled(x, SHIFT)).sample
    return ((out_of_shifted - rolled(out, SHIFT)).abs().max().item(),
            (pixels_of_shifted - rolled(pixels, 8 * SHIFT)).abs().max().item())


def test_wrap_around_makes_the_unet_and_the_vae_shift_equivariant(engine):
    engine.txt2img(params(steps=1))  # loads the model
    model = engine.checkpoints.current
    model.use_tiling(True)
    assert convolutions(model) and all(c.padding_mode == "circular" for c in convolutions(model))
    unet_error, vae_error = unet_and_decoder_shift_errors(model)
    assert unet_error < 1e-4 and vae_error < 1e-4, (unet_error, vae_error)
    model.use_tiling(False)
    assert all(c.padding_mode == "zeros" for c in convolutions(model))
    unet_error, vae_error = unet_and_decoder_shift_errors(model)  # zeros at the edges: a seam
    assert unet_error > 1e-2 and vae_error > 1e-2, (unet_error, vae_error)


def test_a_tiled_job_says_so_and_the_next_job_pads_with_zeros_again(engine):
    plain = engine.txt2img(params(seed=3))
    tiled = engine.txt2img(params(seed=3, tiling=True))
    assert "Tiling: True" in tiled.infotexts[0] and "Tiling" not in plain.infotexts[0]
    # A1111's order: after RNG, before the job's own keys
    assert tiled.infotexts[0].index("RNG: ") < tiled.infotexts[0].index("Tiling: True")
    assert tiled.images[0].tobytes() != plain.images[0].tobytes()
    assert engine.txt2img(params(seed=3)).images[0].tobytes() == plain.images[0].tobytes()
    assert all(c.padding_mode == "zeros" for c in convolutions(engine.checkpoints.current))
    # the setting does the same, and the request's own field wins over it (A1111: `if p.tiling is None`)
    by_setting = engine.txt2img(params(seed=3, override_settings={"tiling": True}))
    assert by_setting.images[0].tobytes() == tiled.images[0].tobytes() and "Tiling: True" in by_setting.infotexts[0]
    refused = engine.txt2img(params(seed=3, tiling=False, override_settings={"tiling": True}))
    assert refused.images[0].tobytes() == plain.images[0].tobytes()


def paddings_during(engine, run) -> list[str]:
    """The padding mode of every convolution of the U-Net and the VAE each time one runs during `run()`."""
    engine.txt2img(params(steps=1))  # the model loaded, so its layers can be watched
    seen: list[str] = []
    hooks = [c.register_forward_pre_hook(lambda layer, _args: seen.append(layer.padding_mode))
             for c in convolutions(engine.checkpoints.current)]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def test_hires_fix_and_img2img_wrap_around_in_every_convolution_they_run(engine):
    """Both passes of Hires. fix (with a pixel upscaler: decode, encode, sample, decode) and img2img's encode,
    sampling and decode: every U-Net and VAE convolution call of the job pads circularly."""
    hires = dict(seed=4, enable_hr=True, hr_scale=2.0, hr_upscaler="Lanczos", denoising_strength=0.5)
    done = {}
    seen = paddings_during(engine, lambda: done.update(hires=engine.txt2img(params(**hires, tiling=True))))
    assert len(seen) > 100 and set(seen) == {"circular"}
    assert done["hires"].images[0].size == (128, 128) and "Tiling: True" in done["hires"].infotexts[0]
    assert done["hires"].images[0].tobytes() != engine.txt2img(params(**hires)).images[0].tobytes()
    seen = paddings_during(engine, lambda: done.update(i2i=engine.img2img(img2img_params(seed=4, tiling=True))))
    assert len(seen) > 100 and set(seen) == {"circular"} and "Tiling: True" in done["i2i"].infotexts[0]
    assert set(paddings_during(engine, lambda: engine.img2img(img2img_params(seed=4)))) == {"zeros"}


@pytest.mark.parametrize("mode", ["Auto", "Always"])
def test_the_vae_decodes_whole_when_tiling(mode):
    """The tiled VAE runs bands of rows: a band's convolutions would wrap onto the band itself, not onto the
    picture's far edge. So Tiling decodes and encodes untiled whatever vae_tiling says."""
    settings = Settings(vae_tiling=mode)
    assert context.resolve(params(tiling=True), settings).vae_tiling.mode == "Never"
    assert context.resolve(params(), settings).vae_tiling.mode == mode
    assert context.resolve(params(), Settings(vae_tiling=mode, tiling=True)).tiling
