"""Loopback (A1111's scripts/loopback.py, img2img only): img2img run `loops` times in a row, each loop starting from
the image the loop before made, with the denoising strength moving from the request's to
`final_denoising_strength` along a curve.

Arguments, in A1111's order: loops (4; 1-32), final_denoising_strength (0.5), denoising_curve ("Aggressive",
"Linear" or "Lazy"; Linear), append_interrogation ("None"; A1111's "CLIP" and "DeepBooru" interrogate each loop's
image, which needs models this app does not have: refused).

As in A1111: batch size is 1; batch count runs the loops that many times, each from the original init image and
strength; the seed goes up by one with every loop run, across batches; from the second loop on, an inpainting
request's masked content is "original" (the previous loop's image). Every loop's image is saved as an img2img
image is, its infotext with `Final denoising strength` and `Denoising curve`. With batch count 1 the result is
every loop's image, else the last image of each batch; a row grid of them leads when there are two or more
(saved with grid_save, shown with return_grid). A loop skipped ends its batch's loops (A1111's `break`): its
image is not used and that batch gives no last image."""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any

from modules import images
from modules.generation.params import GenerationParams
from modules.services.errors import BadRequest
from modules.services.requests import Accepted
from modules.services.scripts.base import (CellResult, Composed, Plan, fixed_seed, img2img_init, named_args,
                                          number_arg, rebuild)

TITLE = "Loopback"
ARG_NAMES = ["loops", "final_denoising_strength", "denoising_curve", "append_interrogation"]
CURVES = ("Aggressive", "Linear", "Lazy")
MAX_LOOPS = 32  # A1111's slider
ORIGINAL = 1  # inpainting_fill "original": later loops repaint the image the loop before made
INFO_ARGS = [  # A1111's /script-info for it
    dict(label="Loops", value=4, minimum=1, maximum=MAX_LOOPS, step=1),
    dict(label="Final denoising strength", value=0.5, minimum=0, maximum=1, step=0.01),
    dict(label="Denoising strength curve", value="Linear", choices=list(CURVES)),
    dict(label="Append interrogated prompt at each iteration", value="None", choices=["None"])]


def strength(loop: int, loops: int, initial: float, final: float, curve: str) -> float:
    """A1111's calculate_denoising_strength: the strength of loop `loop` (0 is the first, at `initial`)."""
    if loops == 1:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        shape = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        shape = 1 - math.cos(progress * math.pi * 0.5)
    else:
        shape = progress
    return initial + (final - initial) * shape


def _args(args: list[Any]) -> tuple[int, float, str]:
    v = named_args(args, ARG_NAMES, TITLE)
    loops = int(number_arg(v.get("loops", 4), "loops", 1, MAX_LOOPS, whole=True))
    final = number_arg(v.get("final_denoising_strength", 0.5), "final_denoising_strength", 0.0, 1.0)
    curve = next((c for c in CURVES if c.lower() == str(v.get("denoising_curve", "Linear")).strip().lower()), None)
    if curve is None:
        raise BadRequest(f"script_args: denoising_curve {v.get('denoising_curve')!r} is not one of "
                         f"{', '.join(CURVES)}")
    interrogation = str(v.get("append_interrogation", "None") or "None").strip()
    if interrogation.lower() != "none":
        raise BadRequest(f"script_args: append_interrogation {interrogation!r}: interrogating images (CLIP, "
                         "DeepBooru) is not available here; use None")
    return loops, final, curve


def plan(params: GenerationParams, args: list[Any], kind: str, rng: random.Random | None = None,
         max_grid_mp: int = 200) -> Plan:
    """`max_grid_mp`: the setting img_max_size_mp, which the row grid of the images shown may not reach."""
    img2img_init(params, kind, TITLE, "repaints an init image again and again")
    loops, final, curve = _args(args)
    shown = loops if params.n_iter == 1 else params.n_iter
    if shown > 1 and shown * params.width * params.height >= max_grid_mp * 10**6:
        raise BadRequest(f"Loopback: its grid of {shown} images of {params.width}x{params.height} would be "
                         f"{shown * params.width * params.height / 1e6:.0f} megapixels (the setting img_max_size_mp "
                         f"allows less than {max_grid_mp}); ask for fewer loops or a smaller batch count")
    rng = rng or random.Random()
    seed, subseed = fixed_seed(params.seed, rng), fixed_seed(params.subseed, rng)
    batches, initial = params.n_iter, params.denoising_strength
    cells, labels = [], []
    for n in range(batches):
        for i in range(loops):
            values = {**dict(params), "init_images": params.init_images[:1], "batch_size": 1, "n_iter": 1,
                      "seed": seed + n * loops + i, "subseed": subseed,
                      "denoising_strength": strength(i, loops, initial, final, curve),
                      "inpainting_fill": params.inpainting_fill if i == 0 else ORIGINAL,
                      # with img2img_color_correction every loop is corrected towards the original (A1111)
                      "color_correction_image": params.init_images[0]}
            label = f"batch {n + 1}, loop {i + 1} of {loops}"
            cells.append(rebuild(params, values, f"Loopback: {label}"))
            labels.append(label)
    fields = (("Final denoising strength", final), ("Denoising curve", curve))
    run = _Run(loops, batches, seed, fields)
    return Plan(TITLE, cells, run.compose, labels, fold=run.fold, chain=run.chain)


@dataclasses.dataclass
class _Run:
    """One Loopback job as it goes: the seeds handed out, each batch's last image, the images to answer."""
    loops: int
    batches: int
    next_seed: int
    fields: tuple[tuple[str, Any], ...]
    shown: list[CellResult] = dataclasses.field(default_factory=list)  # A1111's `history`
    last: dict[int, CellResult] = dataclasses.field(default_factory=dict)  # batch -> its last loop's result
    return_grid: bool = True
    grid_saved: bool = False  # grid_save, for a request that saves images

    def chain(self, k: int, cell: Accepted, previous: CellResult | None) -> Accepted | None:
        """Loop k's request: the previous loop's image as its init image, the next seed. A batch whose loop
        was skipped (or made nothing) runs no more loops."""
        loop = k % self.loops
        if loop > 0 and (previous is None or not previous.complete):
            return None
        self.return_grid = cell.settings.return_grid
        self.grid_saved = cell.settings.grid_save and cell.ctx.params.save_images
        update: dict[str, Any] = {"seed": self.next_seed}
        if loop > 0:
            update["init_images"] = [previous.image]
        ctx = dataclasses.replace(cell.ctx, params=cell.ctx.params.model_copy(update=update),
                                  seeds=(self.next_seed,), script_fields=self.fields)
        self.next_seed += 1
        return dataclasses.replace(cell, ctx=ctx)

    def fold(self, k: int, result: CellResult | None) -> None:
        batch, loop = divmod(k, self.loops)
        if result is None or not result.complete:
            return
        if self.batches == 1:
            self.shown.append(result)
        elif loop == self.loops - 1:
            self.last[batch] = result

    def compose(self, _results: list[CellResult | None]) -> Composed:
        shown = self.shown if self.batches == 1 else [self.last[n] for n in sorted(self.last)]
        wanted = len(shown) > 1 and (self.return_grid or self.grid_saved)  # else not made at all
        grid = images.image_grid([r.image for r in shown], 1, n_rows=1) if wanted else None
        return Composed(grid, [r.image for r in shown], [r.infotext for r in shown], [r.seed for r in shown],
                        grid_infotext=shown[0].infotext if shown else None, show_grid=self.return_grid)
