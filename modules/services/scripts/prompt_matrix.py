"""Prompt matrix (A1111's scripts/prompt_matrix.py): the prompt's parts after the first, split at `|`, each
left out or put in, one image for every combination (2^(parts-1)), drawn as a grid whose legend strikes the
parts an image leaves out.

Arguments, in A1111's order: put_at_start (the variable parts before the first instead of after it),
different_seeds (seed + i for the i-th combination), prompt_type ("positive" or "negative": which prompt is
split), variations_delimiter ("comma" or "space"), margin_size (pixels between the images)."""

from __future__ import annotations

import math
import random
from typing import Any

from PIL import Image

from modules import images
from modules.generation.params import GenerationParams
from modules.services.errors import BadRequest
from modules.services.scripts.base import CellResult, Composed, Plan, fixed_seed, named_args, rebuild

TITLE = "Prompt matrix"
ARG_NAMES = ["put_at_start", "different_seeds", "prompt_type", "variations_delimiter", "margin_size"]
MAX_PARTS = 12  # 4096 combinations
# The combinations' prompts together, counted before they are made: 4096 of a prompt at the length limit (65536
# characters) would be 268 million characters, 1 GiB; this is 4096 of a 4096-character prompt.
MAX_TOTAL_CHARS = 16 * 1024 * 1024


def combinations(prompt: str, put_at_start: bool, delimiter: str) -> tuple[list[str], list[str]]:
    """(the variable parts, the prompt of each combination): combination n has part i when bit i of n is set."""
    parts = prompt.split("|")
    variable = [p.strip().strip(",") for p in parts[1:]]
    prompts = []
    for n in range(2 ** len(variable)):
        chosen = [text for i, text in enumerate(variable) if n & (1 << i)]
        ordered = chosen + [parts[0]] if put_at_start else [parts[0]] + chosen
        prompts.append(delimiter.join(ordered))
    return variable, prompts


def _read(args: list[Any]) -> tuple[bool, bool, str, str, int]:
    v = named_args(args, ARG_NAMES, TITLE)
    prompt_type = str(v.get("prompt_type", "positive") or "positive").lower()
    delimiter = str(v.get("variations_delimiter", "comma") or "comma").lower()
    if prompt_type not in ("positive", "negative"):
        raise BadRequest(f"script_args: prompt_type {prompt_type!r} must be 'positive' or 'negative'")
    if delimiter not in ("comma", "space"):
        raise BadRequest(f"script_args: variations_delimiter {delimiter!r} must be 'comma' or 'space'")
    try:
        margin = max(0, min(500, int(v.get("margin_size", 0) or 0)))
    except (TypeError, ValueError):
        raise BadRequest(f"script_args: margin_size {v.get('margin_size')!r} is not a number") from None
    truthy = (True, 1, "true", "True", "1")
    return v.get("put_at_start") in truthy, v.get("different_seeds") in truthy, prompt_type, delimiter, margin


def plan(params: GenerationParams, args: list[Any], rng: random.Random | None = None) -> Plan:
    put_at_start, different_seeds, prompt_type, delimiter, margin = _read(args)
    field = "prompt" if prompt_type == "positive" else "negative_prompt"
    text = getattr(params, field)
    if text.count("|") > MAX_PARTS:
        raise BadRequest(f"Prompt matrix: at most {MAX_PARTS} parts after the first (| separated) in the {field}")
    joint = ", " if delimiter == "comma" else " "
    parts = text.split("|")
    n = len(parts) - 1  # each variable part is in half of the 2^n combinations, with a delimiter
    total = 2 ** n * len(parts[0]) + (2 ** (n - 1) * sum(len(v.strip().strip(",")) + len(joint) for v in parts[1:])
                                       if n else 0)
    if total > MAX_TOTAL_CHARS:
        raise BadRequest(f"Prompt matrix: the {2 ** n} combinations of the {field} would be {total} characters "
                         f"in all; at most {MAX_TOTAL_CHARS} (a shorter {field}, or fewer | parts)")
    variable, prompts = combinations(text, put_at_start, joint)
    seed = fixed_seed(params.seed, rng or random.Random())
    params = params.model_copy(update={"subseed": fixed_seed(params.subseed, rng or random.Random())})
    cells = []
    for i, prompt in enumerate(prompts):
        values = {**dict(params), field: prompt, "seed": seed + (i if different_seeds else 0),
                  "batch_size": 1, "n_iter": 1}
        cells.append(rebuild(params, values, f"Prompt matrix: combination {i + 1} ({prompt!r})"))
    return Plan(TITLE, cells, lambda results: _compose(results, variable, margin),
                [f"combination {i + 1} of {len(prompts)}" for i in range(len(prompts))])


def _compose(results: list[CellResult | None], variable: list[str], margin: int) -> Composed:
    made = [r for r in results if r is not None]
    if not made:
        return Composed(None, [], [], [])
    size = made[0].image.size
    cells = [r.image.convert("RGB") if r is not None else Image.new("RGB", size, "black") for r in results]
    rows = 1 << (len(variable) // 2)
    grid = images.image_grid(cells, 1, rows)
    boundary = math.ceil(len(variable) / 2)
    horizontal, vertical = variable[:boundary], variable[boundary:]
    hor = [[(text, pos & (1 << i) != 0) for i, text in enumerate(horizontal)] for pos in range(1 << len(horizontal))]
    ver = [[(text, pos & (1 << i) != 0) for i, text in enumerate(vertical)] for pos in range(1 << len(vertical))]
    grid = images.draw_grid_annotations(grid, size[0], size[1], hor, ver, margin)
    return Composed(grid, [r.image for r in made], [r.infotext for r in made], [r.seed for r in made],
                    made[0].infotext, "prompt_matrix")
