"""Poor man's outpainting (A1111's scripts/poor_mans_outpainting.py, img2img only): the init image placed on a larger
black canvas, and the tiles of the canvas that reach past the image inpainted, with the masked content filled
from the image's edges, then put back together.

Arguments, in A1111's order: pixels (128; 8-256: how far each chosen side grows, and the tiles' overlap),
mask_blur (4; 0-64), inpainting_fill (0 fill, 1 original, 2 latent noise, 3 latent nothing; or the name),
direction (a list of "left", "right", "up", "down"; all four).

As in A1111: the canvas is the image with `pixels` added on each chosen side, rounded up to a multiple of 64
(the extra split between the two sides of an axis); the mask covers the new area and `2 * mask_blur` pixels into
the image, and is blurred by `2 * mask_blur`; the latents are kept by a mask that reaches `mask_blur // 2`
pixels in (A1111's latent_mask); the canvas is cut into tiles of the request's width x height sharing `pixels`
(split_grid), and only the tiles not wholly inside the image run, one at a time at seed, seed + 1, ...; the
tiles are not saved, the canvas put back together is (combine_grid), with the first tile's infotext. Batch count
and batch size are 1; a tile the job did not make (it was interrupted) is black. Unlike A1111: nothing runs
when no direction is chosen (A1111 pads to a multiple of 64 and returns that), an axis grown on
neither side is repainted where the rounding to 64 adds pixels, on the right or bottom (A1111 leaves them black),
the mask then reaching into the image there as on a chosen side, and the tile count is capped. Where the image is
smaller than the mask's reach, the mask is drawn as the Pillow A1111 pins draws it (base.fill_black)."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

from PIL import Image

from modules import upscaling
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.jobs import Job
from modules.services.errors import BadRequest
from modules.services.requests import Accepted
from modules.services.scripts.base import (DIRECTIONS, CellResult, Composed, Env, Plan, decoded_init, directions_arg,
                                          fill_black, fixed_seed, img2img_init, named_args, number_arg,
                                          rebuild)

TITLE = "Poor man's outpainting"
ARG_NAMES = ["pixels", "mask_blur", "inpainting_fill", "direction"]
FILLS = ("fill", "original", "latent noise", "latent nothing")
MAX_PIXELS, MAX_BLUR = 256, 64  # A1111's sliders
MAX_TILES = 10_000  # as SD upscale's cap
MULTIPLE = 64  # the canvas's sides are rounded up to it
INFO_ARGS = [  # A1111's /script-info for it
    dict(label="Pixels to expand", value=128, minimum=8, maximum=MAX_PIXELS, step=8),
    dict(label="Mask blur", value=4, minimum=0, maximum=MAX_BLUR, step=1),
    dict(label="Masked content", value="fill", choices=list(FILLS)),
    dict(label="Outpainting direction", value=list(DIRECTIONS), choices=list(DIRECTIONS))]


def margins(width: int, height: int, pixels: int, directions: set[str]) -> tuple[tuple[int, int, int, int], int, int]:
    """A1111's split (both outpainting scripts): ((left, right, up, down), width, height) of the canvas a width x
    height image grows to, each chosen side by `pixels`, each axis rounded up to a multiple of 64 with the left/up
    side's share taken first and the right/down side given the rest; an axis with no side chosen gets 0s."""
    left, right, up, down = (pixels if d in directions else 0 for d in DIRECTIONS)
    target_w = math.ceil((width + left + right) / MULTIPLE) * MULTIPLE
    target_h = math.ceil((height + up + down) / MULTIPLE) * MULTIPLE
    if left > 0:
        left = left * (target_w - width) // (left + right)
    if right > 0:
        right = target_w - width - left
    if up > 0:
        up = up * (target_h - height) // (up + down)
    if down > 0:
        down = target_h - height - up
    return (left, right, up, down), target_w, target_h


@dataclasses.dataclass(frozen=True)
class Canvas:
    """Where the image sits on the canvas: its margins on each side, and the canvas's size."""
    left: int
    up: int
    right: int
    down: int
    width: int
    height: int

    @classmethod
    def around(cls, width: int, height: int, pixels: int, directions: set[str]) -> "Canvas":
        """A1111's sizes: each chosen side grows by `pixels`, the canvas is rounded up to a multiple of 64, and the
        extra goes to the chosen sides (the left/up share first, the right/down one taking the rest). Unlike
        A1111, an axis with neither side chosen puts its rounding on the right or bottom side, which is repainted
        (A1111 leaves it a black band: 100x80 grown left becomes 256x128 with 48 black rows)."""
        (left, right, up, down), target_w, target_h = margins(width, height, pixels, directions)
        if left == right == 0:
            right = target_w - width
        if up == down == 0:
            down = target_h - height
        return cls(left, up, right, down, target_w, target_h)

    def inside(self, x: int, y: int, tile_w: int, tile_h: int) -> bool:
        """Whether the tile at (x, y) lies wholly on the image (it is not run)."""
        return (x >= self.left and x + tile_w <= self.width - self.right and y >= self.up
                and y + tile_h <= self.height - self.down)

    def mask(self, reach: int) -> Image.Image:
        """White where the canvas is repainted: all but the image, which the mask enters by `reach` pixels on each
        side that grew (A1111 draws the kept rectangle with PIL, both corners included)."""
        mask = Image.new("L", (self.width, self.height), "white")
        fill_black(mask, (self.left + (reach if self.left > 0 else 0), self.up + (reach if self.up > 0 else 0),
                          self.width - self.right - (reach if self.right > 0 else 0),
                          self.height - self.down - (reach if self.down > 0 else 0)))
        return mask


def _args(args: list[Any]) -> tuple[int, int, int, set[str]]:
    v = named_args(args, ARG_NAMES, TITLE)
    pixels = int(number_arg(v.get("pixels", 128), "pixels", 8, MAX_PIXELS, whole=True))
    blur = int(number_arg(v.get("mask_blur", 4), "mask_blur", 0, MAX_BLUR, whole=True))
    fill = v.get("inpainting_fill", 0)
    names = [f.lower() for f in FILLS]
    if isinstance(fill, str) and fill.strip().lower() in names:
        fill = names.index(fill.strip().lower())
    elif isinstance(fill, str) and fill.strip() in ("0", "1", "2", "3"):
        fill = int(fill.strip())
    if isinstance(fill, bool) or not isinstance(fill, int) or not 0 <= fill <= 3:
        raise BadRequest(f"script_args: inpainting_fill {fill!r} must be 0-3 or one of {', '.join(FILLS)}")
    directions = directions_arg(v.get("direction", list(DIRECTIONS)), TITLE)
    return pixels, blur, fill, directions


def plan(params: GenerationParams, args: list[Any], env: Env, kind: str, rng: random.Random | None = None) -> Plan:
    init = img2img_init(params, kind, TITLE, "grows an init image")
    pixels, blur, fill, directions = _args(args)
    tile_w, tile_h = params.width, params.height
    if pixels >= min(tile_w, tile_h):
        raise BadRequest(f"{TITLE}: the pixels to expand ({pixels}) are also the tiles' overlap, and must be smaller "
                         f"than a tile ({tile_w}x{tile_h}: the width and height)")
    canvas = Canvas.around(init.width, init.height, pixels, directions)
    if max(canvas.width, canvas.height) > upscaling.MAX_SIDE or canvas.width * canvas.height > env.max_result_pixels:
        raise BadRequest(f"{TITLE}: the grown image would be {canvas.width}x{canvas.height}; at most "
                         f"{upscaling.MAX_SIDE} pixels a side and {env.max_result_pixels / 1e6:.0f} megapixels "
                         "(--max-extras-megapixels)")
    grid = upscaling.Grid(canvas.width, canvas.height, tile_w, tile_h, pixels)
    if len(grid.xs) * len(grid.ys) > MAX_TILES:
        raise BadRequest(f"{TITLE}: {len(grid.xs) * len(grid.ys)} tiles of {tile_w}x{tile_h} for a "
                         f"{canvas.width}x{canvas.height} image; at most {MAX_TILES}. Use larger tiles (width and "
                         "height)")
    work = [(x, y) for y in grid.ys for x in grid.xs if not canvas.inside(x, y, tile_w, tile_h)]
    rng = rng or random.Random()
    seed, subseed = fixed_seed(params.seed, rng), fixed_seed(params.subseed, rng)
    blank, blank_mask = Image.new("RGB", (tile_w, tile_h)), Image.new("L", (tile_w, tile_h), "white")
    cells, labels = [], []
    for i, (x, y) in enumerate(work):  # the tiles themselves are cut in the job (prepare)
        values = {**dict(params), "init_images": [blank], "mask": blank_mask, "latent_mask": blank_mask,
                  "n_iter": 1, "batch_size": 1, "seed": seed + i, "subseed": subseed, "mask_blur": blur * 2,
                  "inpainting_fill": fill, "inpaint_full_res": False, "save_images": False}
        label = f"tile {i + 1} of {len(work)} (at {x},{y})"
        cells.append(rebuild(params, values, f"{TITLE}: {label}"))
        labels.append(label)
    run = _Run(env, params, canvas, grid, blur, work, seed)
    return Plan(TITLE, cells, run.compose, labels, run.prepare, run.fold)


@dataclasses.dataclass
class _Run:
    """One job as it goes: the canvas (held to the end: the tiles that are not run are cut from it), and the
    blend, a row of tiles at a time as their cells finish."""
    env: Env
    params: Img2ImgParams
    canvas: Canvas
    grid: upscaling.Grid
    blur: int
    work: list[tuple[int, int]]
    seed: int
    image: Image.Image | None = None
    made: dict[tuple[int, int], Image.Image] = dataclasses.field(default_factory=dict)
    rows: int = 0  # rows blended in
    blend: upscaling.Blend | None = None
    first_text: str = ""

    def prepare(self, job: Job, accepted: list[Accepted]) -> list[Accepted]:
        """The canvas, its two masks and each running tile's three pieces, in the job."""
        init = decoded_init(self.env, self.params, accepted[0].settings)
        c = self.canvas
        self.image = Image.new("RGB", (c.width, c.height))
        self.image.paste(init, (c.left, c.up))
        mask, latent_mask = c.mask(self.blur * 2), c.mask(self.blur // 2)
        self.blend = upscaling.Blend(self.grid)
        out = []
        for (x, y), cell in zip(self.work, accepted):
            pieces = {"init_images": [self.grid.crop(self.image, x, y)], "mask": self.grid.crop(mask, x, y),
                      "latent_mask": self.grid.crop(latent_mask, x, y)}
            ctx = dataclasses.replace(cell.ctx, params=cell.ctx.params.model_copy(update=pieces))
            out.append(dataclasses.replace(cell, ctx=ctx))
        self._add_rows()  # rows wholly on the image, before the first tile that runs
        return out

    def fold(self, k: int, result: CellResult | None) -> None:
        """Tile k's image, blended in with every row it completes; a tile not made is black, as in A1111."""
        if result is not None and not self.first_text:
            self.first_text = result.infotext
        black = Image.new("RGB", (self.grid.tile_w, self.grid.tile_h))
        self.made[self.work[k]] = result.image if result is not None else black
        self._add_rows()

    def _add_rows(self, finish: bool = False) -> None:
        """Blend in each row whose tiles are all there (with `finish`, the rest, black where a tile is missing)."""
        xs, ys = self.grid.xs, self.grid.ys
        size = (self.grid.tile_w, self.grid.tile_h)
        while self.rows < len(ys):
            y = ys[self.rows]
            runs = [x for x in xs if not self.canvas.inside(x, y, *size)]
            if not finish and any((x, y) not in self.made for x in runs):
                return  # a tile of this row is still to come
            tiles = [self.made.pop((x, y), None) or Image.new("RGB", size) if x in runs
                     else self.grid.crop(self.image, x, y) for x in xs]
            self.blend.add_row(y, tiles)
            self.rows += 1

    def compose(self, _results: list[CellResult | None]) -> Composed:
        if self.blend is None:  # stopped before the canvas was made
            return Composed(None, [], [], [])
        self._add_rows(finish=True)
        return Composed(None, [self.blend.image], [self.first_text], [self.seed], save=self.params.save_images)
