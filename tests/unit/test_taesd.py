"""TAESD without a checkpoint: the original files' keys mapped onto diffusers' DecoderTiny / EncoderTiny, checked
against the original modules; the folder's files read with the safe loader, the message when one is absent;
the live preview's size, fallback and time budget; the settings and the job context's infotext keys."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch
from PIL import Image

from modules.generation import context, preview
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.models import taesd
from modules.models.checkpoint_file import CheckpointError
from modules.settings import Settings
from tests.support import taesd as taesd_files


@pytest.mark.parametrize("part", ["decoder", "encoder"])
def test_every_original_key_maps_onto_diffusers_and_loads_strictly(part):
    original = taesd_files.build(part, seed=3)
    mapped = taesd.diffusers_keys(original.state_dict(), part)
    module = taesd.build(original.state_dict(), part)  # strict
    assert set(mapped) == set(module.state_dict())
    assert len(mapped) == len(original.state_dict())
    # the decoder's layers are one lower in diffusers (the original's layer 0 is Clamp)
    if part == "decoder":
        assert torch.equal(module.state_dict()["layers.0.weight"], original.state_dict()["1.weight"])
        assert torch.equal(module.state_dict()["layers.17.conv.4.bias"], original.state_dict()["18.conv.4.bias"])
    else:
        assert torch.equal(module.state_dict()["layers.14.weight"], original.state_dict()["14.weight"])
    # diffusers' own AutoencoderTiny layout (decoder.layers.N...) is read the same
    prefixed = {f"{part}.{k}": v for k, v in module.state_dict().items()}
    again = taesd.build(prefixed, part)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), module.state_dict().values()))


@torch.no_grad()
def test_the_port_computes_what_the_original_modules_do():
    dec_orig, enc_orig = taesd_files.build("decoder", 1), taesd_files.build("encoder", 2)
    dec, enc = taesd.build(dec_orig.state_dict(), "decoder"), taesd.build(enc_orig.state_dict(), "encoder")
    z = torch.randn(2, 4, 6, 5, generator=torch.Generator().manual_seed(0)) * 2
    out = taesd.decode(dec, z)
    assert out.shape == (2, 3, 48, 40)  # (N, 3, 8H, 8W)
    # the original gives [0, 1]; diffusers' convention (and ours) is [-1, 1]
    torch.testing.assert_close(out, (dec_orig(z) * 2 - 1).clamp(-1, 1), atol=1e-5, rtol=1e-5)
    assert torch.equal(out, taesd.decode(dec, z))  # deterministic
    pixels = torch.rand(1, 3, 40, 48) * 2 - 1
    latents = taesd.encode(enc, pixels)
    assert latents.shape == (1, 4, 5, 6)
    torch.testing.assert_close(latents, enc_orig((pixels + 1) / 2), atol=1e-5, rtol=1e-5)
    assert taesd.decode(dec, latents).shape == pixels.shape  # the round trip runs


def test_files_are_read_from_the_folder_with_the_safe_loader_and_kept(tmp_path):
    written = taesd_files.write(tmp_path / "VAE-taesd", "sdxl", seed=5)
    models = taesd.TaesdModels(tmp_path / "VAE-taesd")
    assert taesd.file_name("sd", "decoder") == "taesd_decoder.pth"
    assert models.path("sdxl", "encoder") == written["encoder"]
    decoder = models.get("sdxl", "decoder")
    assert models.get("sdxl", "decoder") is decoder  # read once
    expected = taesd_files.build("decoder", 5)(torch.zeros(1, 4, 2, 2)) * 2 - 1
    torch.testing.assert_close(decoder(torch.zeros(1, 4, 2, 2)), expected, atol=1e-5, rtol=1e-5)
    assert models.path("sd", "decoder") is None
    # a pickle that asks for anything but tensors and containers is refused, nothing in it runs
    torch.save({"1.weight": torch.zeros(1), "x": argparse.Namespace()}, tmp_path / "VAE-taesd" / "taesd_decoder.pth")
    with pytest.raises(CheckpointError, match="taesd_decoder.pth"):
        models.get("sd", "decoder")
    torch.save({"nonsense": torch.zeros(1)}, tmp_path / "VAE-taesd" / "taesd_encoder.pth")
    with pytest.raises(CheckpointError, match="not a TAESD encoder"):
        models.get("sd", "encoder")


def test_an_absent_file_is_named_with_its_folder_and_the_preview_says_so_once(tmp_path, caplog):
    models = taesd.TaesdModels(tmp_path / "VAE-taesd")
    with pytest.raises(taesd.TaesdMissing) as e:
        models.get("sd", "decoder")
    assert "taesd_decoder.pth" in str(e.value) and str(tmp_path / "VAE-taesd") in str(e.value)
    assert "never downloaded" in str(e.value)
    assert "taesdxl_encoder.pth" in models.missing_message("sdxl", "encoder")
    with pytest.raises(taesd.TaesdMissing, match="no TAESD"):
        models.get("sd3", "decoder")
    with caplog.at_level(logging.WARNING, logger="modules.models.taesd"):
        assert models.preview_decoder("sd") is None
        assert models.preview_decoder("sd") is None
    notes = [r for r in caplog.records if "taesd_decoder.pth" in r.getMessage()]
    assert len(notes) == 1 and "cheap" in notes[0].getMessage()


@pytest.fixture(scope="module")
def decoder():
    return taesd.build(taesd_files.build("decoder", 0).state_dict(), "decoder")


def test_preview_has_the_image_size_up_to_its_cap_and_lays_a_batch_side_by_side(decoder):
    render = preview.TaesdPreview(lambda: decoder, lambda: 0.0)
    image = render(torch.randn(4, 8, 6))
    assert isinstance(image, Image.Image) and image.size == (48, 64) and image.mode == "RGB"
    assert preview.TaesdPreview(lambda: decoder, lambda: 0.0)(torch.randn(2, 4, 8, 8)).size == (128, 64)
    # a 512x768 image's latent is previewed at a quarter of the area (at most 32 latent pixels a side)
    assert preview.taesd_image(decoder, torch.randn(4, 96, 64)).size == (176, 256)
    # without the file: the cheap preview, at the latent's size
    assert preview.TaesdPreview(lambda: None, lambda: 0.0)(torch.randn(4, 8, 6)).size == (6, 8)


def test_previews_stay_within_their_share_of_the_job_time(decoder):
    now = [1000.0]
    render = preview.TaesdPreview(lambda: decoder, lambda: 990.0, budget=0.02, clock=lambda: now[0])
    latent = torch.randn(4, 8, 8)
    assert render(latent) is not None  # the first one is shown
    cost = render.last_cost
    assert cost > 0
    now[0] = 990.0 + (render.spent + cost) / 0.02 * 0.9  # not yet: the next would go over 2 %
    assert render(latent) is None
    now[0] = 990.0 + (render.spent + cost) / 0.02 * 1.01
    assert render(latent) is not None and render.rendered == 2


def test_settings_and_the_context_write_a1111s_keys_only_when_not_full():
    settings = Settings(show_progress_type="TAESD", sd_vae_decode_method="TAESD")
    assert Settings().sd_vae_decode_method == Settings().sd_vae_encode_method == "Full"
    with pytest.raises(ValueError):
        Settings(sd_vae_encode_method="Approx NN")
    plain = GenerationParams(prompt="x", width=64, height=64)
    assert context.resolve(plain, Settings()).vae_fields() == {}
    ctx = context.resolve(plain, settings.model_copy(update={"sd_vae_encode_method": "TAESD"}))
    assert (ctx.vae_decode_method, ctx.vae_encode_method) == ("TAESD", "TAESD")
    assert ctx.vae_fields() == {"VAE Decoder": "TAESD"}  # txt2img without hires encodes nothing
    hires = plain.model_copy(update={"enable_hr": True, "hr_upscaler": "Lanczos"})
    assert context.resolve(hires, Settings(sd_vae_encode_method="TAESD")).vae_fields() == {"VAE Encoder": "TAESD"}
    latent_hires = plain.model_copy(update={"enable_hr": True, "hr_upscaler": "Latent"})
    assert context.resolve(latent_hires, Settings(sd_vae_encode_method="TAESD")).vae_fields() == {}
    img2img = Img2ImgParams(prompt="x", width=64, height=64, init_images=[Image.new("RGB", (64, 64))])
    assert context.resolve(img2img, Settings(sd_vae_encode_method="TAESD")).vae_fields() == {"VAE Encoder": "TAESD"}


def test_pasted_vae_encoder_and_decoder_keys_become_the_settings():
    from modules import infotext

    parsed = infotext.parse_with_defaults("a cat\nSteps: 20, Seed: 1, VAE Decoder: TAESD, Version: v1.10.1")
    values = infotext.request_values(parsed, infotext.SETTING_FIELDS)
    assert values["sd_vae_decode_method"] == "TAESD" and values["sd_vae_encode_method"] == "Full"


def test_the_page_asks_again_at_the_next_poll_when_a_renderer_declines(monkeypatch):
    from modules.jobs import Job
    from modules.ui import progress

    monkeypatch.setattr(progress, "POLL_SECONDS", 0.01)
    job = Job("1", "txt2img", lambda j: None)
    job.state.started, job.state.job_count, job.state.sampling_steps = 1.0, 1, 10
    job.state.sampling_step, job.state.current_latent = 3, torch.zeros(1, 4, 8, 8)
    answers = [None, Image.new("RGB", (8, 8))]  # over budget once, then a picture

    def render(latent):
        return answers.pop(0) if answers else None

    shown = []
    for snap in progress.follow(job, lambda: 0, True, 10, 0.0, render):
        shown.append(snap.preview)
        if len(shown) == 3:
            job.done.set()
    assert shown[0] is None and isinstance(shown[1], Image.Image)  # the same step, asked again
    assert shown[2] is None  # then not before 10 more steps
