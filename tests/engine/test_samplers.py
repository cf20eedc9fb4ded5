"""Samplers and schedules against k-diffusion, the code AUTOMATIC1111 runs, on the same tiny U-Net,
the same sigmas and the same noise: A1111's image for a seed is reproduced to float rounding."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest
import torch

from modules.generation import pipeline, rng, samplers, schedules
from tests.support import kdiffusion_ref as K

ks, ke = K.load()
SHAPE = (4, 8, 8)


@pytest.fixture(scope="module", params=["sd1.safetensors", "sd2-v.safetensors"])
def model(request, tiny_dir, tmp_path_factory):
    from tests.support.engine import make_manager
    import shutil

    data = tmp_path_factory.mktemp("samplers")
    shutil.copytree(tiny_dir, data / "models" / "Stable-diffusion")
    manager = make_manager(data)
    return manager.get(manager.checkpoints.find(request.param))


# Our sampler name -> (k-diffusion function, its extra arguments). A1111 passes eta (default 1) to
# every k-diffusion sampler that takes one, and s_noise/s_churn where they exist.
K_FUNCTIONS = {
    "DPM++ 2M": ("sample_dpmpp_2m", {}),
    "DPM++ SDE": ("sample_dpmpp_sde", {"eta": 1.0}),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", {"eta": 1.0}),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", {"eta": 1.0, "solver_type": "heun"}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", {"eta": 1.0}),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", {"eta": 1.0}),
    "Euler a": ("sample_euler_ancestral", {"eta": 1.0}),
    "Euler": ("sample_euler", {}),
    "LMS": ("sample_lms", {}),
    "Heun": ("sample_heun", {}),
    "DPM2": ("sample_dpm_2", {}),
    "DPM2 a": ("sample_dpm_2_ancestral", {"eta": 1.0}),
    "DPM fast": ("sample_dpm_fast", {"eta": 1.0}),
    "DPM adaptive": ("sample_dpm_adaptive", {"eta": 1.0}),
}


def a1111_sigmas(wrap, choice, steps):
    """A1111's get_sigmas with k-diffusion's own schedule functions."""
    n = steps + 1 if choice.spec.discard_next_to_last_sigma else steps
    lo, hi = wrap.sigmas[0].item(), wrap.sigmas[-1].item()
    schedule = choice.effective_schedule
    if schedule == "karras":
        sigmas = ks.get_sigmas_karras(n, lo, hi)
    elif schedule == "exponential":
        sigmas = ks.get_sigmas_exponential(n, lo, hi)
    else:
        sigmas = wrap.get_sigmas(n)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if choice.spec.discard_next_to_last_sigma else sigmas


def our_denoiser(model, cond, uncond, cfg):
    """Our U-Net + CFG as a k-diffusion model (sigma in, x0 out), for driving k-diffusion's solvers."""
    den = pipeline.Denoiser(model, cond, uncond, cfg)
    log_sigmas = schedules.model_sigmas(model.alphas_cumprod).log()

    def fn(x, sigma):
        s = sigma[0]
        out = den(x * (1 / (s ** 2 + 1) ** 0.5), schedules.sigma_to_t(s, log_sigmas))
        if model.prediction_type == "v_prediction":
            return x * (1 / (s ** 2 + 1)) + out * (-s / (s ** 2 + 1) ** 0.5)
        return x + out * -s
    return fn


def reference(model, name: str, steps: int, seeds: list[int], cond, uncond, cfg: float, our_model=False,
              alphas: torch.Tensor | None = None, sgm: bool = False, quantize: bool = False,
              **overrides) -> torch.Tensor:
    """What A1111 computes: CompVis(V)Denoiser over the model's alphas (or `alphas`, as A1111's
    apply_alpha_schedule_override leaves them), x = noise * sigma_0, its CFG denoiser, per-image generators
    for ancestral noise, Brownian trees seeded per image for SDE noise. `sgm`: A1111's SGM noise multiplier, its
    start x = noise * sqrt(1 + sigma_0^2); `quantize`: A1111's enable_quantization, k-diffusion's quantized
    denoiser."""
    inner = K.CompVisModel(model.unet, model.alphas_cumprod if alphas is None else alphas)
    wrap = (ke.CompVisVDenoiser if model.prediction_type == "v_prediction" else ke.CompVisDenoiser)(
        inner, quantize=quantize)
    choice = samplers.resolve(name)
    sigmas = a1111_sigmas(wrap, choice, steps)
    gens = rng.create_generators(seeds, "CPU", torch.device("cpu"))
    x = rng.initial_noise(gens, SHAPE, torch.device("cpu")) * (torch.sqrt(1.0 + sigmas[0] ** 2.0) if sgm else sigmas[0])
    denoiser = K.CFGDenoiser(wrap, cond, uncond, cfg)
    if our_model:
        denoiser = our_denoiser(model, cond, uncond, cfg)
    fn_name, extra = K_FUNCTIONS[name]
    extra = {**extra, **overrides}
    fn = getattr(ks, fn_name)
    params = inspect.signature(fn).parameters
    if "noise_sampler" in params:
        if choice.spec.brownian_noise:
            extra["noise_sampler"] = ks.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seeds)
        else:
            extra["noise_sampler"] = K.PerImageNoise(gens, SHAPE, "cpu")
    if "sigma_min" in params:  # DPM fast / adaptive take the range, and fast the step count
        extra.update(sigma_min=sigmas[sigmas > 0].min(), sigma_max=sigmas.max())
        if "n" in params:
            extra["n"] = steps
    else:
        extra["sigmas"] = sigmas
    ks.torch = K.TorchWithImageNoise(K.PerImageNoise(gens, SHAPE, "cpu"))
    try:
        with torch.no_grad():
            return fn(denoiser, x, disable=True, **extra)
    finally:
        ks.torch = torch


def ours(model, name, steps, seeds, cond, uncond, cfg, options=None, source="CPU"):
    gens = rng.create_generators(seeds, source, torch.device("cpu"))
    noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    denoiser = pipeline.Denoiser(model, cond, uncond, cfg)
    with torch.no_grad():
        return pipeline.sample(model, denoiser, noise, samplers.resolve(name), steps, gens, pipeline.Hooks(),
                               options=options, seeds=seeds)


def assert_close(got, expected, rel=1e-5):
    scale = expected.abs().max().item()
    diff = (got - expected).abs().max().item()
    assert diff <= rel * scale, f"differs beyond float rounding: {diff} (scale {scale})"


@pytest.mark.parametrize("name", list(K_FUNCTIONS))
@pytest.mark.parametrize("steps", [20, 7])
def test_matches_k_diffusion(model, name, steps):
    cond = model.text.encode("a red circle")[None]
    uncond = model.text.encode("")[None]
    # Two checks. (1) k-diffusion's sampler driven by our model and noise: the solver maths must agree to
    # float rounding. (2) The whole of A1111's computation, whose CFG combines x0 predictions where ours
    # combines eps: mathematically equal, so only rounding differs, which a few samplers amplify (large
    # third-order steps, and DPM adaptive, whose step sizes follow its error estimates and so move a
    # little with any rounding).
    got = ours(model, name, steps, [11, 12], cond, uncond, 7.0)
    solver_only = reference(model, name, steps, [11, 12], cond, uncond, 7.0, our_model=True)
    # our functions follow k-diffusion's operation order (Euler, Euler a and DPM++ 2M too: no second
    # implementation); LMS integrates exactly where k-diffusion uses quadrature
    tolerance = 1e-4 if name == "LMS" else 1e-6
    assert_close(got, solver_only, tolerance)
    if name != "DPM adaptive":
        assert_close(got, reference(model, name, steps, [11, 12], cond, uncond, 7.0), 1e-4)


@pytest.mark.parametrize("name,k_name,k_args", [("euler", "sample_euler", {}),
                                                 ("euler_ancestral", "sample_euler_ancestral", {"eta": 1.0}),
                                                 ("euler_ancestral", "sample_euler_ancestral", {"eta": 0.4}),
                                                 ("dpmpp_2m", "sample_dpmpp_2m", {})])
@pytest.mark.parametrize("sigmas", [[14.6, 0.0], [14.6, 1.2, 0.0], [14.6, 3.0, 0.5, 0.0], [14.6, 3.0, 0.5, 0.03]],
                         ids=["1 step", "2 steps", "3 steps", "ends above 0"])
def test_euler_and_dpmpp_2m_equal_k_diffusion_at_the_schedule_edges(name, k_name, k_args, sigmas):
    """What the diffusers schedulers were configured for (DPM++ 2M's lower_order_final and final sigma 0,
    Euler a's eta) is k-diffusion's own behaviour: the first and last steps of short schedules, and a
    schedule ending above 0 (KL Optimal), give k-diffusion's numbers exactly, on a toy model."""
    from modules.generation import ksampling

    def toy(x, sigma):
        s = sigma.flatten()[0]
        return torch.tanh(x / (s ** 2 + 1) ** 0.5) * 0.8 + 0.1 * s

    def draws():
        g = torch.Generator().manual_seed(7)
        return lambda *_: torch.randn((2, *SHAPE), generator=g)

    sigmas = torch.tensor(sigmas)
    x = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(3)) * sigmas[0]
    noise = {"noise_sampler": draws()} if name == "euler_ancestral" else {}
    expected = getattr(ks, k_name)(toy, x, sigmas, disable=True, **k_args, **noise)
    got = ksampling.SAMPLE_FUNCTIONS[name](toy, x, sigmas, draws(), lambda *_: None, **k_args)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name,options,k_args", [
    ("Euler a", samplers.SamplerOptions(eta=0.5, s_noise=0.9), {"eta": 0.5, "s_noise": 0.9}),
    ("Euler", samplers.SamplerOptions(s_churn=1.0, s_tmin=0.5, s_noise=1.0), {"s_churn": 1.0, "s_tmin": 0.5}),
    ("Heun", samplers.SamplerOptions(s_churn=0.5), {"s_churn": 0.5}),
    ("DPM2 a", samplers.SamplerOptions(eta=0.7), {"eta": 0.7}),
    ("DPM++ SDE", samplers.SamplerOptions(eta=0.5, s_noise=1.05), {"eta": 0.5, "s_noise": 1.05}),
    ("DPM++ 3M SDE", samplers.SamplerOptions(eta=0.0), {"eta": 0.0}),
    ("DPM fast", samplers.SamplerOptions(eta=0.0), {"eta": 0.0}),
])
def test_eta_churn_and_noise_match_k_diffusion(model, name, options, k_args):
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    expected = reference(model, name, 10, [5], cond, uncond, 6.0, **k_args)
    assert_close(ours(model, name, 10, [5], cond, uncond, 6.0, options), expected)


def test_sampler_functions_take_exactly_the_options_their_spec_declares():
    """No catch-all keywords: each function names its options, every option a SamplerSpec declares is one its
    function takes, and a spec that passes one it does not take fails clearly when the sampler is prepared."""
    from modules.generation import ksampling
    for name, fn in {**ksampling.SAMPLE_FUNCTIONS, **ksampling.TIMESTEP_FUNCTIONS}.items():
        assert all(p.kind is not p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values()), name
    alphas, _ = sd1_sigmas()
    every_option = samplers.SamplerOptions(eta=0.5, s_churn=0.1, s_noise=0.9)
    for spec in samplers.SAMPLERS:
        assert samplers.prepare(samplers.SamplerChoice(spec, "automatic"), 8, alphas, every_option)
    wrong = dataclasses.replace(samplers.resolve("Heun").spec, kwargs={"eta": 0.5})
    with pytest.raises(TypeError, match=r"Sampler 'Heun': heun\(\) takes no argument 'eta' \(its options: s_churn"):
        samplers.prepare(samplers.SamplerChoice(wrong, "automatic"), 8, alphas)


@pytest.mark.parametrize("name", ["Euler", "Euler a", "DPM++ 2M", "Heun"])
def test_each_step_reports_its_x0_prediction(model, name):
    """on_step is given each step's prediction of the clean latent (what the live preview shows and a stopped
    batch is decoded from). These samplers' last step goes to sigma 0 on that prediction, so the last x0
    reported is the result."""
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    gens = rng.create_generators([3], "CPU", torch.device("cpu"))
    noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    reported = []
    with torch.no_grad():
        out = pipeline.sample(model, pipeline.Denoiser(model, cond, uncond, 5.0), noise, samplers.resolve(name), 6,
                              gens, pipeline.Hooks(on_step=lambda i, n, x0: reported.append((i, n, x0))))
    assert [(i, n) for i, n, _ in reported] == [(i, 6) for i in range(1, 7)]
    assert_close(reported[-1][2], out, 1e-6)
    assert (reported[0][2] - out).abs().max() > 1e-3  # the first step's prediction is not yet the result


@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M", "DDIM", "LCM"])
def test_the_live_preview_shows_the_prompts_or_the_negative_prompts_own_prediction(model, name):
    """A1111's live_preview_content (sd_samplers_cfg_denoiser.py): at the first call, from the same noise, the
    "Prompt" preview is the x0 a CFG 1 job on the prompt predicts, and the "Negative prompt" preview the x0 a CFG 1
    job on the negative prompt predicts; "Combined" calls no on_preview. What on_step is given (what a stopped
    batch is decoded from) stays the guided prediction whatever the setting. (These samplers report their first
    step after one call; UniPC and PLMS call twice first, and share DDIM's path.)"""
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("blurry, dark")[None]

    def run(c, u, scale, preview="Combined"):
        gens = rng.create_generators([3], "CPU", torch.device("cpu"))
        noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
        steps_x0, previews = [], []
        hooks = pipeline.Hooks(on_step=lambda i, n, x0: steps_x0.append(x0), preview=preview,
                               on_preview=previews.append)
        with torch.no_grad():
            pipeline.sample(model, pipeline.Denoiser(model, c, u, scale), noise, samplers.resolve(name), 4, gens,
                            hooks)
        return steps_x0, previews

    guided, none = run(cond, uncond, 5.0)
    assert none == []
    same, prompt = run(cond, uncond, 5.0, "Prompt")
    assert all(torch.equal(a, b) for a, b in zip(guided, same)) and len(prompt) == len(guided)
    assert_close(prompt[0], run(cond, cond, 1.0)[0][0], 1e-5)
    assert (prompt[0] - guided[0]).abs().max() > 1e-3
    _, negative = run(cond, uncond, 5.0, "Negative prompt")
    assert_close(negative[0], run(uncond, uncond, 1.0)[0][0], 1e-5)
    assert (negative[0] - prompt[0]).abs().max() > 1e-3


def test_restart_is_heun_below_20_steps_and_deterministic(model):
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    inner = K.CompVisModel(model.unet, model.alphas_cumprod)
    wrap = (ke.CompVisVDenoiser if model.prediction_type == "v_prediction" else ke.CompVisDenoiser)(inner)
    sigmas = ks.get_sigmas_karras(8, wrap.sigmas[0].item(), wrap.sigmas[-1].item())
    gens = rng.create_generators([4], "CPU", torch.device("cpu"))
    x = rng.initial_noise(gens, SHAPE, torch.device("cpu")) * sigmas[0]
    with torch.no_grad():
        expected = ks.sample_heun(K.CFGDenoiser(wrap, cond, uncond, 5.0), x, sigmas, disable=True)
    assert_close(ours(model, "Restart", 8, [4], cond, uncond, 5.0), expected)
    a, b = (ours(model, "Restart", 20, [4], cond, uncond, 5.0) for _ in range(2))
    assert torch.equal(a, b) and torch.isfinite(a).all()
    from modules.generation import ksampling
    plan = ksampling.restart_plan(schedules.karras(20, 0.0292, 14.6146))
    assert len(plan) == (20 - 9) + 9 and any(b > a for (a, _), (b, _) in zip(plan, plan[1:]))


def a1111_ddim(model, steps, seeds, cond, uncond, cfg, cfg_pp=False, schedule: torch.Tensor | None = None):
    """A1111's DDIM (eta 0) written out from its formulas: timesteps 1, 1+s, ..., x starts as unit noise. With
    a `schedule` (the model's alphas as A1111 overrides them) its levels are read in that schedule's precision,
    as A1111 reads them: sqrt(1 - alpha) computed there, alpha and sqrt(1 - alpha) then taken as numbers."""
    schedule = model.alphas_cumprod if schedule is None else schedule
    alphas = schedule.double()
    root_one_minus = torch.sqrt(1 - schedule).double()
    timesteps = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    gens = rng.create_generators(seeds, "CPU", torch.device("cpu"))
    x = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    den = pipeline.Denoiser(model, cond, uncond, cfg / 12.5 if cfg_pp else cfg)
    unguided = pipeline.Denoiser(model, uncond, uncond, 1.0)  # the unconditional prediction alone

    def to_eps(out, x, t):  # A1111's CompVisTimestepsVDenoiser, in the schedule's precision
        a = schedule[t]
        return a.sqrt() * out + (1 - a).sqrt() * x if model.prediction_type == "v_prediction" else out

    for index in range(len(timesteps) - 1, 0, -1):  # A1111 stops at the second timestep (t = 1 + s)
        t = timesteps[index]
        a_t = alphas[t].float()
        a_prev = (alphas[timesteps[index - 1]] if index > 0 else alphas[0]).float()
        e_t = to_eps(den(x, t.float()), x, t)
        pred_x0 = (x - root_one_minus[t].float() * e_t) / a_t.sqrt()
        direction = to_eps(unguided(x, t.float()), x, t) if cfg_pp else e_t
        x = a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * direction
    return x


@pytest.mark.parametrize("steps", [10, 7, 3])
def test_ddim_matches_a1111_formula(model, steps):
    """7 steps: 1000 // 7 = 142 gives A1111 eight timesteps (1 ... 995), so seven model steps; 3 steps:
    the last timestep is clipped to 999."""
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    with torch.no_grad():
        expected = a1111_ddim(model, steps, [3], cond, uncond, 5.0)
        got = ours(model, "DDIM", steps, [3], cond, uncond, 5.0)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


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


def sd1_sigmas():
    alphas = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2, 0).float()
    return alphas, schedules.model_sigmas(alphas)


@pytest.mark.parametrize("n", [1, 4, 7, 20, 33])
def test_exponential_and_polyexponential_equal_k_diffusion(n):
    _, sig = sd1_sigmas()
    lo, hi = sig[0].item(), sig[-1].item()
    assert torch.equal(schedules.exponential(n, lo, hi), ks.get_sigmas_exponential(n, lo, hi))
    for rho in (1.0, 2.5):
        assert torch.allclose(schedules.polyexponential(n, lo, hi, rho), ks.get_sigmas_polyexponential(n, lo, hi, rho),
                              rtol=1e-6, atol=0)


def test_other_schedules_follow_a1111_formulas():
    alphas, sig = sd1_sigmas()
    wrap = ke.CompVisDenoiser(K.CompVisModel(torch.nn.Identity(), alphas))
    lo, hi = sig[0].item(), sig[-1].item()
    t_max, t_min = wrap.sigma_to_t(torch.tensor(hi)), wrap.sigma_to_t(torch.tensor(lo))
    for n in (4, 7, 20):
        normal = schedules.sigmas_for("normal", n, sig)
        expected = [wrap.t_to_sigma(t) for t in torch.linspace(t_max, t_min, n)] + [torch.tensor(0.0)]
        assert torch.allclose(normal, torch.stack(expected), rtol=1e-6)
        sgm = schedules.sigmas_for("sgm_uniform", n, sig)
        expected = [wrap.t_to_sigma(t) for t in torch.linspace(t_max, t_min, n + 1)[:-1]] + [torch.tensor(0.0)]
        assert torch.allclose(sgm, torch.stack(expected), rtol=1e-6)
        simple = schedules.sigmas_for("simple", n, sig)
        assert len(simple) == n + 1 and simple[0] == sig[-1] and simple[-1] == 0
        assert torch.equal(simple[:-1], torch.stack([sig[-(1 + int(i * 1000 / n))] for i in range(n)]))
        kl = schedules.sigmas_for("kl_optimal", n, sig)
        assert len(kl) == n + 1 and abs(kl[0] - hi) < 1e-4 and abs(kl[-1] - lo) < 1e-6  # ends at sigma_min
        assert torch.allclose(kl.atan(), torch.linspace(np.arctan(hi), np.arctan(lo), n + 1), atol=1e-6)
        beta = schedules.sigmas_for("beta", n, sig)
        assert abs(beta[0] - hi) < 1e-4 and abs(beta[-2] - lo) < 1e-6 and beta[-1] == 0
        assert bool((beta[1:-1] < beta[:-2]).all())
    ddim = schedules.sigmas_for("ddim", 7, sig)  # 1000 // 7 = 142: timesteps 1, 143, ..., 995 -> 8 levels
    assert torch.equal(ddim[:-1], torch.stack([sig[t] for t in range(1, 1000, 142)]).flip(0))
    beta5 = schedules.sigmas_for("beta", 5, sig)  # alpha = beta: symmetric, the middle level halfway
    assert abs(beta5[2] - (lo + hi) / 2) < 1e-4
    ays = schedules.sigmas_for("align_your_steps", 11, sig)
    assert ays[:-1].tolist() == pytest.approx(schedules.AYS_SD1) and ays[-1] == 0
    ays20 = schedules.sigmas_for("align_your_steps", 20, sig)
    assert len(ays20) == 21 and ays20[0] == pytest.approx(14.615) and ays20[-2] == pytest.approx(0.029)
    assert schedules.align_your_steps(11, sdxl=True)[1].item() == pytest.approx(6.315)


def test_schedule_names_presets_and_discard():
    assert [label for _, label in samplers.SCHEDULE_TYPES] == [
        "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
        "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]
    presets = {s.name: s.preset_schedule for s in samplers.SAMPLERS}
    assert presets["DPM++ 2M SDE"] == presets["DPM++ 3M SDE"] == "exponential"
    assert presets["DPM++ SDE"] == presets["DPM2"] == presets["Restart"] == "karras" and presets["Euler a"] is None
    assert samplers.resolve("Euler a SGMUniform").effective_schedule == "sgm_uniform"
    assert samplers.resolve("DPM++ 2M Align Your Steps").effective_schedule == "align_your_steps"
    assert samplers.resolve("DPM++ 2M SDE Exponential").schedule == "automatic"
    assert samplers.resolve("DPM++ 2M SDE Heun Karras").spec.name == "DPM++ 2M SDE Heun"
    alphas, _ = sd1_sigmas()
    dpm2 = samplers.schedule_sigmas(samplers.resolve("DPM2"), 10, alphas)
    full = schedules.karras(11, 0.0292, 14.6146)
    assert len(dpm2) == 11 and torch.allclose(dpm2, torch.cat([full[:-2], full[-1:]]), rtol=1e-3)


@pytest.mark.parametrize("schedule", [key for key, _ in samplers.SCHEDULE_TYPES])
def test_every_schedule_runs_with_our_samplers(model, schedule):
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    for name in ("DPM++ 2M", "Euler a", "DPM++ 2M SDE"):
        gens = rng.create_generators([1], "CPU", torch.device("cpu"))
        noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
        with torch.no_grad():
            out = pipeline.sample(model, pipeline.Denoiser(model, cond, uncond, 5.0), noise,
                                  samplers.resolve(name, schedule), 7, gens, pipeline.Hooks(), seeds=[1])
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["PLMS", "UniPC", "DDIM"])
def test_timestep_samplers_are_deterministic(model, name):
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    a, b = (ours(model, name, 8, [9], cond, uncond, 5.0) for _ in range(2))
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_ddim_eta_draws_from_the_images_generators(model):
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    plain = ours(model, "DDIM", 8, [9], cond, uncond, 5.0)
    noisy = ours(model, "DDIM", 8, [9], cond, uncond, 5.0, samplers.SamplerOptions(eta=1.0))
    again = ours(model, "DDIM", 8, [9], cond, uncond, 5.0, samplers.SamplerOptions(eta=1.0))
    assert torch.equal(noisy, again) and not torch.allclose(plain, noisy)


def test_api_lists(model):
    names = [s.name for s in samplers.SAMPLERS]
    assert names == ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                     "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
                     "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM"]
    assert samplers.resolve("k_dpm_ad").spec.name == "DPM adaptive"
    assert samplers.resolve("DPM++ 3M SDE").spec.options == {
        "scheduler": "exponential", "brownian_noise": True, "discard_next_to_last_sigma": True}


def a1111_plms(model, steps, seeds, cond, uncond, cfg):
    """A1111's PLMS written out from its formulas (timesteps 1, 1+s, ...; a pseudo improved Euler first
    step, then Adams-Bashforth on eps of orders 2, 3, 4)."""
    alphas = model.alphas_cumprod.double()
    timesteps = torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    gens = rng.create_generators(seeds, "CPU", torch.device("cpu"))
    x = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    den = pipeline.Denoiser(model, cond, uncond, cfg)

    def eps_of(x, t):
        out = den(x, t.float())
        if model.prediction_type == "v_prediction":
            a = alphas[t].float()
            return a.sqrt() * out + (1 - a).sqrt() * x
        return out

    def move(x, e, index):
        a_t = alphas[timesteps[index]].float()
        a_prev = (alphas[timesteps[index - 1]] if index > 0 else alphas[0]).float()
        x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e

    old = []
    for index in range(len(timesteps) - 1, 0, -1):
        e = eps_of(x, timesteps[index])
        if not old:
            e_next = eps_of(move(x, e, index), timesteps[max(index - 1, 0)])
            e_prime = (e + e_next) / 2
        elif len(old) == 1:
            e_prime = (3 * e - old[-1]) / 2
        elif len(old) == 2:
            e_prime = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
        else:
            e_prime = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        x = move(x, e_prime, index)
        old = (old + [e])[-3:]
    return x


def test_plms_matches_a1111_formula(model):
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    with torch.no_grad():
        expected = a1111_plms(model, 7, [3], cond, uncond, 5.0)
        got = ours(model, "PLMS", 7, [3], cond, uncond, 5.0)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_ddim_cfg_pp_matches_a1111_formula(model):
    """CFG++: guidance at cfg_scale / 12.5, and the unconditional eps for the step back towards noise."""
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    with torch.no_grad():
        expected = a1111_ddim(model, 8, [3], cond, uncond, 9.0, cfg_pp=True)
        got = ours(model, "DDIM CFG++", 8, [3], cond, uncond, 9.0)
        plain = ours(model, "DDIM", 8, [3], cond, uncond, 9.0)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert not torch.allclose(got, plain)


@pytest.mark.parametrize("steps", [4, 7])
def test_lcm_matches_a1111(model, steps):
    """A1111's LCM sampler: x = the LCM model's x0, re-noised to each next level with the images' noise."""
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    wrap = K.lcm_denoiser(ke, K.CompVisModel(model.unet, model.alphas_cumprod))
    sigmas = wrap.get_sigmas(steps)
    gens = rng.create_generators([6], "CPU", torch.device("cpu"))
    x = rng.initial_noise(gens, SHAPE, torch.device("cpu")) * sigmas[0]
    den, step_noise = K.CFGDenoiser(wrap, cond, uncond, 2.0), K.PerImageNoise(gens, SHAPE, "cpu")
    with torch.no_grad():
        for i in range(len(sigmas) - 1):
            x = den(x, sigmas[i][None])
            if sigmas[i + 1] > 0:
                x = x + sigmas[i + 1] * step_noise()
    assert_close(ours(model, "LCM", steps, [6], cond, uncond, 2.0), x, 1e-4)
    prepared = samplers.prepare(samplers.resolve("LCM"), steps, model.alphas_cumprod)
    assert torch.allclose(prepared.sigmas, sigmas, rtol=1e-6)
    assert prepared.timesteps[0] == 999 and prepared.timesteps[-1] == 19


def test_schedule_settings_override_range_rho_and_discard():
    alphas, sig = sd1_sigmas()
    opts = samplers.SamplerOptions(sigma_min=0.1, sigma_max=10.0, rho=5.0)
    karras = samplers.schedule_sigmas(samplers.resolve("DPM++ 2M"), 9, alphas, options=opts)
    assert torch.equal(karras, ks.get_sigmas_karras(9, 0.1, 10.0, rho=5.0))
    fields = samplers.infotext_fields(samplers.resolve("DPM++ 2M"), opts, alphas)
    assert fields == {"Schedule min sigma": 0.1, "Schedule max sigma": 10.0, "Schedule rho": 5.0}
    exp = samplers.schedule_sigmas(samplers.resolve("DPM++ 2M SDE"), 9, alphas, options=opts)
    assert torch.equal(exp, ks.get_sigmas_exponential(9, 0.1, 10.0))
    assert "Schedule rho" not in samplers.infotext_fields(samplers.resolve("DPM++ 2M SDE"), opts, alphas)
    uniform = samplers.schedule_sigmas(samplers.resolve("Euler"), 9, alphas, options=opts)
    assert torch.equal(uniform, schedules.uniform(9, sig))  # A1111: no schedule function, no overrides
    discard = samplers.SamplerOptions(always_discard_next_to_last_sigma=True)
    euler = samplers.schedule_sigmas(samplers.resolve("Euler"), 9, alphas, options=discard)
    full = schedules.uniform(10, sig)
    assert torch.equal(euler, torch.cat([full[:-2], full[-1:]]))
    assert samplers.infotext_fields(samplers.resolve("Euler"), discard, alphas) == {"Discard penultimate sigma": True}
    beta = samplers.infotext_fields(samplers.resolve("Euler", "Beta"), samplers.SamplerOptions(), alphas)
    assert beta == {"Beta schedule alpha": 0.6, "Beta schedule beta": 0.6}


# --- A1111's overrides of the noise schedule (apply_alpha_schedule_override) ------------------------------
def a1111_zero_terminal_snr(alphas: torch.Tensor) -> torch.Tensor:
    """A1111's rescale_zero_terminal_snr_abar (modules/sd_models.py, 1.10), step by step."""
    root = alphas.sqrt()
    root_0, root_T = root[0].clone(), root[-1].clone()
    root -= root_T
    root *= root_0 / (root_0 - root_T)
    out = root ** 2
    out[-1] = 4.8973451890853435e-08
    return out


DOWNCAST = samplers.SamplerOptions(downcast_alphas_cumprod=True)


@pytest.mark.parametrize("name", ["Euler", "Euler a", "DPM++ 2M", "DPM2"])
def test_a_downcast_schedule_is_a1111s_16_bit_alphas_cumprod(model, name):
    """use_downcasted_alpha_bar: A1111 casts the model's alphas_cumprod to float16 and k-diffusion's denoiser then
    builds its sigmas and log sigmas from them in float16 (uniform, Karras and the DPM2 schedules tested here)."""
    cond, uncond = model.text.encode("a red circle")[None], model.text.encode("")[None]
    got = ours(model, name, 9, [21, 22], cond, uncond, 6.0, DOWNCAST)
    expected = reference(model, name, 9, [21, 22], cond, uncond, 6.0, alphas=model.alphas_cumprod.half())
    assert_close(got, expected, 2e-5)  # measured: up to 4e-6 of the scale
    full = ours(model, name, 9, [21, 22], cond, uncond, 6.0)
    assert (full - got).abs().max().item() > 2e-4 * expected.abs().max().item()  # and it changes the picture


@pytest.mark.parametrize("name", ["DDIM", "PLMS"])
def test_a_downcast_schedule_gives_the_timestep_samplers_16_bit_levels(model, name):
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    with torch.no_grad():
        got = ours(model, name, 7, [3], cond, uncond, 5.0, DOWNCAST)
        full = ours(model, name, 7, [3], cond, uncond, 5.0)
        if name == "DDIM":
            expected = a1111_ddim(model, 7, [3], cond, uncond, 5.0, schedule=model.alphas_cumprod.half())
            assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert not torch.allclose(got, full, rtol=0, atol=1e-4)


def test_the_noise_schedule_overrides_are_written_and_leave_the_model_alone(model):
    alphas = model.alphas_cumprod.clone()
    both = samplers.SamplerOptions(downcast_alphas_cumprod=True, zero_terminal_snr=True)
    for name in ("Euler", "DDIM", "LCM"):
        fields = samplers.infotext_fields(samplers.resolve(name), both, model.alphas_cumprod)
        assert (fields["Downcast alphas_cumprod"], fields["Noise Schedule"]) == (True, "Zero Terminal SNR")
        assert samplers.prepare(samplers.resolve(name), 6, model.alphas_cumprod, both).alphas_cumprod.dtype == \
            torch.float16
    assert not samplers.infotext_fields(samplers.resolve("Euler"), samplers.SamplerOptions(), model.alphas_cumprod)
    assert torch.equal(model.alphas_cumprod, alphas) and model.alphas_cumprod.dtype == torch.float32
    # A1111's LCM copies its 50 levels into float32 before taking their sigmas
    lcm = samplers.prepare(samplers.resolve("LCM"), 6, model.alphas_cumprod, DOWNCAST)
    assert lcm.sigmas.dtype == torch.float32
    grid = model.alphas_cumprod.half()[19::20].float()
    assert torch.allclose(lcm.sigmas[0], (((1 - grid) / grid) ** 0.5)[-1], rtol=1e-6, atol=0)


@pytest.mark.parametrize("model", ["sd2-v.safetensors"], indirect=True)
@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M", "Euler a"])
def test_zero_terminal_snr_samples_on_a1111s_rescaled_schedule(model, name):
    """sd_noise_schedule "Zero Terminal SNR", for models trained on it (v-prediction): the rescaled schedule's
    last sigma is about 4500, and the job is k-diffusion's on that schedule."""
    ztsnr = samplers.SamplerOptions(zero_terminal_snr=True)
    rescaled = a1111_zero_terminal_snr(model.alphas_cumprod.clone())
    assert torch.equal(ztsnr.schedule(model.alphas_cumprod), rescaled)
    sigmas = schedules.model_sigmas(rescaled)
    first = schedules.model_sigmas(model.alphas_cumprod)[0].item()  # the first level is kept
    assert 4400 < sigmas[-1].item() < 4600 and abs(sigmas[0].item() - first) < 1e-4 * first
    cond, uncond = model.text.encode("a red circle")[None], model.text.encode("")[None]
    got = ours(model, name, 8, [5], cond, uncond, 5.0, ztsnr)
    assert_close(got, reference(model, name, 8, [5], cond, uncond, 5.0, alphas=rescaled), 1e-4)
    assert not torch.allclose(got, ours(model, name, 8, [5], cond, uncond, 5.0), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M"])
def test_the_sgm_noise_multiplier_starts_txt2img_at_sqrt_1_plus_sigma_max_squared(model, name):
    """sgm_noise_multiplier: A1111's KDiffusionSampler.sample starts from noise * sqrt(1 + sigma_0^2)."""
    cond, uncond = model.text.encode("a red circle")[None], model.text.encode("")[None]
    sgm = samplers.SamplerOptions(sgm_noise_multiplier=True)
    got = ours(model, name, 6, [2], cond, uncond, 5.0, sgm)
    assert_close(got, reference(model, name, 6, [2], cond, uncond, 5.0, sgm=True), 2e-5)
    assert not torch.allclose(got, ours(model, name, 6, [2], cond, uncond, 5.0), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["Euler", "DPM++ 2M"])
def test_quantization_gives_the_unet_the_nearest_training_timestep(model, name):
    """enable_quantization: A1111 builds k-diffusion's denoiser with quantize=True, whose model time is the
    nearest training timestep rather than one interpolated between two."""
    cond, uncond = model.text.encode("a red circle")[None], model.text.encode("")[None]
    quantized = samplers.SamplerOptions(quantize=True)
    got = ours(model, name, 7, [4], cond, uncond, 5.0, quantized)
    assert_close(got, reference(model, name, 7, [4], cond, uncond, 5.0, quantize=True), 2e-5)
    assert not torch.allclose(got, ours(model, name, 7, [4], cond, uncond, 5.0), rtol=0, atol=1e-4)


def test_old_karras_sigmas_give_every_ranged_schedule_10_to_0_1():
    """use_old_karras_scheduler_sigmas: A1111's get_sigmas starts every schedule function from (0.1, 10) rather
    than the model's range; the sigma min/max settings still win, and schedules without a range ignore it."""
    alphas, sig = sd1_sigmas()
    old = samplers.SamplerOptions(old_karras_sigmas=True)
    assert torch.equal(samplers.schedule_sigmas(samplers.resolve("DPM++ 2M", "Karras"), 9, alphas, options=old),
                       ks.get_sigmas_karras(9, 0.1, 10.0))
    assert torch.equal(samplers.schedule_sigmas(samplers.resolve("Euler", "Exponential"), 9, alphas, options=old),
                       ks.get_sigmas_exponential(9, 0.1, 10.0))
    assert torch.equal(samplers.schedule_sigmas(samplers.resolve("Euler", "SGM Uniform"), 9, alphas, options=old),
                       schedules.sgm_uniform(9, sig, 0.1, 10.0))
    assert torch.equal(samplers.schedule_sigmas(samplers.resolve("Euler"), 9, alphas, options=old),
                       schedules.uniform(9, sig))
    wider = dataclasses.replace(old, sigma_max=20.0)
    assert torch.equal(samplers.schedule_sigmas(samplers.resolve("DPM++ 2M", "Karras"), 9, alphas, options=wider),
                       ks.get_sigmas_karras(9, 0.1, 20.0))
    assert samplers.infotext_fields(samplers.resolve("DPM++ 2M", "Karras"), old, alphas) == {}


# --- UniPC: A1111 runs its own port of the UniPC authors' code, on continuous time ---------------------
def _eps_fn(model, den):
    """The guided noise prediction at a (fractional) timestep, as A1111's timestep samplers take it."""
    alphas = model.alphas_cumprod

    def eps(x, t):
        out = den(x, t.float())
        if model.prediction_type == "v_prediction":
            a = alphas[int(t)]
            return a.sqrt() * out + (1 - a).sqrt() * x
        return out
    return eps


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("steps", [10, 7, 4])
def test_unipc_solver_matches_diffusers_on_whole_timesteps(model, steps, variant):
    """Our UniPC solver (predictor, corrector, warm-up and final orders) against diffusers' independent
    implementation of the same method, on a grid both can represent: diffusers' whole timesteps ending at
    timestep 0. (A1111's own grid has fractional timesteps, which diffusers rounds; see the next test.)"""
    from diffusers import UniPCMultistepScheduler

    from modules.generation import ksampling
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    eps = _eps_fn(model, pipeline.Denoiser(model, cond, uncond, 5.0))
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", solver_type=variant, solver_order=3, lower_order_final=True,
        timestep_spacing="linspace", predict_x0=True, final_sigmas_type="sigma_min")
    scheduler.alphas_cumprod = model.alphas_cumprod.clone()
    scheduler.set_timesteps(steps)
    gens = rng.create_generators([5], "CPU", torch.device("cpu"))
    noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    with torch.no_grad():
        x = noise.clone()
        for t in scheduler.timesteps:
            x = scheduler.step(eps(x, t.double()), t, x).prev_sample
        schedule = ksampling.VPTime(model.alphas_cumprod)
        times = [(int(t) + 1) / 1000 for t in scheduler.timesteps] + [1 / 1000]

        def x0_at(x, t):
            return (x - schedule.sigma(t) * eps(x, torch.tensor(round(schedule.model_time(t))))) / schedule.alpha(t)

        got = ksampling.unipc_solve(x0_at, noise.clone(), times, schedule, lambda *_: None, 3, variant)
    print(f"\nUniPC {variant}, {steps} steps: max |ours - diffusers| {(got - x).abs().max().item():.2e} "
          f"(values up to {x.abs().max().item():.2f})")
    assert_close(got, x, rel=2e-5)


class RecordingDenoiser(pipeline.Denoiser):
    """Our denoiser, noting each timestep the U-Net is given."""

    def __init__(self, *args):
        super().__init__(*args)
        self.timesteps: list[float] = []

    def __call__(self, x, t, level=None):
        self.timesteps.append(float(t))
        return super().__call__(x, t, level)


def test_unipc_follows_a1111s_continuous_time_grid(model):
    """A1111's UniPC (time_uniform): t from 1 to 1/1000 in equal steps, the U-Net given (t - 1/1000) * 1000
    (999, 949.05, ...), one model call per step (the corrector reuses the next step's), noise levels from
    log alpha interpolated linearly in t; the result is the state at timestep 0's level."""
    from modules.generation import ksampling
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    den = RecordingDenoiser(model, cond, uncond, 5.0)
    gens = rng.create_generators([2], "CPU", torch.device("cpu"))
    noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    with torch.no_grad():
        out = pipeline.sample(model, den, noise, samplers.resolve("UniPC"), 20, gens, pipeline.Hooks())
    assert torch.isfinite(out).all()
    assert den.timesteps == pytest.approx(np.linspace(999, 0, 21)[:-1].tolist(), abs=1e-4)
    assert den.timesteps[1] == pytest.approx(949.05, abs=1e-4)

    schedule = ksampling.VPTime(model.alphas_cumprod)
    log_alphas = 0.5 * np.log(model.alphas_cumprod.double().numpy())
    grid = np.arange(1, 1001) / 1000
    for t in np.random.default_rng(0).uniform(1 / 1000, 1, 50).tolist() + [1.0, 1 / 1000, 0.4525]:
        assert schedule.log_alpha(t) == pytest.approx(np.interp(t, grid, log_alphas), rel=1e-12)
        assert schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2 == pytest.approx(1.0)
    # logSNR spacing: equal steps in lambda, mapped back to t through the same interpolation
    times = ksampling.unipc_times(schedule, 8, skip_type="logSNR")
    assert times[0] == pytest.approx(1.0) and times[-1] == pytest.approx(1 / 1000)
    lambda_steps = np.diff([schedule.lam(t) for t in times])
    assert lambda_steps == pytest.approx([lambda_steps[0]] * 8)
    assert ksampling.unipc_times(schedule, 4, skip_type="time_quadratic") == pytest.approx(
        (np.linspace(1, 1 / 1000 ** 0.5, 5) ** 2).tolist())


def test_unipc_img2img_starts_where_a1111_starts(model):
    """img2img at 0.5 of 20 steps: A1111 noises the latent to timestep timesteps[t_enc] = 501, then runs
    UniPC for t_enc = 10 steps from t = timesteps[t_enc - 1] / 1000 + 1 / 1000, i.e. U-Net timestep 451."""
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    den = RecordingDenoiser(model, cond, uncond, 5.0)
    gens = rng.create_generators([2], "CPU", torch.device("cpu"))
    noise = rng.initial_noise(gens, SHAPE, torch.device("cpu"))
    start = pipeline.Start(torch.zeros((1, *SHAPE)), samplers.img2img_t_enc(20, 0.5))
    with torch.no_grad():
        pipeline.sample(model, den, noise, samplers.resolve("UniPC"), 20, gens, pipeline.Hooks(), start)
    assert den.timesteps == pytest.approx(np.linspace(451, 0, 11)[:-1].tolist(), abs=1e-4)


def test_unipc_settings_change_the_result_and_few_steps_work(model):
    cond, uncond = model.text.encode("a cat")[None], model.text.encode("")[None]
    base = ours(model, "UniPC", 8, [4], cond, uncond, 5.0)
    for change in ({"uni_pc_variant": "bh2"}, {"uni_pc_skip_type": "logSNR"}, {"uni_pc_skip_type": "time_quadratic"},
                   {"uni_pc_order": 2}, {"uni_pc_lower_order_final": False}):
        other = ours(model, "UniPC", 8, [4], cond, uncond, 5.0, samplers.SamplerOptions(**change))
        assert torch.isfinite(other).all() and not torch.allclose(other, base), change
    for steps in (1, 2):  # fewer steps than the order (A1111 fails here) run at a lower order
        assert torch.isfinite(ours(model, "UniPC", steps, [4], cond, uncond, 5.0)).all()


def test_the_positions_counted_before_encoding_are_those_encoded(model):
    """What the memory check before a job counts for the prompts' conditioning (see generation/memory.py)."""
    from modules.generation.memory import TextMemory as memory_of
    from tests.support.engine import LONG_PROMPT, encoded_positions
    for prompt, negative in (("a cat", ""), LONG_PROMPT):
        counted = model.text.context_positions(prompt, negative, 6)
        assert counted == encoded_positions(model, prompt, negative, 6)
    assert counted[0] > 10 * 77  # several chunks and distinct texts

    # a job's: the Hires. fix pass's prompts are counted beside the first pass's, which stay held
    from modules.generation import context
    from modules.generation.params import GenerationParams
    from modules.services.generation import text_memory
    from modules.settings import Settings
    from modules.prompt_syntax import Timeline
    job = context.resolve(GenerationParams(prompt="a cat AND a dog", steps=6, enable_hr=True, hr_scale=2,
                                           hr_prompt=LONG_PROMPT[0], hr_second_pass_steps=4), Settings())
    first, second = model.text.context_positions("a cat AND a dog", "", 6), model.text.context_positions(
        LONG_PROMPT[0], "", Timeline.hires(6, 4))
    assert text_memory(job, model.text) == memory_of(first[0] + second[0], second[1], model.text.width, 4)
    # each pass over its prompt editing timeline: Heun's 2 steps count as 4, so "[a:b:3]" holds both texts
    heun = context.resolve(GenerationParams(prompt="[a cat:a dog:3]", steps=2, sampler_name="Heun"), Settings())
    both = model.text.context_positions("[a cat:a dog:3]", "", 4)
    assert both[0] == 3 * 77 and text_memory(heun, model.text) == memory_of(both[0], both[1], model.text.width, 1)
