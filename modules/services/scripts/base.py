"""What the scripts share: the plan a script makes of a request, the names they may look up, and the infotext
keys they add."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image, ImageDraw

from modules import images, infotext, upscaling
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.generation.samplers import visible_names
from modules.services.errors import BadRequest


@dataclass(frozen=True)
class Env:
    """What a script may look up here: the checkpoint a name stands for (its title, or None), and the names the
    page offers as choices."""
    find_checkpoint: Callable[[str], str | None]
    checkpoints: Callable[[], list[str]]
    vaes: Callable[[], list[str]]
    styles: Callable[[], list[str]]
    img_max_size_mp: int = 200  # the setting: the largest grid, in megapixels
    upscalers: Callable[[], list[str]] = lambda: list(upscaling.BUILTIN)  # the image upscalers' names
    # for a script that works on the images in its job (SD upscale): an input image decoded within the server's
    # budget, and an image upscaled by a named upscaler (image, scale, name, job, settings) for a job
    decode: Callable[[Any], Image.Image] = lambda image: image
    upscale: Callable[..., Image.Image] | None = None
    max_result_pixels: int = 1100 * 10**6  # --max-extras-megapixels: upscaled results held until the job ends
    # the sampler names the page offers (hide_samplers leaves some out; every name is still accepted)
    samplers: Callable[[], list[str]] = visible_names


@dataclass
class CellResult:
    """What one cell made: its image (the only one, or a grid of its batch), the infotext and seed of its first,
    and all its images with theirs."""
    image: Image.Image
    infotext: str
    seed: int
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    complete: bool = True  # False: interrupted or skipped, its images shown as far as they got


@dataclass
class Plan:
    """A script's cells (requests, in the order they run) and how to finish: `compose(results)` gets each
    cell's result in the order of `cells` (None for one not made) and gives (grid or None, images, infotexts)."""
    title: str
    cells: list[GenerationParams]
    compose: Callable[[list[CellResult | None]], "Composed"]
    labels: list[str] = field(default_factory=list)  # what each cell is, for messages ("X axis Steps=3")
    # run in the job before the cells: (job, the accepted cells) -> the cells to run (SD upscale gives each its
    # tiles of the upscaled image there, which the plan could only size)
    prepare: Callable[[Any, list[Any]], list[Any]] | None = None
    # given each cell's result as soon as it is made (k, result or None), which is then not kept for `compose`:
    # a plan that puts its images together as they come (SD upscale) holds one row of tiles, not all of them
    fold: Callable[[int, "CellResult | None"], None] | None = None
    # cell k (an accepted request) just before it runs, given the result of the cell before it (None for the first
    # cell, or when that one made nothing or was left out): the cell to run, or None to leave it out. Loopback
    # starts each loop from the image the loop before made.
    chain: Callable[[int, Any, "CellResult | None"], Any] | None = None


@dataclass
class Composed:
    grid: Image.Image | None  # shown and answered first
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    grid_infotext: str | None = None
    grid_basename: str = ""  # the grid's file name prefix (A1111: xyz_grid, prompt_matrix)
    save: bool = False  # save the images as a job's images (SD upscale's, whose cells save nothing)
    show_grid: bool = True  # False: the grid is saved (grid_save) but not shown or answered (return_grid off)


def with_fields(text: str, fields: dict[str, Any]) -> str:
    """Infotext `text` with `fields` added at the end of its parameters line (values quoted as A1111 does)."""
    extra = ", ".join(f"{k}: {infotext.quote(infotext.format_value(v))}" for k, v in fields.items() if v is not None)
    if not extra:
        return text
    return f"{text}, {extra}" if text else extra


def rebuild(params: GenerationParams, values: dict[str, Any], what: str) -> GenerationParams:
    """`params` with `values` changed, validated again (BadRequest naming `what` when a value is refused)."""
    try:
        return type(params)(**values)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        errors = getattr(e, "errors", None)
        detail = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors()) \
            if callable(errors) else str(e)
        raise BadRequest(f"{what}: {detail}") from None


DIRECTIONS = ("left", "right", "up", "down")  # the outpainting scripts' sides, in the order mk2 grows them


def named_args(args: list[Any], names: list[str], title: str) -> dict[str, Any]:
    """A script's script_args by A1111's argument names (fewer than all: the rest take their defaults); BadRequest
    when there are more than it takes."""
    if len(args) > len(names):
        raise BadRequest(f"script_args: {title} takes at most {len(names)} arguments ({', '.join(names)}); "
                         f"got {len(args)}")
    return dict(zip(names, args))


def img2img_init(params: GenerationParams, kind: str, title: str, purpose: str) -> Image.Image:
    """The init image of an img2img script's request (`purpose` says what the script does with it, for the
    refusal of a txt2img request); BadRequest without one."""
    if kind != "img2img" or not isinstance(params, Img2ImgParams):
        raise BadRequest(f"{title} is an img2img script: it {purpose}")
    if not params.init_images:
        raise BadRequest(f"{title}: send an init image (init_images)")
    return params.init_images[0]


def decoded_init(env: "Env", params: Img2ImgParams, settings) -> Image.Image:
    """The request's init image decoded (within the server's budget) and flattened onto the img2img background,
    in the job; BadRequest when its data turns out to be broken."""
    try:
        image = env.decode(params.init_images[0])
    except images.InvalidImage as e:
        raise BadRequest(f"init_images[0]: {e}") from None
    return images.flatten(image, settings.img2img_background_color)


def number_arg(value: Any, name: str, low: float, high: float, whole: bool = False) -> float:
    """A numeric script argument (a number, or text of one) between `low` and `high`; BadRequest naming it."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRequest(f"script_args: {name} {value!r} is not a number") from None
    if isinstance(value, bool) or not low <= number <= high or (whole and not number.is_integer()):  # NaN too
        raise BadRequest(f"script_args: {name} {value!r} must be a{' whole' if whole else ''} number from {low:g} "
                         f"to {high:g}")
    return number


def directions_arg(value: Any, title: str) -> set[str]:
    """The outpainting scripts' `direction`: a list of DIRECTIONS (or one of them), at least one."""
    chosen = [value] if isinstance(value, str) else value
    if not isinstance(chosen, list) or any(str(d).strip().lower() not in DIRECTIONS for d in chosen):
        raise BadRequest(f"script_args: direction {chosen!r} must be a list of {', '.join(DIRECTIONS)}")
    if not chosen:
        raise BadRequest(f"{title}: choose at least one direction to grow the image in")
    return {str(d).strip().lower() for d in chosen}


def fill_black(image: Image.Image, box: tuple[int, int, int, int]) -> None:
    """Fill `box` (both corners included) with black, as the Pillow A1111 pins (9.5) draws a rectangle: corners
    given the wrong way round are swapped (Pillow 10 refuses them; the outpainting scripts make such boxes when
    the image is smaller than the mask's reach into it), and what lies outside the image is left out."""
    x0, y0, x1, y1 = box
    ImageDraw.Draw(image).rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), fill="black")


def fixed_seed(seed: int, rng) -> int:
    """A1111's fix_seed: -1 (or nothing) becomes a random seed, so that every cell uses the same one."""
    return int(rng.randrange(4294967294)) if seed is None or seed == -1 else int(seed)
