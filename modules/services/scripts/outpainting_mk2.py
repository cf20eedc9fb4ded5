"""Outpainting mk2 (A1111's scripts/outpainting_mk_2.py, img2img only): the init image grown one side at a time
(left, right, up, down, those chosen), each pass an inpainting job over the strip it adds, started from matched
noise (modules/matched_noise.py) rather than black, with the pass before's images.

Arguments, in A1111's order: info (a label; ignored), pixels (128; 8-256), mask_blur (8; 0-64), direction (a list of
"left", "right", "up", "down"; all four), noise_q (1.0; 0-4: "Fall-off exponent (lower=higher detail)"),
color_variation (0.05; 0-1).

As in A1111: each pass grows the images by `pixels` on its side, the canvas rounded up to a multiple of 64; the
matched noise fills the new area; the strip processed is the request's width (or height) wide, at most the grown
image's, and the whole canvas the other way; masked content "original" over the new area and `mask_blur` pixels into
the image, blurred by 4 x mask_blur across the axes that grow; the latents kept by a mask that reaches 2 x mask_blur
in; the batch size's images run together, at the request's seed in every pass and every batch (-1: a new random seed
each pass, as A1111 draws one for each); the pass's images are pasted onto the canvases and cut to the grown size.
The grown images are saved with the first pass's infotext, after a grid of them when there are two or more.

Unlike A1111: a pass is refused before anything runs when its strip's sides would not be multiples of 8 (A1111
processes them a few pixels short; use an init image whose sides are multiples of 8) or its canvas is over
matched_noise.MAX_PIXELS; a batch whose pass was skipped or made nothing runs no more passes."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

import numpy as np
from PIL import Image

from modules import images, matched_noise
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.jobs import Job
from modules.services.errors import BadRequest
from modules.services.scripts import outpainting
from modules.services.requests import Accepted
from modules.services.scripts.base import (DIRECTIONS, CellResult, Composed, Env, Plan, decoded_init, directions_arg,
                                          fill_black, img2img_init, named_args, number_arg, rebuild)

TITLE = "Outpainting mk2"
ARG_NAMES = ["info", "pixels", "mask_blur", "direction", "noise_q", "color_variation"]
INFO_ARGS = [  # A1111's /script-info for it
    dict(label="info", value=None),
    dict(label="Pixels to expand", value=128, minimum=8, maximum=256, step=8),
    dict(label="Mask blur", value=8, minimum=0, maximum=64, step=1),
    dict(label="Outpainting direction", value=list(DIRECTIONS), choices=list(DIRECTIONS)),
    dict(label="Fall-off exponent (lower=higher detail)", value=1.0, minimum=0.0, maximum=4.0, step=0.01),
    dict(label="Color variation", value=0.05, minimum=0.0, maximum=1.0, step=0.01)]


@dataclasses.dataclass(frozen=True)
class Pass:
    """One side's pass: how far it grows the images, their size before and after, the canvas (rounded up to 64)
    and the strip processed (width x height)."""
    side: str
    amount: int
    before: tuple[int, int]
    grown: tuple[int, int]
    canvas: tuple[int, int]
    strip: tuple[int, int]

    @property
    def horizontal(self) -> bool:
        return self.side in ("left", "right")


def passes(width: int, height: int, pixels: int, directions: set[str], tile: tuple[int, int]) -> list[Pass]:
    """A1111's passes for an init image of width x height: the amounts from its split of the rounding to 64 between
    the two sides of an axis, each pass growing the image the one before made; `tile` is the request's size."""
    amounts = dict(zip(DIRECTIONS, outpainting.margins(width, height, pixels, directions)[0]))
    out, size = [], (width, height)
    for side in DIRECTIONS:
        amount = amounts[side]
        if amount <= 0:
            continue
        horizontal = side in ("left", "right")
        grown = (size[0] + amount, size[1]) if horizontal else (size[0], size[1] + amount)
        step = outpainting.MULTIPLE
        canvas = (math.ceil(grown[0] / step) * step, math.ceil(grown[1] / step) * step)
        strip = (min(tile[0], grown[0]), canvas[1]) if horizontal else (canvas[0], min(tile[1], grown[1]))
        out.append(Pass(side, amount, size, grown, canvas, strip))
        size = grown
    return out


def _args(args: list[Any]) -> tuple[int, int, set[str], float, float]:
    v = named_args(args, ARG_NAMES, TITLE)
    pixels = int(number_arg(v.get("pixels", 128), "pixels", 8, 256, whole=True))
    blur = int(number_arg(v.get("mask_blur", 8), "mask_blur", 0, 64, whole=True))
    directions = directions_arg(v.get("direction", list(DIRECTIONS)), TITLE)
    falloff = number_arg(v.get("noise_q", 1.0), "noise_q", 0.0, 4.0)
    variation = number_arg(v.get("color_variation", 0.05), "color_variation", 0.0, 1.0)
    return pixels, blur, directions, falloff, variation


def plan(params: GenerationParams, args: list[Any], env: Env, kind: str, rng: random.Random | None = None) -> Plan:
    init = img2img_init(params, kind, TITLE, "grows an init image")
    pixels, blur, directions, falloff, variation = _args(args)
    steps = passes(init.width, init.height, pixels, directions, (params.width, params.height))
    # A1111 blurs across an axis only when one of its sides grows
    blur_xy = (blur if {"left", "right"} & directions else 0, blur if {"up", "down"} & directions else 0)
    for p in steps:
        if p.canvas[0] * p.canvas[1] > matched_noise.MAX_PIXELS:
            raise BadRequest(f"{TITLE}: the {p.side} pass's canvas would be {p.canvas[0]}x{p.canvas[1]}; at most "
                             f"{matched_noise.MAX_PIXELS} pixels (2048x2048)")
        if p.strip[0] % 8 or p.strip[1] % 8:
            raise BadRequest(f"{TITLE}: the {p.side} pass would run at {p.strip[0]}x{p.strip[1]}, whose sides are not "
                             f"multiples of 8; use an init image whose sides are (it is {init.width}x{init.height})")
    grown = steps[-1].grown
    count = params.n_iter * params.batch_size  # the grown images, all held until the job ends (and their grid)
    if count * grown[0] * grown[1] > env.max_result_pixels:
        raise BadRequest(f"{TITLE}: {count} image(s) of {grown[0]}x{grown[1]} are "
                         f"{count * grown[0] * grown[1] / 1e6:.0f} megapixels, over this server's limit of "
                         f"{env.max_result_pixels / 1e6:.0f} megapixels of results held at once "
                         "(--max-extras-megapixels); ask for fewer (batch count, batch size) or smaller")
    rng = rng or random.Random()
    cells, labels = [], []
    for n in range(params.n_iter):
        for p in steps:
            # A1111 passes the request's seed to every pass: -1 draws a new one each time
            seed = params.seed if params.seed != -1 else rng.randrange(4294967294)
            blank = Image.new("RGB", p.strip)
            values = {**dict(params), "init_images": [blank] * params.batch_size, "mask": Image.new("L", p.strip),
                      "latent_mask": Image.new("L", p.strip), "n_iter": 1, "seed": seed, "width": p.strip[0],
                      "height": p.strip[1], "inpainting_fill": 1, "inpaint_full_res": False,
                      "mask_blur_x": 4 * blur_xy[0], "mask_blur_y": 4 * blur_xy[1], "mask_blur": None,
                      "save_images": False}
            label = f"batch {n + 1}, {p.side} pass"
            cells.append(rebuild(params, values, f"{TITLE}: {label}"))
            labels.append(label)
    run = _Run(env, params, steps, blur_xy, falloff, variation)
    return Plan(TITLE, cells, run.compose, labels, run.prepare, run.fold, run.chain)


@dataclasses.dataclass
class _Run:
    env: Env
    params: Img2ImgParams
    steps: list[Pass]
    blur: tuple[int, int]  # mask_blur across x and y (0 on an axis that does not grow)
    falloff: float
    variation: float
    init: Image.Image | None = None
    canvases: list[Image.Image] = dataclasses.field(default_factory=list)  # the running pass's noised canvases
    current: list[Image.Image] | None = None  # the images the next pass grows
    done: list[Image.Image] = dataclasses.field(default_factory=list)
    first: tuple[str, int] | None = None  # the first pass's infotext and seed
    return_grid: bool = True
    grid_saved: bool = False
    n_rows: int = -1

    def prepare(self, job: Job, accepted: list[Accepted]) -> list[Accepted]:
        self.init = decoded_init(self.env, self.params, accepted[0].settings)
        settings = accepted[0].settings
        self.return_grid, self.n_rows = settings.return_grid, settings.n_rows
        self.grid_saved = settings.grid_save and self.params.save_images
        return accepted

    def chain(self, k: int, cell: Accepted, previous: CellResult | None) -> Accepted | None:
        """Pass k's batch: the images so far on noised canvases, and the strip of them it repaints."""
        p = self.steps[k % len(self.steps)]
        if k % len(self.steps) == 0:
            self.current = [self.init] * self.params.batch_size
        elif previous is None or not previous.complete or self.current is None:
            self.current = None  # a skipped pass: its batch runs no further
            return None
        blur_x, blur_y = self.blur
        left, top = p.side == "left", p.side == "up"
        box = (p.amount + blur_x if left else 0, p.amount + blur_y if top else 0,
               p.canvas[0] - p.amount - blur_x if p.side == "right" else p.grown[0],
               p.canvas[1] - p.amount - blur_y if p.side == "down" else p.grown[1])
        mask = Image.new("RGB", p.canvas, "white")
        fill_black(mask, box)
        made: dict[int, Image.Image] = {}  # the first pass's images are one image: its noise is made once
        for image in self.current:
            if id(image) not in made:
                made[id(image)] = self._noised(p, image, mask)
        self.canvases = [made[id(image)].copy() for image in self.current]
        crop = (0 if left else p.canvas[0] - p.strip[0], 0 if top else p.canvas[1] - p.strip[1],
                p.strip[0] if left else p.canvas[0], p.strip[1] if top else p.canvas[1])
        strip_mask = mask.crop(crop)
        latent = Image.new("RGB", p.strip, "white")
        fill_black(latent, (p.amount + blur_x * 2 if left else 0, p.amount + blur_y * 2 if top else 0,
                            strip_mask.width - p.amount - blur_x * 2 if p.side == "right" else p.grown[0],
                            strip_mask.height - p.amount - blur_y * 2 if p.side == "down" else p.grown[1]))
        update = {"init_images": [c.crop(crop) for c in self.canvases], "mask": strip_mask, "latent_mask": latent}
        ctx = dataclasses.replace(cell.ctx, params=cell.ctx.params.model_copy(update=update))
        return dataclasses.replace(cell, ctx=ctx)

    def _noised(self, p: Pass, image: Image.Image, mask: Image.Image) -> Image.Image:
        canvas = Image.new("RGB", p.canvas)
        canvas.paste(image, (p.amount if p.side == "left" else 0, p.amount if p.side == "up" else 0))
        np_image = (np.asarray(canvas) / 255.0).astype(np.float64)
        np_mask = (np.asarray(mask) / 255.0).astype(np.float64)
        try:
            noised = matched_noise.matched_noise(np_image, np_mask, self.falloff, self.variation)
        except ValueError as e:  # the mask reaches over all of a small image: A1111 fails there too
            raise BadRequest(f"{TITLE}: the {p.side} pass: {e}; use a smaller mask blur or a larger init "
                             "image") from None
        return Image.fromarray(np.clip(noised * 255., 0., 255.).astype(np.uint8), mode="RGB")

    def fold(self, k: int, result: CellResult | None) -> None:
        p = self.steps[k % len(self.steps)]
        if result is None or not result.complete:
            self.current = None
            return
        if self.first is None:
            self.first = (result.infotext, result.seed)
        grown = []
        for canvas, made in zip(self.canvases, result.images):
            x = 0 if p.side == "left" else canvas.width - made.width
            y = 0 if p.side == "up" else canvas.height - made.height
            canvas.paste(made, (x, y))
            grown.append(canvas.crop((0, 0, *p.grown)))
        self.canvases, self.current = [], grown
        if k % len(self.steps) == len(self.steps) - 1:
            self.done.extend(grown)

    def compose(self, _results: list[CellResult | None]) -> Composed:
        text, seed = self.first if self.first is not None else ("", self.params.seed)
        wanted = len(self.done) > 1 and (self.return_grid or self.grid_saved)  # else not made at all
        grid = images.image_grid(self.done, 1, self.n_rows) if wanted else None
        return Composed(grid, list(self.done), [text] * len(self.done), [seed] * len(self.done),
                        grid_infotext=text, save=self.params.save_images, show_grid=self.return_grid)
