"""Hypertile (A1111's built-in extension, extensions-builtin/hypertile in v1.10): which layers it tiles, how it
cuts a layer's input, and what the settings do to a job."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from einops import rearrange

from modules.models import hypertile
from modules.models.hypertile import Options
from tests.support.generation import params
from tests.support.img2img import data, engine  # noqa: F401 (fixtures: one engine over the tiny checkpoints)


# --- the arithmetic, as A1111's hypertile.py does it ---------------------------------------------------------

def test_tile_counts_sizes_and_grids():
    rng = random.Random(0)
    assert random_counts(32, 16, 1, rng) == {2}  # the largest tile that fits: 16 of 32 rows, 2 tiles
    assert random_counts(32, 16, 3, rng) == {1, 2}  # among the 3 largest (there are 2): one tile or two
    assert random_counts(96, 16, 3, rng) == {6, 4, 3}  # tiles of 16, 24, 32
    assert random_counts(8, 16, 3, rng) == {1}  # smaller than a tile
    assert random_counts(32, 16, 0, rng) == {2}  # swap size 0 is 1 here (A1111 fails on it)
    # each cut is one randint over the choices (largest tile first), from the job's seeded generator
    ref = random.Random(5)
    expected = [[4, 2, 1][ref.randint(0, 2)] for _ in range(8)]
    r = random.Random(5)
    assert [hypertile.random_divisor(64, 16, 3, r) for _ in range(8)] == expected and len(set(expected)) > 1
    r = random.Random(5)  # a single choice still draws: the next cut's draw is the generator's next
    assert hypertile.random_divisor(8, 16, 3, r) == 1 and r.getstate() != random.Random(5).getstate()
    assert hypertile.largest_tile_size(512, 768) == 256 and hypertile.largest_tile_size(1024, 1024) == 1024
    assert hypertile.largest_tile_size(520, 512) == 8
    assert hypertile.rows_and_columns(64 * 64, 1.0) == (64, 64)
    assert hypertile.rows_and_columns(64 * 96, 768 / 512) == (96, 64)  # A1111's first factor: width / height
    assert hypertile.rows_and_columns(7 * 13, 1.0) == (13, 7)  # no square roots: the divisor pair nearest


def random_counts(value, min_value, swap, rng, tries=200) -> set[int]:
    return {hypertile.random_divisor(value, min_value, swap, rng) for _ in range(tries)}


# --- a layer's input cut into tiles -------------------------------------------------------------------------

class Spy(torch.nn.Module):
    """Stands for an attention layer: returns its input scaled by its mean, so that the output of a tile depends on
    the whole tile it sees (any cut shows)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, *args, **kwargs):
        self.seen.append(tuple(x.shape))
        return x * x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)


def test_a_unet_layer_attends_within_tiles_and_a_vae_layer_too():
    root = torch.nn.Module()
    root.add_module("down_blocks", torch.nn.ModuleList([torch.nn.Module()]))
    spy = Spy()
    root.down_blocks[0].add_module("attentions", torch.nn.ModuleList([torch.nn.Module()]))
    root.down_blocks[0].attentions[0].add_module("transformer_blocks", torch.nn.ModuleList([torch.nn.Module()]))
    root.down_blocks[0].attentions[0].transformer_blocks[0].add_module("attn1", spy)
    # a 512x512 picture: 64x64 latent tokens; tile 256 -> 32 latent rows; swap 1: two tiles a side
    assert hypertile.configure(root, hypertile.LAYERS_SD, 512, 512, Options(True, 3, 256, 1), random.Random(1)) == 1
    x = torch.randn(2, 64 * 64, 4)
    out = spy(x)
    assert spy.seen == [(8, 32 * 32, 4)]  # 2 images x 4 tiles
    by_hand = rearrange(x, "b (nh h nw w) c -> b nh nw (h w) c", nh=2, nw=2, h=32, w=32)
    by_hand = by_hand * by_hand.mean(dim=(3, 4), keepdim=True)
    assert torch.allclose(out, rearrange(by_hand, "b nh nw (h w) c -> b (nh h nw w) c", h=32, w=32), atol=1e-6)
    # another thread (a live preview's decode during the job) runs it whole and draws nothing
    import threading

    state = spy.forward.rng.getstate() if hasattr(spy.forward, "rng") else None
    other = []
    worker = threading.Thread(target=lambda: other.append(spy(x)))
    worker.start()
    worker.join()
    assert torch.equal(other[0], x * x.mean(dim=(1, 2), keepdim=True)) and spy.seen[-1] == (2, 64 * 64, 4)
    assert state is not None and spy.forward.rng.getstate() == state
    # off: the layer's own forward, whole
    hypertile.configure(root, hypertile.LAYERS_SD, 512, 512, Options(False), random.Random(1))
    assert torch.equal(spy(x), x * x.mean(dim=(1, 2), keepdim=True)) and spy.seen[-1] == (2, 64 * 64, 4)

    vae = torch.nn.Module()
    vae.add_module("decoder", torch.nn.Module())
    vae.decoder.add_module("mid_block", torch.nn.Module())
    vae.decoder.mid_block.add_module("attentions", torch.nn.ModuleList([Spy()]))
    hypertile.configure(vae, hypertile.LAYERS_VAE, 256, 256, Options(True, 3, 128, 1), random.Random(1))
    z = torch.randn(1, 3, 32, 32)  # the decoder's middle: (batch, channels, rows, columns)
    out = vae.decoder.mid_block.attentions[0](z)
    tiles = rearrange(z, "b c (nh h) (nw w) -> b nh nw c h w", nh=2, nw=2)
    tiles = tiles * tiles.mean(dim=(3, 4, 5), keepdim=True)
    assert torch.allclose(out, rearrange(tiles, "b nh nw c h w -> b c (nh h) (nw w)"), atol=1e-6)  # (the means'
    # summation order differs)


@pytest.mark.parametrize("yaml_name,table,counts", [
    ("v1-inference.yaml", hypertile.LAYERS_SD, {0: 5, 1: 5, 2: 5, 3: 1}),
    ("v2-inference-v.yaml", hypertile.LAYERS_SD, {0: 5, 1: 5, 2: 5, 3: 1}),
    ("sd_xl_base.yaml", hypertile.LAYERS_SDXL, {0: 5, 1: 55, 2: 10, 3: 0})])
def test_every_layer_of_a1111s_tables_is_in_the_full_size_models(yaml_name, table, counts):
    """A1111's tables name LDM layers (and SD 1.5's diffusers ones); here each is a layer of the full-size diffusers
    U-Net built from the shipped config (on the meta device: names only), and all of them get wrapped."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    from modules import paths
    from modules.models.family import read_yaml

    original = read_yaml(paths.CONFIGS / yaml_name)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(sfu.create_unet_diffusers_config_from_ldm(original, {}))
        vae = AutoencoderKL.from_config(sfu.create_vae_diffusers_config_from_ldm(original, {}))
    names = {n for n, _ in unet.named_modules()}
    assert {d: sum(n in names for n in table[d]) for d in table} == counts == {d: len(table[d]) for d in table}
    assert all(n.endswith(".attn1") for d in table for n in table[d])  # self-attention only
    assert hypertile.configure(unet, table, 1024, 1024, Options(True, 3, 256, 3), random.Random(0)) == \
        sum(counts.values())
    assert hypertile.configure(unet, table, 1024, 1024, Options(True, 1, 256, 3), random.Random(0)) == \
        counts[0] + counts[1]  # max depth 1
    assert hypertile.configure(vae, hypertile.LAYERS_VAE, 1024, 1024, Options(True, 3, 128, 3), random.Random(0)) == 1


# --- through a job --------------------------------------------------------------------------------------------

def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_settings_tile_a_job_the_same_way_each_time_and_off_is_untouched(engine):
    kw = dict(width=256, height=256, steps=3, save_images=False)
    plain = engine.txt2img(params(**kw))
    # tiles of 128 pixels (A1111's default 256 would be the whole of this small picture): 2 x 2 at depth 0
    on = {"hypertile_enable_unet": True, "hypertile_swap_size_unet": 1, "hypertile_max_tile_unet": 128}
    tiled = engine.txt2img(params(**kw, override_settings=on))
    again = engine.txt2img(params(**kw, override_settings=on))
    assert np.array_equal(pixels(tiled), pixels(again)) and not np.array_equal(pixels(tiled), pixels(plain))
    assert np.array_equal(pixels(engine.txt2img(params(**kw))), pixels(plain))  # off again: as never tiled
    # the second pass only: without Hires. fix nothing is tiled
    second = engine.txt2img(params(**kw, override_settings={"hypertile_enable_unet_secondpass": True}))
    assert np.array_equal(pixels(second), pixels(plain))
    # random splits (swap size 3) follow the job's seed
    swap = {**on, "hypertile_swap_size_unet": 3}
    a, b = (engine.txt2img(params(**kw, override_settings=swap)) for _ in range(2))
    assert np.array_equal(pixels(a), pixels(b))
    # the VAE: a small change
    vae = engine.txt2img(params(**kw, override_settings={"hypertile_enable_vae": True, "hypertile_swap_size_vae": 1}))
    diff = np.abs(pixels(vae) - pixels(plain))
    assert diff.max() > 0 and diff.mean() < 10


def test_the_hires_pass_tiles_with_its_own_setting(engine):
    kw = dict(width=128, height=128, steps=2, enable_hr=True, hr_scale=2, hr_upscaler="Latent", save_images=False)
    plain = engine.txt2img(params(**kw))
    second = engine.txt2img(params(**kw, override_settings={"hypertile_enable_unet_secondpass": True,
                                                            "hypertile_swap_size_unet": 1,
                                                            "hypertile_max_tile_unet": 128}))
    assert not np.array_equal(pixels(second), pixels(plain))  # the 256x256 pass is tiled
