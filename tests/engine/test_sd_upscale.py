"""SD upscale (img2img script) through the engine with the tiny model: the init image upscaled, cut into tiles of
the request's size, each repainted by img2img in batches with A1111's seeds, and put back together; checked against
the same tiles run as plain img2img requests and put together by hand."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
from PIL import Image

from modules import upscaling
from modules.generation.params import Img2ImgParams
from modules.services.errors import BadRequest
from tests.support.generation import engine, params  # noqa: F401  (fixture)
from tests.support.upscalers import esrgan_state_dict, write


def request(**kw) -> Img2ImgParams:
    init = Image.fromarray(np.random.default_rng(3).integers(0, 256, (80, 80, 3), dtype=np.uint8), "RGB")
    base = {**params(steps=2, width=64, height=64, seed=50).model_dump(), "init_images": [init],
            "denoising_strength": 0.3, "batch_size": 2, "save_images": False}
    return Img2ImgParams(**{**base, **kw})


def by_hand(engine, req, grid, upscaled, seed, batch):  # noqa: F811
    """What A1111's SD upscale makes of `upscaled`: its tiles (split_grid) run as plain img2img requests in batches
    of `batch`, the batch's seed one more than the last one's, and put back together (combine_grid)."""
    tiles = grid.tiles(upscaled)
    made = []
    for i in range(0, len(tiles), batch):
        made += engine.img2img(request(init_images=tiles[i:i + batch], seed=seed + i // batch,
                                       batch_size=batch)).images[:len(tiles[i:i + batch])]
    blend = upscaling.Blend(grid)
    for r, y in enumerate(grid.ys):
        blend.add_row(y, made[r * len(grid.xs):(r + 1) * len(grid.xs)])
    return blend.image


def test_sd_upscale_repaints_the_tiles_with_a1111s_seeds_and_puts_them_together(engine):  # noqa: F811
    req = request()
    result = engine.submit_script("img2img", "SD upscale", req, ["", 16, "Lanczos", 2]).wait()
    assert len(result.images) == 1 and result.images[0].size == (160, 160) and result.seeds == [50]
    text = result.infotexts[0]
    assert "Size: 64x64" in text and "Seed: 50," in text
    # A1111's extra_generation_params: before the job's own keys and Version
    assert "RNG: CPU, SD upscale overlap: 16, SD upscale upscaler: Lanczos, Version: " in text
    # Lanczos 2x (160x160), tiles at 0, 48, 96 on each side (A1111's split_grid: 9 tiles), batches of 2 tiles
    # with seeds 50, 51, ...: the last batch is one tile, which img2img repeats (A1111 does too)
    up = upscaling.upscale(req.init_images[0], 2, upscaling.plain_pass("Lanczos", 2))
    grid = upscaling.Grid(160, 160, 64, 64, 16)
    assert grid.xs == grid.ys == [0, 48, 96]
    assert result.images[0].tobytes() == by_hand(engine, req, grid, up, 50, 2).tobytes()


def test_sd_upscale_batch_count_and_a_short_last_batch(engine):  # noqa: F811
    """Two upscales (n_iter 2) of 6 tiles in batches of 4 (the last batch: 2 tiles): the second upscale's seeds start
    at seed + 1."""
    init = Image.fromarray(np.random.default_rng(4).integers(0, 256, (60, 80, 3), dtype=np.uint8), "RGB")
    req = request(init_images=[init], batch_size=4, n_iter=2)
    result = engine.submit_script("img2img", "SD upscale", req, ["", 0, "Lanczos", 2]).wait()
    up = upscaling.upscale(init, 2, upscaling.plain_pass("Lanczos", 2))
    grid = upscaling.Grid(160, 120, 64, 64, 0)
    assert (len(grid.xs), len(grid.ys)) == (3, 2)
    assert [im.size for im in result.images] == [(160, 120)] * 2 and result.seeds == [50, 51]
    for n in (0, 1):
        assert result.images[n].tobytes() == by_hand(engine, req, grid, up, 50 + n, 4).tobytes()


def test_an_interrupt_during_the_upscale_ends_the_script_with_nothing(engine):  # noqa: F811
    write(dict(engine.paths.upscaler_dirs)["ESRGAN"] / "tiny-4x.pth", esrgan_state_dict())
    gate = threading.Event()
    engine.queue.submit("test", lambda _job: gate.wait(30))  # holds the queue while the interrupt is asked
    job = engine.submit_script("img2img", "SD upscale", request(), ["", 16, "tiny-4x", 2])
    job.request("interrupt")
    gate.set()
    result = job.wait(60)
    assert result.interrupted and result.images == []


def test_sd_upscale_saves_the_whole_image_only_and_takes_model_upscalers(engine):  # noqa: F811
    write(dict(engine.paths.upscaler_dirs)["ESRGAN"] / "tiny-4x.pth", esrgan_state_dict())
    out = engine.paths.outputs / "img2img-images"
    result = engine.submit_script("img2img", "SD upscale", request(save_images=True, n_iter=2, batch_size=4),
                                  ["", 16, "tiny-4x", 1.5]).wait()
    assert [im.size for im in result.images] == [(120, 120), (120, 120)] and result.seeds == [50, 51]
    saved = sorted(out.rglob("*.png"))
    assert len(saved) == 2 and all(p is not None for p in result.paths)  # the tiles are not saved
    assert all(Image.open(p).size == (120, 120) for p in saved)
    assert "SD upscale upscaler: tiny-4x" in Image.open(saved[0]).info["parameters"]


@pytest.mark.parametrize("kind,args,needle", [
    ("txt2img", ["", 64, "None", 2], "unknown script 'SD upscale' for txt2img"),  # as A1111: not a txt2img one
    ("img2img", ["", 64, "None", 2], "the tile overlap (64) must be smaller than a tile"),
    ("img2img", ["", 8, "R-ESRGAN 4x+", 2], "upscaler 'R-ESRGAN 4x+' is not there"),
    ("img2img", ["", 8, 99, 2], "upscaler_index 99 is out of range"),
    ("img2img", ["", 8, "Lanczos", 9], "scale_factor 9 must be between 1 and 4"),
    ("mask", ["", 8, "Lanczos", 2], "SD upscale does not take a mask"),
    ("n_iter", ["", 8, "Lanczos", 2], "n_iter (batch count) 101 is over this server's limit of 100"),
])
def test_sd_upscale_refuses_what_it_cannot_do(engine, kind, args, needle):  # noqa: F811
    req = {"txt2img": params(), "img2img": request(), "n_iter": request(n_iter=101),
           "mask": request(mask=Image.new("L", (80, 80), 255))}[kind]
    with pytest.raises(BadRequest, match=re.escape(needle)):
        engine.submit_script("txt2img" if kind == "txt2img" else "img2img", "SD upscale", req, args)


def test_the_img2img_tab_lists_sd_upscale_and_the_txt2img_tab_does_not(engine):  # noqa: F811
    assert "SD upscale" in engine.scripts.titles("img2img")
    assert "SD upscale" not in engine.scripts.titles("txt2img")


def test_sd_upscale_counts_its_tiles_before_making_any(engine):  # noqa: F811
    req = request(init_images=[Image.new("RGB", (4000, 4000))], n_iter=3)  # 63 x 63 tiles of 64, three times
    with pytest.raises(BadRequest, match="3969 tiles of 64x64 for a 4000x4000 image, 3 times, is 11907 img2img "
                                         "images; at most 10000"):
        engine.submit_script("img2img", "SD upscale", req, ["", 0, "None", 1])


def test_sd_upscale_results_held_at_once_are_bounded(engine):  # noqa: F811
    req = request(init_images=[Image.new("RGB", (4000, 4000))], n_iter=5, width=1024, height=1024)
    with pytest.raises(BadRequest, match=r"5 image\(s\) of 16000x16000 are 1280 megapixels, over this server's "
                                         r"limit of 1100 megapixels .*--max-extras-megapixels"):
        engine.submit_script("img2img", "SD upscale", req, ["", 64, "Lanczos", 4])
