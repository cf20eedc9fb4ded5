"""The service layer the UI and the API both call: validate, queue, generate, save, describe.

Everything that must behave the same whichever way a request arrives lives here, so a feature exists
in both front ends the moment it exists in the engine.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import ValidationError
from tqdm import tqdm

from modules import fileio, filenames, images, infotext, postprocessing, styles
from modules.folders import FolderPolicy, FolderRefused
from modules.generation import extra_networks, hires, pipeline, prompts, rng, samplers
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.jobs import Job, JobInterrupted, JobQueue
from modules.limits import Limits
from modules.models import optimizations
from modules.models.checkpoint_file import CheckpointError
from modules.models.embeddings import EmbeddingRegistry
from modules.models.lora import LoraRegistry
from modules.models.manager import ExtraNetworksUse, LoadedModel, ModelManager
from modules.models.registry import CheckpointInfo
from modules.paths import Paths
from modules.settings import Settings, SettingsStore
from modules.version import INFOTEXT_VERSION

log = logging.getLogger(__name__)


class BadRequest(ValueError):
    """The request cannot be served as asked; the message says why."""


class UnknownOption(BadRequest):
    """A settings key that does not exist."""


class UnusableCheckpoint(BadRequest):
    """A checkpoint the request named (sd_model_checkpoint) that cannot be loaded: refused or unreadable."""


class OverLimit(BadRequest):
    """The request asks for more than the server's limits allow (modules/limits.py); the message says which
    limit and the flag that raises it."""


@dataclass
class GenerationResult:
    images: list[Image.Image]
    seeds: list[int]
    infotexts: list[str]
    paths: list[str | None]
    info: dict[str, Any]
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    grid: Image.Image | None = None  # A1111's grid of the job's images (more than one, saving on)


Txt2ImgResult = GenerationResult  # the name it had before img2img shared it


@dataclass
class ExtrasResult:
    images: list[Image.Image]  # their `info` holds the PNG text chunks to write (parameters, extras, ...)
    infotexts: list[str]  # A1111's extras infotext of each image ('' when nothing was done)
    paths: list[str | None]
    interrupted: bool = False


def describe_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc and loc not in msg else msg)
    return "; ".join(parts)


class Engine:
    def __init__(self, paths: Paths, settings: SettingsStore, models: ModelManager, queue: JobQueue,
                 limits: Limits | None = None, folders: FolderPolicy | None = None):
        self.paths = paths
        self.folders = folders or FolderPolicy(paths.data)  # which server folders clients may name
        self.settings = settings
        self.models = models
        self.queue = queue
        self.limits = limits or Limits()
        # input images are decoded within this many pixels at once, whichever request they came with
        self.decode_budget = images.DecodeBudget(self.limits.decode_budget_pixels)
        self.startup_error: str | None = None
        # LoRA and embedding folders come from the paths unless the manager was given its own.
        if not models.loras.folders:
            models.loras = LoraRegistry(paths.lora_dirs, models.checkpoints.hashes)
        if not models.embeddings.folders:
            models.embeddings = EmbeddingRegistry(paths.embeddings_dirs, models.checkpoints.hashes)
        self.styles = styles.StyleStore(paths.styles_files)

    # --- models ------------------------------------------------------------------------------
    def resolve_checkpoint(self, query: str | None = None) -> CheckpointInfo:
        registry = self.models.checkpoints
        if query:
            found = registry.find(query)
            if found is None:
                raise BadRequest(f"Checkpoint {query!r} not found. Available: "
                                 + (", ".join(i.title for i in registry.list()) or "none"))
            return found
        wanted = self.settings.values.sd_model_checkpoint
        found = registry.find(wanted) if wanted else None
        if found is None and self.models.current is not None:
            found = self.models.current.info
        if found is None:
            items = registry.list()
            if not items:
                raise BadRequest("No checkpoint found. Put a .safetensors or .ckpt file into "
                                 f"{self.paths.checkpoint_dirs[-1]} and refresh the list.")
            found = items[0]
        return found

    def _load(self, info: CheckpointInfo, vae: str, remember: bool = True, requested: str | None = None
              ) -> LoadedModel:
        """Make `info` the loaded model; `remember` records it as the selected checkpoint setting
        (not done for a per-request override, which A1111 restores afterwards). A file that cannot be
        loaded is a CheckpointError, or an UnusableCheckpoint (a 4xx) naming the field when the request
        named it (`requested`: the field)."""
        try:
            model = self.models.get(info, vae)
        except CheckpointError as e:
            if requested:
                raise UnusableCheckpoint(f"{requested}: {e} (checkpoint: {info.name})") from None
            raise CheckpointError(f"{e} (checkpoint: {info.name})") from None
        if remember and self.settings.values.sd_model_checkpoint != model.info.title:
            self.settings.update({"sd_model_checkpoint": model.info.title})
        return model

    def load_checkpoint(self, query: str | None = None) -> LoadedModel:
        """Load a checkpoint through the queue (waits for running jobs) and make it the current one."""
        info = self.resolve_checkpoint(query)
        return self.queue.run("load", lambda job: self._load(info, self.settings.values.sd_vae,
                                                             requested="sd_model_checkpoint" if query else None))

    def unload_checkpoint(self) -> None:
        """Free the loaded model (through the queue, so a running job finishes first). The next job, or
        `reload_checkpoint`, loads the selected checkpoint again."""
        self.queue.run("unload", lambda job: self.models.unload())

    def reload_checkpoint(self) -> LoadedModel:
        """Load the selected checkpoint again (after `unload_checkpoint`); a no-op when it is loaded."""
        return self.load_checkpoint()

    def start_loading(self, query: str | None = None) -> Job | None:
        """Queue loading of the start-up model; generation requests queue behind it. A `query` (--ckpt)
        becomes the selected checkpoint at once, as in A1111, so the page and the next job agree on it."""
        try:
            info = self.resolve_checkpoint(query)
        except BadRequest as e:
            self.startup_error = str(e)
            log.warning("%s", e)
            return None
        if query and self.settings.values.sd_model_checkpoint != info.title:
            self.settings.update({"sd_model_checkpoint": info.title})

        def run(job: Job) -> None:
            try:
                self._load(info, self.settings.values.sd_vae)
                self.startup_error = None
            except Exception as e:  # reported to the user; the server keeps running
                self.startup_error = str(e)
                log.error("Could not load %s: %s", info.name, e)

        return self.queue.submit("load", run)

    # --- settings ----------------------------------------------------------------------------
    def check_vae_name(self, name: str) -> None:
        """Refuse a VAE choice that names no file, before anything is queued or changed."""
        if name.strip() not in ("Automatic", "None") and self.models.vaes.find(name) is None:
            raise BadRequest(f"VAE {name!r} not found. Available: Automatic, None"
                             + "".join(f", {v.name}" for v in self.models.vaes.list()))

    def effective_settings(self, overrides: dict[str, Any]) -> tuple[Settings, list[str]]:
        unknown = [k for k in overrides if k not in Settings.model_fields]
        try:
            merged = Settings(**{**self.settings.values.model_dump(), **overrides})
        except ValidationError as e:
            raise BadRequest(f"override_settings: {describe_validation_error(e)}") from None
        if "sd_vae" in overrides:
            self.check_vae_name(merged.sd_vae)
        self._check_folder_settings(overrides, "override_settings: ")
        warnings = [f"override_settings: unknown option {k!r} ignored" for k in unknown]
        return merged, warnings

    def set_options(self, changes: dict[str, Any]) -> None:
        unknown = [k for k in changes if k not in Settings.model_fields]
        if unknown:
            raise UnknownOption(f"Unknown option(s): {', '.join(unknown)}")
        try:
            Settings(**{**self.settings.values.model_dump(), **changes})
        except ValidationError as e:
            raise BadRequest(describe_validation_error(e)) from None
        if "sd_vae" in changes:
            self.check_vae_name(changes["sd_vae"])
        self._check_folder_settings(changes)
        if "sd_model_checkpoint" in changes:
            info = self.resolve_checkpoint(changes["sd_model_checkpoint"])
            vae = changes.get("sd_vae", self.settings.values.sd_vae)
            self.queue.run("load", lambda job: self._load(info, vae, requested="sd_model_checkpoint"))
            changes = {**changes, "sd_model_checkpoint": info.title}
        elif "sd_vae" in changes and self.models.current is not None:
            self.models.resolve_vae(self.models.current.info, changes["sd_vae"])  # fail early on a bad name
        self.settings.update(changes)

    def _check_folder_settings(self, changes: dict[str, Any], prefix: str = "") -> None:
        try:
            self.folders.check_settings(changes, self.settings.values.model_dump())
        except FolderRefused as e:
            raise BadRequest(prefix + str(e)) from None

    def page_folder(self, what: str, folder: str) -> Path:
        """A server folder typed into the page (img2img Batch, Extras batch) as a real path, if clients may use
        it (see modules/folders); BadRequest naming `what` otherwise."""
        try:
            return self.folders.page_folder(what, folder)
        except FolderRefused as e:
            raise BadRequest(str(e)) from None

    # --- generation --------------------------------------------------------------------------
    def txt2img(self, params: GenerationParams) -> GenerationResult:
        return self.submit_txt2img(params).wait()

    def submit_txt2img(self, params: GenerationParams, task_id: str | None = None) -> Job:
        """Check the request (raising BadRequest at once) and queue it; the job's result is a GenerationResult.
        `task_id`: A1111's force_task_id (what /internal/progress knows the job by)."""
        return self._submit("txt2img", params, task_id)

    def img2img(self, params: Img2ImgParams) -> GenerationResult:
        return self.submit_img2img(params).wait()

    def submit_img2img(self, params: Img2ImgParams, task_id: str | None = None) -> Job:
        """As submit_txt2img, for img2img and inpainting (the init images and mask are in `params`)."""
        if not isinstance(params, Img2ImgParams):
            raise BadRequest("img2img needs Img2ImgParams (init_images, denoising_strength, ...)")
        return self._submit("img2img", params, task_id)

    # --- extras ------------------------------------------------------------------------------
    def extras(self, inputs: list[Image.Image], params: postprocessing.ExtrasParams, save: bool = True
               ) -> ExtrasResult:
        return self.submit_extras(inputs, params, save).wait()

    def submit_extras(self, inputs: list[Image.Image], params: postprocessing.ExtrasParams, save: bool = True,
                      outdir: str | None = None) -> Job:
        """Queue Extras (post-processing, see modules/postprocessing) of `inputs`, one after the other; the job
        runs after those ahead of it, as A1111's extras wait for its queue lock. What cannot be done is
        refused at once (BadRequest). With `save` (A1111's Extras tab; its API never saves) each result goes
        to outdir_extras_samples (outdir_samples when set) as A1111 names extras: 00042.png, no date folder,
        the original's text chunks kept and the extras infotext added; `outdir` (the Extras tab's batch output
        folder) replaces that folder."""
        if not inputs:
            raise BadRequest("Extras: send at least one image")
        try:
            postprocessing.check(params)
        except postprocessing.ExtrasError as e:
            raise BadRequest(str(e)) from None
        for image in inputs:
            self.check_input_image(image)
        settings = self.settings.values

        def run(job: Job) -> ExtrasResult:
            result = ExtrasResult([], [], [])
            folder = self.paths.resolve_output_dir(outdir or settings.outdir_samples or settings.outdir_extras_samples)
            job.state.job_count = len(inputs)
            for index, image in enumerate(inputs):
                job.state.job_no = index
                if job.state.interrupted:
                    result.interrupted = True
                    break
                try:
                    out, text = postprocessing.run(images.load(image, self.decode_budget), params)
                except (postprocessing.ExtrasError, images.InvalidImage) as e:
                    raise BadRequest(str(e)) from None
                if not settings.enable_pnginfo:
                    out.info = {}
                path = None
                if save:  # A1111's short extras name, the text in `extras`, the original's chunks kept
                    path = str(images.save_image(out, folder, text, settings, filenames.FileNamer(), to_dirs=False,
                                                 texts=out.info, section="extras"))
                result.images.append(out)
                result.infotexts.append(text)
                result.paths.append(path)
            return result

        return self.queue.submit("extras", run)

    def apply_styles(self, params: GenerationParams) -> tuple[GenerationParams, list[str]]:
        """The params with their styles merged into the prompts (as A1111 does before generating, so the
        infotext holds the merged prompts); a style name not in styles.csv is a warning."""
        if not params.styles:
            return params, []
        found, missing = self.styles.resolve(params.styles)
        prompt, negative = styles.apply(found, params.prompt, params.negative_prompt)
        warnings = [f"Style {name!r} not found in {', '.join(str(f.name) for f in self.styles.files)}; ignored"
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
        if isinstance(params, Img2ImgParams):
            for image in [*params.init_images, *([params.mask] if params.mask is not None else [])]:
                self.check_input_image(image)

    def check_input_image(self, image: Image.Image) -> None:
        """Refuse (OverLimit) an input image with more pixels than --max-input-megapixels allows (its size is
        known before it is decoded)."""
        if image.width * image.height > self.limits.max_input_pixels:
            raise OverLimit(str(images.too_large(image.width, image.height, self.limits.max_input_pixels)))

    def _submit(self, kind: str, params: GenerationParams, task_id: str | None = None) -> Job:
        self.check_limits(params)
        unstyled_prompt = params.prompt  # for the [prompt_no_styles] file name tag
        params, style_warnings = self.apply_styles(params)
        settings, warnings = self.effective_settings(params.override_settings)
        warnings = style_warnings + warnings
        try:
            choice = samplers.resolve(params.sampler_name, params.scheduler)
            if params.enable_hr and not isinstance(params, Img2ImgParams):
                self._hires_choice(params)
                hires.check_upscaler(params.hr_upscaler)
        except (samplers.UnknownSampler, hires.UnknownUpscaler) as e:
            raise BadRequest(str(e)) from None
        self.check_numbers(params, settings)
        checkpoint = self.resolve_checkpoint(params.override_settings.get("sd_model_checkpoint"))

        def run(job: Job) -> GenerationResult:
            try:
                result = self._generate(job, kind, params, settings, choice, checkpoint, unstyled_prompt)
            except pipeline.NonFiniteInput as e:  # what was asked overflowed: a 4xx naming the values
                raise BadRequest(f"{e} (here: {self._sampler_numbers(params, settings)})") from None
            result.warnings[:0] = warnings
            return result

        return self.queue.submit(kind, run, task_id)

    @staticmethod
    def check_numbers(params: GenerationParams, settings: Settings) -> None:
        """Refuse (BadRequest naming the field) seeds that no generator takes and prompts whose weights
        cannot be encoded, before anything is queued (A1111 fails on them mid-job, or makes NaNs)."""
        problem = rng.seed_problem(params.seed, params.subseed, params.subseed_strength, params.total_images,
                                   settings.eta_noise_seed_delta)
        if problem:
            raise BadRequest(problem)
        texts = [("prompt", extra_networks.parse(params.prompt).text, True, params.steps),
                 ("negative_prompt", params.negative_prompt, False, params.steps)]
        if params.enable_hr and not isinstance(params, Img2ImgParams):
            hr_steps = params.hr_second_pass_steps or params.steps
            texts += [("hr_prompt", extra_networks.parse(params.hr_prompt).text, True, hr_steps),
                      ("hr_negative_prompt", params.hr_negative_prompt, False, hr_steps)]
        for name, text, split, steps in texts:
            problem = prompts.prompt_problem(text, steps, settings.emphasis, split) if text else None
            if problem:
                raise BadRequest(f"{name}: {problem}")

    @staticmethod
    def _sampler_numbers(params: GenerationParams, settings: Settings) -> str:
        """The sampler numbers that differ from their defaults, for a message about values that overflowed."""
        defaults = Settings()
        values = [f"{name}={getattr(settings, name):g}" for name in (
            "sigma_max", "sigma_min", "rho", "eta_ancestral", "eta_ddim", "s_churn", "s_tmin", "s_tmax", "s_noise")
            if getattr(settings, name) != getattr(defaults, name)]
        values += [f"{name}={getattr(params, name):g}" for name in ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise")
                   if getattr(params, name) is not None]
        return ", ".join(values) or "all at their defaults"

    @staticmethod
    def _hires_choice(params: GenerationParams) -> samplers.SamplerChoice:
        """The hires pass's sampler (the first pass's unless hr_sampler_name/hr_scheduler say otherwise)."""
        same = (None, "", "Use same sampler", "Use same scheduler")
        return samplers.resolve(params.sampler_name if params.hr_sampler_name in same else params.hr_sampler_name,
                                params.scheduler if params.hr_scheduler in same else params.hr_scheduler)

    def _infotext(self, params: GenerationParams, model: LoadedModel, choice: samplers.SamplerChoice,
                  settings: Settings, seed: int, extra: dict[str, Any], subseed: int = -1, ensd: bool = False) -> str:
        """A1111's infotext: its fixed keys in its order, then the job's extra keys (img2img's mask keys)."""
        clip_skip = settings.CLIP_stop_at_last_layers
        fields = {
            "Steps": params.steps,
            "Sampler": choice.spec.name,
            "Schedule type": choice.schedule_label,
            "CFG scale": params.cfg_scale,
            "Seed": seed,
            "Size": f"{params.width}x{params.height}",
            "Model hash": model.info.shorthash,
            "Model": model.info.stem,
            "VAE hash": model.vae_sha256[:10] if model.vae_sha256 else None,
            "VAE": model.vae_info.name if model.vae_info else None,
            "Variation seed": subseed if params.subseed_strength > 0 else None,
            "Variation seed strength": params.subseed_strength if params.subseed_strength > 0 else None,
            "Seed resize from": f"{params.seed_resize_from_w}x{params.seed_resize_from_h}"
            if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0 else None,
            "Denoising strength": params.denoising_strength if isinstance(params, Img2ImgParams)
            else (params.denoising_strength or 0.7) if params.enable_hr else None,
            "Conditional mask weight": settings.inpainting_mask_weight if model.config.is_inpainting else None,
            "Clip skip": clip_skip if clip_skip > 1 else None,
            "ENSD": settings.eta_noise_seed_delta if ensd else None,
            "RNG": settings.randn_source if settings.randn_source != "GPU" else None,
            **extra,
            "Emphasis": settings.emphasis if settings.emphasis != "Original" and prompts.emphasis_syntax_in(
                extra_networks.parse(params.prompt).text, params.negative_prompt, params.steps) else None,
            "Version": INFOTEXT_VERSION,
        }
        return infotext.create(params.prompt, params.negative_prompt, fields)

    def _generate(self, job: Job, kind: str, params: GenerationParams, settings: Settings,
                  choice: samplers.SamplerChoice, checkpoint: CheckpointInfo,
                  unstyled_prompt: str | None = None) -> GenerationResult:
        """The job both txt2img and img2img run: load, seed, generate batch by batch, save, describe."""
        requested = "sd_model_checkpoint" in params.override_settings
        model = self._load(checkpoint, settings.sd_vae, remember=not requested,
                           requested="override_settings.sd_model_checkpoint" if requested else None)
        seed, subseed = rng.fix_seed(params.seed), rng.fix_seed(params.subseed)
        seeds, subseeds = rng.batch_seeds(seed, subseed, params.subseed_strength, params.total_images)
        options = pipeline.sampler_options(params, samplers.SamplerOptions(
            eta_ancestral=settings.eta_ancestral, eta_ddim=settings.eta_ddim, s_churn=settings.s_churn,
            s_tmin=settings.s_tmin, s_tmax=settings.s_tmax or float("inf"), s_noise=settings.s_noise,
            sigma_min=settings.sigma_min, sigma_max=settings.sigma_max, rho=settings.rho,
            always_discard_next_to_last_sigma=settings.always_discard_next_to_last_sigma,
            beta_alpha=settings.beta_dist_alpha, beta_beta=settings.beta_dist_beta,
            uni_pc_variant=settings.uni_pc_variant, uni_pc_skip_type=settings.uni_pc_skip_type,
            uni_pc_order=settings.uni_pc_order, uni_pc_lower_order_final=settings.uni_pc_lower_order_final))
        ensd = settings.eta_noise_seed_delta != 0 and samplers.uses_ensd(choice.spec, options)
        result = GenerationResult([], [], [], [], {})
        tags = [] if params.disable_extra_networks else extra_networks.parse(params.prompt).tags
        result.warnings.extend(extra_networks.unsupported_warnings(tags))
        networks = self.models.use_extra_networks(model, [t for t in tags if t.kind in extra_networks.LORA_KINDS])
        result.warnings.extend(networks.warnings)
        optimizations.apply(model, settings.cross_attention_optimization, settings.batch_cond_uncond)
        hooks = pipeline.Hooks(check=job.check)
        common = dict(clip_skip=settings.CLIP_stop_at_last_layers, randn_source=settings.randn_source, hooks=hooks,
                      emphasis=settings.emphasis, subseeds=subseeds if params.subseed_strength > 0 else None,
                      ensd=settings.eta_noise_seed_delta, options=options)
        if isinstance(params, Img2ImgParams):
            self._decode_inputs(params)
            if params.initial_noise_multiplier is None:
                params = params.model_copy(update={"initial_noise_multiplier": settings.initial_noise_multiplier})
            inputs = pipeline.prepare_img2img(model, params, settings.randn_source, settings.img2img_background_color,
                                              settings.img2img_fix_steps, settings.inpainting_mask_weight)
            batches = pipeline.img2img(model, params, seeds, inputs=inputs, **common)
            steps_run, extra, outdir = inputs.steps_run, inputs.fields, settings.outdir_img2img_samples
            result.warnings.extend(inputs.notes)
        else:
            batches = pipeline.txt2img(model, params, seeds, **common)
            steps_run, extra, outdir = params.steps, {}, settings.outdir_txt2img_samples
            if params.enable_hr:
                steps_run += params.hr_second_pass_steps or params.steps
                hr_choice = self._hires_choice(params)
                extra = hires.infotext_fields(params, hr_choice.spec.name, hr_choice.schedule_label)
        extra = {**extra, **samplers.infotext_fields(choice, options, model.alphas_cumprod)}

        state = job.state
        state.job_count, state.sampling_steps = params.n_iter, steps_run
        state.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        namer = self._namer(params, unstyled_prompt, choice, model, settings, seeds, state.job_timestamp)
        # The terminal's view of the whole job (A1111's "Total progress"); silent when not a terminal.
        bar = tqdm(total=params.n_iter * steps_run, desc=kind, unit="step", disable=None, leave=False)

        def on_batch(index: int) -> None:
            state.job_no, state.sampling_step = index, 0

        def on_step(step: int, steps: int, latent) -> None:
            state.sampling_step, state.current_latent = step, latent
            bar.update(state.job_no * steps + step - bar.n)

        hooks.on_batch, hooks.on_step = on_batch, on_step
        save = params.save_images and settings.samples_save
        folder = self.paths.resolve_output_dir(settings.outdir_samples or outdir)
        state.partial = result  # the UI shows the images as they are finished
        try:
            for batch in batches:
                extra = {**extra, **self._network_fields(model, networks)}  # TI hashes are known once encoded
                # A1111 shows an interrupted or skipped batch, and saves it only if asked to
                result.interrupted = result.interrupted or batch.interrupted
                complete = not (batch.interrupted or batch.skipped)
                for image, image_seed in zip(batch.images, batch.seeds):
                    text = self._infotext(params, model, choice, settings, image_seed, extra,
                                          subseeds[len(result.images)], ensd)
                    path = None
                    if save and (complete or settings.save_incomplete_images):
                        path = str(images.save_image(image, folder, text, settings, namer, image_seed,
                                                     index=len(result.images)))
                    image.info["parameters"] = text
                    result.images.append(image)
                    result.seeds.append(image_seed)
                    result.infotexts.append(text)
                    result.paths.append(path)
        except JobInterrupted:
            result.interrupted = True
        finally:
            bar.close()
        extra = {**extra, **self._network_fields(model, networks)}
        # A1111's grid: jobs of more than one image that are saved (the API's save_images)
        if params.save_images and len(result.images) > 1 and (settings.return_grid or settings.grid_save):
            grid = images.image_grid(result.images, params.batch_size, settings.n_rows)
            grid.info["parameters"] = result.infotexts[0]
            if settings.grid_save:
                kind_dir = settings.outdir_img2img_grids if isinstance(params, Img2ImgParams) else \
                    settings.outdir_txt2img_grids
                grid_dir = settings.outdir_grids or kind_dir
                images.save_image(grid, self.paths.resolve_output_dir(grid_dir), result.infotexts[0], settings, namer,
                                  result.seeds[0], grid=True)
            if settings.return_grid:
                result.grid = grid
        if result.infotexts:
            fileio.atomic_write_bytes(self.paths.params_file, result.infotexts[0].encode("utf-8"))
        result.info = self._info(params, model, choice, settings, seed, seeds, result, state.job_timestamp, extra,
                                 subseeds)
        return result

    def _decode_inputs(self, params: Img2ImgParams) -> None:
        """Decode the init images and the mask, which a request sends compressed and which wait in the queue so,
        within the decode budget; BadRequest naming the one whose data turns out to be broken."""
        named = [(f"init_images.{i}", image) for i, image in enumerate(params.init_images)]
        for name, image in named + ([("mask", params.mask)] if params.mask is not None else []):
            try:
                images.load(image, self.decode_budget)
            except images.InvalidImage as e:
                raise BadRequest(f"{name}: {e}") from None

    @staticmethod
    def _namer(params: GenerationParams, unstyled_prompt: str | None, choice: samplers.SamplerChoice,
               model: LoadedModel, settings: Settings, seeds: list[int], timestamp: str) -> filenames.FileNamer:
        """What the job's file and folder name patterns can use ([seed], [model_name], [scheduler], ...)."""
        if isinstance(params, Img2ImgParams):
            denoising = params.denoising_strength
        else:
            denoising = (params.denoising_strength or 0.7) if params.enable_hr else None
        # A1111's [scheduler]: the requested schedule, or the sampler's own preset when Automatic
        schedule = (choice.spec.preset_schedule or "Automatic") if choice.schedule == "automatic" \
            else choice.schedule_label
        return filenames.FileNamer(
            prompt=params.prompt, negative_prompt=params.negative_prompt, prompt_no_styles=unstyled_prompt,
            styles=list(params.styles), seeds=seeds, steps=params.steps, cfg_scale=params.cfg_scale,
            sampler=choice.spec.name, scheduler=schedule.capitalize(), model_name=model.info.stem,
            model_hash=model.info.shorthash, vae_filename=model.vae_info.name if model.vae_info else None,
            clip_skip=settings.CLIP_stop_at_last_layers, denoising_strength=denoising,
            batch_size=params.batch_size, n_iter=params.n_iter, job_timestamp=timestamp,
            max_prompt_words=settings.directories_max_prompt_words)

    def _network_fields(self, model: LoadedModel, networks: ExtraNetworksUse) -> dict[str, str | None]:
        """A1111's `Lora hashes` and `TI hashes` infotext values (None when there are none)."""
        ti = [f"{name}: {self.models.embeddings.short_hash(emb)}" for name, emb in model.text.embeddings_used.items()]
        lora_hashes = [f"{name}: {short}" for name, short in networks.lora_hashes]
        return {"Lora hashes": ", ".join(lora_hashes) or None, "TI hashes": ", ".join(ti) or None}

    def _info(self, params: GenerationParams, model: LoadedModel, choice: samplers.SamplerChoice,
              settings: Settings, seed: int, seeds: list[int], result: GenerationResult, timestamp: str,
              extra: dict[str, Any], subseeds: list[int] | None = None) -> dict:
        """The `info` object of A1111's API response (`Processed.js()`)."""
        n = params.total_images
        img2img = isinstance(params, Img2ImgParams)
        extra_params = {"Schedule type": choice.schedule_label}
        if img2img:
            extra_params["Denoising strength"] = params.denoising_strength
        extra_params.update({k: v for k, v in extra.items() if v is not None})
        return {
            "prompt": params.prompt, "all_prompts": [params.prompt] * n,
            "negative_prompt": params.negative_prompt, "all_negative_prompts": [params.negative_prompt] * n,
            "seed": seed, "all_seeds": seeds, "subseed": subseeds[0] if subseeds else -1,
            "all_subseeds": subseeds or [-1] * n, "subseed_strength": params.subseed_strength,
            "width": params.width, "height": params.height, "sampler_name": choice.spec.name,
            "cfg_scale": params.cfg_scale, "steps": params.steps, "batch_size": params.batch_size,
            "restore_faces": False, "face_restoration_model": None,
            "sd_model_name": model.info.stem, "sd_model_hash": model.info.shorthash,
            "sd_vae_name": model.vae_info.name if model.vae_info else None,
            "sd_vae_hash": model.vae_sha256[:10] if model.vae_sha256 else None,
            "seed_resize_from_w": params.seed_resize_from_w, "seed_resize_from_h": params.seed_resize_from_h,
            "denoising_strength": params.denoising_strength if img2img else None,
            "extra_generation_params": extra_params,
            "index_of_first_image": 0, "infotexts": result.infotexts, "styles": list(params.styles),
            "job_timestamp": timestamp, "clip_skip": settings.CLIP_stop_at_last_layers,
            "is_using_inpainting_conditioning": model.config.is_inpainting, "version": INFOTEXT_VERSION,
            "interrupted": result.interrupted, "warnings": result.warnings,
        }
