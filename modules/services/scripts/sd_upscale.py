"""SD upscale (A1111's scripts/sd_upscale.py, img2img only): the init image made larger by an upscaler, cut into
tiles of the request's width x height that share `overlap` pixels (A1111's split_grid), each tile repainted by
img2img, and the tiles put back together (combine_grid): a large image with detail a plain upscale lacks.

Arguments, in A1111's order: info (a label; ignored), overlap (64), upscaler_index (0: None; A1111 takes an index
into its upscaler list, or a name, and so do we: `GET /sdapi/v1/upscalers` gives the list), scale_factor (2).

As in A1111: the tiles run in batches of batch_size, the n-th of n_iter upscales with seeds from seed + n, each
batch's seed one more than the previous batch's; the tiles themselves are not saved, the whole image is (with
the first batch's infotext and `SD upscale overlap` / `SD upscale upscaler`). The cells are planned (and checked)
from the sizes before the job runs; the upscale and the cutting happen in the job (`prepare`)."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

from PIL import Image

from modules import upscaling
from modules.generation.params import GenerationParams
from modules.jobs import Job
from modules.services.errors import BadRequest
from modules.services.requests import Accepted
from modules.services.scripts.base import (CellResult, Composed, Env, Plan, decoded_init, fixed_seed, img2img_init,
                                          named_args, rebuild)

TITLE = "SD upscale"
ARG_NAMES = ["info", "overlap", "upscaler_index", "scale_factor"]
MAX_OVERLAP, MAX_SCALE = 256, 4.0  # A1111's sliders
MAX_TILES = 10_000  # tiles of all the upscales together, counted before anything is made (as the X/Y/Z plot's cap)


def _upscaler(value: Any, names: list[str]) -> str:
    """A1111's upscaler_index: an index into the list, or a name (case-insensitive)."""
    if isinstance(value, bool):
        raise BadRequest("script_args: upscaler_index must be an index into GET /sdapi/v1/upscalers or a name")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        if not 0 <= index < len(names):
            raise BadRequest(f"script_args: upscaler_index {index} is out of range; upscalers: {', '.join(names)}")
        return names[index]
    found = next((n for n in names if n.lower() == str(value).strip().lower()), None)
    if found is None:
        raise BadRequest(f"script_args: upscaler {value!r} is not there; upscalers: {', '.join(names)}. "
                         f"{upscaling.WHERE_MODELS}")
    return found


def _number(value: Any, name: str, low: float, high: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"script_args: {name} {value!r} is not a number") from None
    if not low <= number <= high or math.isnan(number):
        raise BadRequest(f"script_args: {name} {number:g} must be between {low:g} and {high:g}")
    return number


@dataclasses.dataclass
class _Upscale:
    """One upscale's image as its tiles come, row by row."""
    blend: upscaling.Blend
    pending: list[Image.Image] = dataclasses.field(default_factory=list)  # tiles of a row not complete yet
    rows: int = 0  # rows blended in

    def place(self, tiles: list[Image.Image]) -> None:
        self.pending.extend(tiles)
        per_row = len(self.blend.grid.xs)
        while len(self.pending) >= per_row:
            self.blend.add_row(self.blend.grid.ys[self.rows], self.pending[:per_row])
            del self.pending[:per_row]
            self.rows += 1


def plan(params: GenerationParams, args: list[Any], env: Env, kind: str, rng: random.Random | None = None) -> Plan:
    init = img2img_init(params, kind, TITLE, "repaints an init image")
    if params.mask is not None:  # A1111 squeezes the whole image's mask onto every tile
        raise BadRequest("SD upscale does not take a mask: it repaints the whole image, tile by tile")
    v = named_args(args, ARG_NAMES, TITLE)
    overlap = int(_number(v.get("overlap", 64), "overlap", 0, MAX_OVERLAP))
    name = _upscaler(v.get("upscaler_index", 0), env.upscalers())
    scale = _number(v.get("scale_factor", 2.0), "scale_factor", 1.0, MAX_SCALE)
    if overlap >= min(params.width, params.height):
        raise BadRequest(f"SD upscale: the tile overlap ({overlap}) must be smaller than a tile "
                         f"({params.width}x{params.height}: the width and height)")
    size = (init.width, init.height) if name == "None" else upscaling.dest_size(init.width, init.height, scale)
    if min(size) < 8 or max(size) > upscaling.MAX_SIDE:
        raise BadRequest(f"SD upscale: the upscaled image would be {size[0]}x{size[1]}; each side must be between 8 "
                         f"and {upscaling.MAX_SIDE}")
    grid = upscaling.Grid(size[0], size[1], params.width, params.height, overlap)
    tiles = len(grid.xs) * len(grid.ys)
    batch, upscales = params.batch_size, params.n_iter
    if tiles * upscales > MAX_TILES:
        raise BadRequest(f"SD upscale: {tiles} tiles of {params.width}x{params.height} for a {size[0]}x{size[1]} "
                         f"image, {upscales} times, is {tiles * upscales} img2img images; at most {MAX_TILES}. Use "
                         "larger tiles (width and height) or a smaller scale factor")
    if size[0] * size[1] * upscales > env.max_result_pixels:
        raise BadRequest(f"SD upscale: {upscales} image(s) of {size[0]}x{size[1]} are "
                         f"{size[0] * size[1] * upscales / 1e6:.0f} megapixels, over this server's limit of "
                         f"{env.max_result_pixels / 1e6:.0f} megapixels of results held at once "
                         "(--max-extras-megapixels); ask for fewer (batch count) or smaller")
    batches = math.ceil(tiles / batch)
    rng = rng or random.Random()
    seed, subseed = fixed_seed(params.seed, rng), fixed_seed(params.subseed, rng)
    counts = [min(batch, tiles - i * batch) for i in range(batches)]  # the tiles of each batch
    blank = Image.new("RGB", (params.width, params.height))  # stands for a tile until the job cuts them
    cells, labels = [], []
    for n in range(upscales):
        for i, count in enumerate(counts):
            values = {**dict(params), "init_images": [blank] * count, "n_iter": 1, "seed": seed + n + i,
                      "subseed": subseed, "save_images": False}
            label = f"upscale {n + 1}, tiles {i * batch + 1}-{i * batch + count} of {tiles}"
            cells.append(rebuild(params, values, f"SD upscale: {label}"))
            labels.append(label)
    # A1111's extra_generation_params: in each tile's infotext, before the job's own keys
    fields = (("SD upscale overlap", overlap), ("SD upscale upscaler", name))

    def prepare(job: Job, accepted: list[Accepted]) -> list[Accepted]:
        """The init image upscaled (in the job, with its interrupt) and cut; each cell given its tiles."""
        image = decoded_init(env, params, accepted[0].settings)
        if name != "None":
            job.state.textinfo = f"SD upscale: upscaling with {name}"
            image = env.upscale(image, scale, name, job, accepted[0].settings)
        pieces = grid.tiles(image)
        del image
        out = []
        for k, cell in enumerate(accepted):
            i = k % batches
            given = pieces[i * batch:i * batch + counts[i]]
            ctx = dataclasses.replace(cell.ctx, params=cell.ctx.params.model_copy(update={"init_images": given}),
                                      script_fields=fields)
            out.append(dataclasses.replace(cell, ctx=ctx))
        return out

    # Each upscale's image is put together as its cells finish, a row of tiles at a time, so only one row's tiles
    # are held; a tile not made (the job was interrupted) is black, as in A1111.
    made: dict[int, _Upscale] = {}  # upscale n -> its image so far
    first_text: list[str] = []

    def place(n: int, tiles_in: list[Image.Image]) -> None:
        made.setdefault(n, _Upscale(upscaling.Blend(grid))).place(tiles_in)

    def fold(k: int, result: CellResult | None) -> None:
        n, i = divmod(k, batches)
        # only the batch's own tiles: a depth model's map, or the copies of a lone tile, come after them
        done = result.images[:counts[i]] if result is not None else []
        if result is not None and not first_text:  # A1111: the first batch's infotext, for every image
            first_text.append(result.infotext)
        black = Image.new("RGB", (params.width, params.height))
        place(n, done + [black] * (counts[i] - len(done)))

    def compose(_results: list[CellResult | None]) -> Composed:
        combined, seeds = [], []
        for n in sorted(made):
            while made[n].rows < len(grid.ys):  # the rest of an upscale the job stopped in
                place(n, [Image.new("RGB", (params.width, params.height))] * len(grid.xs))
            combined.append(made[n].blend.image)
            seeds.append(seed + n)
        text = first_text[0] if first_text else ""
        return Composed(None, combined, [text] * len(combined), seeds, save=params.save_images)

    return Plan(TITLE, cells, compose, labels, prepare, fold)
