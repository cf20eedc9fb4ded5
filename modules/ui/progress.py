"""Following a queued job from a Gradio event: progress bar, live preview, images as they finish.

A generation event is a Python generator: it submits the job to the engine's queue, then yields a
`Snapshot` a few times a second until the job ends. The page never polls on its own and no second
event is needed, so a job started in one tab keeps its own progress even while another tab is used.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from PIL import Image

from modules import infotext
from modules.generation import preview
from modules.jobs import Job, JobState

POLL_SECONDS = 0.25


@dataclass
class Snapshot:
    """What the page shows of a running job at one moment."""
    progress_html: str
    preview: Image.Image | None  # a new live preview, or None when there is none newer
    images: list[Image.Image] | None  # the finished images when their number changed, else None
    infotexts: list[str]


def describe(state: JobState, queued_ahead: int = 0) -> str:
    """A1111's progress line: percent, step of steps, image of images, ETA — as a bar with text."""
    if queued_ahead > 0 or not state.started:
        text = f"In queue: {queued_ahead} job{'s' if queued_ahead != 1 else ''} ahead" if queued_ahead else "Waiting..."
        return bar(0.0, text)
    if state.job_count <= 0:  # the job has not counted its steps yet (loading the model, encoding)
        return bar(0.0, state.textinfo or "Preparing...")  # (e.g. a one-time conversion says what it is doing)
    p = state.progress()
    parts = [f"{p * 100:.0f}%"]
    if state.sampling_steps:
        parts.append(f"step {state.sampling_step}/{state.sampling_steps}")
    if state.job_count > 1:
        parts.append(f"batch {min(state.job_no + 1, state.job_count)}/{state.job_count}")
    eta = state.eta_seconds()
    if p > 0:
        parts.append(f"ETA {_seconds(eta)}")
    if state.interrupted:
        parts.append("interrupting...")
    return bar(p, " · ".join(parts))


def _seconds(s: float) -> str:
    s = max(0, round(s))
    return f"{s // 60}:{s % 60:02d}" if s >= 60 else f"{s} s"


def bar(fraction: float, text: str) -> str:
    width = f"{max(0.0, min(fraction, 1.0)) * 100:.1f}%"
    return (f'<div class="sd-progress" role="progressbar" aria-valuenow="{fraction * 100:.0f}" '
            f'aria-valuemin="0" aria-valuemax="100"><div class="sd-progress-fill" style="width:{width}"></div>'
            f'<span class="sd-progress-text">{html.escape(text)}</span></div>')


def follow(job: Job, queue_position, previews: bool, every_n_steps: int, refresh_seconds: float,
           render: Callable[[Any], Image.Image | None] = preview.latent_to_image) -> Iterator[Snapshot]:
    """Snapshots of `job` until it is done. `queue_position()` gives the number of jobs ahead of it.
    A preview is `render`ed from the sampler's current prediction at most every `refresh_seconds` and
    only when at least `every_n_steps` steps have passed since the last one (0: any step; -1: never
    during a batch, the finished images show anyway). A renderer may decline (None: not now, e.g. over its
    time budget); it is asked again at the next poll."""
    state = job.state
    shown_images = 0
    last_preview_at = 0.0
    last_preview_step = (-1, -1)
    while not job.done.wait(POLL_SECONDS):
        partial = state.partial
        done_images = list(partial.images) if partial is not None else []
        new_images = done_images if len(done_images) != shown_images else None
        shown_images = len(done_images)
        picture = None
        step = (state.job_no, state.sampling_step)
        latent = state.current_latent
        if (previews and every_n_steps >= 0 and latent is not None
                and time.time() - last_preview_at >= refresh_seconds
                and (step[0] != last_preview_step[0] or step[1] - last_preview_step[1] >= max(every_n_steps, 1))):
            picture = render(latent)
            if picture is not None:
                last_preview_at, last_preview_step = time.time(), step
        yield Snapshot(describe(state, 0 if state.started else queue_position()), picture, new_images,
                       list(partial.infotexts) if partial is not None else [])


def error_html(message: str) -> str:
    return f'<div class="sd-error"><b>Error:</b> {html.escape(message)}</div>'


def note_html(message: str) -> str:
    return f'<div class="sd-note">{html.escape(message)}</div>' if message else ""


def seed_of(text: str | None) -> int | None:
    """The `Seed` an infotext names (None when it names none)."""
    seed = infotext.parse(text or "").get("Seed")
    try:
        return int(seed) if seed is not None else None
    except ValueError:
        return None


def gallery_value(images: list[Image.Image], infotexts: list[str]) -> list[tuple[Any, str]]:
    """Gallery items with short captions (the seed), so a user can tell the images of a batch apart."""
    out = []
    for image, text in zip(images, infotexts):
        seed = seed_of(text)
        out.append((image, f"Seed {seed}" if seed is not None else ""))
    return out
