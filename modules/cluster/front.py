"""The front's side of the cluster: start or join Ray, deploy the replicas, run one job on one of them.

`RayCluster.run(job, accepted)` is what GenerationService calls for each generation job (its `remote`). It sends
the accepted request to the deployment with the job's checkpoint as the multiplexed model id (Serve prefers a
replica that has it loaded), copies the replica's progress into `job.state`, passes the job's interrupt and skip
on through the control actor as they are asked for, and returns the replica's result and the files to write. A
replica that dies while it runs the job (its process killed, its node lost) is marked dead and the job is sent
once more, to another replica (Serve starts a replacement for the dead one); a second death ends the job as
failed, with the reason. A job that ended with an error of its own is never sent again: no job runs twice to
completion.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import Any

import ray
from ray import serve

from modules import offline
from modules.cluster.control import JobControl
from modules.cluster.replica import DEVICE_FLAGS, GenerationReplica, ReplicaConfig
from modules.jobs import Job
from modules.paths import ROOT

log = logging.getLogger(__name__)

NAMESPACE = "sd-webui"
CONTROL = "job-control"
APP = "sd-webui-generation"
ATTEMPTS = 2  # a job whose replica dies is sent once more
LOCAL_OBJECT_STORE = 512 * 1024 * 1024  # images and latents only: the models never travel through it
READY_TIMEOUT_S = 600  # replicas building their engine (torch import, registries) on a slow machine


class ReplicaDied(RuntimeError):
    pass


class RayCluster:
    """Ray with N generation replicas: a local instance (`workers`), or an existing cluster (`address`)."""

    def __init__(self, workers: int, address: str | None, config: ReplicaConfig, use_gpus: bool = True):
        self.workers = workers
        self.address = address
        self._config = config
        self._use_gpus = use_gpus  # one GPU per replica when the cluster has GPUs (not with --use-cpu all/sd)
        self._lock = threading.Lock()
        self._started = False
        self._handle = None
        self._control = None

    @classmethod
    def from_args(cls, args, workers: int, paths, limits, low_memory: str, extra_files, builtin_files
                  ) -> "RayCluster":
        import torch

        use_cpu = any(m in ("all", "sd") for m in (args.use_cpu or []))
        config = ReplicaConfig(
            paths=paths, device_flags={name: getattr(args, name) for name in DEVICE_FLAGS}, limits=limits,
            low_memory=low_memory, extra_files=tuple(extra_files), builtin_files=tuple(builtin_files),
            control=CONTROL, namespace=NAMESPACE, torch_threads=None if args.ray_address else torch.get_num_threads())
        return cls(workers, args.ray_address, config, use_gpus=not use_cpu)

    # --- start and stop ------------------------------------------------------------------------
    def start(self) -> None:
        """Start Ray (or connect to `address`), the control actor and the replicas; waits until they are up."""
        offline.apply()
        env = {name: os.environ[name] for name in offline.ENVIRONMENT}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        if not self.address and self.workers > 1 and "OMP_WAIT_POLICY" not in os.environ:
            # Replicas sharing this machine's cores: OpenMP threads that spin while they wait take the cores from
            # the other replica's (measured, 2 replicas on 2 cores, 256x256: 13 images a minute spinning, 65
            # passive). The threads and so the images stay as they are.
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        runtime_env = {"env_vars": env}
        if self.address:
            ray.init(address=self.address, namespace=NAMESPACE, runtime_env=runtime_env, log_to_driver=False)
        else:
            # A private instance on this machine: loopback only, no dashboard, no usage statistics. "local": a
            # new instance even when RAY_ADDRESS or a `ray start` on this machine (/tmp/ray/ray_current_cluster)
            # names another, which ray.init() would otherwise join.
            ray.init(address="local", namespace=NAMESPACE, runtime_env=runtime_env, include_dashboard=False,
                     _node_ip_address="127.0.0.1", num_cpus=os.cpu_count() or 1,
                     object_store_memory=LOCAL_OBJECT_STORE, log_to_driver=False)
        self._control = ray.remote(JobControl).options(name=CONTROL, num_cpus=0).remote()
        serve.start(proxy_location="Disabled")
        # Placed by GPUs, or side by side on the CPU (each with the front's thread count: see ReplicaConfig).
        actor_options: dict[str, Any] = {"num_cpus": 0}
        if self._use_gpus and ray.cluster_resources().get("GPU", 0) >= 1:
            actor_options["num_gpus"] = 1
        app = GenerationReplica.options(num_replicas=self.workers, ray_actor_options=actor_options).bind(
            self._config)
        self._handle = serve.run(app, name=APP, route_prefix=None, blocking=False)
        self._wait_ready()
        self._started = True
        log.info("Ray cluster: %d generation replica(s) ready%s", self.workers,
                 f" on {self.address}" if self.address else "")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            live = [r for r in self.replicas() if r["state"] != "dead"]
            if len(live) >= self.workers:
                return
            time.sleep(0.5)
        raise RuntimeError(f"the {self.workers} Ray replica(s) did not start within {READY_TIMEOUT_S} s "
                           "(see the Ray logs under /tmp/ray/session_latest/logs)")

    def stop(self) -> None:
        """Delete the replicas and shut this process's Ray down (a local instance ends with it). On a joined
        cluster only what this process deployed goes: the replicas and the control actor; Serve and anything
        else running there stay."""
        with self._lock:
            if not self._started:
                return
            self._started = False
        try:
            if self.address:
                serve.delete(APP)
                ray.kill(self._control)
            else:
                serve.shutdown()
        except Exception:  # stopping goes on regardless
            log.exception("stopping Ray Serve failed")
        ray.shutdown()

    # --- the replicas ----------------------------------------------------------------------------
    def replicas(self) -> list[dict[str, Any]]:
        """What GET /sdapi/v1/cluster lists: each replica that has registered, the dead ones included."""
        if self._control is None:
            return []
        return ray.get(self._control.replicas.remote())

    # --- one job -----------------------------------------------------------------------------------
    def run(self, job: Job, accepted):
        """Run `job` (its accepted request) on a replica: see the module's docstring."""
        reason = ""
        for attempt in range(ATTEMPTS):
            try:
                return self._attempt(job, accepted)
            except ReplicaDied as e:
                reason = str(e)
                log.warning("Job %s: %s%s", job.id, reason,
                            "; sending it to another replica" if attempt + 1 < ATTEMPTS else "")
        raise RuntimeError(f"the job failed on {ATTEMPTS} replicas: {reason}")

    def _attempt(self, job: Job, accepted):
        handle = self._handle.options(stream=True, multiplexed_model_id=accepted.checkpoint.name)
        replica = None
        try:
            job.relay_requests(lambda what: self._relay(job, what))
            for event in handle.generate.remote(job.id, job.task_id, accepted.kind, accepted):
                kind = event["event"]
                if kind == "start":
                    replica = event["replica"]
                elif kind == "progress":
                    _copy_progress(job, event)
                elif kind == "error":
                    raise event["error"]
                elif kind == "done":
                    return event["outcome"]
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
            if replica is not None:
                self._control.mark_dead.remote(replica)
            raise ReplicaDied(f"replica {replica or '(not known)'} died while running it ({type(e).__name__})"
                              ) from None
        finally:
            job.relay_requests(None)
            with contextlib.suppress(Exception):  # Ray stopping: nothing left to clean
                self._control.take_flags.remote(job.id)  # a request that came after the replica's last look
        raise ReplicaDied(f"replica {replica} ended the job without a result")

    def _relay(self, job: Job, what: str) -> None:
        """The front's interrupt or skip of `job` (JobQueue's, see Job.request) goes to the replica running it,
        which reads it within POLL_S. A skip is taken once; an interrupt stays set for another attempt."""
        if what == "skip":
            job.state.skipped = False
        self._control.flag.remote(job.id, what)


def _copy_progress(job: Job, event: dict[str, Any]) -> None:
    state = job.state
    for name in ("job_count", "job_no", "sampling_step", "sampling_steps", "textinfo", "job_timestamp"):
        setattr(state, name, event[name])
    state.current_latent = event.get("latent")
