"""Request and response bodies of the A1111-compatible API, with A1111's field names and defaults.

Every field A1111's txt2img request has is accepted. Fields the engine does not implement yet are
accepted too; when one is set to something other than its default, the response's `info.warnings`
says it was ignored instead of failing the request.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, create_model

from modules.postprocessing import ExtrasParams
from modules.settings import Settings


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None

    # the always-on scripts (alwayson_scripts keys, case-insensitive, as A1111 matches titles) this tab runs
    ALWAYSON: ClassVar[frozenset[str]] = frozenset()
    IMG2IMG_ALWAYSON: ClassVar[frozenset[str]] = frozenset({"soft inpainting"})

    def alwayson_args(self, name: str) -> list[Any] | None:
        """The `args` the request gives always-on script `name`; None when it does not name it or gives no args
        (A1111 then runs the script with its page's defaults, which for Soft inpainting is off). ValueError for
        an entry A1111 could not read."""
        for key, entry in self.alwayson_scripts.items():
            if key.strip().lower() != name:
                continue
            if not isinstance(entry, dict):
                raise ValueError(f'alwayson_scripts: {key!r} must be an object such as {{"args": [...]}}')
            args = entry.get("args")
            if args is None:
                return None
            if not isinstance(args, list):
                raise ValueError(f"alwayson_scripts: {key!r} args must be a list")
            return args
        return None

    def unsupported_warnings(self) -> list[str]:
        """A warning for each field set to something the engine cannot do yet, and each always-on script it
        does not have (A1111 answers 422 for a script it lacks; here the job runs without it)."""
        defaults = Txt2ImgRequest()
        out = []
        for name in ("restore_faces",):
            value = getattr(self, name)
            if value != getattr(defaults, name) and value not in (None, [], {}, False, 0, -1):
                out.append(f"{name} is not supported yet and was ignored")
        if self.firstpass_image and not self.enable_hr and "firstpass_image" not in getattr(self, "HIRES_FIELDS", ()):
            out.append("firstpass_image is used only with enable_hr (Hires. fix, as in A1111); it was ignored")
        for key in self.alwayson_scripts:
            name = key.strip().lower()
            if name in self.ALWAYSON:
                continue
            if name in self.IMG2IMG_ALWAYSON:
                out.append(f"alwayson_scripts: {key!r} works in img2img only and was ignored")
            else:
                out.append(f"alwayson_scripts: {key!r} is not a script here (extensions are not supported); "
                           "it was ignored")
        return out


class Img2ImgRequest(Txt2ImgRequest):
    """A1111's img2img request: the txt2img fields (the hires ones are accepted and ignored) plus the init
    images and the inpainting fields, with A1111's API defaults (which differ from its UI's: inpaint
    area "Only masked", padding 0, masked content "fill")."""
    init_images: list[str] | None = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False

    ALWAYSON: ClassVar[frozenset[str]] = Txt2ImgRequest.IMG2IMG_ALWAYSON

    # txt2img's hires-fix fields, which A1111's img2img request does not have
    HIRES_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "enable_hr", "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps",
        "hr_resize_x", "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
        "hr_negative_prompt", "firstpass_image"})


class Txt2ImgResponse(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


class ExtrasSingleImageRequest(ExtrasParams):
    """A1111's extras request: what to do (ExtrasParams) and the image."""
    image: str = Field("", description="The image as base64, optionally as a data URL (data:image/png;base64,...)")
    show_extras_results: bool = Field(True, description="Accepted; the images are answered either way (as A1111)")


class FileData(BaseModel):
    data: str = Field(description="The image as base64, optionally as a data URL")
    name: str = Field("", description="Its file name (not used)")


class ExtrasBatchImagesRequest(ExtrasParams):
    imageList: list[FileData] = Field(description="The images, each {data, name}; answered in this order")
    show_extras_results: bool = Field(True, description="Accepted; the images are answered either way (as A1111)")


class ExtrasSingleImageResponse(BaseModel):
    image: str | None = Field(None, description="The result as a base64 PNG (text chunks: the original's "
                                                "`parameters`, and the extras infotext as `extras`)")
    html_info: str = Field(description="The extras infotext as HTML")


class ExtrasBatchImagesResponse(BaseModel):
    images: list[str] = Field(description="The results as base64 PNGs, in the order sent")
    html_info: str = Field(description="The extras infotext of the last image, as HTML")


class PendingTasksResponse(BaseModel):
    size: int = Field(description="How many jobs wait behind the running one")
    tasks: list[str] = Field(description="Their ids, in the order they will run")


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str | bool]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class ProgressState(BaseModel):
    skipped: bool
    interrupted: bool
    stopping_generation: bool = False
    job: str
    job_count: int
    job_timestamp: str
    job_no: int
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class PNGInfoRequest(BaseModel):
    image: str = Field(description="The image as base64, optionally as a data URL (data:image/png;base64,...)")


class InternalProgressRequest(BaseModel):
    id_task: str | None = Field(None, description="The task id (a request's force_task_id)")
    id_live_preview: int = Field(-1, description="The id of the preview the client has (-1: none)")
    live_preview: bool = Field(True, description="Send a new preview when there is one")


class InternalProgressResponse(BaseModel):
    active: bool
    queued: bool
    completed: bool
    progress: float | None = None
    eta: float | None = None
    live_preview: str | None = Field(None, description="data:image/png;base64,... (a new preview only)")
    id_live_preview: int = -1
    textinfo: str | None = None


class InterrogateRequest(BaseModel):
    image: str = Field("", description="The image as base64, optionally as a data URL")
    model: str = Field("clip", description="A1111: 'clip' or 'deepdanbooru'")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="The generation parameters as stored in the image ('' when none)")
    items: dict[str, Any] = Field(default_factory=dict, description="The image's other text fields")
    parameters: dict[str, Any] = Field(default_factory=dict, description="`info` parsed into fields, as A1111 does")


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(description="free, used (this process), total bytes")
    cuda: dict[str, Any] = Field(description="GPU memory in bytes, or {'error': 'unavailable'} without CUDA")


class ClusterReplica(BaseModel):
    id: str = Field(description="the replica's id ('local' without Ray; a replacement gets a new one)")
    state: str = Field(description="idle, busy or dead")
    checkpoint: str | None = Field(description="the checkpoint it has loaded (its file name), if any")
    device: str = Field(description="what it runs on")
    jobs_run: int = Field(description="jobs it has finished")
    running: str | None = Field(description="the task id of the job it runs now, or null")
    pid: int | None = Field(default=None, description="its process id (on its node)")
    node: str | None = Field(default=None, description="its node's address (Ray)")


class ClusterResponse(BaseModel):
    replicas: list[ClusterReplica]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscalerModeItem(BaseModel):
    name: str


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem] = Field(default_factory=dict)
    skipped: dict[str, EmbeddingItem] = Field(default_factory=dict)


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any] = Field(default_factory=dict)


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptArg(BaseModel):
    label: str | None = None
    value: Any = None
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[str] | None = None


class ScriptInfo(BaseModel):
    name: str | None = None
    is_alwayson: bool | None = None
    is_img2img: bool | None = None
    args: list[ScriptArg] = Field(default_factory=list)


class ExtensionItem(BaseModel):
    name: str
    remote: str
    branch: str
    commit_hash: str
    version: str
    commit_date: int
    enabled: bool


# POST /options: every setting, all optional (only the keys sent are changed). Other keys are
# accepted by the schema so that the answer can name them (422 "Unknown option(s): ...").
OptionsUpdate = create_model(
    "OptionsUpdate", __config__=ConfigDict(extra="allow"),
    **{name: (info.annotation | None, Field(None, description=info.description))
       for name, info in Settings.model_fields.items()},
)


# --- history (the index of saved images) -----------------------------------------------------------------

class HistoryItem(BaseModel):
    id: int
    path: str = Field(description="The file, relative to the outputs folder (or to the output folder it is in)")
    time: float = Field(description="When it was saved (Unix time); for a file found by a rescan, its mtime")
    kind: str = Field(description="txt2img, img2img, extras or grid")
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    sampler: str | None = None
    schedule: str | None = None
    cfg_scale: float | None = None
    model: str | None = None
    model_hash: str | None = None
    loras: list[str] = Field(default_factory=list)
    vae: str | None = None
    denoising_strength: float | None = None
    hires: str | None = None
    size: int = Field(description="The file's size in bytes")
    infotext: str | None = None


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    total: int = Field(description="Images that match in all")
    limit: int
    offset: int


class HistoryDetail(HistoryItem):
    image: str | None = Field(None, description="The file as base64 (with ?image=true)")


class HistoryScanStatus(BaseModel):
    running: bool
    scanned: int = Field(description="Image files found in the output folders")
    to_read: int = Field(description="Of them, new or changed since they were indexed")
    read: int
    added: int
    removed: int = Field(description="Rows dropped because their file is gone")
    skipped: int = Field(description="Files that could not be read as images, or images without generation "
                                     "parameters (the log names them)")
    started: float | None = None
    finished: float | None = None
    error: str | None = None
