"""Generation on a Ray Serve cluster (`webui.py --ray-workers N` / `--ray-address ADDR`).

The process the user starts (the front) keeps the page, the API, auth, validation, the one job queue and the
output folders; each generation job it has accepted (a frozen `Accepted`) runs on one of N replicas, each with
its own model manager and pipeline over the same folders:

- `front.RayCluster` starts or joins Ray, deploys the replicas and runs one job on a replica
  (`GenerationService.remote`), passing progress back and interrupts/skips on, retrying once on another replica
  when the one running it dies.
- `replica.GenerationReplica` is the Serve deployment: it runs the job and records the files it would write;
  the front writes them (one process numbers the files and feeds the history index).
- `control.JobControl` is one small actor both sides reach: the replicas' registry (what `GET
  /sdapi/v1/cluster` lists) and each running job's interrupt and skip flags.

Ray is optional (requirements-ray.txt): nothing here is imported without those flags.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def prepare_environment(address: str | None) -> None:
    """The environment Ray reads once, when it is imported: call before importing `front`.

    - A private instance (no `address`) listens on loopback only: on Linux Ray otherwise takes the machine's
      network address as the node's and serves its gRPC ports on it.
    - Joining a cluster: `ray start` turns token authentication on when RAY_AUTH_MODE is unset and a token is at
      hand (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), but ray.init with an address never does,
      so it could not join a cluster started that way on the same setup. Do as `ray start` does.
    """
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    elif "RAY_AUTH_MODE" not in os.environ and (
            os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"
        log.info("Joining the Ray cluster with token authentication (a Ray token is set up here)")
