"""Beyond A1111: a non-blocking job API, so a client need not hold a request open for minutes.

    POST   /sdapi/v1/jobs        {"type": "txt2img" | "img2img", "request": {<A1111 request>},
                                  "callback_url": optional}  -> {"id", "status", "position"}
    GET    /sdapi/v1/jobs        the queued and running jobs, in the order they run, with their positions
    GET    /sdapi/v1/jobs/{id}   status, position, progress, ETA; when done the A1111 response
                                 ({"images", "parameters", "info"}) as `result`, or the `error`
    DELETE /sdapi/v1/jobs/{id}   cancel a queued job (it never runs) or interrupt the running one

The jobs are the same queue entries the UI and the blocking routes make, so positions count every job.
Ids are random (a client cannot guess another's). Finished jobs are kept for the last `KEEP` submissions.
A `callback_url` receives the finished job's JSON by POST, only when its host is one of
`--api-callback-hosts` (none by default: the server should not be made to call arbitrary hosts).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from modules.api import schemas
from modules.api.routes import basic_auth, build_response, client_of, prepare, to_img2img_params, to_params
from modules.auth import Credentials
from modules.engine import BadRequest, Engine
from modules.jobs import Job, JobCancelled

log = logging.getLogger(__name__)

KEEP = 100  # finished jobs remembered (with their images)
CALLBACK_TIMEOUT = 30


class JobSubmission(BaseModel):
    type: Literal["txt2img", "img2img"] = "txt2img"
    request: dict[str, Any] = Field(default_factory=dict, description="The body /sdapi/v1/txt2img or /img2img takes")
    callback_url: str | None = Field(None, description="POSTed the finished job's JSON (host must be allowed by "
                                                       "--api-callback-hosts)")


class JobCreated(BaseModel):
    id: str
    status: str
    position: int


class JobStatus(BaseModel):
    id: str
    type: str
    status: Literal["queued", "running", "done", "interrupted", "cancelled", "failed"]
    position: int = Field(description="Jobs that run before this one (the running one included); 0 once it runs")
    progress: float
    eta_relative: float
    state: dict[str, Any] = Field(default_factory=dict)
    result: schemas.Txt2ImgResponse | None = None
    error: str | None = None


class UnknownJob(BadRequest):
    """No job has that id (or it was forgotten)."""
    status_code = 404


@dataclass
class Tracked:
    job: Job
    kind: str
    req: schemas.Txt2ImgRequest
    parameters: dict[str, Any]
    warnings: list[str]
    callback_url: str | None = None
    response: schemas.Txt2ImgResponse | None = None
    error: str | None = None
    ready: threading.Event = field(default_factory=threading.Event)  # response or error is set


def callback_problem(url: str, hosts: list[str]) -> str | None:
    """Why `url` may not be called back (None when it may): an http(s) URL whose host (or host:port) is one
    of `hosts`. URLs that urllib would read differently from this check (a user name, a backslash, spaces
    or control characters) are refused, and so is a port that is not a number from 0 to 65535."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as e:  # e.g. an unclosed [IPv6 address
        return f"callback_url: not a valid URL ({e})"
    if parts.scheme not in ("http", "https") or not hostname:
        return "callback_url: must be an http:// or https:// URL with a host"
    if "@" in parts.netloc or "\\" in url or any(c.isspace() or not c.isprintable() for c in url):
        return "callback_url: user names, backslashes, spaces and control characters are not allowed in it"
    try:
        port = parts.port
    except ValueError as e:
        return f"callback_url: malformed port ({e})"
    netloc = f"{hostname}:{port}" if port else hostname
    if hostname not in hosts and netloc not in hosts:
        return ("callback_url: its host is not allowed; start the server with --api-callback-hosts HOST[,HOST2] "
                "to allow it")
    return None


def normal_hosts(hosts: list[str]) -> list[str]:
    """--api-callback-hosts entries as callback_problem compares them: trimmed and in lower case (a URL's
    host name is read in lower case, so an entry written with capitals would never match)."""
    return [h.strip().lower() for h in hosts if h.strip()]


def allowed_callback(url: str, hosts: list[str]) -> bool:
    return callback_problem(url, hosts) is None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Callbacks never follow a redirect: its target was not checked against --api-callback-hosts (the
    3xx answer is then an HTTPError, logged as a failed callback)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_callback_opener = urllib.request.build_opener(_NoRedirects)


def build_jobs_router(engine: Engine, credentials: Credentials | None = None,
                      callback_hosts: list[str] | None = None) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["jobs"],
                  dependencies=[Depends(basic_auth(credentials))] if credentials else [])
    tracked: OrderedDict[str, Tracked] = OrderedDict()
    lock = threading.Lock()
    hosts = normal_hosts(callback_hosts or [])

    def finish(entry: Tracked) -> None:
        """Runs on the worker thread when the job ends: build the A1111 response, then call back."""
        job = entry.job
        if job.error is not None:
            cancelled = isinstance(job.error, JobCancelled)
            entry.error = "cancelled" if cancelled else str(job.error) or type(job.error).__name__
        else:
            try:
                entry.response = build_response(engine, entry.req, job.result, entry.warnings, entry.parameters)
            except Exception as e:  # reported in the job's status; the queue goes on
                entry.error = f"{type(e).__name__}: {e}"
        entry.ready.set()
        if entry.callback_url:
            threading.Thread(target=call_back, args=(entry,), daemon=True).start()

    def call_back(entry: Tracked) -> None:
        body = json.dumps(describe(entry).model_dump()).encode("utf-8")
        request = urllib.request.Request(entry.callback_url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with _callback_opener.open(request, timeout=CALLBACK_TIMEOUT) as reply:  # host checked, no redirects
                reply.read()
        except OSError as e:
            log.warning("Callback for job %s to %s failed: %s", entry.job.id, entry.callback_url, e)

    def status_of(entry: Tracked) -> str:
        job = entry.job
        if not job.done.is_set():
            return "running" if engine.queue.is_running(job) else "queued"
        if isinstance(job.error, JobCancelled):
            return "cancelled"
        if entry.error:
            return "failed"
        return "interrupted" if getattr(job.result, "interrupted", False) else "done"

    def describe(entry: Tracked) -> JobStatus:
        job, state = entry.job, entry.job.state
        running = engine.queue.is_running(job) and not job.done.is_set()
        finished = job.done.is_set() and entry.ready.is_set()
        status = status_of(entry) if (finished or not job.done.is_set()) else "running"
        return JobStatus(
            id=public_id(entry), type=entry.kind, status=status, position=engine.queue.ahead_of(job),
            progress=1.0 if finished else state.progress() if running else 0.0,
            eta_relative=state.eta_seconds() if running else 0.0,
            state={"job_count": state.job_count, "job_no": state.job_no, "sampling_step": state.sampling_step,
                   "sampling_steps": state.sampling_steps, "interrupted": state.interrupted},
            result=entry.response if finished else None, error=entry.error if finished else None)

    def public_id(entry: Tracked) -> str:
        return next(key for key, value in tracked.items() if value is entry)

    def find(job_id: str) -> Tracked:
        with lock:
            entry = tracked.get(job_id)
        if entry is None:
            raise UnknownJob(f"No job {job_id!r} (unknown, or finished long ago: the last {KEEP} are kept)")
        return entry

    @r.post("/jobs", response_model=JobCreated)
    async def submit(body: JobSubmission, request: Request):
        """Queue a txt2img or img2img request and answer at once with its id."""
        problem = callback_problem(body.callback_url, hosts) if body.callback_url else None
        if problem:
            raise BadRequest(problem)
        model = schemas.Img2ImgRequest if body.type == "img2img" else schemas.Txt2ImgRequest
        try:
            req = model.model_validate(body.request)
        except ValueError as e:
            raise BadRequest(f"request: {e}") from None
        warnings = prepare(req, engine)
        client = client_of(request)
        if body.type == "img2img":
            params = await run_in_threadpool(to_img2img_params, req, engine.limits)
            job = await run_in_threadpool(engine.submit_img2img, params, req.force_task_id, client)
            parameters = req.model_dump(exclude=set(schemas.Img2ImgRequest.HIRES_FIELDS))
            if not req.include_init_images:
                parameters["init_images"], parameters["mask"] = None, None
        else:
            job = await run_in_threadpool(engine.submit_txt2img, to_params(req), req.force_task_id, client)
            parameters = req.model_dump()
        entry = Tracked(job, body.type, req, parameters, warnings, body.callback_url)
        job_id = uuid.uuid4().hex
        with lock:
            tracked[job_id] = entry
            while len(tracked) > KEEP:
                tracked.popitem(last=False)
        job.add_done_callback(lambda _job: finish(entry))
        return JobCreated(id=job_id, status=status_of(entry), position=engine.queue.ahead_of(job))

    @r.get("/jobs", response_model=list[JobStatus])
    def list_jobs():
        """The queued and running jobs, first to run first (the running one has position 0)."""
        with lock:
            entries = [e for e in tracked.values() if not e.job.done.is_set()]
        return sorted((describe(e) for e in entries), key=lambda s: (s.status != "running", s.position))

    @r.get("/jobs/{job_id}", response_model=JobStatus)
    def job_status(job_id: str):
        return describe(find(job_id))

    @r.delete("/jobs/{job_id}", response_model=JobStatus)
    def cancel(job_id: str):
        """Cancel a queued job, or interrupt the running one (its finished images are kept)."""
        entry = find(job_id)
        engine.queue.cancel(entry.job)
        entry.ready.wait(5)  # a cancelled job finishes at once; an interrupted one at its next step
        return describe(entry)

    return r

