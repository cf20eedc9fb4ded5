"""Poor man's outpainting (img2img script) through the engine with the tiny model: the canvas and masks A1111's
scripts/poor_mans_outpainting.py (v1.10) makes, the tiles that reach past the image inpainted one by one at seed,
seed + 1, ..., and put back together; checked against the same tiles run as plain img2img requests and blended by
hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from modules import upscaling
from modules.generation.params import Img2ImgParams
from modules.services.errors import BadRequest
from modules.services.scripts.outpainting import Canvas
from tests.support.generation import engine, params  # noqa: F401  (fixture)

SEED = 60


def init() -> Image.Image:
    return Image.fromarray(np.random.default_rng(8).integers(0, 256, (40, 72, 3), dtype=np.uint8), "RGB")


def request(**kw) -> Img2ImgParams:
    base = {**params(steps=2, width=64, height=64, seed=SEED).model_dump(), "init_images": [init()],
            "denoising_strength": 0.8, "save_images": False}
    return Img2ImgParams(**{**base, **kw})


@pytest.mark.parametrize("size, pixels, directions, expected", [
    # (left, up, right, down, width, height), worked out with A1111's integer arithmetic
    ((100, 80), 128, {"left", "right", "up", "down"}, (142, 152, 142, 152, 384, 384)),
    ((100, 80), 128, {"left"}, (156, 0, 0, 48, 256, 128)),
    ((72, 40), 16, {"right", "down"}, (0, 0, 56, 24, 128, 64)),
    ((64, 64), 64, {"up"}, (0, 64, 0, 0, 64, 128)),
])
def test_the_canvas_is_a1111s(size, pixels, directions, expected):
    c = Canvas.around(*size, pixels, directions)
    assert (c.left, c.up, c.right, c.down, c.width, c.height) == expected


def test_the_mask_reaches_into_the_image_on_the_sides_that_grew():
    c = Canvas.around(72, 40, 16, {"right", "down"})  # the image at (0, 0) to (72, 40) of a 128x64 canvas
    mask = np.asarray(c.mask(8))
    # kept (black): x 0..64 and y 0..32 inclusive (PIL's rectangle includes both corners)
    assert mask[:33, :65].max() == 0 and mask[33:, :].min() == 255 and mask[:, 65:].min() == 255


def by_hand(engine, req, pixels, blur, fill, directions):  # noqa: F811
    image = req.init_images[0]
    c = Canvas.around(image.width, image.height, pixels, directions)
    canvas = Image.new("RGB", (c.width, c.height))
    canvas.paste(image, (c.left, c.up))
    mask, latent = c.mask(blur * 2), c.mask(blur // 2)
    grid = upscaling.Grid(c.width, c.height, req.width, req.height, pixels)
    blend, seed = upscaling.Blend(grid), SEED
    for y in grid.ys:
        row = []
        for x in grid.xs:
            if c.inside(x, y, req.width, req.height):
                row.append(grid.crop(canvas, x, y))
                continue
            tile = req.model_copy(update=dict(
                init_images=[grid.crop(canvas, x, y)], mask=grid.crop(mask, x, y),
                latent_mask=grid.crop(latent, x, y), seed=seed, mask_blur_x=blur * 2, mask_blur_y=blur * 2,
                inpainting_fill=fill, inpaint_full_res=False))
            row.append(engine.img2img(tile).images[0])
            seed += 1
        blend.add_row(y, row)
    return blend.image, seed - SEED


def test_the_tiles_past_the_image_are_inpainted_and_put_together(engine):  # noqa: F811
    req = request()
    result = engine.submit_script("img2img", "Poor man's outpainting", req, [16, 4, "fill", ["right", "down"]]).wait()
    expected, tiles = by_hand(engine, req, 16, 4, 0, {"right", "down"})
    # 128x64 in 64x64 tiles sharing 16 pixels: (0,0) (32,0) (64,0); the image (72x40) holds none of them whole
    assert tiles == 3
    assert len(result.images) == 1 and result.images[0].size == (128, 64) and result.seeds == [SEED]
    assert result.images[0].tobytes() == expected.tobytes()
    text = result.infotexts[0]
    assert "Size: 64x64" in text and f"Seed: {SEED}," in text  # the first tile's infotext
    assert "Mask blur: 8" in text
    # beyond the mask (8 pixels into the image) and its blur (sigma 8, about 20 pixels): the original, exactly
    assert np.array_equal(np.asarray(result.images[0])[:10, :40], np.asarray(init())[:10, :40])
    assert not np.array_equal(np.asarray(result.images[0])[36:, :40], np.asarray(init())[36:, :40])


def test_every_direction_and_latent_noise(engine):  # noqa: F811
    req = request()
    result = engine.submit_script("img2img", "Poor man's outpainting", req, [32, 2, 2, DIRECTIONS]).wait()
    expected, tiles = by_hand(engine, req, 32, 2, 2, set(DIRECTIONS))
    assert result.images[0].size == (192, 128) and tiles == 15  # 72+64 wide, 40+64 tall: up to 64s; 5x3 tiles
    assert result.images[0].tobytes() == expected.tobytes()
    assert "Masked content: latent noise" in result.infotexts[0]


def test_tiles_wholly_on_the_image_are_not_run(engine):  # noqa: F811
    """A 192x128 image grown 16 pixels left: a 256x128 canvas in 5x3 tiles, of which the 9 from x=96 on lie on
    the image and are its own pixels; the 6 at x=0 and x=48 run."""
    wide = Image.fromarray(np.random.default_rng(9).integers(0, 256, (128, 192, 3), dtype=np.uint8), "RGB")
    req = request(init_images=[wide])
    job = engine.submit_script("img2img", "Poor man's outpainting", req, [16, 4, 0, ["left"]])
    result = job.wait()
    expected, tiles = by_hand(engine, req, 16, 4, 0, {"left"})
    assert tiles == 6 and job.state.job_count == 6
    assert result.images[0].size == (256, 128) and result.images[0].tobytes() == expected.tobytes()
    assert np.array_equal(np.asarray(result.images[0])[:, 128:], np.asarray(wide)[:, 64:])


DIRECTIONS = ["left", "right", "up", "down"]


@pytest.mark.parametrize("args, needle", [
    ([64], "must be smaller than a tile"),
    ([7], "pixels 7 must be a whole number from 8 to 256"),
    ([16, 65], "mask_blur 65"),
    ([16, 4, "blur"], "inpainting_fill 'blur' is not one of"),
    ([16, 4, 4], "must be 0-3"),
    ([16, 4, 0, []], "choose at least one direction"),
    ([16, 4, 0, ["sideways"]], "direction"),
    ([16, 4, 0, ["up"], 1], "at most 4 arguments"),
])
def test_bad_arguments_are_refused_before_anything_runs(engine, args, needle):  # noqa: F811
    with pytest.raises(BadRequest, match=needle):
        engine.submit_script("img2img", "Poor man's outpainting", request(), args)
    assert engine.queue.queued == 0
