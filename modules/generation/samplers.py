"""AUTOMATIC1111's sampler names, each backed by a diffusers scheduler configured to k-diffusion's maths.

The scheduler does the update step; the noise levels come from `schedules` (k-diffusion's
discretisation) and replace the scheduler's own, so the same seed reproduces A1111's image. Each
sampler also says how its state is scaled: k-diffusion samplers hold x in "variance exploding" units
(x = x0 + sigma*noise), diffusers' DPM-Solver holds it divided by sqrt(sigma^2 + 1), and DDIM starts
from plain unit noise as A1111's DDIM does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler

from modules.generation import schedules


class UnknownSampler(ValueError):
    pass


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    aliases: tuple[str, ...]
    scheduler_cls: type
    config: dict = field(default_factory=dict)
    preset_schedule: str | None = None  # the schedule "Automatic" means for this sampler (None: model default)
    state: str = "ve"  # "ve", "vp" or "timestep" (see module docstring)

    @property
    def options(self) -> dict[str, str]:
        return {"scheduler": self.preset_schedule} if self.preset_schedule else {}


SAMPLERS: list[SamplerSpec] = [
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), DPMSolverMultistepScheduler,
                dict(algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", lower_order_final=True,
                     final_sigmas_type="zero"), preset_schedule="karras", state="vp"),
    SamplerSpec("Euler a", ("k_euler_a", "k_euler_ancestral"), EulerAncestralDiscreteScheduler),
    SamplerSpec("Euler", ("k_euler",), EulerDiscreteScheduler),
    SamplerSpec("DDIM", ("ddim",), DDIMScheduler,
                dict(timestep_spacing="leading", steps_offset=1, set_alpha_to_one=False, clip_sample=False),
                state="timestep"),
]

SCHEDULE_TYPES = [("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras")]


def _find_sampler(name: str) -> SamplerSpec | None:
    low = name.strip().lower()
    for spec in SAMPLERS:
        if low == spec.name.lower() or low in spec.aliases:
            return spec
    return None


def _find_schedule(name: str) -> str | None:
    low = name.strip().lower()
    for key, label in SCHEDULE_TYPES:
        if low in (key, label.lower()):
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
    if spec is None and " " in name:
        head, tail = name.rsplit(" ", 1)
        legacy_schedule = _find_schedule(tail)
        if legacy_schedule and _find_sampler(head):
            spec = _find_sampler(head)
            if schedule == "automatic":
                schedule = legacy_schedule
    if spec is None:
        raise UnknownSampler(f"Unknown sampler {sampler_name!r}. Available: " + ", ".join(s.name for s in SAMPLERS))
    if spec.preset_schedule and schedule == spec.preset_schedule:
        schedule = "automatic"
    return SamplerChoice(spec, schedule)


@dataclass
class PreparedSampler:
    scheduler: object
    timesteps: torch.Tensor  # what the U-Net is given, one per step
    initial_scale: float  # the unit-variance starting noise is multiplied by this
    state: str = "ve"
    sigmas: torch.Tensor | None = None  # k-diffusion noise levels, one per step plus a final 0 (ve and vp)
    alphas_cumprod: torch.Tensor | None = None  # the model's (timestep samplers)

    def start_at(self, index: int) -> None:
        """Begin sampling at step `index` of the schedule (img2img) instead of step 0."""
        if self.state != "timestep":  # DDIM keeps no step counter: its steps follow from the timesteps
            self.scheduler.set_begin_index(index)

    def levels(self, index: int) -> tuple[float, float]:
        """(alpha, sigma) of step `index`: the U-Net's input there is alpha * x0 + sigma * noise."""
        if self.state == "timestep":
            a = self.alphas_cumprod[int(self.timesteps[index])].double().item()
            return a ** 0.5, (1 - a) ** 0.5
        s = self.sigmas[index].double().item()
        return 1 / (s * s + 1) ** 0.5, s / (s * s + 1) ** 0.5

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
        """`x0` noised to the level of step `index`, in the units the sampler holds its state in."""
        if self.state == "timestep":
            t = self.timesteps[index].expand(x0.shape[0])
            return self.scheduler.add_noise(x0, noise, t)
        sigma = self.sigmas[index].item()
        x = x0 + noise * sigma
        return x if self.state == "ve" else x / (sigma ** 2 + 1) ** 0.5


def img2img_t_enc(steps: int, denoising_strength: float) -> int:
    """A1111's img2img rule: sampling starts `t_enc` steps before the end of the `steps`-step schedule,
    at step `steps - t_enc - 1`, so t_enc + 1 steps run."""
    return int(min(denoising_strength, 0.999) * steps)


def prepare(choice: SamplerChoice, steps: int, alphas_cumprod: torch.Tensor, prediction_type: str) -> PreparedSampler:
    spec = choice.spec
    scheduler = spec.scheduler_cls(
        num_train_timesteps=len(alphas_cumprod), beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, **spec.config)
    if spec.state == "timestep":
        scheduler.alphas_cumprod = alphas_cumprod.clone()
        scheduler.final_alpha_cumprod = alphas_cumprod[0].clone()
        scheduler.set_timesteps(steps)
        return PreparedSampler(scheduler, scheduler.timesteps, 1.0, spec.state, alphas_cumprod=alphas_cumprod)

    model_sigmas = schedules.model_sigmas(alphas_cumprod)
    sigmas = schedules.sigmas_for(choice.effective_schedule, steps, model_sigmas)
    timesteps = schedules.sigma_to_t(sigmas[:-1], model_sigmas.log())
    scheduler.set_timesteps(steps)
    scheduler.sigmas = sigmas
    scheduler.timesteps = timesteps
    sigma0 = sigmas[0].item()
    scale = sigma0 if spec.state == "ve" else sigma0 / (sigma0 ** 2 + 1) ** 0.5
    return PreparedSampler(scheduler, timesteps, scale, spec.state, sigmas=sigmas)
