"""Running a script: its plan checked at submission (every cell accepted as a request, so a bad value is a 400
naming the axis, line or combination before anything is queued), then one job in the queue that runs the cells
in turn with one progress bar, and puts their images together."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

from modules import images, infotext
from modules.generation.params import GenerationParams
from modules.generation import samplers
from modules.jobs import Job, JobInterrupted, JobQueue, JobSkipped
from modules.services.checkpoints import CheckpointService
from modules.services.errors import BadRequest, UnknownScript
from modules.services.generation import GenerationResult, GenerationService
from modules.services.options import OptionsService
from modules.services.output import OutputWriter
from modules.services.requests import Accepted, RequestResolver
from modules.services.scripts import (loopback, outpainting, outpainting_mk2, prompt_matrix, prompts_from_file,
                                      sd_upscale, xyz)
from modules.services.scripts.base import CellResult, Env, Plan
from modules.styles import StyleStore

# the page's order, after None (A1111's: its scripts' file names, loopback.py ... xyz_grid.py)
TITLES = (loopback.TITLE, outpainting_mk2.TITLE, outpainting.TITLE, prompt_matrix.TITLE, prompts_from_file.TITLE,
          sd_upscale.TITLE, xyz.TITLE)
# the scripts only one tab has
ONLY = {title: "img2img" for title in (loopback.TITLE, outpainting_mk2.TITLE, outpainting.TITLE, sd_upscale.TITLE)}


class ScriptService:
    def __init__(self, generation: GenerationService, requests: RequestResolver, checkpoints: CheckpointService,
                 options: OptionsService, styles: StyleStore, queue: JobQueue, output: OutputWriter,
                 decode_budget: images.DecodeBudget | None = None):
        self._decode_budget = decode_budget
        self._generation = generation
        self._requests = requests
        self._checkpoints = checkpoints
        self._options = options
        self._styles = styles
        self._queue = queue
        self._output = output

    def names(self, kind: str = "txt2img") -> list[str]:
        """The selectable scripts of a tab, as /sdapi/v1/scripts lists them (A1111: lower case titles)."""
        return [t.lower() for t in self.titles(kind)]

    def find(self, name: str) -> str | None:
        """The script's title for a name (case-insensitive), or None."""
        wanted = (name or "").strip().lower()
        return next((t for t in TITLES if t.lower() == wanted), None)

    def env(self, settings_mp: int | None = None) -> Env:
        def find_checkpoint(name: str) -> str | None:
            info = self._checkpoints.find(name)
            return info.title if info is not None else None

        upscalers = self._requests.upscalers
        return Env(find_checkpoint, lambda: [i.title for i in self._checkpoints.list()],
                   lambda: [v.name for v in self._checkpoints.vaes()], lambda: list(self._styles.all()),
                   settings_mp or self._options.values.img_max_size_mp, upscalers.names,
                   lambda image: images.load(image, self._decode_budget), upscalers.upscale,
                   self._requests.limits.max_extras_pixels,
                   lambda: samplers.visible_names(self._options.values.hide_samplers))

    def xyz_axes(self, kind: str) -> list[xyz.Axis]:
        """The X/Y/Z plot's axis types for a tab (the page's dropdowns, the API's script-info)."""
        return xyz.axes_for(self.env(), kind)

    def plan(self, kind: str, name: str, params: GenerationParams, args: list[Any],
             rng: random.Random | None = None) -> Plan:
        title = self.find(name)
        if title is None or ONLY.get(title, kind) != kind:  # A1111: a script of the other tab is not found either
            raise UnknownScript(f"script_name: unknown script {name!r} for {kind}; scripts: "
                                f"{', '.join(self.names(kind))}")
        if title == xyz.TITLE:
            mp = self._options.effective(params.override_settings)[0].img_max_size_mp
            return xyz.plan(params, list(args or []), self.env(mp), kind, rng)
        if title == prompt_matrix.TITLE:
            return prompt_matrix.plan(params, list(args or []), rng)
        if title == sd_upscale.TITLE:
            self._requests.check_limits(params)  # its cells are one image each: the batch count is checked here
            return sd_upscale.plan(params, list(args or []), self.env(), kind, rng)
        if title == outpainting.TITLE:  # one image of batch size 1, whatever the request says
            self._requests.check_limits(params.model_copy(update={"batch_size": 1, "n_iter": 1}))
            return outpainting.plan(params, list(args or []), self.env(), kind, rng)
        if title == outpainting_mk2.TITLE:
            self._requests.check_limits(params)  # its batch count is cells: checked here
            return outpainting_mk2.plan(params, list(args or []), self.env(), kind, rng)
        if title == loopback.TITLE:  # its cells are one image each (batch size 1): the batch count is checked here
            self._requests.check_limits(params.model_copy(update={"batch_size": 1}))
            mp = self._options.effective(params.override_settings)[0].img_max_size_mp
            return loopback.plan(params, list(args or []), kind, rng, mp)
        return prompts_from_file.plan(params, list(args or []), rng)

    def submit(self, kind: str, name: str, params: GenerationParams, args: list[Any],
               task_id: str | None = None, client: str | None = None) -> Job:
        """Check the script's cells (BadRequest at once, naming the cell) and queue them as one job whose result
        is a GenerationResult: the script's grid first (`grid`), then its images. `client`: see JobQueue."""
        plan = self.plan(kind, name, params, args)
        accepted = []
        for cell, label in zip(plan.cells, plan.labels):
            try:
                accepted.append(self._requests.accept(kind, cell))
            except BadRequest as e:
                raise type(e)(f"{plan.title}: {label}: {e}") from None  # which cell: its axis values, line, ...
        return self._queue.submit(kind, lambda job: self._run(job, plan, accepted), task_id, client=client)

    def _run(self, job: Job, plan: Plan, accepted: list[Accepted]) -> GenerationResult:
        results: list[CellResult | None] = [None] * len(accepted)
        warnings: list[str] = []
        first: GenerationResult | None = None
        if plan.prepare is not None:
            try:
                accepted = plan.prepare(job, accepted)
            except (JobInterrupted, JobSkipped):  # within an upscaler's tiles: no cell runs
                return self._finish(plan, accepted[0], results, first, warnings, True)
        previous: CellResult | None = None
        stopped = False
        for k, cell in enumerate(accepted):
            stopped = job.state.interrupted or job.state.stopping  # (stopping: the cell it was making is done)
            if stopped:
                break
            if plan.chain is not None:
                cell = plan.chain(k, cell, previous)
                if cell is None:  # left out
                    previous = None
                    continue
            job.state.job = f"{k + 1} out of {len(accepted)}"  # A1111's `state.job` of a script, in /progress
            result = self._generation.run_part(job, cell, k, len(accepted))
            first = first or result
            warnings.extend(w for w in result.warnings if w not in warnings)
            # a plan that folds takes the images themselves; one that composes a grid of cells, a batch's grid
            previous = _cell_result(result, cell, grid=plan.fold is None) if result.images else None
            if plan.fold is not None:
                plan.fold(k, previous)
            else:
                results[k] = previous
        return self._finish(plan, accepted[0], results, first, warnings, job.state.interrupted or stopped)

    def _finish(self, plan: Plan, accepted: Accepted, results: list[CellResult | None],
                first: GenerationResult | None, warnings: list[str], interrupted: bool) -> GenerationResult:
        composed = plan.compose(results)
        grid = composed.grid
        settings = accepted.settings
        if grid is not None:
            grid.info["parameters"] = composed.grid_infotext or ""
            if settings.grid_save and accepted.ctx.params.save_images and first is not None and first.namer:
                namer = replace(first.namer, prompt=accepted.ctx.params.prompt)
                self._output.grid(grid, grid.info["parameters"], settings, namer, composed.seeds[0]
                                  if composed.seeds else accepted.ctx.seed, accepted.ctx.is_img2img,
                                  basename=composed.grid_basename)
            self._output.last_parameters(grid.info["parameters"])
            grid = grid if composed.show_grid else None
        paths: list[str | None] = [None] * len(composed.images)
        for k, (image, text) in enumerate(zip(composed.images, composed.infotexts)):
            image.info["parameters"] = text
            if composed.save and settings.samples_save and first is not None and first.namer:
                paths[k] = str(self._output.image(image, text, settings, replace(first.namer,
                                                                                 prompt=accepted.ctx.params.prompt),
                                                  composed.seeds[k], k, accepted.ctx.is_img2img))
        info = dict(first.info) if first is not None else {}
        # the images' infotexts; the front ends put the grid's first (and the API's index_of_first_image 1)
        parsed = [infotext.parse(t) for t in composed.infotexts]
        info.update({"all_prompts": [p.get("Prompt", "") for p in parsed],
                     "all_negative_prompts": [p.get("Negative prompt", "") for p in parsed],
                     "infotexts": list(composed.infotexts), "all_seeds": list(composed.seeds),
                     "index_of_first_image": 0, "interrupted": interrupted, "warnings": warnings})
        return GenerationResult(list(composed.images), list(composed.seeds), list(composed.infotexts),
                                paths, info, interrupted, warnings, grid)

    def info(self) -> list[dict[str, Any]]:
        """A1111's /script-info: each script's arguments (label, default, range or choices) for each tab."""
        out = []
        for kind in ("txt2img", "img2img"):
            labels = [a.label for a in self.xyz_axes(kind)]
            xyz_args = []
            for axis_name, default in (("X", 1), ("Y", 0), ("Z", 0)):
                xyz_args += [dict(label=f"{axis_name} type", value=labels[default], choices=labels),
                             dict(label=f"{axis_name} values", value=""),
                             dict(label=f"{axis_name} values", value=None)]
            xyz_args += [dict(label=label, value=value) for label, value in (
                ("Draw legend", True), ("Include Sub Images", False), ("Include Sub Grids", False),
                ("Keep -1 for seeds", False), ("Vary seeds for X", False), ("Vary seeds for Y", False),
                ("Vary seeds for Z", False))]
            xyz_args += [dict(label="Grid margins (px)", value=0, minimum=0, maximum=500, step=2),
                         dict(label="Use text inputs instead of dropdowns", value=False)]
            matrix_args = [dict(label="Put variable parts at start of prompt", value=False),
                           dict(label="Use different seed for each picture", value=False),
                           dict(label="Select prompt", value="positive", choices=["positive", "negative"]),
                           dict(label="Select joining char", value="comma", choices=["comma", "space"]),
                           dict(label="Grid margins (px)", value=0, minimum=0, maximum=500, step=2)]
            file_args = [dict(label="Iterate seed every line", value=False),
                         dict(label="Use same random seed for all lines", value=False),
                         dict(label="Insert prompts at the", value="start", choices=["start", "end"]),
                         dict(label="List of prompt inputs", value="")]
            upscale_args = [dict(label="Tile overlap", value=64, minimum=0, maximum=sd_upscale.MAX_OVERLAP, step=16),
                            dict(label="Upscaler", value="None", choices=self._requests.upscalers.names()),
                            dict(label="Scale Factor", value=2.0, minimum=1.0, maximum=sd_upscale.MAX_SCALE,
                                 step=0.05)]
            scripts = {loopback.TITLE: loopback.INFO_ARGS, outpainting.TITLE: outpainting.INFO_ARGS,
                       outpainting_mk2.TITLE: outpainting_mk2.INFO_ARGS,
                       prompt_matrix.TITLE: matrix_args, prompts_from_file.TITLE: file_args,
                       sd_upscale.TITLE: [dict(label="info", value=None)] + upscale_args, xyz.TITLE: xyz_args}
            for title in self.titles(kind):
                out.append(dict(name=title.lower(), is_alwayson=False, is_img2img=kind == "img2img",
                                args=[dict(arg) for arg in scripts[title]]))  # copies: the tables stay as they are
        return out

    @staticmethod
    def titles(kind: str = "txt2img") -> list[str]:
        """A tab's scripts' titles, as its Script dropdown shows them (after None)."""
        return [t for t in TITLES if ONLY.get(t, kind) == kind]

    def axis_choices(self, kind: str) -> list[list[str] | None]:
        """For each X/Y/Z axis type of a tab, the values the page offers in a dropdown (None: typed values)."""
        env = self.env()
        return [axis.choices(env) if axis.choices else None for axis in self.xyz_axes(kind)]

    def args_from_infotext(self, text: str, kind: str) -> list[Any] | None:
        """The X/Y/Z plot script_args a grid's infotext stands for (see InfotextReader), or None."""
        return xyz.args_from_infotext(infotext.parse(text or ""), kind)


def _cell_result(result: GenerationResult, cell: Accepted, grid: bool) -> CellResult:
    """What a cell made, for its plan: its first image, or with `grid` a grid of its batch (of more than one)."""
    image = images.image_grid(result.images, cell.ctx.params.batch_size, cell.settings.n_rows) \
        if grid and len(result.images) > 1 else result.images[0]
    return CellResult(image, result.infotexts[0], result.seeds[0], list(result.images), list(result.infotexts),
                      list(result.seeds), complete=not (result.interrupted or result.skipped))
