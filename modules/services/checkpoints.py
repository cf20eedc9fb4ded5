"""Which checkpoint a request means, and loading it: through the queue, so a running job finishes first."""

from __future__ import annotations

import logging

import torch

from modules.hashing import HashTask
from modules.jobs import Job, JobQueue
from modules.models.checkpoint_file import CheckpointError, NotEnoughMemory
from modules.models.manager import LoadedModel, ModelManager
from modules.models.registry import CheckpointInfo, VaeInfo
from modules.services.errors import BadRequest, UnusableCheckpoint
from modules.settings import Settings, SettingsStore

log = logging.getLogger(__name__)


class CheckpointService:
    def __init__(self, settings: SettingsStore, models: ModelManager, queue: JobQueue, add_folder: str,
                 low_memory_flag: str = "Off"):
        self._settings = settings
        self._models = models
        self._queue = queue
        self._add_folder = add_folder  # named in the message when there is no checkpoint at all
        self.low_memory_flag = low_memory_flag  # --lowram/--medvram/--lowvram: On; --medvram-sdxl: SDXL only
        self.startup_error: str | None = None  # why the start-up model did not load (shown on the page)
        # False when cluster replicas run the generation jobs (modules/cluster): selecting a checkpoint then only
        # names it, and each replica loads what its jobs ask for.
        self.loads_here = True

    # --- what there is -----------------------------------------------------------------------
    def list(self) -> list[CheckpointInfo]:
        return self._models.checkpoints.list()

    def find(self, query: str) -> CheckpointInfo | None:
        return self._models.checkpoints.find(query)

    def refresh(self) -> list[CheckpointInfo]:
        return self._models.checkpoints.refresh()

    def ensure_hash(self, info: CheckpointInfo) -> str:
        """The file's SHA-256 (read once, then cached), which `find` also matches."""
        return self._models.checkpoints.ensure_hash(info)

    def hash_later(self, info: CheckpointInfo) -> HashTask:
        """The file's SHA-256 in the background (done at once when known): what a loaded model's infotext waits
        for, and what the page shows the progress of."""
        return self._models.checkpoints.hash_later(info)

    def vaes(self) -> list[VaeInfo]:
        return self._models.vaes.list()

    def refresh_vaes(self) -> list[VaeInfo]:
        return self._models.vaes.refresh()

    def default_size(self, info: CheckpointInfo) -> tuple[int, int]:
        """(width, height) the checkpoint's family was trained at (SDXL 1024x1024), known without loading it."""
        return self._models.default_size(info)

    def family_name(self, info: CheckpointInfo) -> str | None:
        """The checkpoint's family ("sd1", "sd2", "sdxl", ...), known without loading it; None when the file does
        not say (a .ckpt)."""
        config = self._models.config_of(info)
        return config.family.name if config else None

    def taesd_missing(self, info: CheckpointInfo, part: str) -> str | None:
        """Why a job on `info` could not use TAESD's `part` ("decoder" / "encoder"): the file it needs and the
        folder, or None when it is there or the model's kind is not known before loading (a .ckpt)."""
        config = self._models.config_of(info)
        if config is None:
            return None
        return self._models.taesd.missing_message(config.family.vae_kind, part)

    def taesd_preview_decoder(self):
        """The TAESD decoder for the loaded model's live previews, or None (no model, or its file absent: said
        once in the log)."""
        model = self.current
        if model is None:
            return None
        return self._models.taesd.preview_decoder(model.config.family.vae_kind, model.device)

    def taesd(self, model: LoadedModel, part: str):
        """TAESD's decoder or encoder for `model` (taesd.TaesdMissing naming the file when it is absent)."""
        return self._models.taesd.get(model.config.family.vae_kind, part, model.device)

    def depth_estimator(self, model: LoadedModel):
        """An SD 2 depth model's MiDaS (depth.DepthModelMissing naming the file when it has none)."""
        return self._models.depth_estimator(model)

    @property
    def current(self) -> LoadedModel | None:
        """The loaded model, if any."""
        return self._models.current

    def kept_models(self) -> list[LoadedModel]:
        """The models kept loaded beside the current one (sd_checkpoints_limit), least recently used first."""
        return list(self._models.kept)

    def release_kept(self, on: torch.device) -> int:
        """Release the models kept loaded beside the current one (sd_checkpoints_limit) whose weights are on
        `on` (see ModelManager.release_kept); how many there were."""
        return self._models.release_kept(0, on)

    def resolve(self, query: str | None = None) -> CheckpointInfo:
        """The checkpoint `query` names; without one the selected checkpoint, else the loaded one, else the
        first listed. BadRequest when there is none."""
        if query:
            found = self.find(query)
            if found is None:
                raise BadRequest(f"Checkpoint {query!r} not found. Available: "
                                 + (", ".join(i.title for i in self.list()) or "none"))
            return found
        wanted = self._settings.values.sd_model_checkpoint
        found = self.find(wanted) if wanted else None
        if found is None and self.current is not None:
            found = self.current.info
        if found is None:
            items = self.list()
            if not items:
                raise BadRequest("No checkpoint found. Put a .safetensors or .ckpt file into "
                                 f"{self._add_folder} and refresh the list.")
            found = items[0]
        return found

    def check_vae_name(self, name: str) -> None:
        """Refuse a VAE choice that names no file, before anything is queued or changed."""
        if name.strip() not in ("Automatic", "None") and self._models.vaes.find(name) is None:
            raise BadRequest(f"VAE {name!r} not found. Available: Automatic, None"
                             + "".join(f", {v.name}" for v in self.vaes()))

    def check_vae_for_current(self, name: str) -> None:
        """Refuse a VAE choice the loaded model could not use (a bad name), before the setting changes."""
        if self.current is not None:
            self._models.resolve_vae(self.current.info, name,
                                     self._settings.values.sd_vae_overrides_per_model_preferences)

    # --- loading (inside a job: the queue's worker) --------------------------------------------
    def low_memory_mode(self, setting: str | None = None) -> str:
        """The low-memory mode in force: the setting `low_memory` (the job's, else the saved one) or the
        command-line flag's, whichever saves more."""
        modes = (setting or self._settings.values.low_memory, self.low_memory_flag)
        return next((m for m in ("On", "SDXL only") if m in modes), "Off")

    def load_now(self, info: CheckpointInfo, vae: str, remember: bool = True, requested: str | None = None,
                 release_first: bool = False, settings: Settings | None = None, reserve: int = 0) -> LoadedModel:
        """Make `info` the loaded model; `remember` records it as the selected checkpoint setting
        (not done for a per-request override, which A1111 restores afterwards). A file that cannot be
        loaded is a CheckpointError, or an UnusableCheckpoint (a 4xx) naming the field when the request
        named it (`requested`: the field). `release_first`: see ModelManager.load; `settings`: the job's (else
        the saved ones), for low_memory (see low_memory_mode), FP8 weights and how many checkpoints stay loaded
        (sd_checkpoints_limit, sd_checkpoints_keep_in_cpu); `reserve`: see ModelManager.load."""
        settings = settings if settings is not None else self._settings.values
        try:
            model = self._models.get(info, vae, release_first, self.low_memory_mode(settings.low_memory),
                                     settings.sd_checkpoints_limit, settings.sd_checkpoints_keep_in_cpu,
                                     settings.sd_vae_overrides_per_model_preferences, reserve,
                                     settings.fp8_storage, settings.cache_fp16_weight)
        except NotEnoughMemory:
            raise  # names the checkpoint already, and is not the request's fault (507, not a 4xx)
        except CheckpointError as e:
            if requested:
                raise UnusableCheckpoint(f"{requested}: {e} (checkpoint: {info.name})") from None
            raise CheckpointError(f"{e} (checkpoint: {info.name})") from None
        if remember:
            self._remember(model.info)
        return model

    def _remember(self, info: CheckpointInfo) -> None:
        """Make `info` the selected checkpoint setting, by its title; a title without its hash yet is replaced by
        the one with it once the background hash is known (A1111's setting holds `name [hash]`), unless another
        checkpoint was selected meanwhile."""
        if self._settings.values.sd_model_checkpoint != info.title:
            self._settings.update({"sd_model_checkpoint": info.title})
        if info.sha256:
            return
        without = info.title

        def known(_sha256: str) -> None:
            if self._settings.values.sd_model_checkpoint == without:
                self._settings.update({"sd_model_checkpoint": info.title})

        self.hash_later(info).add_done_callback(known)

    # --- loading (through the queue) -------------------------------------------------------------
    def load(self, query: str | None = None, vae: str | None = None) -> LoadedModel:
        """Load a checkpoint through the queue (waits for running jobs) and make it the current one."""
        info = self.resolve(query)
        vae = vae if vae is not None else self._settings.values.sd_vae
        return self._queue.run("load", lambda job: self.load_now(
            info, vae, requested="sd_model_checkpoint" if query else None))

    def select(self, query: str, vae: str | None = None) -> CheckpointInfo:
        """The checkpoint a settings change selects: loaded now (through the queue, so one that cannot be loaded
        is refused before the setting changes), or only found when cluster replicas load the models."""
        if not self.loads_here:
            return self.resolve(query)
        return self.load(query, vae).info

    def unload(self) -> None:
        """Free the loaded models (through the queue, so a running job finishes first). The next job, or
        `reload`, loads the selected checkpoint again."""
        self._queue.run("unload", lambda job: self._models.unload())

    def reload(self) -> LoadedModel:
        """Load the selected checkpoint again (after `unload`); a no-op when it is loaded."""
        return self.load()

    def start_loading(self, query: str | None = None) -> Job | None:
        """Queue loading of the start-up model; generation requests queue behind it. A `query` (--ckpt)
        becomes the selected checkpoint at once, as in A1111, so the page and the next job agree on it."""
        try:
            info = self.resolve(query)
        except BadRequest as e:
            self.startup_error = str(e)
            log.warning("%s", e)
            return None
        if query and self._settings.values.sd_model_checkpoint != info.title:
            self._settings.update({"sd_model_checkpoint": info.title})

        def run(job: Job) -> None:
            try:
                self.load_now(info, self._settings.values.sd_vae)
                self.startup_error = None
            except Exception as e:  # reported to the user; the server keeps running
                self.startup_error = str(e)
                log.error("Could not load %s: %s", info.name, e)

        return self._queue.submit("load", run)
