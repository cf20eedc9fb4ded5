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
