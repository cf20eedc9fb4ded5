"""Poor man's outpainting (img2img script) through the engine with the tiny model: the canvas and masks A1111's
scripts/poor_mans_outpainting.py (v1.10) makes, the tiles that reach past the image inpainted one by one at seed,
seed + 1, ..., and put back together; checked against the same tiles run as plain img2img requests and blended by
hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules import matched_noise, upscaling
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


def test_an_image_smaller_than_the_masks_reach_grows_as_a1111s_pillow_draws_it(engine):  # noqa: F811
    """A 16x16 image with mask blur 16 (the mask reaches 32 pixels in): the kept box's corners come the wrong way
    round, which Pillow 9.5 (A1111's) swaps and Pillow 10 refuses; the job runs (it was a 500)."""
    tiny = Image.new("RGB", (16, 16), (90, 200, 60))
    result = engine.submit_script("img2img", "Poor man's outpainting", request(init_images=[tiny]),
                                  [16, 16, 0, DIRECTIONS]).wait()
    assert result.images[0].size == (64, 64)


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
    ([16, 4, "blur"], "inpainting_fill 'blur' must be 0-3 or one of fill"),
    ([16, 4, "\u00b2"], "inpainting_fill '\u00b2' must be"),  # a digit to str.isdigit, not to int()
    ([16, 4, 4], "must be 0-3"),
    ([16, 4, 0, []], "choose at least one direction"),
    ([16, 4, 0, ["sideways"]], "direction"),
    ([16, 4, 0, ["up"], 1], "at most 4 arguments"),
])
def test_bad_arguments_are_refused_before_anything_runs(engine, args, needle):  # noqa: F811
    with pytest.raises(BadRequest, match=needle):
        engine.submit_script("img2img", "Poor man's outpainting", request(), args)
    assert engine.queue.queued == 0


# ---------------------------------------------------------------- Outpainting mk2

def mk2_by_hand(engine, req, pixels, blur, directions, falloff=1.0, variation=0.05):  # noqa: F811
    """A1111's outpainting_mk_2.py `expand`, pass by pass, as plain img2img requests of a batch."""
    image = req.init_images[0]
    amounts = {d: pixels if d in directions else 0 for d in ("left", "right", "up", "down")}
    target_w = -(-(image.width + amounts["left"] + amounts["right"]) // 64) * 64
    target_h = -(-(image.height + amounts["up"] + amounts["down"]) // 64) * 64
    if amounts["left"]:
        amounts["left"] = amounts["left"] * (target_w - image.width) // (amounts["left"] + amounts["right"])
    if amounts["right"]:
        amounts["right"] = target_w - image.width - amounts["left"]
    if amounts["up"]:
        amounts["up"] = amounts["up"] * (target_h - image.height) // (amounts["up"] + amounts["down"])
    if amounts["down"]:
        amounts["down"] = target_h - image.height - amounts["up"]
    bx = blur if amounts["left"] or amounts["right"] else 0
    by = blur if amounts["up"] or amounts["down"] else 0
    imgs = [image] * req.batch_size
    for side in ("left", "right", "up", "down"):
        n = amounts[side]
        if not n:
            continue
        horiz, is_l, is_r, is_t, is_b = side in ("left", "right"), side == "left", side == "right", side == "up", \
            side == "down"
        res_w, res_h = imgs[0].width + (n if horiz else 0), imgs[0].height + (0 if horiz else n)
        pw, ph = -(-res_w // 64) * 64, -(-res_h // 64) * 64
        outs, strips = [], []
        for im in imgs:
            canvas = Image.new("RGB", (pw, ph))
            canvas.paste(im, (n if is_l else 0, n if is_t else 0))
            mask = Image.new("RGB", (pw, ph), "white")
            box = (n + bx if is_l else 0, n + by if is_t else 0, pw - n - bx if is_r else res_w,
                   ph - n - by if is_b else res_h)
            ImageDraw.Draw(mask).rectangle((min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]),
                                            max(box[1], box[3])), fill="black")
            noised = matched_noise.matched_noise((np.asarray(canvas) / 255.0).astype(np.float64),
                                                 (np.asarray(mask) / 255.0).astype(np.float64), falloff, variation)
            outs.append(Image.fromarray(np.clip(noised * 255., 0., 255.).astype(np.uint8), mode="RGB"))
            w = min(req.width, res_w) if horiz else pw
            h = ph if horiz else min(req.height, res_h)
            crop = (0 if is_l else pw - w, 0 if is_t else ph - h, w if is_l else pw, h if is_t else ph)
            mask = mask.crop(crop)
            strips.append(outs[-1].crop(crop))
        latent = Image.new("RGB", (w, h), "white")
        box = (n + bx * 2 if is_l else 0, n + by * 2 if is_t else 0, mask.width - n - bx * 2 if is_r else res_w,
               mask.height - n - by * 2 if is_b else res_h)
        ImageDraw.Draw(latent).rectangle((min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]),
                                          max(box[1], box[3])), fill="black")
        made = engine.img2img(req.model_copy(update=dict(
            init_images=strips, mask=mask, latent_mask=latent, width=w, height=h, inpainting_fill=1,
            inpaint_full_res=False, mask_blur_x=bx * 4, mask_blur_y=by * 4))).images
        imgs = []
        for out, im in zip(outs, made):
            out.paste(im, (0 if is_l else out.width - im.width, 0 if is_t else out.height - im.height))
            imgs.append(out.crop((0, 0, res_w, res_h)))
    return imgs


def square(seed: int = 11, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("directions, blur", [(["left", "down"], 4), (["right", "up"], 0)])
def test_outpainting_mk2_grows_one_side_at_a_time_as_a1111(engine, directions, blur):  # noqa: F811
    req = request(init_images=[square()], batch_size=2, seed=21)
    result = engine.submit_script("img2img", "Outpainting mk2", req, ["", 32, blur, directions, 1.0, 0.05]).wait()
    expected = mk2_by_hand(engine, req, 32, blur, set(directions))
    assert [im.size for im in result.images] == [(128, 128)] * 2  # 64 + 32, up to 64 on each grown axis
    assert [im.tobytes() for im in result.images] == [im.tobytes() for im in expected]
    assert result.grid is not None and result.grid.size == (256, 128)  # two images: a grid leads
    assert result.seeds == [21, 21] and f"Mask blur: {4 * blur}" in result.infotexts[0] if blur else True


def test_outpainting_mk2_passes_are_a1111s():
    from modules.services.scripts import outpainting_mk2
    steps = outpainting_mk2.passes(100, 80, 128, {"left", "right", "up", "down"}, (512, 512))
    assert [(p.side, p.amount, p.grown, p.canvas, p.strip) for p in steps] == [
        ("left", 142, (242, 80), (256, 128), (242, 128)), ("right", 142, (384, 80), (384, 128), (384, 128)),
        ("up", 152, (384, 232), (384, 256), (384, 232)), ("down", 152, (384, 384), (384, 384), (384, 384))]


@pytest.mark.parametrize("args, needle", [
    (["", 32, 4, []], "choose at least one direction"),
    (["", 300], "pixels 300 must be a whole number"),
    (["", 32, 4, ["left"], 5.0], "noise_q 5.0 must be a number from 0 to 4"),
    (["", 32, 4, ["left"], 1.0, 2], "color_variation 2 must be"),
    (["", 32, 4, ["left"], 1.0, 0.05, 7], "at most 6 arguments"),
])
def test_outpainting_mk2_refuses_bad_arguments(engine, args, needle):  # noqa: F811
    with pytest.raises(BadRequest, match=needle):
        engine.submit_script("img2img", "Outpainting mk2", request(init_images=[square()]), args)


def test_outpainting_mk2_refuses_strips_that_are_not_multiples_of_8(engine):  # noqa: F811
    odd = Image.new("RGB", (60, 64))  # 60 + 32 + 32 up to 128: 34 on the left, a 94-pixel wide strip
    with pytest.raises(BadRequest, match="left pass would run at 94x64.*multiples of 8"):
        engine.submit_script("img2img", "Outpainting mk2", request(init_images=[odd], width=512),
                             ["", 32, 4, ["left", "right"]])


def test_outpainting_mk2_counts_the_grown_images_it_would_hold(engine):  # noqa: F811
    big = request(init_images=[Image.new("RGB", (1984, 1984))], n_iter=100, batch_size=4)
    with pytest.raises(BadRequest, match="400 image.s. of 2048x2048 are 1678 megapixels, over .* 1100 megapixels"):
        engine.submit_script("img2img", "Outpainting mk2", big, ["", 64, 8, ["left", "up"]])


def test_outpainting_mk2_a_mask_that_swallows_the_image_is_a_bad_request(engine):  # noqa: F811
    """16 pixels grown 48 to the left with mask blur 64: the kept box lies wholly outside the canvas, nothing of
    the image is left to match the noise to (A1111 fails inside scikit-image)."""
    small = request(init_images=[Image.new("RGB", (16, 16), (10, 200, 90))])
    job = engine.submit_script("img2img", "Outpainting mk2", small, ["", 8, 64, ["left"]])
    with pytest.raises(BadRequest, match="left pass: the mask must leave some of the image.*smaller mask blur"):
        job.wait(60)


def test_outpainting_mk2_a_black_image_gives_grey_noise_not_nan():
    """A1111 divides by the image's largest value and by its spectrum: NaN for a black canvas."""
    out = matched_noise.matched_noise(np.zeros((64, 128, 3)), np.concatenate([np.zeros((64, 64, 3)),
                                                                              np.ones((64, 64, 3))], axis=1))
    assert np.isfinite(out).all() and np.array_equal(out[:, :64], np.zeros((64, 64, 3)))
