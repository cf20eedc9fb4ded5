"""Prompts from file or textbox (A1111's scripts/prompts_from_file.py): one job per line. A line is a prompt,
or options in A1111's command-line style: `--prompt "a cat" --steps 10 --negative_prompt "blurry"`. A line's
prompt is put after the page's prompt (or before it: prompt_position "start"), separated by a space.

Arguments, in A1111's order: checkbox_iterate (seed + n x images for line n), checkbox_iterate_batch (the same
random seed for every line), prompt_position ("start" or "end"), prompt_txt (the lines)."""

from __future__ import annotations

import random
import shlex
from typing import Any, Callable

from modules.generation.params import GenerationParams
from modules.services.errors import BadRequest
from modules.services.scripts.base import CellResult, Composed, Plan, fixed_seed, named_args, rebuild

TITLE = "Prompts from file or textbox"
ARG_NAMES = ["checkbox_iterate", "checkbox_iterate_batch", "prompt_position", "prompt_txt"]
MAX_LINES = 1000


def _str(value: str) -> str:
    return value


def _bool(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError("not true or false")
    return value.lower() == "true"


# A1111's prompt_tags: the options a line may give, with the request field each sets (None: refused here)
TAGS: dict[str, tuple[str | None, Callable[[str], Any]]] = {
    "sd_model": ("sd_model_checkpoint", _str), "outpath_samples": (None, _str), "outpath_grids": (None, _str),
    "prompt_for_display": (None, _str), "prompt": ("prompt", _str), "negative_prompt": ("negative_prompt", _str),
    "styles": ("styles", _str), "seed": ("seed", int), "subseed_strength": ("subseed_strength", float),
    "subseed": ("subseed", int), "seed_resize_from_h": ("seed_resize_from_h", int),
    "seed_resize_from_w": ("seed_resize_from_w", int), "sampler_index": ("sampler_name", _str),
    "sampler_name": ("sampler_name", _str), "batch_size": ("batch_size", int), "n_iter": ("n_iter", int),
    "steps": ("steps", int), "cfg_scale": ("cfg_scale", float), "width": ("width", int), "height": ("height", int),
    "restore_faces": (None, _bool), "tiling": ("tiling", _bool), "do_not_save_samples": ("save_images", _bool),
    "do_not_save_grid": ("do_not_save_grid", _bool), "denoising_strength": ("denoising_strength", float),
}
REFUSED = {"outpath_samples": "output folders are the settings' here",
           "outpath_grids": "output folders are the settings' here",
           "prompt_for_display": "not supported", "restore_faces": "face restoration is not available"}


def parse_line(line: str, number: int) -> dict[str, Any]:
    """One line's options ({tag: value}); a line without `--` is a prompt. BadRequest naming the line."""
    if "--" not in line:
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as e:
        raise BadRequest(f"Prompts from file: line {number}: {e}") from None
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--"):
            raise BadRequest(f"Prompts from file: line {number}: {word!r} is not an option (options start with --)")
        tag = word[2:]
        if tag not in TAGS:
            raise BadRequest(f"Prompts from file: line {number}: unknown option --{tag}; options: "
                             + ", ".join(f"--{t}" for t in TAGS))
        values = []
        pos += 1
        while pos < len(words) and not words[pos].startswith("--"):
            values.append(words[pos])
            pos += 1
        if not values and TAGS[tag][1] is not _bool:
            raise BadRequest(f"Prompts from file: line {number}: --{tag} needs a value")
        text = " ".join(values) if values else "true"
        if TAGS[tag][0] is None and not (TAGS[tag][1] is _bool and text.lower() == "false"):
            raise BadRequest(f"Prompts from file: line {number}: --{tag}: {REFUSED[tag]}")
        try:
            out[tag] = TAGS[tag][1](text)
        except ValueError:
            raise BadRequest(f"Prompts from file: line {number}: --{tag} {text!r} is not a "
                             f"{'number' if TAGS[tag][1] in (int, float) else 'true or false'}") from None
    return out


def _apply(params: GenerationParams, options: dict[str, Any], position: str) -> dict[str, Any]:
    values = dict(params)
    values["override_settings"] = dict(values["override_settings"])
    for tag, value in options.items():
        field = TAGS[tag][0]
        if field is None or field == "do_not_save_grid":
            continue
        if field == "sd_model_checkpoint":
            values["override_settings"]["sd_model_checkpoint"] = value
        elif field == "save_images":
            values["save_images"] = values["save_images"] and not value
        elif field == "styles":
            values["styles"] = [s.strip() for s in value.split(",") if s.strip()]
        elif field in ("prompt", "negative_prompt") and getattr(params, field):
            page = getattr(params, field)
            values[field] = f"{value} {page}" if position == "start" else f"{page} {value}"
        else:
            values[field] = value
    return values


def plan(params: GenerationParams, args: list[Any], rng: random.Random | None = None) -> Plan:
    v = named_args(args, ARG_NAMES, TITLE)
    truthy = (True, 1, "true", "True", "1")
    iterate, same_seed = v.get("checkbox_iterate") in truthy, v.get("checkbox_iterate_batch") in truthy
    position = str(v.get("prompt_position", "start") or "start").lower()
    if position not in ("start", "end"):
        raise BadRequest(f"script_args: prompt_position {position!r} must be 'start' or 'end'")
    lines = [line.strip() for line in str(v.get("prompt_txt", "") or "").splitlines() if line.strip()]
    if not lines:
        raise BadRequest("Prompts from file: no lines (script_args: prompt_txt is empty)")
    if len(lines) > MAX_LINES:
        raise BadRequest(f"Prompts from file: {len(lines)} lines, more than {MAX_LINES}")
    if iterate or same_seed:
        params = params.model_copy(update={"seed": fixed_seed(params.seed, rng or random.Random())})
    cells, seed = [], params.seed
    for number, line in enumerate(lines, 1):
        options = parse_line(line, number)
        values = _apply(params.model_copy(update={"seed": seed}), options, position)
        cell = rebuild(params, values, f"Prompts from file: line {number}")
        cells.append(cell)
        if iterate:
            seed = seed + params.batch_size * params.n_iter
    return Plan(TITLE, cells, _compose, [f"line {n}" for n in range(1, len(lines) + 1)])


def _compose(results: list[CellResult | None]) -> Composed:
    made = [r for r in results if r is not None]
    return Composed(None, [im for r in made for im in r.images], [t for r in made for t in r.infotexts],
                    [s for r in made for s in r.seeds])
