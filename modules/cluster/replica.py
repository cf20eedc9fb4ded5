"""The Serve deployment that runs generation jobs for the front (see modules/cluster/__init__.py).

One replica holds one model manager and pipeline (one GPU where Ray gives it one, else the CPU). `generate` is
an async generator: it runs the job on a thread and streams what the front needs: which replica took it, the
job's progress (about five times a second, with the latest latent for live previews), then its result and the
files to write, or the error it raised. Between updates it asks the control actor for the job's interrupt and
skip flags. The checkpoint the job needs is its multiplexed model id, so Serve sends a job to a replica that
has that checkpoint loaded when there is one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import ray
from ray import serve

from modules import offline

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often a running job's progress is sent and its flags are read
DEVICE_FLAGS = ("use_cpu", "device_id", "no_half", "no_half_vae", "precision")


@dataclass(frozen=True)
class ReplicaConfig:
    """What a replica is built from: the front's folders and flags (the same paths on every node)."""
    paths: Any  # modules.paths.Paths
    device_flags: dict[str, Any]
    limits: Any  # modules.limits.Limits
    low_memory: str
    extra_files: tuple[Path, ...]
    builtin_files: tuple[Path, ...]
    control: str  # the control actor's name (in `namespace`)
    namespace: str
    # torch's CPU threads: the front's own count on this machine. Ray starts a replica with OMP_NUM_THREADS=1 (a
    # replica asks for no CPU), and with fewer threads the matrix products add in another order: the images
    # would no longer be bit-equal to the single-process app's (seen with the built-in model). None: Ray's.
    torch_threads: int | None = None


class _Slot:
    """What Serve's model multiplexing keeps per checkpoint: only its name (the model itself is the model
    manager's; a replica holds one)."""

    def __init__(self, name: str):
        self.name = name


# One job at a time per replica (the front's queue has one worker per replica): Serve then sends the next job to
# another replica instead of queueing it behind a busy one that has the checkpoint loaded.
@serve.deployment(name="generation", max_ongoing_requests=1, health_check_period_s=2,
                  health_check_timeout_s=30)
class GenerationReplica:
    def __init__(self, config: ReplicaConfig):
        offline.apply()
        from modules import bootstrap, devices, logs

        logs.setup()
        if config.torch_threads:
            import torch

            torch.set_num_threads(config.torch_threads)
        self.id = serve.get_replica_context().replica_id.unique_id
        plan = devices.plan(**config.device_flags, skip_cuda_test=True)
        devices.configure_torch(plan.device)
        self._generation, self._models, self._writer = bootstrap.build_replica(
            config.paths, plan, config.limits, extra_files=config.extra_files,
            builtin_files=config.builtin_files, low_memory=config.low_memory)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="replica-job")  # one job at a time
        self._control = ray.get_actor(config.control, namespace=config.namespace)
        ray.get(self._control.register.remote(self.id, {
            "pid": os.getpid(), "device": plan.describe, "node": ray.util.get_node_ip_address()}))
        log.info("Replica %s ready on %s", self.id, plan.describe)

    @serve.multiplexed(max_num_models_per_replica=1)
    async def checkpoint_slot(self, name: str) -> _Slot:
        return _Slot(name)

    async def generate(self, job_id: str, task_id: str, kind: str, accepted) -> AsyncIterator[dict[str, Any]]:
        from modules.jobs import Job

        name = serve.get_multiplexed_model_id()
        if name:
            await self.checkpoint_slot(name)
        yield {"event": "start", "replica": self.id}
        job = Job(id=job_id, kind=kind, fn=lambda _job: None, task_id=task_id)
        await self._control.job_started.remote(self.id, task_id)
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._pool, self._run, job, accepted)
        last = None
        try:
            while not running.done():
                await asyncio.wait([running], timeout=POLL_S)
                for flag in (await self._control.take_flags.remote(job_id)):
                    job.request(flag)
                update = _progress(job)
                if update != last:
                    last = update
                    yield {"event": "progress", **update, "latent": job.state.current_latent}
            outcome, error = running.result()
        finally:
            current = self._models.current
            await self._control.job_ended.remote(self.id, current.info.name if current else None)
        if error is not None:
            yield {"event": "error", "error": error}
        else:
            yield {"event": "done", "outcome": outcome}

    def _run(self, job, accepted):
        """The job on this replica's thread: (RemoteOutcome, None), or (None, the exception it raised)."""
        from modules.services.generation import RemoteOutcome

        self._writer.take()
        try:
            result = self._generation.run_accepted(job, accepted)
        except BaseException as e:  # sent to the front, which raises it for the job's caller
            return None, e
        finally:
            job.state.current_latent = None
        return RemoteOutcome(result, self._writer.take()), None


def _progress(job) -> dict[str, Any]:
    s = job.state
    return {"job_count": s.job_count, "job_no": s.job_no, "sampling_step": s.sampling_step,
            "sampling_steps": s.sampling_steps, "textinfo": s.textinfo, "job_timestamp": s.job_timestamp}
