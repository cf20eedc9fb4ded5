"""X/Y/Z plot (A1111's scripts/xyz_grid.py): a grid of images that differ in one to three parameters.

The axis types are A1111's, in its order, so `x_type` etc. (indexes into the list for txt2img or img2img) mean
the same here. An axis whose feature this app does not have is listed and refused (`Axis.refused`). Values are
written as A1111 takes them: comma-separated (CSV quoting), with ranges for numbers: `1-5`, `1-5 (+2)`,
`1-10 [5]` (five evenly spaced), `0.5-1.5 (+0.25)`, `0-1 [3]`.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

from modules import images, prompt_syntax
from modules.generation import hires, samplers
from modules.generation.params import GenerationParams
from modules.services.errors import BadRequest
from modules.services.scripts.base import CellResult, Composed, Env, Plan, fixed_seed, named_args, rebuild, with_fields

TITLE = "X/Y/Z plot"
Apply = Callable[[dict[str, Any], Any, list[Any]], None]

# What one plot may ask for, counted before any list of values or cells is made (A1111 expands `1-1000000000`
# or `1-10 [1000000000]` first and checks only the grid's size, which settings may raise, afterwards). Far above
# any real plot: the grid's megapixels (the setting img_max_size_mp, 200 by default) bind long before these.
MAX_AXIS_VALUES = 1000  # values of one axis, ranges expanded
MAX_ORDER_ITEMS = max(n for n in range(1, 20) if math.factorial(n) <= MAX_AXIS_VALUES)  # Prompt order: 6! = 720
MAX_CELLS = 10_000  # images of the whole plot (x values * y values * z values)
MAX_VALUES_CHARS = 256 * 1024  # the text of one axis's values


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str  # "int", "float", "str", "perm" (Prompt order) or "nothing"
    apply: Apply | None = None
    label_style: str = "label"  # the legend: "label" (Steps: 20), "value", "join" (a, b), "path" (file name)
    cost: float = 0.0  # costly axes (a model load) are looped outermost, so each value loads once
    choices: Callable[[Env], list[str]] | None = None  # the page offers these in a dropdown
    only: str | None = None  # "txt2img" or "img2img": shown on that tab only
    refused: str | None = None  # why this app cannot vary it

    def legend(self, value: Any) -> str:
        if isinstance(value, float):
            value = round(value, 8)
            value = int(value) if value.is_integer() and self.kind != "float" else value
        if self.label_style == "value":
            return str(value)
        if self.label_style == "join":
            return ", ".join(value)
        if self.label_style == "path":
            return str(value).replace("\\", "/").rsplit("/", 1)[-1]
        if self.kind == "nothing":
            return ""
        return f"{self.label}: {value}"


def _field(name: str) -> Apply:
    def apply(cur: dict[str, Any], x: Any, _xs: list[Any]) -> None:
        cur[name] = x
    return apply


def _override(name: str, boolean: bool = False, strict: bool = False) -> Apply:
    """An axis that sets setting `name` per cell; `boolean`: "true" (any case) is True, anything else False, or with
    `strict` a 400 (A1111's Hypertile axes assert it)."""
    def apply(cur: dict[str, Any], x: Any, _xs: list[Any]) -> None:
        if strict and str(x).strip().lower() not in ("true", "false"):
            raise BadRequest(f"{name}: {x!r} is not true or false")
        value = str(x).strip().lower() == "true" if boolean else x
        cur["override_settings"] = {**cur["override_settings"], name: value}
    return apply


def _prompt_sr(cur: dict[str, Any], x: str, xs: list[str]) -> None:
    if xs[0] not in cur["prompt"] and xs[0] not in cur["negative_prompt"]:
        raise BadRequest(f"Prompt S/R did not find {xs[0]!r} in the prompt or the negative prompt")
    for name in ("prompt", "negative_prompt"):  # the length first: each of many matches may grow by len(x)
        length = len(cur[name]) + cur[name].count(xs[0]) * (len(x) - len(xs[0]))
        if length > prompt_syntax.MAX_PROMPT_CHARS:
            raise BadRequest(f"{name}: {length} characters with {xs[0]!r} replaced by {x[:40]!r}"
                             f"{'...' if len(x) > 40 else ''}; at most {prompt_syntax.MAX_PROMPT_CHARS}")
    cur["prompt"] = cur["prompt"].replace(xs[0], x)
    cur["negative_prompt"] = cur["negative_prompt"].replace(xs[0], x)


def _prompt_order(cur: dict[str, Any], x: tuple[str, ...], _xs: list[Any]) -> None:
    """The tokens of `x` put into the prompt in x's order, at the places where they were found."""
    prompt = cur["prompt"]
    missing = [token for token in x if token not in prompt]
    if missing:
        raise BadRequest(f"Prompt order did not find {missing[0]!r} in the prompt")
    found = sorted((prompt.find(token), token) for token in x)
    parts = []
    for _, token in found:
        n = prompt.find(token)
        parts.append(prompt[:n])
        prompt = prompt[n + len(token):]
    cur["prompt"] = "".join(part + token for part, token in zip(parts, x)) + prompt


def _checkpoint(env: Env) -> Apply:
    def apply(cur: dict[str, Any], x: str, _xs: list[Any]) -> None:
        title = env.find_checkpoint(x)
        if title is None:
            raise BadRequest(f"unknown checkpoint {x!r}; available: {', '.join(env.checkpoints()) or 'none'}")
        cur["override_settings"] = {**cur["override_settings"], "sd_model_checkpoint": title}
    return apply


def _vae(env: Env) -> Apply:
    """A1111's find_vae: Automatic, None, or the shortest VAE file name that contains the value."""
    def apply(cur: dict[str, Any], x: str, _xs: list[Any]) -> None:
        name = x.strip()
        if name.lower() in ("auto", "automatic"):
            name = "Automatic"
        elif name.lower() == "none":
            name = "None"
        else:
            matches = sorted((v for v in env.vaes() if name.lower() in v.lower()), key=len)
            if not matches:
                raise BadRequest(f"no VAE named like {x!r}; available: {', '.join(env.vaes()) or 'none'}")
            name = matches[0]
        cur["override_settings"] = {**cur["override_settings"], "sd_vae": name}
    return apply


def _styles(cur: dict[str, Any], x: str, _xs: list[Any]) -> None:
    cur["styles"] = [*cur["styles"], *(s.strip() for s in x.split(",") if s.strip())]


def _uni_pc_order(cur: dict[str, Any], x: int, _xs: list[Any]) -> None:
    cur["override_settings"] = {**cur["override_settings"], "uni_pc_order": max(1, min(x, cur["steps"] - 1))}


def _initial_noise(cur: dict[str, Any], x: float, _xs: list[Any]) -> None:
    if "init_images" in cur:  # img2img's request field; txt2img only has the setting (and does not use it)
        cur["initial_noise_multiplier"] = x
    else:
        cur["override_settings"] = {**cur["override_settings"], "initial_noise_multiplier": x}


def _size(cur: dict[str, Any], x: str, _xs: list[Any]) -> None:
    parts = x.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise BadRequest(f"Size {x!r} is not WIDTHxHEIGHT, e.g. 512x768")
    cur["width"], cur["height"] = int(parts[0]), int(parts[1])


def _depths(_env: Env) -> list[str]:
    return ["0", "1", "2", "3"]


def _bools(_env: Env) -> list[str]:
    return ["False", "True"]


def axes(env: Env) -> list[Axis]:
    """Every axis type, in A1111's order (both tabs' ones; see `axes_for`)."""
    return [
        Axis("Nothing", "nothing", label_style="none"),
        Axis("Seed", "int", _field("seed")),
        Axis("Var. seed", "int", _field("subseed")),
        Axis("Var. strength", "float", _field("subseed_strength")),
        Axis("Steps", "int", _field("steps")),
        Axis("Hires steps", "int", _field("hr_second_pass_steps"), only="txt2img"),
        Axis("CFG Scale", "float", _field("cfg_scale")),
        Axis("Image CFG Scale", "float", only="img2img",
             refused="Image CFG Scale is for InstructPix2Pix models, which this app does not support"),
        Axis("Prompt S/R", "str", _prompt_sr, label_style="value"),
        Axis("Prompt order", "perm", _prompt_order, label_style="join"),
        Axis("Sampler", "str", _field("sampler_name"), label_style="value", choices=lambda e: e.samplers(),
             only="txt2img"),
        Axis("Hires sampler", "str", _field("hr_sampler_name"), choices=lambda e: e.samplers(), only="txt2img"),
        Axis("Sampler", "str", _field("sampler_name"), label_style="value", choices=lambda e: e.samplers(),
             only="img2img"),
        Axis("Checkpoint name", "str", _checkpoint(env), label_style="path", cost=1.0,
             choices=lambda e: sorted(e.checkpoints(), key=str.casefold)),
        Axis("Negative Guidance minimum sigma", "float", _field("s_min_uncond")),
        Axis("Sigma Churn", "float", _field("s_churn")),
        Axis("Sigma min", "float", _field("s_tmin")),
        Axis("Sigma max", "float", _field("s_tmax")),
        Axis("Sigma noise", "float", _field("s_noise")),
        Axis("Schedule type", "str", _field("scheduler"), choices=lambda e: [label for _, label in
                                                                             samplers.SCHEDULE_TYPES]),
        Axis("Schedule min sigma", "float", _override("sigma_min")),
        Axis("Schedule max sigma", "float", _override("sigma_max")),
        Axis("Schedule rho", "float", _override("rho")),
        Axis("Beta schedule alpha", "float", _override("beta_dist_alpha")),
        Axis("Beta schedule beta", "float", _override("beta_dist_beta")),
        Axis("Eta", "float", _field("eta")),
        Axis("Clip skip", "int", _override("CLIP_stop_at_last_layers")),
        Axis("Denoising", "float", _field("denoising_strength")),
        Axis("Initial noise multiplier", "float", _initial_noise),
        Axis("Extra noise", "float", _override("img2img_extra_noise")),
        Axis("Hires upscaler", "str", _field("hr_upscaler"), choices=lambda e: hires.names(e.upscalers()),
             only="txt2img"),
        Axis("Cond. Image Mask Weight", "float", _override("inpainting_mask_weight"), only="img2img"),
        Axis("VAE", "str", _vae(env), cost=0.7, choices=lambda e: ["Automatic", "None", *e.vaes()]),
        Axis("Styles", "str", _styles, choices=lambda e: e.styles()),
        Axis("UniPC Order", "int", _uni_pc_order, cost=0.5),
        Axis("Face restore", "str", label_style="value",
             refused="Face restoration (CodeFormer, GFPGAN) is not available in this app"),
        Axis("Token merging ratio", "float", _override("token_merging_ratio")),
        Axis("Token merging ratio high-res", "float", _override("token_merging_ratio_hr")),
        Axis("Always discard next-to-last sigma", "str", _override("always_discard_next_to_last_sigma", True),
             choices=_bools),
        Axis("SGM noise multiplier", "str", _override("sgm_noise_multiplier", True), choices=_bools),
        Axis("Refiner checkpoint", "str", _field("refiner_checkpoint"), label_style="path", cost=1.0,
             choices=lambda e: ["None", *sorted(e.checkpoints(), key=str.casefold)]),
        Axis("Refiner switch at", "float", _field("refiner_switch_at")),
        Axis("RNG source", "str", _override("randn_source"), choices=lambda e: ["GPU", "CPU", "NV"]),
        Axis("FP8 mode", "str", _override("fp8_storage"), cost=0.9,
             choices=lambda e: ["Disable", "Enable for SDXL", "Enable"]),
        Axis("Size", "str", _size),
        # A1111's built-in Hypertile extension adds these after the others
        *(Axis(f"[Hypertile] {label}", "str", _override(name, True, True), choices=_bools) for label, name in (
            ("Unet First pass Enabled", "hypertile_enable_unet"),
            ("Unet Second pass Enabled", "hypertile_enable_unet_secondpass"))),
        Axis("[Hypertile] Unet Max Depth", "int", _override("hypertile_max_depth_unet"), choices=_depths),
        Axis("[Hypertile] Unet Max Tile Size", "int", _override("hypertile_max_tile_unet")),
        Axis("[Hypertile] Unet Swap Size", "int", _override("hypertile_swap_size_unet")),
        Axis("[Hypertile] VAE Enabled", "str", _override("hypertile_enable_vae", True, True), choices=_bools),
        Axis("[Hypertile] VAE Max Depth", "int", _override("hypertile_max_depth_vae"), choices=_depths),
        Axis("[Hypertile] VAE Max Tile Size", "int", _override("hypertile_max_tile_vae")),
        Axis("[Hypertile] VAE Swap Size", "int", _override("hypertile_swap_size_vae")),
    ]


def axes_for(env: Env, kind: str) -> list[Axis]:
    """The axis types a tab offers, in order: `x_type` etc. are indexes into this list."""
    return [a for a in axes(env) if a.only in (None, kind)]


# A1111's range syntax: a-b, a-b (+step), a-b [count]
RANGE_INT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
RANGE_INT_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)\s*\[(\d+)\s*]\s*")
_NUM = r"[+-]?\s*\d+(?:\.\d*)?"
RANGE_FLOAT = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
RANGE_FLOAT_COUNT = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})\s*\[(\d+)\s*]\s*")


def csv_values(text: str) -> list[str]:
    """A1111's value list: CSV (quotes allowed), each value stripped, empty ones dropped."""
    rows = csv.reader(io.StringIO(text or ""))
    return [v.strip() for row in rows for v in row if v.strip()]


def _num(text: str) -> str:
    return text.replace(" ", "")


def _whole(text: str, value: str, where: str) -> int:
    try:
        return int(_num(text))
    except ValueError:  # more digits than Python converts (4300)
        raise BadRequest(f"{where}: {value!r}: {text.strip()[:20]!r}... is too long a number") from None


def _room(count: int, room: int, value: str, where: str) -> None:
    """Refuse (BadRequest) a value that expands to `count` values where only `room` more fit on the axis."""
    if count > room:
        others = MAX_AXIS_VALUES - room
        after = f" after {others} other{'s' if others != 1 else ''}" if others else ""
        raise BadRequest(f"{where}: {value!r} gives {count} values{after}; at most {MAX_AXIS_VALUES} an axis")


def _expand_int(value: str, where: str, room: int = MAX_AXIS_VALUES) -> list[int]:
    """The whole numbers `value` stands for; BadRequest when they are more than `room` (counted first)."""
    mc = RANGE_INT_COUNT.fullmatch(value)
    if mc:
        start, end, count = _whole(mc[1], value, where), _whole(mc[2], value, where), _whole(mc[3], value, where)
        if count < 1:
            raise BadRequest(f"{where}: {value!r}: the count in [ ] must be at least 1")
        _room(count, room, value, where)
        return [int(v) for v in np.linspace(start, end, count).tolist()]
    m = RANGE_INT.fullmatch(value)
    if m:
        start, end = _whole(m[1], value, where), _whole(m[2], value, where)
        step = _whole(m[3], value, where) if m[3] else 1
        if step == 0:
            raise BadRequest(f"{where}: {value!r}: the step must not be 0")
        count = max(0, (end - start) // step + 1)  # len(range(start, end +/- 1, step)), without an overflow
        _room(count, room, value, where)
        return list(range(start, end + (1 if step > 0 else -1), step))
    try:
        return [int(value)]
    except ValueError:
        raise BadRequest(f"{where}: {value!r} is not a whole number or a range like 1-5, 1-5 (+2), 1-10 [5]") \
            from None


def _expand_float(value: str, where: str, room: int = MAX_AXIS_VALUES) -> list[float]:
    """The numbers `value` stands for; BadRequest when they are more than `room` (counted first)."""
    mc = RANGE_FLOAT_COUNT.fullmatch(value)
    if mc:
        start, end, count = float(_num(mc[1])), float(_num(mc[2])), _whole(mc[3], value, where)
        if count < 1:
            raise BadRequest(f"{where}: {value!r}: the count in [ ] must be at least 1")
        _room(count, room, value, where)
        return np.linspace(start, end, count).tolist()
    m = RANGE_FLOAT.fullmatch(value)
    if m:
        start, end, step = float(_num(m[1])), float(_num(m[2])), float(m[3]) if m[3] else 1.0
        if step == 0:
            raise BadRequest(f"{where}: {value!r}: the step must not be 0")
        span = (end - start) / step + 1e-9
        if not np.isfinite(span):
            raise BadRequest(f"{where}: {value!r} is not a range of finite numbers")
        count = int(np.floor(span)) + 1
        if count < 1:
            return []
        _room(count, room, value, where)
        return [round(start + i * step, 10) for i in range(count)]
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"{where}: {value!r} is not a number or a range like 0.5-1.5 (+0.25), 0-1 [3]") from None
    if not np.isfinite(number):
        raise BadRequest(f"{where}: {value!r} is not a finite number")
    return [number]


def _orders(items: list[str], where: str) -> list[tuple[str, ...]]:
    """Prompt order's values: every order of `items` (n! of them, refused before they are made when more than
    MAX_AXIS_VALUES)."""
    if len(items) > MAX_ORDER_ITEMS:
        n = len(items)
        orders = f"{math.factorial(n)} orders" if n <= 20 else f"{n}! orders"
        raise BadRequest(f"{where}: {n} items give {orders}; at most {MAX_AXIS_VALUES} values an axis, so at most "
                         f"{MAX_ORDER_ITEMS} items ({math.factorial(MAX_ORDER_ITEMS)} orders)")
    return list(itertools.permutations(items))


def _values_text(text: str, where: str) -> str:
    if len(text) > MAX_VALUES_CHARS:
        raise BadRequest(f"{where}: the values are {len(text)} characters; at most {MAX_VALUES_CHARS}")
    return text


def parse_values(axis: Axis, text: str, dropdown: list[str] | None, csv_mode: bool, where: str) -> list[Any]:
    """An axis's values from its text (or, for an axis with choices and csv_mode off, the dropdown's list, as
    A1111 does; an empty dropdown falls back to the text). BadRequest naming `where` for a bad one, and for
    more than MAX_AXIS_VALUES values (counted before a range or Prompt order's orders are made)."""
    if axis.kind == "nothing":
        return [None]
    if axis.refused:
        raise BadRequest(f"{where}: {axis.label!r} cannot be plotted here: {axis.refused}")
    if axis.choices and not csv_mode and dropdown:
        raw = [str(v) for v in dropdown]
    else:
        raw = csv_values(_values_text(text, where))
    if not raw:
        raise BadRequest(f"{where}: no values for {axis.label!r}")
    if len(raw) > MAX_AXIS_VALUES:
        raise BadRequest(f"{where}: {len(raw)} values; at most {MAX_AXIS_VALUES} an axis")
    values: list[Any] = []
    if axis.kind in ("int", "float"):
        expand = _expand_int if axis.kind == "int" else _expand_float
        for r in raw:
            values.extend(expand(r, where, MAX_AXIS_VALUES - len(values)))
    elif axis.kind == "perm":
        values = _orders(raw, where)
    else:
        values = raw
    if not values:
        raise BadRequest(f"{where}: the values {text!r} give no value for {axis.label!r}")
    return values


@dataclass(frozen=True)
class XyzArgs:
    """A1111's X/Y/Z plot arguments (`run`'s, in order)."""
    x_type: int = 1
    x_values: str = ""
    x_values_dropdown: tuple = ()
    y_type: int = 0
    y_values: str = ""
    y_values_dropdown: tuple = ()
    z_type: int = 0
    z_values: str = ""
    z_values_dropdown: tuple = ()
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds_x: bool = False
    vary_seeds_y: bool = False
    vary_seeds_z: bool = False
    margin_size: int = 0
    csv_mode: bool = False


ARG_NAMES = list(XyzArgs.__dataclass_fields__)


def read_args(args: list[Any], options: list[Axis]) -> XyzArgs:
    """script_args in A1111's order (fewer are filled with the defaults); an axis type may be its index or its
    label. BadRequest naming the argument that is wrong."""
    values = named_args(args, ARG_NAMES, TITLE)
    for name in ("x_type", "y_type", "z_type"):
        if name in values:
            values[name] = _axis_index(values[name], options, name)
    for name in ("x_values", "y_values", "z_values"):
        if name in values:
            values[name] = "" if values[name] is None else str(values[name])
    for name in ("x_values_dropdown", "y_values_dropdown", "z_values_dropdown"):
        if name in values:
            v = values[name]
            if isinstance(v, (list, tuple)):
                if len(v) > MAX_AXIS_VALUES:
                    raise BadRequest(f"script_args: {name}: {len(v)} values; at most {MAX_AXIS_VALUES} an axis")
                values[name] = tuple(str(i) for i in v)
            else:
                values[name] = tuple(csv_values(_values_text(str(v or ""), f"script_args: {name}")))
    for name in ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
                 "vary_seeds_y", "vary_seeds_z", "csv_mode"):
        if name in values:
            values[name] = values[name] in (True, 1, "true", "True", "1")
    if "margin_size" in values:
        try:
            values["margin_size"] = max(0, min(500, int(values["margin_size"] or 0)))
        except (TypeError, ValueError):
            raise BadRequest(f"script_args: margin_size {values['margin_size']!r} is not a number") from None
    return XyzArgs(**values)


def _axis_index(value: Any, options: list[Axis], name: str) -> int:
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        for i, axis in enumerate(options):
            if axis.label.lower() == value.strip().lower():
                return i
        raise BadRequest(f"script_args: {name} {value!r} is not an axis type; types: "
                         + ", ".join(a.label for a in options))
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"script_args: {name} {value!r} is not an axis type index") from None
    if not 0 <= index < len(options):
        raise BadRequest(f"script_args: {name} {index} is not an axis type index (0 to {len(options) - 1}: "
                         + ", ".join(f"{i} {a.label}" for i, a in enumerate(options)) + ")")
    return index


def loop_order(costs: tuple[float, float, float]) -> tuple[int, int, int]:
    """Which axes (0 x, 1 y, 2 z) are looped outermost to innermost: the costliest outermost (A1111's rule;
    by default z, then y, then x)."""
    x, y, z = costs
    if x > y and x > z:
        return (0, 1, 2) if y > z else (0, 2, 1)
    if y > x and y > z:
        return (1, 0, 2) if x > z else (1, 2, 0)
    if z > x and z > y:
        return (2, 0, 1) if x > y else (2, 1, 0)
    return (2, 1, 0)


def cell_order(counts: tuple[int, int, int], order: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """The (ix, iy, iz) of each cell in the order they run."""
    ranges = [range(counts[axis]) for axis in order]
    out = []
    for outer, middle, inner in itertools.product(*ranges):
        index = [0, 0, 0]
        index[order[0]], index[order[1]], index[order[2]] = outer, middle, inner
        out.append((index[0], index[1], index[2]))
    return out


def _fix_axis_seeds(axis: Axis, values: list[Any], rng: random.Random) -> list[Any]:
    if axis.label in ("Seed", "Var. seed"):
        return [fixed_seed(v, rng) for v in values]
    return values


def plan(params: GenerationParams, args: list[Any], env: Env, kind: str, rng: random.Random | None = None) -> Plan:
    """The plot's cells, in the order they run, and how to draw it."""
    rng = rng or random.Random()
    options = axes_for(env, kind)
    a = read_args(args, options)
    chosen = [options[a.x_type], options[a.y_type], options[a.z_type]]
    texts = [(a.x_values, a.x_values_dropdown), (a.y_values, a.y_values_dropdown), (a.z_values, a.z_values_dropdown)]
    values = [parse_values(axis, text, list(drop), a.csv_mode, f"X/Y/Z plot: {name} axis ({axis.label})")
              for name, axis, (text, drop) in zip("XYZ", chosen, texts)]
    if not a.no_fixed_seeds:
        params = params.model_copy(update={"seed": fixed_seed(params.seed, rng),
                                           "subseed": fixed_seed(params.subseed, rng)})
        values = [_fix_axis_seeds(axis, v, rng) for axis, v in zip(chosen, values)]
    counts = (len(values[0]), len(values[1]), len(values[2]))
    if math.prod(counts) > MAX_CELLS:
        raise BadRequest(f"X/Y/Z plot: {counts[0]} x {counts[1]} x {counts[2]} values make {math.prod(counts)} "
                         f"images; at most {MAX_CELLS} a plot")
    grid_mp = round(counts[0] * counts[1] * counts[2] * params.width * params.height / 1_000_000)
    if grid_mp >= env.img_max_size_mp:
        raise BadRequest(f"X/Y/Z plot: the grid would be too large ({grid_mp} megapixels; the setting "
                         f"img_max_size_mp allows less than {env.img_max_size_mp})")
    order = cell_order(counts, loop_order((chosen[0].cost, chosen[1].cost, chosen[2].cost)))
    cells, labels = [], []
    for ix, iy, iz in order:
        cells.append(_cell(params, a, chosen, values, (ix, iy, iz)))
        labels.append(_describe(chosen, values, (ix, iy, iz)))
    fields = _infotext_fields(a, chosen, values)
    return Plan(TITLE, cells, lambda results: _compose(results, order, chosen, values, a, fields), labels)


def _cell(params: GenerationParams, a: XyzArgs, chosen: list[Axis], values: list[list[Any]],
          index: tuple[int, int, int]) -> GenerationParams:
    cur = dict(params)
    cur["override_settings"] = dict(cur["override_settings"])
    cur["styles"] = list(cur["styles"])
    for name, axis, vals, i in zip("XYZ", chosen, values, index):
        if axis.apply is None:
            continue
        try:
            axis.apply(cur, vals[i], vals)
        except BadRequest as e:
            raise BadRequest(f"X/Y/Z plot: {name} axis ({axis.label}): {e}") from None
    nx, ny = len(values[0]), len(values[1])
    xdim, ydim = (nx if a.vary_seeds_x else 1), (ny if a.vary_seeds_y else 1)
    if cur["seed"] != -1:
        cur["seed"] += (index[0] if a.vary_seeds_x else 0) + (index[1] * xdim if a.vary_seeds_y else 0) + \
            (index[2] * xdim * ydim if a.vary_seeds_z else 0)
    return rebuild(params, cur, f"X/Y/Z plot: {_describe(chosen, values, index)}")


def _describe(chosen: list[Axis], values: list[list[Any]], index: tuple[int, int, int]) -> str:
    """A cell, for a message: "X axis (Steps) value 'Steps: 3', Y axis ..."."""
    return ", ".join(f"{n} axis ({axis.label}) value {axis.legend(vals[i])!r}"
                     for n, axis, vals, i in zip("XYZ", chosen, values, index) if axis.kind != "nothing") or "the cell"


def _joined(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _infotext_fields(a: XyzArgs, chosen: list[Axis], values: list[list[Any]]) -> dict[str, dict[str, Any]]:
    """The keys A1111 adds to the grid's infotext (`sub` for each sub-grid, `main` for the whole plot)."""
    sub: dict[str, Any] = {"Script": TITLE}
    texts = [(a.x_values, a.x_values_dropdown), (a.y_values, a.y_values_dropdown), (a.z_values, a.z_values_dropdown)]
    per_axis = []
    for name, axis, vals, (text, drop) in zip("XYZ", chosen, values, texts):
        keys: dict[str, Any] = {}
        if axis.kind != "nothing":
            keys[f"{name} Type"] = axis.label
            keys[f"{name} Values"] = text if not (axis.choices and not a.csv_mode and drop) else \
                _csv_line(list(drop))
            if axis.label in ("Seed", "Var. seed") and not a.no_fixed_seeds:
                keys[f"Fixed {name} Values"] = _joined(vals)
        per_axis.append(keys)
    sub.update(per_axis[0])
    sub.update(per_axis[1])
    return {"sub": sub, "main": {**sub, **per_axis[2]}}


def _csv_line(values: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue().strip()


def _cell_size(results: list[CellResult | None]) -> tuple[int, int]:
    made = [r.image.size for r in results if r is not None]
    return (max(w for w, _ in made), max(h for _, h in made)) if made else (64, 64)


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A cell's image on a black canvas of `size` (cells of a Size axis differ in size)."""
    if image.size == size:
        return image.convert("RGB")
    canvas = Image.new("RGB", size, "black")
    canvas.paste(image.convert("RGB"), ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return canvas


def _compose(results: list[CellResult | None], order: list[tuple[int, int, int]], chosen: list[Axis],
             values: list[list[Any]], a: XyzArgs, fields: dict[str, dict[str, Any]]) -> Composed:
    nx, ny, nz = (len(v) for v in values)
    by_index: list[CellResult | None] = [None] * (nx * ny * nz)
    for (ix, iy, iz), result in zip(order, results):
        by_index[ix + iy * nx + iz * nx * ny] = result
    made = [r for r in by_index if r is not None]
    if not made:
        return Composed(None, [], [], [])
    size = _cell_size(by_index)
    cells = [_fit(r.image, size) if r is not None else Image.new("RGB", size, "black") for r in by_index]
    x_labels = [[(chosen[0].legend(v), True)] for v in values[0]]
    y_labels = [[(chosen[1].legend(v), True)] for v in values[1]]
    sub_grids, sub_texts = [], []
    for iz in range(nz):
        part = cells[iz * nx * ny:(iz + 1) * nx * ny]
        grid = images.image_grid(part, 1, ny)
        if a.draw_legend:
            grid = images.draw_grid_annotations(grid, size[0], size[1], x_labels, y_labels, a.margin_size)
        sub_grids.append(grid)
        first = by_index[iz * nx * ny] or made[0]
        sub_texts.append(with_fields(first.infotext, fields["sub"]))
    grid = images.image_grid(sub_grids, 1, 1)
    if a.draw_legend and chosen[2].kind != "nothing":
        z_labels = [[(chosen[2].legend(v), True)] for v in values[2]]
        grid = images.draw_grid_annotations(grid, sub_grids[0].width, sub_grids[0].height, z_labels, [], 0)
    grid_text = with_fields((by_index[0] or made[0]).infotext, fields["main"])
    out_images, out_texts, out_seeds = [], [], []
    if a.include_sub_grids and nz > 1:
        out_images += sub_grids
        out_texts += sub_texts
        out_seeds += [(by_index[iz * nx * ny] or made[0]).seed for iz in range(nz)]
    if a.include_lone_images:
        out_images += [r.image for r in made]
        out_texts += [r.infotext for r in made]
        out_seeds += [r.seed for r in made]
    return Composed(grid, out_images, out_texts, out_seeds, grid_text, "xyz_grid")


def _no_lookups() -> Env:
    return Env(lambda name: None, list, list, list)


def args_from_infotext(parsed: dict[str, Any], kind: str) -> list[Any] | None:
    """The script_args an X/Y/Z plot grid's infotext stands for (A1111's paste of `X Type`, `X Values`, ...),
    with the seeds the plot used (`Fixed X Values`) so that it is made again as it was; None for another
    infotext."""
    if str(parsed.get("Script", "")).strip() != TITLE:
        return None
    options = axes_for(_no_lookups(), kind)
    labels = [a.label for a in options]
    args: list[Any] = []
    for name in "XYZ":
        label = str(parsed.get(f"{name} Type", "Nothing"))
        index = labels.index(label) if label in labels else 0
        text = str(parsed.get(f"Fixed {name} Values") or parsed.get(f"{name} Values") or "")
        args += [index, text, csv_values(text) if options[index].choices else []]
    return args + [True, False, False, False, False, False, False, 0, False]
