"""Browser tests' tools: the live server, a headless Chromium driven by Playwright, and helpers for Gradio 6
components addressed by elem_id.

The browser is Debian's `chromium` (found on PATH; ./run_tests.sh installs it), never one Playwright
downloads. Test modules (in tests/browser, whose tests all get the `browser` marker from tests/conftest.py)
import what they use:

    from tests.support.browser import browser, page, ui_server, fill_text, ...  # noqa: F401 (fixtures)

Selectors below were checked against the DOM that Gradio 6.31 renders (a component's elem_id is the `id`
of its outer `div.block`):

- Textbox: `#ID textarea` (every Textbox is a <textarea>, also lines=1); `input` for type="password"/"email".
- Number: `#ID input[type=number]`.
- Slider: `#ID input[type=number]` (data-testid="number-input", the box beside the label), next to the
  `input[type=range]`; filling the number box updates the range and the value sent to the server.
- Dropdown: `#ID input[role=combobox]`; its open list is `#ID ul[role=listbox]` (inside the block) with
  `li[role=option]` items whose aria-label is the choice. `fill()` does not filter the list (Gradio filters
  on key events): type with press_sequentially.
- Checkbox: `#ID input[type=checkbox]`.
- Image / File upload: `#ID input[type=file]` (hidden; set_input_files works on it).
- Gallery: `#ID .grid-container button.thumbnail-item img` (one per image, also while the preview is
  open); the preview adds `img[data-testid=detailed-image]` and `.thumbnails button.thumbnail-item img`.
  The src is an absolute `http://HOST/gradio_api/file=/tmp/gradio/<sha>/image.png` URL: identical images
  share one URL, so count thumbnails, never distinct URLs. The caption (img alt) is the gallery label.
- Components that are no event's input render disabled (non-interactive) unless interactive=True.
- While an event runs, each of its output components shows `#ID [data-testid=status-tracker]` without the
  class `hide`; error popups (gr.Error) are `.toast-body.error`, their message `[data-testid=toast-text]`.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from playwright.sync_api import expect
from PIL import Image

from tests.support.server import ROOT, start_server, stop_server

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
LOAD_TIMEOUT_MS = 120_000  # the first page load on a busy 2-core machine
ACTION_TIMEOUT_MS = 30_000
# expect() waits as long as an action does: its own default (5 s) is the one deadline in these tests that is
# shorter than an event's round trip can be on a 2-core machine that runs the server, Chromium and pytest.
expect.set_options(timeout=ACTION_TIMEOUT_MS)
SERVER_LOG_LINES = 80  # how much of the server's log a failed browser test prints


def chromium_path() -> str:
    path = shutil.which("chromium")
    if not path:
        # Never skip: a browser test that does not run is a failure. run_tests.sh installs the package.
        raise RuntimeError("Debian's `chromium` is not on PATH: run ./run_tests.sh (it installs it) or "
                           "`apt-get install -y chromium`")
    return path


def launch_browser(playwright):
    """Headless Chromium from the system package."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=BROWSER_ARGS)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser():
    # Module scope: pytest ends it before the next module starts its own, and the sync API allows only one
    # Playwright driver at a time.
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        b = launch_browser(pw)
        yield b
        b.close()
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory):
    """webui.py with --api on a fresh data dir without checkpoints of the user's, so the built-in demo model
    (models/builtin/shapes-tiny.safetensors) is selected. Yields (url, data_dir, proc)."""
    data = tmp_path_factory.mktemp("ui_server")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    proc, url = start_server(data, "--api")
    yield url, data, proc
    stop_server(proc)


def open_app(browser, url: str, on_request=None):
    """A new context and page at `url`, returned once the Gradio app has rendered. `on_request(request)` is
    called for every request the page makes, from the first."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    if on_request is not None:
        context.on("request", on_request)
    page = context.new_page()
    page.set_default_timeout(ACTION_TIMEOUT_MS)
    page.goto(url, timeout=LOAD_TIMEOUT_MS)
    page.locator("#txt2img_prompt textarea").wait_for(state="visible", timeout=LOAD_TIMEOUT_MS)
    return page


@pytest.fixture()
def page(browser, ui_server, request):
    """The app in a fresh browser context; its screenshot goes to test-output/screenshots/<test>.png. When the
    test fails, what the page said (console errors, error popups) and the end of the server's log are printed,
    so a failure in CI can be read without running it again."""
    p = open_app(browser, ui_server[0])
    console: list[str] = []
    p.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type in ("error", "warning") else None)
    p.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    yield p
    try:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        p.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print_failure_context(p, console, ui_server[1] / "server.log")
    finally:
        p.context.close()


def print_failure_context(page, console: list[str], server_log: Path) -> None:
    """What a failed browser test leaves behind: the page's console errors and error popups, and the end of
    the server's log (pytest shows a failed test's captured output)."""
    print("--- browser console (errors and warnings):")
    print("\n".join(console) or "(none)")
    print("--- error popups:", error_toasts(page) or "(none)")
    try:
        lines = server_log.read_text(errors="replace").splitlines()[-SERVER_LOG_LINES:]
    except OSError as e:
        lines = [f"(cannot read {server_log}: {e})"]
    print(f"--- the last {len(lines)} lines of {server_log.name}:")
    print("\n".join(lines))


# ---------------------------------------------------------------- component helpers


def block(page, elem_id: str):
    """The component's outer element (Gradio puts elem_id on it)."""
    return page.locator(f"#{elem_id}")


def fill_text(page, elem_id: str, text: str) -> None:
    """Set a Textbox (fires its input event, as typing does)."""
    block(page, elem_id).locator(
        "textarea, input[type=text], input[type=password], input[type=email]").first.fill(text)


def set_number(page, elem_id: str, value: float) -> None:
    """Set a Number or a Slider (through the number box a Slider shows beside its label). Returns once a
    Slider's range input shows the value too: both follow the one state an event sends."""
    box = block(page, elem_id).locator("input[type=number]").first
    box.fill(str(value))
    box.press("Tab")  # commit, as a user leaving the box does (Number fires its blur/submit then)
    ranges = block(page, elem_id).locator("input[type=range]")
    if ranges.count():
        page.wait_for_function("([el, v]) => Math.abs(Number(el.value) - v) < 1e-9",
                               arg=[ranges.first.element_handle(), float(value)])


# Gradio 6 renders a closed accordion's or an unselected tab's components only when it is first opened, and
# then, one animation frame after Svelte has settled, writes the values it had stored for them into the new
# components (AppTree.render_previously_invisible_children in its js/core). A value typed in between is
# replaced by the stored one: a test that types right after opening must wait for that write first. The write
# has no event of its own, so this waits for what precedes it: the content stops growing (no element added or
# removed under it for QUIET_FRAMES frames in a row, which is after the last component mounted and Svelte
# settled). Text changes (a running job's timer) do not count; after SETTLE_CAP_MS it goes on regardless.
QUIET_FRAMES = 3
SETTLE_CAP_MS = 10_000
SETTLE_JS = """(root, [quiet, cap]) => new Promise(resolve => {
  let still = 0;
  const start = performance.now();
  const seen = new MutationObserver(() => { still = 0; });
  seen.observe(root, {subtree: true, childList: true});
  const frame = () => {
    if (++still >= quiet || performance.now() - start > cap) { seen.disconnect(); resolve(); }
    else requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
})"""


def wait_rendered(page, locator, timeout_ms: float = ACTION_TIMEOUT_MS) -> None:
    """Wait until what `locator` shows (a tab's panel, an accordion) is visible and has stopped changing."""
    locator.wait_for(state="visible", timeout=timeout_ms)
    locator.evaluate(SETTLE_JS, [QUIET_FRAMES, SETTLE_CAP_MS])


def open_accordion(page, elem_id: str, label: str) -> None:
    """Open a closed Accordion by clicking its label, and wait until its components are rendered."""
    acc = block(page, elem_id)
    acc.get_by_text(label, exact=True).first.click()
    wait_rendered(page, acc)


def option_labels(page, elem_id: str) -> list[str]:
    """The choices a Dropdown offers (opens its list, then closes it)."""
    box = block(page, elem_id).locator("input[role=combobox]")
    box.click()
    shown = box.input_value()
    # A Dropdown that allows custom values filters its list by the text shown: clear it with keys (Gradio
    # filters on key events) so every choice is listed.
    box.press("Control+a")
    box.press("Backspace")
    # Gradio filters the list when the input event is handled and redraws it after: two animation frames later the
    # list shown is the unfiltered one (read at once, it could still be the one filtered by the shown value)
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    listbox = block(page, elem_id).locator("[role=listbox]")
    listbox.wait_for(state="visible")
    # one read of the whole list: a refresh may replace its items between reading one and the next
    labels = listbox.locator("[role=option]").evaluate_all("els => els.map(e => e.getAttribute('aria-label') || '')")
    # the text back as it was: a box that allows custom values takes the text it shows as its value when it loses
    # focus, so the next click elsewhere would otherwise choose "" (and fire the box's input event with it)
    box.fill(shown)
    box.press("Escape")
    return labels


def find_option(page, elem_id: str, text: str, timeout: float = 30) -> str:
    """The first choice of a Dropdown that contains `text`, asking again while an update that is still
    on its way (a refresh) may replace the list or the text that filters it."""
    deadline = time.monotonic() + timeout
    while True:
        labels = option_labels(page, elem_id)
        found = next((c for c in labels if text in c), None)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"no choice with {text!r} in #{elem_id}: {labels}")
        page.wait_for_timeout(250)


def select_option(page, elem_id: str, choice: str) -> None:
    """Pick `choice` in a Dropdown as a user does: click, type to filter, click the option whose label is exactly
    `choice` ("Steps", not "Hires steps"). The option is waited for after typing, never read from a list shown
    before: Gradio filters on key events, so a list read at once may still be the one filtered by the previous
    value.

    A checkpoint's title may gain its `[hash]` right after the pick: choosing one loads it, and the server puts
    the hash into the box as soon as the background hash is done, which for a tiny file can be before the box
    is read here. That title names the same choice and is accepted."""
    box = block(page, elem_id).locator("input[role=combobox]")
    box.click()
    box.fill("")
    box.press_sequentially(choice)  # fill() alone does not filter: Gradio filters on key events
    option = block(page, elem_id).get_by_role("option", name=choice, exact=True)
    try:
        option.wait_for(state="visible", timeout=ACTION_TIMEOUT_MS)
    except PlaywrightTimeoutError:
        box.press("Escape")
        raise AssertionError(f"#{elem_id} has no choice {choice!r}; it offers {option_labels(page, elem_id)}") from None
    option.click()
    block(page, elem_id).locator("[role=listbox]").wait_for(state="hidden")
    try:  # polled, not read once: an update already on its way (a refresh's answer) may still pass through
        expect(box).to_have_value(re.compile(re.escape(choice) + r"( \[[0-9a-f]{10}\])?"))
    except AssertionError:
        raise AssertionError(f"#{elem_id} shows {box.input_value()!r} after picking {choice!r}") from None


def set_checkbox(page, elem_id: str, checked: bool) -> None:
    block(page, elem_id).locator("input[type=checkbox]").set_checked(checked)


def upload_file(page, elem_id: str, path: str | Path) -> None:
    """Put a file into an Image/File component (through its hidden file input) and wait until it is shown
    as uploaded (the drop zone's "Click to Upload" text is gone)."""
    b = block(page, elem_id)
    b.locator("input[type=file]").set_input_files(str(path))
    b.locator("[data-testid=upload-text]").wait_for(state="detached")


def read_value(page, elem_id: str):
    """The value a Textbox, Number, Slider or Dropdown shows (a str), or a Checkbox's state (a bool)."""
    b = block(page, elem_id)
    checkbox = b.locator("input[type=checkbox]")
    if checkbox.count() == 1:
        return checkbox.is_checked()
    field = b.locator("textarea, input[role=combobox], input[type=number], input[type=text], "
                      "input[type=password], input[type=email]").first
    return field.input_value()


_GALLERY_SOURCES_JS = """(root) => {
    for (const selector of ['.grid-container button.thumbnail-item img', '.thumbnails button.thumbnail-item img',
                            'img[data-testid=detailed-image]']) {
        const images = root.querySelectorAll(selector);
        if (images.length) return Array.from(images, img => img.getAttribute('src'));
    }
    return [];
}"""


def gallery_image_urls(page, elem_id: str) -> list[str]:
    """The src of each image in a Gallery, in order (one per image; equal images have equal URLs). Read in one
    step in the page: a gallery that a running job updates may replace its images between two reads."""
    return block(page, elem_id).evaluate(_GALLERY_SOURCES_JS)


def error_toasts(page) -> list[str]:
    """Texts of the error popups Gradio shows (gr.Error, a crashed event handler)."""
    return [t.strip() for t in page.locator(".toast-body.error [data-testid=toast-text]").all_inner_texts()]


_JOB_VIEW_JS = """(tab) => {
    const get = (id) => document.getElementById(id);
    const shown = (el) => {
        if (!el) return false;
        const box = el.getBoundingClientRect();
        return box.width > 0 && box.height > 0 && getComputedStyle(el).visibility !== 'hidden';
    };
    const progress = get(`${tab}_progress`), preview = get(`${tab}_preview`);
    const image = shown(preview) ? preview.querySelector('img') : null;
    return {progress: progress ? progress.innerText : '', generate: shown(get(`${tab}_generate`)),
            interrupt: shown(get(`${tab}_interrupt`)), skip: shown(get(`${tab}_skip`)),
            preview: image ? image.getAttribute('src') : null};
}"""


@dataclass(frozen=True)
class JobView:
    """What a tab shows of its job at one moment, read in one step in the page (Gradio 6 takes a component
    with visible=False out of the DOM, so reading the parts one by one races with the job's end)."""
    progress: str  # the progress box's text
    generate: bool  # which buttons are visible
    interrupt: bool
    skip: bool
    preview: str | None  # the src of the live preview's image while it is shown

    @property
    def step(self) -> tuple[int, int] | None:
        """(k, N) of the "step k/N" in the progress box, or None."""
        m = re.search(r"step (\d+)/(\d+)", self.progress)
        return (int(m.group(1)), int(m.group(2))) if m else None


def job_view(page, tab: str) -> JobView:
    return JobView(**page.evaluate(_JOB_VIEW_JS, tab))


def wait_for_gallery(page, elem_id: str, count: int, timeout: float = 180) -> list[str]:
    """Wait until the Gallery shows at least `count` images and the job that fills it has ended; their URLs.
    `timeout` is in seconds; an error popup fails at once.

    txt2img and img2img show each image as it finishes, while the job still runs: their job has ended when
    the tab shows Generate again and hides Interrupt, which the job's last update does, together with the
    final gallery and the infotext. (Their status trackers stay hidden: those events show no progress of
    Gradio's own.) Extras fills its gallery in its last update only.

    Call it on a gallery that shows no earlier run's images: Generate is still shown for a moment after the
    click, so a second run in one page must wait for something that run changes (e.g. the infotext)."""
    tab = elem_id.removesuffix("_gallery")
    follows_a_job = tab in ("txt2img", "img2img")
    deadline = time.monotonic() + timeout
    while True:
        urls = gallery_image_urls(page, elem_id)
        if len(urls) >= count:
            if not follows_a_job:
                return urls
            view = job_view(page, tab)
            if view.generate and not view.interrupt:
                return gallery_image_urls(page, elem_id)  # (the last update may have replaced the list)
        if errors := error_toasts(page):
            raise AssertionError(f"error popup while waiting for #{elem_id}: {errors}")
        if time.monotonic() > deadline:
            raise AssertionError(f"#{elem_id} shows {len(urls)} images after {timeout}s, wanted {count}")
        page.wait_for_timeout(250)


class SentRequests:
    """What the page sends to the server's queue, read back by the controls' elem_ids: shows which value of a
    control an event really carried, so a test can tell a control the page did not commit from a wrong result."""

    _INPUT_IDS_JS = """(api) => {
        const c = window.gradio_config, dep = c.dependencies.find(d => d.api_name === api);
        return dep ? dep.inputs.map(id => (c.components.find(x => x.id === id)?.props?.elem_id) ?? null) : null;
    }"""

    def __init__(self, page):
        self.page = page
        self.bodies: list[dict] = []
        page.on("request", self._record)

    def _record(self, request) -> None:
        if request.method == "POST" and "/queue/join" in request.url and request.post_data:
            self.bodies.append(request.post_data_json)

    def count(self, api_name: str) -> int:
        """How many requests for the event `api_name` the page has sent so far."""
        fn = self.page.evaluate("(api) => window.gradio_config.dependencies.find(d => d.api_name === api)?.id ?? null",
                                api_name)
        if fn is None:
            raise AssertionError(f"the page has no event named {api_name!r}")
        return sum(1 for body in list(self.bodies) if body.get("fn_index") == fn)

    def last(self, api_name: str) -> dict:
        """The inputs of the last request for the event `api_name`, by elem_id (controls without one left out)."""
        ids = self.page.evaluate(self._INPUT_IDS_JS, api_name)
        if ids is None:
            raise AssertionError(f"the page has no event named {api_name!r}")
        for body in reversed(self.bodies):
            data = body.get("data") or []
            if len(data) == len(ids):
                return {elem_id: value for elem_id, value in zip(ids, data) if elem_id}
        raise AssertionError(f"no request for {api_name!r} was sent ({len(self.bodies)} queue requests seen)")


def fetch_image(page_or_url, src: str) -> Image.Image:
    """Download an image the page shows. `page_or_url` is the Playwright page (its cookies go along, so
    this works behind --gradio-auth) or the server's base URL; `src` may be absolute, relative or data:."""
    if src.startswith("data:"):
        return Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    if isinstance(page_or_url, str):
        url = urljoin(page_or_url.rstrip("/") + "/", src)
        r = requests.get(url, timeout=60)
        r.raise_for_status()
        body = r.content
    else:
        url = urljoin(page_or_url.url, src)
        r = page_or_url.request.get(url, timeout=60_000)
        if not r.ok:
            raise AssertionError(f"GET {url}: {r.status} {r.status_text}")
        body = r.body()
    image = Image.open(io.BytesIO(body))
    image.load()
    return image
