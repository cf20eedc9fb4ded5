"""The `/sdapi/v1` routes: thin translations between A1111's JSON and the engine."""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from modules import images
from modules.api import schemas
from modules.engine import BadRequest, Engine, UnknownOption, describe_validation_error
from modules.generation import samplers
from modules.generation.params import GenerationParams
from modules.jobs import JobState
from modules.models.checkpoint_file import CheckpointError
from modules.generation.pipeline import NansError


def error_response(status: int, exc: Exception, detail: str) -> JSONResponse:
    """A1111's error body."""
    return JSONResponse(status_code=status, content={
        "error": type(exc).__name__, "detail": detail, "body": "", "errors": detail})


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BadRequest)
    async def _bad_request(_request: Request, exc: BadRequest):
        return error_response(422 if isinstance(exc, UnknownOption) else 400, exc, str(exc))

    @app.exception_handler(CheckpointError)
    async def _checkpoint(_request: Request, exc: CheckpointError):
        return error_response(500, exc, str(exc))

    @app.exception_handler(NansError)
    async def _nans(_request: Request, exc: NansError):
        return error_response(500, exc, str(exc))


def encode_png(image) -> str:
    return base64.b64encode(images.png_bytes(image, image.info.get("parameters"))).decode("ascii")


def to_params(req: schemas.Txt2ImgRequest) -> GenerationParams:
    try:
        return GenerationParams(
            prompt=req.prompt, negative_prompt=req.negative_prompt, seed=req.seed,
            sampler_name=req.sampler_name or req.sampler_index, scheduler=req.scheduler, steps=req.steps,
            cfg_scale=req.cfg_scale, width=req.width, height=req.height, batch_size=req.batch_size,
            n_iter=req.n_iter, override_settings=req.override_settings or {},
            save_images=req.save_images and not req.do_not_save_samples,
        )
    except ValidationError as e:
        raise BadRequest(describe_validation_error(e)) from None


def build_router(engine: Engine, cmd_flags: dict[str, Any]) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])

    @r.post("/txt2img", response_model=schemas.Txt2ImgResponse)
    async def txt2img(req: schemas.Txt2ImgRequest):
        params = to_params(req)
        result = await run_in_threadpool(engine.txt2img, params)
        result.warnings.extend(f"{name} is not supported yet and was ignored" for name in req.unsupported_fields())
        if req.override_settings and not req.override_settings_restore_afterwards:
            await run_in_threadpool(engine.set_options, req.override_settings)
        encoded = [encode_png(im) for im in result.images] if req.send_images else []
        return schemas.Txt2ImgResponse(images=encoded, parameters=req.model_dump(), info=json.dumps(result.info))

    @r.get("/sd-models", response_model=list[schemas.SDModelItem])
    def sd_models():
        out = []
        for info in engine.models.checkpoints.list():
            yaml_beside = info.filename.with_suffix(".yaml")
            out.append(schemas.SDModelItem(
                title=info.title, model_name=info.model_name, hash=info.shorthash, sha256=info.sha256,
                filename=str(info.filename), config=str(yaml_beside) if yaml_beside.is_file() else None))
        return out

    @r.post("/refresh-checkpoints")
    def refresh_checkpoints():
        engine.models.checkpoints.refresh()
        return {}

    @r.get("/sd-vae", response_model=list[schemas.SDVaeItem])
    def sd_vae():
        return [schemas.SDVaeItem(model_name=v.name, filename=str(v.filename)) for v in engine.models.vaes.list()]

    @r.post("/refresh-vae")
    def refresh_vae():
        engine.models.vaes.refresh()
        return {}

    @r.get("/samplers", response_model=list[schemas.SamplerItem])
    def sampler_list():
        return [schemas.SamplerItem(name=s.name, aliases=list(s.aliases), options=s.options) for s in samplers.SAMPLERS]

    @r.get("/schedulers", response_model=list[schemas.SchedulerItem])
    def scheduler_list():
        return [schemas.SchedulerItem(name=key, label=label, default_rho=7.0 if key == "karras" else -1)
                for key, label in samplers.SCHEDULE_TYPES]

    @r.get("/options")
    def get_options():
        return engine.settings.values.model_dump()

    @r.post("/options")
    async def set_options(changes: dict[str, Any]):
        await run_in_threadpool(engine.set_options, changes)
        return {}

    @r.get("/cmd-flags")
    def get_cmd_flags():
        return cmd_flags

    @r.get("/progress", response_model=schemas.ProgressResponse)
    def progress(skip_current_image: bool = False):
        job = engine.queue.current
        state = job.state if job is not None and job.kind == "txt2img" else JobState()
        return schemas.ProgressResponse(
            progress=state.progress(), eta_relative=state.eta_seconds(),
            state=schemas.ProgressState(
                skipped=state.skipped, interrupted=state.interrupted, job=state.job, job_count=state.job_count,
                job_timestamp=state.job_timestamp, job_no=state.job_no, sampling_step=state.sampling_step,
                sampling_steps=state.sampling_steps),
            current_image=None, textinfo=state.textinfo)

    @r.post("/interrupt")
    def interrupt():
        engine.queue.interrupt()
        return {}

    @r.post("/skip")
    def skip():
        engine.queue.skip()
        return {}

    return r
