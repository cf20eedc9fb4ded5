"""Hires. fix: A1111's second pass (upscale, then img2img over the end of a longer schedule)."""

from __future__ import annotations

import pytest
import torch

from modules import infotext
from modules.engine import BadRequest
from modules.generation import context, hires
from modules.generation.params import GenerationParams
from tests.support.generation import engine, params  # noqa: F401  (fixture)


def test_schedule_and_size_follow_a1111():
    p = GenerationParams(steps=20, denoising_strength=0.7, enable_hr=True, width=64, height=96)
    assert hires.schedule(p) == (28, 19)  # int(20 / 0.7) steps, the last 20 run
    assert hires.schedule(p.model_copy(update={"hr_second_pass_steps": 10, "denoising_strength": 0.5})) == (20, 9)
    assert hires.target_size(p) == (128, 192)
    assert hires.target_size(p.model_copy(update={"hr_resize_x": 100})) == (96, 144)
    # both sides given: upscaled to cover 80x72 (80x120 here), then the latent centre-cropped to it
    both = p.model_copy(update={"hr_resize_x": 80, "hr_resize_y": 72})
    assert hires.upscale_plan(both) == (80, 120, 0, 6) and hires.target_size(both) == (80, 72)
    latent = torch.arange(15 * 10).reshape(1, 1, 15, 10)
    assert torch.equal(hires.crop(latent, 0, 6), latent[:, :, 3:12])


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest-exact)", "Lanczos"])
def test_hires_pass_doubles_the_size_and_is_deterministic(engine, upscaler):  # noqa: F811
    kw = dict(enable_hr=True, hr_upscaler=upscaler, denoising_strength=0.6, hr_second_pass_steps=3, steps=4)
    a = engine.txt2img(params(**kw))
    b = engine.txt2img(params(**kw))
    assert a.images[0].size == (128, 128) and a.images[0].tobytes() == b.images[0].tobytes()
    text = a.infotexts[0]
    assert "Size: 64x64" in text and "Denoising strength: 0.6" in text
    assert f"Hires upscale: 2, Hires steps: 3, Hires upscaler: {infotext.quote(upscaler)}" in text
    plain = engine.txt2img(params(steps=4))
    assert plain.images[0].size == (64, 64) and "Hires" not in plain.infotexts[0]


def test_hires_sampler_prompt_and_bad_upscaler(engine):  # noqa: F811
    r = engine.txt2img(params(enable_hr=True, hr_sampler_name="DPM++ 2M", hr_prompt="a green square", steps=3,
                              hr_resize_x=96, hr_resize_y=80, denoising_strength=0.5))
    assert r.images[0].size == (96, 80)
    # A1111's order (its txt2img init): sampler and prompts before the size and the upscaler
    assert "Hires sampler: DPM++ 2M, Hires prompt: a green square, Hires resize: 96x80, Hires upscaler: Latent" \
           in r.infotexts[0], r.infotexts[0]
    with pytest.raises(BadRequest, match="Unknown hires upscaler 'ESRGAN_4x'"):
        engine.submit_txt2img(params(enable_hr=True, hr_upscaler="ESRGAN_4x"))


def test_pasted_a1111_infotext_turns_hires_on(engine):  # noqa: F811
    from modules.api import routes, schemas

    text = ("a red circle\nSteps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 5, Size: 64x64, "
            "Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Latent (bicubic)")
    req = schemas.Txt2ImgRequest(infotext=text)
    routes.apply_infotext(req, engine)
    p = routes.to_params(req)
    assert p.enable_hr and p.hr_scale == 1.5 and p.denoising_strength == 0.5 and p.hr_upscaler == "Latent (bicubic)"
    result = engine.txt2img(p.model_copy(update={"save_images": False}))
    assert result.images[0].size == (96, 96)
    assert "Denoising strength: 0.5, Hires upscale: 1.5, Hires steps: 2" in result.infotexts[0]  # RNG: GPU implied


def test_progress_counts_both_passes(engine):  # noqa: F811
    from modules.generation import pipeline
    from tests.support.generation import params as make

    seen = []
    model = engine.load_checkpoint()
    hooks = pipeline.Hooks(on_step=lambda i, n, x: seen.append((i, n)))
    p = make(enable_hr=True, steps=3, hr_second_pass_steps=2, denoising_strength=0.5, seed=1)
    list(pipeline.txt2img(model, context.resolve(p), hooks=hooks))
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


# ---------------------------------------------------------------- A1111's firstpass_image

def test_a_given_first_pass_goes_through_a1111s_float_round_trip():
    """A1111 keeps a firstpass_image as a -1..1 float tensor and truncates it back to 8 bits for a pixel
    upscaler: ((v / 255 * 2 - 1) + 1) / 2 * 255 falls just short of v for 1..63."""
    from PIL import Image
    import numpy as np

    ramp = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
    back = np.asarray(hires.as_first_pass(Image.fromarray(ramp)))[0, :, 0].astype(int)
    assert (back[1:64] == np.arange(1, 64) - 1).all()
    assert back[0] == 0 and (back[64:] == np.arange(64, 256)).all()


def _img2img_like_the_hires_pass(engine, init, **kw):  # noqa: F811
    """The hires pass is A1111's img2img at the target size: its sample_img2img given the hires steps, which
    runs them all on a longer schedule (as img2img_fix_steps does)."""
    from modules.generation.params import Img2ImgParams

    base = dict(prompt="a red circle on a blue background", negative_prompt="green", sampler_name="Euler a",
                seed=100, width=128, height=128, steps=3, denoising_strength=0.6, save_images=False,
                override_settings={"img2img_fix_steps": True})
    return engine.img2img(Img2ImgParams(init_images=[init], **{**base, **kw})).images[0]


@pytest.mark.parametrize("upscaler", ["Lanczos", "Latent"])
def test_firstpass_image_runs_only_the_hires_pass(engine, upscaler):  # noqa: F811
    """From a given picture: no first pass, the second pass as from a first pass of its own. A pixel upscaler
    resizes the picture (after A1111's round trip), a latent one interpolates its encoding, as img2img's
    "Just resize" and "latent upscale" do, so the results are those of img2img."""
    from modules import upscaling

    first = engine.txt2img(params(steps=4, seed=5)).images[0]
    kw = dict(enable_hr=True, hr_upscaler=upscaler, denoising_strength=0.6, hr_second_pass_steps=3, steps=4)
    result = engine.txt2img(params(**kw, firstpass_image=first))
    assert result.images[0].size == (128, 128)
    assert f"Hires upscaler: {upscaler}" in result.infotexts[0] and "Seed: 100" in result.infotexts[0]
    if upscaler == "Lanczos":
        init = upscaling.resize(hires.as_first_pass(first), 128, 128, lambda scale: upscaling.plain_pass("Lanczos",
                                                                                                         scale))
        expected = _img2img_like_the_hires_pass(engine, init)
    else:
        expected = _img2img_like_the_hires_pass(engine, first, resize_mode=3)
    assert result.images[0].tobytes() == expected.tobytes()
    own = engine.txt2img(params(**kw))  # with its own first pass it is another picture
    assert own.images[0].tobytes() != result.images[0].tobytes()


def test_firstpass_image_progress_counts_the_hires_steps_only(engine):  # noqa: F811
    from PIL import Image

    from modules.generation import pipeline

    seen = []
    model = engine.load_checkpoint()
    hooks = pipeline.Hooks(on_step=lambda i, n, x: seen.append((i, n)))
    p = params(enable_hr=True, steps=3, hr_second_pass_steps=2, denoising_strength=0.5, seed=1, batch_size=2,
               firstpass_image=Image.new("RGB", (64, 64), (30, 60, 200)))
    ctx = context.resolve(p)
    assert ctx.steps_run == 2
    batches = list(pipeline.txt2img(model, ctx, hooks=hooks))
    assert seen == [(1, 2), (2, 2)] and len(batches[0].images) == 2


def test_firstpass_image_larger_than_the_target_is_refused(engine):  # noqa: F811
    from PIL import Image

    with pytest.raises(BadRequest, match="firstpass_image is 256x256, larger than the 128x128"):
        engine.txt2img(params(enable_hr=True, steps=2, firstpass_image=Image.new("RGB", (256, 256))))


def test_extra_noise_applies_to_the_hires_pass_and_is_written(engine):  # noqa: F811
    kw = dict(enable_hr=True, denoising_strength=0.6, hr_second_pass_steps=2, steps=3)
    plain = engine.txt2img(params(**kw))
    noisy = engine.txt2img(params(**kw, override_settings={"img2img_extra_noise": 0.2}))
    assert noisy.images[0].tobytes() != plain.images[0].tobytes()
    assert "Extra noise: 0.2" in noisy.infotexts[0] and "Extra noise" not in plain.infotexts[0]
    first_pass_only = engine.txt2img(params(steps=3, override_settings={"img2img_extra_noise": 0.2}))
    assert "Extra noise" not in first_pass_only.infotexts[0]  # txt2img's own pass starts from noise alone


def test_firstpass_image_too_small_or_transparent(engine):  # noqa: F811
    from PIL import Image

    with pytest.raises(BadRequest, match="firstpass_image is 4x64; it needs at least 8 pixels a side"):
        engine.txt2img(params(enable_hr=True, steps=2, firstpass_image=Image.new("RGB", (4, 64))))
    kw = dict(enable_hr=True, steps=2, hr_second_pass_steps=2, denoising_strength=0.5)
    clear = Image.new("RGBA", (64, 64), (255, 0, 0, 0))  # transparent: flattened on img2img_background_color
    flat = engine.txt2img(params(**kw, firstpass_image=clear)).images[0]
    white = engine.txt2img(params(**kw, firstpass_image=Image.new("RGB", (64, 64), (255, 255, 255)))).images[0]
    assert flat.tobytes() == white.tobytes()


# ---------------------------------------------------------------- A1111's Hires checkpoint (hr_checkpoint_name)

def test_hires_checkpoint_runs_the_second_pass_on_another_model(engine):  # noqa: F811
    """With an image upscaler A1111 loads the Hires checkpoint, then encodes the upscaled first pass with it and
    samples: the same as img2img on that checkpoint (from a given first pass, so that the first is known)."""
    from modules import upscaling

    first = engine.txt2img(params(steps=4, seed=5)).images[0]
    kw = dict(enable_hr=True, hr_upscaler="Lanczos", denoising_strength=0.6, hr_second_pass_steps=3, steps=4)
    result = engine.txt2img(params(**kw, firstpass_image=first, hr_checkpoint_name="sd2-v"))
    init = upscaling.resize(hires.as_first_pass(first), 128, 128,
                            lambda scale: upscaling.plain_pass("Lanczos", scale))
    expected = _img2img_like_the_hires_pass(engine, init, override_settings={"img2img_fix_steps": True,
                                                                             "sd_model_checkpoint": "sd2-v"})
    assert result.images[0].tobytes() == expected.tobytes()
    text = result.infotexts[0]
    sd2 = engine.checkpoints.find("sd2-v.safetensors")
    assert "Model: sd1," in text and f"Hires checkpoint: sd2-v [{sd2.shorthash}], Hires upscale: 2" in text, text


def test_hires_checkpoint_each_batch_starts_on_the_jobs_model(engine):  # noqa: F811
    kw = dict(enable_hr=True, denoising_strength=0.6, hr_second_pass_steps=2, steps=3, n_iter=2)
    plain = engine.txt2img(params(**kw))
    other = engine.txt2img(params(**kw, hr_checkpoint_name="sd2-v"))
    assert [im.size for im in other.images] == [(128, 128)] * 2
    assert all(a.tobytes() != b.tobytes() for a, b in zip(plain.images, other.images))
    again = engine.txt2img(params(**kw))  # the next job runs on the job's model, as before
    assert [im.tobytes() for im in again.images] == [im.tobytes() for im in plain.images]
    same = engine.txt2img(params(**kw, hr_checkpoint_name="sd1"))  # its own: written, nothing reloaded
    assert [im.tobytes() for im in same.images] == [im.tobytes() for im in plain.images]
    assert "Hires checkpoint: sd1 [" in same.infotexts[0]
    with pytest.raises(BadRequest, match="hr_checkpoint_name: checkpoint 'nowhere' not found"):
        engine.txt2img(params(**kw, hr_checkpoint_name="nowhere"))
    assert "Hires checkpoint" not in engine.txt2img(params(steps=2, hr_checkpoint_name="sd2-v")).infotexts[0]


def test_hires_checkpoint_pastes_as_the_request_field(engine):  # noqa: F811
    sd2 = engine.checkpoints.find("sd2-v.safetensors")
    engine.checkpoints.ensure_hash(sd2)
    text = (f"a cat\nSteps: 4, Seed: 3, Size: 64x64, Denoising strength: 0.5, Hires checkpoint: sd2-v "
            f"[{sd2.shorthash}], Hires upscale: 2, Hires upscaler: Latent")
    assert engine.paste.read(text, txt2img=True).values["hr_checkpoint_name"] == sd2.title
    unknown = engine.paste.read(text.replace("sd2-v [", "gone ["), txt2img=True)
    assert "hr_checkpoint_name" not in unknown.values and unknown.unknown_hires_checkpoint.startswith("gone [")


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_the_first_pass_is_saved_before_the_hires_pass(engine, upscaler):  # noqa: F811
    """A1111's save_images_before_highres_fix: each image's first pass saved as NNNNN-SEED-before-highres-fix.png
    before the batch's images (decoded for a latent upscaler, as given to an image upscaler), with its infotext;
    the same picture as the job without Hires. fix."""
    from pathlib import Path

    from PIL import Image

    kw = dict(steps=3, batch_size=2, save_images=True, seed=11)
    on = {"save_images_before_highres_fix": True}
    result = engine.txt2img(params(**kw, enable_hr=True, hr_upscaler=upscaler, hr_second_pass_steps=2,
                                   override_settings=on))
    plain = engine.txt2img(params(**kw))
    folder = Path(result.paths[0]).parent
    befores = sorted(folder.glob("*-before-highres-fix.png"))[-2:]
    assert [int(p.name[:5]) for p in befores] == [int(Path(p).name[:5]) - 2 for p in result.paths]  # saved first
    for k, before in enumerate(befores):
        assert before.name.endswith(f"-{result.seeds[k]}-before-highres-fix.png")
        with Image.open(before) as im:
            assert im.size == (64, 64) and im.info["parameters"] == result.infotexts[k]
            assert im.convert("RGB").tobytes() == plain.images[k].convert("RGB").tobytes()
    # off (the default), or not saving: nothing more
    count = len(list(folder.glob("*-before-highres-fix.png")))
    engine.txt2img(params(**kw, enable_hr=True, hr_upscaler=upscaler))
    engine.txt2img(params(**{**kw, "save_images": False}, enable_hr=True, hr_upscaler=upscaler,
                          override_settings=on))
    assert len(list(folder.glob("*-before-highres-fix.png"))) == count


# ------------------------------------------ A1111's first hires fix: Width and Height were the final size

def test_the_old_first_pass_is_about_512x512_in_the_final_proportions():
    # processing.old_hires_fix_first_pass_dimensions: scale = sqrt(512*512 / (w*h)), each side ceil(scale*side/64)*64
    assert infotext.old_first_pass_size(1024, 1024) == (512, 512)
    assert infotext.old_first_pass_size(768, 512) == (640, 448)  # scale 0.8165: 9.80 -> 10, 6.53 -> 7 (x64)
    assert infotext.old_first_pass_size(512, 768) == (448, 640)
    assert infotext.old_first_pass_size(640, 640) == (512, 512)  # scale 0.8 exactly


def test_an_old_first_pass_size_infotext_reads_as_size_and_hires_resize():
    # A1111's restore_old_hires_fix_params: Size was the final size, First pass size the first pass (0x0: worked out)
    text = "a cat\nSteps: 4, Sampler: Euler, Seed: 1, Size: {}, First pass size: {}, Denoising strength: 0.6"
    given = infotext.parse_with_defaults(text.format("1024x768", "512x384"))
    assert [int(given[k]) for k in ("Size-1", "Size-2", "Hires resize-1", "Hires resize-2")] == [512, 384, 1024, 768]
    worked_out = infotext.parse_with_defaults(text.format("768x512", "0x0"))
    assert [int(worked_out[k]) for k in ("Size-1", "Size-2", "Hires resize-1", "Hires resize-2")] == [640, 448, 768,
                                                                                                       512]
    # today's infotexts are left as they are; with use_old_hires_fix_width_height, a Hires resize is the Size
    today = "a cat\nSteps: 4, Sampler: Euler, Seed: 1, Size: 512x384, Hires resize: 1024x768, Denoising strength: 0.6"
    assert (infotext.parse_with_defaults(today)["Size-1"], infotext.parse_with_defaults(today)["Size-2"]) == (
        "512", "384")
    old = infotext.parse_with_defaults(today, old_hires_size=True)
    assert (old["Size-1"], old["Size-2"]) == (1024, 768)


def test_use_old_hires_fix_width_height_makes_width_and_height_the_final_size(engine):  # noqa: F811
    from modules.ui import txt2img

    job = dict(enable_hr=True, hr_scale=2.0, denoising_strength=0.6, steps=2, hr_second_pass_steps=1, seed=4,
               save_images=False)
    old = engine.txt2img(params(width=640, height=640, override_settings={"use_old_hires_fix_width_height": True},
                                **job))
    assert old.images[0].size == (640, 640)  # Upscale by 2 is not used
    assert "Size: 512x512" in old.infotexts[0] and "Hires resize: 640x640" in old.infotexts[0]
    same = engine.txt2img(params(width=512, height=512, hr_resize_x=640, hr_resize_y=640, **job))
    assert same.images[0].tobytes() == old.images[0].tobytes()
    # the page's line under the sliders says so too
    assert "from 512x512 to 640x640" in txt2img.hires_size(640, 640, True, 2.0, 0, 0, old_rule=True)
    assert "from 640x640 to 1280x1280" in txt2img.hires_size(640, 640, True, 2.0, 0, 0)


def test_the_apis_firstphase_size_is_the_size_the_job_renders_at():
    from modules.api import routes, schemas

    # A1111's __post_init__: firstphase_width/height replace width/height; the final size then follows hr_scale
    p = routes.to_params(schemas.Txt2ImgRequest(width=1024, height=1024, firstphase_width=64, firstphase_height=96,
                                                enable_hr=True, hr_scale=2))
    assert (p.width, p.height) == (64, 96) and hires.target_size(p) == (128, 192)
    with pytest.raises(BadRequest, match="firstphase_width and firstphase_height: both are needed"):
        routes.to_params(schemas.Txt2ImgRequest(firstphase_width=64))
