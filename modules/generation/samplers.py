"""AUTOMATIC1111's sampler names and schedule types, and what runs each of them.

One way to run each sampler, so that the same seed reproduces A1111's image:
- a k-diffusion-style function in `ksampling` for the k-diffusion samplers (A1111 runs k-diffusion's:
  Euler, Euler a, DPM++ 2M and the rest), over noise levels from `schedules` (k-diffusion's
  discretisation), with x in "variance exploding" units (x = x0 + sigma*noise);
- A1111's own timestep loops (DDIM, DDIM CFG++, PLMS, UniPC), also in `ksampling`, starting from plain
  unit noise as A1111's do.
Each function is called with the spec's fixed keywords and the options the spec declares, nothing else.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from modules.generation import schedules


class UnknownSampler(ValueError):
    pass


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    aliases: tuple[str, ...]
    preset_schedule: str | None = None  # the schedule "Automatic" means for this sampler (None: model default)
    state: str = "ve"  # "ve" (k-diffusion samplers) or "timestep" (see module docstring)
    function: str | None = None  # the ksampling function that runs it
    kwargs: dict = field(default_factory=dict)  # fixed keyword arguments of that function
    eta: bool = False  # takes A1111's eta (ancestral / SDE samplers: default 1)
    churn: bool = False  # takes s_churn / s_tmin / s_tmax (Euler, Heun, DPM2)
    s_noise: bool = False  # takes s_noise
    second_order: bool = False
    brownian_noise: bool = False  # SDE noise from a Brownian tree seeded with the images' seeds
    discard_next_to_last_sigma: bool = False
    uses_ensd: bool = False  # A1111 writes ENSD to the infotext for these
    cfg_pp: bool = False  # DDIM CFG++: guidance at cfg_scale / 12.5, the step back to noise with the uncond eps

    def total_steps(self, steps: int) -> int:
        """A1111's SamplerData.total_steps: the steps a pass counts (its prompt editing timeline, its calls), twice
        the sampling steps for a second-order sampler, whose denoiser is called twice a step."""
        return steps * 2 if self.second_order else steps

    @property
    def options(self) -> dict[str, str | bool]:
        """What A1111's /sdapi/v1/samplers lists as the sampler's options."""
        out: dict[str, str | bool] = {"scheduler": self.preset_schedule} if self.preset_schedule else {}
        for flag in ("second_order", "brownian_noise", "discard_next_to_last_sigma", "uses_ensd"):
            if getattr(self, flag):
                out[flag] = True
        return out


# A1111's list, in its UI order, each run by its `ksampling` function.
SAMPLERS: list[SamplerSpec] = [
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), preset_schedule="karras", function="dpmpp_2m"),
    SamplerSpec("DPM++ SDE", ("k_dpmpp_sde",), preset_schedule="karras", function="dpmpp_sde", eta=True,
                s_noise=True, second_order=True, brownian_noise=True),
    SamplerSpec("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), preset_schedule="exponential", function="dpmpp_2m_sde",
                eta=True, s_noise=True, brownian_noise=True),
    SamplerSpec("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), preset_schedule="exponential",
                function="dpmpp_2m_sde", kwargs={"solver_type": "heun"}, eta=True, s_noise=True,
                brownian_noise=True),
    SamplerSpec("DPM++ 2S a", ("k_dpmpp_2s_a",), preset_schedule="karras", function="dpmpp_2s_ancestral", eta=True,
                s_noise=True, second_order=True, uses_ensd=True),
    SamplerSpec("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), preset_schedule="exponential", function="dpmpp_3m_sde",
                eta=True, s_noise=True, brownian_noise=True, discard_next_to_last_sigma=True),
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), function="euler_ancestral", eta=True, s_noise=True,
                uses_ensd=True),
    SamplerSpec("Euler", ("k_euler",), function="euler", churn=True, s_noise=True),
    SamplerSpec("LMS", ("k_lms",), function="lms"),
    SamplerSpec("Heun", ("k_heun",), function="heun", churn=True, s_noise=True, second_order=True),
    SamplerSpec("DPM2", ("k_dpm_2",), preset_schedule="karras", function="dpm_2", churn=True, s_noise=True,
                second_order=True, discard_next_to_last_sigma=True),
    SamplerSpec("DPM2 a", ("k_dpm_2_a",), preset_schedule="karras", function="dpm_2_ancestral", eta=True,
                s_noise=True, second_order=True, discard_next_to_last_sigma=True, uses_ensd=True),
    SamplerSpec("DPM fast", ("k_dpm_fast",), function="dpm_fast", eta=True, s_noise=True, uses_ensd=True),
    SamplerSpec("DPM adaptive", ("k_dpm_ad",), function="dpm_adaptive", eta=True, s_noise=True, uses_ensd=True),
    SamplerSpec("Restart", ("restart",), preset_schedule="karras", function="restart", s_noise=True,
                second_order=True),
    # A1111's own timestep loops: diffusers' DDIM/PNDM step to t - 1000 // steps and run one step more, and
    # diffusers' UniPC rounds A1111's continuous times to whole timesteps
    SamplerSpec("DDIM", ("ddim",), state="timestep", function="ddim"),
    SamplerSpec("DDIM CFG++", ("ddim_cfgpp",), state="timestep", function="ddim", cfg_pp=True),
    SamplerSpec("PLMS", ("plms",), state="timestep", function="plms"),
    SamplerSpec("UniPC", ("unipc",), state="timestep", function="unipc"),
    SamplerSpec("LCM", ("k_lcm",), function="lcm"),
]

SAMPLERS_BY_NAME = {s.name: s for s in SAMPLERS}


def visible_names(hidden=()) -> list[str]:
    """The sampler names the page and the X/Y/Z plot list: all but those the setting hide_samplers names (A1111's);
    a hidden one is still accepted wherever a name is given."""
    return [s.name for s in SAMPLERS if s.name not in hidden]
SCHEDULE_TYPES = [("automatic", "Automatic")] + list(schedules.SCHEDULES.items())
SCHEDULE_ALIASES = {"sgm_uniform": ("SGMUniform",)}


def _find_sampler(name: str) -> SamplerSpec | None:
    low = name.strip().lower()
    for spec in SAMPLERS:
        if low == spec.name.lower() or low in spec.aliases:
            return spec
    return None


def _find_schedule(name: str) -> str | None:
    low = name.strip().lower()
    for key, label in SCHEDULE_TYPES:
        if low in (key, label.lower(), *(a.lower() for a in SCHEDULE_ALIASES.get(key, ()))):
            return key
    return None


@dataclass(frozen=True)
class SamplerChoice:
    spec: SamplerSpec
    schedule: str  # "automatic" or a schedule key

    @property
    def effective_schedule(self) -> str | None:
        """The schedule actually used (None for timestep samplers such as DDIM)."""
        if self.spec.state == "timestep":
            return None
        if self.schedule == "automatic":
            return self.spec.preset_schedule or "uniform"
        return self.schedule

    @property
    def schedule_label(self) -> str:
        """What A1111 writes as `Schedule type`: the preset's label when the sampler has one."""
        key = self.schedule
        if key == "automatic" and self.spec.preset_schedule:
            key = self.spec.preset_schedule
        return dict(SCHEDULE_TYPES)[key]


def resolve(sampler_name: str, scheduler: str | None = None) -> SamplerChoice:
    """A sampler and schedule from A1111 names, including old combined names like 'DPM++ 2M Karras'."""
    name = (sampler_name or "").strip()
    schedule = _find_schedule(scheduler) if scheduler and scheduler.strip() else "automatic"
    if schedule is None:
        raise UnknownSampler(f"Unknown schedule type {scheduler!r}. Available: "
                             + ", ".join(label for _, label in SCHEDULE_TYPES))
    spec = _find_sampler(name)
    if spec is None:  # an old combined name: "DPM++ 2M Karras", "Euler a SGM Uniform"
        words = name.split(" ")
        for cut in range(len(words) - 1, 0, -1):
            head, tail = " ".join(words[:cut]), " ".join(words[cut:])
            legacy_schedule = _find_schedule(tail)
            if legacy_schedule and _find_sampler(head):
                spec = _find_sampler(head)
                if schedule == "automatic":
                    schedule = legacy_schedule
                break
    if spec is None:
        raise UnknownSampler(f"Unknown sampler {sampler_name!r}. Available: " + ", ".join(s.name for s in SAMPLERS))
    if spec.preset_schedule and schedule == spec.preset_schedule:
        schedule = "automatic"
    return SamplerChoice(spec, schedule)


@dataclass(frozen=True)
class SamplerOptions:
    """A1111's per-request sampler parameters. `eta` None means A1111's default: 1 for the ancestral and
    SDE samplers (setting "Eta for ancestral samplers"), 0 for DDIM ("Eta for DDIM")."""
    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    # A1111's schedule settings: 0 means the model's sigma range / the schedule's own rho
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    always_discard_next_to_last_sigma: bool = False
    beta_alpha: float = 0.6
    beta_beta: float = 0.6
    # A1111's UniPC settings
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True
    # A1111's overrides of the model's noise schedule (apply_alpha_schedule_override), and its old Karras range
    downcast_alphas_cumprod: bool = False
    zero_terminal_snr: bool = False
    old_karras_sigmas: bool = False
    sgm_noise_multiplier: bool = False  # txt2img's start noise times sqrt(1 + sigma_0^2) (k-diffusion samplers)
    quantize: bool = False  # enable_quantization: the U-Net's time is the nearest training timestep (k-diffusion)

    def schedule(self, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """The model's alphas_cumprod as the job samples on them: held in 16 bits (setting use_downcasted_alpha_bar,
        A1111 before 1.7), then rescaled to zero terminal SNR (sd_noise_schedule). Everything computed from them
        (sigmas, their logs, the timestep samplers' levels) then works in that precision, as in A1111."""
        if self.downcast_alphas_cumprod:
            alphas_cumprod = alphas_cumprod.half()
        if self.zero_terminal_snr:
            alphas_cumprod = schedules.zero_terminal_snr(alphas_cumprod)
        return alphas_cumprod

    def eta_for(self, spec: SamplerSpec) -> float | None:
        if spec.state == "timestep":
            return self.eta if self.eta is not None else self.eta_ddim
        if spec.eta:
            return self.eta if self.eta is not None else self.eta_ancestral
        return None

    def function_kwargs(self, spec: SamplerSpec) -> dict:
        kwargs = dict(spec.kwargs)
        if spec.function == "unipc":
            kwargs.update(order=self.uni_pc_order, variant=self.uni_pc_variant, skip_type=self.uni_pc_skip_type,
                          lower_order_final=self.uni_pc_lower_order_final)
        if spec.eta or spec.function == "ddim":
            kwargs["eta"] = self.eta_for(spec)
        if spec.s_noise:
            kwargs["s_noise"] = self.s_noise
        if spec.churn:
            kwargs.update(s_churn=self.s_churn, s_tmin=self.s_tmin, s_tmax=self.s_tmax)
        return kwargs


@dataclass
class PreparedSampler:
    function: object  # the ksampling function
    kwargs: dict = field(default_factory=dict)  # its keywords beyond (denoise, x, sigmas, noise, step)
    state: str = "ve"
    sigmas: torch.Tensor | None = None  # k-diffusion noise levels, one per step plus a final level ("ve")
    timesteps: torch.Tensor | None = None  # what the U-Net is given, one per step (timestep samplers, LCM)
    alphas_cumprod: torch.Tensor | None = None  # the model's, as the job samples on them (SamplerOptions.schedule)
    lcm_log_sigmas: torch.Tensor | None = None  # LCM: log sigma of its 50-timestep grid


def img2img_t_enc(steps: int, denoising_strength: float) -> int:
    """A1111's img2img rule: sampling starts `t_enc` steps before the end of the `steps`-step schedule,
    at step `steps - t_enc - 1`, so t_enc + 1 steps run."""
    return int(min(denoising_strength, 0.999) * steps)


def img2img_schedule(steps: int, denoising_strength: float, fixed: bool = False) -> tuple[int, int]:
    """(schedule length, t_enc) of an img2img pass, as A1111's setup_img2img_steps: `steps` long with
    img2img_t_enc, or with `fixed` (the img2img_fix_steps setting, and always for the hires pass) a
    schedule of int(steps / denoising_strength) of which the last `steps` run (t_enc = steps - 1)."""
    if not fixed:
        return steps, img2img_t_enc(steps, denoising_strength)
    schedule = max(int(steps / min(denoising_strength, 0.999)) if denoising_strength > 0 else 0, 1)
    return schedule, min(steps, schedule) - 1


def _schedule_overrides(choice: SamplerChoice, options: SamplerOptions, model_sigmas: torch.Tensor) -> dict:
    """The settings that change the schedule, as A1111 applies them: sigma min/max when non-zero and not
    the model's own, rho when non-zero and not the schedule's default (Karras, Polyexponential)."""
    out: dict = {}
    if options.sigma_min and options.sigma_min != model_sigmas[0].item():
        out["sigma_min"] = options.sigma_min
    if options.sigma_max and options.sigma_max != model_sigmas[-1].item():
        out["sigma_max"] = options.sigma_max
    default_rho = schedules.DEFAULT_RHO.get(choice.effective_schedule or "")
    if default_rho is not None and options.rho and options.rho != default_rho:
        out["rho"] = options.rho
    return out


def _schedule_range(choice: SamplerChoice, options: SamplerOptions, model_sigmas: torch.Tensor) -> dict:
    """The range and rho a schedule function is given: the settings' overrides, over A1111's old Karras range
    (sigma 0.1 to 10, for every schedule that takes a range) when that setting is on."""
    old = {"sigma_min": 0.1, "sigma_max": 10.0} if options.old_karras_sigmas else {}
    return {**old, **_schedule_overrides(choice, options, model_sigmas)}


def discards_next_to_last(choice: SamplerChoice, options: SamplerOptions) -> bool:
    return choice.spec.discard_next_to_last_sigma or options.always_discard_next_to_last_sigma


def schedule_sigmas(choice: SamplerChoice, steps: int, alphas_cumprod: torch.Tensor, sdxl: bool = False,
                    options: SamplerOptions | None = None) -> torch.Tensor:
    """The noise levels A1111 gives the sampler: the schedule's, with `steps + 1` computed and the
    next-to-last dropped for the samplers that ask for it (DPM2, DPM2 a, DPM++ 3M SDE) or when the
    setting says so for all."""
    options = options or SamplerOptions()
    model_sigmas = schedules.model_sigmas(alphas_cumprod)
    discard = discards_next_to_last(choice, options)
    sigmas = schedules.sigmas_for(choice.effective_schedule, steps + 1 if discard else steps, model_sigmas, sdxl,
                                  beta_params=(options.beta_alpha, options.beta_beta),
                                  **_schedule_range(choice, options, model_sigmas))
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def _prepare_lcm(choice: SamplerChoice, steps: int, model_sigmas: torch.Tensor, options: SamplerOptions,
                 sdxl: bool) -> PreparedSampler:
    """A1111's LCM: the model seen through its 50-timestep grid (19, 39, ..., 999). "Automatic" spaces
    timesteps evenly from 999 to 19; other schedule types use the grid's sigma range (the ones built on
    training sigmas use the grid's 50)."""
    from modules.generation import ksampling
    grid = ksampling.lcm_grid(model_sigmas)
    skip = len(model_sigmas) // len(grid)
    if choice.effective_schedule == "uniform":
        t = torch.linspace(len(model_sigmas) - 1, skip - 1, steps)
        t = torch.clamp(((t - (skip - 1)) / skip).float(), min=0, max=len(grid) - 1)
        sigmas = torch.cat([schedules.t_to_sigma(t, grid.log()), torch.zeros(1)])
    else:
        sigmas = schedules.sigmas_for(choice.effective_schedule, steps, grid, sdxl,
                                      beta_params=(options.beta_alpha, options.beta_beta),
                                      **_schedule_range(choice, options, grid))
    timesteps = ksampling.lcm_timestep(sigmas[:-1], grid.log(), len(model_sigmas))
    return PreparedSampler(ksampling.lcm, _bound_kwargs(choice.spec, ksampling.lcm, options), sigmas=sigmas,
                           timesteps=timesteps, lcm_log_sigmas=grid.log())


def _bound_kwargs(spec: SamplerSpec, function, options: SamplerOptions) -> dict:
    """The keywords the sampler's function is called with: the spec's fixed ones and the options the spec
    declares (eta, s_noise, churn, UniPC's settings). One the function does not take is a mistake in the
    table, reported here rather than ignored."""
    kwargs = options.function_kwargs(spec)
    takes = [name for name, p in inspect.signature(function).parameters.items() if p.default is not p.empty]
    unexpected = [name for name in kwargs if name not in takes]
    if unexpected:
        raise TypeError(f"Sampler {spec.name!r}: {function.__name__}() takes no argument "
                        f"{', '.join(map(repr, unexpected))} (its options: {', '.join(takes) or 'none'})")
    return kwargs


def prepare(choice: SamplerChoice, steps: int, alphas_cumprod: torch.Tensor, options: SamplerOptions | None = None,
            sdxl: bool = False) -> PreparedSampler:
    """The sampler's function and its arguments for a `steps`-step schedule of the model's `alphas_cumprod` (as
    the options have them sampled on: `SamplerOptions.schedule`)."""
    from modules.generation import ksampling
    spec = choice.spec
    options = options or SamplerOptions()
    alphas = options.schedule(alphas_cumprod)
    if spec.state == "timestep":
        function = ksampling.TIMESTEP_FUNCTIONS[spec.function]
        return PreparedSampler(function, _bound_kwargs(spec, function, options), spec.state,
                               timesteps=ksampling.a1111_timesteps(steps, len(alphas)), alphas_cumprod=alphas)
    if spec.function == "lcm":  # A1111's LCM copies its 50 alphas into 32 bits before taking their sigmas
        prepared = _prepare_lcm(choice, steps, schedules.model_sigmas(alphas.float()), options, sdxl)
    else:
        function = ksampling.SAMPLE_FUNCTIONS[spec.function]
        prepared = PreparedSampler(function, _bound_kwargs(spec, function, options),
                                   sigmas=schedule_sigmas(choice, steps, alphas, sdxl, options))
    prepared.alphas_cumprod = alphas
    return prepared


def infotext_fields(choice: SamplerChoice, options: SamplerOptions, alphas_cumprod: torch.Tensor | None = None) -> dict:
    """The sampler keys A1111 adds to the infotext when they differ from its defaults: `Eta` (ancestral
    and SDE samplers, default 1), `Eta DDIM` (DDIM, default 0), `Sigma churn/tmin/tmax/noise`, the
    schedule settings (`Schedule min/max sigma`, `Schedule rho`, `Beta schedule alpha/beta`) and
    `Discard penultimate sigma` when the setting forces it; and, for every sampler, the noise schedule's
    overrides (`Downcast alphas_cumprod`, `Noise Schedule`)."""
    spec = choice.spec
    fields: dict = {}
    if options.downcast_alphas_cumprod:
        fields["Downcast alphas_cumprod"] = True
    if options.zero_terminal_snr:
        fields["Noise Schedule"] = "Zero Terminal SNR"
    eta = options.eta_for(spec)
    if spec.function == "ddim" and eta:
        fields["Eta DDIM"] = eta
    elif spec.eta and eta != 1.0:
        fields["Eta"] = eta
    if spec.churn:
        if options.s_churn != 0:
            fields["Sigma churn"] = options.s_churn
        if options.s_tmin != 0:
            fields["Sigma tmin"] = options.s_tmin
        if options.s_tmax != float("inf"):
            fields["Sigma tmax"] = options.s_tmax
    if spec.s_noise and options.s_noise != 1.0:
        fields["Sigma noise"] = options.s_noise
    if choice.effective_schedule is not None:
        if options.always_discard_next_to_last_sigma and not spec.discard_next_to_last_sigma:
            fields["Discard penultimate sigma"] = True
        if alphas_cumprod is not None and choice.effective_schedule != "uniform":
            overrides = _schedule_overrides(choice, options, schedules.model_sigmas(options.schedule(alphas_cumprod)))
            names = {"sigma_min": "Schedule min sigma", "sigma_max": "Schedule max sigma", "rho": "Schedule rho"}
            fields.update({names[k]: v for k, v in overrides.items()})
        if choice.effective_schedule == "beta":
            fields["Beta schedule alpha"], fields["Beta schedule beta"] = options.beta_alpha, options.beta_beta
    return fields


def uses_ensd(spec: SamplerSpec, options: SamplerOptions) -> bool:
    """A1111 writes `ENSD` only for samplers that draw per-step noise with a non-zero eta."""
    return spec.uses_ensd and options.eta_for(spec) != 0

# Schedules computed from the model's own training sigmas (A1111's `need_inner_model`).
INNER_MODEL_SCHEDULES = ("uniform", "sgm_uniform", "simple", "normal", "ddim")
