"""One queue for all GPU work, shared by the UI and the API.

Jobs start in arrival order. With one worker (the default) they run one at a time on a single thread. With a
cluster of generation replicas (modules/cluster) the queue has one worker per replica: jobs marked `remote` (they
run elsewhere and only wait here) run side by side, while jobs that run in this process still run one at a time.
A caller that stops waiting (a client that disconnects) does not disturb the queue: its job still runs and the
next one follows. Progress, interrupt and skip are properties of the running job.

A job may name its `client` (the API's caller). A client's jobs are answered in the order it submitted them, as
with one worker: when jobs run side by side, one that ends before an earlier job of the same client is held
(it counts as running, with its result ready) until that job has been answered. A cancelled job is answered at
once.

A caller can wait for a job by blocking (`Job.wait`, for threads such as the UI's) or by awaiting
(`Job.wait_async`, for the HTTP server), so any number of queued requests hold no threads.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import random
import string
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from modules import openmp

log = logging.getLogger(__name__)

RECENT_TASKS = 256  # finished jobs /internal/progress can still tell about


class JobInterrupted(Exception):
    pass


class JobSkipped(Exception):
    pass


class JobStopped(JobInterrupted):
    """The job stopped between two images, as asked (JobState.stopping): what it made is complete."""


class JobCancelled(Exception):
    """The job was taken out of the queue before it ran."""


@dataclass
class JobState:
    """What /sdapi/v1/progress reports, A1111's `state` fields."""
    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    # A1111's stopping_generation ("Don't Interrupt in the middle"): the job finishes the image it is making and
    # makes no more (a generation job stops at its next batch, a script at its next cell)
    stopping: bool = False
    job_timestamp: str = ""
    started: float = 0.0
    textinfo: str | None = None
    # The latest latent of the running batch, for live previews (read by /progress, never written there).
    current_latent: Any = field(default=None, repr=False)
    # The job's result while it is being built (a GenerationResult for generation jobs): images appear
    # in it as they are finished.
    partial: Any = field(default=None, repr=False)

    def progress(self) -> float:
        if self.job_count <= 0:
            return 0.0
        p = self.job_no / self.job_count
        if self.sampling_steps > 0:
            p += self.sampling_step / self.sampling_steps / self.job_count
        return min(p, 1.0)

    def eta_seconds(self) -> float:
        p = self.progress()
        elapsed = time.time() - self.started if self.started else 0.0
        return elapsed / p - elapsed if p > 0 else 0.0


@dataclass(eq=False)  # a job is itself: compared and hashed by identity
class Job:
    id: str
    kind: str
    fn: Callable[["Job"], Any]
    task_id: str = ""  # A1111's task id: task(txt2img-XXXXXXX), or the client's force_task_id
    remote: bool = False  # it runs on a cluster replica: it may run beside other jobs (see JobQueue)
    client: str | None = None  # who asked: its jobs are answered in the order they were submitted (see JobQueue)
    state: JobState = field(default_factory=JobState)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    _callbacks: list[Callable[["Job"], None]] = field(default_factory=list, repr=False)
    _relay: Callable[[str], None] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    REQUESTS = {"interrupt": "interrupted", "skip": "skipped", "stop": "stopping"}

    def request(self, what: str) -> None:
        """Ask the job to stop at once ("interrupt"), to abandon its current batch ("skip") or to stop once the
        image it is making is done ("stop"): the flag its work checks is set, and the request goes at once to the
        relay, if one is set (see `relay_requests`)."""
        with self._lock:
            setattr(self.state, self.REQUESTS[what], True)
            relay = self._relay
        if relay is not None:
            self._send(relay, what)

    def relay_requests(self, relay: Callable[[str], None] | None) -> None:
        """Pass each interrupt and skip request to `relay(what)` from now on (None: no longer), those made before
        at once: a job run elsewhere (a cluster replica) gets them without waiting for its next progress
        report. Every request reaches the relay once, whichever of the two calls comes first."""
        with self._lock:
            self._relay = relay
            made = [what for what, flag in self.REQUESTS.items() if getattr(self.state, flag)]
        if relay is not None:
            for what in made:
                self._send(relay, what)

    def _send(self, relay: Callable[[str], None], what: str) -> None:
        try:
            relay(what)
        except Exception:  # the flag is set; the job's own check (a replica's next poll) may still see it
            log.warning("Job %s: passing on its %s failed", self.id, what, exc_info=True)

    def add_done_callback(self, fn: Callable[["Job"], None]) -> None:
        """Call `fn(job)` once the job has finished (at once if it already has), from the worker thread."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _finish(self) -> None:
        with self._lock:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # e.g. the waiter's event loop is gone; the queue goes on regardless
                log.debug("done-callback of job %s failed", self.id, exc_info=True)

    async def wait_async(self) -> Any:
        """Await the result without holding a thread (re-raising the job's error)."""
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def wake(_job: "Job") -> None:
            loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

        self.add_done_callback(wake)
        await finished
        return self.wait(0)

    def check(self) -> None:
        """Called by the work between steps: raises if the job was interrupted or its batch skipped."""
        if self.state.interrupted:
            raise JobInterrupted()
        if self.state.skipped:
            self.state.skipped = False
            raise JobSkipped()

    def wait(self, timeout: float | None = None) -> Any:
        openmp.release()  # this thread's OpenMP helpers would slow the job's down (see modules/openmp.py)
        if not self.done.wait(timeout):
            raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


class JobQueue:
    def __init__(self, workers: int = 1):
        """`workers`: how many jobs may run at once (one per cluster replica); only `remote` jobs ever overlap."""
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._local = threading.Lock()  # held by a job that runs in this process: never two at once
        self.running: list[Job] = []  # in the order they started
        self.jobs_run = 0  # jobs that have finished running (not counting those cancelled before they ran)
        self._pending: list[Job] = []
        self._unanswered: dict[str, list[Job]] = {}  # client -> its jobs not answered yet, in submission order
        self._held: set[Job] = set()  # jobs that have ended and wait for an earlier job of their client
        self._answering: set[Job] = set()  # jobs that have ended and whose waiters are being told
        self._tasks: dict[str, Job] = {}  # task id -> job, until it finishes
        self._finished: OrderedDict[str, None] = OrderedDict()  # the last RECENT_TASKS finished task ids
        self._stop_hooks: list[Callable[[], None]] = []
        self._threads = [threading.Thread(target=self._work, name=f"job-worker-{n}", daemon=True)
                         for n in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    @property
    def current(self) -> Job | None:
        """The running job (the first started, when several run): A1111's one job in progress."""
        running = self.running
        return running[0] if running else None

    def is_running(self, job: Job) -> bool:
        """It runs, or it has ended and its answer waits for an earlier job of its client or is on its way."""
        return job in self.running or job in self._held or job in self._answering

    def submit(self, kind: str, fn: Callable[[Job], Any], task_id: str | None = None, remote: bool = False,
               client: str | None = None) -> Job:
        """Queue `fn(job)`. `task_id` names the job for A1111's /internal/progress (a random one by default);
        `remote`: it runs elsewhere (a cluster replica), so it may run beside other jobs; `client`: who asked
        (its jobs are answered in the order it submitted them)."""
        random_part = "".join(random.choices(string.ascii_uppercase + string.digits, k=7))
        job = Job(id=f"{kind}-{next(self._ids)}", kind=kind, fn=fn, task_id=task_id or f"task({kind}-{random_part})",
                  remote=remote, client=client)
        with self._lock:
            self._pending.append(job)
            self._tasks[job.task_id] = job
            if client is not None:
                self._unanswered.setdefault(client, []).append(job)
        self._queue.put(job)
        return job

    def run(self, kind: str, fn: Callable[[Job], Any]) -> Any:
        """Submit and wait for the result (re-raising the job's error)."""
        return self.submit(kind, fn).wait()

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._pending)

    def pending_ids(self) -> list[str]:
        """The task ids of the jobs waiting to run, in the order they will run (not the running one)."""
        with self._lock:
            return [job.task_id for job in self._pending]

    def task(self, task_id: str) -> tuple[str, Job | None]:
        """("queued" | "running", the job), ("completed", None) for a recently finished one, else ("unknown", None)."""
        with self._lock:
            job = self._tasks.get(task_id)
            if job is not None:
                return ("running" if self.is_running(job) else "queued"), job
            return ("completed" if task_id in self._finished else "unknown"), None

    def _forget(self, job: Job) -> None:
        with self._lock:
            self._tasks.pop(job.task_id, None)
            self._finished[job.task_id] = None
            while len(self._finished) > RECENT_TASKS:
                self._finished.popitem(last=False)

    def ahead_of(self, job: Job) -> int:
        """How many jobs run before `job` (the running one included); 0 once it runs or is done."""
        with self._lock:
            if job not in self._pending:
                return 0
            return self._pending.index(job) + len(self.running)

    def cancel(self, job: Job) -> str:
        """Take a queued job out of the queue ("cancelled": it never runs; its waiters get JobCancelled),
        or interrupt it when it runs ("interrupted"); "" when it has finished already."""
        with self._lock:
            queued = job in self._pending
            if queued:
                self._pending.remove(job)
        if queued:
            job.error = JobCancelled(f"job {job.id} was cancelled before it ran")
            self._answer(job, at_once=True)
            return "cancelled"
        if job in self.running and not job.done.is_set():
            job.request("interrupt")
            return "interrupted"
        return ""

    def cancel_all(self) -> None:
        """Cancel every queued job and interrupt the running one (the server is stopping: their answers go out
        at once, the running job's with what it had made, instead of being cut off when the stop's grace ends)."""
        with self._lock:
            queued = list(self._pending)
        for job in queued:
            self.cancel(job)
        self.interrupt()

    def interrupt(self) -> None:
        """Interrupt the running job (every running job, when several run)."""
        for job in list(self.running):
            job.request("interrupt")

    def stop_after_current(self) -> bool:
        """A1111's "Don't Interrupt in the middle" (its UI's first click on Interrupt): each running job that makes
        more than one image, and is not stopping already, finishes the one it is making and stops. Returns whether
        any was asked to; the caller interrupts otherwise (A1111's second click, or a job of one image)."""
        asked = False
        for job in list(self.running):
            if not job.state.stopping and job.state.job_count > 1:
                job.request("stop")
                asked = True
        return asked

    def skip(self) -> None:
        for job in list(self.running):
            job.request("skip")

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            local = None if job.remote else self._local
            if local is not None:
                local.acquire()  # another worker may be running a job in this process
            try:
                with self._lock:
                    if job not in self._pending:  # cancelled while it waited
                        continue
                    self._pending.remove(job)
                    self.running = [*self.running, job]
                self._run(job)
            finally:
                if local is not None:
                    local.release()

    def _run(self, job: Job) -> None:
        job.state.job = job.id
        job.state.started = time.time()
        try:
            job.result = job.fn(job)
        except BaseException as e:  # the worker must survive anything a job raises
            job.error = e
            if not isinstance(e, (ValueError, JobInterrupted, JobCancelled)):
                log.exception("Job %s failed", job.id)
        finally:
            job.state.current_latent = None
            self._answer(job, ran=True)

    def _answer(self, job: Job, at_once: bool = False, ran: bool = False) -> None:
        """Give `job`'s waiters its outcome, once every earlier job of its client has been answered (`at_once`:
        now, for a cancelled job); then any later jobs of that client that were held for it. `ran`: it has just
        run; it leaves `running` in the same step as it is held or answered, so that no one sees it queued."""
        with self._lock:
            if ran:
                self.running = [j for j in self.running if j is not job]
                self.jobs_run += 1
            line = self._unanswered.get(job.client) if job.client is not None else None
            if line is None:
                ready = [job]
            else:
                if at_once:
                    line.remove(job)
                    ready = [job]
                else:
                    self._held.add(job)
                    ready = []
                while line and line[0] in self._held:
                    ready.append(line.pop(0))
                if not line:
                    del self._unanswered[job.client]
                self._held.difference_update(ready)
            self._answering.update(ready)
        for finished in ready:
            self._forget(finished)
            finished._finish()
            with self._lock:
                self._answering.discard(finished)

    def on_stop(self, fn: Callable[[], None]) -> None:
        """Call `fn()` when the queue stops (the background hasher stops and joins its thread there)."""
        self._stop_hooks.append(fn)

    def stop(self) -> None:
        """No job runs after those running now (if any); what was registered with `on_stop` stops too."""
        for _ in self._threads:
            self._queue.put(None)
        for fn in self._stop_hooks:
            try:
                fn()
            except Exception:  # stopping goes on regardless
                log.exception("stopping %s failed", fn)
