"""What GET /sdapi/v1/cluster reports: the processes that run generation jobs. Without Ray that is one replica,
this process; with `--ray-workers` / `--ray-address` the Ray replicas (modules/cluster/front.py gives a view of
the same shape)."""

from __future__ import annotations

import os
from typing import Any, Protocol

from modules.jobs import JobQueue
from modules.services.checkpoints import CheckpointService


class ClusterView(Protocol):
    def replicas(self) -> list[dict[str, Any]]: ...


class LocalCluster:
    """The process itself as the one replica."""

    def __init__(self, queue: JobQueue, checkpoints: CheckpointService, device: str):
        self._queue = queue
        self._checkpoints = checkpoints
        self._device = device

    def replicas(self) -> list[dict[str, Any]]:
        running = self._queue.current
        model = self._checkpoints.current
        return [{"id": "local", "state": "busy" if running is not None else "idle",
                 "checkpoint": model.info.name if model is not None else None, "device": self._device,
                 "jobs_run": self._queue.jobs_run, "running": running.task_id if running is not None else None,
                 "pid": os.getpid()}]
