"""Bounded work: the server's limits on what one request may ask for (modules/limits.py), input images
refused from their header and decoded within a budget, the request-size limit, and an interrupt that lands
inside a long U-Net step."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import struct
import threading
import time
import zlib

import pytest
import requests
import torch
from PIL import Image

from modules import cmd_args, images, limits, postprocessing
from modules.api import routes, schemas
from modules.engine import BadRequest, OverLimit
from modules.generation import pipeline
from modules.generation.params import GenerationParams, Img2ImgParams
from tests.support.engine import make_engine
from tests.support.server import setup_data, start_server, stop_server

# Pillow's own warning for the test images over its default 89-megapixel mark (they are refused anyway)
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def png_of_zeros(width: int, height: int, text: str | None = None, broken: bool = False) -> bytes:
    """A PNG of width x height black RGB pixels, made a row at a time (a 13000x13000 one is 0.5 MB and decodes
    to 500 MB). `broken`: the pixel data is garbage (only the header is right)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if broken:
        idat = b"not compressed pixels" * 10
    else:
        z, row = zlib.compressobj(9), b"\0" * (1 + 3 * width)
        idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    text_chunk = chunk(b"tEXt", b"parameters\0" + text.encode("latin-1")) if text else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + text_chunk + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def small_png(size=(64, 64), color=(200, 40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_dir):
    data = tmp_path_factory.mktemp("limits")
    shutil.copytree(tiny_dir, data / "models" / "Stable-diffusion")
    e = make_engine(data)
    yield e
    e.queue.stop()


# --- the limits on a generation ------------------------------------------------------------------

@pytest.mark.parametrize("fields,needle", [
    (dict(width=2560), "width 2560 is over this server's limit of 2048 pixels (--max-image-side)"),
    (dict(height=4096), "height 4096 is over this server's limit of 2048 pixels (--max-image-side)"),
    (dict(batch_size=9, width=2048, height=2048), "batch_size 9 at 2048x2048 is more pixels in one batch than "
                                                  "this server's limit of 8 images of 2048x2048"),
    (dict(batch_size=64, width=1024, height=1024), "batch_size 64 at 1024x1024 is more pixels"),
    (dict(n_iter=101), "n_iter (batch count) 101 is over this server's limit of 100 (--max-batch-count)"),
    (dict(enable_hr=True, hr_scale=4.5), "the hires fix would make 2304x2304 images, more pixels than this "
                                         "server's limit of 2048x2048 (--max-image-side)"),
    (dict(enable_hr=True, width=1024, height=1024, hr_resize_x=2048, hr_resize_y=2560), "2048x2560 images"),
])
def test_a_generation_over_the_limits_is_refused_before_it_is_queued(engine, fields, needle):
    params = GenerationParams(**{"prompt": "x", "width": 512, "height": 512, "steps": 2, **fields})
    with pytest.raises(OverLimit) as e:
        engine.submit_txt2img(params)
    assert needle in str(e.value)
    assert isinstance(e.value, BadRequest)  # the API's 400
    assert engine.queue.current is None and engine.queue.pending_ids() == [] and engine.checkpoints.current is None


def test_what_a1111_users_do_stays_within_the_limits(engine):
    """A1111's slider maxima, and a hires fix whose target has another shape than 2048x2048 but no more
    pixels (768x1152 upscaled by 2 is 1536x2304), pass the checks."""
    for fields in (dict(width=2048, height=2048, batch_size=8, n_iter=100, steps=150),
                   dict(width=128, height=128, batch_size=24),  # small images in a larger batch
                   dict(width=768, height=1152, enable_hr=True, hr_scale=2.0, hr_second_pass_steps=150),
                   dict(steps=1000)):
        engine.requests.check_limits(GenerationParams(prompt="x", **fields))
    i2i = Img2ImgParams(init_images=[Image.new("1", (9000, 6000))], width=2048, height=1360, batch_size=8)
    engine.requests.check_limits(i2i)  # a 54-megapixel photo is a normal init image


def test_the_limits_come_from_the_command_line():
    ns = cmd_args.parse(["--max-image-side", "4096", "--max-batch-size", "16", "--max-batch-count", "500",
                         "--max-steps", "150", "--max-input-megapixels", "250", "--max-upload-size", "300",
                         "--max-extras-images", "20", "--max-extras-megapixels", "300"])
    got = limits.from_args(ns)
    assert got == limits.Limits(max_side=4096, max_batch_size=16, max_batch_count=500, max_steps=150,
                                max_input_megapixels=250.0, max_upload_mb=300, max_extras_images=20,
                                max_extras_megapixels=300.0)
    assert got.max_input_pixels == 250_000_000 and got.max_upload_bytes == 300 * 1024 * 1024
    assert got.max_extras_pixels == 300_000_000
    assert limits.from_args(cmd_args.parse([])) == limits.Limits()  # the defaults are the flags' defaults
    assert cmd_args.public_flags(ns)["max_image_side"] == 4096  # /sdapi/v1/cmd-flags shows them
    for bad in (["--max-image-side", "8192"], ["--max-batch-size", "0"], ["--max-input-megapixels", "nan"],
                ["--max-extras-images", "0"], ["--max-extras-megapixels", "inf"]):
        with pytest.raises(SystemExit):
            cmd_args.parse(bad)


def test_a_raised_limit_lets_the_request_through(tmp_path, tiny_dir):
    shutil.copytree(tiny_dir, tmp_path / "models" / "Stable-diffusion")
    engine = make_engine(tmp_path, limits=limits.Limits(max_steps=3))
    try:
        with pytest.raises(OverLimit, match="steps 4 is over this server's limit of 3 \\(--max-steps\\)"):
            engine.requests.check_limits(GenerationParams(steps=4))
        with pytest.raises(OverLimit, match="hr_second_pass_steps 5 is over"):
            engine.requests.check_limits(GenerationParams(steps=2, enable_hr=True, hr_second_pass_steps=5))
    finally:
        engine.queue.stop()
    engine = make_engine(tmp_path, limits=limits.Limits(max_side=4096))
    try:
        engine.requests.check_limits(GenerationParams(width=4096, height=2560))
    finally:
        engine.queue.stop()


# --- input images ---------------------------------------------------------------------------------

def test_an_input_image_over_the_pixel_limit_is_refused_from_its_header():
    """The pixel data of this 13000x13000 PNG is garbage: only a check of the header, before any decoding,
    can answer with the size."""
    bomb = png_of_zeros(13000, 13000, broken=True)
    for decode in (lambda: images.decode_base64_image(b64(bomb)),
                   lambda: images.decode_base64_image(b64(bomb), lazy=True),
                   lambda: Img2ImgParams(init_images=[b64(bomb)])):
        with pytest.raises(ValueError, match=r"the image has 169 megapixels \(13000x13000\); this server accepts "
                                             r"images of up to 100 megapixels \(--max-input-megapixels\)"):
            decode()
    with pytest.raises(images.ImageTooLarge, match=r"has 0.06 megapixels \(300x200\); .* up to 0.05 megapixels"):
        images.decode_base64_image(b64(small_png((300, 200))), max_pixels=50_000)


def test_input_images_wait_in_the_queue_compressed_and_are_decoded_by_their_job(engine):
    req = schemas.Img2ImgRequest(init_images=[b64(small_png())], mask=b64(small_png(color=(255, 255, 255))),
                                 width=64, height=64, steps=2, denoising_strength=0.5)
    params = routes.to_img2img_params(req, engine.limits)
    assert params.init_images[0].tile and params.mask.tile  # opened, not decoded
    result = engine.img2img(params)
    assert len(result.images) == 1 and not params.init_images[0].tile  # decoded by the job
    # a file whose header is fine and whose data is not fails in its job, with the field named (a 400)
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(jpeg, format="JPEG")
    cut = b64(jpeg.getvalue()[:len(jpeg.getvalue()) * 2 // 3])  # the header whole, the pixel data cut
    params = routes.to_img2img_params(schemas.Img2ImgRequest(init_images=[cut], width=64, height=64, steps=2))
    with pytest.raises(BadRequest, match=r"init_images.0: not an image that can be read \(OSError\)"):
        engine.img2img(params)
    # over the limits: refused before anything is decoded or queued
    big = b64(png_of_zeros(13000, 13000, broken=True))
    with pytest.raises(BadRequest, match="init_images.0: the image has 169 megapixels"):
        routes.to_img2img_params(schemas.Img2ImgRequest(init_images=[big]), engine.limits)
    with pytest.raises(BadRequest, match="mask: the image has 169 megapixels"):
        routes.to_img2img_params(schemas.Img2ImgRequest(init_images=[b64(small_png())], mask=big), engine.limits)
    with pytest.raises(OverLimit, match="init_images: 9 images, over this server's limit of 8"):
        routes.to_img2img_params(schemas.Img2ImgRequest(init_images=[b64(small_png())] * 9, batch_size=9))


def test_the_decode_budget_bounds_the_pixels_decoded_at_once(engine, monkeypatch):
    budget = images.DecodeBudget(100)
    first_in, release_first, log = threading.Event(), threading.Event(), []

    def hold(name: str, pixels: int, until: threading.Event | None = None):
        with budget.reserve(pixels):
            log.append((name, budget.in_use))
            if until is not None:
                first_in.set()
                until.wait(10)

    first = threading.Thread(target=hold, args=("first", 60, release_first))
    first.start()
    assert first_in.wait(10)
    second = threading.Thread(target=hold, args=("second", 60))  # 60 + 60 > 100: waits for the first
    huge = threading.Thread(target=hold, args=("huge", 10_000))  # larger than the budget: runs alone
    second.start()
    huge.start()
    time.sleep(0.3)
    assert [name for name, _ in log] == ["first"]
    release_first.set()
    for t in (first, second, huge):
        t.join(10)
    assert sorted(name for name, _ in log) == ["first", "huge", "second"]
    assert all(in_use <= 100 for _, in_use in log) and budget.in_use == 0
    # PNG Info (decoded when asked, outside the queue) and jobs (their inputs) decode within the engine's budget
    seen = record_reservations(engine.decode_budget, monkeypatch)
    assert not routes.decode_image(b64(small_png((64, 32))), None, engine).tile
    lazy = routes.decode_image(b64(small_png((48, 16))), "image", engine, lazy=True)
    assert lazy.tile and seen == [64 * 32]
    engine.extras([lazy], postprocessing.ExtrasParams(), save=False)
    assert seen == [64 * 32, 48 * 16] and not lazy.tile


def record_reservations(budget: images.DecodeBudget, monkeypatch) -> list[int]:
    """The pixels each decode reserves from `budget` (the engine's own, shared by its services), in order."""
    seen: list[int] = []
    reserve = budget.reserve

    @contextlib.contextmanager
    def recording(pixels: int):
        seen.append(pixels)
        with reserve(pixels):
            yield

    monkeypatch.setattr(budget, "reserve", recording)
    return seen


def test_the_png_info_tab_refuses_from_the_header_and_decodes_within_the_budget(engine, tmp_path, monkeypatch):
    from modules.ui import pnginfo

    big, small = tmp_path / "big.png", tmp_path / "small.png"
    big.write_bytes(png_of_zeros(13000, 13000, text="a cat\nSteps: 20, Seed: 1"))
    small.write_bytes(png_of_zeros(64, 48, text="a dog\nSteps: 20, Seed: 2"))
    shown, text = pnginfo.read(str(big), engine)
    assert text == "" and "Cannot read this file as an image" in shown
    assert "the image has 169 megapixels (13000x13000); this server accepts images of up to 100 megapixels" in shown
    seen = record_reservations(engine.decode_budget, monkeypatch)
    assert pnginfo.read(str(small), engine)[1] == "a dog\nSteps: 20, Seed: 2"
    assert seen == [64 * 48]


# --- interrupt inside a U-Net step ----------------------------------------------------------------

def test_an_interrupt_lands_between_unet_blocks_and_the_finished_images_are_kept(engine):
    """The job is interrupted in the middle of a U-Net step (after its first block, in the second step of
    the second batch): no further block of the U-Net runs, the first batch's image is kept (and saved), the
    interrupted one is shown from its last prediction and not saved, and the hooks are gone afterwards."""
    engine.load_checkpoint("sd1.safetensors")
    unet = engine.checkpoints.current.unet
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    state = {"calls": 0, "after": None}

    def count_call(_module, _args):
        state["calls"] += 1

    def block_done(module, _args, _out):
        if state["after"] is not None:
            state["after"] += 1
        elif module is unet.down_blocks[0] and state["calls"] == 5:  # batch 2 (3 steps each), step 2
            engine.queue.interrupt()
            state["after"] = 0

    handles = [unet.register_forward_pre_hook(count_call)] + [b.register_forward_hook(block_done) for b in blocks]
    job = dict(prompt="a red circle", width=64, height=64, steps=3, sampler_name="Euler", seed=11)
    try:
        result = engine.txt2img(GenerationParams(**job, n_iter=2))
    finally:
        for h in handles:
            h.remove()
    assert state["after"] == 0 and state["calls"] == 5  # not one more block, not one more step
    assert result.interrupted and result.seeds == [11, 12]
    assert result.paths[0] is not None and result.paths[1] is None  # the interrupted image is shown, not saved
    first = engine.txt2img(GenerationParams(**job, n_iter=1, save_images=False))
    assert result.images[0].tobytes() == first.images[0].tobytes()
    assert all(not m._forward_pre_hooks for m in pipeline.stop_points(unet))


def test_a_stopped_batch_is_decoded_only_for_a_few_seconds_then_shown_as_its_preview(engine, monkeypatch):
    """After an interrupt the interrupted image is decoded (as A1111 does), but the VAE is stopped once that
    has taken PARTIAL_DECODE_SECONDS (a 2048x2048 decode takes minutes on a CPU): the image is then the live
    preview's picture at full size. An interrupt while a finished batch is decoded lets a quick decode end
    (the batch is complete and saved, as in A1111) and stops a slow one the same way."""
    engine.load_checkpoint("sd1.safetensors")
    model = engine.checkpoints.current
    unet, decoder = model.unet, model.vae.decoder
    job = dict(prompt="a red circle", width=64, height=64, steps=3, sampler_name="Euler", seed=21, n_iter=2)
    calls, decoded = [0], [0]

    def run(trigger_module, trigger_call: int):
        calls[0] = decoded[0] = 0

        def count(_module, _args):
            calls[0] += 1

        def trigger(_module, _args, _out):
            if calls[0] == trigger_call:
                engine.queue.interrupt()

        def done(_module, _args, _out):
            decoded[0] += 1

        watched = unet if trigger_module is unet.down_blocks[0] else decoder
        handles = [watched.register_forward_pre_hook(count), trigger_module.register_forward_hook(trigger),
                   decoder.register_forward_hook(done)]
        try:
            return engine.txt2img(GenerationParams(**job))
        finally:
            for h in handles:
                h.remove()

    monkeypatch.setattr(pipeline, "PARTIAL_DECODE_SECONDS", 0.0)
    result = run(unet.down_blocks[0], 5)  # in the second step of the second batch
    assert result.interrupted and len(result.images) == 2 and result.paths[1] is None
    assert decoded[0] == 1 and result.images[1].size == (64, 64)  # only the first batch went through the VAE
    result = run(decoder.up_blocks[0], 1)  # while the first batch's finished image is decoded
    assert result.interrupted and len(result.images) == 1 and result.paths == [None] and decoded[0] == 0
    monkeypatch.setattr(pipeline, "PARTIAL_DECODE_SECONDS", 5.0)
    result = run(decoder.up_blocks[0], 1)
    assert result.interrupted and len(result.images) == 1 and result.paths[0] is not None and decoded[0] == 1
    assert all(not m._forward_pre_hooks for m in pipeline.stop_points(decoder))
    # where a U-Net call took longer than that, the VAE decoder would too: a stopped batch is not decoded at all
    latents = torch.zeros(1, 4, 8, 8)
    assert pipeline.decode_unless_stopped(model, latents, lambda: True, unet_seconds=0.01)[0].size == (64, 64)
    assert pipeline.decode_unless_stopped(model, latents, lambda: True, unet_seconds=6.0) is None
    assert pipeline.decode_unless_stopped(model, latents, lambda: False, unet_seconds=6.0)[0].size == (64, 64)


# --- a live server ---------------------------------------------------------------------------------

def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_dir):
    data = setup_data(tmp_path_factory.mktemp("limits-server"), tiny_dir)
    proc, url = start_server(data, "--api", "--max-upload-size", "2")
    yield url, proc
    stop_server(proc)


@pytest.mark.server
def test_png_info_of_a_13000x13000_png_is_refused_without_decoding_it(server):
    """The issue's case: a 0.5 MB PNG that decodes to 500 MB. Refused from its header (400 with the limit);
    the server's peak memory does not move, for one request or six at once."""
    url, proc = server
    bomb = b64(png_of_zeros(13000, 13000, text="a cat\nSteps: 20, Seed: 1"))
    assert requests.get(url + "/sdapi/v1/options", timeout=30).status_code == 200
    before = peak_rss_mb(proc.pid)
    r = requests.post(url + "/sdapi/v1/png-info", json={"image": bomb}, timeout=120)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("the image has 169 megapixels")  # from its header (Pillow's check here)
    assert r.json()["detail"].endswith("this server accepts images of up to 100 megapixels (--max-input-megapixels)")
    statuses = []
    threads = [threading.Thread(target=lambda: statuses.append(requests.post(
        url + "/sdapi/v1/png-info", json={"image": bomb}, timeout=120).status_code)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [400] * 6
    grown = peak_rss_mb(proc.pid) - before
    print(f"\npeak RSS grew by {grown:.0f} MB")
    assert grown < 100
    for path, body in (("/sdapi/v1/extra-single-image", {"image": bomb, "upscaler_1": "Lanczos"}),
                       ("/sdapi/v1/img2img", {"init_images": [bomb], "width": 64, "height": 64})):
        r = requests.post(url + path, json=body, timeout=120)
        assert r.status_code == 400 and "the image has 169 megapixels" in r.json()["detail"], r.text
    ok = requests.post(url + "/sdapi/v1/png-info", json={"image": b64(png_of_zeros(64, 64, text="a dog"))})
    assert ok.status_code == 200 and ok.json()["info"] == "a dog"


@pytest.mark.server
def test_a_request_over_the_size_limit_gets_a_413_that_says_the_limit(server):
    url, proc = server
    body = json.dumps({"image": "A" * (3 * 1024 * 1024)}).encode()
    r = requests.post(url + "/sdapi/v1/png-info", data=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413
    assert r.json()["detail"] == "The request is larger than this server's limit of 2 MB (--max-upload-size)"
    # without a Content-Length (chunked), as soon as that much has arrived
    r = requests.post(url + "/sdapi/v1/png-info", data=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                      headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "2 MB" in r.json()["detail"]
    # the page's uploads: Gradio is told the limit (its page refuses larger files before sending them)
    assert requests.get(url + "/config", timeout=30).json()["max_file_size"] == 2 * 1024 * 1024
    files = {"files": ("big.png", b"\0" * (3 * 1024 * 1024), "image/png")}
    assert requests.post(url + "/gradio_api/upload", files=files, timeout=60).status_code == 413
    assert proc.poll() is None
    r = requests.post(url + "/sdapi/v1/png-info", json={"image": b64(png_of_zeros(64, 64, text="a fox"))}, timeout=60)
    assert r.status_code == 200 and r.json()["info"] == "a fox"


@pytest.mark.server
def test_api_requests_over_the_limits_get_a_400_that_says_the_limit(server):
    url, _ = server
    for body, needle in (({"width": 2560}, "width 2560 is over this server's limit of 2048 pixels (--max-image-side)"),
                         ({"batch_size": 9, "width": 2048, "height": 2048},
                          "batch_size 9 at 2048x2048 is more pixels in one batch than this server's limit"),
                         ({"enable_hr": True, "hr_scale": 8}, "the hires fix would make 4096x4096 images")):
        r = requests.post(url + "/sdapi/v1/txt2img", json={"width": 512, "height": 512, **body}, timeout=30)
        assert r.status_code == 400 and needle in r.json()["detail"], r.text
    r = requests.post(url + "/sdapi/v1/jobs", json={"type": "img2img", "request": {
        "init_images": [b64(png_of_zeros(13000, 13000))], "width": 64, "height": 64}}, timeout=30)
    assert r.status_code == 400 and "init_images.0: the image has 169 megapixels" in r.json()["detail"], r.text


@pytest.mark.server
def test_a_prompt_over_the_length_limit_gets_a_400_before_its_schedule_is_made(server):
    """The security review's case (smaller, for this server's 2 MB body limit): an alternation and a long prompt
    at 1000 steps made a copy of the prompt per step in the request thread (30 MB: 30 GB). Now a 400 that
    names the field; the server's memory does not move and it keeps serving."""
    url, proc = server
    before = peak_rss_mb(proc.pid)
    for field in ("prompt", "negative_prompt", "hr_prompt"):
        body = {field: "[a|b] " + "x" * 1_500_000, "steps": 1000, "width": 64, "height": 64,
                "enable_hr": field == "hr_prompt"}
        r = requests.post(url + "/sdapi/v1/txt2img", json=body, timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["detail"] == f"{field}: 1500006 characters; at most 65536"
    r = requests.post(url + "/sdapi/v1/jobs", json={"type": "txt2img", "request": {
        "negative_prompt": "x" * 70_000}}, timeout=60)  # the job API too
    assert r.status_code == 400 and "negative_prompt: 70000 characters; at most 65536" in r.text, r.text
    assert peak_rss_mb(proc.pid) - before < 200 and proc.poll() is None
    r = requests.post(url + "/sdapi/v1/txt2img", json={"prompt": "[a|b] " + "x" * 65_530, "steps": 2,
                                                       "width": 64, "height": 64}, timeout=120)
    assert r.status_code == 200, r.text  # at the limit


@pytest.mark.server
def test_xyz_values_over_the_caps_get_a_400_before_they_are_made(server):
    """The security review's case: `1-1000000000000` (a list of a trillion numbers in A1111), counts in [ ] and
    Prompt order's n! orders are counted first, over 1000 values an axis refused."""
    url, proc = server
    for values, needle in (("1-1000000000000", "X/Y/Z plot: X axis (Seed): '1-1000000000000' gives 1000000000000 "
                                               "values; at most 1000 an axis"),
                           ("1-2 [1000000000000]", "'1-2 [1000000000000]' gives 1000000000000 values")):
        r = requests.post(url + "/sdapi/v1/txt2img", json={
            "prompt": "a, b, c, d, e, f, g", "width": 64, "height": 64, "steps": 1, "script_name": "x/y/z plot",
            "script_args": ["Seed", values]}, timeout=60)
        assert r.status_code == 400 and needle in r.json()["detail"], r.text
    r = requests.post(url + "/sdapi/v1/txt2img", json={
        "prompt": "a, b, c, d, e, f, g", "width": 64, "height": 64, "steps": 1, "script_name": "x/y/z plot",
        "script_args": ["Prompt order", "a, b, c, d, e, f, g"]}, timeout=60)
    assert r.status_code == 400 and r.json()["detail"] == (
        "X/Y/Z plot: X axis (Prompt order): 7 items give 5040 orders; at most 1000 values an axis, so at most 6 "
        "items (720 orders)"), r.text
    assert proc.poll() is None


@pytest.mark.server
def test_an_extras_batch_over_the_limits_gets_a_400_before_it_is_decoded(server):
    """The security review's case: extra-batch-images took any number of images and kept every result (up to
    16384x16384) until the batch ended. More than 100 images, or results of more than 1100 megapixels in all,
    are refused from the images' headers; the server's memory does not move."""
    url, proc = server
    tiny = b64(small_png((16, 16)))
    before = peak_rss_mb(proc.pid)
    r = requests.post(url + "/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": tiny, "name": f"{i}.png"} for i in range(101)], "upscaler_1": "Lanczos"}, timeout=60)
    assert r.status_code == 400 and r.json()["detail"] == (
        "Extras: 101 images, over this server's limit of 100 a batch (--max-extras-images)"), r.text
    # counted before any image is read: 101 that are not even images get the same answer
    r = requests.post(url + "/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": "not an image", "name": f"{i}.png"} for i in range(101)]}, timeout=60)
    assert r.status_code == 400 and "101 images" in r.json()["detail"], r.text
    r = requests.post(url + "/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": b64(small_png()), "name": "a.png"}] * 5, "upscaler_1": "Lanczos",
        "upscaling_resize": 256}, timeout=60)  # five 16384x16384 results: 1342 megapixels, 5 GB
    assert r.status_code == 400 and r.json()["detail"] == (
        "Extras: the results would be 1342 megapixels (5 images, the largest 16384x16384), over this server's "
        "limit of 1100 megapixels a batch (--max-extras-megapixels)"), r.text
    assert peak_rss_mb(proc.pid) - before < 200 and proc.poll() is None
    r = requests.post(url + "/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": tiny, "name": f"{i}.png"} for i in range(100)], "upscaler_1": "Lanczos"}, timeout=120)
    assert r.status_code == 200 and len(r.json()["images"]) == 100, r.text
