"""Model upscalers in jobs: Hires. fix's pixel upscale, img2img's upscaler_for_img2img and Extras, with a tiny
ESRGAN dropped into models/ESRGAN of a running engine (listed without a restart)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from modules.engine import BadRequest
from modules.generation.params import Img2ImgParams
from modules.postprocessing import ExtrasParams
from tests.support.generation import engine, params  # noqa: F401  (fixture)
from tests.support.upscalers import esrgan_state_dict, write

NAME = "tiny-4x"


@pytest.fixture
def upscaler(engine):  # noqa: F811
    """A tiny ESRGAN in the engine's models/ESRGAN for the test, gone afterwards."""
    path = write(dict(engine.paths.upscaler_dirs)["ESRGAN"] / f"{NAME}.pth", esrgan_state_dict(seed=3))
    yield path
    path.unlink()


def loaded_path(engine):  # noqa: F811
    loaded = engine.upscalers.models._loaded
    return loaded[0][0] if loaded else None


def test_hires_fix_upscales_with_the_model_between_the_passes(engine, upscaler):  # noqa: F811
    assert NAME in engine.upscalers.names()
    kw = dict(enable_hr=True, denoising_strength=0.6, hr_second_pass_steps=2, steps=3)
    a = engine.txt2img(params(hr_upscaler=NAME, **kw))
    assert loaded_path(engine) == upscaler  # the model ran
    b = engine.txt2img(params(hr_upscaler=NAME, **kw))
    lanczos = engine.txt2img(params(hr_upscaler="Lanczos", **kw))
    assert a.images[0].size == (128, 128) and a.images[0].tobytes() == b.images[0].tobytes()
    assert a.images[0].tobytes() != lanczos.images[0].tobytes()
    assert f"Hires upscaler: {NAME}" in a.infotexts[0]
    with pytest.raises(BadRequest, match="Unknown hires upscaler 'gone-4x'. Available: Latent, .*, tiny-4x"):
        engine.submit_txt2img(params(hr_upscaler="gone-4x", **kw))


def test_img2img_enlarges_init_images_with_upscaler_for_img2img(engine, upscaler):  # noqa: F811
    init = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8), "RGB")

    def run(**overrides):
        return engine.img2img(Img2ImgParams(**{**params(steps=3).model_dump(), "init_images": [init],
                                                "denoising_strength": 0.5, "override_settings": overrides}))

    plain, model = run(), run(upscaler_for_img2img=NAME)
    assert loaded_path(engine) == upscaler
    assert plain.images[0].size == model.images[0].size == (64, 64)
    assert plain.images[0].tobytes() != model.images[0].tobytes()
    missing = run(upscaler_for_img2img="gone-4x")  # as in A1111, a missing one is Lanczos; here with a warning
    assert missing.images[0].tobytes() == plain.images[0].tobytes()
    assert any("upscaler_for_img2img: there is no upscaler 'gone-4x'" in w for w in missing.warnings)


def test_extras_shows_tiles_as_steps_and_stops_between_them(engine, upscaler):  # noqa: F811
    engine.options.update({"ESRGAN_tile": 16, "ESRGAN_tile_overlap": 4})
    try:
        small = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8), "RGB")
        done = engine.extras([small], ExtrasParams(upscaler_1=NAME, upscaling_resize=4), save=False)
        assert done.images[0].size == (128, 128) and done.infotexts[0].endswith(f"Postprocess upscaler: {NAME}")

        # 441 tiles (21 a side) of about 25 ms: the job is interrupted after its second, seconds before it could end
        image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8), "RGB")
        job = engine.submit_extras([image], ExtrasParams(upscaler_1=NAME, upscaling_resize=4), save=False)
        seen = None
        while seen is None and not job.done.wait(0.005):
            if job.state.sampling_step >= 2:
                seen = (job.state.sampling_step, job.state.sampling_steps)
                engine.queue.interrupt()
        result = job.wait(60)
        assert seen is not None and seen[1] == 441
        assert result.interrupted and result.images == [] and result.paths == []
    finally:
        engine.options.update({"ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8})


def test_extras_names_a_broken_upscaler_file(engine):  # noqa: F811
    broken = dict(engine.paths.upscaler_dirs)["ESRGAN"] / "broken-4x.safetensors"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"not a safetensors file")
    try:
        image = Image.new("RGB", (16, 16), (9, 9, 9))
        with pytest.raises(BadRequest, match="Upscaler 'broken-4x': broken-4x.safetensors"):
            engine.extras([image], ExtrasParams(upscaler_1="broken-4x"), save=False)
        assert engine.extras([image], ExtrasParams(upscaler_1="Lanczos"), save=False).images  # the server goes on
    finally:
        broken.unlink()


def test_a_pass_that_would_go_over_the_side_limit_is_refused(engine, upscaler):  # noqa: F811
    """x7.5 with a 4x model: A1111 runs it twice (4x, then 16x, then Lanczos down); the second pass would make an
    image 33600 pixels wide, so it is refused with the reason instead of taking gigabytes."""
    image = Image.new("RGB", (2100, 8), (50, 60, 70))
    with pytest.raises(BadRequest, match=r"'tiny-4x' \(4x\) would make a 33600x128 image on the way to x7.5"):
        engine.extras([image], ExtrasParams(upscaler_1=NAME, upscaling_resize=7.5), save=False)


def held_queue(engine):  # noqa: F811
    """A job that holds the queue until the returned event is set: what is submitted after it waits."""
    gate = threading.Event()
    engine.queue.submit("test", lambda _job: gate.wait(30))
    return gate


def test_an_interrupt_while_upscaler_for_img2img_runs_ends_the_job_cleanly(engine, upscaler):  # noqa: F811
    """Interrupted before its first tile (asked while the job waited): the img2img job ends as interrupted, with no
    image, instead of failing; the next job runs."""
    init = Image.new("RGB", (24, 24), (10, 200, 30))
    request = Img2ImgParams(**{**params(steps=3).model_dump(), "init_images": [init], "denoising_strength": 0.5,
                               "override_settings": {"upscaler_for_img2img": NAME}})
    gate = held_queue(engine)
    job = engine.submit_img2img(request)
    job.request("interrupt")
    gate.set()
    result = job.wait(60)
    assert result.interrupted and result.images == []
    assert engine.img2img(request).images[0].size == (64, 64)


def test_skip_in_extras_leaves_the_image_out_and_goes_on(engine, upscaler):  # noqa: F811
    images = [Image.new("RGB", (16, 16), (c, c, c)) for c in (10, 90)]
    gate = held_queue(engine)
    job = engine.submit_extras(images, ExtrasParams(upscaler_1=NAME, upscaling_resize=2), save=False)
    job.request("skip")  # taken by the first image's first tile
    gate.set()
    result = job.wait(60)
    assert not result.interrupted and len(result.images) == 1 and result.images[0].getpixel((0, 0)) != (0, 0, 0)
    assert len(result.infotexts) == 1


def test_names_of_built_in_upscalers_are_not_taken_by_files(engine, caplog):  # noqa: F811
    folder = dict(engine.paths.upscaler_dirs)["ESRGAN"]
    for name in ("Lanczos", "Latent (bicubic)", "ok-2x"):
        write(folder / f"{name}.pth", esrgan_state_dict())
    names = engine.upscalers.names()
    assert names == ["None", "Lanczos", "Nearest", "ok-2x"]
    engine.upscalers.names()
    assert caplog.text.count("Lanczos.pth is not listed") == 1  # said once
