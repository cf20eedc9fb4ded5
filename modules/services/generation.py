"""txt2img and img2img jobs: a request accepted (see requests), queued, then run: the model loaded, the
prompt's networks applied, the pipeline's batches described, saved and shown as they finish."""

from __future__ import annotations

import dataclasses
import datetime
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

from PIL import Image
from tqdm import tqdm

from modules import devices, filenames, images, prompt_syntax
from modules.generation import color_correction, extra_networks, masking, memory, pipeline
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.generation.vae_tiling import VaeTiling
from modules.jobs import Job, JobInterrupted, JobQueue, JobSkipped, JobState, JobStopped
from modules.models import depth, optimizations, taesd
from modules.models.manager import ExtraNetworksUse, LoadedModel, ModelManager
from modules.models.registry import CheckpointInfo
from modules.services import describe, output
from modules.services.checkpoints import CheckpointService
from modules.services.errors import BadRequest
from modules.services.output import OutputWriter, Write
from modules.services.requests import Accepted, RequestResolver, sampler_numbers
from modules.services.upscalers import UpscalerService

log = logging.getLogger(__name__)


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
    namer: filenames.FileNamer | None = None  # what the job's file names say (a script names its grid with it)
    skipped: bool = False  # a batch of it was skipped: its images are shown as far as they got, not saved
    # it stopped between images, as asked (Interrupt with interrupt_after_current): fewer images, none partial
    stopped: bool = False


@dataclass
class RemoteOutcome:
    """What a replica gives back for one job: its result, and the files the front is to write for it."""
    result: GenerationResult
    writes: list[Write]


class RemoteGeneration(Protocol):
    """Runs accepted generation jobs elsewhere (modules/cluster: Ray Serve replicas). `run` blocks until the job
    has ended, keeps `job.state` up to date and passes on its interrupt and skip; it raises what the job raised."""

    def run(self, job: Job, accepted: Accepted) -> RemoteOutcome: ...


@dataclass
class _Run:
    """One job while it runs: what it was asked, what it runs on, what it has made so far."""
    job: Job
    accepted: Accepted
    model: LoadedModel
    record: describe.JobRecord
    networks: ExtraNetworksUse
    result: GenerationResult
    extra: dict[str, Any]  # the job's own infotext keys (img2img's mask keys, hires, sampler options, networks)
    namer: filenames.FileNamer | None = None
    refiner: CheckpointInfo | None = None  # the refiner the job switched to, if it did
    hires: CheckpointInfo | None = None  # the Hires checkpoint the job loaded, if it did
    depth_map: Any = None  # the SD 2 depth model's map (a PIL image), when the setting shows it
    script: bool = False  # a part of a script's job: its results are the script's cells (no mask pictures in them)
    peak_bytes: int = 0  # the job's estimated peak beside its model (see _fit_memory): a refiner's load keeps room
    # inpainting's mask pictures to show after the image of each index (settings return_mask, _composite)
    after: dict[int, list[tuple[Any, str | None]]] = dataclasses.field(default_factory=dict)

    @property
    def params(self) -> GenerationParams:
        return self.accepted.ctx.params


class GenerationService:
    def __init__(self, requests: RequestResolver, checkpoints: CheckpointService, models: ModelManager,
                 queue: JobQueue, output: OutputWriter, decode_budget: images.DecodeBudget,
                 upscalers: UpscalerService):
        self._requests = requests
        self._upscalers = upscalers
        self._checkpoints = checkpoints
        self._models = models
        self._queue = queue
        self._output = output
        self._decode_budget = decode_budget
        # Set when a cluster of replicas runs the generation jobs (modules/cluster): the queue's jobs then
        # only wait here for a replica's answer, and write its files.
        self.remote: RemoteGeneration | None = None

    def submit(self, kind: str, params: GenerationParams, task_id: str | None = None,
               client: str | None = None) -> Job:
        """Check the request (raising BadRequest at once) and queue it; the job's result is a GenerationResult.
        `task_id`: A1111's force_task_id (what /internal/progress knows the job by); `client`: who asked (its
        jobs are answered in the order it submitted them, see JobQueue)."""
        if kind == "img2img" and not isinstance(params, Img2ImgParams):
            raise BadRequest("img2img needs Img2ImgParams (init_images, denoising_strength, ...)")
        accepted = self._requests.accept(kind, params)
        remote = self.remote

        def run(job: Job) -> GenerationResult:
            if remote is None:
                return self.run_accepted(job, accepted)
            outcome = remote.run(job, accepted)  # on a replica, which records the files it would write
            outcome.result.paths = output.replay(self._output, outcome.writes, outcome.result.paths)
            return outcome.result

        return self._queue.submit(kind, run, task_id, remote=remote is not None, client=client)

    def run_accepted(self, job: Job, accepted: Accepted) -> GenerationResult:
        """Run an accepted request as `job` in this process (a cluster replica calls this for the front)."""
        return self._run_told(job, accepted)

    def run_part(self, job: Job, accepted: Accepted, part: int, parts: int) -> GenerationResult:
        """Run an accepted request inside `job`, a script's job (modules/services/scripts), as its part `part`
        of `parts`: the job's one progress bar goes over all of them. An interrupt ends the part with what it
        has made (`interrupted`); the script stops there."""
        return self._run_told(job, accepted, (part, parts), script=True)

    def _run_told(self, job: Job, accepted: Accepted, part: tuple[int, int] = (0, 1), script: bool = False
                  ) -> GenerationResult:
        """_run, with what the request itself got wrong turned into BadRequest (a 4xx naming it) and the warnings
        of its acceptance put first."""
        try:
            result = self._run(job, accepted, part, script)
        except pipeline.NonFiniteInput as e:  # what was asked overflowed: a 4xx naming the values
            raise BadRequest(f"{e} (here: {sampler_numbers(accepted.ctx.params, accepted.settings)})") from None
        except pipeline.RefinerMismatch as e:
            raise BadRequest(f"refiner_checkpoint: {e}") from None
        except (taesd.TaesdMissing, depth.DepthModelMissing, pipeline.NeedsInitImage,
                color_correction.ColorCorrectionUnavailable) as e:
            raise BadRequest(str(e)) from None  # a file that went away, a library missing, the wrong job
        result.warnings[:0] = accepted.warnings
        return result

    # --- the job -----------------------------------------------------------------------------------
    def _run(self, job: Job, accepted: Accepted, part: tuple[int, int] = (0, 1), script: bool = False
             ) -> GenerationResult:
        run = self._start(job, accepted)
        run.script = script
        try:
            self._fit_memory(run)
            hooks = pipeline.Hooks(check=job.check, taesd=self._checkpoints.taesd,
                                   depth_estimator=self._checkpoints.depth_estimator,
                                   upscale=self._upscalers.resize(job, accepted.settings))
            self._model_hooks(run, hooks)
            self._hires_networks_hook(run, hooks)
            try:  # img2img's inputs are prepared here: a model upscaler (upscaler_for_img2img) stops between tiles
                batches, steps_run = self._batches(run, hooks)
            except (JobInterrupted, JobSkipped):
                run.result.interrupted = True
                return self._finish(run)
            bar = self._show_progress(run, hooks, steps_run, part)
            try:
                self._collect(run, batches)
            except JobStopped:
                run.result.stopped = True
            except JobInterrupted:
                run.result.interrupted = True
            finally:
                bar.close()
            return self._finish(run)
        finally:  # what the job freed goes back to the system: an idle server does not keep a job's peak
            devices.empty_cache(run.model.device)

    def _start(self, job: Job, accepted: Accepted) -> _Run:
        """Load the model, apply the prompt's networks and the attention settings."""
        result = GenerationResult([], [], [], [], {})
        params = accepted.ctx.params
        tags = [] if params.disable_extra_networks else extra_networks.parse(params.prompt).tags
        result.warnings.extend(extra_networks.unsupported_warnings(tags))
        if accepted.ctx.tiling and accepted.ctx.vae_decode_method == "TAESD":
            result.warnings.append("Tiling: TAESD decodes with zero padding (as in A1111), so the picture's edges "
                                   "may not meet; set the VAE decoder (sd_vae_decode_method) to Full")
        model, networks = self._ready(accepted, accepted.checkpoint, result, not accepted.checkpoint_requested,
                                      accepted.checkpoint_field, state=job.state)
        record = describe.JobRecord(accepted.ctx, accepted.settings, describe.ModelFacts.of(model),
                                    accepted.unstyled_prompt)
        return _Run(job, accepted, model, record, networks, result, {})

    def _fit_memory(self, run: _Run) -> None:
        """Before sampling: the job's estimated peak (generation/memory.py), its prompts' conditioning included,
        against what the device has free now (the model loaded), or what --memory-limit leaves. A model in
        low-memory mode decodes in small tiles (Auto: always, at most LOW_MEMORY_TILE). A job that fits only
        with the tiled VAE runs with it and says so; one that fits in no way is refused (BadRequest) with what
        would fit."""
        ctx = run.accepted.ctx
        if run.model.low_memory and ctx.vae_tiling.mode == "Auto":  # its decode at 512x512 doubles its peak
            tiling = VaeTiling("Always", min(ctx.vae_tiling.tile, memory.LOW_MEMORY_TILE))
            run.accepted = dataclasses.replace(run.accepted, ctx=dataclasses.replace(ctx, vae_tiling=tiling))
        while True:
            device = run.model.device
            free = devices.free_memory(device)
            limit, limit_note = self._requests.limits.memory_limit_bytes, ""
            if limit is not None:
                left = max(0, limit - devices.process_memory(device))
                if free is None or left < free:
                    free, limit_note = left, f" of the {memory.gib(limit)} --memory-limit allows"
            if free is None:  # MPS: not known
                return
            # the checkpoints kept loaded beside this one (sd_checkpoints_limit) are a cache: given up before the
            # job is refused, or made to fit with tiles or swap space
            try:
                fitted = memory.fit(run.accepted.ctx, memory.ModelMemory.of(run.model), free,
                                    0 if limit_note else devices.free_swap(device), limit_note,
                                    text_memory(run.accepted.ctx, run.model.text))
            except memory.NotEnoughMemory as e:
                if not self._checkpoints.release_kept(device):
                    raise BadRequest(str(e)) from None
                log.info("Released the checkpoints kept loaded: this job needs their memory")
                continue
            if not (fitted.tiled_to_fit or fitted.swaps) or not self._checkpoints.release_kept(device):
                break
            log.info("Released the checkpoints kept loaded: this job needs their memory to run as asked")
        run.peak_bytes = fitted.peak.bytes
        if fitted.tiled_to_fit:
            ctx = dataclasses.replace(run.accepted.ctx, vae_tiling=fitted.tiling)
            run.accepted = dataclasses.replace(run.accepted, ctx=ctx)
        note = fitted.note()
        if note:
            run.result.warnings.append(note)

    def _ready(self, accepted: Accepted, info, result: GenerationResult, remember: bool = False,
               requested: str | None = None, switch: bool = False, state: JobState | None = None,
               reserve: int = 0) -> tuple[LoadedModel, ExtraNetworksUse]:
        """Load `info` (the job's checkpoint, or its refiner: `switch`, which releases the model in use first so
        the two never share the memory, unless sd_checkpoints_limit keeps both) and make it ready for the job: the
        prompt's networks, the attention settings, the family's settings, the U-Net backend. New warnings go to
        `result`; what a one-time step (the OpenVINO conversion) is doing goes to `state.textinfo`. `reserve`: the
        job's estimated peak, which a switch keeping the other model must leave room for."""
        settings, params = accepted.settings, accepted.ctx.params
        model = self._checkpoints.load_now(info, settings.sd_vae, remember=remember, requested=requested,
                                           release_first=switch, settings=settings, reserve=reserve)
        tags = [] if params.disable_extra_networks else extra_networks.parse(params.prompt).tags
        networks = self._use_networks(model, tags, result)
        if model.vae_warning and model.vae_warning not in result.warnings:
            result.warnings.append(model.vae_warning)
        optimizations.apply(model, settings.cross_attention_optimization, settings.batch_cond_uncond)
        model.text.use_settings(settings)
        model.use_tiling(accepted.ctx.tiling)  # before the backend: OpenVINO's converted U-Net cannot wrap around
        def progress(text: str | None) -> None:
            if state is not None:
                state.textinfo = text

        ctx = accepted.ctx
        # SDXL has no transformer at the latent's size, so nothing merges there: OpenVINO may still run it
        merging = bool(ctx.token_merging or ctx.token_merging_hr) and not model.family.name.startswith("sdxl")
        note = self._models.use_unet_backend(model, settings.unet_backend, progress, merging=merging)
        progress(None)
        if note and note not in result.warnings:
            result.warnings.append(note)
        return model, networks

    def _use_networks(self, model: LoadedModel, tags: list, result: GenerationResult) -> ExtraNetworksUse:
        """The LoRA and hypernetworks `tags` name, applied to `model` (in place of those it had); their warnings go
        to `result`, each once (a model loaded again for each batch says it once)."""
        networks = self._models.use_extra_networks(model, [t for t in tags if t.kind in extra_networks.LORA_KINDS],
                                                   [t for t in tags if t.kind in extra_networks.HYPERNET_KINDS])
        for warning in networks.warnings:
            if warning not in result.warnings:
                result.warnings.append(warning)
        return networks

    def _hires_networks_hook(self, run: _Run, hooks: pipeline.Hooks) -> None:
        """A Hires. fix job whose hires prompt names other networks than its prompt: A1111 activates the hires
        prompt's for the second pass (sample_hr_pass) and the prompt's again for the next batch. Their hashes join
        the infotext's (A1111 writes the last pass's there; both, so that a paste finds every file)."""
        ctx = run.accepted.ctx
        params = ctx.params
        if not ctx.hires or params.disable_extra_networks:
            return
        kinds = (*extra_networks.LORA_KINDS, *extra_networks.HYPERNET_KINDS)
        first, second = ([t for t in extra_networks.parse(text).tags if t.kind in kinds]
                         for text in (params.prompt, params.hr_prompt or params.prompt))
        if [(t.kind, t.args) for t in first] == [(t.kind, t.args) for t in second]:
            return

        def use(model: LoadedModel, hires: bool) -> None:
            networks = self._use_networks(model, second if hires else first, run.result)
            for name in ("lora_hashes", "hypernet_hashes"):
                known = getattr(run.networks, name)
                known.extend(h for h in getattr(networks, name) if h not in known)

        hooks.hires_networks = use

    def _model_hooks(self, run: _Run, hooks: pipeline.Hooks) -> None:
        """A job with a refiner or a Hires checkpoint: how the pipeline loads it, and the job's own model again
        (see RefinerSwitch, _Models.for_hires). The refiner's infotext keys are added once it has been switched to,
        as A1111 adds them."""
        accepted = run.accepted
        refiner = accepted.refiner is not None and accepted.ctx.refiner is not None
        if not refiner and accepted.hires_checkpoint is None:
            return

        def load_refiner() -> LoadedModel:
            model, _ = self._ready(accepted, accepted.refiner, run.result, requested="refiner_checkpoint",
                                   switch=True, state=run.job.state, reserve=run.peak_bytes)
            run.refiner = model.info  # its infotext keys: see _with_model_hashes, before each batch is described
            return model

        def load_hires() -> LoadedModel:
            model, _ = self._ready(accepted, accepted.hires_checkpoint, run.result, requested="hr_checkpoint_name",
                                   switch=True, state=run.job.state, reserve=run.peak_bytes)
            run.hires = model.info
            return model

        def load_base() -> LoadedModel:
            return self._ready(accepted, accepted.checkpoint, run.result, requested=accepted.checkpoint_field,
                               switch=True, state=run.job.state, reserve=run.peak_bytes)[0]

        hooks.load_base = load_base
        if refiner:
            hooks.load_refiner = load_refiner
        if accepted.hires_checkpoint is not None:
            hooks.load_hires = load_hires

    def _batches(self, run: _Run, hooks: pipeline.Hooks) -> tuple[Iterator[pipeline.BatchOutput], int]:
        """The pipeline's batches for the job and the sampler steps each runs."""
        ctx = run.accepted.ctx
        if ctx.is_img2img:
            self._decode_inputs(ctx.params)
            init_hash = self._save_init_images(ctx.params, run.accepted.settings)
            inputs = pipeline.prepare_img2img(run.model, ctx, hooks)
            batches, steps_run, extra = pipeline.img2img(run.model, ctx, hooks, inputs=inputs), inputs.steps_run, \
                {**inputs.fields, "Init image hash": init_hash}
            run.result.warnings.extend(inputs.notes)
            if inputs.depth_map is not None and run.accepted.settings.depth_map_show:
                run.depth_map = inputs.depth_map
        else:
            if ctx.firstpass:
                self._decode_inputs(ctx.params)
            batches, steps_run, extra = pipeline.txt2img(run.model, ctx, hooks), ctx.steps_run, {}
        run.extra = {**dict(ctx.script_fields), **extra,
                     **describe.sampler_fields(run.record, run.model.alphas_cumprod), **ctx.vae_fields()}
        return batches, steps_run

    def _show_progress(self, run: _Run, hooks: pipeline.Hooks, steps_run: int, part: tuple[int, int]) -> tqdm:
        """Progress on the job's state (the page and /progress read it) and, in a terminal, a bar over the whole
        job (A1111's "Total progress"). A script's part `part[0]` of `part[1]` counts its batches after those of
        the parts before it (all parts are taken to have as many batches)."""
        state: JobState = run.job.state
        index, parts = part
        first = index * run.params.n_iter
        state.job_count, state.sampling_steps = parts * run.params.n_iter, steps_run
        state.job_no, state.sampling_step = first, 0
        if index == 0 or not state.job_timestamp:
            state.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        run.namer = run.result.namer = describe.file_namer(run.record, state.job_timestamp)
        bar = tqdm(total=run.params.n_iter * steps_run, desc=run.accepted.kind, unit="step", disable=None,
                   leave=False)

        def on_batch(index: int) -> None:
            if index > 0 and state.stopping:  # asked to stop once the image it was making was done
                raise JobStopped()
            state.job_no, state.sampling_step = first + index, 0

        settings = run.accepted.settings
        every = slice(None) if settings.show_progress_grid else slice(0, 1)  # the batch's previews, or the first's

        shown = []  # the step's prediction live_preview_content names (on_preview comes just before on_step)

        def on_step(step: int, steps: int, latent) -> None:
            # the step and its preview together: a poll in between would draw the wrong one for the whole step
            state.sampling_step, state.current_latent = step, (shown.pop() if shown else latent)[every]
            bar.update((state.job_no - first) * steps + step - bar.n)

        def on_preview(latent) -> None:
            shown[:] = [latent]

        hooks.on_batch, hooks.on_step = on_batch, on_step
        if settings.live_previews_enable and settings.live_preview_content != "Combined":
            hooks.preview, hooks.on_preview = settings.live_preview_content, on_preview
        state.partial = run.result  # the UI shows the images as they are finished
        return bar

    def _collect(self, run: _Run, batches: Iterator[pipeline.BatchOutput]) -> None:
        """Describe, save and keep each image as its batch finishes."""
        ctx, settings, result = run.accepted.ctx, run.accepted.settings, run.result
        save = ctx.params.save_images and settings.samples_save
        for batch in batches:
            self._with_model_hashes(run)
            run.extra = {**run.extra, **self._network_fields(run.model, run.networks, settings)}  # TI: once encoded
            if batch.vae_tiled:
                run.extra[pipeline.VAE_TILING_KEY] = True
            if batch.fields:  # keys sampling called for (A1111 adds them then: after the sampler's, before the VAE's)
                vae = ctx.vae_fields()
                run.extra = {**{k: v for k, v in run.extra.items() if k not in vae}, **batch.fields,
                             **{k: v for k, v in run.extra.items() if k in vae}}
            # A1111 shows an interrupted or skipped batch, and saves it only if asked to
            result.interrupted = result.interrupted or batch.interrupted
            result.skipped = result.skipped or batch.skipped
            complete = not (batch.interrupted or batch.skipped)
            first = len(result.images)
            texts = [describe.image_infotext(run.record, image_seed, ctx.subseeds[first + k], run.extra)
                     for k, image_seed in enumerate(batch.seeds[:len(batch.images)])]
            if save and batch.before_hires is not None:  # the first passes, saved before the images as in A1111
                for k, picture in enumerate(batch.before_hires[:len(texts)]):
                    self._output.image(picture, texts[k], settings, run.namer, batch.seeds[k], first + k, False,
                                       suffix="-before-highres-fix")
            for k, (image, image_seed) in enumerate(zip(batch.images, batch.seeds)):
                index, text = first + k, texts[k]
                path = None
                if save and (complete or settings.save_incomplete_images):
                    if batch.before_correction is not None and settings.save_images_before_color_correction:
                        self._output.image(batch.before_correction[k], text, settings, run.namer, image_seed, index,
                                           True, suffix="-before-color-correction")  # first, as A1111 saves it
                    path = str(self._output.image(image, text, settings, run.namer, image_seed, index,
                                                  ctx.is_img2img))
                image.info["parameters"] = text
                result.images.append(image)
                result.seeds.append(image_seed)
                result.infotexts.append(text)
                result.paths.append(path)
                if batch.overlaid is not None:
                    self._mask_pictures(run, batch.overlaid[k], index, text, image_seed, path is not None)

    def _mask_pictures(self, run: _Run, parts: masking.Overlaid, index: int, text: str, seed: int, save: bool
                       ) -> None:
        """A1111's mask pictures of an inpainted image: the greyscale mask and the masked composite, saved after it
        (NNNNN-SEED-mask.png, -mask-composite.png: settings save_mask, save_mask_composite) and shown after it
        (return_mask, return_mask_composite; not in a script's cells, which are its images)."""
        settings = run.accepted.settings
        for picture, wanted_saved, wanted_shown, suffix in (
                (parts.mask_image, settings.save_mask, settings.return_mask, "-mask"),
                (parts.composite, settings.save_mask_composite, settings.return_mask_composite, "-mask-composite")):
            shown = wanted_shown and not run.script
            if not (save and wanted_saved) and not shown:
                continue
            image = picture()
            path = str(self._output.image(image, text, settings, run.namer, seed, index, True, suffix=suffix)) \
                if save and wanted_saved else None
            if shown:
                image.info["parameters"] = text
                run.after.setdefault(index, []).append((image, path))

    def _finish(self, run: _Run) -> GenerationResult:
        """The grid, params.txt and the API's info."""
        ctx, settings, result = run.accepted.ctx, run.accepted.settings, run.result
        self._with_model_hashes(run, wait=False)  # a job stopped before its first image does not wait
        run.extra = {**run.extra, **self._network_fields(run.model, run.networks, settings)}
        # A1111's grid: jobs of more than one image (grid_only_if_multiple; off, of one too) that are saved (the
        # API's save_images)
        wanted = len(result.images) > 1 or (len(result.images) == 1 and not settings.grid_only_if_multiple)
        if ctx.params.save_images and wanted and (settings.return_grid or settings.grid_save):
            grid = images.image_grid(result.images, ctx.params.batch_size, settings.n_rows)
            grid.info["parameters"] = result.infotexts[0]
            if settings.grid_save:
                self._output.grid(grid, result.infotexts[0], settings, run.namer, result.seeds[0], ctx.is_img2img)
            if settings.return_grid:
                result.grid = grid
        if run.after:  # the mask pictures, each after its image (not in the grid)
            self._interleave(run)
        if run.depth_map is not None and result.images:  # the depth model's map, after the images (a setting)
            self._add_depth_map(run)
        if result.infotexts:
            self._output.last_parameters(result.infotexts[0])
        result.info = describe.api_info(run.record, result.infotexts, run.job.state.job_timestamp, run.extra,
                                        result.interrupted, result.warnings)
        return result

    @staticmethod
    def _interleave(run: _Run) -> None:
        result = run.result
        lists = (result.images, result.seeds, result.infotexts, result.paths)
        rows = list(zip(*lists))
        for values in lists:
            values.clear()
        for index, row in enumerate(rows):
            for extra in [row] + [(image, row[1], row[2], path) for image, path in run.after.get(index, [])]:
                for values, value in zip(lists, extra):
                    values.append(value)

    def _add_depth_map(self, run: _Run) -> None:
        """The SD 2 depth model's depth map as one more result (with the first image's seed and infotext), saved
        beside the images as depth-NNNN-SEED.png when they are saved."""
        ctx, settings, result = run.accepted.ctx, run.accepted.settings, run.result
        picture, text, seed = run.depth_map, result.infotexts[0], result.seeds[0]
        path = None
        if ctx.params.save_images and settings.samples_save:
            path = str(self._output.image(picture, text, settings, run.namer, seed, len(result.images), True,
                                          basename="depth"))
        picture.info["parameters"] = text
        result.images.append(picture)
        result.seeds.append(seed)
        result.infotexts.append(text)
        result.paths.append(path)

    def _with_model_hashes(self, run: _Run, wait: bool = True) -> None:
        """Put the checkpoint's hash (and the refiner's) into the job's record before an image is described. A
        model loads without waiting for its file's SHA-256, which is computed in the background while the job
        samples; if it is not done by the time the first batch is (a large file, few steps), wait for it here
        (the console shows the hash's progress bar, the page the job's line)."""
        state, settings = run.job.state, run.accepted.settings
        # the job's own hash is waited for only where it is written (not with add_model_hash_to_info off)
        own = settings.add_model_hash_to_info or "Hires checkpoint" in run.extra or "[model_hash]" in \
            (settings.samples_filename_pattern + settings.directories_filename_pattern).lower()
        for info in (i for i in (run.model.info if own else None, run.refiner, run.hires)
                     if wait and i is not None and not i.sha256):
            task = self._checkpoints.hash_later(info)
            if not task.done:
                state.textinfo = f"Calculating the hash of {info.name}"
                task.wait()
                state.textinfo = None
        facts = run.record.model
        if facts.shorthash != run.model.info.shorthash:
            run.record = dataclasses.replace(run.record,
                                             model=dataclasses.replace(facts, shorthash=run.model.info.shorthash))
            run.namer = run.result.namer = describe.file_namer(run.record, state.job_timestamp)
        if run.refiner is not None and run.accepted.ctx.refiner is not None:
            run.extra.update(run.accepted.ctx.refiner.fields(run.refiner.short_title, run.accepted.ctx.hires))
        if "Hires checkpoint" in run.extra:  # "NAME [hash]" of the model the hires pass ran on (or the job's own)
            hires_info = run.hires if run.accepted.hires_checkpoint is not None else run.model.info
            run.extra["Hires checkpoint"] = hires_info.short_title if hires_info is not None else None

    def _save_init_images(self, params, settings) -> str | None:
        """save_init_img: each init image saved as it was given (A1111 names it by the MD5 of its pixels); the last
        one's hash, which A1111's infotext gives as `Init image hash` (None when the setting is off)."""
        if not settings.save_init_img:
            return None
        digest = None
        for image in params.init_images:
            digest = images.pixels_md5(image)
            self._output.init_image(image, digest, settings)
        return digest

    def _decode_inputs(self, params: GenerationParams) -> None:
        """Decode the init images, the masks and a given first pass, which a request sends compressed and which
        wait in the queue so, within the decode budget; BadRequest naming the one whose data turns out to be
        broken."""
        named = [(f"init_images.{i}", image) for i, image in enumerate(getattr(params, "init_images", []))]
        named += [(name, getattr(params, name)) for name in ("mask", "latent_mask", "firstpass_image")
                  if getattr(params, name, None) is not None]
        for name, image in named:
            try:
                images.load(image, self._decode_budget)
            except images.InvalidImage as e:
                raise BadRequest(f"{name}: {e}") from None

    def _network_fields(self, model: LoadedModel, networks: ExtraNetworksUse, settings) -> dict[str, str | None]:
        """A1111's `Lora hashes`, `Hypernetwork hashes` and `TI hashes` infotext values (None when there are none, or
        when the settings lora_add_hashes_to_infotext / textual_inversion_add_hashes_to_infotext leave them out)."""
        ti = [f"{name}: {self._models.embeddings.short_hash(emb)}" for name, emb in model.text.embeddings_used.items()
              if settings.textual_inversion_add_hashes_to_infotext]
        lora_hashes = [f"{name}: {short}" for name, short in networks.lora_hashes
                       if settings.lora_add_hashes_to_infotext]
        hypernet_hashes = [f"{name}: {short}" for name, short in networks.hypernet_hashes]
        return {"Lora hashes": ", ".join(lora_hashes) or None,
                "Hypernetwork hashes": ", ".join(hypernet_hashes) or None, "TI hashes": ", ".join(ti) or None}


def text_memory(ctx, text) -> memory.TextMemory:
    """The conditioning a job holds (memory.TextMemory), counted by its text encoder `text` from the prompts'
    tokens: the first pass's, and the Hires. fix pass's, encoded while the first pass's is still held. (A
    refiner's, encoded by its own model after the base is released, is not counted.)"""
    params = ctx.params
    passes = [(extra_networks.parse(params.prompt).text, params.negative_prompt, ctx.timeline())]
    if ctx.hires:
        passes.append((extra_networks.parse(params.hr_prompt or params.prompt).text,
                       params.hr_negative_prompt or params.negative_prompt, ctx.hires_timeline()))
    counted = [text.context_positions(prompt, negative, steps, ctx.emphasis) for prompt, negative, steps in passes]
    parts = max(len(prompt_syntax.split_and(prompt)) for prompt, _, _ in passes)
    return memory.TextMemory(sum(n for n, _ in counted), max(longest for _, longest in counted), text.width, parts)
