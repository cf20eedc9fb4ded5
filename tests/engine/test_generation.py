"""Generation through the engine: seeds, determinism, outputs on disk, infotext, VAE, errors."""

from __future__ import annotations

import datetime
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules import images, infotext
from modules.engine import BadRequest
from modules.generation import pipeline
from modules.models import ldm_export, optimizations
from tests.support import tiny_models
from tests.support.generation import engine, params  # noqa: F401 (engine: fixture)


def png(image: Image.Image) -> bytes:
    return images.png_bytes(image, image.info.get("parameters"))


def test_same_seed_gives_identical_png_and_next_seed_differs(engine):
    a = engine.txt2img(params())
    b = engine.txt2img(params())
    c = engine.txt2img(params(seed=101))
    assert png(a.images[0]) == png(b.images[0])
    assert a.images[0].tobytes() != c.images[0].tobytes()
    # the saved files hold exactly those bytes
    assert open(a.paths[0], "rb").read() == open(b.paths[0], "rb").read() == png(a.images[0])


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_image_k_of_a_batch_equals_seed_plus_k_alone(engine, sampler):
    """Same noise (initial and ancestral) as seed+k alone. The U-Net's float rounding depends on the
    batch size (different matmul blocking), so pixels may differ by a step or two, never more."""
    batch = engine.txt2img(params(sampler_name=sampler, batch_size=3, n_iter=2, seed=500))
    assert batch.seeds == [500, 501, 502, 503, 504, 505]
    others = [engine.txt2img(params(sampler_name=sampler, seed=s)).images[0] for s in (600, 601)]
    for k in (0, 2, 4):
        alone = engine.txt2img(params(sampler_name=sampler, seed=500 + k)).images[0]
        diff = np.abs(np.asarray(batch.images[k], dtype=int) - np.asarray(alone, dtype=int))
        assert diff.max() <= 2 and diff.mean() < 0.05
        unrelated = np.abs(np.asarray(others[0], dtype=int) - np.asarray(others[1], dtype=int))
        assert unrelated.mean() > 20 * max(diff.mean(), 0.01)


def test_outputs_are_named_and_numbered_like_a1111(engine, data_dir):
    today = datetime.date.today().isoformat()
    folder = data_dir / "outputs" / "txt2img-images" / today
    folder.mkdir(parents=True)
    (folder / "00041-7.png").write_bytes(b"an earlier run")
    result = engine.txt2img(params(seed=7, batch_size=2))
    # (a job that runs past midnight saves into the new day's folder, numbered from 0 there)
    day = Path(result.paths[0]).parent.name
    assert day in (today, datetime.date.today().isoformat())
    names = sorted(p.rsplit("/", 1)[1] for p in result.paths)
    assert names == (["00042-7.png", "00043-8.png"] if day == today else ["00000-7.png", "00001-8.png"])
    assert (folder / "00041-7.png").read_bytes() == b"an earlier run"
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*"))
    assert (data_dir / "params.txt").read_text() == result.infotexts[0]


def test_not_saved_when_asked_not_to(engine, data_dir):
    result = engine.txt2img(params(save_images=False))
    assert result.paths == [None]
    assert not (data_dir / "outputs").exists()


def test_infotext_in_png_is_a1111_layout(engine):
    result = engine.txt2img(params(cfg_scale=7.0, steps=6, seed=9))
    text = Image.open(result.paths[0]).info["parameters"]
    info = engine.checkpoints.current.info
    lines = text.split("\n")
    assert lines[0] == "a red circle on a blue background"
    assert lines[1] == "Negative prompt: green"
    assert lines[2] == (f"Steps: 6, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 9, Size: 64x64, "
                        f"Model hash: {info.sha256[:10]}, Model: sd1, RNG: CPU, Version: webui-0.1.0")
    parsed = infotext.parse(text)
    assert parsed["Seed"] == "9" and parsed["Size-1"] == "64" and parsed["Negative prompt"] == "green"
    dpm = engine.txt2img(params(sampler_name="DPM++ 2M", cfg_scale=7.5, save_images=False)).infotexts[0]
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5" in dpm


def test_infotext_settings_leave_out_the_model_vae_and_version(engine, data_dir):
    """A1111's add_model_name_to_info, add_model_hash_to_info, add_vae_name_to_info, add_vae_hash_to_info and
    add_version_to_infotext: off, the key is left out (of the PNG too); the picture is the same."""
    (data_dir / "models" / "VAE").mkdir(parents=True, exist_ok=True)
    vae = ldm_export.vae_to_ldm(tiny_models.build("sd1", seed=5).vae.state_dict(), 4, prefix="")
    ldm_export.save(data_dir / "models" / "VAE" / "tiny_vae.safetensors", vae)
    engine.checkpoints.refresh_vaes()
    kw = dict(steps=3, seed=9, override_settings={"sd_vae": "tiny_vae.safetensors"})
    named = engine.txt2img(params(**kw))
    assert all(f"{key}: " in named.infotexts[0] for key in ("Model hash", "Model", "VAE hash", "VAE", "Version"))
    off = {"add_model_name_to_info": False, "add_model_hash_to_info": False, "add_vae_name_to_info": False,
           "add_vae_hash_to_info": False, "add_version_to_infotext": False}
    quiet = engine.txt2img(params(**{**kw, "override_settings": {**kw["override_settings"], **off}}))
    assert quiet.images[0].tobytes() == named.images[0].tobytes()
    last = quiet.infotexts[0].splitlines()[-1]
    assert last == "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 9, Size: 64x64, RNG: CPU"
    assert Image.open(quiet.paths[0]).info["parameters"] == quiet.infotexts[0]
    for key, name in (("Model hash", "add_model_hash_to_info"), ("Model", "add_model_name_to_info"),
                      ("VAE hash", "add_vae_hash_to_info"), ("VAE", "add_vae_name_to_info")):
        one = engine.txt2img(params(**{**kw, "save_images": False,
                                       "override_settings": {**kw["override_settings"], name: False}}))
        assert f", {key}: " not in one.infotexts[0] and "Version: " in one.infotexts[0]


def test_prompt_and_cfg_change_the_image(engine):
    base = engine.txt2img(params()).images[0]
    assert engine.txt2img(params(prompt="a black square")).images[0].tobytes() != base.tobytes()
    assert engine.txt2img(params(cfg_scale=2)).images[0].tobytes() != base.tobytes()
    assert engine.txt2img(params(cfg_scale=1)).images[0].tobytes() != base.tobytes()


def test_clip_skip_changes_sd1_output_and_is_written(engine):
    base = engine.txt2img(params(save_images=False))
    skipped = engine.txt2img(params(save_images=False, override_settings={"CLIP_stop_at_last_layers": 2}))
    assert skipped.images[0].tobytes() != base.images[0].tobytes()
    assert "Clip skip: 2" in skipped.infotexts[0] and "Clip skip" not in base.infotexts[0]
    assert engine.options.values.CLIP_stop_at_last_layers == 1  # the override was for one request


def test_long_prompts_are_chunked(engine):
    model = engine.load_checkpoint("sd1.safetensors")
    long_prompt = ", ".join(["a red circle on a blue background"] * 12)
    assert model.text.token_count(long_prompt) > 75
    cond = model.text.encode(long_prompt)
    assert cond.shape[0] % 77 == 0 and cond.shape[0] >= 154
    # runs with a one-chunk negative prompt (different chunk counts go as separate U-Net batches)
    assert engine.txt2img(params(prompt=long_prompt, save_images=False)).images


def test_comma_padding_backtrack_moves_the_words_after_the_last_comma_to_the_next_chunk(engine):
    """A1111's comma_padding_backtrack (20): a chunk that fills up within that many tokens of its last comma ends
    after the comma; 0 cuts at 75 wherever. It changes the conditioning, so the picture, and the counter."""
    from modules.generation.conditioning import token_count

    model = engine.load_checkpoint("sd1.safetensors")
    prompt = ", ".join(["a red circle on a blue background"] * 9) + ", green squares and yellow stars " * 2
    assert len(model.text.chunks(prompt)[0].ids) < 75  # the default cut after a comma
    cut = engine.txt2img(params(prompt=prompt, steps=2, save_images=False))
    flat = engine.txt2img(params(prompt=prompt, steps=2, save_images=False,
                                 override_settings={"comma_padding_backtrack": 0}))
    assert cut.images[0].tobytes() != flat.images[0].tobytes()
    assert [len(c.ids) for c in model.text.chunks(prompt)][0] == 75  # the job left its setting on the encoder
    assert token_count(engine.tokenizer, prompt, 20, 0)[0] < token_count(engine.tokenizer, prompt, 20)[0]


def test_override_checkpoint_by_title_name_and_hash_then_restore(engine):
    first = engine.txt2img(params(save_images=False))
    registry = engine.checkpoints
    sd2 = registry.find("sd2-v.safetensors")
    registry.ensure_hash(sd2)
    for query in (sd2.title, "sd2-v", sd2.sha256[:10]):
        result = engine.txt2img(params(save_images=False, override_settings={"sd_model_checkpoint": query}))
        assert result.info["sd_model_name"] == "sd2-v" and "Model: sd2-v" in result.infotexts[0]
    assert engine.options.values.sd_model_checkpoint.startswith("sd1.safetensors")
    again = engine.txt2img(params(save_images=False))
    assert again.info["sd_model_name"] == "sd1" and again.images[0].tobytes() == first.images[0].tobytes()


def test_bad_requests_name_the_problem(engine):
    with pytest.raises(ValueError, match="multiple of 8"):
        params(width=513)
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        params(steps=0)
    with pytest.raises(BadRequest, match="Unknown sampler 'Fancy'"):
        engine.txt2img(params(sampler_name="Fancy"))
    with pytest.raises(BadRequest, match="Checkpoint 'nope' not found"):
        engine.txt2img(params(override_settings={"sd_model_checkpoint": "nope"}))
    with pytest.raises(BadRequest, match="CLIP_stop_at_last_layers"):
        engine.txt2img(params(override_settings={"CLIP_stop_at_last_layers": 99}))
    assert engine.txt2img(params(save_images=False)).images  # still works afterwards


def test_vae_automatic_beside_and_from_models_vae(engine, data_dir):
    folder = data_dir / "models" / "Stable-diffusion"
    base = engine.txt2img(params(save_images=False))
    other_vae = tiny_models.build("sd1", seed=99).vae
    vae_sd = ldm_export.vae_to_ldm(other_vae.state_dict(), 4, prefix="")
    ldm_export.save(folder / "sd1.vae.safetensors", vae_sd)
    (data_dir / "models" / "VAE").mkdir(parents=True, exist_ok=True)
    ldm_export.save(data_dir / "models" / "VAE" / "other.safetensors", vae_sd)
    engine.checkpoints.refresh_vaes()

    beside = engine.txt2img(params(save_images=False))  # Automatic picks sd1.vae.safetensors
    assert beside.images[0].tobytes() != base.images[0].tobytes()
    assert "VAE: sd1.vae.safetensors" in beside.infotexts[0] and "VAE hash: " in beside.infotexts[0]
    picked = engine.txt2img(params(save_images=False, override_settings={"sd_vae": "other.safetensors"}))
    assert picked.images[0].tobytes() == beside.images[0].tobytes()  # same weights, same image
    assert "VAE: other.safetensors" in picked.infotexts[0]
    own = engine.txt2img(params(save_images=False, override_settings={"sd_vae": "None"}))
    assert own.images[0].tobytes() == base.images[0].tobytes() and "VAE" not in own.infotexts[0]
    with pytest.raises(Exception, match="VAE 'missing.pt' not found"):
        engine.txt2img(params(save_images=False, override_settings={"sd_vae": "missing.pt"}))


def test_a_checkpoints_preferred_vae_comes_in_a1111s_order(engine, data_dir, caplog):
    """The card's user metadata "vae" (A1111's Preferred VAE, sd_vae.resolve_vae): with SD VAE Automatic it wins over
    the VAE beside the checkpoint, "None" keeps the checkpoint's own; a VAE chosen in SD VAE wins over it unless
    sd_vae_overrides_per_model_preferences is off; a preferred VAE that is not there is said once and the VAE
    beside the checkpoint is used."""
    import json

    folder = data_dir / "models" / "Stable-diffusion"
    own = engine.txt2img(params(save_images=False)).images[0].tobytes()
    (data_dir / "models" / "VAE").mkdir(parents=True, exist_ok=True)
    for name, seed in (("preferred.safetensors", 97), ("chosen.safetensors", 96)):
        vae_sd = ldm_export.vae_to_ldm(tiny_models.build("sd1", seed=seed).vae.state_dict(), 4, prefix="")
        ldm_export.save(data_dir / "models" / "VAE" / name, vae_sd)
    beside_sd = ldm_export.vae_to_ldm(tiny_models.build("sd1", seed=95).vae.state_dict(), 4, prefix="")
    ldm_export.save(folder / "sd1.vae.safetensors", beside_sd)
    engine.checkpoints.refresh_vaes()

    def job(**settings):
        result = engine.txt2img(params(save_images=False, override_settings=settings))
        vae = infotext.parse(result.infotexts[0]).get("VAE")
        return vae, result.images[0].tobytes()

    def prefer(value):
        (folder / "sd1.json").write_text(json.dumps({"description": "kept", "vae": value}))

    assert job()[0] == "sd1.vae.safetensors"
    prefer("preferred.safetensors")
    assert job()[0] == "preferred.safetensors"
    assert job(sd_vae="chosen.safetensors")[0] == "chosen.safetensors"
    assert job(sd_vae="chosen.safetensors", sd_vae_overrides_per_model_preferences=False)[0] == \
        "preferred.safetensors"
    prefer("None")
    assert job() == (None, own)  # the checkpoint's own, over the one beside it
    assert job(sd_vae="chosen.safetensors")[0] == "chosen.safetensors"
    prefer("gone.safetensors")
    with caplog.at_level("WARNING", logger="modules.models.manager"):
        assert job()[0] == "sd1.vae.safetensors" and job()[0] == "sd1.vae.safetensors"
    assert len([r for r in caplog.records if "gone.safetensors" in r.getMessage()]) == 1
    (folder / "sd1.json").unlink()
    (folder / "sd1.vae.safetensors").unlink()
    assert job() == (None, own)


def test_a_vae_that_says_it_is_for_sdxl_is_warned_about_on_an_sd1_model(engine, data_dir):
    vae_sd = ldm_export.vae_to_ldm(tiny_models.build("sd1", seed=98).vae.state_dict(), 4, prefix="")
    folder = data_dir / "models" / "VAE"
    folder.mkdir(parents=True, exist_ok=True)
    ldm_export.save(folder / "sdxl_vae.safetensors", vae_sd)
    ldm_export.save(folder / "plain.safetensors", vae_sd)
    ldm_export.save(folder / "tagged.safetensors", vae_sd,
                    metadata={"modelspec.architecture": "stable-diffusion-xl-v1-base/vae"})
    engine.checkpoints.refresh_vaes()
    for name in ("sdxl_vae.safetensors", "tagged.safetensors"):
        result = engine.txt2img(params(save_images=False, override_settings={"sd_vae": name}))
        assert result.images  # it still runs: the shapes fit, only the colours are off
        assert any(f"The VAE {name} looks made for SDXL models" in w and "the model is SD 1.x" in w
                   for w in result.warnings), result.warnings
    plain = engine.txt2img(params(save_images=False, override_settings={"sd_vae": "plain.safetensors"}))
    assert not any("looks made for" in w for w in plain.warnings), plain.warnings
    own = engine.txt2img(params(save_images=False, override_settings={"sd_vae": "None"}))
    assert not any("looks made for" in w for w in own.warnings), own.warnings


def test_fp16_vae_nans_are_retried_in_fp32(engine):
    model = engine.load_checkpoint("sd1.safetensors")
    with torch.no_grad():
        model.vae.post_quant_conv.weight.mul_(3e4)  # overflows fp16 (max 65504), fine in fp32
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = pipeline.decode(model, latents)[0]
    model.vae.to(torch.float16)
    got = pipeline.decode(model, latents)[0]
    assert model.vae.dtype == torch.float32
    assert np.abs(np.asarray(got, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1


def test_inpainting_model_txt2img_is_deterministic(engine):
    a = engine.txt2img(params(save_images=False, override_settings={"sd_model_checkpoint": "sd1-inpainting"}))
    b = engine.txt2img(params(save_images=False, override_settings={"sd_model_checkpoint": "sd1-inpainting"}))
    assert a.info["is_using_inpainting_conditioning"] is True
    assert a.images[0].tobytes() == b.images[0].tobytes()


def test_interrupt_keeps_finished_images_and_skip_moves_on(engine):
    engine.load_checkpoint("sd1.safetensors")
    job_params = params(n_iter=4, steps=60, save_images=False)
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("r", engine.txt2img(job_params)))
    t.start()
    while not (engine.queue.current and engine.queue.current.kind == "txt2img"
               and engine.queue.current.state.job_no >= 1 and engine.queue.current.state.sampling_step >= 2):
        time.sleep(0.02)
    engine.queue.skip()  # abandon batch 2
    while engine.queue.current.state.job_no < 2 or engine.queue.current.state.sampling_step < 2:
        time.sleep(0.02)
    engine.queue.interrupt()  # stop during batch 3
    t.join(60)
    result = done["r"]
    # A1111: a skipped or interrupted batch is decoded from its last prediction and shown, but not saved;
    # after a skip the job goes on, after an interrupt it stops
    assert result.interrupted and result.seeds == [100, 101, 102]
    full = engine.txt2img(params(n_iter=4, steps=60, save_images=False))
    assert full.seeds == [100, 101, 102, 103]
    assert result.images[0].tobytes() == full.images[0].tobytes()
    for partial, finished in zip(result.images[1:], full.images[1:3]):
        assert partial.size == finished.size
        assert partial.tobytes() != finished.tobytes()  # stopped early: not the finished image


def test_a_job_asked_to_stop_finishes_the_image_it_is_making_and_makes_no_more(engine, data_dir):
    """A1111's stop_generating (Interrupt with "Don't Interrupt in the middle"): the job stops at its next batch;
    what it made is complete and saved. The stop is asked for while the job waits behind another, so it is there
    before the first batch ends, whatever the machine's speed."""
    engine.load_checkpoint("sd1.safetensors")
    ahead = engine.submit_txt2img(params(steps=20, save_images=False))
    job = engine.submit_txt2img(params(n_iter=3, steps=4))
    job.request("stop")
    ahead.wait(120)
    result = job.wait(120)
    assert (result.stopped, result.interrupted, result.seeds) == (True, False, [100])
    assert result.paths[0] and Path(result.paths[0]).is_file()  # complete, so saved
    assert result.images[0].tobytes() == engine.txt2img(params(steps=4, save_images=False)).images[0].tobytes()


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "Heun", "DDIM"])  # 1st / multistep / 2nd order, timestep
def test_an_interrupted_batch_is_shown_but_not_saved(engine, data_dir, sampler):
    engine.load_checkpoint("sd1.safetensors")
    done = {}
    t = threading.Thread(target=lambda: done.setdefault("r", engine.txt2img(params(n_iter=2, steps=300,
                                                                                    sampler_name=sampler))))
    t.start()
    while not (engine.queue.current and engine.queue.current.kind == "txt2img"
               and engine.queue.current.state.sampling_step >= 3):
        time.sleep(0.02)
    engine.queue.interrupt()
    t.join(60)
    result = done["r"]
    assert result.interrupted and len(result.images) == 1 and result.paths == [None]
    assert result.images[0].size == (64, 64) and "Seed: 100" in result.infotexts[0]
    assert np.asarray(result.images[0]).std() > 1  # a decoded prediction, not a blank
    assert not list((data_dir / "outputs").rglob("*.png"))  # nothing saved, no grid of one image


@pytest.mark.parametrize("attention, processor", [("sub-quadratic", "SlicedAttnProcessor"),
                                                   ("V1", "AttnProcessor"), ("Automatic", "AttnProcessor2_0")])
def test_cross_attention_setting_switches_the_implementation_not_the_image(engine, attention, processor):
    reference = engine.txt2img(params(save_images=False))
    engine.options.update({"cross_attention_optimization": attention})
    result = engine.txt2img(params(save_images=False))
    processors = engine.checkpoints.current.unet.attn_processors
    assert {type(optimizations.inner_processor(p)).__name__ for p in processors.values()} == {processor}
    # the first self-attention layer is wrapped to share the CFG batch's equal halves; the others run as chosen
    wrapped = [name for name, p in processors.items() if isinstance(p, optimizations.SharedRows)]
    assert wrapped == [next(name for name in processors if name.endswith("attn1.processor"))]
    diff = np.abs(np.asarray(result.images[0], dtype=int) - np.asarray(reference.images[0], dtype=int))
    assert diff.max() <= 2  # float rounding of a different summation order, not a different image


def test_batch_cond_uncond_off_runs_two_smaller_unet_batches_for_the_same_image(engine):
    reference = engine.txt2img(params(save_images=False))
    unet = engine.checkpoints.current.unet
    batches = []
    handle = unet.register_forward_pre_hook(lambda _m, args: batches.append(args[0].shape[0]))
    try:
        engine.txt2img(params(save_images=False))
        together = list(batches)
        batches.clear()
        engine.options.update({"batch_cond_uncond": False})
        result = engine.txt2img(params(save_images=False))
    finally:
        handle.remove()
    assert set(together) == {2} and set(batches) == {1} and len(batches) == 2 * len(together)
    diff = np.abs(np.asarray(result.images[0], dtype=int) - np.asarray(reference.images[0], dtype=int))
    assert diff.max() <= 2


def test_a_jobs_live_preview_shows_what_live_preview_content_names(engine):
    """The job's state (what /progress and the page's preview draw) holds the prediction the setting names after
    each step: A1111's default "Prompt", the prompt's own; "Combined" and live previews off, the guided x0 the
    sampler goes on from (with Euler, the last one is the result's latent). Run in this thread, so the state is
    read as the last step left it."""
    from modules.jobs import Job

    def last_preview(**settings) -> torch.Tensor:
        accepted = engine.requests.accept("txt2img", params(sampler_name="Euler", steps=3, save_images=False,
                                                            override_settings=settings))
        job = Job(id="preview", kind="txt2img", fn=lambda _job: None)
        engine.generation.run_accepted(job, accepted)
        return job.state.current_latent

    combined = last_preview(live_preview_content="Combined")
    assert torch.equal(last_preview(live_preview_content="Prompt", live_previews_enable=False), combined)
    prompt, default = last_preview(live_preview_content="Prompt"), last_preview()
    negative = last_preview(live_preview_content="Negative prompt")
    assert torch.equal(prompt, default)
    assert (prompt - combined).abs().max() > 1e-3 and (negative - prompt).abs().max() > 1e-3


def test_show_progress_grid_off_previews_the_batchs_first_image(engine):
    """A1111's show_progress_grid: on (the default), the preview holds every image of the batch; off, the first
    one's, the same prediction."""
    from modules.jobs import Job

    def last_preview(**settings) -> torch.Tensor:
        accepted = engine.requests.accept("txt2img", params(sampler_name="Euler", steps=2, batch_size=2,
                                                            save_images=False, override_settings=settings))
        job = Job(id="preview", kind="txt2img", fn=lambda _job: None)
        engine.generation.run_accepted(job, accepted)
        return job.state.current_latent

    both, first = last_preview(), last_preview(show_progress_grid=False)
    assert both.shape[0] == 2 and first.shape[0] == 1 and torch.equal(first, both[:1])
