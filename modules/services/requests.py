"""A request checked and resolved once, at submission: the server's limits, styles, the effective settings,
the sampler names, the seeds and the checkpoint. What the job later runs is exactly what was accepted."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from PIL import Image

from modules import images, prompt_syntax, styles
from modules.generation import context, extra_networks, hires, rng, samplers
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.limits import Limits
from modules.models.registry import CheckpointInfo
from modules.services.checkpoints import CheckpointService
from modules.services.errors import BadRequest, OverLimit
from modules.services.options import OptionsService
from modules.services.upscalers import UpscalerService
from modules.settings import Settings


@dataclass(frozen=True)
class Accepted:
    """A generation request as it will run."""
    kind: str  # "txt2img" or "img2img"
    ctx: context.JobContext
    settings: Settings  # the effective settings (override_settings merged)
    checkpoint: CheckpointInfo
    checkpoint_requested: bool  # named by override_settings (then not remembered as the selected one)
    unstyled_prompt: str
    warnings: tuple[str, ...] = ()
    refiner: CheckpointInfo | None = None  # the checkpoint ctx.refiner switches to
    hires_checkpoint: CheckpointInfo | None = None  # the checkpoint the hires pass loads (None: the job's own)

    @property
    def checkpoint_field(self) -> str | None:
        """The request field that named the checkpoint (for a message when it cannot be loaded), if one did."""
        return "override_settings.sd_model_checkpoint" if self.checkpoint_requested else None


class RequestResolver:
    def __init__(self, limits: Limits, style_store: styles.StyleStore, options: OptionsService,
                 checkpoints: CheckpointService, upscalers: UpscalerService):
        self.limits = limits
        self._styles = style_store
        self._options = options
        self._checkpoints = checkpoints
        self.upscalers = upscalers  # the image upscalers' names, for the checks

    def accept(self, kind: str, params: GenerationParams) -> Accepted:
        """Check `params` (BadRequest / OverLimit naming what is wrong) and resolve them."""
        settings, warnings = self._options.effective(params.override_settings)
        if settings.use_old_hires_fix_width_height and params.enable_hr and not isinstance(params, Img2ImgParams):
            params = hires.old_size_rule(params)
        self.check_limits(params)
        unstyled_prompt = params.prompt  # for the [prompt_no_styles] file name tag
        params, style_warnings = self.apply_styles(params)
        if not params.disable_extra_networks:  # A1111 appends the setting's network to the prompt, infotext too
            params = params.model_copy(update={
                "prompt": extra_networks.with_hypernetwork(params.prompt, settings.sd_hypernetwork)})
        image_upscalers = self.upscalers.names()
        try:
            ctx = context.resolve(params, settings, image_upscalers)
        except (samplers.UnknownSampler, hires.UnknownUpscaler) as e:
            raise BadRequest(str(e)) from None
        if kind == "img2img" and settings.upscaler_for_img2img not in (None, *image_upscalers):
            warnings.append(f"upscaler_for_img2img: there is no upscaler {settings.upscaler_for_img2img!r}; "
                            "init images were resized with Lanczos")
        self.check_numbers(ctx, settings)
        requested = params.override_settings.get("sd_model_checkpoint")
        checkpoint = self._checkpoints.resolve(requested)
        refiner = self.refiner(params, checkpoint)
        hires_checkpoint = self.hires_checkpoint(params) if ctx.hires else None
        if hires_checkpoint is not None:  # its infotext key is written even when it is the job's own (A1111)
            ctx = dataclasses.replace(ctx, hires_checkpoint=hires_checkpoint.title)
            if hires_checkpoint.filename == checkpoint.filename:
                hires_checkpoint = None
        self.check_taesd(ctx, checkpoint)
        if refiner is not None:
            ctx = dataclasses.replace(ctx, refiner=context.RefinerPlan(
                refiner.name, params.refiner_switch_at, settings.refiner_switch_by_sample_steps,
                settings.hires_fix_refiner_pass))
        return Accepted(kind, ctx, settings, checkpoint, "sd_model_checkpoint" in params.override_settings,
                        unstyled_prompt, tuple(style_warnings + warnings), refiner, hires_checkpoint)

    def hires_checkpoint(self, params: GenerationParams) -> CheckpointInfo | None:
        """The Hires checkpoint a request names (BadRequest when there is none of that name, as A1111 fails), or
        None for the job's own."""
        name = (params.hr_checkpoint_name or "").strip()
        if name in ("", "Use same checkpoint"):
            return None
        found = self._checkpoints.find(name)
        if found is None:
            raise BadRequest(f"hr_checkpoint_name: checkpoint {name!r} not found. Available: "
                             + (", ".join(i.title for i in self._checkpoints.list()) or "none"))
        return found

    def refiner(self, params: GenerationParams, checkpoint: CheckpointInfo) -> CheckpointInfo | None:
        """The refiner checkpoint a request names (BadRequest when it names none there is), or None: no refiner,
        or the job's own checkpoint (A1111 does not switch to the model already loaded)."""
        name = (params.refiner_checkpoint or "").strip()
        if name in ("", "None", "none"):
            return None
        found = self._checkpoints.find(name)
        if found is None:
            raise BadRequest(f"refiner_checkpoint: checkpoint {name!r} not found. Available: "
                             + (", ".join(i.title for i in self._checkpoints.list()) or "none"))
        return None if found.filename == checkpoint.filename else found

    def check_taesd(self, ctx: context.JobContext, checkpoint: CheckpointInfo) -> None:
        """Refuse (BadRequest naming the file and the folder) a job asking for TAESD whose file is absent, before
        anything is queued (when the checkpoint's kind is known without loading it)."""
        parts = (["encoder"] if ctx.vae_encode_method == "TAESD" and ctx.encodes_images else []) + \
            (["decoder"] if ctx.vae_decode_method == "TAESD" else [])
        for part in parts:
            problem = self._checkpoints.taesd_missing(checkpoint, part)
            if problem:
                setting = f"sd_vae_{part[:2]}code_method"
                raise BadRequest(f"{setting} is TAESD: {problem}")

    def apply_styles(self, params: GenerationParams) -> tuple[GenerationParams, list[str]]:
        """The params with their styles merged into the prompts (as A1111 does before generating, so the
        infotext holds the merged prompts); a style name not in styles.csv is a warning."""
        if not params.styles:
            return params, []
        found, missing = self._styles.resolve(params.styles)
        try:
            prompt, negative = styles.apply(found, params.prompt, params.negative_prompt,
                                            prompt_syntax.MAX_PROMPT_CHARS)
        except styles.TooLong as e:
            raise BadRequest(str(e)) from None
        warnings = [f"Style {name!r} not found in {', '.join(str(f.name) for f in self._styles.files)}; ignored"
                    for name in missing]
        return params.model_copy(update={"prompt": prompt, "negative_prompt": negative}), warnings

    def check_limits(self, params: GenerationParams) -> None:
        """Refuse (OverLimit, a 400) a request over the server's limits, before anything is decoded or queued."""
        lim = self.limits
        for name in ("width", "height"):
            if getattr(params, name) > lim.max_side:
                raise OverLimit(f"{name} {getattr(params, name)} is over this server's limit of {lim.max_side} "
                                "pixels (--max-image-side)")
        if params.batch_size * params.width * params.height > lim.max_batch_pixels:
            # counted in pixels: smaller images may come in larger batches (a batch of 24 at 128x128 is fine)
            raise OverLimit(f"batch_size {params.batch_size} at {params.width}x{params.height} is more pixels in one "
                            f"batch than this server's limit of {lim.max_batch_size} images of {lim.max_side}x"
                            f"{lim.max_side} (--max-batch-size, --max-image-side)")
        if params.n_iter > lim.max_batch_count:
            raise OverLimit(f"n_iter (batch count) {params.n_iter} is over this server's limit of "
                            f"{lim.max_batch_count} (--max-batch-count)")
        for name in ("steps", "hr_second_pass_steps"):
            if getattr(params, name) > lim.max_steps:
                raise OverLimit(f"{name} {getattr(params, name)} is over this server's limit of {lim.max_steps} "
                                "(--max-steps)")
        if params.enable_hr and not isinstance(params, Img2ImgParams):
            w, h = hires.target_size(params)
            if w * h > lim.max_pixels:
                raise OverLimit(f"the hires fix would make {w}x{h} images, more pixels than this server's limit of "
                                f"{lim.max_side}x{lim.max_side} (--max-image-side)")
            first = params.firstpass_image
            if first is not None:
                self.check_input_image(first)
                if min(first.size) < 8:  # the VAE encodes it: at least one latent pixel a side
                    raise BadRequest(f"firstpass_image is {first.width}x{first.height}; it needs at least 8 pixels "
                                     "a side")
                if first.width * first.height > w * h:  # it is encoded whole: no bigger than what the pass makes
                    raise BadRequest(f"firstpass_image is {first.width}x{first.height}, larger than the {w}x{h} "
                                     "the hires fix makes from it; send the first pass at width x height")
        if isinstance(params, Img2ImgParams):
            for image in [*params.init_images, *(m for m in (params.mask, params.latent_mask) if m is not None)]:
                self.check_input_image(image)

    def check_input_image(self, image: Image.Image) -> None:
        """Refuse (OverLimit) an input image with more pixels than --max-input-megapixels allows (its size is
        known before it is decoded)."""
        if image.width * image.height > self.limits.max_input_pixels:
            raise OverLimit(str(images.too_large(image.width, image.height, self.limits.max_input_pixels)))

    @staticmethod
    def check_numbers(ctx: context.JobContext, settings: Settings) -> None:
        """Refuse (BadRequest naming the field) seeds that no generator takes and prompts whose weights
        cannot be encoded, before anything is queued (A1111 fails on them mid-job, or makes NaNs). Each prompt is
        read over its pass's prompt editing timeline, as the job encodes it."""
        params = ctx.params
        problem = rng.seed_problem(params.seed, params.subseed, params.subseed_strength, params.total_images,
                                   settings.eta_noise_seed_delta)
        if problem:
            raise BadRequest(problem)
        first = ctx.timeline()
        texts = [("prompt", extra_networks.parse(params.prompt).text, True, first),
                 ("negative_prompt", params.negative_prompt, False, first)]
        if ctx.hires:
            hr = ctx.hires_timeline()
            texts += [("hr_prompt", extra_networks.parse(params.hr_prompt).text, True, hr),
                      ("hr_negative_prompt", params.hr_negative_prompt, False, hr)]
        for name, text, split, steps in texts:
            problem = prompt_syntax.prompt_problem(text, steps, settings.emphasis, split) if text else None
            if problem:
                raise BadRequest(f"{name}: {problem}")


def sampler_numbers(params: GenerationParams, settings: Settings) -> str:
    """The sampler numbers that differ from their defaults, for a message about values that overflowed."""
    defaults = Settings()
    values = [f"{name}={getattr(settings, name):g}" for name in (
        "sigma_max", "sigma_min", "rho", "eta_ancestral", "eta_ddim", "s_churn", "s_tmin", "s_tmax", "s_noise")
        if getattr(settings, name) != getattr(defaults, name)]
    values += [f"{name}={getattr(params, name):g}" for name in ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise")
               if getattr(params, name) is not None]
    return ", ".join(values) or "all at their defaults"
