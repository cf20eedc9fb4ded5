"""Driving the page's tabs as a user does (open a tab, wait for a job's steps and its end, read what a paste
filled in) and the prompt and input picture the tab tests share, for the built-in demo model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import expect

from tests.support.browser import (JobView, error_toasts, fill_text, job_view, open_accordion, read_value, set_number,
                                   wait_for_gallery, wait_rendered)
from tools.shapes_world import Scene, render

PROMPT = "a red circle on a blue background"
INPUT_SCENE = Scene("red", "circle", "blue", 64, 64, 70)  # centred, 70 px across


def open_tab(page, elem_id: str) -> None:
    """Click a Gradio tab by its elem_id (Gradio 6 renders the tab's button as `#<elem_id>-button` and its
    panel as `#<elem_id>`) and wait until its components are rendered (see `wait_rendered`)."""
    button = page.locator(f"#{elem_id}-button")
    button.click()
    expect(button).to_have_attribute("aria-selected", "true")
    wait_rendered(page, page.locator(f"#{elem_id}"))


def pngs(folder: Path) -> set[Path]:
    return set(folder.rglob("*.png")) if folder.exists() else set()


def wait_idle(page, tab: str, timeout_ms: float = 180_000) -> None:
    """Wait until the tab's job has ended: Generate shows again, Interrupt and Skip are hidden."""
    expect(page.locator(f"#{tab}_generate")).to_be_visible(timeout=timeout_ms)
    expect(page.locator(f"#{tab}_interrupt")).to_be_hidden()
    expect(page.locator(f"#{tab}_skip")).to_be_hidden()


def generate_txt2img(page, prompt: str, steps: int, seed: int) -> list[str]:
    """txt2img from the page: the prompt, steps and seed typed in, Generate; the gallery's URLs once the job has
    ended (call it on a gallery that shows no earlier run's images, see wait_for_gallery)."""
    fill_text(page, "txt2img_prompt", prompt)
    set_number(page, "txt2img_steps", steps)
    set_number(page, "txt2img_seed", seed)
    page.locator("#txt2img_generate").click()
    urls = wait_for_gallery(page, "txt2img_gallery", 1)
    wait_idle(page, "txt2img")
    return urls


def wait_for_step(page, tab: str, at_least: int, timeout: float = 60) -> tuple[JobView, float]:
    """Poll the tab until its progress box shows step >= at_least: what the tab showed then (progress,
    buttons and preview read in the same moment) and the time it was seen."""
    deadline = time.monotonic() + timeout
    while True:
        view = job_view(page, tab)
        if view.step and view.step[0] >= at_least:
            return view, time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"#{tab}_progress never showed step >= {at_least}: {view.progress!r}")
        page.wait_for_timeout(50)


def input_image(tmp_path: Path) -> tuple[Path, np.ndarray]:
    pixels = render(INPUT_SCENE)
    path = tmp_path / "red_circle_on_blue.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def assert_pasted(page, **expected: str) -> None:
    """txt2img's fields (by the part of their id after `txt2img_`) hold what an infotext without a Denoising
    strength filled in: the values given, Hires. fix off, no error popup."""
    for name, value in expected.items():
        assert read_value(page, f"txt2img_{name}") == value, name
    open_accordion(page, "txt2img_hr", "Hires. fix")
    expect(page.locator("#txt2img_enable_hr input[type=checkbox]")).not_to_be_checked()  # no Denoising strength
    assert error_toasts(page) == []
