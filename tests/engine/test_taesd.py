"""TAESD through the engine with the tiny checkpoints and TAESD files written from a seed: the decode and encode
methods (A1111's `VAE Decoder` / `VAE Encoder` keys, other pixels than the full VAE's), refusal at submission
when the file is absent, a job whose file went away, and the page's TAESD live preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules import infotext
from modules.engine import BadRequest
from modules.generation import preview
from tests.support import taesd as taesd_files
from tests.support.generation import engine, params  # noqa: F401 (fixture)
from tests.support.img2img import params as img2img_params


def taesd_dir(engine):  # noqa: F811
    return engine.paths.taesd_dir


def test_decode_method_taesd_gives_its_key_and_other_pixels(engine):  # noqa: F811
    taesd_files.write(taesd_dir(engine), "sd", seed=11)
    full = engine.txt2img(params(save_images=False))
    fast = engine.txt2img(params(save_images=False, override_settings={"sd_vae_decode_method": "TAESD"}))
    assert "VAE Decoder" not in infotext.parse(full.infotexts[0])
    fields = infotext.parse(fast.infotexts[0])
    assert fields["VAE Decoder"] == "TAESD" and "VAE Encoder" not in fields
    assert fast.info["extra_generation_params"]["VAE Decoder"] == "TAESD"
    assert fast.images[0].size == full.images[0].size == (64, 64)
    a, b = (np.asarray(r.images[0], dtype=int) for r in (full, fast))
    assert np.abs(a - b).mean() > 5  # another decoder: other pixels
    again = engine.txt2img(params(save_images=False, override_settings={"sd_vae_decode_method": "TAESD"}))
    assert np.array_equal(np.asarray(again.images[0]), b)  # deterministic


def test_encode_method_taesd_for_img2img_and_hires(engine):  # noqa: F811
    taesd_files.write(taesd_dir(engine), "sd", seed=11)
    both = {"sd_vae_encode_method": "TAESD", "sd_vae_decode_method": "TAESD"}
    result = engine.img2img(img2img_params(override_settings=both, denoising_strength=0.5))
    fields = infotext.parse(result.infotexts[0])
    assert fields["VAE Encoder"] == "TAESD" and fields["VAE Decoder"] == "TAESD"
    full = engine.img2img(img2img_params(denoising_strength=0.5))
    assert not np.array_equal(np.asarray(full.images[0]), np.asarray(result.images[0]))
    hires = engine.txt2img(params(save_images=False, steps=3, enable_hr=True, hr_scale=1.5, hr_upscaler="Lanczos",
                                  hr_second_pass_steps=2, override_settings={"sd_vae_encode_method": "TAESD"}))
    assert infotext.parse(hires.infotexts[0])["VAE Encoder"] == "TAESD"
    assert hires.images[0].size == (96, 96)


def test_an_absent_file_is_refused_at_submission_naming_it(engine):  # noqa: F811
    with pytest.raises(BadRequest) as e:
        engine.submit_txt2img(params(override_settings={"sd_vae_decode_method": "TAESD"}))
    assert "taesd_decoder.pth" in str(e.value) and str(taesd_dir(engine)) in str(e.value)
    assert "sd_vae_decode_method" in str(e.value)
    taesd_files.write(taesd_dir(engine), "sd", parts=("decoder",))
    with pytest.raises(BadRequest, match="taesd_encoder.pth"):
        engine.submit_img2img(img2img_params(override_settings={"sd_vae_encode_method": "TAESD"}))
    # txt2img without a pixel upscale encodes nothing: no encoder needed
    engine.txt2img(params(save_images=False, steps=2, override_settings={"sd_vae_encode_method": "TAESD"}))


def test_a_file_removed_after_submission_fails_the_job_with_a_bad_request(engine):  # noqa: F811
    written = taesd_files.write(taesd_dir(engine), "sd", parts=("decoder",))
    engine.txt2img(params(save_images=False, steps=1))  # the model is loaded: the next job starts at once
    job = engine.submit_txt2img(params(save_images=False, steps=2,
                                       override_settings={"sd_vae_decode_method": "TAESD"}))
    written["decoder"].unlink()
    with pytest.raises(BadRequest, match="taesd_decoder.pth"):
        job.wait()


def test_the_taesd_preview(engine):  # noqa: F811
    job = engine.submit_txt2img(params(save_images=False, steps=2))
    job.wait()  # the model is loaded; a job's latent, as the sampler reports it, is (batch, 4, h, w)
    latent = torch.randn(1, 4, 8, 8)
    render = engine.previews.renderer(job, "TAESD")
    assert render(latent).size == (8, 8)  # no file yet: the cheap preview
    taesd_files.write(taesd_dir(engine), "sd", parts=("decoder",))
    render = engine.previews.renderer(job, "TAESD")
    assert isinstance(render, preview.TaesdPreview)
    image = render(latent)
    assert image.size == (64, 64) and image.mode == "RGB"
    assert engine.previews.renderer(job, "Approx cheap") is preview.latent_to_image


def test_progress_polls_draw_the_preview_the_setting_asks_for(engine):  # noqa: F811
    """The API's /progress and /internal/progress show what the page shows (PreviewService.for_poll): TAESD when
    the setting says so and the file is there, drawn once per step however often it is polled."""
    import time

    from modules.jobs import Job

    engine.submit_txt2img(params(save_images=False, steps=2)).wait()  # the model is loaded
    job = Job(id="polled", kind="txt2img", fn=lambda _job: None)
    job.state.started, job.state.sampling_step = time.time(), 1
    job.state.current_latent = torch.randn(1, 4, 8, 8)
    assert engine.previews.for_poll(job).size == (8, 8)  # "Approx cheap": the latent's own size
    taesd_files.write(taesd_dir(engine), "sd", parts=("decoder",))
    engine.set_options({"show_progress_type": "TAESD"})
    job2 = Job(id="polled-2", kind="txt2img", fn=lambda _job: None)
    job2.state.started, job2.state.sampling_step = time.time() - 100, 1
    job2.state.current_latent = torch.randn(1, 4, 8, 8)
    first = engine.previews.for_poll(job2)
    assert first.size == (64, 64)
    assert engine.previews.for_poll(job2) is first  # the same step: not drawn again
    job2.state.sampling_step = 2
    assert engine.previews.for_poll(job2) is not first


def test_sdxl_models_use_the_taesdxl_files(tmp_path):
    from tests.support import tiny_models
    from tests.support.engine import make_engine

    tiny_models.build("sdxl", seed=3).write(tmp_path / "models" / "Stable-diffusion" / "sdxl.safetensors")
    e = make_engine(tmp_path, "sdxl.safetensors")
    try:
        taesd_files.write(e.paths.taesd_dir, "sd")  # SD 1.x's files do not fit SDXL
        with pytest.raises(BadRequest, match="taesdxl_decoder.pth"):
            e.submit_txt2img(params(override_settings={"sd_vae_decode_method": "TAESD"}))
        taesd_files.write(e.paths.taesd_dir, "sdxl", seed=4)
        result = e.txt2img(params(save_images=False, steps=2, override_settings={"sd_vae_decode_method": "TAESD"}))
        assert infotext.parse(result.infotexts[0])["VAE Decoder"] == "TAESD" and result.images[0].size == (64, 64)
    finally:
        e.queue.stop()
