"""Samplers and schedules against k-diffusion, the code AUTOMATIC1111 runs, on the same tiny U-Net,
the same sigmas and the same noise: A1111's image for a seed is reproduced to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modules.generation import pipeline, rng, samplers, schedules
from tests import kdiffusion_ref as K

ks, ke = K.load()
SHAPE = (4, 8, 8)


@pytest.fixture(scope="module", params=["sd1.safetensors", "sd2-v.safetensors"])
def model(request, tiny_dir):
    from tests.conftest import make_manager
    import shutil
    import tempfile
    from pathlib import Path

    data = Path(tempfile.mkdtemp())
    shutil.copytree(tiny_dir, data / "models" / "Stable-diffusion")
    manager = make_manager(data)
    return manager.get(manager.checkpoints.find(request.param))


def reference(model, name: str, steps: int, seeds: list[int], cond, uncond, cfg: float) -> torch.Tensor:
    """What A1111 computes: CompVis(V)Denoiser over the model's alphas, x = noise * sigma_0, its CFG
    denoiser, and per-image generators for ancestral noise."""
    inner = K.CompVisModel(model.unet, model.alphas_cumprod)
    wrap = (ke.CompVisVDenoiser if model.prediction_type == "v_prediction" else ke.CompVisDenoiser)(inner)
    choice = samplers.resolve(name)
    if choice.effective_schedule == "karras":
        sigmas = ks.get_sigmas_karras(steps, wrap.sigmas[0].item(), wrap.sigmas[-1].item())
    else:
        sigmas = wrap.get_sigmas(steps)
    gens = rng.create_generators(seeds, "CPU", torch.device("cpu"))
    x = rng.initial_noise(gens, SHAPE, torch.device("cpu")) * sigmas[0]
    denoiser = K.CFGDenoiser(wrap, cond, uncond, cfg)
    fn = {"Euler a": ks.sample_euler_ancestral, "Euler": ks.sample_euler, "DPM++ 2M": ks.sample_dpmpp_2m}[name]
    extra = {"noise_sampler": K.PerImageNoise(gens, SHAPE, "cpu")} if name == "Euler a" else {}
    with torch.no_grad():
        return fn(denoiser, x, sigmas, disable=True, **extra)


def ours(model, name, steps, seeds, cond, uncond, cfg):
    gens = rng.create_generators(seeds, "CPU", torch.device("cpu"))
    noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    denoiser = pipeline.Denoiser(model, cond, uncond, cfg)
    with torch.no_grad():
        return pipeline.sample(model, denoiser, noise, samplers.resolve(name), steps, gens, pipeline.Hooks())


@pytest.mark.parametrize("name", ["Euler a", "Euler", "DPM++ 2M"])
@pytest.mark.parametrize("steps", [20, 7])
def test_matches_k_diffusion(model, name, steps):
    cond = model.text.encode("a red circle")[None]
    uncond = model.text.encode("")[None]
    expected = reference(model, name, steps, [11, 12], cond, uncond, 7.0)
    got = ours(model, name, steps, [11, 12], cond, uncond, 7.0)
    scale = expected.abs().max().item()
    assert (got - expected).abs().max().item() <= 1e-5 * scale, "differs beyond float rounding"


def a1111_ddim(model, steps, seeds, cond, uncond, cfg):
    """A1111's DDIM (eta 0) written out from its formulas: timesteps 1, 1+s, ..., x starts as unit noise."""
    alphas = model.alphas_cumprod.double()
    timesteps = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    gens = rng.create_generators(seeds, "CPU", torch.device("cpu"))
    x = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    den = pipeline.Denoiser(model, cond, uncond, cfg)
    for index in range(len(timesteps) - 1, -1, -1):
        t = timesteps[index]
        a_t = alphas[t].float()
        a_prev = (alphas[timesteps[index - 1]] if index > 0 else alphas[0]).float()
        out = den(x, t.float())
        if model.prediction_type == "v_prediction":
            e_t = a_t.sqrt() * out + (1 - a_t).sqrt() * x
            pred_x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
        else:
            e_t = out
            pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * e_t
    return x


def test_ddim_matches_a1111_formula(model):
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    with torch.no_grad():
        expected = a1111_ddim(model, 10, [3], cond, uncond, 5.0)
        got = ours(model, "DDIM", 10, [3], cond, uncond, 5.0)
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()


def test_schedules_equal_k_diffusion():
    alphas = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2, 0).float()
    wrap = ke.CompVisDenoiser(K.CompVisModel(torch.nn.Identity(), alphas))
    sig = schedules.model_sigmas(alphas)
    for n in (1, 4, 7, 20, 33, 150):
        assert torch.equal(schedules.uniform(n, sig), wrap.get_sigmas(n))
        assert torch.equal(schedules.karras(n, sig[0].item(), sig[-1].item()),
                           ks.get_sigmas_karras(n, wrap.sigmas[0].item(), wrap.sigmas[-1].item()))
        s = schedules.uniform(n, sig)[:-1]
        assert torch.equal(schedules.sigma_to_t(s, sig.log()), wrap.sigma_to_t(s))
    assert abs(sig[-1].item() - 14.6146) < 1e-3 and abs(sig[0].item() - 0.0292) < 1e-3


def test_names_aliases_and_legacy_combined_names():
    assert samplers.resolve("k_euler_a").spec.name == "Euler a"
    legacy = samplers.resolve("DPM++ 2M Karras")
    assert legacy.spec.name == "DPM++ 2M" and legacy.schedule == "automatic" and legacy.schedule_label == "Karras"
    euler_karras = samplers.resolve("Euler Karras")
    assert euler_karras.effective_schedule == "karras" and euler_karras.schedule_label == "Karras"
    assert samplers.resolve("Euler a").schedule_label == "Automatic"
    assert samplers.resolve("euler", "Karras").effective_schedule == "karras"
    with pytest.raises(samplers.UnknownSampler, match="Unknown sampler 'Nope'.*Euler a"):
        samplers.resolve("Nope")
    with pytest.raises(samplers.UnknownSampler, match="schedule type"):
        samplers.resolve("Euler", "Sideways")


def test_cpu_noise_is_a_cpu_generator_per_seed():
    noise = rng.initial_noise(rng.create_generators([42, 43], "CPU", torch.device("cpu")), SHAPE, torch.device("cpu"))
    for i, seed in enumerate((42, 43)):
        assert torch.equal(noise[i], torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(seed)))


def test_random_seed_is_in_a1111_range():
    seeds = {rng.fix_seed(-1) for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= s < rng.MAX_SEED for s in seeds)
    assert rng.fix_seed(123) == 123 and rng.fix_seed("") >= 0
