"""SD upscale (img2img script) through the engine with the tiny model: the init image upscaled, cut into tiles of
the request's size, each repainted by img2img in batches with A1111's seeds, and put back together; checked against
the same tiles run as plain img2img requests and put together by hand."""

from __future__ import annotations

import re

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


def test_sd_upscale_repaints_the_tiles_with_a1111s_seeds_and_puts_them_together(engine):  # noqa: F811
    req = request()
    result = engine.submit_script("img2img", "SD upscale", req, ["", 16, "Lanczos", 2]).wait()
    assert len(result.images) == 1 and result.images[0].size == (160, 160) and result.seeds == [50]
    text = result.infotexts[0]
    assert "Size: 64x64" in text and "Seed: 50," in text
    assert text.endswith("SD upscale overlap: 16, SD upscale upscaler: Lanczos")

    # by hand: Lanczos 2x (160x160), tiles at 0, 48, 96 on each side (A1111's split_grid: 9 tiles), img2img in
    # batches of 2 with seeds 50, 51, 52, ... (each batch one more than the last), blended back
    up = upscaling.upscale(req.init_images[0], 2, upscaling.plain_pass("Lanczos", 2))
    grid = upscaling.Grid(160, 160, 64, 64, 16)
    assert grid.xs == grid.ys == [0, 48, 96]
    tiles = grid.tiles(up)
    made = []
    for i in range(5):
        cell = request(init_images=tiles[i * 2:(i + 1) * 2], seed=50 + i)
        made += engine.img2img(cell).images
    blend = upscaling.Blend(grid)
    for r, y in enumerate(grid.ys):
        blend.add_row(y, made[r * 3:(r + 1) * 3])
    assert result.images[0].tobytes() == blend.image.tobytes()


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
    ("txt2img", ["", 64, "None", 2], "SD upscale is an img2img script"),
    ("img2img", ["", 64, "None", 2], "the tile overlap (64) must be smaller than a tile"),
    ("img2img", ["", 8, "R-ESRGAN 4x+", 2], "upscaler 'R-ESRGAN 4x+' is not there"),
    ("img2img", ["", 8, 99, 2], "upscaler_index 99 is out of range"),
    ("img2img", ["", 8, "Lanczos", 9], "scale_factor 9 must be between 1 and 4"),
])
def test_sd_upscale_refuses_what_it_cannot_do(engine, kind, args, needle):  # noqa: F811
    req = request() if kind == "img2img" else params()
    with pytest.raises(BadRequest, match=re.escape(needle)):
        engine.submit_script(kind, "SD upscale", req, args)


def test_the_img2img_tab_lists_sd_upscale_and_the_txt2img_tab_does_not(engine):  # noqa: F811
    assert "SD upscale" in engine.scripts.titles("img2img")
    assert "SD upscale" not in engine.scripts.titles("txt2img")


def test_sd_upscale_counts_its_tiles_before_making_any(engine):  # noqa: F811
    req = request(init_images=[Image.new("RGB", (4000, 4000))], n_iter=3)  # 63 x 63 tiles of 64, three times
    with pytest.raises(BadRequest, match="3969 tiles of 64x64 for a 4000x4000 image, 3 times, is 11907 img2img "
                                         "images; at most 10000"):
        engine.submit_script("img2img", "SD upscale", req, ["", 0, "None", 1])
