"""A request resolved once: every name looked up, every setting merged, every seed drawn.

The services build a `JobContext` from a request and the effective settings when the request is
submitted (`resolve`); the pipeline runs from it and never reads settings or resolves names itself, so
what the job does is fixed the moment it is accepted, and the infotext describes exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from modules import upscaling
from modules.generation import hires, rng, samplers
from modules.generation.vae_tiling import VaeTiling
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.models.hypertile import Options as HypertileOptions
from modules.prompt_syntax import Timeline
from modules.settings import Settings

HIRES_REFINER_PASSES = ("first pass", "second pass", "both passes")  # A1111's hires_fix_refiner_pass choices


@dataclass(frozen=True)
class RefinerPlan:
    """When a job switches to its refiner checkpoint (which model that is, the services know).

    As A1111 >= 1.9: at the first denoiser call whose model timestep t (the one whose sigma is nearest the
    call's) gives (999 - t) / 1000 >= switch_at; with `by_steps` (A1111's refiner_switch_by_sample_steps)
    at the first call with calls_so_far / total_calls >= switch_at, total_calls being the steps run, twice
    for second-order samplers. `switch_at` None switches at the first call. With Hires. fix, `hires_pass`
    (hires_fix_refiner_pass) says which pass may switch; every batch and every pass starts on the base."""
    name: str  # the refiner checkpoint's name, for messages
    switch_at: float | None = None
    by_steps: bool = False
    hires_pass: str = "second pass"

    def allowed_in(self, hires: bool, second_pass: bool) -> bool:
        """Whether a pass may switch: every pass without Hires. fix, the chosen ones with it."""
        if not hires:
            return True
        return self.hires_pass == "both passes" or (self.hires_pass == "second pass") == second_pass

    def due(self, calls: int, total_calls: int, timestep: int) -> bool:
        if self.switch_at is None:
            return True
        if self.by_steps:
            return calls / total_calls >= self.switch_at
        # A1111 divides a timestep tensor: the ratio and the comparison are in float32 (0.7 switches at t=299)
        return bool(torch.tensor(999 - timestep) / 1000 >= self.switch_at)

    def fields(self, title: str, hires: bool) -> dict[str, object]:
        """A1111's infotext keys for a job that switched (`title`: the refiner's "name [hash]")."""
        out: dict[str, object] = {"Refiner": title, "Refiner switch at": self.switch_at}
        if self.by_steps:
            out["Refiner switch by sampling steps"] = True
        if hires and self.hires_pass != "second pass":
            out["Hires refiner"] = self.hires_pass
        return out


@dataclass(frozen=True)
class Hypertile:
    """A1111's Hypertile settings for a job: the U-Net's (first pass), the U-Net's for the hires pass, the VAE's."""
    unet: HypertileOptions = HypertileOptions()
    unet_secondpass: bool = False
    vae: HypertileOptions = HypertileOptions(max_tile=128)

    @classmethod
    def of(cls, s: Settings) -> Hypertile:
        return cls(HypertileOptions(s.hypertile_enable_unet, s.hypertile_max_depth_unet, s.hypertile_max_tile_unet,
                                    s.hypertile_swap_size_unet), s.hypertile_enable_unet_secondpass,
                   HypertileOptions(s.hypertile_enable_vae, s.hypertile_max_depth_vae, s.hypertile_max_tile_vae,
                                    s.hypertile_swap_size_vae))


@dataclass(frozen=True)
class UncondSkips:
    """A1111's two ways to leave the negative prompt's U-Net pass out of a denoiser call, guiding with the prompt
    alone (CFG 1) there (Settings > Optimizations): `early` (skip_early_cond) for the calls in the first fraction
    of the pass, `ngms` (Negative Guidance minimum sigma, s_min_uncond) for calls whose noise level is below it,
    every other call unless `ngms_all`. The noise level is the sampler's sigma, or for DDIM, PLMS and UniPC the
    U-Net timestep, as A1111 compares it."""
    early: float = 0.0
    ngms: float = 0.0
    ngms_all: bool = False

    def fields(self, call: int, total: int, level: float) -> dict[str, Any] | None:
        """The infotext keys A1111 writes when it skips call `call` of `total` at noise level `level`, or None when
        it does not skip it."""
        if self.early != 0 and total and call / total <= self.early:
            return {"Skip Early CFG": self.early}
        if (call % 2 or self.ngms_all) and self.ngms > 0 and level < self.ngms:
            return {"NGMS": self.ngms, **({"NGMS all steps": True} if self.ngms_all else {})}
        return None


@dataclass(frozen=True)
class JobContext:
    params: GenerationParams  # the request, styles merged into its prompts
    choice: samplers.SamplerChoice
    options: samplers.SamplerOptions  # the settings' sampler defaults with the request's eta / churn / noise over them
    seeds: tuple[int, ...]  # one per image
    subseeds: tuple[int, ...]  # one variation seed per image
    clip_skip: int = 1
    emphasis: str = "Original"
    randn_source: str = "CPU"
    noise_seed_delta: int = 0  # A1111's ENSD: per-step noise from seed + delta
    hr_choice: samplers.SamplerChoice | None = None  # txt2img with Hires. fix: its second pass's sampler
    hr_upscaler: str | None = None
    # img2img
    background: str = "#ffffff"  # what transparent init images are flattened onto
    overlay: bool = True  # overlay_inpaint: the original laid back over an inpainted picture outside its mask
    fix_steps: bool = False  # img2img_fix_steps
    img2img_upscaler: str | None = None  # upscaler_for_img2img: what enlarges init images (None: Lanczos)
    mask_weight: float = 1.0  # inpainting_mask_weight (9-channel inpainting models)
    color_correction: bool = False  # img2img_color_correction: results' colours brought back to the init image's
    keep_before_hires: bool = False  # save_images_before_highres_fix, when the job saves: its first pass's pictures
    keep_uncorrected: bool = False  # save_images_before_color_correction: each result also as it was before
    refiner: RefinerPlan | None = None  # switch to another checkpoint near the end (set by the services)
    vae_decode_method: str = "Full"  # sd_vae_decode_method: "Full" (the model's VAE) or "TAESD"
    vae_encode_method: str = "Full"  # sd_vae_encode_method, for img2img inputs and Hires. fix's pixel upscales
    vae_tiling: VaeTiling = VaeTiling()  # when the VAE decodes and encodes in tiles (vae_tiling, vae_tile_size)
    tiling: bool = False  # A1111's Tiling: every convolution of the U-Net and the VAE pads circularly
    uncond_skips: UncondSkips = UncondSkips()  # when a call leaves the negative prompt out (A1111's optimizations)
    hypertile: Hypertile = field(default_factory=Hypertile)  # A1111's Hypertile settings
    pad_conds: str = ""  # prompt and negative prompt of different lengths: "" two U-Net batches, "pad" padded with
    # the empty prompt's chunks, "v0" with the shorter's last vector (settings pad_cond_uncond, pad_cond_uncond_v0)
    # A1111's token merging ratios (see models/token_merging): the first pass's (img2img's), the hires pass's
    token_merging: float = 0.0
    token_merging_hr: float = 0.0
    old_timelines: bool = False  # use_old_scheduling: A1111's old prompt editing timelines (prompt_syntax.Timeline)
    # hires_fix_use_firstpass_conds: the hires prompts encoded with the first pass's networks (see _hires_pass)
    hires_firstpass_conds: bool = False
    extra_noise: float = 0.0  # img2img_extra_noise: img2img's and the hires pass's start noise added again, scaled
    hires_checkpoint: str | None = None  # Hires checkpoint: the title the hires pass runs on (set by the services)
    # infotext keys a script gives every image of this job, before the job's own (Loopback's curve); (key, value)
    script_fields: tuple[tuple[str, Any], ...] = ()

    @property
    def is_img2img(self) -> bool:
        return isinstance(self.params, Img2ImgParams)

    @property
    def hires(self) -> bool:
        return self.hr_choice is not None

    @property
    def seed(self) -> int:
        return self.seeds[0]

    @property
    def subseed(self) -> int:
        return self.subseeds[0]

    @property
    def variation_subseeds(self) -> list[int] | None:
        """The variation seeds the noise mixes in (None when the variation strength is 0)."""
        return list(self.subseeds) if self.params.subseed_strength > 0 else None

    @property
    def denoising_strength(self) -> float | None:
        """img2img's, the hires pass's (A1111's 0.7 when not given), or None for plain txt2img."""
        if self.is_img2img:
            return self.params.denoising_strength
        if self.hires:
            given = self.params.denoising_strength
            return given if given is not None else hires.DEFAULT_DENOISING
        return None

    def timeline(self) -> Timeline:
        """The first pass's prompt editing timeline (img2img's too): A1111 counts it in the sampler's total steps."""
        return Timeline(self.choice.spec.total_steps(self.params.steps), old=self.old_timelines)

    def hires_timeline(self, old: bool | None = None) -> Timeline:
        """The Hires. fix pass's: A1111 counts on from the first pass's steps (Timeline.hires); in the old
        timelines (`old`, by default the job's use_old_scheduling) in the first pass's."""
        hr_steps = self.params.hr_second_pass_steps or self.params.steps
        return Timeline.hires(self.timeline().steps, self.hr_choice.spec.total_steps(hr_steps),
                              self.old_timelines if old is None else old)

    @property
    def firstpass(self) -> bool:
        """Hires. fix from a given picture (A1111's firstpass_image) instead of a first pass of its own."""
        return self.hires and getattr(self.params, "firstpass_image", None) is not None

    @property
    def steps_run(self) -> int:
        """txt2img's sampler steps per batch (both passes with Hires. fix, the second alone from a given first
        pass); img2img's come from its inputs."""
        if self.hires:
            hr_steps = self.params.hr_second_pass_steps or self.params.steps
            return hr_steps if self.firstpass else self.params.steps + hr_steps
        return self.params.steps

    @property
    def encodes_images(self) -> bool:
        """Whether the job VAE-encodes pixels: img2img's inputs, or Hires. fix with a pixel upscaler."""
        return self.is_img2img or self.firstpass or (self.hires and self.hr_upscaler not in hires.LATENT_UPSCALERS)

    def vae_fields(self) -> dict[str, str]:
        """A1111's `VAE Encoder` / `VAE Decoder` infotext keys, written only when not Full."""
        fields = {}
        if self.vae_encode_method != "Full" and self.encodes_images:
            fields["VAE Encoder"] = self.vae_encode_method
        if self.vae_decode_method != "Full":
            fields["VAE Decoder"] = self.vae_decode_method
        return fields

    @property
    def writes_ensd(self) -> bool:
        """A1111 writes ENSD to the infotext only for the samplers whose noise it changes."""
        return self.noise_seed_delta != 0 and samplers.uses_ensd(self.choice.spec, self.options)


def sampler_options(params: GenerationParams, settings: Settings) -> samplers.SamplerOptions:
    """The request's eta / sigma churn / noise over the settings' defaults (A1111: `p.eta or opts.eta_...`)."""
    s_tmax = params.s_tmax if params.s_tmax is not None else settings.s_tmax
    return samplers.SamplerOptions(
        eta=params.eta, s_churn=params.s_churn if params.s_churn is not None else settings.s_churn,
        s_tmin=params.s_tmin if params.s_tmin is not None else settings.s_tmin,
        s_tmax=s_tmax if s_tmax else float("inf"),
        s_noise=params.s_noise if params.s_noise is not None else settings.s_noise,
        eta_ancestral=settings.eta_ancestral, eta_ddim=settings.eta_ddim,
        sigma_min=settings.sigma_min, sigma_max=settings.sigma_max, rho=settings.rho,
        always_discard_next_to_last_sigma=settings.always_discard_next_to_last_sigma,
        beta_alpha=settings.beta_dist_alpha, beta_beta=settings.beta_dist_beta,
        uni_pc_variant=settings.uni_pc_variant, uni_pc_skip_type=settings.uni_pc_skip_type,
        uni_pc_order=settings.uni_pc_order, uni_pc_lower_order_final=settings.uni_pc_lower_order_final,
        downcast_alphas_cumprod=settings.use_downcasted_alpha_bar,
        zero_terminal_snr=settings.sd_noise_schedule == "Zero Terminal SNR",
        old_karras_sigmas=settings.use_old_karras_scheduler_sigmas, sgm_noise_multiplier=settings.sgm_noise_multiplier,
        quantize=settings.enable_quantization)


def hires_choice(params: GenerationParams) -> samplers.SamplerChoice:
    """The hires pass's sampler: the first pass's unless hr_sampler_name / hr_scheduler say otherwise."""
    return samplers.resolve(params.sampler_name if params.hr_sampler_name in hires.SAME else params.hr_sampler_name,
                            params.scheduler if params.hr_scheduler in hires.SAME else params.hr_scheduler)


def token_merging_ratios(params: GenerationParams, settings: Settings) -> tuple[float, float]:
    """A1111's get_token_merging_ratio: the ratio of txt2img's first pass, or img2img's (token_merging_ratio_img2img
    unless token_merging_ratio is among the request's override_settings), and of the hires pass
    (token_merging_ratio_hr, else the first pass's; 0 without Hires. fix)."""
    if isinstance(params, Img2ImgParams):
        first = ("token_merging_ratio" in params.override_settings and settings.token_merging_ratio) \
            or settings.token_merging_ratio_img2img or settings.token_merging_ratio
        return first, 0.0
    first = settings.token_merging_ratio
    return first, (settings.token_merging_ratio_hr or first) if params.enable_hr else 0.0


def resolve(params: GenerationParams, settings: Settings | None = None,
            image_upscalers: Sequence[str] = upscaling.BUILTIN) -> JobContext:
    """The request as the pipeline runs it, with the image upscalers `image_upscalers` there are (None, Lanczos,
    Nearest and the model upscalers). Raises samplers.UnknownSampler or hires.UnknownUpscaler for a name that
    exists nowhere; seeds of -1 are drawn here, once. An upscaler_for_img2img that is not there is Lanczos, as in
    A1111 (the services warn about it)."""
    settings = settings or Settings()
    choice = samplers.resolve(params.sampler_name, params.scheduler)
    hr_choice = upscaler = None
    if params.enable_hr and not isinstance(params, Img2ImgParams):
        hr_choice = hires_choice(params)
        upscaler = hires.check_upscaler(params.hr_upscaler, image_upscalers)
    if isinstance(params, Img2ImgParams) and params.initial_noise_multiplier is None:
        params = params.model_copy(update={"initial_noise_multiplier": settings.initial_noise_multiplier})
    tiling = params.tiling if params.tiling is not None else settings.tiling
    merging = token_merging_ratios(params, settings)
    seeds, subseeds = rng.batch_seeds(rng.fix_seed(params.seed), rng.fix_seed(params.subseed),
                                      params.subseed_strength, params.total_images)
    return JobContext(
        params=params, choice=choice, options=sampler_options(params, settings), seeds=tuple(seeds),
        subseeds=tuple(subseeds), clip_skip=settings.CLIP_stop_at_last_layers, emphasis=settings.emphasis,
        randn_source=settings.randn_source, noise_seed_delta=settings.eta_noise_seed_delta, hr_choice=hr_choice,
        hr_upscaler=upscaler, background=settings.img2img_background_color, fix_steps=settings.img2img_fix_steps,
        overlay=settings.overlay_inpaint,
        img2img_upscaler=settings.upscaler_for_img2img if settings.upscaler_for_img2img in image_upscalers else None,
        mask_weight=settings.inpainting_mask_weight, vae_decode_method=settings.sd_vae_decode_method,
        vae_encode_method=settings.sd_vae_encode_method,
        # a band of rows would wrap around onto itself, not onto the image's far edge: Tiling decodes whole
        vae_tiling=VaeTiling("Never" if tiling else settings.vae_tiling, settings.vae_tile_size), tiling=tiling,
        uncond_skips=UncondSkips(settings.skip_early_cond,
                                 params.s_min_uncond if params.s_min_uncond is not None else settings.s_min_uncond,
                                 settings.s_min_uncond_all),
        extra_noise=settings.img2img_extra_noise, color_correction=settings.img2img_color_correction,
        keep_uncorrected=settings.save_images_before_color_correction,
        keep_before_hires=bool(hr_choice) and settings.save_images_before_highres_fix and params.save_images
        and settings.samples_save,
        pad_conds="v0" if settings.pad_cond_uncond_v0 else "pad" if settings.pad_cond_uncond else "",
        hypertile=Hypertile.of(settings), token_merging=merging[0], token_merging_hr=merging[1],
        old_timelines=settings.use_old_scheduling, hires_firstpass_conds=settings.hires_fix_use_firstpass_conds)
