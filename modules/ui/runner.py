"""One generation from the page: check the request, queue it, stream progress, show the result.

Used by txt2img and img2img alike. Everything is reported on the page as text (bad values, a broken
checkpoint, out of memory, NaNs); an error never leaves the buttons in the running state.
"""

from __future__ import annotations

import html
import logging
from typing import Callable, Generator, Iterator

import gradio as gr
from pydantic import ValidationError

from modules import devices
from modules.engine import BadRequest, Engine, GenerationResult, describe_validation_error
from modules.generation.params import GenerationParams
from modules.models.checkpoint_file import CheckpointError
from modules.ui import progress
from modules.ui.common import OutputPanel

log = logging.getLogger(__name__)


def outputs(panel: OutputPanel, generate: gr.Button, interrupt: gr.Button, skip: gr.Button) -> list:
    """The components a generation event writes, in the order `run` yields their values."""
    return [panel.gallery, panel.infotexts, panel.seeds, panel.selected, panel.infotext, panel.progress,
            panel.preview, panel.log, generate, interrupt, skip]


def buttons(running: bool) -> list:
    """Generate, Interrupt, Skip: Generate while idle, the other two while a job runs."""
    return [gr.Button(visible=not running), gr.Button(visible=running), gr.Button(visible=running)]


def _unchanged(n: int) -> list:
    return [gr.skip() for _ in range(n)]


def error(message: str) -> list:
    """The event's values for a job that could not run or failed: the message, buttons back to idle."""
    return _unchanged(5) + ["", gr.Image(visible=False), progress.error_html(message), *buttons(False)]


def describe_error(e: BaseException) -> str:
    if isinstance(e, ValidationError):
        return describe_validation_error(e)
    if devices.is_out_of_memory(e):
        return f"{devices.OUT_OF_MEMORY_ADVICE}. ({str(e).splitlines()[0] if str(e) else 'no details'})"
    if isinstance(e, (BadRequest, CheckpointError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


def watch(engine: Engine, job, label: str = "", show_images: bool = True
          ) -> Generator[list, None, GenerationResult | BaseException]:
    """Yield the event's values while `job` runs (progress, preview, and unless `show_images` is off the images as
    they finish); return the job's result, or the exception it failed with."""
    settings = engine.options.values
    previews, every = settings.live_previews_enable, settings.show_progress_every_n_steps
    refresh = settings.live_preview_refresh_period / 1000.0
    render = engine.previews.renderer(job, settings.show_progress_type)
    prefix = f'<div class="sd-hint">{html.escape(label)}</div>' if label else ""
    yield _unchanged(5) + [prefix + progress.describe(job.state, engine.queue.ahead_of(job)),
                           gr.Image(visible=previews and every >= 0, value=None), "", *buttons(True)]
    for snap in progress.follow(job, lambda: engine.queue.ahead_of(job), previews, every, refresh, render):
        shown = snap.images is not None and show_images
        gallery = progress.gallery_value(snap.images, snap.infotexts) if shown else gr.skip()
        yield [gallery] + _unchanged(4) + [prefix + snap.progress_html, snap.preview if snap.preview else gr.skip(),
                                           gr.skip(), *buttons(True)]
    try:
        return job.wait()
    except Exception as e:  # reported on the page; the server and the page stay usable
        if not isinstance(e, (BadRequest, CheckpointError)):
            log.exception("%s failed", job.kind)
        return e


def submit(engine: Engine, kind: str, make_params: Callable[[], GenerationParams],
           script: tuple[str, list] | None = None):
    """Build the request and queue it (through `script`, (title, script_args), if one is chosen): the Job, or
    the exception that says what is wrong with it."""
    try:
        params = make_params()
        if script is not None:
            return engine.submit_script(kind, script[0], params, script[1])
        return (engine.submit_img2img if kind == "img2img" else engine.submit_txt2img)(params)
    except (ValidationError, BadRequest, CheckpointError, ValueError) as e:
        return e


def run(engine: Engine, kind: str, make_params: Callable[[], GenerationParams],
        script: tuple[str, list] | None = None) -> Iterator[list]:
    """The generator behind a Generate button. `make_params` builds the request from the controls
    (raising ValidationError / BadRequest for bad values); `script` is the chosen script and its arguments."""
    job = submit(engine, kind, make_params, script)
    if isinstance(job, BaseException):
        yield error(describe_error(job))
        return
    outcome = yield from watch(engine, job)
    if isinstance(outcome, BaseException):
        yield error(describe_error(outcome))
        return
    yield final(outcome) + ["", gr.Image(visible=False, value=None), result_log(outcome), *buttons(False)]


def final(result: GenerationResult) -> list:
    """Gallery, infotexts, seeds, selection and infotext box for a finished job (the grid first, as
    A1111 shows it)."""
    images, infotexts, seeds = list(result.images), list(result.infotexts), list(result.seeds)
    if result.grid is not None:
        images.insert(0, result.grid)
        infotexts.insert(0, result.grid.info.get("parameters", infotexts[0] if infotexts else ""))
        seeds.insert(0, seeds[0] if seeds else -1)
    return [progress.gallery_value(images, infotexts), infotexts, seeds, 0, infotexts[0] if infotexts else ""]


def result_log(result: GenerationResult) -> str:
    notes = []
    if result.interrupted:
        notes.append("Interrupted: the images finished before that are kept; the interrupted one is shown "
                     "but not saved.")
    elif result.stopped:
        notes.append("Stopped after the image it was making, as asked: the images made are complete and kept.")
    saved = [p for p in result.paths if p]
    if saved:
        folder = saved[0].rsplit("/", 1)[0] if "/" in saved[0] else saved[0]
        notes.append(f"Saved {len(saved)} image{'s' if len(saved) != 1 else ''} to {folder}")
    notes.extend(result.warnings)
    return "".join(progress.note_html(n) for n in notes)
