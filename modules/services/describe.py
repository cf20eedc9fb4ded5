"""A1111's descriptions of a job: the infotext of each image, the file namer's values and the API's `info`.

Pure functions of a frozen `JobRecord` (the resolved request, the settings it ran with and facts about the
model it ran on), so they can be tested, and reused by anything that re-describes a job, without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modules import filenames, infotext, prompt_syntax
from modules.generation import extra_networks, hires, samplers
from modules.generation.context import JobContext
from modules.models.manager import LoadedModel
from modules.settings import Settings
from modules.version import INFOTEXT_VERSION


@dataclass(frozen=True)
class ModelFacts:
    """What the descriptions say about the model a job ran on."""
    name: str  # the file's stem (A1111's `Model`)
    shorthash: str | None
    vae_name: str | None
    vae_hash: str | None  # 10 hex digits
    is_inpainting: bool
    fp8: bool = False  # its weights rest in FP8 (A1111's devices.fp8)

    @classmethod
    def of(cls, model: LoadedModel) -> "ModelFacts":
        return cls(model.info.stem, model.info.shorthash, model.vae_info.name if model.vae_info else None,
                   model.vae_sha256[:10] if model.vae_sha256 else None, model.config.is_inpainting, model.fp8.on)


@dataclass(frozen=True)
class JobRecord:
    ctx: JobContext
    settings: Settings
    model: ModelFacts
    unstyled_prompt: str | None = None  # the prompt before styles were merged ([prompt_no_styles])


def sampler_fields(record: JobRecord, alphas_cumprod) -> dict[str, Any]:
    """The job's own infotext keys that come before the networks': img2img's mask keys are added by the caller;
    these are the hires keys and the sampler's options."""
    ctx = record.ctx
    fields: dict[str, Any] = {}
    if ctx.hires:
        fields = hires.infotext_fields(ctx.params, ctx.hr_choice.spec.name, ctx.hr_choice.schedule_label)
        if ctx.hires_checkpoint is not None:  # first of them, as A1111 adds it; "NAME [hash]" once it is known
            fields = {"Hires checkpoint": None, **fields}
    return {**fields, **samplers.infotext_fields(ctx.choice, ctx.options, alphas_cumprod)}


def image_infotext(record: JobRecord, seed: int, subseed: int, extra: dict[str, Any]) -> str:
    """A1111's infotext of one image: its fixed keys in its order, then the job's extra keys."""
    ctx, params, settings, model = record.ctx, record.ctx.params, record.settings, record.model
    clip_skip = ctx.clip_skip
    fields = {
        "Steps": params.steps,
        "Sampler": ctx.choice.spec.name,
        "Schedule type": ctx.choice.schedule_label,
        "CFG scale": params.cfg_scale,
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": model.shorthash if settings.add_model_hash_to_info else None,
        "Model": model.name if settings.add_model_name_to_info else None,
        "FP8 weight": settings.fp8_storage if model.fp8 else None,
        "Cache FP16 weight for LoRA": settings.cache_fp16_weight if model.fp8 else None,
        "VAE hash": model.vae_hash if settings.add_vae_hash_to_info else None,
        "VAE": model.vae_name if settings.add_vae_name_to_info else None,
        "Variation seed": subseed if params.subseed_strength > 0 else None,
        "Variation seed strength": params.subseed_strength if params.subseed_strength > 0 else None,
        "Seed resize from": f"{params.seed_resize_from_w}x{params.seed_resize_from_h}"
        if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0 else None,
        "Denoising strength": ctx.denoising_strength,
        "Conditional mask weight": settings.inpainting_mask_weight if model.is_inpainting else None,
        "Clip skip": clip_skip if clip_skip > 1 else None,
        "ENSD": settings.eta_noise_seed_delta if ctx.writes_ensd else None,
        "Token merging ratio": ctx.token_merging or None,
        "Token merging ratio hr": ctx.token_merging_hr or None,
        "Init image hash": None,  # here, as A1111 places it, when the job's keys give it (save_init_img)
        "RNG": settings.randn_source if settings.randn_source != "GPU" else None,
        "Tiling": "True" if ctx.tiling else None,
        **extra,
        "Emphasis": settings.emphasis if settings.emphasis != "Original" and prompt_syntax.emphasis_syntax_in(
            extra_networks.parse(params.prompt).text, params.negative_prompt, ctx.timeline()) else None,
        "Version": INFOTEXT_VERSION if settings.add_version_to_infotext else None,
    }
    return infotext.create(params.prompt, params.negative_prompt, fields)


def file_namer(record: JobRecord, timestamp: str) -> filenames.FileNamer:
    """What the job's file and folder name patterns can use ([seed], [model_name], [scheduler], ...)."""
    ctx, params, choice = record.ctx, record.ctx.params, record.ctx.choice
    # A1111's [scheduler]: the requested schedule, or the sampler's own preset when Automatic
    schedule = (choice.spec.preset_schedule or "Automatic") if choice.schedule == "automatic" \
        else choice.schedule_label
    return filenames.FileNamer(
        prompt=params.prompt, negative_prompt=params.negative_prompt, prompt_no_styles=record.unstyled_prompt,
        styles=list(params.styles), seeds=list(ctx.seeds), steps=params.steps, cfg_scale=params.cfg_scale,
        sampler=choice.spec.name, scheduler=schedule.capitalize(), model_name=record.model.name,
        model_hash=record.model.shorthash, vae_filename=record.model.vae_name,
        clip_skip=ctx.clip_skip, denoising_strength=ctx.denoising_strength,
        batch_size=params.batch_size, n_iter=params.n_iter, job_timestamp=timestamp,
        max_prompt_words=record.settings.directories_max_prompt_words)


def api_info(record: JobRecord, infotexts: list[str], timestamp: str, extra: dict[str, Any], interrupted: bool,
             warnings: list[str]) -> dict:
    """The `info` object of A1111's API response (`Processed.js()`)."""
    ctx, params, model = record.ctx, record.ctx.params, record.model
    n = params.total_images
    extra_params: dict[str, Any] = {"Schedule type": ctx.choice.schedule_label}
    if ctx.is_img2img:
        extra_params["Denoising strength"] = params.denoising_strength
    extra_params.update({k: v for k, v in extra.items() if v is not None})
    return {
        "prompt": params.prompt, "all_prompts": [params.prompt] * n,
        "negative_prompt": params.negative_prompt, "all_negative_prompts": [params.negative_prompt] * n,
        "seed": ctx.seed, "all_seeds": list(ctx.seeds), "subseed": ctx.subseed,
        "all_subseeds": list(ctx.subseeds), "subseed_strength": params.subseed_strength,
        "width": params.width, "height": params.height, "sampler_name": ctx.choice.spec.name,
        "cfg_scale": params.cfg_scale, "steps": params.steps, "batch_size": params.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model.name, "sd_model_hash": model.shorthash,
        "sd_vae_name": model.vae_name, "sd_vae_hash": model.vae_hash,
        "seed_resize_from_w": params.seed_resize_from_w, "seed_resize_from_h": params.seed_resize_from_h,
        "denoising_strength": params.denoising_strength if ctx.is_img2img else None,
        "extra_generation_params": extra_params,
        "index_of_first_image": 0, "infotexts": infotexts, "styles": list(params.styles),
        "job_timestamp": timestamp, "clip_skip": ctx.clip_skip,
        "is_using_inpainting_conditioning": model.is_inpainting, "version": INFOTEXT_VERSION,
        "interrupted": interrupted, "warnings": warnings,
    }
