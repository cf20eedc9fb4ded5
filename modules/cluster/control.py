"""The actor the front and the replicas share: the replicas' registry and the running jobs' interrupt/skip flags.
A plain class: the front makes it a Ray actor (`ray.remote(JobControl)`), so this module does not import ray."""

from __future__ import annotations

import time
from typing import Any


class JobControl:
    def __init__(self):
        self._replicas: dict[str, dict[str, Any]] = {}  # replica id -> its record, in the order they registered
        self._flags: dict[str, dict[str, bool]] = {}  # job id -> {"interrupt": ..., "skip": ...}

    # --- replicas ----------------------------------------------------------------------------
    def register(self, replica_id: str, record: dict[str, Any]) -> None:
        """A replica that has started (a replacement registers under a new id)."""
        self._replicas[replica_id] = {"id": replica_id, "state": "idle", "checkpoint": None, "jobs_run": 0,
                                      "running": None, "started": time.time(), **record}

    def update(self, replica_id: str, **fields: Any) -> None:
        record = self._replicas.get(replica_id)
        if record is not None:
            record.update(fields)

    def job_started(self, replica_id: str, task_id: str) -> None:
        self.update(replica_id, state="busy", running=task_id)

    def job_ended(self, replica_id: str, checkpoint: str | None) -> None:
        record = self._replicas.get(replica_id)
        if record is not None:
            record.update(state="idle", running=None, jobs_run=record["jobs_run"] + 1)
            if checkpoint:
                record["checkpoint"] = checkpoint

    def mark_dead(self, replica_id: str) -> None:
        self.update(replica_id, state="dead", running=None)

    def replicas(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._replicas.values()]

    # --- a running job's flags -----------------------------------------------------------------
    def flag(self, job_id: str, name: str) -> None:
        self._flags.setdefault(job_id, {})[name] = True

    def take_flags(self, job_id: str) -> dict[str, bool]:
        """The flags set for `job_id` since the last call (a skip is taken once, as Job.check takes it)."""
        return self._flags.pop(job_id, {})
