"""Tiled VAE decode and encode (vae_tiling.py): the same images as untiled, the settings that decide when,
and jobs that tile (their size and their infotext)."""

from __future__ import annotations

import threading
import types

import pytest
import torch
from diffusers import AutoencoderKL

from modules.generation import context, pipeline, vae_tiling
from modules.generation.params import GenerationParams
from modules.generation.vae_tiling import AUTO_PIXELS, VaeTiling
from modules.settings import Settings
from tests.support.generation import engine, params  # noqa: F401  (fixture)
from tests.support.img2img import init_image
from tests.support.img2img import params as img2img_params
from tests.support.tiny_models import _randomize

TILE = 32  # pixels: bands of 16 rows at 256 pixels wide and 32 channels, so the last level runs in 12 bands
BORDER = 8  # pixels either side of a band's edge count as "on the border"


@pytest.fixture(scope="module")
def vae() -> AutoencoderKL:
    """SD's VAE layout (three ResNet blocks per decoder level, two per encoder level, attention in the middle,
    32 groups) at small widths, random weights large enough that every layer matters."""
    model = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                          block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=64)
    _randomize(model, torch.Generator().manual_seed(0))
    return model.eval()


def smooth_latent(height: int, width: int) -> torch.Tensor:
    """A low-frequency pattern, about one period across the image, different in each channel."""
    y, x = torch.linspace(0, 1, height)[:, None], torch.linspace(0, 1, width)[None]
    return torch.stack([torch.sin(6.28 * (0.8 * x + 0.3 * y) + c) * torch.cos(3.14 * (1.1 * y - 0.4 * x) + 2 * c)
                        for c in range(4)])[None]


def to_255(decoded: torch.Tensor) -> torch.Tensor:
    return (decoded.clamp(-1, 1) + 1) / 2 * 255


def band_edges(image: torch.Tensor, tile: int) -> torch.Tensor:
    """Rows within BORDER pixels of where the full-resolution bands meet."""
    rows, height = vae_tiling._band_rows(torch.empty(1, 32, *image.shape[-2:]), tile), image.shape[-2]
    near = torch.zeros(height, dtype=torch.bool)
    for edge in range(rows, height, rows):
        near[max(0, edge - BORDER):edge + BORDER] = True
    return near


@pytest.mark.parametrize("kind", ["smooth", "noise"])
def test_tiled_decode_equals_the_untiled_one(vae, kind):
    """The issue's test: within 2/255 away from tile borders and 6/255 on them. The GroupNorms get the whole
    image's statistics and every band its neighbours' rows, so the result is the untiled one up to float
    rounding (measured: under 0.001/255, for a smooth latent and for noise alike)."""
    latent = smooth_latent(24, 32) if kind == "smooth" else torch.randn(1, 4, 24, 32,
                                                                        generator=torch.Generator().manual_seed(1))
    z = latent / 0.18215
    with torch.no_grad():
        untiled = vae.decode(z).sample
    tiled = vae_tiling.decode(vae, z, VaeTiling("Always", TILE))
    assert tiled.shape == untiled.shape == (1, 3, 192, 256)
    diff = (to_255(tiled) - to_255(untiled)).abs().amax(dim=(0, 1, 3))  # per row
    edges = band_edges(tiled, TILE)
    assert edges.any() and (~edges).any()
    assert diff[~edges].max() <= 2.0 and diff[edges].max() <= 6.0
    assert diff.max() < 0.01  # in fact exact up to rounding
    assert untiled.std() > 0.3  # the VAE's output is not flat: the comparison means something


def test_tiled_encode_equals_the_untiled_one(vae):
    """Encoded in bands, the latent is the untiled one within 1e-4 (the latents' spread is ~0.6)."""
    with torch.no_grad():
        pixels = vae.decode(smooth_latent(24, 32) / 0.18215).sample.clamp(-1, 1)
        untiled = vae.encode(pixels).latent_dist.mode()
    tiled = vae_tiling.encode(vae, pixels, VaeTiling("Always", TILE))
    assert tiled.shape == untiled.shape == (1, 4, 24, 32)
    assert (tiled - untiled).abs().max() < 1e-4 and untiled.std() > 0.1


def test_odd_sizes_and_a_plain_decode_in_another_thread_meanwhile(vae):
    """Sizes that are no multiple of a band, and a decode of the same VAE in another thread (a "Full" live
    preview) while a tiled one runs: the hooks act in their own thread only, and none is left behind."""
    z = torch.randn(1, 4, 13, 19, generator=torch.Generator().manual_seed(2)) / 0.18215
    with torch.no_grad():
        untiled = vae.decode(z).sample
    other: list[float] = []

    def plain() -> None:
        with torch.no_grad():
            for _ in range(2):
                other.append((vae.decode(z).sample - untiled).abs().max().item())

    thread = threading.Thread(target=plain)
    thread.start()
    tiled = vae_tiling.decode(vae, z, VaeTiling("Always", 24))
    thread.join()
    assert tiled.shape == (1, 3, 104, 152) and (tiled - untiled).abs().max() < 1e-4 and max(other) == 0
    pixels = untiled.clamp(-1, 1)
    with torch.no_grad():
        latent = vae.encode(pixels).latent_dist.mode()
    assert (vae_tiling.encode(vae, pixels, VaeTiling("Always", 24)) - latent).abs().max() < 1e-4
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vae.modules())


def test_half_precision_nans_retry_in_float32_tiled(vae):
    """decode keeps its 16-bit -> 32-bit retry when tiled: a 16-bit VAE that gives NaNs is upcast (here: swapped
    for the float32 one) and the tiled decode is run again."""
    broken = AutoencoderKL.from_config(vae.config)
    broken.load_state_dict(vae.state_dict())
    with torch.no_grad():
        broken.post_quant_conv.bias[0] = float("nan")  # as a float16 overflow would leave it
    model = types.SimpleNamespace(vae=broken.eval().to(torch.bfloat16), device=torch.device("cpu"), upcasts=0)

    def upcast_vae():
        model.vae, model.upcasts = vae, model.upcasts + 1

    model.upcast_vae = upcast_vae
    z = smooth_latent(8, 16)
    image = pipeline.decode(model, z, tiling=VaeTiling("Always", TILE))[0]
    with torch.no_grad():
        expected = pipeline._to_pil(vae.decode(z / vae.config.scaling_factor).sample[0])
    assert model.upcasts == 1 and image.size == (128, 64)
    a, b = (torch.tensor(list(im.getdata())) for im in (image, expected))
    assert (a - b).abs().max() <= 1


def test_modes_decide_as_documented(vae):
    never, always, auto = VaeTiling("Never", 512), VaeTiling("Always", 512), VaeTiling("Auto", 512)
    assert not never.tiles(4096, 4096)
    assert always.tiles(512, 520) and not always.tiles(512, 512) and not always.tiles(256, 1024)  # one band
    assert not auto.tiles(1016, 1024) and auto.tiles(1024, 1024)  # from AUTO_PIXELS on: SDXL's size is tiled
    assert AUTO_PIXELS == 1024 * 1024 and auto.tiles(768, 1536) and auto.tiles(2048, 2048)
    assert VaeTiling("Auto", 2048).tiles(2048, 2056) and not VaeTiling("Auto", 2048).tiles(2048, 2048)
    assert 3e9 < vae_tiling.decode_peak_bytes(1024, 1024, tiled=False) < 5e9  # what Auto's threshold stands for
    assert vae_tiling.decode_peak_bytes(2048, 2048, tiled=True) < 9e9  # 2048x2048 fits 24 GB with SD 1.5
    assert vae_tiling.supports(vae)
    assert not vae_tiling.supports(types.SimpleNamespace(decoder=None, encoder=None))  # e.g. TAESD: untiled


def test_the_settings_are_fixed_in_the_job():
    p = GenerationParams(prompt="x", width=64, height=64)
    assert context.resolve(p).vae_tiling == VaeTiling("Auto", 512)
    ctx = context.resolve(p, Settings(vae_tiling="Always", vae_tile_size=256))
    assert ctx.vae_tiling == VaeTiling("Always", 256)
    with pytest.raises(ValueError):
        Settings(vae_tile_size=100)  # a multiple of 8
    with pytest.raises(ValueError):
        Settings(vae_tiling="Sometimes")


def test_a_job_with_tiling_on(engine):  # noqa: F811
    """Always, with small tiles: the image has its size, the same pixels as untiled (within the truncation to
    8 bits) and the infotext says the VAE tiled; with Never, or an image of one tile, the key is absent."""
    kw = dict(width=128, height=96, steps=3, save_images=False)
    tiled = engine.txt2img(params(**kw, override_settings={"vae_tiling": "Always", "vae_tile_size": 64}))
    plain = engine.txt2img(params(**kw, override_settings={"vae_tiling": "Never", "vae_tile_size": 64}))
    one_tile = engine.txt2img(params(**kw, override_settings={"vae_tiling": "Always", "vae_tile_size": 512}))
    assert tiled.images[0].size == plain.images[0].size == (128, 96)
    a, b = (torch.tensor(list(r.images[0].convert("RGB").getdata())) for r in (tiled, plain))
    assert (a - b).abs().max() <= 1
    assert "VAE tiling: True" in tiled.infotexts[0] and tiled.info["extra_generation_params"]["VAE tiling"] is True
    assert "VAE tiling" not in plain.infotexts[0] and "VAE tiling" not in one_tile.infotexts[0]


def test_hires_and_img2img_jobs_tile_their_encodes(engine):  # noqa: F811
    """A Hires. fix pass with a pixel upscaler decodes and encodes in between; img2img encodes its input."""
    tiling = {"vae_tiling": "Always", "vae_tile_size": 64}
    hires = engine.txt2img(params(steps=3, enable_hr=True, hr_upscaler="Lanczos", denoising_strength=0.5,
                                  hr_second_pass_steps=2, save_images=False, override_settings=tiling))
    assert hires.images[0].size == (128, 128) and "VAE tiling: True" in hires.infotexts[0]
    result = engine.img2img(img2img_params(init_images=[init_image((96, 80))], width=96, height=80, steps=2,
                                           override_settings=tiling))
    assert result.images[0].size == (96, 80) and "VAE tiling: True" in result.infotexts[0]
