"""The img2img settings img2img_fix_steps (steps actually run, the schedule they come from) and
inpainting_mask_weight (the masked-image conditioning of 9-channel inpainting models)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from modules.generation import context, pipeline, samplers
from tests.support.img2img import data, engine, init_image, left_half_mask, manager, params  # noqa: F401 (fixtures)


def test_img2img_schedule_rule():
    assert samplers.img2img_schedule(10, 0.5) == (10, 5)  # A1111's default: t_enc + 1 = 6 steps run
    assert samplers.img2img_schedule(10, 0.5, fixed=True) == (20, 9)  # 10 run, the last of 20
    assert samplers.img2img_schedule(20, 0.75, fixed=True) == (26, 19)
    assert samplers.img2img_schedule(8, 1.0, fixed=True) == (8, 7)  # min(strength, 0.999)
    assert samplers.img2img_schedule(8, 0.0, fixed=True) == (1, 0)


def steps_seen(model, p, monkeypatch, **kw) -> tuple[list[tuple[int, int]], list[int]]:
    """(step, of) as Hooks.on_step reports them for one img2img batch, and the length of the schedule the
    sampler was prepared with (samplers.prepare, watched and run as it is)."""
    calls, schedules = [], []
    hooks = pipeline.Hooks(on_step=lambda i, n, latent: calls.append((i, n)))
    ctx = dataclasses.replace(context.resolve(p), **kw)
    inputs = pipeline.prepare_img2img(model, ctx)
    real = samplers.prepare

    def watched(choice, steps, *args, **kwargs):
        schedules.append(steps)
        return real(choice, steps, *args, **kwargs)

    monkeypatch.setattr(samplers, "prepare", watched)
    list(pipeline.img2img(model, ctx, hooks=hooks, inputs=inputs))
    monkeypatch.undo()
    return calls, schedules


# k-diffusion samplers run t_enc + 1 steps; A1111's UniPC runs one per timestep of timesteps[:t_enc], t_enc
@pytest.mark.parametrize("sampler,plain,fixed", [("Euler a", 6, 10), ("DPM++ 2M", 6, 10), ("UniPC", 5, 9)])
def test_fix_steps_runs_a1111s_step_counts(manager, sampler, plain, fixed, monkeypatch):
    model = manager.get(manager.checkpoints.find("sd1.safetensors"))
    p = params(steps=10, denoising_strength=0.5, sampler_name=sampler)
    calls, schedules = steps_seen(model, p, monkeypatch)
    assert schedules == [10] and len(calls) == plain and calls[-1] == (plain, plain)  # t_enc = int(0.5 * 10)
    calls, schedules = steps_seen(model, p, monkeypatch, fix_steps=True)
    # the end of a 20-step schedule, with t_enc = 10 - 1 (A1111's setup_img2img_steps)
    assert schedules == [20] and len(calls) == fixed and calls[-1] == (fixed, fixed)


def test_engine_reads_img2img_fix_steps(engine):
    job = engine.submit_img2img(params(steps=10, denoising_strength=0.3))
    job.wait()
    assert job.state.sampling_steps == 4
    job = engine.submit_img2img(params(steps=10, denoising_strength=0.3,
                                       override_settings={"img2img_fix_steps": True}))
    result = job.wait()
    assert job.state.sampling_steps == 10 and "Steps: 10," in result.infotexts[0]


def test_inpainting_mask_weight_blends_the_masked_image_conditioning(engine):
    engine.load_checkpoint("sd1-inpainting")
    model = engine.checkpoints.current
    assert model.config.in_channels == 9
    p = params(mask=left_half_mask(), mask_blur=0, inpainting_fill=1)  # "original": the init image is the source
    pixels = pipeline.image_to_tensor(init_image())[None]
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32] = 1.0
    half = pipeline.prepare_img2img(model, dataclasses.replace(context.resolve(p), mask_weight=0.5)).plan.image_cond
    assert half.shape == (1, 5, 8, 8)
    # the mask channel is the mask itself; the image is lerp(original, masked, 0.5)
    assert torch.equal(half[0, 0, :, :4], torch.ones(8, 4)) and torch.equal(half[0, 0, :, 4:], torch.zeros(8, 4))
    blended = pixels * 0.5 + (pixels * (1 - mask)) * 0.5
    assert torch.allclose(half[:, 1:], pipeline.encode(model, blended), atol=1e-5)
    assert not torch.allclose(half[:, 1:], pipeline.encode(model, pixels * (1 - mask)), atol=1e-3)
    # the default, 1: the masked area is grey
    full = pipeline.prepare_img2img(model, context.resolve(p)).plan.image_cond
    assert torch.allclose(full[:, 1:], pipeline.encode(model, pixels * (1 - mask)), atol=1e-5)
    # 0: the original image
    none = pipeline.prepare_img2img(model, dataclasses.replace(context.resolve(p), mask_weight=0.0)).plan.image_cond
    assert torch.allclose(none[:, 1:], pipeline.encode(model, pixels), atol=1e-5)

    inpaint = {"sd_model_checkpoint": "sd1-inpainting"}
    weighted = engine.img2img(params(mask=left_half_mask(), override_settings={**inpaint,
                                                                              "inpainting_mask_weight": 0.5}))
    default = engine.img2img(params(mask=left_half_mask(), override_settings=inpaint))
    assert "Conditional mask weight: 0.5" in weighted.infotexts[0]
    assert "Conditional mask weight: 1," in default.infotexts[0]
    assert weighted.images[0].tobytes() != default.images[0].tobytes()
    plain = engine.img2img(params(override_settings={"inpainting_mask_weight": 0.5, "sd_model_checkpoint": "sd1"}))
    assert "Conditional mask weight" not in plain.infotexts[0]
