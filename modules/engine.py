"""The engine: the one object the UI and the API hold. A thin facade over named services (modules/services),
with short verbs for what both front ends do most; everything that must behave the same whichever way a
request arrives lives in the services, so a feature exists in both front ends the moment it exists here.

Built by modules/bootstrap.py. The UI and the API call the services named here (engine.checkpoints.list(),
engine.options.values, engine.queue.ahead_of(...)), never the services' insides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from transformers import CLIPTokenizer

from modules import images, postprocessing, styles
from modules.devices import DevicePlan
from modules.folders import FolderPolicy
from modules.generation.params import GenerationParams, Img2ImgParams
from modules.jobs import Job, JobQueue
from modules.limits import Limits
from modules.models.manager import LoadedModel
from modules.paths import Paths
from modules.services.checkpoints import CheckpointService
from modules.services.cluster import ClusterView
from modules.services.errors import (  # noqa: F401  (the names front ends catch)
    BadRequest, Interrupted, OverLimit, UnknownOption, UnusableCheckpoint, describe_validation_error)
from modules.services.extras import ExtrasResult, ExtrasService
from modules.services.generation import GenerationResult, GenerationService
from modules.services.history import HistoryService
from modules.services.merger import MergeForm, MergeResult, MergeService
from modules.services.networks import NetworksService
from modules.services.options import OptionsService
from modules.services.previews import PreviewService
from modules.services.paste import InfotextReader
from modules.services.requests import RequestResolver
from modules.services.scripts.service import ScriptService
from modules.services.upscalers import UpscalerService

Txt2ImgResult = GenerationResult  # the name it had before img2img shared it


@dataclass(eq=False)  # a service object: equal only to itself, and hashable
class Engine:
    paths: Paths
    limits: Limits
    folders: FolderPolicy  # which server folders clients may name
    device: DevicePlan
    tokenizer: CLIPTokenizer  # counts the prompt's tokens for the page
    queue: JobQueue  # the one queue every job waits in
    checkpoints: CheckpointService
    options: OptionsService
    styles: styles.StyleStore
    networks: NetworksService
    paste: InfotextReader  # infotexts into request fields (the API's `infotext`, the page's paste)
    requests: RequestResolver
    generation: GenerationService
    postprocess: ExtrasService
    upscalers: UpscalerService  # the plain and model upscalers, by name (Extras, Hires. fix, img2img)
    merger: MergeService  # the Checkpoint Merger's jobs
    previews: PreviewService  # live previews of a running job, for the page and the API's progress
    decode_budget: images.DecodeBudget  # input images are decoded within this many pixels at once
    history: HistoryService  # the index of saved images: search, delete, rescan (the heal)
    scripts: ScriptService  # X/Y/Z plot, Prompt matrix, Prompts from file: many requests as one job
    cluster: ClusterView  # who runs generation jobs: this process, or Ray replicas (GET /sdapi/v1/cluster)

    # --- generation --------------------------------------------------------------------------
    def txt2img(self, params: GenerationParams) -> GenerationResult:
        return self.submit_txt2img(params).wait()

    def submit_txt2img(self, params: GenerationParams, task_id: str | None = None,
                       client: str | None = None) -> Job:
        """Check the request (raising BadRequest at once) and queue it; the job's result is a GenerationResult.
        `task_id`: A1111's force_task_id (what /internal/progress knows the job by); `client`: who asked (its
        jobs are answered in the order it submitted them)."""
        return self.generation.submit("txt2img", params, task_id, client)

    def img2img(self, params: Img2ImgParams) -> GenerationResult:
        return self.submit_img2img(params).wait()

    def submit_img2img(self, params: Img2ImgParams, task_id: str | None = None, client: str | None = None) -> Job:
        """As submit_txt2img, for img2img and inpainting (the init images and mask are in `params`)."""
        return self.generation.submit("img2img", params, task_id, client)

    def submit_script(self, kind: str, name: str, params: GenerationParams, args: list,
                      task_id: str | None = None, client: str | None = None) -> Job:
        """A request run through a selectable script (A1111's `script_name` / `script_args`) as one job."""
        return self.scripts.submit(kind, name, params, args, task_id, client)

    # --- extras ------------------------------------------------------------------------------
    def extras(self, inputs: list[Image.Image], params: postprocessing.ExtrasParams, save: bool = True
               ) -> ExtrasResult:
        return self.submit_extras(inputs, params, save).wait()

    def submit_extras(self, inputs: list[Image.Image], params: postprocessing.ExtrasParams, save: bool = True,
                      names: list[str] | None = None) -> Job:
        """Queue Extras of `inputs` (see ExtrasService.submit)."""
        return self.postprocess.submit(inputs, params, save, names)

    def submit_extras_folder(self, files: list[Path], params: postprocessing.ExtrasParams, outdir: str | None = None,
                             show: bool = True) -> Job:
        """Queue Extras of image files, read and saved one at a time (see ExtrasService.submit_folder)."""
        return self.postprocess.submit_folder(files, params, outdir, show)

    # --- models and settings -----------------------------------------------------------------
    def merge_checkpoints(self, form: MergeForm) -> MergeResult:
        """Merge checkpoints into a new file in the checkpoint folder, through the queue (see MergeService)."""
        return self.merger.submit(form).wait()

    def load_checkpoint(self, query: str | None = None) -> LoadedModel:
        """Load a checkpoint through the queue (waits for running jobs) and make it the current one."""
        return self.checkpoints.load(query)

    def set_options(self, changes: dict) -> None:
        """Validate and save settings changes (a new checkpoint is loaded first)."""
        self.options.set(changes)
