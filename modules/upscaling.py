"""Upscaling an image as A1111 does it, whatever does the upscaling: Extras, Hires. fix, img2img and the SD upscale
script share this.

An upscaler is one "pass" (`Pass`: image -> larger image). The plain ones ("Lanczos", "Nearest") resample by the
scale asked for; a model upscaler (ESRGAN and the like, modules/models/upscalers) multiplies the size by its
own factor, run over the image in overlapping tiles. `upscale` repeats the pass (at most three times, as
A1111's `Upscaler.upscale`) until the image covers the size asked for, rounded down to a multiple of 8, then
resizes to exactly that with Lanczos. `resize` is A1111's `resize_image` step that Hires. fix and img2img use.

The tiles are laid out (`Grid`) and blended (`Blend`) as A1111's `split_grid` / `combine_grid` lay them out and
blend them (the same positions, the same 8-bit ramps over the overlaps), so a model upscaler gives A1111's pixels;
SD upscale cuts and joins its img2img tiles with the same two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

PLAIN = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
BUILTIN = ("None", *PLAIN)  # the upscalers every server has, in A1111's order
MAX_PASSES = 3  # A1111 applies an upscaler at most this many times to reach the size asked for
MAX_SIDE = 16384  # the longest side an upscaled image may get, in between passes too (a guard on memory)
# Tile size 0 runs the model on the whole image; on larger images than this it runs in tiles of it (a model's
# memory grows with what it is given: ESRGAN x4 took 0.8 GB over its weights on 256x256, four times that on 512x512).
MAX_WHOLE = 512
# Said wherever an upscaler's name is not known.
WHERE_MODELS = ("Model upscalers are the files in models/ESRGAN, models/RealESRGAN, models/DAT and models/HAT (.pth or "
                ".safetensors); nothing is downloaded")

Pass = Callable[[Image.Image], Image.Image]
Check = Callable[[], None]  # raises to stop the work (a job's interrupt)


def dest_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size an upscaler makes of a width x height image at `scale`: rounded down to a multiple of 8."""
    return int(width * scale // 8 * 8), int(height * scale // 8 * 8)


def plain_pass(name: str, scale: float) -> Pass:
    """One pass of a plain upscaler: the image resampled by `scale`."""
    resample = PLAIN[name]
    return lambda image: image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)


def upscale(image: Image.Image, scale: float, one_pass: Pass, check: Check | None = None) -> Image.Image:
    """A1111's `Upscaler.upscale`: `one_pass` applied until the image covers `dest_size` (not at all when it
    already does and the scale is not 1; stopping early when a pass leaves the size as it was), then a Lanczos
    resize to exactly that size. `check` is called before each pass."""
    dest = dest_size(image.width, image.height, scale)
    for i in range(MAX_PASSES):
        if image.width >= dest[0] and image.height >= dest[1] and (i > 0 or scale != 1):
            break
        if check is not None:
            check()
        before = image.size
        image = one_pass(image)
        if image.size == before:
            break
    if image.size != dest:
        image = image.resize(dest, resample=Image.Resampling.LANCZOS)
    return image


def resize(image: Image.Image, width: int, height: int, pass_for: Callable[[float], Pass] | None,
           check: Check | None = None) -> Image.Image:
    """A1111's `resize_image` resize: an image made larger goes through the upscaler (`pass_for(scale)` gives its
    pass; None, or a mask, is a plain Lanczos resize), then is resized to exactly width x height with Lanczos.
    Where A1111 would make an image over MAX_SIDE a side on the way (an image far narrower than the size it is to
    cover), it is resized directly."""
    if pass_for is None or image.mode == "L":
        return image.resize((width, height), resample=Image.Resampling.LANCZOS)
    scale = max(width / image.width, height / image.height)
    if max(dest_size(image.width, image.height, scale)) > MAX_SIDE:  # a sliver scaled to cover: gigabytes
        return image.resize((width, height), resample=Image.Resampling.LANCZOS)
    if scale > 1.0:
        image = upscale(image, scale, pass_for(scale), check)
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles of one axis start, as A1111's `split_grid` places them: as few tiles as cover `length` with
    `overlap` pixels shared, spread evenly, the last one flush with the end. An image shorter than a tile gets
    one tile starting before it (negative), padded with black; one no longer than the overlap gets that one
    tile too (A1111 counts no tile there, and its result is black)."""
    count = max(1, math.ceil((length - overlap) / (tile - overlap)))
    step = (length - tile) / (count - 1) if count > 1 else 0
    starts = []
    for i in range(count):
        start = int(i * step)
        starts.append(length - tile if start + tile >= length else start)
    return starts


def _ramp(overlap: int, across: int, horizontal: bool) -> Image.Image:
    """A1111's blend mask over an overlap: 0 to 255 * (overlap - 1) / overlap, truncated to 8 bits."""
    values = (np.arange(overlap, dtype=np.float32) * 255 / overlap).astype(np.uint8)
    grid = np.repeat(values[None, :], across, axis=0) if horizontal else np.repeat(values[:, None], across, axis=1)
    return Image.fromarray(grid, "L")


def _paste_after(canvas: Image.Image, part: Image.Image, at: int, overlap: int, horizontal: bool,
                 mask: Image.Image | None) -> None:
    """`part` pasted at `at` along one axis, its first `overlap` pixels blended over what is there."""
    if at == 0 or overlap <= 0 or mask is None:
        canvas.paste(part, (at, 0) if horizontal else (0, at))
        return
    if horizontal:
        canvas.paste(part.crop((0, 0, overlap, part.height)), (at, 0), mask=mask)
        canvas.paste(part.crop((overlap, 0, part.width, part.height)), (at + overlap, 0))
    else:
        canvas.paste(part.crop((0, 0, part.width, overlap)), (0, at), mask=mask)
        canvas.paste(part.crop((0, overlap, part.width, part.height)), (0, at + overlap))


@dataclass(frozen=True)
class Grid:
    """A1111's `split_grid` of a width x height image into tile_w x tile_h tiles sharing `overlap` pixels (which
    must be smaller than both sides of a tile)."""
    width: int
    height: int
    tile_w: int
    tile_h: int
    overlap: int

    @property
    def xs(self) -> list[int]:
        return tile_origins(self.width, self.tile_w, self.overlap)

    @property
    def ys(self) -> list[int]:
        return tile_origins(self.height, self.tile_h, self.overlap)

    def crop(self, image: Image.Image, x: int, y: int) -> Image.Image:
        return image.crop((x, y, x + self.tile_w, y + self.tile_h))

    def tiles(self, image: Image.Image) -> list[Image.Image]:
        """The image's tiles, row by row."""
        return [self.crop(image, x, y) for y in self.ys for x in self.xs]



def model_grid(width: int, height: int, tile: int, overlap: int) -> Grid | None:
    """How `tiled` cuts a width x height image: None for the whole image at once (tile 0, on an image of at most
    MAX_WHOLE a side), else tile x tile pieces (MAX_WHOLE for tile 0 on a larger image) sharing `overlap` pixels,
    at most half a tile."""
    if tile <= 0 and max(width, height) > MAX_WHOLE:
        tile = MAX_WHOLE
    if tile <= 0:
        return None
    return Grid(width, height, tile, tile, min(overlap, tile // 2))


def tile_count(width: int, height: int, tile: int, overlap: int) -> int:
    """How many tiles `tiled` runs for a width x height image (1 without tiling)."""
    grid = model_grid(width, height, tile, overlap)
    return 1 if grid is None else len(grid.xs) * len(grid.ys)


class Blend:
    """A1111's `combine_grid`: a Grid's tiles, each made `factor` times larger (an upscaler's output; 1 for
    SD upscale), put together a row at a time, top to bottom, at the grid's positions times the factor."""

    def __init__(self, grid: Grid, factor: int = 1):
        self.grid, self.factor = grid, factor
        self.image = Image.new("RGB", (grid.width * factor, grid.height * factor))
        overlap = grid.overlap * factor
        self._mask_w = _ramp(overlap, grid.tile_h * factor, True) if overlap > 0 else None
        self._mask_h = _ramp(overlap, grid.width * factor, False) if overlap > 0 else None

    def add_row(self, y: int, tiles: list[Image.Image]) -> None:
        """The row of tiles the grid starts at `y` (one per `grid.xs`), blended in under the rows above."""
        f, overlap = self.factor, self.grid.overlap * self.factor
        row = Image.new("RGB", (self.grid.width * f, self.grid.tile_h * f))
        for x, tile in zip(self.grid.xs, tiles):
            _paste_after(row, tile, x * f, overlap, True, self._mask_w)
        _paste_after(self.image, row, y * f, overlap, False, self._mask_h)


def tiled(image: Image.Image, run: Pass, tile: int, overlap: int, check: Check | None = None,
          on_tile: Callable[[int, int], None] | None = None) -> Image.Image:
    """`run` (a model: a tile in, the tile upscaled by its factor out) over the image in tile x tile pieces that
    share `overlap` pixels, put together as A1111's `upscale_with_model` does; `tile` 0 runs the whole image at
    once (an image larger than MAX_WHOLE on a side in tiles of MAX_WHOLE). `check` is called before each tile,
    `on_tile(done, total)` after it. A row of tiles is blended into the result as soon as it is done, so only one
    row's outputs are held. An overlap is at most half a tile."""
    grid = model_grid(image.width, image.height, tile, overlap)
    if grid is None:
        if check is not None:
            check()
        out = run(image)
        if on_tile is not None:
            on_tile(1, 1)
        return out
    xs, ys = grid.xs, grid.ys
    total, done = len(xs) * len(ys), 0
    blend: Blend | None = None
    for y in ys:
        outs = []
        for x in xs:
            if check is not None:
                check()
            outs.append(run(grid.crop(image, x, y)))
            done += 1
            if on_tile is not None:
                on_tile(done, total)
        blend = blend or Blend(grid, outs[-1].width // grid.tile_w)
        blend.add_row(y, outs)
    assert blend is not None
    return blend.image
