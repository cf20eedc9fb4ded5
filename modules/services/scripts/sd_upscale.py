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

from modules import images, upscaling
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.jobs import Job
from modules.services.errors import BadRequest
from modules.services.requests import Accepted
from modules.services.scripts.base import CellResult, Composed, Env, Plan, fixed_seed, rebuild, with_fields

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


def plan(params: GenerationParams, args: list[Any], env: Env, kind: str, rng: random.Random | None = None) -> Plan:
    if kind != "img2img" or not isinstance(params, Img2ImgParams):
        raise BadRequest("SD upscale is an img2img script: it repaints an init image")
    if not params.init_images:
        raise BadRequest("SD upscale: send an init image (init_images)")
    if len(args) > len(ARG_NAMES):
        raise BadRequest(f"script_args: SD upscale takes at most {len(ARG_NAMES)} arguments "
                         f"({', '.join(ARG_NAMES)}); got {len(args)}")
    v = dict(zip(ARG_NAMES, args))
    overlap = int(_number(v.get("overlap", 64), "overlap", 0, MAX_OVERLAP))
    name = _upscaler(v.get("upscaler_index", 0), env.upscalers())
    scale = _number(v.get("scale_factor", 2.0), "scale_factor", 1.0, MAX_SCALE)
    if overlap >= min(params.width, params.height):
        raise BadRequest(f"SD upscale: the tile overlap ({overlap}) must be smaller than a tile "
                         f"({params.width}x{params.height}: the width and height)")
    init = params.init_images[0]
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
    batches = math.ceil(tiles / batch)
    rng = rng or random.Random()
    seed, subseed = fixed_seed(params.seed, rng), fixed_seed(params.subseed, rng)
    blank = Image.new("RGB", (params.width, params.height))  # stands for a tile until the job cuts them
    cells, labels = [], []
    for n in range(upscales):
        for i in range(batches):
            count = min(batch, tiles - i * batch)
            values = {**dict(params), "init_images": [blank] * count, "n_iter": 1, "seed": seed + n + i,
                      "subseed": subseed, "save_images": False}
            label = f"upscale {n + 1}, tiles {i * batch + 1}-{i * batch + count} of {tiles}"
            cells.append(rebuild(params, values, f"SD upscale: {label}"))
            labels.append(label)
    fields = {"SD upscale overlap": overlap, "SD upscale upscaler": name}

    def prepare(job: Job, accepted: list[Accepted]) -> list[Accepted]:
        """The init image upscaled (in the job, with its interrupt) and cut; each cell given its tiles."""
        image = images.flatten(env.decode(params.init_images[0]), accepted[0].settings.img2img_background_color)
        if name != "None":
            image = env.upscale(image, scale, name, job, accepted[0].settings)
        pieces = grid.tiles(image)
        out = []
        for k, cell in enumerate(accepted):
            i = k % batches
            given = pieces[i * batch:(i + 1) * batch]
            ctx = dataclasses.replace(cell.ctx, params=cell.ctx.params.model_copy(update={"init_images": given}))
            out.append(dataclasses.replace(cell, ctx=ctx))
        return out

    def compose(results: list[CellResult | None]) -> Composed:
        made_any = [r for r in results if r is not None]
        if not made_any:
            return Composed(None, [], [], [])
        text = with_fields(made_any[0].infotext, fields)  # A1111: every image carries the first batch's infotext
        combined, seeds = [], []
        for n in range(upscales):
            made = results[n * batches:(n + 1) * batches]
            if not any(made):
                continue
            work = [im for r in made if r is not None for im in r.images]
            blend, k = upscaling.Blend(grid), 0
            for y in grid.ys:
                row = []
                for _x in grid.xs:  # a tile not made (interrupted) is black, as in A1111
                    row.append(work[k] if k < len(work) else Image.new("RGB", (params.width, params.height)))
                    k += 1
                blend.add_row(y, row)
            combined.append(blend.image)
            seeds.append(seed + n)
        return Composed(None, combined, [text] * len(combined), seeds, save=params.save_images)

    return Plan(TITLE, cells, compose, labels, prepare)
