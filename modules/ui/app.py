"""The whole page: the top bar (checkpoint, VAE, Clip skip), the tabs in A1111's order, and the
"Send to" links between them. Each tab lives in its own module; this one only puts them together."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from modules.engine import BadRequest, Engine
from modules.models.checkpoint_file import CheckpointError
from modules.ui import (common, defaults, extra_networks as extra_networks_ui, extra_options, extras, history, img2img,
                        merger, override_settings, paste, pnginfo, settings_tab, txt2img)

ASSETS = Path(__file__).parent / "assets"
DEMO_SIZE = 128  # what the built-in demo model was trained at
# Settings the page's own scripts read (script.js, `sdOption`): handed over at each page load and after Apply settings
PAGE_OPTIONS = ("keyedit_precision_attention", "keyedit_precision_extra", "keyedit_delimiters",
                "keyedit_delimiters_whitespace", "keyedit_move")


def page_options(engine: Engine) -> str:
    """PAGE_OPTIONS' current values, as the JSON text of a hidden element of the page."""
    values = engine.options.values
    data = json.dumps({name: getattr(values, name) for name in PAGE_OPTIONS})
    return f'<div id="sd-page-options" hidden>{html.escape(data, quote=False)}</div>'


@dataclass
class Page:
    blocks: gr.Blocks
    css: str
    head: str


def demo_notice(engine: Engine, title: str | None) -> str:
    """A plain word about the built-in demo model when it is the selected checkpoint, else nothing."""
    info = engine.checkpoints.find(title) if title else None
    if info is None or not info.builtin:
        return ""
    folder = html.escape(str(engine.paths.checkpoint_dirs[-1]))
    return (f"<div class='sd-note'><b>This is the small built-in demo model</b> ({html.escape(info.name)}): it draws "
            f"one coloured circle, square or triangle on a plain background at {DEMO_SIZE}x{DEMO_SIZE}, e.g. "
            "<i>a red circle on a blue background</i>. For real pictures put Stable Diffusion checkpoints "
            f"(.safetensors or .ckpt) into <code>{folder}</code> and press 🔄.</div>")


@dataclass
class TopBar:
    checkpoint: gr.Dropdown
    vae: gr.Dropdown
    clip_skip: gr.Slider
    status: gr.HTML
    notice: gr.HTML
    chosen: object  # the event of a checkpoint chosen in the dropdown (later steps chain on it with .then)
    quick: dict  # the other quicksettings' controls, by setting name
    quick_changed: list  # the events of the other quicksettings applied (see settings_tab.wire_quick)


def _checkpoint_titles(engine: Engine) -> list[str]:
    return merger.checkpoint_titles(engine)


def _selected(engine: Engine) -> str | None:
    try:
        return engine.checkpoints.resolve().title
    except BadRequest:
        return None


def _same_checkpoint(engine: Engine, title: str | None, other: str | None) -> bool:
    """Whether two titles name the same file: a title gains its `[hash]` when the background hash is done, so the
    dropdown may still hold the one without it."""
    if not title or not other:
        return title == other
    if title == other:
        return True
    a, b = engine.checkpoints.find(title), engine.checkpoints.find(other)
    return a is not None and b is not None and a.filename == b.filename


def hash_progress_stream(engine: Engine):
    """After a load: the loaded checkpoint's hash, computed in the background, as a bar in the status line while
    it runs; then the dropdown's titles with the hash (the selected one kept). Nothing when it is known."""
    def follow():
        current = engine.checkpoints.current
        if current is None or current.info.sha256:
            yield gr.skip(), gr.skip()
            return
        info = current.info
        task = engine.checkpoints.hash_later(info)

        def superseded() -> bool:  # another checkpoint loaded since: the status line and the box are its load's
            now = engine.checkpoints.current
            return now is None or now.info.filename != info.filename

        while not task.done:
            if superseded():
                break
            percent = int(task.fraction * 100)
            yield (f'<div class="sd-note">Loaded {html.escape(info.name)}; calculating its hash: {percent}% '
                   f'<progress value="{percent}" max="100"></progress></div>', gr.skip())
            task.wait(0.5)
        if superseded():
            yield gr.skip(), gr.skip()
            return
        selected = _selected(engine)
        yield (f'<div class="sd-note">Loaded {html.escape(info.title)}</div>',
               gr.Dropdown(choices=_checkpoint_titles(engine), value=selected) if selected else gr.skip())
    return follow


def top_bar(engine: Engine) -> TopBar:
    initial = _selected(engine)
    with gr.Row(elem_id="quicksettings", equal_height=True):
        checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=_checkpoint_titles(engine),
                                 value=initial, elem_id="sd_checkpoint", scale=4, min_width=300,
                                 allow_custom_value=True)  # a title gains its hash once computed
        refresh_checkpoints = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40,
                                        size="sm", elem_classes="sd-tool")
        vae = gr.Dropdown(label="SD VAE", choices=common.vae_choices(engine), value=engine.options.values.sd_vae,
                          elem_id="setting_sd_vae", scale=2, min_width=200)
        refresh_vae = gr.Button("🔄", elem_id="refresh_sd_vae", scale=0, min_width=40, size="sm",
                                elem_classes="sd-tool")
        clip_skip = gr.Slider(1, 12, value=engine.options.values.CLIP_stop_at_last_layers, step=1,
                              label="Clip skip", elem_id="setting_CLIP_stop_at_last_layers", scale=2, min_width=200)
        quick = settings_tab.quick_controls(engine)  # the quicksettings_list's others
    status = gr.HTML(_status_html(engine.checkpoints.startup_error), elem_id="sd_status")
    notice = gr.HTML(demo_notice(engine, initial), elem_id="demo_model_notice")

    def refresh():
        engine.checkpoints.refresh()
        value = _selected(engine)
        return gr.Dropdown(choices=_checkpoint_titles(engine), value=value), demo_notice(engine, value)

    refresh_checkpoints.click(refresh, outputs=[checkpoint, notice], queue=False)

    def refresh_vaes():
        engine.checkpoints.refresh_vaes()
        return gr.Dropdown(choices=common.vae_choices(engine), value=engine.options.values.sd_vae)

    refresh_vae.click(refresh_vaes, outputs=vae, queue=False)
    chosen = checkpoint.input(change_checkpoint_stream(engine), inputs=checkpoint,
                              outputs=[status, checkpoint, notice], concurrency_limit=1, concurrency_id="checkpoint",
                              show_progress="hidden")
    chosen.then(hash_progress_stream(engine), outputs=[status, checkpoint], show_progress="hidden",
                concurrency_limit=None)

    def set_option(name):
        def apply(value):
            try:
                engine.set_options({name: settings_tab.typed(name, value)})  # a slider gives Clip skip a float
                return ""
            except (BadRequest, CheckpointError) as e:
                return _status_html(str(e))
        return apply

    vae.input(set_option("sd_vae"), inputs=vae, outputs=status, show_progress="hidden")
    clip_skip.change(set_option("CLIP_stop_at_last_layers"), inputs=clip_skip, outputs=status, queue=False,
                     show_progress="hidden")
    quick_changed = settings_tab.wire_quick(engine, quick, status, _status_html)
    return TopBar(checkpoint, vae, clip_skip, status, notice, chosen, quick, quick_changed)


def _status_html(error: str | None) -> str:
    return f'<div class="sd-error">{html.escape(error)}</div>' if error else ""


def change_checkpoint_stream(engine: Engine):
    """Loading a checkpoint as a streamed event: a "Loading..." line at once, then the outcome. It waits
    in the job queue (behind a running generation) without blocking the page's other events."""
    def change(title: str):
        if not title:
            yield "", gr.skip(), gr.skip()
            return
        yield f'<div class="sd-note">Loading {html.escape(title)}...</div>', gr.skip(), gr.skip()
        try:
            engine.set_options({"sd_model_checkpoint": title})
            loaded = engine.checkpoints.current.info.title
            yield (f'<div class="sd-note">Loaded {html.escape(loaded)}</div>',
                   gr.Dropdown(choices=_checkpoint_titles(engine), value=loaded), demo_notice(engine, loaded))
        except (BadRequest, CheckpointError) as e:
            current = engine.checkpoints.current
            yield (_status_html(f"Could not load {title}: {e}"),
                   gr.Dropdown(value=current.info.title if current else None), gr.skip())
    return change


def page_size(engine: Engine, title: str | None) -> tuple[int, int]:
    """The size the page's Width and Height start at for a checkpoint: what its family was trained at (SDXL
    1024x1024), read from the file without loading it; the demo model's own (it draws nothing at 512)."""
    info = engine.checkpoints.find(title) if title else None
    if info is None:
        return 512, 512
    return (DEMO_SIZE, DEMO_SIZE) if info.builtin else engine.checkpoints.default_size(info)


def follow_model_size(engine: Engine, size: tuple[int, int], tabs: list[dict], chosen: list) -> None:
    """After a checkpoint is chosen (`chosen`: the dropdown's event and the checkpoint cards' loads), each tab whose
    Width and Height are still the previous model's size takes the new model's; sizes the user set stay. (A pasted
    infotext sets its own size.)"""
    shown = gr.State(list(size))
    pairs = [(t["width"], t["height"]) for t in tabs]

    def follow(previous, *values):
        new = page_size(engine, _selected(engine))
        if tuple(previous) == new:
            return [gr.skip()] * (1 + len(values))
        out: list = [list(new)]
        for w, h in zip(values[::2], values[1::2]):
            out += list(new) if (int(w), int(h)) == tuple(previous) else [gr.skip(), gr.skip()]
        return out

    components = [c for pair in pairs for c in pair]
    for event in chosen:
        event.then(follow, inputs=[shown, *components], outputs=[shown, *components], queue=False,
                   show_progress="hidden")


def load_selected(engine: Engine, bar: TopBar, event):
    """After `event` has put a title into the top bar's dropdown (a paste, a checkpoint's card): load it unless it is
    the one loaded, then the hash's progress. Returns the load's event."""
    load = change_checkpoint_stream(engine)

    def load_if_changed(title: str):
        if title and not _same_checkpoint(engine, title, _selected(engine)):
            yield from load(title)
        else:
            yield gr.skip(), gr.skip(), gr.skip()

    loaded = event.then(load_if_changed, inputs=bar.checkpoint, outputs=[bar.status, bar.checkpoint, bar.notice],
                        show_progress="hidden")
    loaded.then(hash_progress_stream(engine), outputs=[bar.status, bar.checkpoint], show_progress="hidden",
                concurrency_limit=None)
    return loaded


def tab_layout(order: list[str], hidden: list[str]) -> tuple[list[str], set[str]]:
    """A1111's ui_tab_order and hidden_tabs: the tabs named in `order` first, in that order, then the others in the
    default order; the names in `hidden` not shown. Names this page has no tab for (A1111's Train, Extensions)
    are ignored, and Settings is never hidden (it is where the setting is undone)."""
    rank = {name: i for i, name in enumerate(dict.fromkeys(n for n in order if n in common.TAB_IDS))}
    ordered = sorted(common.TAB_IDS, key=lambda name: rank.get(name, len(rank)))  # stable: the others keep theirs
    return ordered, {name for name in hidden if name in common.TAB_IDS and name != "Settings"}


def build(engine: Engine) -> Page:
    initial = _selected(engine)
    size = page_size(engine, initial)
    with gr.Blocks(title="Stable Diffusion WebUI", analytics_enabled=False) as blocks:
        bar = top_bar(engine)
        builders = {"txt2img": lambda: txt2img.build(engine, size), "img2img": lambda: img2img.build(engine, size),
                    "Extras": lambda: extras.build(engine), "PNG Info": lambda: pnginfo.build(engine),
                    "History": lambda: history.build(engine), "Checkpoint Merger": lambda: merger.build(engine),
                    "Settings": lambda: settings_tab.build(engine)}
        order, hidden = tab_layout(engine.options.values.ui_tab_order, engine.options.values.hidden_tabs)
        built, tab_of = {}, {}
        ids = common.TAB_IDS
        with gr.Tabs(elem_id="tabs", selected=ids[next(n for n in order if n not in hidden)]) as tabs:
            for name in order:  # every tab is built (Send to and paste need their fields); hidden ones are not shown
                with gr.Tab(name, id=ids[name], elem_id=f"tab_{ids[name]}", visible=name not in hidden) as tab_of[name]:
                    built[name] = builders[name]()
        t2i, i2i, post, png = built["txt2img"], built["img2img"], built["Extras"], built["PNG Info"]
        hist, merge_tab, settings_view = built["History"], built["Checkpoint Merger"], built["Settings"]
        t2i_tab, i2i_tab, extras_tab = tab_of["txt2img"], tab_of["img2img"], tab_of["Extras"]
        history_tab, merger_tab = tab_of["History"], tab_of["Checkpoint Merger"]
        options = gr.HTML(page_options(engine), elem_id="sd_page_options", padding=False)
        # ui-config.json (A1111's keys): the controls' own defaults, set before the page is first served
        ui_defaults = defaults.UiDefaults(engine.paths.ui_config_file)
        for tab, path in ((t2i_tab, "txt2img"), (i2i_tab, "img2img"), (extras_tab, "extras"),
                          (merger_tab, "modelmerger")):
            ui_defaults.add_block(tab, path, defaults.skipped(path))
        for path in ("txt2img", "img2img"):  # the page's size follows the model (SDXL 1024) where the file says nothing
            for i, label in enumerate(("Width", "Height")):
                if f"{path}/{label}/value" not in ui_defaults.on_disk:
                    ui_defaults.follows[f"{path}/{label}/value"] = \
                        lambda i=i: page_size(engine, _selected(engine))[i]
        ui_defaults.wire(settings_view.defaults_view, settings_view.defaults_apply, settings_view.defaults_review)
        if bar.quick:  # each page shows the quicksettings' current values; the body says when they are there
            blocks.load(lambda: settings_tab.quick_values(engine, bar.quick), outputs=list(bar.quick.values()),
                        queue=False, show_progress="hidden").then(
                None, js="() => { document.body.dataset.sdQuickSettings = 'current'; }")
        # the tabs' shown settings (Settings in UI) start as the settings are now; the body says when they do
        shown = [(k, c) for tab in (t2i, i2i) for k, c in tab.fields.items() if k.startswith(extra_options.PREFIX)]
        if shown:
            blocks.load(lambda: extra_options.current(engine, [k for k, _ in shown]), outputs=[c for _, c in shown],
                        queue=False, show_progress="hidden").then(
                None, js="() => { document.body.dataset.sdExtraOptions = 'current'; }")
        # a page open since the server started sees new values
        for event in (blocks.load, settings_view.applied.then, *(e.then for e in bar.quick_changed)):
            event(lambda: page_options(engine), outputs=options, queue=False, show_progress="hidden")
        txt2img.wire(engine, t2i)
        img2img.wire(engine, i2i)
        # a checkpoint's card loads it, as a pasted infotext's checkpoint; the size and the Lora cards follow a
        # checkpoint chosen either way
        chosen = [bar.chosen] + [
            load_selected(engine, bar, extra_networks_ui.wire_checkpoints(engine, v, bar.checkpoint))
            for v in (t2i.cards, i2i.cards)]
        follow_model_size(engine, size, [t2i.fields, i2i.fields], chosen)
        for view in (t2i.cards, i2i.cards):  # the Lora cards follow the model's version
            for event in chosen:
                extra_networks_ui.follow_model(engine, view, event)
        def cards_follow(loaded) -> None:  # a pasted infotext's checkpoint, once loaded: the Lora cards follow too
            for view in (t2i.cards, i2i.cards):
                extra_networks_ui.follow_model(engine, view, loaded)

        common_wiring(engine, bar, tabs, t2i, i2i, png, post, hist, cards_follow)
        history_tab.select(hist.refresh[0], inputs=hist.refresh[1], outputs=hist.refresh[2], queue=False)
        # a new merged checkpoint joins the top bar's list at once (the selection stays)
        merge_tab.merged.then(lambda: gr.Dropdown(choices=_checkpoint_titles(engine)), outputs=bar.checkpoint,
                              queue=False, show_progress="hidden")
        # a page opened while the start-up model's hash is computed shows its progress, then the title with it
        blocks.load(hash_progress_stream(engine), outputs=[bar.status, bar.checkpoint], show_progress="hidden",
                    concurrency_limit=None)
    return Page(blocks, (ASSETS / "style.css").read_text(encoding="utf-8"),
                f"<script>{(ASSETS / 'script.js').read_text(encoding='utf-8')}</script>")


def common_wiring(engine: Engine, bar: TopBar, tabs: gr.Tabs, t2i: txt2img.Txt2ImgTab, i2i: img2img.Img2ImgTab,
                  png: pnginfo.PngInfoTab, post: extras.ExtrasTab, hist: history.HistoryTab | None = None,
                  on_load=None) -> None:
    """Paste and "Send to" (from PNG Info, History, the galleries): infotexts fill a tab's fields and the top bar.
    `on_load(event)`: called with each load of a checkpoint an infotext names (what follows the model chains on it)."""
    common.wire_output_panel(engine, t2i.panel, t2i.seed, "outdir_txt2img_samples")
    common.wire_output_panel(engine, i2i.panel, i2i.seed, "outdir_img2img_samples")
    top = [bar.clip_skip, bar.checkpoint]

    def filled(text: str, target, is_txt2img: bool, image=None, to_inpaint: bool = False,
               from_gallery: bool = False) -> list:
        """`image`: the picture sent along to img2img / inpaint; `from_gallery`: sent from a tab's results."""
        values, settings = paste.field_values(engine, text, is_txt2img)
        if image is not None:
            options = engine.options.values
            paste.sent_with(values, image.size, to_inpaint, from_gallery, options.send_size, options.send_seed,
                            engine.limits.max_side)
        if "override_settings" in target.fields:  # A1111's box: the pasted settings that differ from the current
            values["override_settings"] = override_settings.update(override_settings.pasted(engine, settings))
        values.update(extra_options.pasted(settings, target.fields))  # the tab's shown settings the infotext gives
        out = paste.updates(target.fields, values)
        out.append(settings.get("CLIP_stop_at_last_layers", gr.skip()))
        checkpoint = settings.get("sd_model_checkpoint")
        out.append(checkpoint if checkpoint and not _same_checkpoint(engine, checkpoint, _selected(engine))
                   else gr.skip())
        return out

    def after(event):
        loaded = load_selected(engine, bar, event)
        if on_load is not None:
            on_load(loaded)

    # PNG Info -> txt2img / img2img / inpaint
    t2i_fields = list(t2i.fields.values())
    i2i_fields = list(i2i.fields.values())
    after(png.send_txt2img.click(lambda text: filled(text, t2i, True) + [gr.Tabs(selected="txt2img")],
                                 inputs=png.parameters, outputs=t2i_fields + top + [tabs]))

    def to_img2img(text, path, sub_tab: str, from_gallery: bool = False):
        image = common.open_image(path, "RGBA") if path else None
        target = i2i.inputs["init_img"] if sub_tab == "img2img_img2img_tab" else i2i.inputs["init_img_with_mask"]
        value = image if sub_tab == "img2img_img2img_tab" else _editor_value(image)
        mode = 0 if sub_tab == "img2img_img2img_tab" else 2
        return filled(text, i2i, False, image, mode == 2, from_gallery) + [gr.Tabs(selected="img2img"),
                                                                           gr.Tabs(selected=sub_tab), mode] + \
            [value if c is target else gr.skip() for c in (i2i.inputs["init_img"], i2i.inputs["init_img_with_mask"])]

    send_outputs = i2i_fields + top + [tabs, i2i.tabs, i2i.inputs["mode"], i2i.inputs["init_img"],
                                       i2i.inputs["init_img_with_mask"]]
    after(png.send_img2img.click(lambda t, p: to_img2img(t, p, "img2img_img2img_tab"),
                                 inputs=[png.parameters, png.image], outputs=send_outputs))
    after(png.send_inpaint.click(lambda t, p: to_img2img(t, p, "img2img_inpaint_tab"),
                                 inputs=[png.parameters, png.image], outputs=send_outputs))

    # a gallery (txt2img's or img2img's own) -> img2img / inpaint: the selected image and its parameters
    def from_gallery(gallery, infotexts, index, sub_tab: str):
        if not gallery:
            return [gr.skip()] * len(send_outputs)
        index = index if 0 <= index < len(gallery) else 0
        text = infotexts[index] if index < len(infotexts) else ""
        return to_img2img(text, common.gallery_path(gallery[index]), sub_tab, from_gallery=True)

    # -> Extras: the image alone, into the Single Image sub-tab
    def to_extras(path):
        return (gr.Tabs(selected="extras"), gr.Tabs(selected="extras_single_tab"), 0,
                common.open_image(path, "RGBA") if path else None)

    extras_outputs = [tabs, post.tabs, post.mode, post.image]
    png.send_extras.click(to_extras, inputs=png.image, outputs=extras_outputs)

    # History -> the same places, the selected image's file (a server path kept in a State) and infotext
    if hist is not None:
        after(hist.send_txt2img.click(lambda text: filled(text, t2i, True) + [gr.Tabs(selected="txt2img")],
                                      inputs=hist.parameters, outputs=t2i_fields + top + [tabs]))
        after(hist.send_img2img.click(lambda t, p: to_img2img(t, p, "img2img_img2img_tab"),
                                      inputs=[hist.parameters, hist.path], outputs=send_outputs))
        after(hist.send_inpaint.click(lambda t, p: to_img2img(t, p, "img2img_inpaint_tab"),
                                      inputs=[hist.parameters, hist.path], outputs=send_outputs))
        hist.send_extras.click(to_extras, inputs=hist.path, outputs=extras_outputs)

    def gallery_to_extras(gallery, index):
        if not gallery:
            return [gr.skip()] * len(extras_outputs)
        return to_extras(common.gallery_path(gallery[index if 0 <= index < len(gallery) else 0]))

    for panel in (t2i.panel, i2i.panel):
        panel.send_extras.click(gallery_to_extras, inputs=[panel.gallery, panel.selected], outputs=extras_outputs)
        gallery_inputs = [panel.gallery, panel.infotexts, panel.selected]
        after(panel.send_img2img.click(lambda g, t, i: from_gallery(g, t, i, "img2img_img2img_tab"),
                                       inputs=gallery_inputs, outputs=send_outputs))
        after(panel.send_inpaint.click(lambda g, t, i: from_gallery(g, t, i, "img2img_inpaint_tab"),
                                       inputs=gallery_inputs, outputs=send_outputs))

    # The ↙ button: the prompt box's pasted infotext, else the last job's (params.txt)
    for tab, is_txt2img in ((t2i, True), (i2i, False)):
        def paste_params(prompt, tab=tab, is_txt2img=is_txt2img):
            text = prompt if prompt and "Steps: " in prompt else _read_text(engine.paths.params_file)
            if not text:
                return [gr.skip()] * (len(tab.fields) + len(top))
            return filled(text, tab, is_txt2img)

        after(tab.toprow.paste.click(paste_params, inputs=tab.toprow.prompt,
                                     outputs=list(tab.fields.values()) + top))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _editor_value(image):
    return None if image is None else {"background": image, "layers": [], "composite": image}
