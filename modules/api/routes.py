"""The `/sdapi/v1` routes: thin translations between A1111's JSON and the engine.

Generation waits in the engine's one job queue without holding a server thread, so any number of
clients can wait; a client that hangs up does not disturb the queue (its job still runs).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import platform
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import psutil
import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image
from pydantic import ValidationError

from modules import devices, images, infotext, postprocessing, upscaling
from modules.api import schemas
from modules.auth import Credentials
from modules.engine import BadRequest, Engine, Interrupted, OverLimit, UnknownOption, describe_validation_error
from modules.generation import samplers
from modules.generation.params import GenerationParams, Img2ImgParams, SoftInpainting
from modules.jobs import JobCancelled, JobState
from modules.limits import Limits
from modules.models.checkpoint_file import CheckpointError
from modules.generation.pipeline import NansError
from modules.version import VERSION

# A1111's list of latent modes, for clients that offer them as choices (the hires pass uses them and the image
# upscalers, Extras the image upscalers).
LATENT_UPSCALE_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                        "Latent (nearest)", "Latent (nearest-exact)")


class UnknownHistoryItem(BadRequest):
    """No saved image has that id."""
    status_code = 404


class Unauthorized(Exception):
    """Missing or wrong API credentials (the message never says which part was wrong)."""


def error_response(status: int, exc: Exception, detail: str) -> JSONResponse:
    """A1111's error body."""
    return JSONResponse(status_code=status, content={
        "error": type(exc).__name__, "detail": detail, "body": "", "errors": detail})


def finite_json(value: Any) -> Any:
    """`value` with every NaN or infinity (which Python's JSON parser reads from NaN / Infinity) written as a
    string, so that it can be sent back in a JSON answer (Starlette refuses to encode them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_body(_request: Request, exc: RequestValidationError):
        """FastAPI's own 422 answer, which echoes the offending input: NaN or infinity there (sent as NaN /
        Infinity) is written as a string, where FastAPI's handler would fail with a 500."""
        try:
            detail = finite_json(jsonable_encoder(exc.errors()))
        except RecursionError:  # an input nested too deep to echo: the errors without it
            detail = finite_json(jsonable_encoder([{k: v for k, v in e.items() if k not in ("input", "ctx")}
                                                   for e in exc.errors()]))
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.exception_handler(BadRequest)
    async def _bad_request(_request: Request, exc: BadRequest):
        status = getattr(exc, "status_code", None) or (422 if isinstance(exc, UnknownOption) else 400)
        return error_response(status, exc, str(exc))

    @app.exception_handler(CheckpointError)
    async def _checkpoint(_request: Request, exc: CheckpointError):
        return error_response(getattr(exc, "status_code", 500), exc, str(exc))

    @app.exception_handler(RuntimeError)
    async def _runtime(_request: Request, exc: RuntimeError):
        """Out of memory -> 507 with advice (the server keeps serving); any other failure -> 500 with its text."""
        if devices.is_out_of_memory(exc):
            return error_response(507, exc, f"{devices.OUT_OF_MEMORY_ADVICE}. ({str(exc).splitlines()[0][:300]})")
        return error_response(500, exc, str(exc))

    @app.exception_handler(NansError)
    async def _nans(_request: Request, exc: NansError):
        return error_response(500, exc, str(exc))

    @app.exception_handler(JobCancelled)
    async def _cancelled(_request: Request, exc: JobCancelled):
        """A queued job taken out of the queue before it ran: the server is stopping."""
        return error_response(503, exc, f"{exc} (the server is stopping)")

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_request: Request, exc: Unauthorized):
        response = error_response(401, exc, str(exc))
        response.headers["WWW-Authenticate"] = "Basic"
        return response


def basic_auth(credentials: Credentials):
    """A route dependency that lets a request through only with a right HTTP Basic user and password."""
    scheme = HTTPBasic(auto_error=False, description="--api-auth user and password")

    def require(given: HTTPBasicCredentials | None = Depends(scheme)) -> None:
        if given is None or not credentials.check(given.username, given.password):
            raise Unauthorized("Incorrect username or password")

    return require


def client_of(request: Request) -> str:
    """Who sent an API request, for the queue's order of answers per client (modules/jobs.py): the HTTP Basic
    user it gave (checked by `basic_auth` where --api-auth is on), else the address it came from."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")[0]
        except ValueError:  # not base64, or not UTF-8: the address is used
            user = ""
        if user:
            return f"user:{user}"
    return f"address:{request.client.host if request.client else ''}"


def decode_image(data: str, field: str | None = None, engine: Engine | None = None, lazy: bool = False
                 ) -> Image.Image:
    """An image from base64 or a `data:image/...;base64,` URL; BadRequest with the reason (and the
    request field it came from) otherwise, before decoding when it has more pixels than the `engine`'s limit.
    Its pixels are decoded within the engine's decode budget, or with `lazy` by the job it goes to."""
    limits = engine.limits if engine is not None else Limits()
    try:
        return images.decode_base64_image(data, limits.max_input_pixels, engine.decode_budget if engine else None,
                                          lazy=lazy)
    except ValueError as e:
        raise BadRequest(f"{field}: {e}" if field else str(e)) from None


def apply_infotext(req: schemas.Txt2ImgRequest, engine: Engine) -> list[str]:
    """Fill the request from `req.infotext` as A1111 does: every field the request does not set itself,
    and the settings the infotext implies (Clip skip, RNG, VAE) as override_settings unless the request
    overrides them already or they equal the current value. A `Refiner` that names no checkpoint here gives
    no refiner (as A1111's lookup) and a warning. Returns warnings."""
    allowed = set(type(req).model_fields) - set(getattr(req, "HIRES_FIELDS", ()))
    # styles are found in the infotext's prompts only when the request leaves the prompts and styles to it: else the
    # prompt it keeps from the infotext would lose their text (A1111 takes both apart)
    own = req.model_fields_set & {"prompt", "negative_prompt", "styles"}
    pasted = engine.paste.read(req.infotext or "", txt2img="enable_hr" in allowed, find_styles=not own)
    values, refiner_warnings = dict(pasted.values), []
    if pasted.unknown_refiner and "refiner_checkpoint" not in req.model_fields_set:
        # A1111's lookup gives no checkpoint then, so the job runs without a refiner; said here
        values.pop("refiner_checkpoint", None)
        values.pop("refiner_switch_at", None)
        refiner_warnings.append(f"infotext: Refiner {pasted.unknown_refiner!r} is not available here; "
                                "no refiner was used")
    if pasted.unknown_hires_checkpoint and "hr_checkpoint_name" not in req.model_fields_set:
        refiner_warnings.append(f"infotext: Hires checkpoint {pasted.unknown_hires_checkpoint!r} is not available "
                                "here; the hires pass used the job's checkpoint")
    for name, value in values.items():
        if name in allowed and name not in req.model_fields_set:
            setattr(req, name, value)
    soft = values.pop("soft_inpainting", None)  # A1111 fills an always-on script's args from the infotext too
    if soft is not None and "soft inpainting" in getattr(req, "ALWAYSON", ()) \
            and not any(k.strip().lower() == "soft inpainting" for k in req.alwayson_scripts):
        req.alwayson_scripts = {**req.alwayson_scripts, "soft inpainting": {"args": soft.script_args()}}
    if pasted.script is not None and "script_name" not in req.model_fields_set:  # a plot's grid: the plot again
        req.script_name, req.script_args = pasted.script[0], pasted.script[1]
    overrides, warnings = engine.paste.overrides(pasted.settings, req.override_settings or {})
    warnings.extend(refiner_warnings)
    if pasted.warning:  # over infotext.MAX_CHARS: only part was read
        warnings.insert(0, pasted.warning)
    if overrides:
        req.override_settings = overrides
    return warnings


def apply_model_size(req: schemas.Txt2ImgRequest, engine: Engine) -> None:
    """A width or height the request leaves out (and its infotext does not give) is the one the checkpoint's
    family was trained at, e.g. 1024 for SDXL. A1111 uses 512 whatever the model; for SD 1.x this is the same."""
    missing = {"width", "height"} - req.model_fields_set
    if not missing:
        return
    try:
        info = engine.checkpoints.resolve((req.override_settings or {}).get("sd_model_checkpoint"))
    except BadRequest:
        return  # said when the request is accepted
    width, height = engine.checkpoints.default_size(info)
    if "width" in missing:
        req.width = width
    if "height" in missing:
        req.height = height


def prepare(req: schemas.Txt2ImgRequest, engine: Engine) -> list[str]:
    """The request completed from its infotext and the model's size; the warnings to answer with."""
    warnings = apply_infotext(req, engine) if req.infotext else []
    apply_model_size(req, engine)
    return warnings


def encode_png(image) -> str:
    return base64.b64encode(images.png_bytes(image, image.info.get("parameters"))).decode("ascii")


def encode_png_with_texts(image) -> str:
    """Base64 PNG with every text item of the image's `info` (Extras: parameters, extras, postprocessing)."""
    texts = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    return base64.b64encode(images.png_bytes(image, None, texts)).decode("ascii")


def plaintext_to_html(text: str) -> str:
    """A1111's html_info: the text's lines, escaped, in one paragraph."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def system_info(engine: Engine) -> dict[str, Any]:
    """A small report for bug reports: versions and the device. No paths, settings, flags or environment."""
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"Platform": platform.platform(), "Python": platform.python_version(), "Version": VERSION,
            "Torch": torch.__version__, "CUDA": torch.version.cuda, "Device": engine.device.describe,
            "Packages": {name: version(name) for name in ("diffusers", "transformers", "safetensors", "gradio",
                                                          "fastapi", "pillow")}}


def _common_fields(req: schemas.Txt2ImgRequest) -> dict[str, Any]:
    return dict(
        prompt=req.prompt, negative_prompt=req.negative_prompt, seed=req.seed,
        sampler_name=req.sampler_name or req.sampler_index, scheduler=req.scheduler, steps=req.steps,
        cfg_scale=req.cfg_scale, width=req.width, height=req.height, batch_size=req.batch_size,
        n_iter=req.n_iter, override_settings=req.override_settings or {},
        subseed=req.subseed, subseed_strength=req.subseed_strength, seed_resize_from_w=req.seed_resize_from_w,
        seed_resize_from_h=req.seed_resize_from_h, eta=req.eta, s_churn=req.s_churn, s_tmin=req.s_tmin,
        s_tmax=req.s_tmax, s_noise=req.s_noise, s_min_uncond=req.s_min_uncond, styles=req.styles or [],
        disable_extra_networks=req.disable_extra_networks,
        save_images=req.save_images and not req.do_not_save_samples,
        refiner_checkpoint=req.refiner_checkpoint, refiner_switch_at=req.refiner_switch_at, tiling=req.tiling,
    )


def to_params(req: schemas.Txt2ImgRequest, limits: Limits | None = None) -> GenerationParams:
    """The engine's parameters; a `firstpass_image` is opened here (BadRequest when it cannot be read, or has more
    pixels than `limits` allow) and decoded by the job."""
    hires_fields = dict(
        enable_hr=req.enable_hr, denoising_strength=req.denoising_strength, hr_scale=req.hr_scale,
        hr_upscaler=req.hr_upscaler, hr_second_pass_steps=req.hr_second_pass_steps, hr_resize_x=req.hr_resize_x,
        hr_resize_y=req.hr_resize_y, hr_sampler_name=req.hr_sampler_name, hr_scheduler=req.hr_scheduler,
        hr_prompt=req.hr_prompt, hr_negative_prompt=req.hr_negative_prompt, firstpass_image=req.firstpass_image or None,
        hr_checkpoint_name=req.hr_checkpoint_name)
    common = _common_fields(req)
    if req.firstphase_width or req.firstphase_height:
        # A1111's first hires fix fields: the size the job renders at (its __post_init__; since 1.6 the final size
        # then follows hr_scale or hr_resize_x/y as for any job)
        if not (req.firstphase_width and req.firstphase_height):
            raise BadRequest(f"firstphase_width and firstphase_height: both are needed, or neither (got "
                             f"{req.firstphase_width}x{req.firstphase_height})")
        common.update(width=req.firstphase_width, height=req.firstphase_height)
    try:
        return GenerationParams.model_validate(
            dict(**common, **(hires_fields if req.enable_hr else {})),
            context={"max_input_pixels": (limits or Limits()).max_input_pixels})
    except ValidationError as e:
        raise BadRequest(describe_validation_error(e)) from None


def to_img2img_params(req: schemas.Img2ImgRequest, limits: Limits | None = None) -> Img2ImgParams:
    """The engine's parameters; the init images and the mask are opened here (BadRequest naming the field when
    one cannot be read, or has more pixels than `limits` allow) and decoded by the job, in the queue."""
    if not req.init_images:
        raise BadRequest("init_images: at least one init image is required (base64 or a data URL)")
    limits = limits or Limits()
    if len(req.init_images) > limits.max_batch_size:  # each image is one of a batch
        raise OverLimit(f"init_images: {len(req.init_images)} images, over this server's limit of "
                        f"{limits.max_batch_size} a batch (--max-batch-size)")
    try:
        return Img2ImgParams.model_validate(dict(
            **_common_fields(req), init_images=req.init_images, resize_mode=req.resize_mode,
            denoising_strength=req.denoising_strength, image_cfg_scale=req.image_cfg_scale, mask=req.mask or None,
            mask_blur_x=req.mask_blur_x, mask_blur_y=req.mask_blur_y, mask_blur=req.mask_blur,
            mask_round=req.mask_round, latent_mask=req.latent_mask or None, inpainting_fill=req.inpainting_fill,
            inpaint_full_res=req.inpaint_full_res,
            inpaint_full_res_padding=req.inpaint_full_res_padding, inpainting_mask_invert=req.inpainting_mask_invert,
            initial_noise_multiplier=req.initial_noise_multiplier, soft_inpainting=soft_inpainting(req)),
            context={"max_input_pixels": limits.max_input_pixels})
    except ValidationError as e:
        raise BadRequest(describe_validation_error(e)) from None


def soft_inpainting(req: schemas.Img2ImgRequest) -> SoftInpainting | None:
    """The Soft inpainting settings of `alwayson_scripts` ("soft inpainting": {"args": [enabled, ...]}, A1111's
    order); BadRequest naming what is wrong with them."""
    try:
        args = req.alwayson_args("soft inpainting")
        return None if args is None else SoftInpainting.from_script_args(args)
    except ValidationError as e:
        raise BadRequest("alwayson_scripts: soft inpainting: " + describe_validation_error(e)) from None
    except ValueError as e:
        raise BadRequest(str(e)) from None


def build_response(engine: Engine, req: schemas.Txt2ImgRequest, result, warnings: list[str],
                   parameters: dict[str, Any]) -> schemas.Txt2ImgResponse:
    """A1111's txt2img/img2img response for a finished job (blocking: encodes the images)."""
    result.warnings.extend(warnings)
    result.warnings.extend(req.unsupported_warnings())
    if req.override_settings and not req.override_settings_restore_afterwards:
        engine.set_options(req.override_settings)
    shown = ([result.grid] if result.grid is not None else []) + result.images
    encoded = [encode_png(im) for im in shown] if req.send_images else []
    info = result.info
    if result.grid is not None:  # A1111 puts the grid first, with its infotext, and says so
        info = {**info, "infotexts": [result.grid.info["parameters"]] + info["infotexts"], "index_of_first_image": 1}
    return schemas.Txt2ImgResponse(images=encoded, parameters=parameters, info=json.dumps(info))


def build_router(engine: Engine, cmd_flags: dict[str, Any], credentials: Credentials | None = None) -> APIRouter:
    """The /sdapi/v1 routes; with `credentials`, every one of them requires HTTP Basic auth."""
    r = APIRouter(prefix="/sdapi/v1", tags=["sdapi"],
                  dependencies=[Depends(basic_auth(credentials))] if credentials else [])

    async def respond(req: schemas.Txt2ImgRequest, job, warnings: list[str],
                      parameters: dict[str, Any]) -> schemas.Txt2ImgResponse:
        result = await job.wait_async()
        return await run_in_threadpool(build_response, engine, req, result, warnings, parameters)

    @r.post("/txt2img", response_model=schemas.Txt2ImgResponse)
    async def txt2img(req: schemas.Txt2ImgRequest, request: Request):
        warnings = prepare(req, engine)
        params = await run_in_threadpool(to_params, req, engine.limits)
        client = client_of(request)
        if req.script_name:
            job = await run_in_threadpool(engine.submit_script, "txt2img", req.script_name, params, req.script_args,
                                          req.force_task_id, client)
        else:
            job = await run_in_threadpool(engine.submit_txt2img, params, req.force_task_id, client)
        return await respond(req, job, warnings, req.model_dump())

    @r.post("/img2img", response_model=schemas.Txt2ImgResponse)
    async def img2img(req: schemas.Img2ImgRequest, request: Request):
        """img2img, and inpainting when `mask` is given (white = repaint). The images are base64 (or data
        URLs); the response is txt2img's. The init images and mask are echoed in `parameters` only with
        `include_init_images`."""
        warnings = prepare(req, engine)
        params = await run_in_threadpool(to_img2img_params, req, engine.limits)
        client = client_of(request)
        if req.script_name:
            job = await run_in_threadpool(engine.submit_script, "img2img", req.script_name, params, req.script_args,
                                          req.force_task_id, client)
        else:
            job = await run_in_threadpool(engine.submit_img2img, params, req.force_task_id, client)
        parameters = req.model_dump(exclude=set(schemas.Img2ImgRequest.HIRES_FIELDS))
        if not req.include_init_images:
            parameters["init_images"], parameters["mask"] = None, None
        return await respond(req, job, warnings, parameters)

    async def extras(inputs: list[Image.Image], req: postprocessing.ExtrasParams) -> tuple[list[str], str]:
        params = postprocessing.ExtrasParams.model_validate(
            req.model_dump(include=set(postprocessing.ExtrasParams.model_fields)))
        job = await run_in_threadpool(engine.submit_extras, inputs, params, False)  # A1111's API never saves them
        result = await job.wait_async()
        encoded = await run_in_threadpool(lambda: [encode_png_with_texts(im) for im in result.images])
        return encoded, plaintext_to_html(result.infotexts[-1] if result.infotexts else "")

    @r.post("/extra-single-image", response_model=schemas.ExtrasSingleImageResponse)
    async def extra_single_image(req: schemas.ExtrasSingleImageRequest):
        """Extras on one image: upscale by a factor (resize_mode 0) or to a size (1) with an upscaler (None =
        unchanged, Lanczos, Nearest, or a model upscaler from GET upscalers), optionally blended with a second one.
        It waits in the job queue like a generation; nothing is saved. Face restoration: 400. Interrupted before
        the image was done: 409."""
        image = await run_in_threadpool(decode_image, req.image, "image", engine, True)
        encoded, html_info = await extras([image], req)
        if not encoded:  # interrupted (POST /interrupt) within a model upscaler's tiles
            raise Interrupted("Extras: interrupted before the image was done; nothing was made")
        return schemas.ExtrasSingleImageResponse(image=encoded[0], html_info=html_info)

    @r.post("/extra-batch-images", response_model=schemas.ExtrasBatchImagesResponse)
    async def extra_batch_images(req: schemas.ExtrasBatchImagesRequest):
        """Extras, as extra-single-image, on several images (one job); the answer keeps their order."""
        if not req.imageList:
            raise BadRequest("imageList: send at least one image ({data: base64, name})")
        engine.postprocess.check_count(len(req.imageList))  # before any image is read
        decoded = await run_in_threadpool(
            lambda: [decode_image(f.data, f"imageList[{i}].data", engine, True) for i, f in enumerate(req.imageList)])
        encoded, html_info = await extras(decoded, req)
        return schemas.ExtrasBatchImagesResponse(images=encoded, html_info=html_info)

    @r.get("/sd-models", response_model=list[schemas.SDModelItem])
    def sd_models():
        out = []
        for info in engine.checkpoints.list():
            yaml_beside = info.filename.with_suffix(".yaml")
            out.append(schemas.SDModelItem(
                title=info.title, model_name=info.model_name, hash=info.shorthash, sha256=info.sha256,
                filename=str(info.filename), config=str(yaml_beside) if yaml_beside.is_file() else None))
        return out

    @r.post("/refresh-checkpoints")
    def refresh_checkpoints():
        engine.checkpoints.refresh()
        return {}

    @r.get("/sd-vae", response_model=list[schemas.SDVaeItem])
    def sd_vae():
        return [schemas.SDVaeItem(model_name=v.name, filename=str(v.filename)) for v in engine.checkpoints.vaes()]

    @r.post("/refresh-vae")
    def refresh_vae():
        engine.checkpoints.refresh_vaes()
        return {}

    @r.get("/samplers", response_model=list[schemas.SamplerItem])
    def sampler_list():
        return [schemas.SamplerItem(name=s.name, aliases=list(s.aliases), options=s.options) for s in samplers.SAMPLERS]

    @r.get("/schedulers", response_model=list[schemas.SchedulerItem])
    def scheduler_list():
        return [schemas.SchedulerItem(name=key, label=label,
                                      aliases=list(samplers.SCHEDULE_ALIASES.get(key, ())) or None,
                                      default_rho={"karras": 7.0, "polyexponential": 1.0}.get(key, -1),
                                      need_inner_model=key in samplers.INNER_MODEL_SCHEDULES)
                for key, label in samplers.SCHEDULE_TYPES]

    @r.get("/options", response_model=dict[str, Any])
    def get_options():
        return engine.options.values.model_dump()

    @r.post("/options")
    async def set_options(changes: schemas.OptionsUpdate):
        """Change settings (only the keys sent). Unknown keys: 422 naming them, nothing changed.
        Setting `sd_model_checkpoint` loads that checkpoint (through the job queue) before answering."""
        await run_in_threadpool(engine.set_options, changes.model_dump(exclude_unset=True))
        return {}

    @r.get("/cmd-flags")
    def get_cmd_flags():
        return cmd_flags

    @r.get("/progress", response_model=schemas.ProgressResponse)
    def progress(skip_current_image: bool = False):
        """The running generation job. `current_image` is its live preview as `show_progress_type` draws it
        (the cheap colours, TAESD or the VAE; see PreviewService.for_poll), unless `skip_current_image` is true or
        the `live_previews_enable` setting is off."""
        job = engine.queue.current
        generating = job is not None and job.kind in ("txt2img", "img2img")
        state = job.state if generating else JobState()
        current_image = None
        if generating and not skip_current_image and engine.options.values.live_previews_enable:
            image = engine.previews.for_poll(job)
            if image is not None:
                buf = io.BytesIO()
                image.save(buf, format="PNG")
                current_image = base64.b64encode(buf.getvalue()).decode("ascii")
        return schemas.ProgressResponse(
            progress=state.progress(), eta_relative=state.eta_seconds(),
            state=schemas.ProgressState(
                skipped=state.skipped, interrupted=state.interrupted, job=state.job, job_count=state.job_count,
                job_timestamp=state.job_timestamp, job_no=state.job_no, sampling_step=state.sampling_step,
                sampling_steps=state.sampling_steps),
            current_image=current_image, textinfo=state.textinfo)

    @r.post("/interrupt")
    def interrupt():
        engine.queue.interrupt()
        return {}

    @r.post("/skip")
    def skip():
        engine.queue.skip()
        return {}

    @r.post("/png-info", response_model=schemas.PNGInfoResponse)
    def png_info(req: schemas.PNGInfoRequest):
        """The generation parameters stored in an image (PNG text chunk, or EXIF comment of a JPEG/WebP)."""
        if not req.image.strip():
            return schemas.PNGInfoResponse(info="")
        text, items = images.read_info(decode_image(req.image, None, engine))
        return schemas.PNGInfoResponse(info=text or "", items=items,
                                       parameters=infotext.parse_with_defaults(
                                           text or "", engine.options.values.auto_backcompat,
                                           engine.options.values.use_old_hires_fix_width_height,
                                           engine.options.values.infotext_skip_pasting))

    @r.post("/interrogate")
    def interrogate(req: schemas.InterrogateRequest):
        """A1111 captions an image with CLIP or DeepDanbooru. Neither model ships with this program and none
        is downloaded, so the request is refused with a clear reason (not a silent empty caption)."""
        if req.model not in ("clip", "deepdanbooru"):
            raise BadRequest(f"Unknown interrogation model {req.model!r}: A1111's are 'clip' and 'deepdanbooru'")
        raise BadRequest(f"Interrogation with {req.model!r} is not available here: it needs a captioning model "
                         "that this program does not ship or download")

    @r.get("/cluster", response_model=schemas.ClusterResponse)
    def cluster():
        """The processes that run generation jobs: this one, or with --ray-workers / --ray-address the Ray
        replicas (dead ones included, with state 'dead'; a replacement appears under a new id)."""
        return schemas.ClusterResponse(replicas=engine.cluster.replicas())

    @r.get("/memory", response_model=schemas.MemoryResponse)
    def memory():
        """RAM: `used` is this process's resident memory, `total` the machine's, `free` their difference
        (A1111's definitions). CUDA: the device's memory and PyTorch's allocator statistics."""
        rss = psutil.Process().memory_info().rss
        total = psutil.virtual_memory().total
        ram = {"free": total - rss, "used": rss, "total": total}
        device = engine.device.device
        if device.type != "cuda":
            return schemas.MemoryResponse(ram=ram, cuda={"error": "unavailable"})
        free, whole = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)

        def pair(name: str) -> dict[str, int]:
            return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

        cuda = {"system": {"free": free, "used": whole - free, "total": whole},
                "active": pair("active_bytes"), "allocated": pair("allocated_bytes"),
                "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
                "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)}}
        return schemas.MemoryResponse(ram=ram, cuda=cuda)

    @r.get("/upscalers", response_model=list[schemas.UpscalerItem])
    def upscalers():
        """The image upscalers, for Extras and the hires pass: None, Lanczos and Nearest, then the model upscalers
        in models/ESRGAN, RealESRGAN, DAT and HAT by name (`model_name`: the folder; `scale`: the factor the
        file's name gives (4x-..., ..._x2), else 4, the figure A1111 gives every ESRGAN file)."""
        plain = [schemas.UpscalerItem(name=name, scale=4) for name in upscaling.BUILTIN]
        return plain + [schemas.UpscalerItem(name=f.name, model_name=f.kind, model_path=str(f.path), scale=f.scale)
                        for f in engine.upscalers.files()]

    @r.get("/latent-upscale-modes", response_model=list[schemas.LatentUpscalerModeItem])
    def latent_upscale_modes():
        return [schemas.LatentUpscalerModeItem(name=name) for name in LATENT_UPSCALE_MODES]

    @r.get("/prompt-styles", response_model=list[schemas.PromptStyleItem])
    def prompt_styles():
        """The styles in styles.csv; give their names in a request's `styles` to apply them."""
        return [schemas.PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt)
                for s in engine.styles.all().values()]

    @r.get("/embeddings", response_model=schemas.EmbeddingsResponse)
    def embeddings():
        """Textual-inversion embeddings in the embeddings folder: `loaded` fit the loaded model's text
        encoders (SDXL takes only SDXL files, with a `clip_l` and a `clip_g` tensor), `skipped` do not (all
        are `loaded` while no model is loaded)."""
        found = engine.networks.embeddings()
        model = engine.checkpoints.current
        signature = model.text.embedding_signature if model is not None else None

        def item(e) -> schemas.EmbeddingItem:
            return schemas.EmbeddingItem(step=e.step, sd_checkpoint=e.sd_checkpoint,
                                         sd_checkpoint_name=e.sd_checkpoint_name, shape=e.width, vectors=e.count)

        return schemas.EmbeddingsResponse(
            loaded={n: item(e) for n, e in found.items() if signature is None or e.signature == signature},
            skipped={n: item(e) for n, e in found.items() if signature is not None and e.signature != signature})

    @r.post("/refresh-embeddings")
    def refresh_embeddings():
        engine.networks.embeddings(reread=True)
        return {}

    @r.get("/loras", response_model=list[schemas.LoraItem])
    def loras():
        """LoRA/LyCORIS files in models/Lora (and --lora-dir); use one as `<lora:name:weight>`."""
        return [schemas.LoraItem(name=i.name, alias=i.alias, path=str(i.filename), metadata=i.metadata_for_api())
                for i in engine.networks.loras()]

    @r.post("/refresh-loras")
    def refresh_loras():
        engine.networks.refresh_loras()
        return {}

    @r.get("/hypernetworks", response_model=list[schemas.HypernetworkItem])
    def hypernetworks():
        """Hypernetworks in models/hypernetworks (and --hypernetwork-dir); use one as `<hypernet:name:strength>`."""
        return [schemas.HypernetworkItem(name=i.name, path=str(i.filename)) for i in engine.networks.hypernetworks()]

    @r.get("/face-restorers", response_model=list[schemas.FaceRestorerItem])
    def face_restorers():
        """Empty: face restoration is not supported yet."""
        return []

    @r.get("/realesrgan-models", response_model=list[schemas.RealesrganItem])
    def realesrgan_models():
        """The upscalers in models/RealESRGAN."""
        return [schemas.RealesrganItem(name=f.name, path=str(f.path), scale=f.scale)
                for f in engine.upscalers.files() if f.kind == "RealESRGAN"]

    @r.get("/scripts", response_model=schemas.ScriptsList)
    def scripts():
        """The scripts, lower case as A1111 lists them: the selectable ones (script_name), then img2img's always-on
        Soft inpainting (alwayson_scripts)."""
        return schemas.ScriptsList(txt2img=engine.scripts.names("txt2img"),
                                   img2img=engine.scripts.names("img2img") + ["soft inpainting"])

    @r.get("/script-info", response_model=list[schemas.ScriptInfo])
    def script_info():
        """Each script's arguments (script_args, or an always-on script's args), in order, for each tab."""
        soft = dict(name="soft inpainting", is_alwayson=True, is_img2img=True, args=SoftInpainting.info_args())
        return [schemas.ScriptInfo(**info) for info in [*engine.scripts.info(), soft]]

    @r.get("/extensions", response_model=list[schemas.ExtensionItem])
    def extensions():
        """Empty: extensions are not supported."""
        return []

    def history_item(row: dict[str, Any], model=schemas.HistoryItem, **extra) -> schemas.HistoryItem:
        fields = {k: v for k, v in row.items() if k in model.model_fields}
        fields["path"] = engine.history.relative(row["path"])
        fields["loras"] = [n for n in (row.get("loras") or "").split("|") if n]
        return model(**fields, **extra)

    @r.get("/history", response_model=schemas.HistoryPage)
    def history_search(q: str = "", model: str | None = None, seed: int | None = None, lora: str | None = None,
                       kind: str | None = None, since: str | None = None, until: str | None = None,
                       limit: int = 50, offset: int = 0):
        """Saved images, newest first. `q`: words in the prompt or negative prompt, and `seed:N`, `model:NAME`,
        `lora:NAME`, `kind:KIND`, `since:DATE`, `until:DATE` (the parameters do the same). `limit` at most 500."""
        rows, total = engine.history.search(q, model=model, seed=seed, lora=lora, kind=kind, since=since,
                                            until=until, limit=limit, offset=offset)
        return schemas.HistoryPage(items=[history_item(row) for row in rows], total=total,
                                   limit=max(1, min(limit, 500)), offset=max(0, offset))

    def scan_status() -> schemas.HistoryScanStatus:
        return schemas.HistoryScanStatus(**vars(engine.history.status()))

    @r.post("/history/rescan", response_model=schemas.HistoryScanStatus)
    def history_rescan():
        """Start the heal in the background (files added by hand indexed, rows of deleted files dropped); it
        answers at once. GET this path for its progress."""
        engine.history.rescan()
        return scan_status()

    @r.get("/history/rescan", response_model=schemas.HistoryScanStatus)
    def history_rescan_status():
        return scan_status()

    @r.get("/history/{item_id}", response_model=schemas.HistoryDetail)
    def history_get(item_id: int, image: bool = False):
        """One saved image's fields; with `image=true` the file itself as base64 (only a file inside the output
        folders is ever read)."""
        row = engine.history.get(item_id)
        if row is None:
            raise UnknownHistoryItem(f"No image with id {item_id} in the history")
        data = None
        if image:
            path = engine.history.file(item_id)
            if path is None:
                raise UnknownHistoryItem(f"The file of image {item_id} is gone (a rescan drops its row)")
            data = base64.b64encode(path.read_bytes()).decode("ascii")
        return history_item(row, schemas.HistoryDetail, image=data)

    @r.delete("/history/{item_id}")
    def history_delete(item_id: int):
        """Delete a saved image: its file (to the OS trash when send2trash is installed) and its row."""
        if not engine.history.delete(item_id):
            raise UnknownHistoryItem(f"No image with id {item_id} in the history")
        return {}

    @r.post("/unload-checkpoint")
    async def unload_checkpoint():
        """Free the loaded checkpoint (after the running job). The next generation, or reload-checkpoint,
        loads the selected checkpoint again."""
        await run_in_threadpool(engine.checkpoints.unload)
        return {}

    @r.post("/reload-checkpoint")
    async def reload_checkpoint():
        """Load the selected checkpoint again (a no-op when it is loaded)."""
        await run_in_threadpool(engine.checkpoints.reload)
        return {}

    return r


def api_or_ui_login(credentials: Credentials | None, ui_login: Callable[[dict], Awaitable[bool]] | None):
    """A route dependency that lets a request through with the API's HTTP Basic login (when there is one) or
    with the page's login (`ui_login(scope)` says whether the request carries it), else 401."""
    scheme = HTTPBasic(auto_error=False, description="--api-auth user and password, or the UI's login")

    async def require(request: Request, given: HTTPBasicCredentials | None = Depends(scheme)) -> None:
        if credentials is not None and given is not None and credentials.check(given.username, given.password):
            return
        if ui_login is not None and await ui_login(request.scope):
            return
        raise Unauthorized("Incorrect username or password")

    return require


def build_internal_router(engine: Engine, credentials: Credentials | None = None,
                          ui_login: Callable[[dict], Awaitable[bool]] | None = None) -> APIRouter:
    """A1111's /internal helpers. A1111 serves them to anyone; here they need the API's login (--api-auth)
    or, when the page has a login, the page's (`ui_login`), since the queue's task ids and live previews
    of other users' jobs and the versions are nobody else's business."""
    guarded = credentials is not None or ui_login is not None
    r = APIRouter(prefix="/internal", tags=["internal"],
                  dependencies=[Depends(api_or_ui_login(credentials, ui_login))] if guarded else [])

    @r.get("/ping")
    def ping():
        """{} while the server runs."""
        return {}

    @r.get("/pending-tasks", response_model=schemas.PendingTasksResponse)
    def pending_tasks():
        """The jobs (UI and API alike) waiting behind the running one."""
        ids = engine.queue.pending_ids()
        return schemas.PendingTasksResponse(size=len(ids), tasks=ids)

    @r.post("/progress", response_model=schemas.InternalProgressResponse)
    def internal_progress(req: schemas.InternalProgressRequest):
        """A1111's per-task progress (its page polls this): by the task id a request was given with
        force_task_id (or the one /internal/pending-tasks lists)."""
        where, job = engine.queue.task(req.id_task or "")
        if job is None or where == "queued":
            ahead = engine.queue.ahead_of(job) if job is not None else 0
            return schemas.InternalProgressResponse(
                active=False, queued=where == "queued", completed=where == "completed", id_live_preview=-1,
                textinfo=f"In queue: {ahead} ahead" if where == "queued" else "Waiting...")
        state = job.state
        preview_image, preview_id = None, req.id_live_preview
        image = engine.previews.for_poll(job) if req.live_preview and state.sampling_step != req.id_live_preview \
            else None
        if image is not None:
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            preview_image = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
            preview_id = state.sampling_step
        return schemas.InternalProgressResponse(
            active=True, queued=False, completed=False, progress=state.progress(), eta=state.eta_seconds(),
            live_preview=preview_image, id_live_preview=preview_id, textinfo=state.textinfo or "Waiting...")

    @r.get("/sysinfo", response_model=dict[str, Any])
    def sysinfo():
        """Platform, Python, program, torch and package versions and the device, for bug reports."""
        return system_info(engine)

    return r
