"""One queue for all GPU work, shared by the UI and the API.

Jobs run one at a time, in arrival order, on a single worker thread. A caller that stops waiting
(a client that disconnects) does not disturb the queue: its job still runs and the next one follows.
Progress, interrupt and skip are properties of the running job.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)


class JobInterrupted(Exception):
    pass


class JobSkipped(Exception):
    pass


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
    job_timestamp: str = ""
    started: float = 0.0
    textinfo: str | None = None

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


@dataclass
class Job:
    id: str
    kind: str
    fn: Callable[["Job"], Any]
    state: JobState = field(default_factory=JobState)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None

    def check(self) -> None:
        """Called by the work between steps: raises if the job was interrupted or its batch skipped."""
        if self.state.interrupted:
            raise JobInterrupted()
        if self.state.skipped:
            self.state.skipped = False
            raise JobSkipped()

    def wait(self, timeout: float | None = None) -> Any:
        if not self.done.wait(timeout):
            raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


class JobQueue:
    def __init__(self):
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.current: Job | None = None
        self._pending: list[Job] = []
        self._thread = threading.Thread(target=self._work, name="job-worker", daemon=True)
        self._thread.start()

    def submit(self, kind: str, fn: Callable[[Job], Any]) -> Job:
        job = Job(id=f"{kind}-{next(self._ids)}", kind=kind, fn=fn)
        with self._lock:
            self._pending.append(job)
        self._queue.put(job)
        return job

    def run(self, kind: str, fn: Callable[[Job], Any]) -> Any:
        """Submit and wait for the result (re-raising the job's error)."""
        return self.submit(kind, fn).wait()

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._pending)

    def interrupt(self) -> None:
        job = self.current
        if job is not None:
            job.state.interrupted = True

    def skip(self) -> None:
        job = self.current
        if job is not None:
            job.state.skipped = True

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._pending.remove(job)
            self.current = job
            job.state.job = job.id
            job.state.started = time.time()
            try:
                job.result = job.fn(job)
            except BaseException as e:  # the worker must survive anything a job raises
                job.error = e
                if not isinstance(e, (ValueError, JobInterrupted)):
                    log.exception("Job %s failed", job.id)
            finally:
                self.current = None
                job.done.set()

    def stop(self) -> None:
        self._queue.put(None)
